// dume bench's #wrong column: a clean run counts no wrong element, and a backend that corrupts
// one element of its output is caught by every phase that uses it.
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>

#include "benchmark.hpp"
#include "test_util.hpp"

namespace {

using namespace dume;
using namespace dume::test;

// The CPU backend, with one corruption switched on: the first element of every linear() output
// (token 0, in the checked rows), or A(0, D) of every stats_accumulate (in the checked rows of A).
class FaultyBackend final : public Backend {
 public:
  enum class Fault { none, linear, stats };
  explicit FaultyBackend(Fault fault) : cpu_(make_backend(BackendKind::cpu)), fault_(fault) {}

  std::string describe() const override { return cpu_->describe(); }
  BackendKind kind() const override { return cpu_->kind(); }
  void synchronize() override { cpu_->synchronize(); }
  Buffer alloc(std::size_t n) override { return cpu_->alloc(n); }
  Buffer upload(std::span<const float> host) override { return cpu_->upload(host); }
  void download(const float* src, std::span<float> host) override { cpu_->download(src, host); }
  void copy_in(std::span<const float> host, float* dst) override { cpu_->copy_in(host, dst); }
  Buffer64 alloc64(std::size_t n) override { return cpu_->alloc64(n); }
  void download(const double* src, std::span<double> host) override { cpu_->download(src, host); }
  void copy_in(std::span<const double> host, double* dst) override { cpu_->copy_in(host, dst); }
  void embed(std::span<const std::uint32_t> tokens, const float* table, std::int64_t D, float* out) override {
    cpu_->embed(tokens, table, D, out);
  }
  void rms_norm(const float* x, const float* w, std::int64_t T, std::int64_t D, float eps, float* out) override {
    cpu_->rms_norm(x, w, T, D, eps, out);
  }
  void linear(const float* x, const float* w, const float* bias, std::int64_t T, std::int64_t K, std::int64_t N,
              float* y, bool accumulate) override {
    cpu_->linear(x, w, bias, T, K, N, y, accumulate);
    if (fault_ == Fault::linear) y[0] = y[0] * 1.01f + 0.01f;
  }
  void rope(float* x, std::int64_t B, std::int64_t S, std::int64_t heads, std::int64_t hd, const float* cos,
            const float* sin) override {
    cpu_->rope(x, B, S, heads, hd, cos, sin);
  }
  void attention(const float* q, const float* k, const float* v, std::int64_t B, std::int64_t S, std::int64_t H,
                 std::int64_t Hkv, std::int64_t hd, float* out) override {
    cpu_->attention(q, k, v, B, S, H, Hkv, hd, out);
  }
  void swiglu(const float* gate, const float* up, std::int64_t n, float* out) override { cpu_->swiglu(gate, up, n, out); }
  void add(float* x, const float* y, std::int64_t n) override { cpu_->add(x, y, n); }
  void gather_rows(const float* x, std::int64_t D, std::span<const std::int64_t> rows, float* out) override {
    cpu_->gather_rows(x, D, rows, out);
  }
  void scatter_add_rows(const float* y, std::int64_t D, std::span<const std::int64_t> rows,
                        std::span<const float> weights, float* x) override {
    cpu_->scatter_add_rows(y, D, rows, weights, x);
  }
  void stats_accumulate(const float* x, std::int64_t T, std::int64_t D, double* A) override {
    cpu_->stats_accumulate(x, T, D, A);
    if (fault_ == Fault::stats) A[D] += 0.5;
  }

 private:
  std::unique_ptr<Backend> cpu_;
  Fault fault_;
};

class Benchmark : public ::testing::Test {
 protected:
  // Wrong elements per phase name (the rows of one phase summed) of a small bench on `backend`.
  static std::map<std::string, long> wrong(Backend& backend, ModelConfig config = tiny()) {
    BenchSettings s;
    s.config = config;
    s.batch = 2;
    s.sequence_length = 32;
    s.repeat = 1;
    s.scratch = fs::temp_directory_path() / ("dume_test_benchmark_" + std::to_string(getpid()));
    fs::create_directories(s.scratch);
    std::map<std::string, long> by_phase;
    for (const PhaseResult& p : run_benchmark(s, backend)) by_phase[p.phase] += p.wrong;
    fs::remove_all(s.scratch);
    return by_phase;
  }
  static ModelConfig tiny() {
    ModelConfig c = bench_preset("tiny");
    c.num_layers = 2;
    c.json_text = model_config_to_json(c);
    return c;
  }
};

const char* const kPhases[] = {"forward", "forward+statistics", "statistics (f64)", "reduce (packed, to rank 0)",
                               "solve (one layer)", "HDF5 write"};

TEST_F(Benchmark, CleanRunHasNoWrongResults) {
  FaultyBackend backend(FaultyBackend::Fault::none);
  const auto by_phase = wrong(backend);
  for (const char* phase : kPhases) {
    ASSERT_TRUE(by_phase.count(phase)) << phase;
    EXPECT_EQ(by_phase.at(phase), 0) << phase;
  }
}

// The f64 reference follows the options a real checkpoint may have: biases, tied embeddings,
// Llama 3.1's rotary scaling (original context 16: every band of frequencies is hit).
TEST_F(Benchmark, CleanRunWithBiasesTiedEmbeddingsAndScaledRope) {
  ModelConfig c = tiny();
  c.qkv_bias = c.o_bias = c.tie_word_embeddings = true;
  c.rope_scaling = {.llama3 = true, .factor = 8, .low_freq_factor = 1, .high_freq_factor = 4,
                    .original_max_position_embeddings = 16};
  c.json_text = model_config_to_json(c);
  FaultyBackend backend(FaultyBackend::Fault::none);
  const auto by_phase = wrong(backend, c);
  for (const char* phase : kPhases) EXPECT_EQ(by_phase.at(phase), 0) << phase;
}

TEST_F(Benchmark, CorruptForwardIsCounted) {
  FaultyBackend backend(FaultyBackend::Fault::linear);
  const auto by_phase = wrong(backend);
  EXPECT_GT(by_phase.at("forward"), 0);
  EXPECT_GT(by_phase.at("forward+statistics"), 0);  // the MLP inputs' reference rows
  EXPECT_EQ(by_phase.at("statistics (f64)"), 0);
}

TEST_F(Benchmark, CorruptStatisticsAreCounted) {
  FaultyBackend backend(FaultyBackend::Fault::stats);
  const auto by_phase = wrong(backend);
  EXPECT_EQ(by_phase.at("forward"), 0);
  EXPECT_GT(by_phase.at("forward+statistics"), 0);
  EXPECT_GT(by_phase.at("statistics (f64)"), 0);
}

}  // namespace
