#include "statistics.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "comm.hpp"
#include "hdf5_util.hpp"
#include "progress.hpp"

namespace dume {

namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
// A calibration chunk takes about this long, so that a stop signal is acted on soon and
// time-based checkpoints are taken on time (every layer's weights are read once per chunk).
constexpr double kChunkSeconds = 30;

// An (n, n) row-major matrix's upper triangle, row by row, into `packed` (n(n+1)/2), and back
// (row i's columns i..n-1 are contiguous in row-major storage).
void pack_rows(const double* A, std::int64_t n, double* packed) {
  for (std::int64_t i = 0; i < n; ++i) packed = std::copy(A + i * n + i, A + (i + 1) * n, packed);
}
void unpack_rows(const double* packed, std::int64_t n, double* A) {
  for (std::int64_t i = 0; i < n; ++i) {
    std::copy(packed, packed + (n - i), A + i * n + i);
    packed += n - i;
  }
}
}  // namespace

std::int64_t Statistics::layers() const {
  if (domains.empty()) return 0;
  const DomainStatistics& d = domains[0];
  return d.stored ? d.stored->layers() : static_cast<std::int64_t>(d.A.size());
}

Statistics Statistics::only_layer(std::int64_t layer) const {
  Statistics one;
  one.hidden_size = hidden_size;
  one.context_tokens = context_tokens;
  one.shared_hash = shared_hash;
  const auto L = static_cast<std::size_t>(layers()), l = static_cast<std::size_t>(layer);
  for (const DomainStatistics& d : domains) {
    DomainStatistics& o = one.domains.emplace_back();
    o.name = d.name;
    o.tokens = d.tokens;
    o.A.resize(L);
    o.A[l] = d.stored ? d.stored->A(layer) : d.A.at(l);
    if (d.has_heldout()) {
      o.heldout.resize(L);
      o.heldout[l] = d.stored ? d.stored->heldout(layer) : d.heldout.at(l);
    }
  }
  return one;
}

bool DomainStatistics::has_heldout() const { return stored ? stored->has_heldout() : !heldout.empty(); }

StoredStatistics::StoredStatistics(std::shared_ptr<const H5Id> statistics_file, const std::string& name,
                                   std::int64_t layers, std::int64_t n, bool heldout, bool checked)
    : layers_(layers), n_(n), heldout_(heldout), checked_(checked), file_(std::move(statistics_file)), name_(name) {}

StoredStatistics::~StoredStatistics() = default;

std::string StoredStatistics::path(const char* what, std::int64_t l) const {
  return "/layers/" + std::to_string(l) + "/" + what + "/" + name_;
}

MatrixXdRow StoredStatistics::A(std::int64_t l) const {
  MatrixXdRow A(n_, n_);
  if (checked_) {
    const std::int64_t shape[] = {n_, n_};
    const std::vector<double> values = h5::read_f64(file_->get(), path("A", l), shape);
    std::copy(values.begin(), values.end(), A.data());
    return A;
  }
  const std::vector<std::byte> bytes = h5::read_raw(file_->get(), path("A", l));
  DUME_ASSERT(bytes.size() == static_cast<std::size_t>(n_ * n_) * sizeof(double));
  std::memcpy(A.data(), bytes.data(), bytes.size());
  return A;
}

MatrixXfRow StoredStatistics::heldout(std::int64_t l) const {
  DUME_ASSERT(heldout_);
  const std::string where = path("heldout", l);
  const std::vector<std::int64_t> shape = h5::dataset_info(file_->get(), where).shape;
  if (shape.size() != 2 || shape[1] != n_ - 1)
    throw Error(h5::file_name(file_->get()) + ": dataset '" + where + "' is not (tokens, " + std::to_string(n_ - 1) + ")");
  const std::vector<float> values = h5::read_f32(file_->get(), where, shape);
  return Eigen::Map<const MatrixXfRow>(values.data(), shape[0], shape[1]);
}

