// Integrity: every dataset dume writes carries a Fletcher32 checksum that reads verify, and
// `dume verify` passes a good merge and names what is wrong in deliberately damaged copies.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <fstream>

#include "hdf5_util.hpp"
#include "merge.hpp"
#include "merge_inputs.hpp"
#include "test_util.hpp"
#include "verify.hpp"

namespace {

using namespace dume;
using namespace dume::test;
namespace fs = std::filesystem;
using ::testing::HasSubstr;

// One merge for the suite (3 experts, small shards so that the MoE spans several), copied per test.
class Verify : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    suite_ = make_suite_dir("verify");
    std::string yaml = write_merge_inputs(suite_, 3, DType::BF16, "good");
    yaml.replace(yaml.find("output: good"), 12, "output: {path: good, shard_size: 40KB}");
    run_merge(merge_config_parse(yaml, suite_ / "merge.yaml"), false);
    // The same experts with other shared weights (a base checkpoint's): a foreign stats.h5.
    yaml.replace(yaml.find("output: {path: good"), 19, "shared: {checkpoint: d2}\noutput: {path: other");
    run_merge(merge_config_parse(yaml, suite_ / "merge.yaml"), false);
  }
  static void TearDownTestSuite() { fs::remove_all(suite_); }

  void SetUp() override {
    dir_ = suite_ / ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(dir_);
    fs::copy(suite_ / "good", dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // The shard holding `path` and the file offset of its first chunk.
  std::pair<fs::path, haddr_t> first_chunk(const std::string& path) const {
    const H5Id index = h5::open_file(dir_ / "moe.h5");
    const H5Id dataset(H5Dopen2(index.get(), path.c_str(), H5P_DEFAULT));
    const H5Id space(H5Dget_space(dataset.get()));
    hsize_t offset[2] = {};
    unsigned mask = 0;
    haddr_t address = 0;
    hsize_t size = 0;
    EXPECT_GE(H5Dget_chunk_info(dataset.get(), space.get(), 0, offset, &mask, &address, &size), 0);
    return {h5::file_name(dataset.get()), address};
  }

  static void flip_byte(const fs::path& file, std::uint64_t at) {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(at));
    char c = 0;
    f.read(&c, 1);
    f.seekp(static_cast<std::streamoff>(at));
    c = static_cast<char>(c ^ 0x10);
    f.write(&c, 1);
  }

  // Overwrites a dataset's values through HDF5 (so its checksum stays valid).
  void overwrite(const std::string& path, const std::vector<float>& values) const {
    const H5Id index(H5Fopen((dir_ / "moe.h5").c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
    const H5Id dataset(H5Dopen2(index.get(), path.c_str(), H5P_DEFAULT));
    ASSERT_TRUE(dataset.valid());
    ASSERT_GE(H5Dwrite(dataset.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()), 0);
  }

  std::string problems() const {
    const VerifyReport r = verify_moe(dir_);
    std::string all;
    for (const auto& p : r.problems) all += p + "\n";
    return all;
  }

  static inline fs::path suite_;
  fs::path dir_;
};

TEST_F(Verify, AGoodMergePasses) {
  const VerifyReport r = verify_moe(dir_);
  EXPECT_TRUE(r.ok()) << r.problems.front();
  EXPECT_TRUE(r.warnings.empty());
  const MoeInfo info = read_moe_info(dir_);
  EXPECT_GT(info.shard_files.size(), 2u);
  // every shared tensor, 3 x 3 x 3 expert MLPs, 3 x 2 router tensors; stats: tokens, 3 x (3 A + B)
  EXPECT_EQ(r.datasets, 21u + 27u + 6u + 1u + 12u);
  EXPECT_THAT(r.summary, HasSubstr("3 experts, 3 layers"));
}

TEST_F(Verify, EveryWrittenDatasetCarriesAChecksum) {
  for (const char* name : {"moe.h5", "stats.h5"}) {
    const H5Id file = h5::open_file(dir_ / name);
    const auto datasets = h5::list_datasets(file.get());
    ASSERT_FALSE(datasets.empty());
    for (const auto& path : datasets) EXPECT_TRUE(h5::has_checksum(file.get(), path)) << name << " " << path;
  }
}

TEST_F(Verify, AFlippedByteIsACorruptDatasetNamedWithItsShard) {
  const std::string path = moe_path::expert(1, 2, "up_proj");
  const auto [shard, address] = first_chunk(path);
  flip_byte(shard, address + 100);
  const std::string p = problems();
  EXPECT_THAT(p, HasSubstr(shard.filename().string() + ": dataset '" + path + "': checksum mismatch"));
  // Readers detect it by themselves.
  EXPECT_ERROR_WITH(read_moe_model(dir_), shard.filename().string(), path, "checksum mismatch");
}

TEST_F(Verify, AFlippedByteInTheStatisticsIsNamed) {
  const H5Id stats = h5::open_file(dir_ / "stats.h5");
  const H5Id dataset(H5Dopen2(stats.get(), "/layers/1/A/d0", H5P_DEFAULT));
  const H5Id space(H5Dget_space(dataset.get()));
  hsize_t offset[2] = {};
  unsigned mask = 0;
  haddr_t address = 0;
  hsize_t size = 0;
  ASSERT_GE(H5Dget_chunk_info(dataset.get(), space.get(), 0, offset, &mask, &address, &size), 0);
  flip_byte(dir_ / "stats.h5", address + 8);
  EXPECT_THAT(problems(), HasSubstr("stats.h5: dataset '/layers/1/A/d0': checksum mismatch"));
  EXPECT_ERROR_WITH(read_statistics(dir_ / "stats.h5"), "stats.h5", "'/layers/1/A/d0'", "checksum mismatch");
}

TEST_F(Verify, ATruncatedShardIsNamed) {
  const std::string shard = read_moe_info(dir_).shard_files[1];
  fs::resize_file(dir_ / shard, fs::file_size(dir_ / shard) / 2);
  const std::string p = problems();
  EXPECT_THAT(p, HasSubstr(shard));
  EXPECT_THAT(p, HasSubstr("cannot open as HDF5 (truncated or not an HDF5 file?)"));
  EXPECT_THAT(p, HasSubstr("which cannot be opened"));  // the links into it
}

TEST_F(Verify, ADeletedShardIsNamedWithEveryLinkIntoIt) {
  const std::string shard = read_moe_info(dir_).shard_files.back();
  fs::remove(dir_ / shard);
  const std::string p = problems();
  EXPECT_THAT(p, HasSubstr(shard + ": missing (listed in moe.h5's shards)"));
  EXPECT_THAT(p, HasSubstr("links to " + (dir_ / shard).string() + ":/layers/2/router/bias, which is missing"));
  EXPECT_ERROR_WITH(read_moe_model(dir_), "moe.h5: dataset '/layers/2/", "links to", shard, "which is missing");
}

TEST_F(Verify, ChangedSharedWeightsDoNotMatchTheirHash) {
  overwrite("/norm", std::vector<float>(48, 2.0f));  // a valid checksum, other values
  EXPECT_THAT(problems(), HasSubstr("moe.h5: the stored shared weights hash to"));
}

TEST_F(Verify, NonFiniteAndNonUnitRouterRows) {
  std::vector<float> weight(3 * 48, 0.1f);
  weight[5] = std::numeric_limits<float>::infinity();
  overwrite("/layers/0/router/weight", weight);
  EXPECT_THAT(problems(), HasSubstr("dataset '/layers/0/router/weight' holds a non-finite value at flat index 5"));
  weight[5] = 0.1f;
  overwrite("/layers/0/router/weight", weight);
  EXPECT_THAT(problems(), HasSubstr("'/layers/0/router/weight': row 0 has norm 0.69"));
}

TEST_F(Verify, StatisticsFromOtherSharedWeights) {
  fs::copy_file(suite_ / "other" / "stats.h5", dir_ / "stats.h5", fs::copy_options::overwrite_existing);
  EXPECT_THAT(problems(), HasSubstr("stats.h5: made with other shared weights"));
}

// A link out of the directory (here by absolute path, to a copy of its own shard) would make
// the MoE depend on files that are not its own: refused, where every other check passes.
TEST_F(Verify, ALinkThatLeavesTheDirectoryIsAProblem) {
  const std::string path = moe_path::expert(0, 1, "down_proj");
  const fs::path shard = first_chunk(path).first, outside = dir_.string() + "-foreign.h5";
  fs::copy_file(shard, outside, fs::copy_options::overwrite_existing);
  {
    const H5Id index(H5Fopen((dir_ / "moe.h5").c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
    ASSERT_GE(H5Ldelete(index.get(), path.c_str(), H5P_DEFAULT), 0);
    ASSERT_GE(H5Lcreate_external(outside.c_str(), path.c_str(), index.get(), path.c_str(), H5P_DEFAULT, H5P_DEFAULT), 0);
  }
  EXPECT_THAT(problems(), HasSubstr("links to '" + outside.string() + "', outside the MoE's directory"));
  fs::remove(outside);
}

TEST_F(Verify, AShardThatTheIndexDoesNotListIsAProblem) {
  fs::copy_file(dir_ / read_moe_info(dir_).shard_files.at(0), dir_ / "moe-99999-of-99999.h5");
  EXPECT_THAT(problems(), HasSubstr("moe-99999-of-99999.h5: a shard file that moe.h5 does not list"));
}

TEST_F(Verify, MissingFiles) {
  fs::remove(dir_ / "stats.h5");
  EXPECT_THAT(problems(), HasSubstr("stats.h5: missing"));
  fs::remove(dir_ / "moe.h5");
  EXPECT_THAT(problems(), HasSubstr("moe.h5: no such file"));
  EXPECT_THAT(verify_moe(dir_ / "nowhere").problems.at(0), HasSubstr("nowhere: not a directory"));
}

// The command: one line per problem on stderr and exit 1, or an OK line and exit 0.
TEST_F(Verify, CommandExitStatusAndLines) {
  const auto run = [&](std::string* err) {
    const std::string cmd = std::string(DUME_EXECUTABLE) + " verify " + dir_.string() + " 2>" + (dir_ / "err.txt").string();
    FILE* pipe = popen(cmd.c_str(), "r");
    std::array<char, 4096> buf{};
    std::string out;
    std::size_t n;
    while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) out.append(buf.data(), n);
    const int status = pclose(pipe);
    std::ifstream in(dir_ / "err.txt");
    err->assign(std::istreambuf_iterator<char>(in), {});
    return std::make_pair(WIFEXITED(status) ? WEXITSTATUS(status) : -1, out);
  };
  std::string err;
  auto [status, out] = run(&err);
  EXPECT_EQ(status, 0) << err;
  EXPECT_THAT(out, HasSubstr("OK " + dir_.string()));
  fs::remove(dir_ / read_moe_info(dir_).shard_files[0]);
  std::tie(status, out) = run(&err);
  EXPECT_EQ(status, 1);
  EXPECT_THAT(err, HasSubstr("dume verify: " + (dir_ / read_moe_info(dir_).shard_files[0]).string() + ": missing"));
  EXPECT_THAT(err, HasSubstr("problems in " + dir_.string()));
}

}  // namespace
