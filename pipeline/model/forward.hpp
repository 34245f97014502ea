// The forward pass of a Llama-family model (dense or MoE) on any backend, batched over
// sequences, with the hooks DUME needs: capture each layer's MLP input, force one expert's
// MLP, truncate to the first C positions, and stop before the lm_head.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "backend.hpp"
#include "model.hpp"

namespace dume {

struct ForwardOptions {
  // Run every layer with this expert's MLP (and its attention, with expert attention); -1 routes
  // (an MoE) or uses the only MLP (dense).
  int forced_expert = -1;
  // Use only the first C positions of each sequence (0: all). Attention is causal, so the
  // hidden states of those positions are exactly those of the full sequence.
  std::int64_t context_tokens = 0;
  // false: stop right after the last layer's MLP input (no last MLP, final norm or lm_head).
  bool logits = true;
  // Called with each layer's MLP input, the output of post_attention_layernorm: x (T, D) in the
  // backend's memory, T = B * S rows ordered by sequence, then position.
  std::function<void(std::int64_t layer, const float* x, std::int64_t T)> on_mlp_input;
  // Called with the inputs of the shared linear layers (RegMean's Gram matrices): x (T, width) in
  // the backend's memory, for which = attention (the input norm's output, into q, k and v),
  // attention_output (into o; width q_dim) and lm_head (the final norm's output; layer -1).
  enum class SharedInput { attention, attention_output, lm_head };
  std::function<void(SharedInput which, std::int64_t layer, const float* x, std::int64_t T)> on_shared_input;
  // Routed MoE layers: called with the router logits (T, E) on the host, already divided by the
  // temperature, before top-k. It may read them (routing statistics) or overwrite them (random
  // routing).
  std::function<void(std::int64_t layer, std::span<float> logits)> on_router_logits;
};

// Top-k routing of one token: the k largest logits (ties to the lower expert index) and the
// softmax over those k only. experts/weights receive k entries.
void route_top_k(std::span<const float> logits, int k, std::span<std::int64_t> experts, std::span<float> weights);

class Forward {
 public:
  // Makes the model's weights resident on the backend (the CPU aliases them: keep `model` alive).
  Forward(const Model& model, Backend& backend);

  // tokens: B sequences of S ids (row-major), each < V. Returns logits (B * S', V) on the host,
  // S' = min(S, context_tokens), or nothing when options.logits is false.
  std::vector<float> run(std::span<const std::uint32_t> tokens, std::int64_t B, std::int64_t S,
                         const ForwardOptions& options = {});

  // Layer-streamed runs (calibration): the caller keeps the residual stream of each batch and
  // runs one layer over all of them before the next, so only that layer's weights need to be
  // resident. Each step is the same as in run(), so the activations are bit for bit the same.
  //
  // The residual stream entering layer 0 of B sequences of S tokens, truncated to
  // options.context_tokens (S becomes the truncated length): (B * S, D) on the backend. `table`
  // holds the embedding rows that `tokens` index (the model's embedding when null).
  Buffer embed(std::span<const std::uint32_t> tokens, std::int64_t B, std::int64_t& S, const ForwardOptions& options,
               const float* table = nullptr);
  // Decoder layer l on x in place, for a dense model or a forced expert (no routing); returns
  // false where options want nothing past it (the last layer's MLP input without logits).
  bool run_layer(std::size_t l, Buffer& x, std::int64_t B, std::int64_t S, const ForwardOptions& options);
  // Makes layer l's weights, as the model holds them now, the ones its runs use: the caller
  // fills the model's layer l before and may empty it after (a layer left empty is not resident).
  void load_layer(std::size_t l);
  Backend& backend() const { return backend_; }

  // FLOPs of one run over B sequences of S tokens (2 per multiply-add; attention included).
  static double flops(const ModelConfig& config, std::int64_t B, std::int64_t S, bool logits = true);

 private:
  struct AttentionBuffers {
    Buffer q, k, v, o, q_bias, k_bias, v_bias, o_bias;
  };
  struct LayerBuffers {
    Buffer input_norm, post_attention_norm;
    AttentionBuffers attention;
  };
  struct MlpBuffers {
    Buffer gate, up, down;
  };
  struct RouterBuffers {
    Buffer weight, bias;
    Buffer quadratic, quadratic_bias;  // Gaussian routers: Q [E*D, D] and -Q_e W_e stacked [E*D]
    Vector quadratic_bias_host;        // behind quadratic_bias (the CPU backend aliases it)
  };
  struct Workspace {
    std::int64_t rows = 0;
    Buffer x, h, q, k, v, attention, gate, up, logits, cos, sin, expert_in, expert_out, router_logits, whitened;
  };

  // One layer's routing: each expert's tokens (in token order) and their weights.
  struct Dispatch {
    std::vector<std::vector<std::int64_t>> rows;
    std::vector<std::vector<float>> weights;
  };

  void ensure_workspace(std::int64_t T, std::int64_t S, bool logits);
  AttentionBuffers upload_attention(const AttentionWeights& a);
  // Decoder layer l on the residual stream ws_.x of B sequences of S tokens; false where the
  // caller wants nothing past it (the last layer's MLP input, without logits).
  bool run_layer(std::size_t l, std::int64_t B, std::int64_t S, const ForwardOptions& options, bool mixed_attention);
  // out (T, D) = attention block of h (projections, rotary, causal attention, o), or += with
  // accumulate; `hooks` (the shared attention's) see its inputs.
  void attention(const AttentionBuffers& w, const float* h, std::int64_t B, std::int64_t S, float* out, bool accumulate,
                 const ForwardOptions* hooks, std::int64_t layer);
  // out (T, D) = MLP(h), or += with accumulate (the residual stream).
  void mlp(const MlpBuffers& w, const float* h, std::int64_t T, float* out, bool accumulate);
  // Layer `layer`'s router logits from ws_.h (or the decision taken before), the hook, top-k.
  Dispatch route(std::size_t layer, std::int64_t T, const ForwardOptions& options);
  // x += sum over experts of weight x f_e(h) for each routed token, f_e = `apply`(e, in, n, out).
  template <class Apply>
  void mix_experts(const Dispatch& dispatch, const float* h, Apply&& apply);
  // With expert attention: the routing pass, layers up to the decision with the shared
  // attention, whose logits then decide every layer (decided_).
  void decide(std::span<const std::uint32_t> tokens, std::int64_t B, std::int64_t S);

  const Model& model_;
  Backend& backend_;
  Buffer embed_, norm_, lm_head_;
  std::vector<LayerBuffers> layers_;
  std::vector<std::vector<MlpBuffers>> experts_;
  std::vector<std::vector<AttentionBuffers>> expert_attention_;  // [L][E]; empty: shared attention
  std::vector<RouterBuffers> routers_;
  Workspace ws_;
  std::vector<float> rope_cos_, rope_sin_;  // (S, hd/2) host tables behind ws_.cos / ws_.sin
  std::int64_t rope_positions_ = 0;
  std::int64_t sequence_length_ = 0;     // S of the current run: routing averages along sequences
  std::vector<float> decision_logits_;   // Routing::from_layer's logits, reused by later layers
  bool decided_ = false;                 // decision_logits_ hold decide()'s decision for every layer
};

}  // namespace dume
