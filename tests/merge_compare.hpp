// One merge's output against another's that must agree (other rank counts, a resumed run):
// statistics and f64 routers to 1e-9, stored f32 routers to one rounding step, shared and
// expert tensors byte for byte.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "hdf5_util.hpp"
#include "moe_file.hpp"
#include "routers.hpp"

namespace dume::test {

// Returns the largest relative difference of any domain's A (for the report).
inline double expect_same_merge(const std::filesystem::path& out, const std::filesystem::path& reference) {
  const Statistics ref = read_statistics(reference / "stats.h5");
  const Statistics stats = read_statistics(out / "stats.h5");
  const MoeInfo info = read_moe_info(reference);
  double worst = 0;
  EXPECT_EQ(stats.domains.size(), ref.domains.size());
  if (stats.domains.size() != ref.domains.size()) return worst;
  EXPECT_EQ(stats.shared_hash, ref.shared_hash);
  for (std::size_t e = 0; e < stats.domains.size(); ++e) {
    EXPECT_EQ(stats.domains[e].tokens, ref.domains[e].tokens);
    EXPECT_EQ(stats.domains[e].heldout, ref.domains[e].heldout) << "held-out rows of domain " << e;
    for (std::size_t l = 0; l < stats.domains[e].A.size(); ++l) {
      const auto& r = ref.domains[e].A[l];
      const double rel = (stats.domains[e].A[l] - r).cwiseAbs().maxCoeff() / r.cwiseAbs().maxCoeff();
      worst = std::max(worst, rel);
      EXPECT_LE(rel, 1e-9) << "domain " << e << " layer " << l;
    }
  }
  const H5Id file = h5::open_file(out / "moe.h5"), ref_file = h5::open_file(reference / "moe.h5");
  const auto E = static_cast<std::int64_t>(info.experts.size()), D = info.config.hidden_size;
  const bool bias = info.router.bias;
  for (std::int64_t l = 0; l < info.config.num_layers; ++l) {
    const RouterSolution a = ridge_solve(stats.total_A(l), stats.B(l), info.router.lambda, bias, l);
    const RouterSolution b = ridge_solve(ref.total_A(l), ref.B(l), info.router.lambda, bias, l);
    EXPECT_LE((a.weight - b.weight).cwiseAbs().maxCoeff() / b.weight.cwiseAbs().maxCoeff(), 1e-9);
    if (bias) {
      EXPECT_LE((a.bias - b.bias).cwiseAbs().maxCoeff() / b.bias.cwiseAbs().maxCoeff(), 1e-9);
    }
    const std::int64_t shape[] = {E, D};
    const auto stored = h5::read_f32(file.get(), moe_path::layer(l, "router/weight"), shape);
    const auto stored_ref = h5::read_f32(ref_file.get(), moe_path::layer(l, "router/weight"), shape);
    for (std::size_t i = 0; i < stored.size(); ++i)
      EXPECT_LE(std::abs(stored[i] - stored_ref[i]), 6e-8f * std::abs(stored_ref[i])) << i;
    for (std::int64_t e = 0; e < E; ++e)
      for (const char* proj : {"gate_proj", "up_proj", "down_proj"})
        EXPECT_EQ(h5::read_raw(file.get(), moe_path::expert(l, e, proj)),
                  h5::read_raw(ref_file.get(), moe_path::expert(l, e, proj)));
  }
  const SharedWeights layout;  // only the paths are visited
  for_each_shared_tensor(info.config, layout, [&](const std::string&, const std::string& path,
                                                                 const std::vector<std::int64_t>&, const auto&) {
    EXPECT_EQ(h5::read_raw(file.get(), path), h5::read_raw(ref_file.get(), path)) << path;
  });
  return worst;
}

}  // namespace dume::test
