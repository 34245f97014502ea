#include "grid.hpp"

#include <algorithm>
#include <chrono>
#include <limits>

#include "comm.hpp"
#include "layer_stream.hpp"
#include "resources.hpp"

namespace dume {

namespace {

// Parameters of each layer, and of the parts that go with the first and the last stage.
struct Weights {
  std::int64_t layer = 0, first = 0, last = 0;
};

Weights weights_of(const ModelConfig& c, std::int64_t experts) {
  return {layer_bytes(c, experts, /*expert_attention=*/false, /*gaussian=*/false) / 4, c.vocab_size * c.hidden_size,
          head_bytes(c) / 4};
}

std::int64_t stage_weight(const Weights& w, std::int64_t begin, std::int64_t end, int s, int stages) {
  return (end - begin) * w.layer + (s == 0 ? w.first : 0) + (s + 1 == stages ? w.last : 0);
}

constexpr int kStreamTag = 0x5354;

}  // namespace

std::vector<std::int64_t> stage_layers(const ModelConfig& config, std::int64_t experts, int stages) {
  const std::int64_t L = config.num_layers;
  if (stages < 1) throw Error("parallel.stages must be at least 1, not " + std::to_string(stages));
  if (stages > L)
    throw Error("parallel.stages " + std::to_string(stages) + " is more than the model's " + std::to_string(L) +
                " layers: each stage needs a layer");
  const Weights w = weights_of(config, experts);
  const auto P = static_cast<std::size_t>(stages), n = static_cast<std::size_t>(L);
  constexpr std::int64_t kNone = std::numeric_limits<std::int64_t>::max();
  // best[s][j]: the smallest largest stage when stages 0..s hold layers [0, j); from[s][j] the
  // first layer of stage s there (the earliest of equals, so the split is deterministic).
  std::vector<std::vector<std::int64_t>> best(P, std::vector<std::int64_t>(n + 1, kNone)), from = best;
  for (std::size_t j = 1; j <= n; ++j) best[0][j] = stage_weight(w, 0, static_cast<std::int64_t>(j), 0, stages);
  for (std::size_t s = 1; s < P; ++s)
    for (std::size_t j = s + 1; j <= n; ++j)
      for (std::size_t i = s; i < j; ++i) {
        if (best[s - 1][i] == kNone) continue;
        const std::int64_t cost = std::max(
            best[s - 1][i], stage_weight(w, static_cast<std::int64_t>(i), static_cast<std::int64_t>(j), static_cast<int>(s), stages));
        if (cost < best[s][j]) {
          best[s][j] = cost;
          from[s][j] = static_cast<std::int64_t>(i);
        }
      }
  std::vector<std::int64_t> first(P + 1);
  first[P] = L;
  for (std::size_t s = P - 1; s > 0; --s) first[s] = from[s][static_cast<std::size_t>(first[s + 1])];
  first[0] = 0;
  return first;
}

std::int64_t stage_parameters(const ModelConfig& config, std::int64_t experts, std::span<const std::int64_t> first, int s) {
  const auto i = static_cast<std::size_t>(s);
  return stage_weight(weights_of(config, experts), first[i], first[i + 1], s, static_cast<int>(first.size()) - 1);
}

Grid::Grid(const ModelConfig& config, std::int64_t experts, int stages) : stages_(stages) {
  const int ranks = mpi_size(), rank = mpi_rank();
  collective_phase([&] {
    first_ = stage_layers(config, experts, stages);
    if (ranks % stages != 0)
      throw Error("parallel.stages " + std::to_string(stages) + " does not divide the job's " + std::to_string(ranks) +
                  " ranks: every stage needs the same number of replicas");
  });
  replicas_ = ranks / stages;
  stage_ = rank / replicas_;
  replica_ = rank % replicas_;
  MPI_CHECK(MPI_Comm_split(MPI_COMM_WORLD, stage_, replica_, &stage_comm_));
}

Grid::~Grid() {
  if (stage_comm_ != MPI_COMM_NULL) MPI_Comm_free(&stage_comm_);
}

int Grid::stage_of(std::int64_t layer) const {
  DUME_ASSERT(layer >= 0 && layer < first_.back());
  return static_cast<int>(std::upper_bound(first_.begin(), first_.end(), layer) - first_.begin()) - 1;
}

int Grid::solver_of(std::int64_t layer) const {
  return static_cast<int>((layer - first_layer(stage_of(layer))) % replicas_);
}

int Grid::writer_of_tensor(const std::string& moe_path) const {
  constexpr std::string_view layers = "/layers/";
  if (moe_path.starts_with(layers)) return writer_of(std::stoll(moe_path.substr(layers.size())));
  return rank_of(moe_path == "/embed_tokens" ? 0 : stages_ - 1, 0);
}

std::vector<int> Grid::solving_ranks() const {
  std::vector<int> ranks;
  for (int s = 0; s < stages_; ++s)
    for (int q = 0; q < replicas_ && q < first_layer(s + 1) - first_layer(s); ++q) ranks.push_back(rank_of(s, q));
  return ranks;
}

std::string Grid::describe(const ModelConfig& config, std::int64_t experts) const {
  std::string text = std::to_string(stages_) + (stages_ == 1 ? " stage x " : " stages x ") + std::to_string(replicas_) +
                     (replicas_ == 1 ? " replica" : " replicas") + ": layers ";
  for (int s = 0; s < stages_; ++s)
    text += (s ? ", " : "") + std::to_string(first_layer(s)) + "-" + std::to_string(first_layer(s + 1) - 1) + " (" +
            format_count(static_cast<double>(stage_parameters(config, experts, first_, s))) + " parameters)";
  return text;
}

namespace {

// A stream's transfer: its positions, whether its routing is decided and its decision's size,
// then the residual stream (B * S, D) and the decision. The receiver knows B from its batch.
void send_stream(Backend& backend, const Stream& stream, std::int64_t D, int dest) {
  const std::int64_t header[] = {stream.S, stream.decided ? 1 : 0, static_cast<std::int64_t>(stream.decision.size())};
  send(std::span<const std::int64_t>(header), dest, kStreamTag);
  const auto n = static_cast<std::size_t>(stream.B * stream.S * D);
  std::vector<float> host;
  if (backend.kind() != BackendKind::cpu) {
    host.resize(n);
    backend.download(stream.x.data(), host);
  }
  send(host.empty() ? std::span<const float>(stream.x.data(), n) : std::span<const float>(host), dest, kStreamTag);
  send(std::span<const float>(stream.decision), dest, kStreamTag);
}

Stream receive_stream(Backend& backend, const Batch& batch, std::int64_t D, int source) {
  std::int64_t header[3];
  recv(std::span<std::int64_t>(header), source, kStreamTag);
  Stream stream;
  stream.B = batch.B;
  stream.S = header[0];
  stream.decided = header[1] != 0;
  const auto n = static_cast<std::size_t>(stream.B * stream.S * D);
  stream.x = backend.alloc(n);
  if (backend.kind() == BackendKind::cpu) {
    recv(std::span<float>(stream.x.data(), n), source, kStreamTag);
  } else {
    std::vector<float> host(n);
    recv(std::span<float>(host), source, kStreamTag);
    backend.copy_in(host, stream.x.data());
  }
  stream.decision.resize(static_cast<std::size_t>(header[2]));
  recv(std::span<float>(stream.decision), source, kStreamTag);
  return stream;
}

}  // namespace

double run_pipelined(Forward& forward, const LayerSource& source, const Grid& grid, std::span<const Batch> batches,
                     std::int64_t chunk, const std::function<void(std::size_t i, std::int64_t layer)>& before,
                     const std::function<void(std::size_t first, std::span<Stream> streams)>& finished) {
  using Clock = std::chrono::steady_clock;
  Backend& backend = forward.backend();
  const std::int64_t D = forward.hidden_size();
  const auto size = static_cast<std::size_t>(std::max<std::int64_t>(1, chunk));
  double waited = 0;
  for (std::size_t begin = 0; begin < batches.size(); begin += size) {
    const std::span<const Batch> part = batches.subspan(begin, std::min(size, batches.size() - begin));
    std::vector<Stream> streams;  // (B * S, D) f32 each
    auto t0 = Clock::now();
    for (const Batch& b : part)
      streams.push_back(grid.first_stage()
                            ? forward.begin(b.tokens, b.B, b.S, b.options, source)
                            : receive_stream(backend, b, D, grid.rank_of(grid.stage() - 1, grid.replica())));
    if (!grid.first_stage()) waited += std::chrono::duration<double>(Clock::now() - t0).count();
    run_layers(forward, source, part, streams, grid.first_layer(), grid.end_layer(),
               [&](std::size_t i, std::int64_t l) {
                 if (before) before(begin + i, l);
               });
    if (grid.last_stage()) {
      if (finished) finished(begin, streams);
      continue;
    }
    t0 = Clock::now();
    for (const Stream& s : streams) send_stream(backend, s, D, grid.rank_of(grid.stage() + 1, grid.replica()));
    waited += std::chrono::duration<double>(Clock::now() - t0).count();
  }
  return waited;
}

std::int64_t pipeline_chunk(std::int64_t batches, int stages, std::int64_t most) {
  const std::int64_t chunks = 4 * static_cast<std::int64_t>(stages);
  return std::clamp<std::int64_t>((batches + chunks - 1) / chunks, 1, std::max<std::int64_t>(1, most));
}

}  // namespace dume
