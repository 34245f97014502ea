// The CUDA backend against the CPU reference: every kernel on random inputs, then the forward
// pass on transformers' fixtures and the statistics it feeds. Bounds are relative errors: f32
// kernels near 1e-5, the f64 statistics near 1e-12 (only the summation order differs). Without
// a GPU (or in a build without CUDA) every test here is skipped, visibly: ctest counts them.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "hf_checkpoint.hpp"
#include "forward.hpp"
#include "reference.hpp"
#include "test_util.hpp"

namespace {

using namespace dume;
using namespace dume::test;

class CudaBackend : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0)
      GTEST_SKIP() << (cuda_built() ? "no CUDA device visible" : "this build has no CUDA backend");
    gpu = make_backend(BackendKind::cuda);
    cpu = make_backend(BackendKind::cpu, 1);
  }

  std::vector<float> random(std::size_t n, float scale = 1.0f) {
    std::uniform_real_distribution<float> u(-scale, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = u(rng);
    return v;
  }
  // Runs `op` on both backends with the same host inputs; returns (cpu, gpu) outputs of `n`.
  template <class Op>
  std::pair<std::vector<float>, std::vector<float>> both(const std::vector<std::vector<float>>& inputs, std::size_t n,
                                                         Op&& op) {
    std::pair<std::vector<float>, std::vector<float>> results;
    for (Backend* b : {cpu.get(), gpu.get()}) {
      std::vector<Buffer> in;
      std::vector<const float*> pointers;
      for (const auto& v : inputs) {
        in.push_back(b->alloc(v.size()));
        pointers.push_back(in.back().data());
      }
      // Writable copies of the inputs (upload aliases host memory on the CPU backend, and rope
      // writes in place): a one-row gather copies a whole vector.
      for (std::size_t i = 0; i < inputs.size(); ++i) {
        const Buffer staged = b->upload(inputs[i]);
        b->gather_rows(staged.data(), static_cast<std::int64_t>(inputs[i].size()), std::vector<std::int64_t>{0},
                       in[i].data());
      }
      Buffer out = b->alloc(n);
      op(*b, pointers, out.data());
      auto& host = b == cpu.get() ? results.first : results.second;
      host.resize(n);
      b->download(out.data(), host);
    }
    return results;
  }

  std::mt19937 rng{5};
  std::unique_ptr<Backend> gpu, cpu;
};

TEST_F(CudaBackend, Linear) {
  const std::int64_t T = 37, K = 200, N = 129;
  const auto [c, g] = both({random(T * K), random(N * K), random(N), random(T * N)}, T * N,
                           [&](Backend& b, const std::vector<const float*>& in, float* y) {
                             b.linear(in[0], in[1], in[2], T, K, N, y);
                             b.linear(in[0], in[1], nullptr, T, K, N, y, true);  // accumulate
                           });
  EXPECT_LE(relative_error(g, c), 1e-5);
}

TEST_F(CudaBackend, RmsNormSwigluAdd) {
  const std::int64_t T = 19, D = 300;
  const auto [c, g] = both({random(T * D), random(D), random(T * D)}, T * D,
                           [&](Backend& b, const std::vector<const float*>& in, float* out) {
                             b.rms_norm(in[0], in[1], T, D, 1e-5f, out);
                             b.swiglu(out, in[2], T * D, out);
                             b.add(out, in[0], T * D);
                           });
  EXPECT_LE(relative_error(g, c), 1e-5);
}

TEST_F(CudaBackend, EmbedGatherScatter) {
  const std::int64_t V = 50, D = 64;
  const std::vector<std::uint32_t> tokens = {3, 49, 0, 3, 17};
  const std::vector<std::int64_t> rows = {4, 1, 2};
  const std::vector<float> weights = {0.5f, -1.0f, 2.0f};
  const auto [c, g] = both({random(V * D)}, 5 * D, [&](Backend& b, const std::vector<const float*>& in, float* x) {
    b.embed(tokens, in[0], D, x);
    Buffer picked = b.alloc(3 * D);
    b.gather_rows(x, D, rows, picked.data());
    b.scatter_add_rows(picked.data(), D, rows, weights, x);
  });
  EXPECT_EQ(g, c);  // copies and one multiply-add per element: exact
}

