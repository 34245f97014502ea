// `dume bench [CONFIG]`: every phase of a merge next to the limit that bounds it, measured in the
// same run (an MPI job: run it on 1, 2, 4, ... ranks for a scaling study). Without a config, a
// synthetic model of a preset shape; with one, its first expert and calibration corpus.
#include <sched.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "benchmark.hpp"
#include "comm.hpp"
#include "commands.hpp"
#include "layer_stream.hpp"
#include "memory_plan.hpp"
#include "merge.hpp"
#include "outputs.hpp"

namespace dume::cli {

namespace {

struct BenchOptions {
  std::string config;  // a merge config: its first expert's weights and calibration tokens
  bool ranks_note = false;
  std::string preset = "d1024";
  std::int64_t layers = 0, sequence_length = 256, batch = 4;
  int threads = 0, repeat = 3;
  std::string backend = "cpu";
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
    if (p.bytes > 0 && p.limit_busbw > 0)
      std::printf("  %-27s %11.2f %11.2f %9s %6.2f %9s %7s  (bus bandwidth, nccl-tests' definition; %.1f MB)\n",
                  "  reduce busbw", p.busbw, p.limit_busbw, "GB/s", p.busbw / p.limit_busbw,
                  "", "", p.bytes / 1e6);
  }
}

// This process's CPUs as "0-3,8" (its affinity mask, as the launcher bound it).
std::string cpu_list() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return "?";
  std::string list;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (!CPU_ISSET(c, &set) || (c > 0 && CPU_ISSET(c - 1, &set))) continue;
    int last = c;
    while (last + 1 < CPU_SETSIZE && CPU_ISSET(last + 1, &set)) ++last;
    if (!list.empty()) list += ',';  // appended piece by piece: GCC 12 warns falsely (-Wrestrict) on "-" + string
    list += std::to_string(c);
    if (last > c) list.append("-").append(std::to_string(last));
  }
  return list;
}

// Where each rank runs, printed by rank 0: results mean little without the placement (ranks
// sharing a node share its cores and memory bandwidth; a bad binding halves a GEMM rate).
void print_ranks_note(int threads) {
  for (int r = 0; r < mpi_size(); ++r) {
    std::string line = "# rank " + std::to_string(r) + ": host " + host_name() + " (" + std::to_string(mpi_local_size()) +
                       " rank" + (mpi_local_size() == 1 ? "" : "s") + " on it), " + std::to_string(threads) +
                       " thread" + (threads == 1 ? "" : "s") + ", CPUs " + cpu_list();
    broadcast(line, r);
    if (mpi_rank() == 0) std::printf("%s\n", line.c_str());
  }
}

// --json's file may replace an earlier report, never an input: checked before any work.
void check_json_output(const BenchOptions& o) {
  collective_phase([&] {
    const std::vector<InputPath> inputs{{"the configuration", o.config}};
    check_output(o.json, inputs, /*force=*/true, {.directory = false, .marker = {}});
  });
}

// The layers the benchmark holds in f32, beside the embedding and the LM head: as many of the
// model's as fit this rank's memory budget (at least one; its rates are per layer, and an 8B
// model whole would be 32 GB), or --layers for a preset.
std::int64_t bench_layers(const ModelConfig& c, std::int64_t requested) {
  if (requested > 0) return requested;
  const std::int64_t f32 = 4, buffers = std::int64_t{1} << 30;
  const std::int64_t left = memory_budget_default(mpi_local_size()) - 2 * c.vocab_size * c.hidden_size * f32 - buffers;
  return std::clamp<std::int64_t>(left / layer_bytes(c, 1, false, false), 1, c.num_layers);
}

// The config's first expert and the first windows of its calibration corpus (repeated if short)
// into `s`, the expert's weights (bench_layers of its `layers`) into `model`. Returns the shape's
// name for the header.
std::string load_first_expert(const BenchOptions& o, BenchSettings& s, std::optional<Model>& model,
                              std::int64_t& layers) {
  std::string shape_name;
  collective_phase([&] {
    const MergeConfig config = merge_config_read(o.config);
    const HfCheckpoint checkpoint(config.experts[0].checkpoint);
    ModelConfig held = checkpoint.config();
    layers = held.num_layers;
    held.num_layers = bench_layers(held, 0);
    model = load_whole(checkpoint_layers(checkpoint), empty_model(held, 1));
    s.config = model->config;
    s.sequence_length = config.calibration.sequence_length;
    s.batch = config.calibration.batch_sequences;
    const LoadedCorpus corpus = load_calibration(config, config.experts[0].calibration,
                                                 static_cast<std::size_t>(s.config.vocab_size));
    s.sequence_length = static_cast<std::int64_t>(corpus.windows.length());
    const auto T = static_cast<std::size_t>(s.batch * s.sequence_length);
    const auto all = corpus.windows.tokens();
    for (std::size_t i = 0; i < T; ++i) s.tokens.push_back(all[i % all.size()]);  // repeated if short
    shape_name = config.experts[0].name + " (" + config.experts[0].checkpoint.string() + ")";
  });
  s.model = &*model;
  return shape_name;
}

