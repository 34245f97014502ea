// `dume bench`: the forward pass of a synthetic model (random weights, random tokens) next to
// the machine's GEMM rate measured in the same run. More phases come with the merge.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "commands.hpp"
#include "error.hpp"
#include "forward.hpp"
#include "gemm_rate.hpp"

namespace dume::cli {

namespace {

struct BenchOptions {
  std::string preset = "d1024";
  std::int64_t layers = 0, sequence_length = 256, batch = 4;
  int threads = 0, repeat = 3;
  std::string json;
};

ModelConfig preset_config(const std::string& name) {
  struct Preset {
    const char* name;
    std::int64_t D, F, L, H, Hkv, V;
  };
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

void run_bench(const BenchOptions& o) {
  ModelConfig c = preset_config(o.preset);
  if (o.layers > 0) c.num_layers = o.layers;
  auto backend = make_backend(BackendKind::cpu, o.threads);
  std::printf("# dume bench: preset %s (D=%lld F=%lld L=%lld H=%lld Hkv=%lld V=%lld), %lld x %lld tokens per pass\n",
              o.preset.c_str(), static_cast<long long>(c.hidden_size), static_cast<long long>(c.intermediate_size),
              static_cast<long long>(c.num_layers), static_cast<long long>(c.num_heads),
              static_cast<long long>(c.num_kv_heads), static_cast<long long>(c.vocab_size),
              static_cast<long long>(o.batch), static_cast<long long>(o.sequence_length));
  std::printf("# backend: %s\n", backend->describe().c_str());

  // The limit: best f32 GEMM rate of this machine, square sizes 1024..4096.
  const std::int64_t sizes[] = {1024, 2048, 4096};
  const auto rates = measure_gemm_rates(sizes, 0.5);
  const GemmRate best = *std::max_element(rates.begin(), rates.end(),
                                          [](const GemmRate& a, const GemmRate& b) { return a.gflops < b.gflops; });

  const Model model = random_model(c, 42);
  Forward forward(model, *backend);
  std::mt19937_64 rng(7);
  std::vector<std::uint32_t> tokens(static_cast<std::size_t>(o.batch * o.sequence_length));
  for (auto& t : tokens) t = static_cast<std::uint32_t>(rng() % static_cast<std::uint64_t>(c.vocab_size));
  const auto check = forward.run(tokens, o.batch, o.sequence_length);  // warm up, and check the output
  const auto wrong = std::count_if(check.begin(), check.end(), [](float x) { return !std::isfinite(x); });

  std::vector<double> seconds;
  for (int r = 0; r < o.repeat; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    forward.run(tokens, o.batch, o.sequence_length);
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  const double s = median(seconds);
  const double spread = *std::max_element(seconds.begin(), seconds.end()) - *std::min_element(seconds.begin(), seconds.end());
  const double flops = Forward::flops(c, o.batch, o.sequence_length);
  const double gflops = flops / s / 1e9;
  const double tokens_per_s = static_cast<double>(o.batch * o.sequence_length) / s;

  std::printf("#\n# %-22s %14s %14s %14s %8s %7s\n", "phase", "measured", "limit", "unit", "ratio", "#wrong");
  for (const auto& r : rates)
    std::printf("  %-22s %14.1f %14.1f %14s %8.2f %7d\n", (r.kernel + " n=" + std::to_string(r.n)).c_str(), r.gflops,
                best.gflops, "GFLOP/s", r.gflops / best.gflops, 0);
  std::printf("  %-22s %14.1f %14.1f %14s %8.2f %7ld\n", "forward", gflops, best.gflops, "GFLOP/s",
              gflops / best.gflops, static_cast<long>(wrong));
  std::printf("  %-22s %14.0f %14s %14s %8s %7s\n", "forward", tokens_per_s, "-", "tokens/s", "-", "-");
  std::printf("# forward: median of %d runs %.3f s (spread %.3f s); limit = best GEMM (%s n=%lld)\n", o.repeat, s,
              spread, best.kernel.c_str(), static_cast<long long>(best.n));

  if (!o.json.empty()) {
    nlohmann::json j;
    j["preset"] = o.preset;
    j["backend"] = backend->describe();
    j["shape"] = {{"D", c.hidden_size}, {"F", c.intermediate_size}, {"L", c.num_layers}, {"H", c.num_heads},
                  {"Hkv", c.num_kv_heads}, {"V", c.vocab_size}, {"batch", o.batch}, {"S", o.sequence_length}};
    for (const auto& r : rates) j["gemm"].push_back({{"kernel", r.kernel}, {"n", r.n}, {"gflops", r.gflops}});
    j["phases"].push_back({{"phase", "forward"}, {"gflops", gflops}, {"tokens_per_s", tokens_per_s},
                           {"limit_gflops", best.gflops}, {"ratio", gflops / best.gflops}, {"seconds", seconds},
                           {"wrong", wrong}});
    std::ofstream(o.json) << j.dump(2) << "\n";
  }
  if (wrong) throw Error("forward produced " + std::to_string(wrong) + " non-finite logits");
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
  cmd->callback([o] { run_bench(*o); });
}

}  // namespace dume::cli
