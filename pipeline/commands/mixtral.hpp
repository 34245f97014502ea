// The Hugging Face Mixtral layout (MixtralForCausalLM), which transformers, vLLM, SGLang and
// llama.cpp load: `dume export` writes a DUME MoE in it, and dume reads such a checkpoint back.
//
// When the export is exact: a DUME router computes logits (x W^T + b) / T, takes the top k and
// a softmax over those k. Mixtral's router computes x G^T, a softmax over all experts, the top k
// of it, renormalized to sum 1. The softmax is monotone and renormalizing the top k of a softmax
// is the softmax over those k, so with G = W / T (the temperature folded into the weights) the
// two choose the same experts with the same weights, up to f32 rounding of W / T. Mixtral's
// router has no bias, so an MoE whose routers have one is refused (merge or resolve it with
// `router.bias: false`). Mixtral's attention has no biases either, so Qwen2 sources (q/k/v
// biases) and Llama sources with attention_bias are refused.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>

#include "hf_checkpoint.hpp"
#include "layer_stream.hpp"
#include "model.hpp"

namespace dume {

// How the experts' weights are stored: transformers 5's fused tensors per layer
// (mlp.experts.gate_up_proj [E, 2F, D], mlp.experts.down_proj [E, D, F]), or the per-expert
// block_sparse_moe.experts.{e}.w1/w2/w3 of the original Mixtral release, which older engines read.
enum class MixtralLayout { fused, per_expert };

struct ExportOptions {
  std::optional<DType> dtype;                       // of the weights; default: the MoE's. Routers stay f32.
  MixtralLayout layout = MixtralLayout::fused;
  std::uint64_t shard_bytes = 5'000'000'000;        // per model-0000i-of-0000N.safetensors
  std::optional<std::filesystem::path> tokenizer;   // where tokenizer files are copied from;
                                                    // default: the first expert's checkpoint
  int stages = 1;  // of the grid of ranks that writes it (Grid): each rank writes its layers' shards
};

// Writes `moe` (a DUME MoE directory) as a Mixtral checkpoint in `output` (temporary name,
// then rename; an existing export is replaced only with `force`, outputs.hpp's rule), with a
// dume_export.json that records its source. Refuses, before writing anything, an MoE that
// Mixtral cannot express. Collective: the same files on any grid, each shard written by the
// rank that holds its first tensor's layer.
void export_mixtral(const std::filesystem::path& moe, const std::filesystem::path& output,
                    const ExportOptions& options, bool force);

// The Mixtral config of an MoE made from `source` experts.
ModelConfig mixtral_config(const ModelConfig& source, std::int64_t experts, int top_k, DType dtype);

// Loads a Mixtral checkpoint (either layout) as an MoE: zero router biases, temperature 1.
Model load_mixtral_model(const HfCheckpoint& checkpoint);
// The same one layer at a time (layer_stream.hpp), into empty_mixtral_model's shape: its
// experts and top-k, no weights.
LayerFill mixtral_layers(const HfCheckpoint& checkpoint);
Model empty_mixtral_model(const HfCheckpoint& checkpoint);

}  // namespace dume
