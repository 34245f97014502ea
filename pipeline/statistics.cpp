#include "statistics.hpp"

#include <chrono>

#include "comm.hpp"
#include "progress.hpp"

namespace dume {

namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
}  // namespace

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

DomainStatistics calibrate_domain(Forward& forward, Backend& backend, const ModelConfig& config,
                                  const CorpusWindows& windows, std::int64_t context_tokens,
                                  std::int64_t batch_sequences, int rank, int ranks, const std::string& name,
                                  CalibrationTiming& timing, bool show_progress) {
  const std::int64_t D = config.hidden_size, n = D + 1, L = config.num_layers;
  const auto S = static_cast<std::int64_t>(windows.length());
  const auto count = static_cast<std::int64_t>(windows.count());
  const std::int64_t C = std::min(context_tokens, S);
  const std::int64_t batches = (count + batch_sequences - 1) / batch_sequences;

  std::vector<Buffer64> A;
  for (std::int64_t l = 0; l < L; ++l) A.push_back(backend.alloc64(static_cast<std::size_t>(n * n)));

  // Rank 0 reports its own share; every rank has about the same.
  std::int64_t my_tokens = 0;
  for (std::int64_t b = rank; b < batches; b += ranks)
    my_tokens += std::min(batch_sequences, count - b * batch_sequences) * C;
  Progress progress("calibrate " + name, my_tokens, "tokens", show_progress);

  DomainStatistics stats;
  stats.name = name;
  ForwardOptions options;
  options.forced_expert = 0;
  options.context_tokens = C;
  options.logits = false;
  double accumulate_seconds = 0;
  options.on_mlp_input = [&](std::int64_t layer, const float* x, std::int64_t T) {
    const auto t0 = Clock::now();
    backend.stats_accumulate(x, T, D, A[static_cast<std::size_t>(layer)].data());
    accumulate_seconds += since(t0);
    timing.multiply_adds += static_cast<double>(T) * static_cast<double>(n * (n + 1) / 2);
  };
  const auto t0 = Clock::now();
  for (std::int64_t b = rank; b < batches; b += ranks) {
    const std::int64_t first = b * batch_sequences, B = std::min(batch_sequences, count - first);
    const auto tokens = windows.tokens().subspan(static_cast<std::size_t>(first * S), static_cast<std::size_t>(B * S));
    forward.run(tokens, B, S, options);
    stats.tokens += B * C;
    progress.advance(B * C);
  }
  progress.finish();
  timing.accumulate += accumulate_seconds;
  timing.forward += since(t0) - accumulate_seconds;

  for (std::int64_t l = 0; l < L; ++l) {
    MatrixXdRow& host = stats.A.emplace_back(n, n);
    backend.download(A[static_cast<std::size_t>(l)].data(), {host.data(), static_cast<std::size_t>(n * n)});
  }
  return stats;
}

void reduce_domain(DomainStatistics& domain, CalibrationTiming& timing) {
  const auto t0 = Clock::now();
  const Eigen::Index n = domain.A.empty() ? 0 : domain.A[0].rows();
  const std::size_t triangle = static_cast<std::size_t>(n * (n + 1) / 2);
  std::vector<double> packed(domain.A.size() * triangle + 1);
  std::size_t k = 0;  // row i's upper part, columns i..n-1, is contiguous in row-major storage
  for (const auto& A : domain.A)
    for (Eigen::Index i = 0; i < n; ++i) {
      std::copy(A.data() + i * n + i, A.data() + (i + 1) * n, packed.data() + k);
      k += static_cast<std::size_t>(n - i);
    }
  packed[k] = static_cast<double>(domain.tokens);  // exact: counts stay far below 2^53
  reduce_sum(packed);
  if (mpi_rank() == 0) {
    k = 0;
    for (auto& A : domain.A) {
      for (Eigen::Index i = 0; i < n; ++i) {
        std::copy(packed.data() + k, packed.data() + k + (n - i), A.data() + i * n + i);
        k += static_cast<std::size_t>(n - i);
      }
      symmetrize(A);
    }
    domain.tokens = static_cast<std::int64_t>(packed[k]);
  }
  timing.reduce += since(t0);
}

}  // namespace dume
