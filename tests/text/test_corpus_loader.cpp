// Text, JSONL and Megatron corpora end to end: documents through the model's tokenizer into the
// same windows and the same merge as the pre-tokenized corpus; truncate packing; `dume tokenize`.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "megatron.hpp"
#include "merge_compare.hpp"
#include "merge_config.hpp"
#include "test_util.hpp"
#include "corpus_loader.hpp"

namespace {

using namespace dume;
using dume::test::TempDirTest;
namespace fs = std::filesystem;

const fs::path kExperts = fs::path(DUME_SOURCE_DIR) / "experts";

CorpusSpec corpus(const fs::path& path, CorpusFormat format) {
  CorpusSpec spec;
  spec.path = path;
  spec.format = format;
  return spec;
}

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// `bytes` cut into documents at the first newline after every `every` bytes (so each cut is on a
// UTF-8 boundary), one JSON object per line with the document under `field`.
std::string to_jsonl(const std::string& bytes, std::size_t every, const std::string& field) {
  std::string out;
  std::size_t begin = 0;
  while (begin < bytes.size()) {
    std::size_t end = bytes.find('\n', std::min(bytes.size(), begin + every));
    end = end == std::string::npos ? bytes.size() : end + 1;
    out += nlohmann::json{{field, bytes.substr(begin, end - begin)}, {"id", begin}}.dump() + "\n";
    begin = end;
  }
  return out;
}

int run_dume(const std::string& args, const fs::path& log) {
  return std::system((std::string(DUME_EXECUTABLE) + " " + args + " >" + log.string() + " 2>&1").c_str());
}

class TextCorpus : public TempDirTest {};

// The bundled experts' tokenizer.json maps every UTF-8 byte to its own id, so JSONL documents of a
// text-bytes corpus, packed, are the very same token stream: the merges must be identical.
TEST_F(TextCorpus, JsonlMergeEqualsThePreTokenizedMerge) {
  const std::string config = R"(experts:
  - {name: c, checkpoint: EXPERTS/c, calibration: C}
  - {name: python, checkpoint: EXPERTS/python, calibration: PY}
calibration: {sequence_length: 128, max_sequences: 12, batch_sequences: 4}
output: {path: OUT}
)";
  const auto write_config = [&](const std::string& name, const std::string& c, const std::string& py) {
    std::string yaml = config;
    yaml.replace(yaml.find("EXPERTS"), 7, kExperts.string());
    yaml.replace(yaml.find("EXPERTS"), 7, kExperts.string());
    yaml.replace(yaml.find("C}"), 1, c);
    yaml.replace(yaml.find("PY}"), 2, py);
    yaml.replace(yaml.find("OUT"), 3, (dir_ / name).string());
    return write(name + ".yaml", yaml);
  };
  write("c.jsonl", to_jsonl(read_bytes(kExperts / "data/c.calib.bin"), 700, "text"));
  write("python.jsonl", to_jsonl(read_bytes(kExperts / "data/python.calib.bin"), 1500, "content"));
  const auto bytes = [](const char* d) {
    return "{path: " + (kExperts / "data" / (std::string(d) + ".calib.bin")).string() + ", format: text-bytes}";
  };
  const fs::path tokens = write_config("tokens", bytes("c"), bytes("python"));
  const fs::path text = write_config("text", "{path: " + file("c.jsonl").string() + ", format: jsonl}",
                                     "{path: " + file("python.jsonl").string() + ", format: jsonl, field: content}");
  ASSERT_EQ(run_dume("merge " + tokens.string(), file("tokens.log")), 0) << read_bytes(file("tokens.log"));
  ASSERT_EQ(run_dume("merge " + text.string(), file("text.log")), 0) << read_bytes(file("text.log"));
  EXPECT_THAT(read_bytes(file("text.log")), ::testing::HasSubstr("# calibration 'python': "));
  test::expect_same_merge(dir_ / "text", dir_ / "tokens");
}

