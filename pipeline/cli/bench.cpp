// `dume bench`: the forward pass and the statistics update of a synthetic model (random
// weights, random tokens) next to the machine's GEMM rates measured in the same run.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "model.hpp"

#include "commands.hpp"
#include "error.hpp"
#include "forward.hpp"
#include "gemm_rate.hpp"

namespace dume::cli {

namespace {

namespace fs = std::filesystem;

struct BenchOptions {
  std::string preset = "d1024";
  std::int64_t layers = 0, sequence_length = 256, batch = 4;
  int threads = 0, repeat = 3;
  std::string json;
  std::string write_experts;  // write synthetic experts here instead of benchmarking
  int experts = 2;
  std::int64_t tokens = 1 << 20;
};

ModelConfig preset_config(const std::string& name) {
  struct Preset {
    const char* name;
    std::int64_t D, F, L, H, Hkv, V;
  };
  // Shapes of real models (Llama 3.2 1B, Llama 3 8B) and two small ones.
  static constexpr Preset presets[] = {
      {"tiny", 128, 352, 4, 4, 2, 256},
      {"d1024", 1024, 2816, 8, 16, 8, 32000},
      {"llama-1b-shape", 2048, 8192, 16, 32, 8, 128256},
      {"llama-8b-shape", 4096, 14336, 32, 32, 8, 128256},
  };
  for (const auto& p : presets)
    if (name == p.name) {
      ModelConfig c;
      c.architecture_name = "LlamaForCausalLM";
      c.hidden_size = p.D;
      c.intermediate_size = p.F;
      c.num_layers = p.L;
      c.num_heads = p.H;
      c.num_kv_heads = p.Hkv;
      c.head_dim = p.D / p.H;
      c.vocab_size = p.V;
      c.max_position_embeddings = 8192;
      c.rms_norm_eps = 1e-5;
      c.rope_theta = 500000.0;
      return c;
    }
  throw Error("unknown preset '" + name + "' (presets: tiny, d1024, llama-1b-shape, llama-8b-shape)");
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Runs `work` once to warm up, then `repeat` timed times; returns the seconds of each.
template <class Work>
std::vector<double> time_runs(int repeat, Work&& work) {
  work();
  std::vector<double> seconds;
  for (int r = 0; r < repeat; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    work();
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return seconds;
}

struct PhaseResult {
  std::string phase, unit;
  double measured, limit;  // in unit
  std::vector<double> seconds;
  long wrong;
};

// Writes E synthetic experts of the preset's shape (bf16), a token corpus per domain and a
// merge.yaml using them: a merge to benchmark on a cluster with no checkpoints at hand.
void write_synthetic_experts(const ModelConfig& c, const BenchOptions& o) {
  const fs::path dir = o.write_experts;
  fs::create_directories(dir);
  std::string yaml = "# synthetic experts written by `dume bench --write-experts`\nexperts:\n";
  std::mt19937_64 rng(11);
  for (int e = 0; e < o.experts; ++e) {
    const std::string name = "expert" + std::to_string(e);
    Model m = random_model(c, 42 + static_cast<std::uint64_t>(e));
    save_dense_checkpoint(m, DType::BF16, dir / name);
    std::vector<std::uint32_t> tokens(static_cast<std::size_t>(o.tokens));
    for (auto& t : tokens) t = static_cast<std::uint32_t>(rng() % static_cast<std::uint64_t>(c.vocab_size));
    std::ofstream(dir / (name + ".u32"), std::ios::binary)
        .write(reinterpret_cast<const char*>(tokens.data()), static_cast<std::streamsize>(4 * tokens.size()));
    yaml += "  - {name: " + name + ", checkpoint: " + name + ", calibration: {path: " + name + ".u32, format: uint32}}\n";
  }
  yaml += "router: {context_tokens: " + std::to_string(o.sequence_length) + "}\ncalibration: {sequence_length: " +
          std::to_string(o.sequence_length) + ", batch_sequences: " + std::to_string(o.batch) + "}\noutput: moe\n";
  std::ofstream(dir / "merge.yaml") << yaml;
  std::printf("wrote %d synthetic experts (%s) and %s\n", o.experts, o.preset.c_str(), (dir / "merge.yaml").c_str());
}

void run_bench(const BenchOptions& o) {
  ModelConfig c = preset_config(o.preset);
  if (o.layers > 0) c.num_layers = o.layers;
  c.json_text = model_config_to_json(c);
  if (!o.write_experts.empty()) return write_synthetic_experts(c, o);
  auto backend = make_backend(BackendKind::cpu, o.threads);
  const std::int64_t D = c.hidden_size, T = o.batch * o.sequence_length;
  std::printf("# dume bench: preset %s (D=%lld F=%lld L=%lld H=%lld Hkv=%lld V=%lld), %lld x %lld tokens per pass\n",
              o.preset.c_str(), static_cast<long long>(D), static_cast<long long>(c.intermediate_size),
              static_cast<long long>(c.num_layers), static_cast<long long>(c.num_heads),
              static_cast<long long>(c.num_kv_heads), static_cast<long long>(c.vocab_size),
              static_cast<long long>(o.batch), static_cast<long long>(o.sequence_length));
  std::printf("# backend: %s\n", backend->describe().c_str());

  // The limits: this machine's best GEMM rates, square sizes 1024..4096, measured now.
  const std::int64_t sizes[] = {1024, 2048, 4096};
  const auto rates = measure_gemm_rates(sizes, 0.5);
  const GemmRate f32 = best_rate(rates, "sgemm"), f64 = best_rate(rates, "dgemm");
  std::vector<PhaseResult> phases;

  {  // forward pass with logits, f32
    const Model model = random_model(c, 42);
    Forward forward(model, *backend);
    std::mt19937_64 rng(7);
    std::vector<std::uint32_t> tokens(static_cast<std::size_t>(T));
    for (auto& t : tokens) t = static_cast<std::uint32_t>(rng() % static_cast<std::uint64_t>(c.vocab_size));
    long wrong = 0;
    const auto seconds = time_runs(o.repeat, [&] {
      const auto logits = forward.run(tokens, o.batch, o.sequence_length);
      wrong = std::count_if(logits.begin(), logits.end(), [](float x) { return !std::isfinite(x); });
    });
    const double s = median(seconds);
    phases.push_back({"forward", "GFLOP/s", Forward::flops(c, o.batch, o.sequence_length) / s / 1e9, f32.gflops,
                      seconds, wrong});
    phases.push_back({"forward", "tokens/s", static_cast<double>(T) / s, 0, seconds, wrong});
  }
  {  // the statistics update alone: A += [x 1]^T [x 1] in f64 over T rows
    const std::int64_t n = D + 1;
    std::vector<float> x(static_cast<std::size_t>(T * D));
    std::mt19937_64 rng(9);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (auto& v : x) v = u(rng);
    Buffer64 A = backend->alloc64(static_cast<std::size_t>(n * n));
    const auto seconds = time_runs(o.repeat, [&] { backend->stats_accumulate(x.data(), T, D, A.data()); });
    // Check: the corner entry counts the rows accumulated, exactly.
    std::vector<double> host(static_cast<std::size_t>(n * n));
    backend->download(A.data(), host);
    const long wrong = host.back() == static_cast<double>(T * (o.repeat + 1)) ? 0 : 1;
    const double madds = static_cast<double>(T) * static_cast<double>(n * (n + 1) / 2);
    phases.push_back({"statistics (f64)", "GFLOP/s", 2 * madds / median(seconds) / 1e9, f64.gflops, seconds, wrong});
  }

  std::printf("#\n# %-22s %12s %12s %10s %7s %7s\n", "phase", "measured", "limit", "unit", "ratio", "#wrong");
  for (const auto& r : rates)
    std::printf("  %-22s %12.1f %12s %10s %7s %7d\n", (r.kernel + " n=" + std::to_string(r.n)).c_str(), r.gflops, "-",
                "GFLOP/s", "-", 0);
  long wrong = 0;
  for (const auto& p : phases) {
    wrong += p.wrong;
    if (p.limit > 0)
      std::printf("  %-22s %12.1f %12.1f %10s %7.2f %7ld\n", p.phase.c_str(), p.measured, p.limit, p.unit.c_str(),
                  p.measured / p.limit, p.wrong);
    else
      std::printf("  %-22s %12.0f %12s %10s %7s %7ld\n", p.phase.c_str(), p.measured, "-", p.unit.c_str(), "-", p.wrong);
  }
  std::printf("# limits: forward vs best f32 GEMM (%s n=%lld), statistics vs best f64 GEMM (%s n=%lld);"
              " medians of %d runs\n",
              f32.kernel.c_str(), static_cast<long long>(f32.n), f64.kernel.c_str(), static_cast<long long>(f64.n),
              o.repeat);

  if (!o.json.empty()) {
    nlohmann::json j;
    j["preset"] = o.preset;
    j["backend"] = backend->describe();
    j["shape"] = {{"D", c.hidden_size}, {"F", c.intermediate_size}, {"L", c.num_layers}, {"H", c.num_heads},
                  {"Hkv", c.num_kv_heads}, {"V", c.vocab_size}, {"batch", o.batch}, {"S", o.sequence_length}};
    for (const auto& r : rates) j["gemm"].push_back({{"kernel", r.kernel}, {"n", r.n}, {"gflops", r.gflops}});
    for (const auto& p : phases)
      j["phases"].push_back({{"phase", p.phase}, {"unit", p.unit}, {"measured", p.measured}, {"limit", p.limit},
                             {"ratio", p.limit > 0 ? p.measured / p.limit : 0.0}, {"seconds", p.seconds},
                             {"wrong", p.wrong}});
    std::ofstream(o.json) << j.dump(2) << "\n";
  }
  if (wrong) throw Error("benchmark produced " + std::to_string(wrong) + " wrong results (see #wrong)");
}

}  // namespace

void add_bench(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench", "Benchmark the forward pass against this machine's GEMM rate");
  auto o = std::make_shared<BenchOptions>();
  cmd->add_option("--preset", o->preset, "tiny | d1024 | llama-1b-shape | llama-8b-shape")->capture_default_str();
  cmd->add_option("--layers", o->layers, "Override the preset's layer count")->check(CLI::NonNegativeNumber);
  cmd->add_option("--sequence-length", o->sequence_length, "Tokens per sequence")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--batch", o->batch, "Sequences per forward pass")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--threads", o->threads, "Compute threads (0: all cores)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--repeat", o->repeat, "Timed runs (the median is reported)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--json", o->json, "Also write the results as JSON to this file");
  cmd->add_option("--write-experts", o->write_experts,
                  "Instead of benchmarking, write synthetic experts of the preset's shape, corpora and a merge.yaml here");
  cmd->add_option("--experts", o->experts, "Synthetic experts to write")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--tokens", o->tokens, "Calibration tokens per synthetic expert")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->callback([o] { run_bench(*o); });
}

}  // namespace dume::cli
