// The forward pass of a Llama-family model (dense or MoE) on any backend, batched over
// sequences, with the hooks DUME needs: capture each layer's MLP input, force one expert's
// MLP, truncate to the first C positions, and stop before the lm_head.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "backend.hpp"
#include "corpus.hpp"
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

// Where a layer-streamed run gets its weights, so that only one layer needs to be resident:
// `layer(l)` makes layer l's (shared weights, MLPs, router, expert attention: what the run uses)
// resident in the Forward, letting the previous layer's go (-1: none); `head()` the final norm
// and LM head; `embedding(ids)` gives the embedding rows of ids, [ids.size(), D]. Empty
// functions mean the Forward's model holds those weights already.
struct LayerSource {
  std::function<void(std::int64_t layer)> layer;
  std::function<void()> head;
  std::function<Matrix(std::span<const std::uint32_t> ids)> embedding;
};

// One batch of a layer-streamed run between its layers.
struct Stream {
  std::int64_t B = 0, S = 0;  // sequences, and positions after truncation
  Buffer x;                   // the residual stream (B * S, D)
  // The tokens as indices into `table`, the embedding rows they use (empty: the model's
  // embedding); kept only where expert attention embeds them again at layer 0, until then.
  std::vector<std::uint32_t> tokens;
  Buffer table;
  Matrix rows;  // behind `table` (the CPU backend aliases it; a move keeps its storage)
  std::vector<float> decision;  // router logits of routing.from_layer, which decide later layers
  bool decided = false;         // expert attention: `decision` decides every layer
};

// A batch to run: B sequences of S tokens and their options.
struct Batch {
  std::span<const std::uint32_t> tokens;
  std::int64_t B = 0, S = 0;
  ForwardOptions options;
};

class Forward {
 public:
  // Makes the model's weights resident on the backend (the CPU aliases them: keep `model` alive).
  Forward(const Model& model, Backend& backend);

  // tokens: B sequences of S ids (row-major), each < V. Returns logits (B * S', V) on the host,
  // S' = min(S, context_tokens), or nothing when options.logits is false.
  std::vector<float> run(std::span<const std::uint32_t> tokens, std::int64_t B, std::int64_t S,
                         const ForwardOptions& options = {});

  // Layer-streamed runs: the caller keeps each batch's Stream and runs one layer over all of
  // them before the next (run_by_layer), so only that layer's weights need to be resident. run()
  // is these steps on one batch, so both give the same activations bit for bit.
  //
  // The stream of B sequences of S tokens entering layer 0, truncated to options.context_tokens;
  // its embedding rows from source.embedding when set.
  Stream begin(std::span<const std::uint32_t> tokens, std::int64_t B, std::int64_t S, const ForwardOptions& options,
               const LayerSource& source = {});
  // Decoder layer l on the stream; returns false where options want nothing past it (the last
  // layer's MLP input without logits).
  bool run_layer(std::size_t l, Stream& stream, const ForwardOptions& options);
  // The final norm and LM head: logits (B * S, V) on the host, or nothing without options.logits.
  std::vector<float> finish(Stream& stream, const ForwardOptions& options);
  // Makes layer l's weights (shared, MLPs, router, expert attention) or the head's (final norm,
  // LM head), as the model holds them now, the ones runs use: the caller fills the model before
  // and may empty it after (what is left empty is not resident).
  void load_layer(std::size_t l);
  void load_head();
  Backend& backend() const { return backend_; }
  std::int64_t layers() const { return static_cast<std::int64_t>(layers_.size()); }
  std::int64_t hidden_size() const { return model_.config.hidden_size; }

  // FLOPs of one run over B sequences of S tokens (2 per multiply-add; attention included).
  static double flops(const ModelConfig& config, std::int64_t B, std::int64_t S, bool logits = true);

 private:
  struct AttentionBuffers {
    Buffer q, k, v, o, q_bias, k_bias, v_bias, o_bias, q_norm, k_norm;
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
    // x: decide()'s routing pass (a stream keeps its own residual stream)
    Buffer x, h, q, k, v, attention, gate, up, logits, cos, sin, expert_in, expert_out, router_logits, whitened;
  };

  // One layer's routing: each expert's tokens (in token order) and their weights.
  struct Dispatch {
    std::vector<std::vector<std::int64_t>> rows;
    std::vector<std::vector<float>> weights;
  };

  void ensure_workspace(std::int64_t T, std::int64_t S, bool logits);
  AttentionBuffers upload_attention(const AttentionWeights& a);
  // out (T, D) = attention block of h (projections, rotary, causal attention, o), or += with
  // accumulate; `hooks` (the shared attention's) see its inputs.
  void attention(const AttentionBuffers& w, const float* h, std::int64_t B, std::int64_t S, float* out, bool accumulate,
                 const ForwardOptions* hooks, std::int64_t layer);
  // out (T, D) = MLP(h), or += with accumulate (the residual stream).
  void mlp(const MlpBuffers& w, const float* h, std::int64_t T, float* out, bool accumulate);
  // Layer `layer`'s router logits from ws_.h (or the stream's decision), the hook, top-k.
  Dispatch route(std::size_t layer, Stream& stream, const ForwardOptions& options);
  // x += sum over experts of weight x f_e(h) for each routed token, f_e = `apply`(e, in, n, out).
  template <class Apply>
  void mix_experts(const Dispatch& dispatch, const float* h, float* x, Apply&& apply);
  // With expert attention: the routing pass, layer 0 up to its router with the shared
  // attention (in ws_.x), whose logits then decide every layer (stream.decided).
  void decide(Stream& stream);

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
};

// Batches of `windows` by index (batch b holds windows b * batch_sequences...), each with
// `options`, or with options(first window) when they differ from batch to batch.
std::vector<Batch> window_batches(const CorpusWindows& windows, std::int64_t batch_sequences,
                                  std::span<const std::int64_t> batches, const ForwardOptions& options);
std::vector<Batch> window_batches(const CorpusWindows& windows, std::int64_t batch_sequences,
                                  std::span<const std::int64_t> batches,
                                  const std::function<ForwardOptions(std::int64_t first)>& options);

// Runs the batches layer by layer: each begins (source.embedding), then each layer is made
// resident once (source.layer) and runs over every batch before the next, `before(i, l)` called
// before batch i enters layer l and `after(l)` once layer l has run over all of them (for every
// layer, batches or none); `after` returning false ends the run there. Returns the streams after
// the last layer run (each stopped where its options stop) with nothing resident; finish() gives
// their logits once source.head() has run.
std::vector<Stream> run_by_layer(Forward& forward, const LayerSource& source, std::span<const Batch> batches,
                                 const std::function<void(std::size_t i, std::int64_t layer)>& before = {},
                                 const std::function<bool(std::int64_t layer)>& after = {});
// The same over layers [first, end) only, for streams that have run the layers before (a stage
// of a grid: grid.hpp); streams[i] belongs to batches[i].
void run_layers(Forward& forward, const LayerSource& source, std::span<const Batch> batches,
                std::span<Stream> streams, std::int64_t first, std::int64_t end,
                const std::function<void(std::size_t i, std::int64_t layer)>& before = {},
                const std::function<bool(std::int64_t layer)>& after = {});

}  // namespace dume