MatrixXdRow Statistics::total_A(std::int64_t layer) const {
  MatrixXdRow sum = domains.at(0).A.at(static_cast<std::size_t>(layer));
  for (std::size_t e = 1; e < domains.size(); ++e) sum += domains[e].A.at(static_cast<std::size_t>(layer));
  return sum;
}

Eigen::MatrixXd Statistics::B(std::int64_t layer) const {
  const std::int64_t n = hidden_size + 1;
  Eigen::MatrixXd b(n, static_cast<Eigen::Index>(domains.size()));
  for (std::size_t e = 0; e < domains.size(); ++e)
    b.col(static_cast<Eigen::Index>(e)) = domains[e].A.at(static_cast<std::size_t>(layer)).col(n - 1);
  return b;
}

void symmetrize(MatrixXdRow& A) { A.triangularView<Eigen::StrictlyLower>() = A.transpose(); }

std::int64_t batch_count(const CorpusWindows& windows, std::int64_t batch_sequences) {
  return (static_cast<std::int64_t>(windows.count()) + batch_sequences - 1) / batch_sequences;
}

std::vector<std::int64_t> batches_to_run(std::int64_t batches, const std::vector<std::int64_t>& heldout,
                                         const std::vector<std::int64_t>& saved) {
  std::vector<std::int64_t> todo;
  for (std::int64_t b = 0; b < batches; ++b)
    if (!std::binary_search(heldout.begin(), heldout.end(), b) && !std::binary_search(saved.begin(), saved.end(), b))
      todo.push_back(b);
  return todo;
}

std::vector<std::int64_t> rank_share(std::span<const std::int64_t> batches, int rank, int ranks) {
  std::vector<std::int64_t> mine;
  for (std::size_t i = static_cast<std::size_t>(rank); i < batches.size(); i += static_cast<std::size_t>(ranks))
    mine.push_back(batches[i]);
  return mine;
}

std::vector<std::int64_t> heldout_batches(std::int64_t batches, double fraction) {
  std::vector<std::int64_t> held;
  for (std::int64_t b = 0; b < batches; ++b)
    if (std::floor(static_cast<double>(b + 1) * fraction) > std::floor(static_cast<double>(b) * fraction)) held.push_back(b);
  return held;
}

namespace {

// Held-out tokens numbered g = 0.. in batch, window, position order, every stride-th kept: the
// first token of each batch, the stride, and the rows kept.
struct HeldoutLayout {
  std::vector<std::int64_t> first_token;
  std::int64_t stride = 1, kept = 0;
};

HeldoutLayout heldout_layout(const CorpusWindows& windows, std::int64_t C, std::int64_t batch_sequences,
                             const std::vector<std::int64_t>& batches, std::int64_t max_tokens) {
  const auto count = static_cast<std::int64_t>(windows.count());
  HeldoutLayout layout;
  std::int64_t total = 0;
  for (const std::int64_t b : batches) {
    layout.first_token.push_back(total);
    total += std::min(batch_sequences, count - b * batch_sequences) * C;
  }
  layout.stride = std::max<std::int64_t>(1, (total + max_tokens - 1) / std::max<std::int64_t>(1, max_tokens));
  layout.kept = (total + layout.stride - 1) / layout.stride;
  return layout;
}

// An on_mlp_input that copies the kept rows of a batch whose first token is `g0` into
// rows_of(layer) (kept x D).
std::function<void(std::int64_t, const float*, std::int64_t)> keep_heldout_rows(
    Backend& backend, std::int64_t D, std::int64_t stride, const std::int64_t& g0,
    std::function<MatrixXfRow&(std::int64_t layer)> rows_of) {
  auto host = std::make_shared<std::vector<float>>();
  return [&backend, D, stride, &g0, rows_of = std::move(rows_of), host](std::int64_t layer, const float* x, std::int64_t T) {
    host->resize(static_cast<std::size_t>(T * D));
    backend.download(x, *host);
    for (std::int64_t t = 0; t < T; ++t)
      if ((g0 + t) % stride == 0)
        std::copy(host->begin() + t * D, host->begin() + (t + 1) * D, rows_of(layer).data() + (g0 + t) / stride * D);
  };
}

}  // namespace

