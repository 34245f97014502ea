// The transformers reference outputs of a fixture checkpoint (tools/make_reference_fixtures.py).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "safetensors.hpp"

namespace dume::test {

inline const std::filesystem::path kModels = std::filesystem::path(DUME_FIXTURES_DIR) / "models";

// max |a - ref| / max |ref|: error relative to the reference's scale.
inline double relative_error(std::span<const float> a, std::span<const float> ref) {
  EXPECT_EQ(a.size(), ref.size());
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < std::min(a.size(), ref.size()); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - ref[i]));
    scale = std::max(scale, std::abs(static_cast<double>(ref[i])));
  }
  return diff / scale;
}

// What transformers computed for one fixture checkpoint (reference.safetensors).
struct Reference {
  std::int64_t B = 0, S = 0;
  std::vector<std::uint32_t> tokens;
  std::map<std::string, std::vector<float>> tensors;  // logits, mlp_input.{l}, logits_native

  explicit Reference(const std::filesystem::path& path) {
    const SafetensorsFile f(path);
    const TensorInfo& t = *f.find("tokens");
    B = t.shape[0];
    S = t.shape[1];
    std::vector<std::int64_t> ids(t.numel());
    std::memcpy(ids.data(), f.data(t).data(), 8 * ids.size());
    tokens.assign(ids.begin(), ids.end());
    for (const auto& info : f.tensors())
      if (info.dtype == DType::F32) {
        auto& v = tensors[info.name];
        v.resize(info.numel());
        widen_to_f32(info.dtype, f.data(info).data(), v.size(), v.data());
      }
  }

  // Summed negative log-likelihood (f64) of every token but each sequence's first, from the
  // reference logits: what `dume ppl` must report for these tokens.
  double nll() const {
    const auto& logits = tensors.at("logits");
    const auto V = static_cast<std::int64_t>(logits.size()) / (B * S);
    double sum_nll = 0;
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t s = 0; s + 1 < S; ++s) {
        const float* row = logits.data() + (b * S + s) * V;
        double sum = 0;
        for (std::int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(row[v]));
        sum_nll += std::log(sum) - row[tokens[static_cast<std::size_t>(b * S + s + 1)]];
      }
    return sum_nll;
  }
};

}  // namespace dume::test
