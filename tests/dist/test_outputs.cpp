// The output rule, locks and temporaries (outputs.hpp), below the command-level cases of
// test_bad_inputs.cpp: paths compared after symlinks, a lock's life, a write that fails.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>

#include "comm.hpp"
#include "merge.hpp"
#include "merge_inputs.hpp"
#include "outputs.hpp"
#include "test_util.hpp"

namespace {

using namespace dume;
using namespace dume::test;
namespace fs = std::filesystem;
using ::testing::HasSubstr;

class Outputs : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = make_suite_dir(::testing::UnitTest::GetInstance()->current_test_info()->name()); }
  void TearDown() override { fs::remove_all(dir_); }

  // The message check_output throws, or "" when it passes.
  std::string refusal(const fs::path& output, const std::vector<InputPath>& inputs, bool force = true,
                      const OutputShape& shape = {.directory = true, .marker = "moe.h5"}) const {
    try {
      check_output(output, inputs, force, shape);
      return "";
    } catch (const Error& e) {
      return e.what();
    }
  }
  fs::path dir_;
};

TEST_F(Outputs, PathsAreNormalizedForWriting) {
  EXPECT_EQ(output_path("out/moe/"), fs::path("out/moe"));
  EXPECT_EQ(output_path("a/./b/../moe//"), fs::path("a/moe"));
  EXPECT_EQ(output_path("./"), fs::path("."));
  EXPECT_EQ(output_path("/data/moe/"), fs::path("/data/moe"));
}

// Inputs and outputs are compared where they really are: through symlinks and `..`.
TEST_F(Outputs, InputsAreFoundThroughSymlinksAndDotDot) {
  fs::create_directories(dir_ / "models" / "expert");
  fs::create_directory_symlink(dir_ / "models", dir_ / "alias");
  const std::vector<InputPath> inputs{{"expert 'e'", dir_ / "models" / "expert"}};
  EXPECT_THAT(refusal(dir_ / "alias" / "expert", inputs), HasSubstr("is expert 'e'"));
  EXPECT_THAT(refusal(dir_ / "alias" / "expert" / "moe", inputs), HasSubstr("lies inside expert 'e'"));
  EXPECT_THAT(refusal(dir_ / "alias", inputs), HasSubstr("contains expert 'e'"));
  fs::create_directories(dir_ / "elsewhere");
  fs::create_directory_symlink(dir_ / "elsewhere", dir_ / "link");
  EXPECT_THAT(refusal(dir_ / "link", inputs), HasSubstr("is a symbolic link"));
  EXPECT_THAT(refusal(dir_ / "x" / ".." / "models", inputs), HasSubstr("contains expert 'e'"));
  EXPECT_EQ(refusal(dir_ / "models" / "moe", inputs), "");  // beside an input is fine
  // An earlier output of the same kind may be replaced (with force), a user's folder not.
  fs::create_directories(dir_ / "earlier");
  std::ofstream(dir_ / "earlier" / "moe.h5") << "x";
  EXPECT_EQ(refusal(dir_ / "earlier", inputs), "");
  EXPECT_THAT(refusal(dir_ / "earlier", inputs, /*force=*/false), HasSubstr("exists; pass --force"));
  EXPECT_THAT(refusal(dir_ / "earlier", inputs, true, {.directory = true, .marker = "dume_export.json"}),
              HasSubstr("holds no dume_export.json"));
  // A file output: replaced freely (force), but never a directory.
  EXPECT_THAT(refusal(dir_ / "earlier", inputs, true, {.directory = false, .marker = {}}), HasSubstr("is a directory"));
}