std::vector<MatrixXfRow> collect_heldout(Forward& forward, const LayerSource& load, const ModelConfig& config,
                                         const CorpusWindows& windows, std::int64_t context_tokens,
                                         std::int64_t batch_sequences, const std::vector<std::int64_t>& batches,
                                         std::int64_t max_tokens, std::int64_t chunk_batches, Backend& backend,
                                         int rank, int ranks,
                                         const std::function<void(std::int64_t layer, const MatrixXfRow& rows)>& layer_done) {
  const std::int64_t D = config.hidden_size, L = config.num_layers;
  const std::int64_t C = std::min(context_tokens, static_cast<std::int64_t>(windows.length()));
  const HeldoutLayout layout = heldout_layout(windows, C, batch_sequences, batches, max_tokens);
  std::vector<std::int64_t> mine, mine_first;
  for (std::size_t i = static_cast<std::size_t>(rank); i < batches.size(); i += static_cast<std::size_t>(ranks)) {
    mine.push_back(batches[i]);
    mine_first.push_back(layout.first_token[i]);
  }
  const auto chunk = chunk_batches > 0 ? static_cast<std::size_t>(chunk_batches) : std::max<std::size_t>(1, mine.size());
  const std::size_t most = (batches.size() + static_cast<std::size_t>(ranks) - 1) / static_cast<std::size_t>(ranks);
  const bool one_pass = layer_done && most <= chunk;  // the same on every rank: its steps are collective
  // Each rank fills the rows of its batches; a sum over ranks assembles them (every row once, the
  // others' zeros: exact in f32). kept x D floats per layer (32 MB at 8B with 2048 tokens), for
  // one layer at a time in one pass, else for all (1.1 GB at 8B).
  std::vector<MatrixXfRow> rows(one_pass ? 1 : static_cast<std::size_t>(L), MatrixXfRow::Zero(layout.kept, D));
  ForwardOptions options;
  options.forced_expert = 0;
  options.context_tokens = C;
  options.logits = false;
  std::int64_t g0 = 0;
  options.on_mlp_input = keep_heldout_rows(backend, D, layout.stride, g0, [&](std::int64_t layer) -> MatrixXfRow& {
    return rows[one_pass ? 0 : static_cast<std::size_t>(layer)];
  });
  const auto assemble = [](MatrixXfRow& layer) {
    reduce_sum(std::span<float>(layer.data(), static_cast<std::size_t>(layer.size())));
  };
  if (one_pass) {
    run_by_layer(forward, load, window_batches(windows, batch_sequences, mine, options),
                 [&](std::size_t i, std::int64_t) { g0 = mine_first[i]; },
                 [&](std::int64_t l) {
                   assemble(rows[0]);
                   layer_done(l, rows[0]);
                   rows[0].setZero();
                   return true;
                 });
    return {};
  }
  for (std::size_t begin = 0; begin < mine.size(); begin += chunk) {
    const std::size_t size = std::min(chunk, mine.size() - begin);
    run_by_layer(forward, load, window_batches(windows, batch_sequences, std::span(mine).subspan(begin, size), options),
                 [&](std::size_t i, std::int64_t) { g0 = mine_first[begin + i]; });
  }
  for (auto& layer : rows) assemble(layer);
  if (rank != 0) rows.clear();
  return rows;
}

