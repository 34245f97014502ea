#include "benchmark.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <deque>
#include <fstream>
#include <random>

#include "comm.hpp"
#include "forward.hpp"
#include "gemm_rate.hpp"
#include "merge.hpp"
#include "model.hpp"
#include "moe_file.hpp"
#include "routers.hpp"
#include "statistics.hpp"

namespace dume {

namespace fs = std::filesystem;

ModelConfig bench_preset(const std::string& name) {
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
      c.json_text = model_config_to_json(c);
      return c;
    }
  throw Error("unknown preset '" + name + "' (presets: tiny, d1024, llama-1b-shape, llama-8b-shape)");
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

double spread(const std::vector<double>& v) {
  return v.empty() ? 0.0 : *std::max_element(v.begin(), v.end()) - *std::min_element(v.begin(), v.end());
}

namespace {

using Clock = std::chrono::steady_clock;

// Runs `work` once to warm up, then `repeat` timed times; seconds of each. Collective work
// starts every run with all ranks in step.
template <class Work>
std::vector<double> time_runs(int repeat, Work&& work, bool collective = true) {
  work();
  std::vector<double> seconds;
  for (int r = 0; r < repeat; ++r) {
    if (collective) barrier();
    const auto t0 = Clock::now();
    work();
    seconds.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return seconds;
}

std::vector<std::uint32_t> random_tokens(std::size_t n, std::int64_t vocab) {
  std::mt19937_64 rng(7);
  std::vector<std::uint32_t> tokens(n);
  for (auto& t : tokens) t = static_cast<std::uint32_t>(rng() % static_cast<std::uint64_t>(vocab));
  return tokens;
}

// The backend's own f32 GEMM (its linear() on square matrices), for backends other than the CPU.
GemmRate backend_gemm_rate(Backend& backend, std::int64_t n) {
  const auto elements = static_cast<std::size_t>(n * n);
  const std::vector<float> host(elements, 1.0f / static_cast<float>(n));
  const Buffer a = backend.upload(host), w = backend.upload(host), y = backend.alloc(elements);
  const auto product = [&] { backend.linear(a.data(), w.data(), nullptr, n, n, n, y.data()); };
  product();
  backend.synchronize();
  int runs = 0;
  const auto t0 = Clock::now();
  double seconds = 0;
  while (seconds < 0.5) {
    product();
    backend.synchronize();
    ++runs;
    seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  }
  return {"backend sgemm", n, 2.0 * std::pow(static_cast<double>(n), 3) * runs / seconds / 1e9};
}

// FLOPs of the calibration pass: every layer but the last MLP, no final norm or lm_head.
double calibration_flops(const ModelConfig& c, std::int64_t B, std::int64_t S) {
  return Forward::flops(c, B, S, false) -
         2.0 * static_cast<double>(B * S) * 3.0 * static_cast<double>(c.hidden_size * c.intermediate_size);
}

}  // namespace

std::vector<PhaseResult> run_benchmark(const BenchSettings& s, Backend& backend) {
  const ModelConfig& c = s.config;
  const std::int64_t D = c.hidden_size, n = D + 1, T = s.batch * s.sequence_length;
  // Square GEMMs up to 4x the model width, at least 1024: a tiny model's limit needs no 4096^3
  // product (minutes under the sanitizers).
  std::vector<std::int64_t> sizes;
  for (const std::int64_t size : {1024, 2048, 4096})
    if (size <= std::max<std::int64_t>(1024, 4 * D)) sizes.push_back(size);
  auto rates = measure_gemm_rates(sizes, 0.5);
  if (backend.kind() != BackendKind::cpu)
    for (const std::int64_t size : sizes) rates.push_back(backend_gemm_rate(backend, size));
  // A GPU's forward and statistics run against its own f32 GEMM (the statistics' f64 SYRK too, as
  // the tensor cores set the pace); the solve runs on the host against the host's f64 GEMM.
  const GemmRate f32 = best_rate(rates, backend.kind() == BackendKind::cpu ? "sgemm" : "backend sgemm");
  const GemmRate stats_limit = backend.kind() == BackendKind::cpu ? best_rate(rates, "dgemm") : f32;
  const GemmRate f64 = best_rate(rates, "dgemm");
  const std::string f32_name = f32.kernel + " n=" + std::to_string(f32.n);
  const std::string f64_name = f64.kernel + " n=" + std::to_string(f64.n);
  std::vector<PhaseResult> phases;
  for (const auto& r : rates)
    phases.push_back({r.kernel + " n=" + std::to_string(r.n), "GFLOP/s", r.gflops, 0, "", {}, 0});

  const Model random = s.model ? Model{} : random_model(c, 42);
  Forward forward(s.model ? *s.model : random, backend);
  const auto tokens = s.tokens.empty() ? random_tokens(static_cast<std::size_t>(T), c.vocab_size) : s.tokens;
  DUME_ASSERT(tokens.size() == static_cast<std::size_t>(T));
  {  // forward pass with logits
    long wrong = 0;
    const auto seconds = time_runs(s.repeat, [&] {
      const auto logits = forward.run(tokens, s.batch, s.sequence_length);
      wrong = std::count_if(logits.begin(), logits.end(), [](float x) { return !std::isfinite(x); });
    });
    const double t = median(seconds);
    phases.push_back({"forward", "GFLOP/s", Forward::flops(c, s.batch, s.sequence_length) / t / 1e9, f32.gflops,
                      f32_name, seconds, wrong});
    phases.push_back({"forward", "tokens/s", static_cast<double>(T) / t, 0, "", seconds, wrong});
  }
  {  // the calibration pass: forward to the last MLP input + the statistics of every layer
    std::vector<Buffer64> A;
    for (std::int64_t l = 0; l < c.num_layers; ++l) A.push_back(backend.alloc64(static_cast<std::size_t>(n * n)));
    ForwardOptions options;
    options.forced_expert = 0;
    options.logits = false;
    options.on_mlp_input = [&](std::int64_t l, const float* x, std::int64_t rows) {
      backend.stats_accumulate(x, rows, D, A[static_cast<std::size_t>(l)].data());
    };
    const auto seconds = time_runs(s.repeat, [&] {
      forward.run(tokens, s.batch, s.sequence_length, options);
      backend.synchronize();
    });
    std::vector<double> corner(static_cast<std::size_t>(n * n));
    backend.download(A.back().data(), corner);  // the row count, exactly
    const long wrong = corner.back() == static_cast<double>(T * (s.repeat + 1)) ? 0 : 1;
    const double t = median(seconds);
    const double flops = calibration_flops(c, s.batch, s.sequence_length) +
                         static_cast<double>(c.num_layers) * static_cast<double>(T) * static_cast<double>(n * (n + 1));
    phases.push_back({"forward+statistics", "GFLOP/s", flops / t / 1e9, f32.gflops, f32_name, seconds, wrong});
    phases.push_back({"forward+statistics", "tokens/s", static_cast<double>(T) / t, 0, "", seconds, wrong});
  }
  {  // the statistics update alone: A += [x 1]^T [x 1] in f64
    std::vector<float> x(static_cast<std::size_t>(T * D));
    std::mt19937_64 rng(9);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (auto& v : x) v = u(rng);
    Buffer64 A = backend.alloc64(static_cast<std::size_t>(n * n));
    const Buffer xs = backend.upload(x);
    const auto seconds = time_runs(s.repeat, [&] {
      backend.stats_accumulate(xs.data(), T, D, A.data());
      backend.synchronize();
    });
    std::vector<double> host(static_cast<std::size_t>(n * n));
    backend.download(A.data(), host);
    const long wrong = host.back() == static_cast<double>(T * (s.repeat + 1)) ? 0 : 1;
    const double flops = static_cast<double>(T) * static_cast<double>(n * (n + 1));  // 2 per multiply-add
    phases.push_back({"statistics (f64)", "GFLOP/s", flops / median(seconds) / 1e9, stats_limit.gflops,
                      stats_limit.kernel + " n=" + std::to_string(stats_limit.n), seconds, wrong});
  }
  {  // reduction of one domain's statistics to rank 0 vs a plain MPI_Allreduce of the same bytes
    DomainStatistics domain;
    domain.tokens = 1;
    for (std::int64_t l = 0; l < c.num_layers; ++l) domain.A.push_back(MatrixXdRow::Ones(n, n));
    const double bytes = 8.0 * static_cast<double>(c.num_layers) * static_cast<double>(n * (n + 1) / 2);
    const int ranks = mpi_size();
    CalibrationTiming unused;
    const auto seconds = time_runs(s.repeat, [&] { reduce_domain(domain, unused); });
    // Rank 0 adds every other rank's ones on each of the repeat + 1 reductions, in both triangles.
    const double expected = 1.0 + (s.repeat + 1.0) * (ranks - 1.0);
    long wrong = 0;
    if (mpi_rank() == 0)
      for (const auto& A : domain.A) wrong += (A.array() != expected).count();
    // The limit as nccl-tests would take it, one MPI_Allreduce of all the bytes; and the same bytes
    // in the segments the reduction uses, which this MPI may run faster.
    std::vector<double> plain(static_cast<std::size_t>(bytes / 8), 1.0);
    const auto plain_seconds = time_runs(s.repeat, [&] { allreduce_sum(plain, mpi_chunk_elements()); });
    const auto segmented_seconds = time_runs(s.repeat, [&] { allreduce_sum(plain, mpi_reduce_segment_elements()); });
    const double algbw = bytes / median(seconds) / 1e9;
    const auto allreduce_busbw = [&](const std::vector<double>& t) {
      // nccl-tests: reduce's bus bandwidth is its algorithm bandwidth; allreduce's is 2 (n-1)/n of it.
      return bytes / median(t) / 1e9 * 2.0 * (ranks - 1) / std::max(ranks, 1);
    };
    const std::string segment_name =
        "MPI_Allreduce, same bytes in " + std::to_string(mpi_reduce_segment_elements() * 8 / 1024) + " KiB calls";
    // On one rank there is nothing to communicate: no limit to compare with.
    for (const bool segmented : {false, true}) {
      if (segmented && ranks == 1) break;
      PhaseResult r{segmented ? "reduce, vs segmented" : "reduce (packed, to rank 0)", "GB/s", algbw,
                    ranks > 1 ? bytes / median(segmented ? segmented_seconds : plain_seconds) / 1e9 : 0.0,
                    ranks > 1 ? (segmented ? segment_name : "MPI_Allreduce, same bytes in one call")
                              : "(one rank: nothing to reduce)",
                    seconds, segmented ? 0 : wrong};  // the wrong results are counted once
      r.bytes = bytes;
      r.busbw = algbw;
      r.limit_busbw = ranks > 1 ? allreduce_busbw(segmented ? segmented_seconds : plain_seconds) : 0.0;
      phases.push_back(r);
    }
  }
  {  // the solve of one layer (Cholesky, f64) vs the f64 GEMM rate, counted as n^3 / 3
    MatrixXdRow A = MatrixXdRow::Random(n, n);
    A = (A.transpose() * A).eval();
    A.diagonal().array() += static_cast<double>(n);
    const Eigen::MatrixXd B = Eigen::MatrixXd::Random(n, 4);
    long wrong = 0;
    const auto seconds = time_runs(s.repeat, [&] {
      const RouterSolution r = ridge_solve(A, B, 1e-2, true, 0);
      wrong = r.weight.allFinite() ? 0 : 1;
    });
    const double flops = std::pow(static_cast<double>(n), 3) / 3.0;
    phases.push_back({"solve (one layer)", "GFLOP/s", flops / median(seconds) / 1e9, f64.gflops, f64_name, seconds, wrong});
  }
  if (mpi_rank() == 0) {  // HDF5 write of the shared weights (bf16) vs a plain write of the same bytes
    std::deque<std::vector<std::byte>> encoded;  // encoded once: both sides write the same bytes
    std::vector<MoeTensor> tensors;
    double bytes = 0;
    for_each_shared_tensor(c, (s.model ? *s.model : random).shared, [&](const std::string&, const std::string& path,
                                                const std::vector<std::int64_t>& shape, const auto& values) {
      encoded.push_back(encode(DType::BF16, {values.data(), static_cast<std::size_t>(values.size())}));
      const std::vector<std::byte>* data = &encoded.back();
      bytes += static_cast<double>(data->size());
      tensors.push_back({path, DType::BF16, shape, [data] { return *data; }});
    });
    MoeInfo info;
    info.config = c;
    info.experts = {"synthetic"};
    int run = 0;
    const auto seconds = time_runs(s.repeat, [&] {
      const fs::path dir = s.scratch / ("h5-" + std::to_string(run++));
      fs::create_directories(dir);
      write_moe(dir, tensors, info, 1ull << 40);
      fs::remove_all(dir);
    }, /*collective=*/false);
    const auto plain = time_runs(s.repeat, [&] {
      const fs::path path = s.scratch / "plain.bin";
      {
        std::ofstream out(path, std::ios::binary);
        for (const auto& b : encoded) out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
      }
      fs::remove(path);
    }, /*collective=*/false);
    phases.push_back({"HDF5 write", "MB/s", bytes / median(seconds) / 1e6, bytes / median(plain) / 1e6,
                      "plain write, same bytes", seconds, 0});
  }
  return phases;
}

void write_synthetic_experts(const ModelConfig& c, int experts, std::int64_t tokens, std::int64_t sequence_length,
                             std::int64_t batch, const fs::path& dir) {
  fs::create_directories(dir);
  std::string yaml = "# synthetic experts written by `dume bench --write-experts`\nexperts:\n";
  std::mt19937_64 rng(11);
  for (int e = 0; e < experts; ++e) {
    const std::string name = "expert" + std::to_string(e);
    save_dense_checkpoint(random_model(c, 42 + static_cast<std::uint64_t>(e)), DType::BF16, dir / name);
    std::vector<std::uint32_t> ids(static_cast<std::size_t>(tokens));
    for (auto& t : ids) t = static_cast<std::uint32_t>(rng() % static_cast<std::uint64_t>(c.vocab_size));
    std::ofstream(dir / (name + ".u32"), std::ios::binary)
        .write(reinterpret_cast<const char*>(ids.data()), static_cast<std::streamsize>(4 * ids.size()));
    yaml += "  - {name: " + name + ", checkpoint: " + name + ", calibration: {path: " + name + ".u32, format: uint32}}\n";
  }
  yaml += "router: {context_tokens: " + std::to_string(sequence_length) + "}\ncalibration: {sequence_length: " +
          std::to_string(sequence_length) + ", batch_sequences: " + std::to_string(batch) + "}\noutput: moe\n";
  write_text_file(dir / "merge.yaml", yaml);
}

}  // namespace dume
