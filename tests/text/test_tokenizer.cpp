// Tests for pipeline/tokenizer: the ids of each fixture family (tools/make_tokenizer_fixtures.py
// wrote them with the `tokenizers` library) equal dume's exactly, and every unsupported or broken
// tokenizer.json is an Error naming the file and the part.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "error.hpp"
#include "test_util.hpp"
#include "tokenizer.hpp"

namespace {

namespace fs = std::filesystem;
using dume::Tokenizer;
using dume::test::TempDirTest;
using nlohmann::json;

const fs::path kFixtures = fs::path(DUME_FIXTURES_DIR) / "tokenizers";

json read_json(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << path;
  std::ostringstream contents;
  contents << in.rdbuf();
  return json::parse(contents.str());
}

std::string preview(const std::string& text) {
  std::string shown = text.substr(0, 60);
  return "'" + shown + (text.size() > 60 ? "...'" : "'");
}

class TokenizerFamily : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerFamily, IdsEqualTheLibrary) {
  const fs::path dir = kFixtures / GetParam();
  const Tokenizer tokenizer = Tokenizer::from_file(dir / "tokenizer.json");
  const json expected = read_json(dir / "expected.json");
  EXPECT_EQ(tokenizer.vocab_size(), expected.at("vocab_size").get<std::size_t>());
  const json& cases = expected.at("cases");
  ASSERT_GT(cases.size(), 40u);
  for (const json& c : cases) {
    const std::string text = c.at("text").get<std::string>();
    SCOPED_TRACE(preview(text));
    EXPECT_EQ(tokenizer.encode(text), c.at("ids").get<std::vector<std::uint32_t>>());
    EXPECT_EQ(tokenizer.encode_document(text), c.at("ids_document").get<std::vector<std::uint32_t>>());
  }
}

// encode() is const and keeps per-thread state: threads encoding at once agree with one thread.
TEST_P(TokenizerFamily, ThreadsAgree) {
  const fs::path dir = kFixtures / GetParam();
  const Tokenizer tokenizer = Tokenizer::from_file(dir / "tokenizer.json");
  const json expected = read_json(dir / "expected.json");
  const json& whole = expected.at("cases").at(0);
  const std::string text = whole.at("text").get<std::string>();
  const auto want = whole.at("ids").get<std::vector<std::uint32_t>>();
  std::vector<int> ok(4, 0);
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < ok.size(); ++t)
    threads.emplace_back([&, t] {
      bool all = true;
      for (int round = 0; round < 10; ++round) all = all && tokenizer.encode(text) == want;
      ok[t] = all ? 1 : 0;
    });
  for (auto& thread : threads) thread.join();
  for (int v : ok) EXPECT_EQ(v, 1);
}

INSTANTIATE_TEST_SUITE_P(Tokenizer, TokenizerFamily,
                         ::testing::Values("llama3", "qwen2", "gpt2", "llama2", "mistral", "smollm2", "deepseek3",
                                           "whitespace", "punctuation"),
                         [](const ::testing::TestParamInfo<std::string>& family) { return family.param; });

TEST(Tokenizer, PrefixSuffixAndKind) {
  const Tokenizer llama3 = Tokenizer::from_file(kFixtures / "llama3" / "tokenizer.json");
  EXPECT_EQ(llama3.kind(), "byte-level BPE");
  ASSERT_EQ(llama3.prefix().size(), 1u);
  EXPECT_EQ(llama3.prefix()[0], 900u);  // <|begin_of_text|>
  EXPECT_TRUE(llama3.suffix().empty());

  const Tokenizer gpt2 = Tokenizer::from_file(kFixtures / "gpt2" / "tokenizer.json");
  ASSERT_EQ(gpt2.prefix().size(), 1u);
  ASSERT_EQ(gpt2.suffix().size(), 1u);
  EXPECT_EQ(gpt2.prefix()[0], 0u);  // <s>
  EXPECT_EQ(gpt2.suffix()[0], 1u);  // </s>

  const Tokenizer qwen2 = Tokenizer::from_file(kFixtures / "qwen2" / "tokenizer.json");
  EXPECT_TRUE(qwen2.prefix().empty());
  EXPECT_TRUE(qwen2.suffix().empty());

  Tokenizer mistral = Tokenizer::from_file(kFixtures / "mistral" / "tokenizer.json");
  EXPECT_EQ(mistral.kind(), "SentencePiece BPE");
  const auto ids = mistral.encode("[INST] Hello [/INST]");
  const Tokenizer moved = std::move(mistral);
  EXPECT_EQ(moved.encode("[INST] Hello [/INST]"), ids);
}