TEST_F(CudaBackend, RopeAndGroupedCausalAttention) {
  for (const std::int64_t hd : {64, 96}) {
    const std::int64_t B = 2, S = 33, H = 4, Hkv = 2;
    std::vector<float> cos(static_cast<std::size_t>(S * hd / 2)), sin(cos.size());
    for (std::int64_t s = 0; s < S; ++s)
      for (std::int64_t j = 0; j < hd / 2; ++j) {
        const double angle = static_cast<double>(s) * std::pow(10000.0, -2.0 * static_cast<double>(j) / static_cast<double>(hd));
        cos[static_cast<std::size_t>(s * hd / 2 + j)] = static_cast<float>(std::cos(angle));
        sin[static_cast<std::size_t>(s * hd / 2 + j)] = static_cast<float>(std::sin(angle));
      }
    const auto [c, g] = both({random(B * S * H * hd), random(B * S * Hkv * hd), random(B * S * Hkv * hd), cos, sin},
                             B * S * H * hd, [&](Backend& b, const std::vector<const float*>& in, float* out) {
                               auto* q = const_cast<float*>(in[0]);
                               auto* k = const_cast<float*>(in[1]);
                               b.rope(q, B, S, H, hd, in[3], in[4]);
                               b.rope(k, B, S, Hkv, hd, in[3], in[4]);
                               b.attention(q, k, in[2], B, S, H, Hkv, hd, out);
                             });
    EXPECT_LE(relative_error(g, c), 1e-5) << "head_dim " << hd;
  }
}

TEST_F(CudaBackend, StatisticsUpperTriangle) {
  const std::int64_t T = 300, D = 70, n = D + 1;
  const auto x = random(T * D);
  std::vector<double> A[2];
  for (int i = 0; i < 2; ++i) {
    Backend& b = i == 0 ? *cpu : *gpu;
    const Buffer xs = b.upload(x);
    Buffer64 sums = b.alloc64(static_cast<std::size_t>(n * n));
    b.stats_accumulate(xs.data(), T, D, sums.data());
    b.stats_accumulate(xs.data(), T / 2, D, sums.data());  // a second, shorter batch
    A[i].resize(static_cast<std::size_t>(n * n));
    b.download(sums.data(), A[i]);
  }
  double worst = 0;
  for (std::int64_t r = 0; r < n; ++r)
    for (std::int64_t col = r; col < n; ++col) {  // only the upper triangle is defined
      const double want = A[0][static_cast<std::size_t>(r * n + col)], got = A[1][static_cast<std::size_t>(r * n + col)];
      worst = std::max(worst, std::abs(got - want) / std::max(1.0, std::abs(want)));
    }
  EXPECT_LE(worst, 1e-12);
  EXPECT_EQ(A[1][static_cast<std::size_t>(n * n - 1)], 1.5 * T);  // the token count, exactly
}

// The whole forward pass on transformers' fixtures: logits and every layer's MLP input.
TEST_F(CudaBackend, ForwardMatchesTheCpuBackend) {
  for (const char* name : {"llama_gqa_f32", "llama3_rope_bf16", "qwen2_bias_f32"}) {
    const Reference ref(kModels / name / "reference.safetensors");
    const Model model = load_dense_model(HfCheckpoint(kModels / name));
    std::vector<float> logits[2];
    std::vector<std::vector<float>> inputs[2];
    for (int i = 0; i < 2; ++i) {
      Backend& b = i == 0 ? *cpu : *gpu;
      Forward forward(model, b);
      ForwardOptions options;
      options.on_mlp_input = [&](std::int64_t, const float* x, std::int64_t T) {
        auto& v = inputs[i].emplace_back(static_cast<std::size_t>(T * model.config.hidden_size));
        b.download(x, v);
      };
      logits[i] = forward.run(ref.tokens, ref.B, ref.S, options);
    }
    EXPECT_LE(relative_error(logits[1], logits[0]), 1e-5) << name;
    EXPECT_LE(relative_error(logits[1], ref.tensors.at("logits")), 1e-5) << name << " against transformers";
    ASSERT_EQ(inputs[1].size(), inputs[0].size());
    for (std::size_t l = 0; l < inputs[0].size(); ++l)
      EXPECT_LE(relative_error(inputs[1][l], inputs[0][l]), 1e-5) << name << " layer " << l;
  }
}

}  // namespace
