// `dume bench`: every phase of a merge on a synthetic model next to the limit that bounds it,
// measured in the same run (an MPI job: run it on 1, 2, 4, ... ranks for a scaling study).
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "benchmark.hpp"
#include "comm.hpp"
#include "commands.hpp"
#include "merge.hpp"

namespace dume::cli {

namespace {

struct BenchOptions {
  std::string preset = "d1024";
  std::int64_t layers = 0, sequence_length = 256, batch = 4;
  int threads = 0, repeat = 3;
  std::string json;
  std::string write_experts;  // write synthetic experts here instead of benchmarking
  int experts = 2;
  std::int64_t tokens = 1 << 20;
};

void print_table(const std::vector<PhaseResult>& phases) {
  std::printf("#\n# %-27s %11s %11s %9s %6s %9s %7s  %s\n", "phase", "measured", "limit", "unit", "ratio", "spread",
              "#wrong", "limit is");
  for (const auto& p : phases) {
    const double m = median(p.seconds);
    char ratio[16] = "-", limit[32] = "-", range[32] = "-";
    if (p.limit > 0) {
      std::snprintf(ratio, sizeof ratio, "%.2f", p.measured / p.limit);
      std::snprintf(limit, sizeof limit, "%.1f", p.limit);
    }
    if (!p.seconds.empty()) std::snprintf(range, sizeof range, "%.0f%%", 100 * spread(p.seconds) / m);
    std::printf("  %-27s %11.1f %11s %9s %6s %9s %7ld  %s\n", p.phase.c_str(), p.measured, limit, p.unit.c_str(), ratio,
                range, p.wrong, p.limit_name.c_str());
    if (p.bytes > 0)
      std::printf("  %-27s %11.2f %11.2f %9s %6.2f %9s %7s  (bus bandwidth, nccl-tests' definition; %.1f MB)\n",
                  "  reduce busbw", p.busbw, p.limit_busbw, "GB/s", p.limit_busbw > 0 ? p.busbw / p.limit_busbw : 0.0,
                  "", "", p.bytes / 1e6);
  }
}

void run_bench(const BenchOptions& o) {
  BenchSettings s;
  s.config = bench_preset(o.preset);
  if (o.layers > 0) s.config.num_layers = o.layers;
  s.config.json_text = model_config_to_json(s.config);
  s.batch = o.batch;
  s.sequence_length = o.sequence_length;
  s.repeat = o.repeat;
  if (!o.write_experts.empty()) {
    if (mpi_rank() == 0) {
      write_synthetic_experts(s.config, o.experts, o.tokens, o.sequence_length, o.batch, o.write_experts);
      std::printf("wrote %d synthetic experts (%s) and %s/merge.yaml\n", o.experts, o.preset.c_str(),
                  o.write_experts.c_str());
    }
    return;
  }
  const ModelConfig& c = s.config;
  const int threads = threads_per_rank(o.threads);
  auto backend = make_backend(BackendKind::cpu, threads);
  s.scratch = std::filesystem::temp_directory_path() / ("dume-bench-" + std::to_string(getpid()));
  std::filesystem::create_directories(s.scratch);
  if (mpi_rank() == 0) {
    std::printf("# dume bench: preset %s (D=%lld F=%lld L=%lld H=%lld Hkv=%lld V=%lld), %lld x %lld tokens per pass\n",
                o.preset.c_str(), static_cast<long long>(c.hidden_size), static_cast<long long>(c.intermediate_size),
                static_cast<long long>(c.num_layers), static_cast<long long>(c.num_heads),
                static_cast<long long>(c.num_kv_heads), static_cast<long long>(c.vocab_size),
                static_cast<long long>(o.batch), static_cast<long long>(o.sequence_length));
    std::printf("# %d rank%s x %d thread%s; backend %s\n", mpi_size(), mpi_size() == 1 ? "" : "s", threads,
                threads == 1 ? "" : "s", backend->describe().c_str());
    std::printf("# medians of %d runs; ratio = measured / limit; the limits are measured in this run\n", o.repeat);
    std::fflush(stdout);
  }
  const std::vector<PhaseResult> phases = run_benchmark(s, *backend);
  std::filesystem::remove_all(s.scratch);
  long wrong = 0;
  for (const auto& p : phases) wrong += p.wrong;
  if (mpi_rank() == 0) {
    print_table(phases);
    if (!o.json.empty()) {
      nlohmann::json j;
      j["preset"] = o.preset;
      j["ranks"] = mpi_size();
      j["threads"] = threads;
      j["backend"] = backend->describe();
      j["shape"] = {{"D", c.hidden_size}, {"F", c.intermediate_size}, {"L", c.num_layers}, {"H", c.num_heads},
                    {"Hkv", c.num_kv_heads}, {"V", c.vocab_size}, {"batch", o.batch}, {"S", o.sequence_length}};
      for (const auto& p : phases)
        j["phases"].push_back({{"phase", p.phase}, {"unit", p.unit}, {"measured", p.measured}, {"limit", p.limit},
                               {"limit_is", p.limit_name}, {"ratio", p.limit > 0 ? p.measured / p.limit : 0.0},
                               {"seconds", p.seconds}, {"median_seconds", median(p.seconds)},
                               {"spread_seconds", spread(p.seconds)}, {"wrong", p.wrong}, {"bytes", p.bytes},
                               {"busbw", p.busbw}, {"limit_busbw", p.limit_busbw}});
      std::ofstream(o.json) << j.dump(2) << "\n";
    }
  }
  if (wrong) throw CollectiveError("benchmark produced " + std::to_string(wrong) + " wrong results (see #wrong)");
}

}  // namespace

void add_bench(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench", "Benchmark every phase of a merge against this machine's limits (MPI job)");
  auto o = std::make_shared<BenchOptions>();
  cmd->add_option("--preset", o->preset, "tiny | d1024 | llama-1b-shape | llama-8b-shape")->capture_default_str();
  cmd->add_option("--layers", o->layers, "Override the preset's layer count")->check(CLI::NonNegativeNumber);
  cmd->add_option("--sequence-length", o->sequence_length, "Tokens per sequence")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--batch", o->batch, "Sequences per forward pass")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--threads", o->threads, "Compute threads per rank (0: this node's cores / ranks)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--repeat", o->repeat, "Timed runs per phase (median and spread are reported)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--json", o->json, "Also write the results as JSON to this file");
  cmd->add_option("--write-experts", o->write_experts,
                  "Instead of benchmarking, write synthetic experts of the preset's shape, corpora and a merge.yaml here");
  cmd->add_option("--experts", o->experts, "Synthetic experts to write")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--tokens", o->tokens, "Calibration tokens per synthetic expert")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->callback([o] { run_job([&] { run_bench(*o); }); });
}

}  // namespace dume::cli