TEST(Tokenizer, InvalidUtf8IsAnErrorWithTheOffset) {
  const Tokenizer tokenizer = Tokenizer::from_file(kFixtures / "llama3" / "tokenizer.json");
  EXPECT_ERROR_WITH(tokenizer.encode("ok \xC3\x28 bad"), "not valid UTF-8", "byte 3");
  EXPECT_ERROR_WITH(tokenizer.encode_document("\xED\xA0\x80"), "not valid UTF-8", "byte 0");
}

// Long runs of one character class go through PCRE2's JIT stack without failing.
TEST(Tokenizer, LongRunsOfOneClass) {
  const Tokenizer tokenizer = Tokenizer::from_file(kFixtures / "llama3" / "tokenizer.json");
  EXPECT_FALSE(tokenizer.encode(std::string(1 << 18, ' ') + "x").empty());
  EXPECT_FALSE(tokenizer.encode(std::string(1 << 20, '\n')).empty());
  EXPECT_FALSE(tokenizer.encode(std::string(1 << 20, 'a')).empty());
}

// Each test writes a variant of the llama3 fixture (or its own text) and expects the Error.
class TokenizerFile : public TempDirTest {
 protected:
  json base() const { return read_json(kFixtures / "llama3" / "tokenizer.json"); }
  fs::path write_json(const json& data) const { return write("tokenizer.json", data.dump()); }
  void expect_error(const json& data, std::initializer_list<std::string> parts) const {
    const fs::path path = write_json(data);
    try {
      (void)Tokenizer::from_file(path);
      ADD_FAILURE() << "expected dume::Error, nothing was thrown";
    } catch (const dume::Error& e) {
      EXPECT_THAT(e.what(), ::testing::HasSubstr(path.string()));
      for (const std::string& part : parts) EXPECT_THAT(e.what(), ::testing::HasSubstr(part));
    }
  }
};

