// Models read one layer at a time: what a layer-streamed run (Forward's LayerSource) needs to
// evaluate a model larger than memory, from any of the files dume reads (a Hugging Face
// checkpoint, a Mixtral export, a dume MoE, or weights computed on the fly).
#pragma once

#include <cstdint>
#include <functional>
#include <span>

#include "forward.hpp"
#include "hf_checkpoint.hpp"
#include "model.hpp"

namespace dume {

// Where a model's weights come from, a part at a time, widened to f32.
struct LayerFill {
  // Fills layer l of `model`: shared.layers[l], experts[l], and routers[l] / expert_attention[l]
  // where the model has them.
  std::function<void(std::int64_t l, Model& model)> layer;
  // Fills shared.norm, and shared.lm_head unless the embeddings are tied.
  std::function<void(SharedWeights& shared)> head;
  // The embedding rows of ids (ascending, each once), [ids.size(), D].
  std::function<Matrix(std::span<const std::uint32_t> ids)> embedding;
};

// A model of this shape with no weights: L empty layers of `experts` MLPs (1: dense), a router
// per layer when experts > 1, and expert attention when asked.
Model empty_model(const ModelConfig& config, std::int64_t experts, bool expert_attention = false);

// The whole model (every layer, the head and the embedding) in f32: `model` is empty_model's.
Model load_whole(const LayerFill& fill, Model model);

// A LayerSource over `model` (empty_model's) and the Forward built on it: it fills the layer and
// the head a run needs from `fill` and empties the one before, so that one layer's weights (or
// the head's) are resident at a time. The LM head of tied embeddings is read whole with the head.
LayerSource stream_layers(Model& model, Forward& forward, LayerFill fill);

// A dense Hugging Face checkpoint (E = 1), its mapped pages released once read.
LayerFill checkpoint_layers(const HfCheckpoint& checkpoint);

// f32 bytes of one layer of a model of `experts` MLPs per layer (with its router, Gaussian or
// linear, and expert attention) and of the head (final norm and LM head): what stream_layers
// holds at once.
std::int64_t layer_bytes(const ModelConfig& config, std::int64_t experts, bool expert_attention, bool gaussian);
std::int64_t head_bytes(const ModelConfig& config);

}  // namespace dume