// --write-experts: synthetic experts of the shape instead of a benchmark (rank 0 writes).
void write_experts(const BenchOptions& o, const ModelConfig& c) {
  if (mpi_rank() != 0) return;
  // Only into a new directory: it never replaces a file it did not write.
  const std::filesystem::path dir = output_path(o.write_experts);
  if (std::filesystem::exists(std::filesystem::symlink_status(dir)))
    throw Error("--write-experts " + dir.string() + " exists; dume bench writes synthetic experts only into a new directory");
  check_output(dir, {}, /*force=*/false, {.directory = true, .marker = {}});
  const OutputLock lock(dir);
  write_output_atomically(dir, /*force=*/false, [&](const std::filesystem::path& tmp) {
    write_synthetic_experts(c, o.experts, o.tokens, o.sequence_length, o.batch, tmp);
  });
  std::printf("wrote %d synthetic experts (%s) and %s/merge.yaml\n", o.experts, o.preset.c_str(), dir.c_str());
}

// The `#` header (rank 0): what runs, where, and how the table reads.
void print_header(const BenchOptions& o, const BenchSettings& s, const std::string& shape_name, int threads,
                  const Backend& backend) {
  if (mpi_rank() != 0) return;
  const ModelConfig& c = s.config;
  std::printf("# dume bench: %s %s (D=%lld F=%lld L=%lld H=%lld Hkv=%lld V=%lld), %lld x %lld tokens per pass\n",
              o.config.empty() ? "preset" : "expert", shape_name.c_str(), static_cast<long long>(c.hidden_size), static_cast<long long>(c.intermediate_size),
              static_cast<long long>(c.num_layers), static_cast<long long>(c.num_heads),
              static_cast<long long>(c.num_kv_heads), static_cast<long long>(c.vocab_size),
              static_cast<long long>(s.batch), static_cast<long long>(s.sequence_length));
  std::printf("# %d rank%s x %d thread%s; backend %s\n", mpi_size(), mpi_size() == 1 ? "" : "s", threads,
              threads == 1 ? "" : "s", backend.describe().c_str());
  std::printf("# medians of %d runs; ratio = measured / limit; the limits are measured in this run\n", o.repeat);
  std::fflush(stdout);
}

// --json: the run's settings and every row of the table.
void write_json(const BenchOptions& o, const BenchSettings& s, int threads, const Backend& backend,
                const std::vector<PhaseResult>& phases, const RankUsage& usage) {
  const ModelConfig& c = s.config;
  nlohmann::json j;
  j["preset"] = o.config.empty() ? o.preset : "";
  j["config"] = o.config;
  j["ranks"] = mpi_size();
  j["threads"] = threads;
  j["backend"] = backend.describe();
  j["shape"] = {{"D", c.hidden_size}, {"F", c.intermediate_size}, {"L", c.num_layers}, {"H", c.num_heads},
                {"Hkv", c.num_kv_heads}, {"V", c.vocab_size}, {"batch", s.batch}, {"S", s.sequence_length}};
  for (const auto& p : phases)
    j["phases"].push_back({{"phase", p.phase}, {"unit", p.unit}, {"measured", p.measured}, {"limit", p.limit},
                           {"limit_is", p.limit_name}, {"ratio", p.limit > 0 ? p.measured / p.limit : 0.0},
                           {"seconds", p.seconds}, {"median_seconds", median(p.seconds)},
                           {"spread_seconds", spread(p.seconds)}, {"wrong", p.wrong}, {"bytes", p.bytes},
                           {"busbw", p.busbw}, {"limit_busbw", p.limit_busbw}});
  j["peak_rss_bytes"] = usage.peak_rss;  // per rank
  j["storage_read_bytes"] = usage.storage_read;
  write_text_file(o.json, j.dump(2) + "\n");
}