namespace {

// The sums on the backend into stats.A; with `release`, each layer's backend copy goes once
// downloaded, so that two copies of every layer never exist.
void download_sums(Backend& backend, std::vector<Buffer64>& A, Eigen::Index n, DomainStatistics& stats, bool release) {
  stats.A.resize(A.size());
  for (std::size_t l = 0; l < A.size(); ++l) {
    stats.A[l].resize(n, n);
    backend.download(A[l].data(), {stats.A[l].data(), A[l].size()});
    if (release) A[l] = Buffer64();
  }
}

// The most rounds a chunk may take: what the memory plan allows, and no more than
// checkpoint_every sequences.
std::int64_t most_chunk_rounds(const CalibrationControl& control, std::int64_t batch_sequences, std::int64_t rounds) {
  std::int64_t most = control.chunk_batches > 0 ? control.chunk_batches : std::max<std::int64_t>(1, rounds);
  if (control.checkpoint_every > 0)
    most = std::min(most, (control.checkpoint_every + batch_sequences - 1) / batch_sequences);
  return most;
}

// The next chunk's rounds after one of `take` rounds took `seconds`: about kChunkSeconds' worth,
// at most twice the last (so that a chunk measured on a fast start does not run long) and at
// most `most`.
std::int64_t next_chunk_rounds(std::int64_t take, double seconds, std::int64_t most) {
  const auto timed = static_cast<std::int64_t>(kChunkSeconds * static_cast<double>(take) / std::max(seconds, 1e-3));
  return std::clamp<std::int64_t>(std::min(timed, 2 * take), 1, most);
}

// Runs `batches` once, layer by layer, their MLP inputs summed into `sums` (by their options'
// on_mlp_input): each layer's sums go to control.layer_done, and a stop is agreed after each.
void run_one_pass(Forward& forward, const LayerSource& load, Backend& backend, std::span<const Batch> batches,
                  Eigen::Index n, Buffer64& sums, CalibrationControl& control) {
  const std::int64_t L = forward.layers();
  MatrixXdRow partial(n, n);
  sums = backend.alloc64(static_cast<std::size_t>(n * n));  // one layer's: 134 MB at 8B, 537 MB at 70B
  run_by_layer(forward, load, batches, {}, [&](std::int64_t l) {
    backend.download(sums.data(), {partial.data(), sums.size()});
    control.layer_done(l, partial);
    if (l + 1 == L || (control.stop_requested && (control.stopped_by = control.stop_requested()) != 0)) return false;
    sums = backend.alloc64(static_cast<std::size_t>(n * n));  // zeroed for the next layer
    return true;
  });
}

}  // namespace