TEST_F(TokenizerFile, UnsupportedParts) {
  json data = base();
  data["model"]["type"] = "Unigram";
  expect_error(data, {"model.type 'Unigram' is not supported (dume reads BPE tokenizers)"});

  data = base();
  data["normalizer"] = {{"type", "BertNormalizer"}};
  expect_error(data, {"normalizer 'BertNormalizer' is not supported (dume supports NFC, NFKC, Lowercase, Strip, "
                      "Replace, Prepend and Sequence)"});

  data = base();
  data["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "NFKC"}}, {{"type", "NFD"}}}}};
  expect_error(data, {"normalizer.normalizers[1] 'NFD' is not supported"});

  data = base();
  data["normalizer"] = {{"type", "Precompiled"}, {"precompiled_charsmap", "AAAA"}};
  expect_error(data, {"normalizer 'Precompiled' is not supported"});

  data = base();
  data["pre_tokenizer"] = {{"type", "BertPreTokenizer"}};
  expect_error(data, {"pre_tokenizer 'BertPreTokenizer' is not supported (dume supports Split, Digits, Punctuation, "
                      "Whitespace, WhitespaceSplit, ByteLevel, Metaspace and Sequence)"});

  data = base();
  data["pre_tokenizer"]["pretokenizers"][0] = {{"type", "UnicodeScripts"}};
  expect_error(data, {"pre_tokenizer.pretokenizers[0] 'UnicodeScripts' is not supported"});

  data = base();
  data["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Sideways";
  expect_error(data, {"pre_tokenizer.pretokenizers[0].behavior 'Sideways' is not Removed, Isolated, "
                      "MergedWithPrevious, MergedWithNext or Contiguous"});

  data = base();
  data["pre_tokenizer"]["pretokenizers"][0] = {{"type", "Punctuation"}, {"behavior", "Merged"}};
  expect_error(data, {"pre_tokenizer.pretokenizers[0].behavior 'Merged' is not Removed"});

  data = base();
  std::swap(data["pre_tokenizer"]["pretokenizers"][0], data["pre_tokenizer"]["pretokenizers"][1]);
  expect_error(data, {"ByteLevel before other pre-tokenizers"});

  data = base();
  data["model"]["dropout"] = 0.1;
  expect_error(data, {"model.dropout 0.1 is not supported"});

  data = base();
  data["model"]["continuing_subword_prefix"] = "##";
  expect_error(data, {"model.continuing_subword_prefix '##' is not supported"});

  data = base();
  data["post_processor"] = {{"type", "Weird"}};
  expect_error(data, {"post_processor 'Weird' is not supported"});

  data = base();
  data["truncation"] = {{"max_length", 512}};
  expect_error(data, {"truncation is set"});
}

TEST_F(TokenizerFile, BrokenFiles) {
  const fs::path garbage = write("tokenizer.json", "{\"model\": ");
  EXPECT_ERROR_WITH(Tokenizer::from_file(garbage), garbage.string(), "not valid JSON");
  EXPECT_ERROR_WITH(Tokenizer::from_file(file("missing.json")), "missing.json", "cannot open");

  json data = base();
  data["model"]["vocab"] = json::array();
  expect_error(data, {"model.vocab is not an object"});

  data = base();
  data["model"]["vocab"]["Ġthe"] = "seven";
  expect_error(data, {"model.vocab['Ġthe']", "is not a token id"});

  data = base();
  data["model"]["vocab"]["Ġthe"] = -1;
  expect_error(data, {"model.vocab['Ġthe']", "is not a token id"});

  data = base();
  data["model"]["vocab"]["Ġthe"] = std::uint64_t{1} << 40;
  expect_error(data, {"model.vocab['Ġthe']", "is not a token id"});

  data = base();
  data["model"]["merges"][0] = {"Ġ", "nowhere"};
  expect_error(data, {"model.merges[0] names 'nowhere', which is not in model.vocab"});

  data = base();
  data["model"]["merges"][1] = "nospace";
  expect_error(data, {"model.merges[1]", "is not two tokens"});

  data = base();
  data["model"]["merges"][2] = 42;
  expect_error(data, {"model.merges[2] is neither"});

  data = base();
  data["model"]["merges"] = "a b";
  expect_error(data, {"model.merges is not an array"});

  data = base();
  data["model"].erase("vocab");
  expect_error(data, {"model.vocab is missing"});

  data = base();
  data["model"]["unk_token"] = "<unk>";
  expect_error(data, {"model.unk_token '<unk>' is not in model.vocab"});

  data = base();
  data["added_tokens"][0]["id"] = 5000;
  expect_error(data, {"added_tokens[0].id 5000 of '<|begin_of_text|>' is not the id 900"});

  data = base();
  data["added_tokens"][1]["content"] = 7;
  expect_error(data, {"added_tokens[1].content is not a string"});

  data = base();
  data["post_processor"]["processors"][1]["special_tokens"]["<|begin_of_text|>"]["ids"][0] = 99999;
  expect_error(data, {"post_processor.processors[1].special_tokens['<|begin_of_text|>'].ids", "id 99999 is beyond"});

  data = base();
  data["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
  expect_error(data, {"pre_tokenizer.pretokenizers[0].pattern.Regex", "does not compile"});

  data = base();
  data["pre_tokenizer"]["pretokenizers"][0]["pattern"] = 3;
  expect_error(data, {"pre_tokenizer.pretokenizers[0].pattern is neither"});

  data = base();
  data["pre_tokenizer"]["pretokenizers"][0] = {{"type", "Digits"}};
  expect_error(data, {"pre_tokenizer.pretokenizers[0].individual_digits is missing"});

  data = base();
  data["normalizer"] = {{"type", "Strip"}, {"strip_left", true}};
  expect_error(data, {"normalizer.strip_right is missing"});

  data = base();
  data["normalizer"] = {{"type", "Replace"}, {"pattern", {{"Regex", "(unclosed"}}}, {"content", ""}};
  expect_error(data, {"normalizer.pattern.Regex", "does not compile"});

  data = base();
  data["normalizer"] = {{"type", "Replace"}, {"pattern", "a"}, {"content", ""}};
  expect_error(data, {"normalizer.pattern is neither"});

  data = base();
  data["model"] = "BPE";
  expect_error(data, {"model is not an object"});

  expect_error(json::array(), {"the top level is not an object"});
}

// Each normalizer and pre-tokenizer alone (every Split behaviour, inverted or not) and the pairs
// that interact, on one model: components/expected.json holds each variant's normalizer,
// pre-tokenizer and the library's ids of each text.
TEST_F(TokenizerFile, ComponentsEqualTheLibrary) {
  const fs::path dir = kFixtures / "components";
  const json model = read_json(dir / "tokenizer.json");
  const json expected = read_json(dir / "expected.json");
  const json& texts = expected.at("texts");
  ASSERT_GT(expected.at("variants").size(), 30u);
  for (const json& variant : expected.at("variants")) {
    SCOPED_TRACE(variant.at("name").get<std::string>());
    json data = model;
    data["normalizer"] = variant.at("normalizer");
    data["pre_tokenizer"] = variant.at("pre_tokenizer");
    const Tokenizer tokenizer = Tokenizer::from_file(write_json(data));
    const json& ids = variant.at("ids");
    ASSERT_EQ(ids.size(), texts.size());
    for (std::size_t i = 0; i < texts.size(); ++i) {
      const std::string text = texts[i].get<std::string>();
      SCOPED_TRACE(preview(text));
      EXPECT_EQ(tokenizer.encode(text), ids[i].get<std::vector<std::uint32_t>>());
    }
  }
}

// A small SentencePiece-style tokenizer whose one pre-tokenizer is `split` (fuzz findings).
json split_tokenizer(const json& split) {
  return {{"model",
           {{"type", "BPE"},
            {"unk_token", "<unk>"},
            {"vocab", {{"<unk>", 0}, {"a", 1}, {",", 2}, {"b", 3}, {"a,", 4}}},
            {"merges", {"a ,"}}}},
          {"pre_tokenizer", split}};
}

// Found by fuzz/tokenizer.cpp: Split with a {"String": ...} pattern (Llama 4's, DeepSeek's) was
// compiled with PCRE2_LITERAL | PCRE2_UCP, which PCRE2 refuses, so every such file failed to load.
TEST_F(TokenizerFile, SplitWithAStringPattern) {
  const json split = {{"type", "Split"}, {"pattern", {{"String", ","}}}, {"behavior", "Isolated"}};
  const Tokenizer tokenizer = Tokenizer::from_file(write_json(split_tokenizer(split)));
  // Isolated: "," is a piece of its own, so the merge "a ," cannot apply across it.
  EXPECT_EQ(tokenizer.encode("a,b"), (std::vector<std::uint32_t>{1, 2, 3}));
  // A literal: regex syntax in it means itself.
  const json dot = {{"type", "Split"}, {"pattern", {{"String", "."}}}, {"behavior", "Isolated"}};
  EXPECT_EQ(Tokenizer::from_file(write_json(split_tokenizer(dot))).encode("a,"), (std::vector<std::uint32_t>{4}));
}

// Found by fuzz/tokenizer.cpp: PCRE2's \C matches one byte inside a UTF-8 character, and the
// pieces it cut were decoded past their end (an ASan heap-buffer-overflow) and matched by the
// next regex as UTF-8 unchecked. It is refused when the file is read.
TEST_F(TokenizerFile, SingleByteEscapeIsRefused) {
  const json split = {{"type", "Split"}, {"pattern", {{"Regex", "\\C"}}}, {"behavior", "Isolated"}};
  expect_error(split_tokenizer(split), {"pre_tokenizer.pattern.Regex", "does not compile", "using \\C is disabled"});
}

}  // namespace