TEST_F(TextCorpus, TruncateKeepsTheFirstTokensOfEachLongEnoughDocument) {
  write("docs.txt", "abcdefghij\n\nshort\n\n0123456789abcdef\n");
  CorpusSpec spec = corpus(file("docs.txt"), CorpusFormat::text);
  spec.tokenizer = kExperts / "c";
  spec.blank_line_documents = true;
  spec.packing = Packing::truncate;
  const LoadedCorpus corpus = load_corpus(spec, 256, 8, 0);
  EXPECT_EQ(corpus.report.documents, 3u);
  EXPECT_EQ(corpus.report.too_short, 1u);
  ASSERT_EQ(corpus.windows.count(), 2u);
  const std::string expected = "abcdefgh01234567";
  const auto t = corpus.windows.tokens();
  EXPECT_EQ(std::string(t.begin(), t.end()), expected);

  spec.packing = Packing::pack;  // blocks joined without their separators
  const LoadedCorpus packed_corpus = load_corpus(spec, 256, 4, 0);
  const auto packed = packed_corpus.windows.tokens();
  EXPECT_EQ(std::string(packed.begin(), packed.end()), std::string("abcdefghijshort0123456789abcdef").substr(0, 28));
}

TEST_F(TextCorpus, TokenizeWritesAMegatronDatasetThatReadsBackAsTheSameWindows) {
  write("a.jsonl", to_jsonl(read_bytes(kExperts / "data/prose.test.bin"), 900, "text"));
  ASSERT_EQ(run_dume("tokenize " + file("a.jsonl").string() + " --tokenizer " + (kExperts / "prose").string() +
                         " --output " + file("prose").string(),
                     file("tokenize.log")),
            0)
      << read_bytes(file("tokenize.log"));
  EXPECT_THAT(read_bytes(file("tokenize.log")), ::testing::HasSubstr("MB/s"));
  CorpusSpec jsonl = corpus(file("a.jsonl"), CorpusFormat::jsonl);
  jsonl.tokenizer = kExperts / "prose";
  const CorpusSpec megatron = corpus(file("prose"), CorpusFormat::megatron);
  const auto a = load_corpus(jsonl, 256, 64, 0), b = load_corpus(megatron, 256, 64, 0);
  EXPECT_EQ(a.report.documents, b.report.documents);
  ASSERT_EQ(a.windows.count(), b.windows.count());
  EXPECT_TRUE(std::ranges::equal(a.windows.tokens(), b.windows.tokens()));
  // Not over an existing output without --force.
  EXPECT_NE(run_dume("tokenize " + file("a.jsonl").string() + " --tokenizer " + (kExperts / "prose").string() +
                         " --output " + file("prose").string(),
                     file("again.log")),
            0);
  EXPECT_THAT(read_bytes(file("again.log")), ::testing::HasSubstr("pass --force"));
}

TEST_F(TextCorpus, ClearErrors) {
  write("a.txt", "hello");
  CorpusSpec spec = corpus(file("a.txt"), CorpusFormat::text);
  spec.tokenizer = dir_;  // no tokenizer.json here
  test::expect_error_with([&] { load_corpus(spec, 256, 2, 0); }, {"tokenizer.json", "dume tokenize"});
  spec.tokenizer = kExperts / "c";
  test::expect_error_with([&] { load_corpus(spec, 100, 2, 0); }, {"256 ids", "vocab of 100"});
  CorpusSpec tokens = corpus(kExperts / "data/c.test.bin", CorpusFormat::text_bytes);
  tokens.packing = Packing::truncate;
  test::expect_error_with([&] { load_corpus(tokens, 256, 2, 0); }, {"truncate", "one token stream"});
  spec.packing = Packing::truncate;
  test::expect_error_with([&] { load_corpus(spec, 256, 64, 0); }, {"at least 64 tokens", "none of the 1"});
}

TEST_F(TextCorpus, ConfigKeysBelongToTheirFormats) {
  const auto parse = [&](const std::string& corpus) {
    return merge_config_parse("experts:\n  - {name: a, checkpoint: ck, calibration: " + corpus + "}\noutput: {path: o}\n",
                              file("m.yaml"));
  };
  const MergeConfig c = parse("{path: d.jsonl, format: jsonl, field: body, packing: truncate, on_bad: skip}");
  const CorpusSpec& s = c.experts[0].calibration;
  EXPECT_EQ(s.field, "body");
  EXPECT_EQ(s.packing, Packing::truncate);
  EXPECT_TRUE(s.skip_bad_documents);
  EXPECT_EQ(s.tokenizer, dir_ / "ck");  // the expert's own
  test::expect_error_with([&] { parse("{path: d.bin, format: uint16, field: body}"); }, {"field", "jsonl", "uint16"});
  test::expect_error_with([&] { parse("{path: d.jsonl, format: jsonl, packing: tight}"); }, {"pack or truncate"});
  test::expect_error_with([&] { parse("{path: d.txt, format: text, documents: line}"); }, {"file or blank-line"});
}

}  // namespace