DomainStatistics calibrate_domain(Forward& forward, const LayerSource& load, Backend& backend, const ModelConfig& config,
                                  const CorpusWindows& windows, std::int64_t context_tokens,
                                  std::int64_t batch_sequences, const std::vector<std::int64_t>& todo, int rank,
                                  int ranks, const std::string& name, CalibrationTiming& timing, bool show_progress,
                                  CalibrationControl& control) {
  const std::int64_t D = config.hidden_size, n = D + 1, L = config.num_layers;
  const auto S = static_cast<std::int64_t>(windows.length());
  const auto count = static_cast<std::int64_t>(windows.count());
  const std::int64_t C = std::min(context_tokens, S);
  const auto jobs = static_cast<std::int64_t>(todo.size());
  const auto sequences = [&](std::int64_t b) { return std::min(batch_sequences, count - b * batch_sequences); };
  // Rank 0 reports its own share; every rank has about the same.
  std::int64_t my_tokens = 0;
  for (const std::int64_t b : rank_share(todo, rank, ranks)) my_tokens += sequences(b) * C;
  Progress progress("calibrate " + name, my_tokens * L, "token-layers", show_progress);
  DomainStatistics stats;
  stats.name = name;
  ForwardOptions options;
  options.forced_expert = 0;
  options.context_tokens = C;
  options.logits = false;
  double accumulate_seconds = 0;
  const auto accumulate = [&](Buffer64& sums, const float* x, std::int64_t T) {
    const auto t0 = Clock::now();
    backend.stats_accumulate(x, T, D, sums.data());
    accumulate_seconds += since(t0);
    timing.multiply_adds += static_cast<double>(T) * static_cast<double>(n * (n + 1) / 2);
    progress.advance(T);
  };
  const auto t0 = Clock::now();
  const auto finish = [&] {
    progress.finish();
    timing.accumulate += accumulate_seconds;
    timing.forward += since(t0) - accumulate_seconds;
  };

  const std::int64_t rounds = (jobs + ranks - 1) / ranks;
  const std::int64_t most_rounds = most_chunk_rounds(control, batch_sequences, rounds);
  if (control.layer_done && rounds <= most_rounds) {  // one pass (its A empty): see CalibrationControl::layer_done
    Buffer64 sums;
    options.on_mlp_input = [&](std::int64_t, const float* x, std::int64_t T) { accumulate(sums, x, T); };
    const std::vector<std::int64_t> mine = rank_share(todo, rank, ranks);
    run_one_pass(forward, load, backend, window_batches(windows, batch_sequences, mine, options), n, sums, control);
    if (control.stopped_by == 0)
      for (const std::int64_t b : mine) {
        stats.tokens += sequences(b) * C;
        if (control.after_batch) control.after_batch();
      }
    finish();
    return stats;
  }

  // L (D+1)^2 doubles: 4.3 GB at 8B (D = 4096, L = 32), 43 GB at 70B.
  std::vector<Buffer64> A;
  for (std::int64_t l = 0; l < L; ++l) A.push_back(backend.alloc64(static_cast<std::size_t>(n * n)));
  std::vector<std::int64_t> done;  // global batch indices in this rank's sums
  std::int64_t unsaved = 0;        // sequences run since the last save
  auto last_save = Clock::now();
  const auto save = [&] {
    if (!control.save || unsaved == 0) return;
    const PackedSums sums{L, stats.tokens, [&](std::int64_t l) {
                            const Buffer64& sum = A[static_cast<std::size_t>(l)];
                            MatrixXdRow layer(n, n);  // one layer's download: 134 MB at 8B
                            backend.download(sum.data(), {layer.data(), sum.size()});
                            std::vector<double> packed(static_cast<std::size_t>(n * (n + 1) / 2));
                            pack_rows(layer.data(), n, packed.data());
                            return packed;
                          }};
    control.save(done, sums);
    unsaved = 0;
    last_save = Clock::now();
  };

  options.on_mlp_input = [&](std::int64_t layer, const float* x, std::int64_t T) {
    accumulate(A[static_cast<std::size_t>(layer)], x, T);
  };
  // Rounds of one batch per rank, run in chunks of rounds layer by layer. A stop is agreed
  // between chunks, and saves happen there: a chunk is sized to take about kChunkSeconds (its
  // size at most doubling from one round), to hold at most checkpoint_every sequences, and to
  // fit the memory plan (control.chunk_batches).
  std::vector<std::int64_t> chunk_rounds{1};  // the first chunk measures the time of a round
  for (std::int64_t round = 0; round < rounds;) {
    if (control.stop_requested && (control.stopped_by = control.stop_requested()) != 0) break;
    const std::int64_t take = std::min(chunk_rounds[0], rounds - round);
    const auto first = static_cast<std::size_t>(round * ranks);  // this chunk's rounds' batches, then mine
    const auto size = static_cast<std::size_t>(std::min(take * ranks, jobs - round * ranks));
    const std::vector<std::int64_t> mine = rank_share(std::span(todo).subspan(first, size), rank, ranks);
    const auto chunk_start = Clock::now();
    run_by_layer(forward, load, window_batches(windows, batch_sequences, mine, options));
    chunk_rounds[0] = next_chunk_rounds(take, since(chunk_start), most_rounds);
    round += take;
    for (const std::int64_t b : mine) {
      stats.tokens += sequences(b) * C;
      done.push_back(b);
      unsaved += sequences(b);
      if (control.after_batch) control.after_batch();
    }
    // Each rank saves its own file, so ranks need not agree on when.
    if ((control.checkpoint_every > 0 && unsaved >= control.checkpoint_every) ||
        (control.checkpoint_seconds > 0 && since(last_save) >= control.checkpoint_seconds))
      save();
    broadcast(chunk_rounds);  // rank 0's choice, so every rank runs the same rounds
  }
  if (control.stopped_by != 0) save();
  finish();
  download_sums(backend, A, n, stats, /*release=*/true);
  return stats;
}

