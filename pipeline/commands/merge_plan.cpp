#include "merge_plan.hpp"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "error.hpp"
#include "forward.hpp"
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

MemoryPlan print_merge_plan(const MergeConfig& config, int ranks, int ranks_per_node,
                            const std::optional<std::filesystem::path>& rates) {
  const std::optional<double> rate = rates ? std::optional(measured_rate(*rates)) : std::nullopt;
  const MergeInputs in = merge_prepare(config);  // every check a merge makes before any work
  const ModelConfig& mc = in.experts.at(0).config();
  const auto E = static_cast<std::int64_t>(in.experts.size());
  const CalibrationSettings& cs = config.calibration;
  const std::int64_t C = std::min(config.router.context_tokens, cs.sequence_length);
  std::int64_t batches_per_rank = 0, tokens = 0;
  double flops = 0;
  for (const CorpusWindows& windows : in.calibration) {
    const std::int64_t batches = batch_count(windows, cs.batch_sequences);
    batches_per_rank = std::max(batches_per_rank, (batches + ranks - 1) / ranks);
    const auto sequences = static_cast<std::int64_t>(windows.count());
    tokens += sequences * C;
    const double n = static_cast<double>(mc.hidden_size + 1);
    flops += Forward::flops(mc, sequences, C, /*logits=*/false) +
             2.0 * static_cast<double>(sequences * C * mc.num_layers) * n * (n + 1) / 2;  // the A updates
  }
  const std::int64_t budget = config.memory > 0 ? config.memory : memory_budget_default(ranks_per_node);
  const MemoryPlan memory = plan_memory(mc, config, E, in.dtype, batches_per_rank, budget);

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
  std::printf("%s", memory.describe().c_str());
  std::printf("# reads: the experts (%s) once per calibration chunk and once to write; writes: the MoE (%s), "
              "stats.h5 (%s), and the shared weights once to scratch (%s)\n",
              format_bytes(static_cast<double>(experts)).c_str(), format_bytes(moe).c_str(),
              format_bytes(statistics).c_str(), format_bytes(shared).c_str());
  std::printf("# compute: %.3g TFLOP of forward and statistics (%.3g per rank)", flops / 1e12, flops / 1e12 / ranks);
  if (rate) {
    std::printf("; at %.1f GFLOP/s per rank (%s) about %s, reads and writes not included\n", *rate, rates->c_str(),
                format_duration(flops / ranks / (*rate * 1e9)).c_str());
  } else {
    std::printf("; pass --rates BENCH.json (`dume bench --json`) for the expected time\n");
  }
  return memory;
}

}  // namespace dume
