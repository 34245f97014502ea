#include "layer_stream.hpp"

#include <memory>
#include <numeric>

namespace dume {

namespace {

template <class Storage>
std::span<float> span_of(Storage& storage) {
  return {storage.data(), static_cast<std::size_t>(storage.size())};
}

std::vector<std::uint32_t> every_id(const ModelConfig& config) {
  std::vector<std::uint32_t> ids(static_cast<std::size_t>(config.vocab_size));
  std::iota(ids.begin(), ids.end(), 0u);
  return ids;
}

}  // namespace

Model empty_model(const ModelConfig& config, std::int64_t experts, bool expert_attention) {
  const auto L = static_cast<std::size_t>(config.num_layers);
  Model m;
  m.config = config;
  m.shared.layers.resize(L);
  m.experts.resize(L);
  if (experts > 1) m.routers.resize(L);
  if (expert_attention) m.expert_attention.resize(L);
  return m;
}

Model load_whole(const LayerFill& fill, Model model) {
  for (std::int64_t l = 0; l < model.config.num_layers; ++l) fill.layer(l, model);
  fill.head(model.shared);
  model.shared.embed = fill.embedding(every_id(model.config));
  return model;
}

LayerSource stream_layers(Model& model, Forward& forward, LayerFill fill) {
  struct State {
    std::int64_t layer = -1;
    bool head = false;
  };
  auto state = std::make_shared<State>();
  auto shared_fill = std::make_shared<LayerFill>(std::move(fill));
  const auto let_go = [&model, &forward, state] {
    if (state->layer >= 0) {
      const auto l = static_cast<std::size_t>(state->layer);
      model.shared.layers[l] = LayerWeights();
      model.experts[l].clear();
      if (!model.routers.empty()) model.routers[l] = Router();
      if (!model.expert_attention.empty()) model.expert_attention[l].clear();
      forward.load_layer(l);
      state->layer = -1;
    }
    if (state->head) {
      model.shared.norm = Vector();
      model.shared.lm_head = Matrix();
      forward.load_head();
      state->head = false;
    }
  };
  LayerSource source;
  source.layer = [&model, &forward, state, shared_fill, let_go](std::int64_t layer) {
    let_go();
    if (layer < 0) return;
    shared_fill->layer(layer, model);
    forward.load_layer(static_cast<std::size_t>(layer));
    state->layer = layer;
  };
  source.head = [&model, &forward, state, shared_fill, let_go] {
    let_go();
    shared_fill->head(model.shared);
    if (model.config.tie_word_embeddings) model.shared.lm_head = shared_fill->embedding(every_id(model.config));
    forward.load_head();
    state->head = true;
  };
  source.embedding = [shared_fill](std::span<const std::uint32_t> ids) { return shared_fill->embedding(ids); };
  return source;
}

LayerFill checkpoint_layers(const HfCheckpoint& checkpoint) {
  const auto read = [&checkpoint](const std::string& name, const std::vector<std::int64_t>& shape, auto& storage) {
    checkpoint.read(name, shape, span_of(storage));
    checkpoint.release(name);
  };
  LayerFill fill;
  fill.layer = [&checkpoint](std::int64_t l, Model& model) {
    model.shared.layers[static_cast<std::size_t>(l)] = load_layer_shared(checkpoint, l);
    model.experts[static_cast<std::size_t>(l)] = {load_mlp(checkpoint, l)};
  };
  fill.head = [&checkpoint, read](SharedWeights& shared) {
    const ModelConfig& c = checkpoint.config();
    shared.norm.resize(c.hidden_size);
    read(std::string(hf::norm), {c.hidden_size}, shared.norm);
    if (c.tie_word_embeddings) return;
    shared.lm_head.resize(c.vocab_size, c.hidden_size);
    read(std::string(hf::lm_head), {c.vocab_size, c.hidden_size}, shared.lm_head);
  };
  fill.embedding = [&checkpoint](std::span<const std::uint32_t> ids) {
    const ModelConfig& c = checkpoint.config();
    const std::int64_t D = c.hidden_size;
    const std::vector<std::int64_t> shape{c.vocab_size, D};
    Matrix rows(static_cast<Eigen::Index>(ids.size()), D);
    for (std::size_t i = 0; i < ids.size(); ++i) {
      checkpoint.read_slice(hf::embed_tokens, shape, ids[i] * static_cast<std::size_t>(D),
                            {rows.data() + i * static_cast<std::size_t>(D), static_cast<std::size_t>(D)});
      if (i % 4096 == 4095) checkpoint.release(hf::embed_tokens);  // a whole tied LM head is read this way
    }
    checkpoint.release(hf::embed_tokens);
    return rows;
  };
  return fill;
}

std::int64_t layer_bytes(const ModelConfig& c, std::int64_t experts, bool expert_attention, bool gaussian) {
  const std::int64_t D = c.hidden_size, F = c.intermediate_size, E = experts;
  const std::int64_t attention = 2 * c.q_dim() * D + 2 * c.kv_dim() * D + 2 * D;
  std::int64_t floats = attention + E * 3 * D * F;
  if (expert_attention) floats += E * attention;
  if (E > 1) floats += E * D + E + (gaussian ? E * D * D + E * D : 0);
  return 4 * floats;
}

std::int64_t head_bytes(const ModelConfig& config) { return 4 * (config.vocab_size * config.hidden_size + config.hidden_size); }

}  // namespace dume
