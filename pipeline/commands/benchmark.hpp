// The phases `dume bench` measures on a synthetic model (random weights and tokens), each next
// to the limit that bounds it, measured in the same run: forward pass, forward + statistics,
// the statistics update, the reduction, the solve and the HDF5 write.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "backend.hpp"
#include "model.hpp"
#include "model_config.hpp"

namespace dume {

// Shapes of real models (Llama 3.2 1B, Llama 3 8B) and two small ones: tiny, d1024.
ModelConfig bench_preset(const std::string& name);

struct BenchSettings {
  ModelConfig config;
  // A real checkpoint's weights and a real corpus's tokens (`dume bench CONFIG`); when null/empty,
  // random weights of `config`'s shape and random tokens.
  const Model* model = nullptr;
  std::vector<std::uint32_t> tokens;  // batch * sequence_length of them
  std::int64_t batch = 4, sequence_length = 256;
  int repeat = 3;
  std::filesystem::path scratch;  // for the HDF5 write phase
};

struct PhaseResult {
  std::string phase, unit;
  double measured = 0, limit = 0;  // in unit; limit 0: none
  std::string limit_name;          // what the limit is
  std::vector<double> seconds;     // each timed run
  long wrong = 0;                  // elements its check found wrong (against an f64 reference)
  double bytes = 0, busbw = 0, limit_busbw = 0;  // reduction only (GB/s, nccl-tests' definitions)
};

// Runs every phase; collective (every rank calls it; the reduction involves all). Results are
// rank 0's; limits come from this run's own measurements.
std::vector<PhaseResult> run_benchmark(const BenchSettings& settings, Backend& backend);

// Writes E synthetic experts of `config`'s shape (bf16), a uint32 token corpus of `tokens` ids
// per domain and a merge.yaml using them: a merge to benchmark with no checkpoints at hand.
void write_synthetic_experts(const ModelConfig& config, int experts, std::int64_t tokens, std::int64_t sequence_length,
                             std::int64_t batch, const std::filesystem::path& dir);

double median(std::vector<double> values);
double spread(const std::vector<double>& values);  // max - min

}  // namespace dume
