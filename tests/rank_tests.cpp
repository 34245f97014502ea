// The same merge on 1, 2, 3 and 4 ranks and the same eval on 1 and 2 (ctest runs mpirun
// between the steps here): RankInputs writes the experts and configs, RankResults compares.
// Both work in the directory named by DUME_RANK_DIR.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>

#include "hdf5_util.hpp"
#include "merge.hpp"
#include "merge_inputs.hpp"

namespace {

using namespace dume;
namespace fs = std::filesystem;

fs::path rank_dir() {
  const char* dir = std::getenv("DUME_RANK_DIR");
  if (!dir) throw Error("DUME_RANK_DIR is not set (ctest sets it)");
  return dir;
}

TEST(RankInputs, Write) {
  const fs::path dir = rank_dir();
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string base = test::write_merge_inputs(dir, 3, DType::BF16, "OUT", 6000);
  for (int np = 1; np <= 4; ++np) {
    std::string yaml = base;
    yaml.replace(yaml.find("OUT"), 3, "out" + std::to_string(np));
    std::ofstream(dir / ("np" + std::to_string(np) + ".yaml")) << yaml;
  }
}

TEST(RankResults, Agree) {
  const fs::path dir = rank_dir();
  const fs::path one = dir / "out1";
  const Statistics reference = read_statistics(one / "stats.h5");
  const MoeInfo info = read_moe_info(one);
  const H5Id reference_file = h5::open_file(one / "moe.h5");
  for (int np = 2; np <= 4; ++np) {
    SCOPED_TRACE("ranks " + std::to_string(np));
    const fs::path out = dir / ("out" + std::to_string(np));
    const Statistics stats = read_statistics(out / "stats.h5");
    ASSERT_EQ(stats.domains.size(), reference.domains.size());
    EXPECT_EQ(stats.shared_hash, reference.shared_hash);
    for (std::size_t e = 0; e < stats.domains.size(); ++e) {
      EXPECT_EQ(stats.domains[e].tokens, reference.domains[e].tokens);
      for (std::size_t l = 0; l < stats.domains[e].A.size(); ++l) {
        const auto& a = stats.domains[e].A[l];
        const auto& r = reference.domains[e].A[l];
        EXPECT_LE((a - r).cwiseAbs().maxCoeff() / r.cwiseAbs().maxCoeff(), 1e-9) << "domain " << e << " layer " << l;
      }
    }
    // Routers: the f64 solutions agree to 1e-9; stored f32 values to one rounding step.
    const H5Id file = h5::open_file(out / "moe.h5");
    const std::int64_t E = 3, D = info.config.hidden_size;
    for (std::int64_t l = 0; l < info.config.num_layers; ++l) {
      const RouterSolution a = ridge_solve(stats.total_A(l), stats.B(l), info.router.lambda, true, l);
      const RouterSolution b = ridge_solve(reference.total_A(l), reference.B(l), info.router.lambda, true, l);
      EXPECT_LE((a.weight - b.weight).cwiseAbs().maxCoeff() / b.weight.cwiseAbs().maxCoeff(), 1e-9);
      EXPECT_LE((a.bias - b.bias).cwiseAbs().maxCoeff() / b.bias.cwiseAbs().maxCoeff(), 1e-9);
      const std::int64_t shape[] = {E, D};
      const auto stored = h5::read_f32(file.get(), moe_path::layer(l, "router/weight"), shape);
      const auto stored_ref = h5::read_f32(reference_file.get(), moe_path::layer(l, "router/weight"), shape);
      for (std::size_t i = 0; i < stored.size(); ++i)
        EXPECT_LE(std::abs(stored[i] - stored_ref[i]), 6e-8f * std::abs(stored_ref[i])) << i;
    }
    // Shared and expert tensors: identical bytes.
    const SharedWeights layout;  // only the paths are visited
    for_each_shared_tensor(info.config, layout, [&](const std::string&, const std::string& path,
                                                            const std::vector<std::int64_t>&, const auto&) {
      EXPECT_EQ(h5::read_raw(file.get(), path), h5::read_raw(reference_file.get(), path)) << path;
    });
    for (std::int64_t l = 0; l < info.config.num_layers; ++l)
      for (std::int64_t e = 0; e < E; ++e)
        for (const char* proj : {"gate_proj", "up_proj", "down_proj"})
          EXPECT_EQ(h5::read_raw(file.get(), moe_path::expert(l, e, proj)),
                    h5::read_raw(reference_file.get(), moe_path::expert(l, e, proj)));
  }
}

TEST(RankResults, EvalAgrees) {
  const fs::path dir = rank_dir();
  const auto one = nlohmann::json::parse(std::ifstream(dir / "out1" / "eval" / "eval.json"));
  const auto two = nlohmann::json::parse(std::ifstream(dir / "out2" / "eval" / "eval.json"));
  std::size_t compared = 0;
  for (const auto& [domain, methods] : one["perplexity"].items())
    for (const auto& [method, value] : methods.items()) {
      const double a = value.get<double>(), b = two["perplexity"][domain][method].get<double>();
      EXPECT_LE(std::abs(a - b), 1e-9 * std::abs(a)) << domain << " " << method;
      ++compared;
    }
  EXPECT_EQ(compared, 3u * 7u);  // 3 domains x (3 experts, average, random, oracle, dume)
  EXPECT_EQ(one["routing_accuracy"], two["routing_accuracy"]);
}

}  // namespace
