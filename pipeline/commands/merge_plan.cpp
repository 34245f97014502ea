#include "merge_plan.hpp"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "error.hpp"
#include "forward.hpp"
#include "grid.hpp"
#include "hf_checkpoint.hpp"
#include "merge.hpp"
#include "progress.hpp"
#include "resources.hpp"
#include "statistics.hpp"

namespace dume {

namespace {

// The forward+statistics rate (GFLOP/s per rank) a `dume bench --json` file measured.
double measured_rate(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw Error(path.string() + ": cannot read");
  nlohmann::json bench;
  try {
    bench = nlohmann::json::parse(in);
    for (const auto& phase : bench.at("phases"))
      if (phase.at("phase") == "forward+statistics" && phase.at("unit") == "GFLOP/s")
        return phase.at("measured").get<double>() / bench.at("ranks").get<double>();
  } catch (const nlohmann::json::exception& e) {
    throw Error(path.string() + ": not a `dume bench --json` file: " + e.what());
  }
  throw Error(path.string() + ": no forward+statistics rate (run `dume bench --json` with its default phases)");
}

std::uintmax_t checkpoint_bytes(const HfCheckpoint& checkpoint) {
  std::uintmax_t bytes = 0;
  for (const SafetensorsFile& f : checkpoint.files()) bytes += std::filesystem::file_size(f.path());
  return bytes;
}

}  // namespace

namespace {

// A merge's plan on a grid of `stages` stages of `replicas` ranks: each stage's memory plan (the
// largest decides), the pipeline's chunks and its expected utilization.
struct GridPlan {
  std::vector<std::int64_t> first;  // stage_layers
  std::vector<MemoryPlan> stages;   // per stage
  std::int64_t chunk = 0, chunks = 0;  // batches per chunk and chunks per domain, per replica
  double utilization = 1;              // of the ranks while calibrating: fill and drain, and balance