TEST_F(Outputs, OneWriterAtATimeAndStaleLocksAreTakenOver) {
  const fs::path output = dir_ / "new" / "deeper" / "moe";
  {
    const OutputLock lock(output);
    EXPECT_TRUE(fs::exists(dir_ / "new" / "deeper" / ".moe.lock"));
    try {
      const OutputLock second(output);
      ADD_FAILURE() << "a second lock was granted";
    } catch (const Error& e) {
      EXPECT_THAT(e.what(), HasSubstr("is being written by another job (pid " + std::to_string(getpid()) + " on host " +
                                      host_name()));
    }
  }
  // Released: the lock and the parent folders it made are gone.
  EXPECT_FALSE(fs::exists(dir_ / "new"));

  // A lock whose process is gone (a child that exited) is stale on this host.
  const pid_t child = fork();
  if (child == 0) _exit(0);
  waitpid(child, nullptr, 0);
  std::ofstream(dir_ / ".moe.lock") << host_name() << " " << child << " 0\n";
  {
    const OutputLock lock(dir_ / "moe");
    std::ifstream in(dir_ / ".moe.lock");
    std::string host;
    long long pid = 0;
    in >> host >> pid;
    EXPECT_EQ(pid, getpid());
  }
  EXPECT_FALSE(fs::exists(dir_ / ".moe.lock"));
}

// A write that fails (a full disk, simulated by a file-size limit in a child process) throws
// one Error naming the file and leaves neither the target nor a temporary.
TEST_F(Outputs, AFailedWriteLeavesNothing) {
  const fs::path target = dir_ / "result.json";
  const pid_t child = fork();
  if (child == 0) {
    signal(SIGXFSZ, SIG_IGN);
    const rlimit limit{1000, 1000};
    setrlimit(RLIMIT_FSIZE, &limit);
    try {
      write_text_file(target, std::string(5000, 'x'));
    } catch (const Error& e) {
      _exit(std::string(e.what()).find("result.json: cannot write") != std::string::npos ? 0 : 2);
    }
    _exit(1);
  }
  int status = 0;
  waitpid(child, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_TRUE(fs::is_empty(dir_));
  {
    TemporaryFile never(target);
    std::ofstream(never.path()) << "abandoned";
  }
  EXPECT_TRUE(fs::is_empty(dir_));
  write_text_file(target, "landed");
  std::ifstream in(target);
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}), "landed");
}

// A ScratchFile has no name until linked: not while written, not after a SIGKILL, not when
// dropped; linked, it is the file written.
TEST_F(Outputs, AScratchFileIsNamedOnlyWhenLinked) {
  const fs::path output = dir_ / "moe";
  const pid_t child = fork();
  if (child == 0) {
    ScratchFile scratch(output, "stats.h5");
    std::ofstream(scratch.path()) << "killed";
    raise(SIGKILL);
  }
  int status = 0;
  waitpid(child, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_TRUE(fs::is_empty(dir_));
  {
    ScratchFile dropped(output, "stats.h5");
    std::ofstream(dropped.path()) << "dropped";
  }
  EXPECT_TRUE(fs::is_empty(dir_));
  ScratchFile scratch(output, "stats.h5");
  std::ofstream(scratch.path()) << "linked";
  EXPECT_TRUE(fs::is_empty(dir_));
  scratch.link_to(dir_ / "stats.h5");
  std::ifstream in(dir_ / "stats.h5");
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}), "linked");
}

// `output: out/moe/` (a trailing slash) merges into out/moe; --force replaces that earlier MoE.
TEST_F(Outputs, TrailingSlashAndReplacingAnEarlierMoe) {
  const std::string yaml = write_merge_inputs(dir_, 2, DType::F32, "runs/moe/");
  run_merge(merge_config_parse(yaml, dir_ / "merge.yaml"), false);
  ASSERT_TRUE(fs::exists(dir_ / "runs" / "moe" / "moe.h5"));
  run_merge(merge_config_parse(yaml, dir_ / "merge.yaml"), /*force=*/true);
  std::vector<std::string> left;
  for (const auto& entry : fs::directory_iterator(dir_ / "runs")) left.push_back(entry.path().filename().string());
  EXPECT_EQ(left, std::vector<std::string>{"moe"});  // no lock, temporary or checkpoint beside it
}

}  // namespace
