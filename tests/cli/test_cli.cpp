// The `dume` command as a user runs it: exit codes, output, and one-line errors.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <regex>

#include "reference.hpp"
#include "test_util.hpp"

namespace {

using namespace dume::test;
using ::testing::HasSubstr;
namespace fs = std::filesystem;

struct Result {
  int status = -1;
  std::string out, err;
};

// Runs `dume ARGS`, capturing stdout and stderr separately.
Result dume(const std::string& args, const fs::path& scratch) {
  const fs::path err_file = scratch / "stderr.txt";
  const std::string cmd = std::string(DUME_EXECUTABLE) + " " + args + " 2>" + err_file.string();
  Result r;
  FILE* pipe = popen(cmd.c_str(), "r");
  std::array<char, 4096> buf{};
  std::size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) r.out.append(buf.data(), n);
  const int raw = pclose(pipe);
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  std::ifstream in(err_file);
  r.err.assign(std::istreambuf_iterator<char>(in), {});
  return r;
}

using Cli = TempDirTest;

TEST_F(Cli, InspectSummarizesACheckpoint) {
  const Result r = dume("inspect " + (kModels / "qwen2_bias_f32").string() + " --tensors", dir_);
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("Qwen2ForCausalLM"));
  EXPECT_THAT(r.out, HasSubstr("biases q/k/v yes, o no"));
  EXPECT_THAT(r.out, HasSubstr("model.layers.1.self_attn.q_proj.bias"));
}

// `dume ppl` on the fixture's tokens reports the perplexity transformers' logits imply.
TEST_F(Cli, PplMatchesTransformers) {
  const Reference ref(kModels / "llama_gqa_f32" / "reference.safetensors");
  std::vector<std::uint16_t> ids(ref.tokens.begin(), ref.tokens.end());
  std::ofstream(file("tokens.bin"), std::ios::binary)
      .write(reinterpret_cast<const char*>(ids.data()), static_cast<std::streamsize>(2 * ids.size()));
  const Result r = dume("ppl --checkpoint " + (kModels / "llama_gqa_f32").string() + " --corpus " +
                            file("tokens.bin").string() + " --format uint16 --sequence-length " + std::to_string(ref.S),
                        dir_);
  ASSERT_EQ(r.status, 0) << r.err;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.out, m, std::regex(R"(perplexity ([0-9.]+) over (\d+) predicted tokens)"))) << r.out;
  const double expected = std::exp(ref.nll() / static_cast<double>(ref.B * (ref.S - 1)));
  EXPECT_NEAR(std::stod(m[1]), expected, 1e-4 * expected);
  EXPECT_EQ(std::stoll(m[2]), ref.B * (ref.S - 1));
}

TEST_F(Cli, BadInputsGiveOneLineAndNonZeroExit) {
  const std::string model = (kModels / "llama_gqa_f32").string();
  write("big_ids.bin", std::string("\x10\x00\xff\x00", 4));  // ids 16 and 255 >= vocab 96
  write("short.txt", "\x01\x02\x03");  // ids 1, 2, 3: valid, but fewer than one window
  const std::pair<std::string, std::string> cases[] = {
      {"ppl --checkpoint " + model + " --corpus " + file("big_ids.bin").string(), "outside the vocab"},
      {"ppl --checkpoint " + model + " --corpus " + file("short.txt").string() + " --format text-bytes",
       "fewer than one window of 256 tokens"},
      {"ppl --checkpoint " + model + " --corpus x --format utf7", "unknown corpus format 'utf7'"},
      {"ppl --checkpoint " + file("nowhere").string() + " --corpus x", "config.json: cannot read"},
      {"inspect " + file("nowhere").string(), "config.json: cannot read"},
  };
  for (const auto& [args, message] : cases) {
    const Result r = dume(args, dir_);
    EXPECT_EQ(r.status, 1) << args;
    EXPECT_THAT(r.err, HasSubstr(message)) << args;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_TRUE(r.out.empty()) << r.out;
  }
}

}  // namespace