  const MemoryPlan& largest() const {  // the highest peak; of equal peaks, the largest minimum
    return *std::max_element(stages.begin(), stages.end(), [](const MemoryPlan& a, const MemoryPlan& b) {
      return std::pair(a.peak(), a.minimum) < std::pair(b.peak(), b.minimum);
    });
  }
};

GridPlan plan_grid(const ModelConfig& mc, const MergeConfig& config, std::int64_t E, DType dtype, int stages,
                   std::int64_t batches_per_replica, std::int64_t budget) {
  GridPlan grid;
  grid.first = stage_layers(mc, E, stages);
  std::int64_t most_layers = 0;
  for (int s = 0; s < stages; ++s) {
    const std::int64_t layers = grid.first[static_cast<std::size_t>(s) + 1] - grid.first[static_cast<std::size_t>(s)];
    most_layers = std::max(most_layers, layers);
    grid.stages.push_back(plan_memory(mc, config, E, dtype, batches_per_replica, budget,
                                      stages > 1 ? StageShare{stages, layers} : StageShare{}));
  }
  if (stages == 1) return grid;
  grid.chunk = pipeline_chunk(batches_per_replica, stages, grid.largest().chunk_rounds);
  grid.chunks = (std::max<std::int64_t>(1, batches_per_replica) + grid.chunk - 1) / grid.chunk;
  // Each stage idles P - 1 chunk times of M + P - 1 (fill and drain), and the stage with the most
  // layers sets the pace.
  grid.utilization = static_cast<double>(grid.chunks) / static_cast<double>(grid.chunks + stages - 1) *
                     (static_cast<double>(mc.num_layers) / stages) / static_cast<double>(most_layers);
  return grid;
}

void check_grid(int ranks, int stages) {
  if (ranks % stages != 0)
    throw Error("parallel.stages " + std::to_string(stages) + " does not divide the job's " + std::to_string(ranks) +
                " ranks: every stage needs the same number of replicas");
}

}  // namespace

MemoryPlan print_merge_plan(const MergeConfig& config, const MergeInputs& in, int ranks, int ranks_per_node,
                            const std::optional<std::filesystem::path>& rates) {
  const std::optional<double> rate = rates ? std::optional(measured_rate(*rates)) : std::nullopt;
  const ModelConfig& mc = in.experts.at(0).config();
  const auto E = static_cast<std::int64_t>(in.experts.size());
  const CalibrationSettings& cs = config.calibration;
  const std::int64_t C = std::min(config.router.context_tokens, cs.sequence_length);
  const int P = config.stages;
  stage_layers(mc, E, P);  // more stages than layers: refused first, as by the merge
  check_grid(ranks, P);
  const int replicas = ranks / P;
  const auto per_replica = [replicas](std::int64_t batches) { return (batches + replicas - 1) / replicas; };
  std::int64_t batches_per_replica = 0, tokens = 0;
  double flops = 0;
  for (const CorpusWindows& windows : in.calibration) {
    batches_per_replica = std::max(batches_per_replica, per_replica(batch_count(windows, cs.batch_sequences)));
    const auto sequences = static_cast<std::int64_t>(windows.count());
    tokens += sequences * C;
    const double n = static_cast<double>(mc.hidden_size + 1);
    flops += Forward::flops(mc, sequences, C, /*logits=*/false) +
             2.0 * static_cast<double>(sequences * C * mc.num_layers) * n * (n + 1) / 2;  // the A updates
  }
  const std::int64_t budget = config.memory > 0 ? config.memory : memory_budget_default(ranks_per_node);
  const GridPlan grid = plan_grid(mc, config, E, in.dtype, P, batches_per_replica, budget);
  const MemoryPlan& memory = grid.largest();

  std::uintmax_t experts = 0;
  for (const HfCheckpoint& e : in.experts) experts += checkpoint_bytes(e);
  const double stored = static_cast<double>(dtype_size(in.dtype));
  const double D = static_cast<double>(mc.hidden_size), F = static_cast<double>(mc.intermediate_size),
               L = static_cast<double>(mc.num_layers), V = static_cast<double>(mc.vocab_size);
  const double shared = (V * D * (mc.tie_word_embeddings ? 1 : 2) +
                         L * (2 * static_cast<double>(mc.q_dim() + mc.kv_dim()) * D + 2 * D) + D) * stored;
  const double moe = shared + static_cast<double>(E) * L * 3 * D * F * stored;
  const double statistics = static_cast<double>(E) * L * (D + 1) * (D + 1) * 8;

  std::printf("# dume plan: %lld experts of %s (D=%lld F=%lld L=%lld V=%lld, %s), %lld calibration tokens, "
              "%d rank%s (%d per node)\n",
              static_cast<long long>(E), mc.architecture_name.c_str(), static_cast<long long>(mc.hidden_size),
              static_cast<long long>(mc.intermediate_size), static_cast<long long>(mc.num_layers),
              static_cast<long long>(mc.vocab_size), std::string(to_string(in.dtype)).c_str(),
              static_cast<long long>(tokens), ranks, ranks == 1 ? "" : "s", ranks_per_node);
  if (P > 1) {
    std::printf("# grid: %d stages x %d replica%s\n", P, replicas, replicas == 1 ? "" : "s");
    for (int s = 0; s < P; ++s)
      std::printf("#   stage %d: layers %lld-%lld, %s parameters of the MoE, reads %s of each expert per chunk; predicted peak %s per rank\n", s,
                  static_cast<long long>(grid.first[static_cast<std::size_t>(s)]),
                  static_cast<long long>(grid.first[static_cast<std::size_t>(s) + 1] - 1),
                  format_count(static_cast<double>(stage_parameters(mc, E, grid.first, s))).c_str(),
                  format_bytes(static_cast<double>(experts) / static_cast<double>(E) *
                               static_cast<double>(grid.first[static_cast<std::size_t>(s) + 1] - grid.first[static_cast<std::size_t>(s)]) / L)
                      .c_str(),
                  format_bytes(static_cast<double>(grid.stages[static_cast<std::size_t>(s)].peak())).c_str());
    // Every calibration and held-out token's residual stream crosses each boundary once.
    std::printf("# pipeline: %s sent between stages (%s per boundary, in chunks of %lld batches, %lld per domain "
                "and replica); expected utilization %.0f %% (fill and drain, and the largest stage)\n",
                format_bytes(static_cast<double>(P - 1) * static_cast<double>(tokens) * D * 4).c_str(),
                format_bytes(static_cast<double>(tokens) * D * 4).c_str(), static_cast<long long>(grid.chunk),
                static_cast<long long>(grid.chunks), 100 * grid.utilization);
    std::printf("# memory of the largest stage's ranks:\n");
  }
  std::printf("%s", memory.describe().c_str());
  std::printf("# reads: the experts (%s) once per calibration chunk and once to write; writes: the MoE (%s), "
              "stats.h5 (%s), and the shared weights once to scratch (%s)\n",
              format_bytes(static_cast<double>(experts)).c_str(), format_bytes(moe).c_str(),
              format_bytes(statistics).c_str(), format_bytes(shared).c_str());
  const double per_rank = flops / ranks / grid.utilization;
  std::printf("# compute: %.3g TFLOP of forward and statistics (%.3g per rank%s)", flops / 1e12, per_rank / 1e12,
              P > 1 ? ", with the pipeline's idle time" : "");
  if (rate) {
    std::printf("; at %.1f GFLOP/s per rank (%s) about %s, reads and writes not included\n", *rate, rates->c_str(),
                format_duration(per_rank / (*rate * 1e9)).c_str());
  } else {
    std::printf("; pass --rates BENCH.json (`dume bench --json`) for the expected time\n");
  }
  return memory;
}

std::optional<int> smallest_grid(const MergeConfig& config, const MergeInputs& in, int ranks, int ranks_per_node) {
  const ModelConfig& mc = in.experts.at(0).config();
  const auto E = static_cast<std::int64_t>(in.experts.size());
  const std::int64_t budget = config.memory > 0 ? config.memory : memory_budget_default(ranks_per_node);
  for (int P = 1; P <= std::min<std::int64_t>(ranks, mc.num_layers); ++P) {
    if (ranks % P != 0) continue;
    std::int64_t batches_per_replica = 0;
    for (const CorpusWindows& windows : in.calibration)
      batches_per_replica = std::max(batches_per_replica,
                                     (batch_count(windows, config.calibration.batch_sequences) + ranks / P - 1) / (ranks / P));
    try {
      plan_grid(mc, config, E, in.dtype, P, batches_per_replica, budget);
      return P;
    } catch (const Error&) {  // too small for this grid: try more stages
    }
  }
  return std::nullopt;
}

}  // namespace dume