// Every rank's wrong results, summed on all of them, so that all ranks fail together (each rank
// checks its own results; the table shows rank 0's).
long wrong_on_any_rank(const std::vector<PhaseResult>& phases) {
  std::vector<double> wrong{0.0};
  for (const auto& p : phases) wrong[0] += static_cast<double>(p.wrong);
  allreduce_sum(wrong, 1);
  return static_cast<long>(wrong[0]);
}

void run_bench(const BenchOptions& o) {
  BenchSettings s;
  s.batch = o.batch;
  s.sequence_length = o.sequence_length;
  s.repeat = o.repeat;
  std::optional<Model> model;
  std::int64_t layers = 0;  // the model's; the benchmark may hold fewer
  std::string shape_name = o.preset;
  if (!o.json.empty()) check_json_output(o);
  if (!o.config.empty()) {
    shape_name = load_first_expert(o, s, model, layers);
  } else {
    s.config = bench_preset(o.preset);
    if (o.layers > 0) s.config.num_layers = o.layers;
    s.config.json_text = model_config_to_json(s.config);
  }
  if (!o.write_experts.empty()) {
    write_experts(o, s.config);
    return;
  }
  if (o.config.empty()) {
    layers = s.config.num_layers;
    s.config.num_layers = bench_layers(s.config, o.layers);
  }
  const int threads = threads_per_rank(o.threads);
  auto backend = rank_backend(o.backend, threads);
  s.scratch = std::filesystem::temp_directory_path() / ("dume-bench-" + std::to_string(getpid()));
  std::filesystem::create_directories(s.scratch);
  print_header(o, s, shape_name, threads, *backend);
  if (mpi_rank() == 0 && o.layers == 0 && s.config.num_layers < layers)
    std::printf("# %lld of the model's %lld layers: what fits this rank's memory beside the embedding and LM head "
                "(the rates are per layer)\n",
                static_cast<long long>(s.config.num_layers), static_cast<long long>(layers));
  if (o.ranks_note) print_ranks_note(threads);
  const std::vector<PhaseResult> phases = run_benchmark(s, *backend);
  std::filesystem::remove_all(s.scratch);
  const long wrong = wrong_on_any_rank(phases);
  const RankUsage usage = gather_rank_usage();
  if (mpi_rank() == 0) {
    print_table(phases);
    std::printf("# %s\n", usage.line().c_str());
    if (!o.json.empty()) write_json(o, s, threads, *backend, phases, usage);
  }
  if (wrong)
    throw CollectiveError("benchmark produced " + std::to_string(wrong) + " wrong results (see #wrong; summed over ranks)");
}

}  // namespace

void add_bench(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench", "Benchmark every phase of a merge against this machine's limits (MPI job)");
  auto o = std::make_shared<BenchOptions>();
  auto* config = cmd->add_option("config", o->config,
                                 "A merge config: benchmark its first expert on its calibration corpus (sequence "
                                 "length and batch from the config; default: a synthetic preset)");
  cmd->add_flag("--ranks-note", o->ranks_note, "Print where each rank runs: host, ranks per host, threads, CPUs");
  cmd->add_option("--preset", o->preset, "tiny | d1024 | llama-1b-shape | llama-8b-shape | llama-70b-shape")
      ->capture_default_str()
      ->excludes(config);
  cmd->add_option("--layers", o->layers, "Override the preset's layer count")
      ->check(CLI::NonNegativeNumber)
      ->excludes(config);
  cmd->add_option("--sequence-length", o->sequence_length, "Tokens per sequence")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--batch", o->batch, "Sequences per forward pass")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--threads", o->threads, "Compute threads per rank (0: this node's cores / ranks)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--backend", o->backend, "cpu | cuda | auto (cuda where a GPU is visible); a CUDA rank uses the GPU of its local rank")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}))
      ->capture_default_str();
  cmd->add_option("--repeat", o->repeat, "Timed runs per phase (median and spread are reported)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--json", o->json, "Also write the results as JSON to this file");
  cmd->add_option("--write-experts", o->write_experts,
                  "Instead of benchmarking, write synthetic experts of the preset's shape, corpora and a merge.yaml here")
      ->excludes(config);
  cmd->add_option("--experts", o->experts, "Synthetic experts to write")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--tokens", o->tokens, "Calibration tokens per synthetic expert")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->callback([o] { run_job([&] { run_bench(*o); }); });
}

}  // namespace dume::cli
