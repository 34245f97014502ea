#include "forward.hpp"

#include <algorithm>
#include <cmath>

#include "error.hpp"

namespace dume {

namespace {

Buffer upload(Backend& backend, const Matrix& m) {
  return backend.upload({m.data(), static_cast<std::size_t>(m.size())});
}
Buffer upload(Backend& backend, const Vector& v) {
  return backend.upload({v.data(), static_cast<std::size_t>(v.size())});
}

}  // namespace

Forward::Forward(const Model& model, Backend& backend) : model_(model), backend_(backend) {
  layers_.resize(model.shared.layers.size());
  experts_.resize(model.experts.size());
  expert_attention_.resize(model.expert_attention.size());
  // Sized once, never reallocated: the CPU backend aliases each quadratic_bias_host.
  routers_.resize(model.routers.size());
  DUME_ASSERT(layers_.size() == experts_.size());
  DUME_ASSERT(routers_.empty() || routers_.size() == layers_.size());
  DUME_ASSERT(expert_attention_.empty() || expert_attention_.size() == layers_.size());
  load_head();
  for (std::size_t l = 0; l < layers_.size(); ++l) load_layer(l);
}

Forward::AttentionBuffers Forward::upload_attention(const AttentionWeights& a) {
  return {upload(backend_, a.q),      upload(backend_, a.k),      upload(backend_, a.v),      upload(backend_, a.o),
          upload(backend_, a.q_bias), upload(backend_, a.k_bias), upload(backend_, a.v_bias), upload(backend_, a.o_bias),
          upload(backend_, a.q_norm), upload(backend_, a.k_norm)};
}

void Forward::load_head() {
  const SharedWeights& w = model_.shared;
  embed_ = upload(backend_, w.embed);
  norm_ = upload(backend_, w.norm);
  lm_head_ = upload(backend_, w.output_embedding());
}

void Forward::load_layer(std::size_t l) {
  const LayerWeights& w = model_.shared.layers.at(l);
  layers_[l] = {upload(backend_, w.input_norm), upload(backend_, w.post_attention_norm), upload_attention(w.attention)};
  if (!expert_attention_.empty()) {
    expert_attention_[l].clear();
    for (const AttentionWeights& a : model_.expert_attention.at(l)) expert_attention_[l].push_back(upload_attention(a));
  }
  experts_[l].clear();
  for (const MlpWeights& m : model_.experts.at(l))
    experts_[l].push_back({upload(backend_, m.gate), upload(backend_, m.up), upload(backend_, m.down)});
  if (routers_.empty()) return;
  const Router& r = model_.routers.at(l);
  RouterBuffers& buffers = routers_[l];
  buffers = RouterBuffers();
  buffers.weight = upload(backend_, r.weight);
  buffers.bias = upload(backend_, r.bias);
  if (r.quadratic.size()) {  // Q_e (x - W_e) = Q_e x + (-Q_e W_e): one GEMM with a bias for all e
    const Eigen::Index E = r.weight.rows(), D = r.weight.cols();
    Vector& shift = buffers.quadratic_bias_host;
    shift.resize(E * D);
    for (Eigen::Index e = 0; e < E; ++e)
      shift.segment(e * D, D) = -(r.quadratic.middleRows(e * D, D).cast<double>() *
                                  r.weight.row(e).transpose().cast<double>()).cast<float>();
    buffers.quadratic = upload(backend_, r.quadratic);
    buffers.quadratic_bias = upload(backend_, shift);
  }
}

void route_top_k(std::span<const float> logits, int k, std::span<std::int64_t> experts, std::span<float> weights) {
  const auto E = static_cast<std::int64_t>(logits.size());
  for (int i = 0; i < k; ++i) {  // k is small: selection by repeated scans, ties to the lower index
    std::int64_t best = -1;
    for (std::int64_t e = 0; e < E; ++e) {
      if (std::find(experts.begin(), experts.begin() + i, e) != experts.begin() + i) continue;
      if (best < 0 || logits[static_cast<std::size_t>(e)] > logits[static_cast<std::size_t>(best)]) best = e;
    }
    experts[static_cast<std::size_t>(i)] = best;
  }
  const double top = logits[static_cast<std::size_t>(experts[0])];
  double sum = 0;
  std::vector<double> p(static_cast<std::size_t>(k));
  for (int i = 0; i < k; ++i) sum += p[static_cast<std::size_t>(i)] = std::exp(logits[static_cast<std::size_t>(experts[static_cast<std::size_t>(i)])] - top);
  for (int i = 0; i < k; ++i) weights[static_cast<std::size_t>(i)] = static_cast<float>(p[static_cast<std::size_t>(i)] / sum);
}

void Forward::ensure_workspace(std::int64_t T, std::int64_t S, bool logits) {
  const ModelConfig& c = model_.config;
  const auto n = [T](std::int64_t width) { return static_cast<std::size_t>(T * width); };
  if (T > ws_.rows) {
    ws_.x = backend_.alloc(n(c.hidden_size));
    ws_.h = backend_.alloc(n(c.hidden_size));
    ws_.q = backend_.alloc(n(c.q_dim()));
    ws_.attention = backend_.alloc(n(c.q_dim()));
    ws_.k = backend_.alloc(n(c.kv_dim()));
    ws_.v = backend_.alloc(n(c.kv_dim()));
    ws_.gate = backend_.alloc(n(c.intermediate_size));
    ws_.up = backend_.alloc(n(c.intermediate_size));
    ws_.logits = Buffer();
    if (!routers_.empty()) {
      ws_.expert_in = backend_.alloc(n(c.hidden_size));
      ws_.expert_out = backend_.alloc(n(c.hidden_size));
    }
    ws_.router_logits = ws_.whitened = Buffer();  // route() sizes them
    ws_.rows = T;
  }
  if (logits && ws_.logits.size() < n(c.vocab_size)) ws_.logits = backend_.alloc(n(c.vocab_size));
  if (S > rope_positions_) {
    // transformers: angle = f32(position) * f32(inv_freq) in f32, then cos/sin.
    const std::vector<float> inv_freq = c.rope_inv_freq();
    const auto half = static_cast<std::int64_t>(inv_freq.size());
    rope_cos_.assign(static_cast<std::size_t>(S * half), 0.0f);
    rope_sin_.assign(rope_cos_.size(), 0.0f);
    for (std::int64_t s = 0; s < S; ++s)
      for (std::int64_t i = 0; i < half; ++i) {
        const float angle = static_cast<float>(s) * inv_freq[static_cast<std::size_t>(i)];
        rope_cos_[static_cast<std::size_t>(s * half + i)] = static_cast<float>(std::cos(static_cast<double>(angle)));
        rope_sin_[static_cast<std::size_t>(s * half + i)] = static_cast<float>(std::sin(static_cast<double>(angle)));
      }
    ws_.cos = backend_.upload(rope_cos_);
    ws_.sin = backend_.upload(rope_sin_);
    rope_positions_ = S;
  }
}

void Forward::mlp(const MlpBuffers& w, const float* h, std::int64_t T, float* out, bool accumulate) {
  const ModelConfig& c = model_.config;
  const std::int64_t D = c.hidden_size, F = c.intermediate_size;
  backend_.linear(h, w.gate.data(), nullptr, T, D, F, ws_.gate.data());
  backend_.linear(h, w.up.data(), nullptr, T, D, F, ws_.up.data());
  backend_.swiglu(ws_.gate.data(), ws_.up.data(), T * F, ws_.gate.data());
  backend_.linear(ws_.gate.data(), w.down.data(), nullptr, T, F, D, out, accumulate);
}

void Forward::attention(const AttentionBuffers& w, const float* h, std::int64_t B, std::int64_t S, float* out,
                        bool accumulate, const ForwardOptions* hooks, std::int64_t layer) {
  const ModelConfig& c = model_.config;
  const std::int64_t T = B * S, D = c.hidden_size;
  Backend& be = backend_;
  if (hooks && hooks->on_shared_input) hooks->on_shared_input(ForwardOptions::SharedInput::attention, layer, h, T);
  be.linear(h, w.q.data(), w.q_bias.data(), T, D, c.q_dim(), ws_.q.data());
  be.linear(h, w.k.data(), w.k_bias.data(), T, D, c.kv_dim(), ws_.k.data());
  be.linear(h, w.v.data(), w.v_bias.data(), T, D, c.kv_dim(), ws_.v.data());
  if (c.qk_norm) {  // Qwen3: each head's q and k RMS-normalized (rows of hd), in place, before rotary
    const auto eps = static_cast<float>(c.rms_norm_eps);
    be.rms_norm(ws_.q.data(), w.q_norm.data(), T * c.num_heads, c.head_dim, eps, ws_.q.data());
    be.rms_norm(ws_.k.data(), w.k_norm.data(), T * c.num_kv_heads, c.head_dim, eps, ws_.k.data());
  }
  be.rope(ws_.q.data(), B, S, c.num_heads, c.head_dim, ws_.cos.data(), ws_.sin.data());
  be.rope(ws_.k.data(), B, S, c.num_kv_heads, c.head_dim, ws_.cos.data(), ws_.sin.data());
  be.attention(ws_.q.data(), ws_.k.data(), ws_.v.data(), B, S, c.num_heads, c.num_kv_heads, c.head_dim,
               ws_.attention.data());
  if (hooks && hooks->on_shared_input)
    hooks->on_shared_input(ForwardOptions::SharedInput::attention_output, layer, ws_.attention.data(), T);
  be.linear(ws_.attention.data(), w.o.data(), w.o_bias.data(), T, c.q_dim(), D, out, accumulate);
}

Forward::Dispatch Forward::route(std::size_t layer, Stream& stream, const ForwardOptions& options) {
  const std::int64_t D = model_.config.hidden_size, T = stream.B * stream.S;
  const auto E = static_cast<std::int64_t>(experts_[layer].size());
  const int k = model_.top_k;
  const Routing& routing = model_.routing;
  std::vector<float> logits;
  if (stream.decided || (routing.from_layer >= 0 && static_cast<std::int64_t>(layer) > routing.from_layer)) {
    logits = stream.decision;
  } else {
    const RouterBuffers& router = routers_[layer];
    logits.resize(static_cast<std::size_t>(T * E));
    if (router.quadratic.size()) {
      if (ws_.whitened.size() < static_cast<std::size_t>(T * E * D)) ws_.whitened = backend_.alloc(static_cast<std::size_t>(T * E * D));
      backend_.linear(ws_.h.data(), router.quadratic.data(), router.quadratic_bias.data(), T, D, E * D,
                      ws_.whitened.data());
      std::vector<float> whitened(static_cast<std::size_t>(T * E * D));
      backend_.download(ws_.whitened.data(), whitened);
      const Vector& bias = model_.routers[layer].bias;
      for (std::int64_t t = 0; t < T; ++t)
        for (std::int64_t e = 0; e < E; ++e) {
          const Eigen::Map<const Eigen::VectorXf> z(whitened.data() + (t * E + e) * D, D);
          logits[static_cast<std::size_t>(t * E + e)] = bias(e) - 0.5f * z.squaredNorm();
        }
    } else {
      if (ws_.router_logits.size() < logits.size()) ws_.router_logits = backend_.alloc(logits.size());
      backend_.linear(ws_.h.data(), router.weight.data(), router.bias.data(), T, D, E, ws_.router_logits.data());
      backend_.download(ws_.router_logits.data(), logits);
    }
    for (float& v : logits) v /= model_.temperature;
    smooth_router_logits(routing, logits, stream.S, E);
    if (static_cast<std::int64_t>(layer) == routing.from_layer) stream.decision = logits;
  }
  if (options.on_router_logits) options.on_router_logits(static_cast<std::int64_t>(layer), logits);

  Dispatch dispatch{std::vector<std::vector<std::int64_t>>(static_cast<std::size_t>(E)),
                    std::vector<std::vector<float>>(static_cast<std::size_t>(E))};
  std::vector<std::int64_t> chosen(static_cast<std::size_t>(k));
  std::vector<float> p(static_cast<std::size_t>(k));
  for (std::int64_t t = 0; t < T; ++t) {
    route_top_k(std::span<const float>(logits).subspan(static_cast<std::size_t>(t * E), static_cast<std::size_t>(E)), k,
                chosen, p);
    for (int i = 0; i < k; ++i) {
      const auto e = static_cast<std::size_t>(chosen[static_cast<std::size_t>(i)]);
      dispatch.rows[e].push_back(t);
      dispatch.weights[e].push_back(p[static_cast<std::size_t>(i)]);
    }
  }
  return dispatch;
}

template <class Apply>
void Forward::mix_experts(const Dispatch& dispatch, const float* h, float* x, Apply&& apply) {
  const std::int64_t D = model_.config.hidden_size;
  for (std::size_t e = 0; e < dispatch.rows.size(); ++e) {
    const auto& rows = dispatch.rows[e];
    if (rows.empty()) continue;
    const auto n = static_cast<std::int64_t>(rows.size());
    apply(e, h, rows, n, ws_.expert_out.data());
    backend_.scatter_add_rows(ws_.expert_out.data(), D, rows, dispatch.weights[e], x);
  }
}

void Forward::decide(Stream& stream) {
  const ModelConfig& c = model_.config;
  const std::int64_t B = stream.B, S = stream.S, T = B * S, D = c.hidden_size;
  const auto eps = static_cast<float>(c.rms_norm_eps);
  DUME_ASSERT(model_.routing.from_layer == 0);  // the configs and resolve allow no other
  backend_.embed(stream.tokens, stream.table.size() ? stream.table.data() : embed_.data(), D, ws_.x.data());
  const LayerBuffers& w = layers_[0];
  backend_.rms_norm(ws_.x.data(), w.input_norm.data(), T, D, eps, ws_.h.data());
  attention(w.attention, ws_.h.data(), B, S, ws_.x.data(), /*accumulate=*/true, nullptr, 0);
  backend_.rms_norm(ws_.x.data(), w.post_attention_norm.data(), T, D, eps, ws_.h.data());
  route(0, stream, {});  // sets stream.decision; no hooks: they see the real pass, not this one
  stream.decided = true;
}

namespace {

// The first `context` positions of each of B sequences of S tokens (all of them when context is 0
// or at least S), in `storage` when cut; S becomes their length.
std::span<const std::uint32_t> truncate_context(std::span<const std::uint32_t> tokens, std::int64_t B, std::int64_t& S,
                                                std::int64_t context, std::vector<std::uint32_t>& storage) {
  if (context <= 0 || context >= S) return tokens;
  storage.reserve(static_cast<std::size_t>(B * context));
  for (std::int64_t b = 0; b < B; ++b)
    storage.insert(storage.end(), tokens.begin() + b * S, tokens.begin() + b * S + context);
  S = context;
  return storage;
}

void check_forced(std::int64_t forced, std::size_t layer, std::size_t resident) {
  if (static_cast<std::size_t>(forced) >= resident)
    throw Error("forced expert " + std::to_string(forced) + " but layer " + std::to_string(layer) + " has " +
                std::to_string(resident) + " resident experts");
}

}  // namespace

std::vector<float> Forward::run(std::span<const std::uint32_t> tokens, std::int64_t B, std::int64_t S,
                                const ForwardOptions& options) {
  Stream stream = begin(tokens, B, S, options);
  for (std::size_t l = 0; l < layers_.size(); ++l)
    if (!run_layer(l, stream, options)) return {};
  return finish(stream, options);
}

Stream Forward::begin(std::span<const std::uint32_t> tokens, std::int64_t B, std::int64_t S,
                      const ForwardOptions& options, const LayerSource& source) {
  const ModelConfig& c = model_.config;
  DUME_ASSERT(static_cast<std::int64_t>(tokens.size()) == B * S);
  std::vector<std::uint32_t> truncated;
  tokens = truncate_context(tokens, B, S, options.context_tokens, truncated);
  if (c.sliding_window && S > *c.sliding_window)
    throw Error("sequences of " + std::to_string(S) + " tokens exceed the model's sliding_window of " +
                std::to_string(*c.sliding_window) + ", which dume does not implement; use shorter sequences");
  if (model_.routing.from_layer >= c.num_layers)
    throw Error("routing '" + model_.routing.to_string() + "' names a layer beyond the model's " +
                std::to_string(c.num_layers));
  ensure_workspace(B * S, S, options.logits);
  Stream stream;
  stream.B = B;
  stream.S = S;
  if (source.embedding) {  // the rows this batch uses, as a table its tokens are renumbered to index
    std::vector<std::uint32_t> ids(tokens.begin(), tokens.end());
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    for (const std::uint32_t t : tokens)
      stream.tokens.push_back(static_cast<std::uint32_t>(std::lower_bound(ids.begin(), ids.end(), t) - ids.begin()));
    stream.rows = source.embedding(ids);
    stream.table = backend_.upload({stream.rows.data(), static_cast<std::size_t>(stream.rows.size())});
  } else {
    stream.tokens.assign(tokens.begin(), tokens.end());
  }
  stream.x = backend_.alloc(static_cast<std::size_t>(B * S * c.hidden_size));
  backend_.embed(stream.tokens, stream.table.size() ? stream.table.data() : embed_.data(), c.hidden_size,
                 stream.x.data());
  if (expert_attention_.empty() || options.forced_expert >= 0) {  // no decide() at layer 0: not needed again
    stream.tokens = {};
    stream.table = Buffer();
    stream.rows = Matrix();
  }
  return stream;
}

bool Forward::run_layer(std::size_t l, Stream& stream, const ForwardOptions& options) {
  const ModelConfig& c = model_.config;
  const std::int64_t B = stream.B, S = stream.S, T = B * S, D = c.hidden_size;
  const auto eps = static_cast<float>(c.rms_norm_eps);
  Backend& be = backend_;
  ensure_workspace(T, S, options.logits);
  const bool mixed_attention = !expert_attention_.empty() && options.forced_expert < 0;
  if (l == 0) {
    stream.decided = false;
    if (mixed_attention) decide(stream);
    stream.tokens = {};  // the embedding is not needed again
    stream.table = Buffer();
    stream.rows = Matrix();
  }
  float* x = stream.x.data();
  float* h = ws_.h.data();
  const LayerBuffers& w = layers_[l];
  const auto layer = static_cast<std::int64_t>(l);
  const auto forced = static_cast<std::size_t>(options.forced_expert);

  be.rms_norm(x, w.input_norm.data(), T, D, eps, h);
  Dispatch dispatch;
  if (mixed_attention) {  // each routed token: the weighted sum of its experts' attention
    dispatch = route(l, stream, options);
    mix_experts(dispatch, h, x, [&](std::size_t e, const float* in, const std::vector<std::int64_t>& rows, std::int64_t,
                                    float* out) {
      attention(expert_attention_[l][e], in, B, S, ws_.expert_in.data(), /*accumulate=*/false, nullptr, layer);
      be.gather_rows(ws_.expert_in.data(), D, rows, out);
    });
  } else if (options.forced_expert >= 0 && !expert_attention_.empty()) {
    check_forced(options.forced_expert, l, expert_attention_[l].size());
    attention(expert_attention_[l][forced], h, B, S, x, /*accumulate=*/true, nullptr, layer);
  } else {
    attention(w.attention, h, B, S, x, /*accumulate=*/true, &options, layer);
  }

  be.rms_norm(x, w.post_attention_norm.data(), T, D, eps, h);
  if (options.on_mlp_input) options.on_mlp_input(layer, h, T);
  if (!options.logits && l + 1 == layers_.size()) return false;
  const auto& experts = experts_[l];
  if (options.forced_expert >= 0) {
    check_forced(options.forced_expert, l, experts.size());
    mlp(experts[forced], h, T, x, /*accumulate=*/true);
  } else if (!routers_.empty()) {
    if (!mixed_attention) dispatch = route(l, stream, options);
    mix_experts(dispatch, h, x, [&](std::size_t e, const float* in, const std::vector<std::int64_t>& rows,
                                    std::int64_t n, float* out) {
      be.gather_rows(in, D, rows, ws_.expert_in.data());
      mlp(experts[e], ws_.expert_in.data(), n, out, /*accumulate=*/false);
    });
  } else {
    if (experts.size() != 1) throw Error("an MoE without routers needs a forced expert");
    mlp(experts[0], h, T, x, /*accumulate=*/true);
  }
  return true;
}

std::vector<float> Forward::finish(Stream& stream, const ForwardOptions& options) {
  if (!options.logits) return {};
  const ModelConfig& c = model_.config;
  const std::int64_t T = stream.B * stream.S;
  ensure_workspace(T, stream.S, /*logits=*/true);
  backend_.rms_norm(stream.x.data(), norm_.data(), T, c.hidden_size, static_cast<float>(c.rms_norm_eps), ws_.h.data());
  if (options.on_shared_input) options.on_shared_input(ForwardOptions::SharedInput::lm_head, -1, ws_.h.data(), T);
  backend_.linear(ws_.h.data(), lm_head_.data(), nullptr, T, c.hidden_size, c.vocab_size, ws_.logits.data());
  std::vector<float> logits(static_cast<std::size_t>(T * c.vocab_size));
  backend_.download(ws_.logits.data(), logits);
  return logits;
}

std::vector<Batch> window_batches(const CorpusWindows& windows, std::int64_t batch_sequences,
                                  std::span<const std::int64_t> batches,
                                  const std::function<ForwardOptions(std::int64_t first)>& options) {
  const auto S = static_cast<std::int64_t>(windows.length());
  const auto count = static_cast<std::int64_t>(windows.count());
  std::vector<Batch> out;
  for (const std::int64_t b : batches) {
    const std::int64_t first = b * batch_sequences, B = std::min(batch_sequences, count - first);
    out.push_back({windows.tokens().subspan(static_cast<std::size_t>(first * S), static_cast<std::size_t>(B * S)), B, S,
                   options ? options(first) : ForwardOptions{}});
  }
  return out;
}

std::vector<Batch> window_batches(const CorpusWindows& windows, std::int64_t batch_sequences,
                                  std::span<const std::int64_t> batches, const ForwardOptions& options) {
  return window_batches(windows, batch_sequences, batches, [&options](std::int64_t) { return options; });
}

std::vector<Stream> run_by_layer(Forward& forward, const LayerSource& source, std::span<const Batch> batches,
                                 const std::function<void(std::size_t i, std::int64_t layer)>& before,
                                 const std::function<bool(std::int64_t layer)>& after) {
  std::vector<Stream> streams;  // (B * S, D) f32 each
  for (const Batch& b : batches) streams.push_back(forward.begin(b.tokens, b.B, b.S, b.options, source));
  run_layers(forward, source, batches, streams, 0, forward.layers(), before, after);
  return streams;
}

void run_layers(Forward& forward, const LayerSource& source, std::span<const Batch> batches, std::span<Stream> streams,
                std::int64_t first, std::int64_t end, const std::function<void(std::size_t i, std::int64_t layer)>& before,
                const std::function<bool(std::int64_t layer)>& after) {
  DUME_ASSERT(streams.size() == batches.size());
  std::vector<bool> running(streams.size(), true);
  for (std::int64_t l = first; l < end; ++l) {
    if (source.layer) source.layer(l);
    for (std::size_t i = 0; i < streams.size(); ++i) {
      if (!running[i]) continue;
      if (before) before(i, l);
      running[i] = forward.run_layer(static_cast<std::size_t>(l), streams[i], batches[i].options);
    }
    if (after && !after(l)) break;
  }
  if (source.layer) source.layer(-1);  // nothing resident after the last layer
}

double Forward::flops(const ModelConfig& c, std::int64_t B, std::int64_t S, bool logits) {
  const double D = static_cast<double>(c.hidden_size), T = static_cast<double>(B * S);
  const double projections = D * static_cast<double>(2 * c.q_dim() + 2 * c.kv_dim());
  const double mlp = 3 * D * static_cast<double>(c.intermediate_size);
  // causal attention: q k^T and p v over (S + 1) / 2 positions on average, per head
  const double attention = 2.0 * static_cast<double>(c.num_heads * c.head_dim) * (static_cast<double>(S) + 1) / 2;
  double per_token = static_cast<double>(c.num_layers) * (projections + mlp + attention);
  if (logits) per_token += D * static_cast<double>(c.vocab_size);
  return 2 * T * per_token;
}

}  // namespace dume