namespace {

std::size_t packed_size(const DomainStatistics& domain) {
  if (domain.stored) {
    const std::int64_t n = domain.stored->rows();
    return static_cast<std::size_t>(domain.stored->layers() * (n * (n + 1) / 2)) + 1;
  }
  const Eigen::Index n = domain.A.empty() ? 0 : domain.A[0].rows();
  return domain.A.size() * static_cast<std::size_t>(n * (n + 1) / 2) + 1;
}

}  // namespace

std::vector<double> pack_layer(const DomainStatistics& domain, std::int64_t l) {
  const MatrixXdRow stored = domain.stored ? domain.stored->A(l) : MatrixXdRow();
  const MatrixXdRow& A = domain.stored ? stored : domain.A.at(static_cast<std::size_t>(l));
  const Eigen::Index n = A.rows();
  std::vector<double> packed(static_cast<std::size_t>(n * (n + 1) / 2));
  pack_rows(A.data(), n, packed.data());
  return packed;
}

PackedSums packed_sums(const DomainStatistics& domain) {
  const std::int64_t layers = domain.stored ? domain.stored->layers() : static_cast<std::int64_t>(domain.A.size());
  return {layers, domain.tokens, [&domain](std::int64_t l) { return pack_layer(domain, l); }};
}

std::vector<double> pack_upper(const DomainStatistics& domain) {
  std::vector<double> packed;
  packed.reserve(packed_size(domain));
  const std::int64_t layers = domain.stored ? domain.stored->layers() : static_cast<std::int64_t>(domain.A.size());
  for (std::int64_t l = 0; l < layers; ++l) {
    const std::vector<double> layer = pack_layer(domain, l);
    packed.insert(packed.end(), layer.begin(), layer.end());
  }
  packed.push_back(static_cast<double>(domain.tokens));  // exact: counts stay far below 2^53
  return packed;
}

void unpack_upper(std::span<const double> packed, DomainStatistics& domain) {
  const Eigen::Index n = domain.A.empty() ? 0 : domain.A[0].rows();
  DUME_ASSERT(packed.size() == packed_size(domain));
  std::size_t k = 0;
  for (auto& A : domain.A) {
    unpack_rows(packed.data() + k, n, A.data());
    k += static_cast<std::size_t>(n * (n + 1) / 2);
    symmetrize(A);
  }
  domain.tokens = static_cast<std::int64_t>(packed[k]);
}

namespace {

// Sums one (n, n) matrix's upper triangle over the ranks into rank 0's, plus `base` there (its
// packed upper triangle, or empty), and mirrors it. Band by band: pack a band of rows' upper
// parts, reduce it in one MPI call, and on rank 0 write it back and mirror it while it is still in
// cache. Whole-matrix passes (pack all, reduce all, unpack all) spent twice as long moving memory
// as communicating.
void reduce_matrix(MatrixXdRow& matrix, std::span<const double> base, std::vector<double>& band,
                   MPI_Comm comm = MPI_COMM_WORLD, int root_rank = 0) {
  const bool root = comm_rank(comm) == root_rank;
  const Eigen::Index n = matrix.rows();
  const auto segment = static_cast<Eigen::Index>(mpi_reduce_segment_elements());
  band.resize(static_cast<std::size_t>(std::max(segment, n)));
  double* A = matrix.data();
  std::size_t offset = 0;  // of the band in the packed upper triangle, where `base` is
  for (Eigen::Index r0 = 0, r1 = 0; r0 < n; r0 = r1) {
    std::size_t k = 0;
    for (; r1 < n && (r1 == r0 || static_cast<Eigen::Index>(k) + n - r1 <= segment); ++r1) {
      std::copy(A + r1 * n + r1, A + (r1 + 1) * n, band.data() + k);  // row r1, columns r1..n-1
      k += static_cast<std::size_t>(n - r1);
    }
    if (root && !base.empty())
      for (std::size_t i = 0; i < k; ++i) band[i] += base[offset + i];
    reduce_sum({band.data(), k}, root_rank, comm);
    offset += k;
    if (!root) continue;
    k = 0;
    for (Eigen::Index i = r0; i < r1; ++i) {
      std::copy(band.data() + k, band.data() + k + (n - i), A + i * n + i);
      k += static_cast<std::size_t>(n - i);
    }
    for (Eigen::Index j = r0 + 1; j < n; ++j)  // mirror: row j's columns r0..min(r1, j) - 1
      for (Eigen::Index i = r0; i < std::min(r1, j); ++i) A[j * n + i] = A[i * n + j];
  }
}

}  // namespace

std::span<const double> layer_slice(std::span<const double> packed, std::int64_t l, std::int64_t n) {
  if (packed.empty()) return {};
  const auto size = static_cast<std::size_t>(n * (n + 1) / 2);
  return packed.subspan(static_cast<std::size_t>(l) * size, size);
}

void reduce_layer(MatrixXdRow& A, CalibrationTiming& timing, std::span<const double> base, MPI_Comm comm, int root) {
  const auto t0 = Clock::now();
  std::vector<double> band;
  reduce_matrix(A, base, band, comm, root);
  timing.reduce += since(t0);
}

void reduce_domain(DomainStatistics& domain, CalibrationTiming& timing, std::span<const double> base) {
  const auto t0 = Clock::now();
  const bool root = mpi_rank() == 0;
  const Eigen::Index n = domain.A.empty() ? 0 : domain.A[0].rows();
  DUME_ASSERT(base.empty() || domain.A.empty() || base.size() == packed_size(domain));
  std::vector<double> band;
  for (std::size_t l = 0; l < domain.A.size(); ++l)
    reduce_matrix(domain.A[l], layer_slice(base, static_cast<std::int64_t>(l), n), band);
  double tokens = static_cast<double>(domain.tokens) + (root && !base.empty() ? base.back() : 0.0);
  reduce_sum({&tokens, 1});
  if (root) domain.tokens = static_cast<std::int64_t>(tokens);  // exact: counts stay far below 2^53
  timing.reduce += since(t0);
}

std::int64_t calibrate_staged(Forward& forward, const LayerSource& load, const Grid& grid, const CorpusWindows& windows,
                              std::int64_t context_tokens, std::int64_t batch_sequences,
                              const std::vector<std::int64_t>& todo, std::int64_t chunk, const std::string& name,
                              CalibrationTiming& timing, bool show_progress,
                              const std::function<void(std::int64_t layer, MatrixXdRow& A)>& layer_done) {
  Backend& backend = forward.backend();
  const std::int64_t D = forward.hidden_size(), n = D + 1, first = grid.first_layer(), end = grid.end_layer();
  const auto count = static_cast<std::int64_t>(windows.count());
  const std::int64_t C = std::min(context_tokens, static_cast<std::int64_t>(windows.length()));
  const auto rows = [&](std::int64_t b) { return std::min(batch_sequences, count - b * batch_sequences) * C; };
  const std::vector<std::int64_t> mine = rank_share(todo, grid.replica(), grid.replicas());
  std::int64_t tokens = 0, my_tokens = 0;
  for (const std::int64_t b : todo) tokens += rows(b);
  for (const std::int64_t b : mine) my_tokens += rows(b);
  Progress progress("calibrate " + name, my_tokens * (end - first), "token-layers", show_progress);
  // The stage's layers' sums, each its upper triangle packed (n(n+1)/2 doubles: 1.1 GB on each of
  // two stages at 8B, 2.7 GB on each of eight at 70B), and the layer being run unpacked into
  // `work` ((D+1)^2 doubles, 134 MB at 8B): restored exactly, so each layer's sums take the
  // batches in the order one resident matrix would.
  const auto half = static_cast<std::size_t>(n * (n + 1) / 2);
  std::vector<std::vector<double>> packed(static_cast<std::size_t>(end - first), std::vector<double>(half, 0.0));
  Buffer64 work = backend.alloc64(static_cast<std::size_t>(n * n));
  std::vector<double> staging(backend.kind() == BackendKind::cpu ? 0 : static_cast<std::size_t>(n * n));
  double* host = staging.empty() ? work.data() : staging.data();  // work's upper triangle, on the host
  std::int64_t resident = -1;                                      // the layer in `work`
  const auto make_resident = [&](std::int64_t l) {
    if (l == resident) return;
    if (resident >= 0) {
      if (!staging.empty()) backend.download(work.data(), staging);
      pack_rows(host, n, packed[static_cast<std::size_t>(resident - first)].data());
    }
    if (l >= 0) {
      unpack_rows(packed[static_cast<std::size_t>(l - first)].data(), n, host);
      if (!staging.empty()) backend.copy_in(staging, work.data());
    }
    resident = l;
  };
  ForwardOptions options;
  options.forced_expert = 0;
  options.context_tokens = C;
  options.logits = false;
  double accumulate_seconds = 0;
  options.on_mlp_input = [&](std::int64_t l, const float* x, std::int64_t T) {
    const auto t0 = Clock::now();
    make_resident(l);
    backend.stats_accumulate(x, T, D, work.data());
    accumulate_seconds += since(t0);
    timing.multiply_adds += static_cast<double>(T) * static_cast<double>(n * (n + 1) / 2);
    progress.advance(T);
  };
  const auto t0 = Clock::now();
  const double waited = run_pipelined(forward, load, grid, window_batches(windows, batch_sequences, mine, options), chunk);
  make_resident(-1);
  work = Buffer64();
  staging = {};
  progress.finish();
  timing.accumulate += accumulate_seconds;
  timing.pipeline_wait += waited;
  timing.forward += since(t0) - accumulate_seconds - waited;
  MatrixXdRow partial(n, n);
  for (std::int64_t l = first; l < end; ++l) {
    std::vector<double>& sums = packed[static_cast<std::size_t>(l - first)];
    unpack_rows(sums.data(), n, partial.data());
    sums = {};
    reduce_layer(partial, timing, {}, grid.stage_comm(), grid.solver_of(l));
    if (grid.solves(l)) layer_done(l, partial);
  }
  return tokens;
}

void collect_heldout_staged(Forward& forward, const LayerSource& load, const Grid& grid, const CorpusWindows& windows,
                            std::int64_t context_tokens, std::int64_t batch_sequences,
                            const std::vector<std::int64_t>& batches, std::int64_t max_tokens, std::int64_t chunk,
                            const std::function<void(std::int64_t layer, const MatrixXfRow& rows)>& layer_done) {
  const std::int64_t D = forward.hidden_size(), first = grid.first_layer(), end = grid.end_layer();
  const std::int64_t C = std::min(context_tokens, static_cast<std::int64_t>(windows.length()));
  const HeldoutLayout layout = heldout_layout(windows, C, batch_sequences, batches, max_tokens);
  const std::vector<std::int64_t> mine = rank_share(batches, grid.replica(), grid.replicas());
  const std::vector<std::int64_t> mine_first = rank_share(layout.first_token, grid.replica(), grid.replicas());
  // The stage's layers' rows, each replica filling its batches' (as collect_heldout).
  std::vector<MatrixXfRow> rows(static_cast<std::size_t>(end - first), MatrixXfRow::Zero(layout.kept, D));
  ForwardOptions options;
  options.forced_expert = 0;
  options.context_tokens = C;
  options.logits = false;
  std::int64_t g0 = 0;
  options.on_mlp_input = keep_heldout_rows(forward.backend(), D, layout.stride, g0, [&](std::int64_t layer) -> MatrixXfRow& {
    return rows[static_cast<std::size_t>(layer - first)];
  });
  run_pipelined(forward, load, grid, window_batches(windows, batch_sequences, mine, options), chunk,
                [&](std::size_t i, std::int64_t) { g0 = mine_first[i]; });  // its waits count as forward time
  for (std::int64_t l = first; l < end; ++l) {
    MatrixXfRow& layer = rows[static_cast<std::size_t>(l - first)];
    reduce_sum(std::span<float>(layer.data(), static_cast<std::size_t>(layer.size())), grid.solver_of(l),
               grid.stage_comm());
    if (grid.solves(l)) layer_done(l, layer);
    layer = MatrixXfRow();
  }
}

}  // namespace dume
