// Text/JSONL documents and Megatron indexed datasets: megatron-core's own files read back as it
// reads them (tools/make_megatron_fixture.py), round trips, hand-laid bytes, and malformed inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "documents.hpp"
#include "megatron.hpp"
#include "test_util.hpp"

namespace dume {
namespace {

namespace fs = std::filesystem;
using test::TempDirTest;
using Ids = std::vector<std::uint32_t>;

// write_megatron of documents held as vectors.
void write_documents(const fs::path& prefix, const std::vector<Ids>& documents, std::size_t vocab_size) {
  const std::vector<std::span<const std::uint32_t>> spans(documents.begin(), documents.end());
  write_megatron(prefix, spans, vocab_size);
}

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// ---------------------------------------------------------------- Megatron

template <typename T>
void put(std::string& out, T value) {
  for (std::size_t b = 0; b < sizeof(T); ++b)
    out.push_back(static_cast<char>((static_cast<std::uint64_t>(value) >> (8 * b)) & 0xFF));
}

// The fields of an .idx, laid out by hand as megatron-core's _IndexWriter does.
struct IdxFields {
  std::string magic = std::string("MMIDIDX\0\0", 9);
  std::uint64_t version = 1;
  std::uint8_t code = 3;  // int16
  std::vector<std::int32_t> lengths = {2, 3, 1};
  std::vector<std::int64_t> pointers = {0, 4, 10};
  std::vector<std::int64_t> documents = {0, 2, 3};
  std::uint64_t sequence_count = 3, document_count = 3;

  std::string bytes() const {
    std::string out = magic;
    put(out, version);
    put(out, code);
    put(out, sequence_count);
    put(out, document_count);
    for (auto v : lengths) put(out, v);
    for (auto v : pointers) put(out, v);
    for (auto v : documents) put(out, v);
    return out;
  }
};

// The .bin for the default IdxFields: int16 sequences {7, 300}, {1, 2, 32767}, {0}.
std::string int16_bin(const std::vector<std::int16_t>& ids = {7, 300, 1, 2, 32767, 0}) {
  std::string out;
  for (auto id : ids) put(out, id);
  return out;
}

class MegatronTest : public TempDirTest {
 protected:
  fs::path dataset(const std::string& idx, const std::string& bin) const {
    write("data.idx", idx);
    write("data.bin", bin);
    return file("data");
  }
};

TEST_F(MegatronTest, ReadsWhatMegatronCoreWrote) {
  const fs::path prefix = fs::path(DUME_FIXTURES_DIR) / "megatron" / "small";
  std::ifstream json_in(prefix.string() + ".json");
  const auto expected = nlohmann::json::parse(json_in);
  ASSERT_EQ(expected["dtype_code"], 8);  // uint16
  const MegatronDataset got = read_megatron(prefix);

  const auto sequences = expected["sequences"].get<std::vector<Ids>>();
  ASSERT_EQ(got.sequence_offsets.size(), sequences.size() + 1);
  Ids all;
  for (std::size_t i = 0; i < sequences.size(); ++i) {
    const Ids sequence(got.tokens.begin() + static_cast<std::ptrdiff_t>(got.sequence_offsets[i]),
                       got.tokens.begin() + static_cast<std::ptrdiff_t>(got.sequence_offsets[i + 1]));
    EXPECT_EQ(sequence, sequences[i]) << "sequence " << i;
    all.insert(all.end(), sequences[i].begin(), sequences[i].end());
  }
  EXPECT_EQ(got.tokens, all);
  EXPECT_EQ(got.document_index, expected["document_indices"].get<std::vector<std::uint64_t>>());
  // The fixture has documents of several sequences, and ids that only uint16 (not int16) reads.
  EXPECT_GT(got.document_index.size(), 2u);
  EXPECT_LT(got.document_index.size(), sequences.size() + 1);
  EXPECT_GT(*std::max_element(got.tokens.begin(), got.tokens.end()), 32767u);
}

TEST_F(MegatronTest, RoundTripsAndPicksMegatronsDtype) {
  const std::vector<Ids> documents = {{1, 2, 3}, {}, {65498, 0}, {42}};
  write_documents(file("small"), documents, 65499);
  EXPECT_EQ(read_bytes(file("small.idx"))[17], 8);  // uint16 below 65500
  EXPECT_EQ(fs::file_size(file("small.bin")), 6u * 2);
  EXPECT_FALSE(fs::exists(file("small.idx.tmp")));
  EXPECT_FALSE(fs::exists(file("small.bin.tmp")));
  MegatronDataset got = read_megatron(file("small"));
  EXPECT_EQ(got.tokens, (Ids{1, 2, 3, 65498, 0, 42}));
  EXPECT_EQ(got.sequence_offsets, (std::vector<std::uint64_t>{0, 3, 3, 5, 6}));
  EXPECT_EQ(got.document_index, (std::vector<std::uint64_t>{0, 1, 2, 3, 4}));

  write_documents(file("wide"), {{65499, 1}, {0}}, 65500);
  EXPECT_EQ(read_bytes(file("wide.idx"))[17], 4);  // int32 from 65500 on
  EXPECT_EQ(fs::file_size(file("wide.bin")), 3u * 4);
  got = read_megatron(file("wide"));
  EXPECT_EQ(got.tokens, (Ids{65499, 1, 0}));
  EXPECT_EQ(got.document_index, (std::vector<std::uint64_t>{0, 1, 2}));
  write_documents(file("wide"), {{70000}, {150000, 3}}, 150001);
  EXPECT_EQ(read_megatron(file("wide")).tokens, (Ids{70000, 150000, 3}));

  // Overwrites in place.
  write_documents(file("wide"), {{5}}, 100000);
  EXPECT_EQ(read_megatron(file("wide")).tokens, Ids{5});
}

TEST_F(MegatronTest, WriteRejectsIdsOutsideTheVocabulary) {
  EXPECT_ERROR_WITH(write_documents(file("x"), {{1}, {2, 300}}, 300), "x.bin", "document 1",
                    "token 1", "id 300", "vocabulary of 300");
  EXPECT_FALSE(fs::exists(file("x.idx")));
}

TEST_F(MegatronTest, ReadsAHandLaidDataset) {
  const MegatronDataset got = read_megatron(dataset(IdxFields{}.bytes(), int16_bin()));
  EXPECT_EQ(got.tokens, (Ids{7, 300, 1, 2, 32767, 0}));
  EXPECT_EQ(got.sequence_offsets, (std::vector<std::uint64_t>{0, 2, 5, 6}));
  EXPECT_EQ(got.document_index, (std::vector<std::uint64_t>{0, 2, 3}));

  // int64 and uint8 ids.
  IdxFields wide;
  wide.code = 5;
  wide.pointers = {0, 16, 40};
  std::string bin;
  for (std::int64_t id : std::initializer_list<std::int64_t>{9, 4294967295, 1, 2, 3, 0}) put(bin, id);
  EXPECT_EQ(read_megatron(dataset(wide.bytes(), bin)).tokens, (Ids{9, 4294967295u, 1, 2, 3, 0}));
  IdxFields narrow;
  narrow.code = 1;
  narrow.pointers = {0, 2, 5};
  EXPECT_EQ(read_megatron(dataset(narrow.bytes(), std::string("\x07\xff\x01\x02\x03\x00", 6))).tokens,
            (Ids{7, 255, 1, 2, 3, 0}));

  // No sequences at all: the document index is just [0].
  IdxFields empty;
  empty.lengths = {};
  empty.pointers = {};
  empty.documents = {0};
  empty.sequence_count = 0;
  empty.document_count = 1;
  const MegatronDataset none = read_megatron(dataset(empty.bytes(), ""));
  EXPECT_TRUE(none.tokens.empty());
  EXPECT_EQ(none.document_index, std::vector<std::uint64_t>{0});
}

TEST_F(MegatronTest, RejectsMalformedIndexes) {
  const std::string bin = int16_bin();
  auto idx_error = [&](const IdxFields& fields, std::initializer_list<std::string> parts) {
    try {
      read_megatron(dataset(fields.bytes(), bin));
      ADD_FAILURE() << "expected an Error containing " << *parts.begin();
    } catch (const Error& e) {
      EXPECT_THAT(e.what(), testing::HasSubstr("data.idx: "));
      for (const std::string& part : parts) EXPECT_THAT(e.what(), testing::HasSubstr(part));
    }
  };
  IdxFields f;
  f.magic = std::string("MMIDIDY\0\0", 9);
  idx_error(f, {"magic"});
  f = {};
  f.version = 2;
  idx_error(f, {"version: 2"});
  f = {};
  f.code = 7;
  idx_error(f, {"dtype code 7", "float32", "not token ids"});
  f.code = 6;
  idx_error(f, {"dtype code 6", "float64"});
  f.code = 9;
  idx_error(f, {"dtype code 9", "unknown"});
  f = {};
  f.sequence_count = 4;  // the arrays hold 3
  idx_error(f, {"sequence_count 4 and document_count 3 need 106 bytes", "file has 94"});
  f.sequence_count = std::uint64_t{1} << 62;  // 12 bytes each overflows 64 bits
  idx_error(f, {"sequence_count 4611686018427387904", "more than 2^64"});
  f = {};
  f.document_count = 100;
  idx_error(f, {"document_count 100 need 870 bytes"});
  f.document_count = ~std::uint64_t{0};
  idx_error(f, {"document_count 18446744073709551615", "more than 2^64"});
  f.document_count = 2;  // one entry too few: 8 bytes left over
  idx_error(f, {"file size 94 bytes: 8 bytes more than the 86"});
  f = {};
  f.pointers = {0, 4, 12};
  idx_error(f, {"sequence_pointers[2] = 12", "expected 10"});
  f = {};
  f.lengths = {2, 3, 2};  // the last sequence runs past the 12-byte .bin
  idx_error(f, {"sequence[2]", "runs past the end", "data.bin (12 bytes)"});
  f = {};
  f.lengths = {2, -3, 1};
  idx_error(f, {"sequence_lengths[1] = -3", "negative"});
  f = {};
  f.documents = {0, 3, 2};
  idx_error(f, {"document_indices[2] = 2", "smaller than the entry before it (3)"});
  f.documents = {1, 2, 3};
  idx_error(f, {"document_indices[0] = 1", "start at 0"});
  f.documents = {0, 1, 2};
  idx_error(f, {"document_indices[2] = 2", "end at the sequence count 3"});
  f.documents = {0, 4, 3};
  idx_error(f, {"document_indices[1] = 4", "past the sequence count 3"});
  f = {};
  f.documents = {};
  f.document_count = 0;
  idx_error(f, {"document index: empty"});

  // Truncated anywhere: in the header, or in the arrays.
  const std::string whole = IdxFields{}.bytes();
  EXPECT_ERROR_WITH(read_megatron(dataset(whole.substr(0, 20), bin)), "data.idx: header", "20 bytes");
  EXPECT_ERROR_WITH(read_megatron(dataset(whole.substr(0, whole.size() - 1), bin)), "data.idx: ",
                    "need 94 bytes, but the file has 93 (truncated");
  EXPECT_ERROR_WITH(read_megatron(dataset(whole.substr(0, 40), bin)), "data.idx: ", "file has 40");
  // Trailing bytes that are not one mode per sequence.
  EXPECT_ERROR_WITH(read_megatron(dataset(whole + "xy", bin)), "data.idx: file size 96 bytes");
  // A multimodal index (one int8 mode per sequence after the document index) says so.
  EXPECT_ERROR_WITH(read_megatron(dataset(whole + std::string(3, '\0'), bin)), "data.idx: sequence_modes",
                    "multimodal");
}

TEST_F(MegatronTest, RejectsBadBinFiles) {
  const std::string idx = IdxFields{}.bytes();
  EXPECT_ERROR_WITH(read_megatron(dataset(idx, int16_bin({7, 300, 1, -2, 32767, 0}))), "data.bin",
                    "sequence 1, token 1", "id -2", "negative");
  EXPECT_ERROR_WITH(read_megatron(dataset(idx, int16_bin() + std::string(2, '\0'))), "data.bin: 14 bytes", "cover 12");
  fs::remove(file("data.bin"));
  EXPECT_ERROR_WITH(read_megatron(file("data")), "data.bin", "cannot open");
  EXPECT_ERROR_WITH(read_megatron(file("nothing")), "nothing.idx", "cannot open");
}

// ---------------------------------------------------------------- Documents

class DocumentsTest : public TempDirTest {
 protected:
  Documents read(const std::string& pattern, DocumentFormat format = DocumentFormat::text,
                 DocumentSplit split = DocumentSplit::file, OnBadDocument on_bad = OnBadDocument::error,
                 const std::string& field = "text") const {
    DocumentSource source;
    source.path = file(pattern).string();
    source.format = format;
    source.split = split;
    source.field = field;
    source.on_bad = on_bad;
    return read_documents(source);
  }
};

TEST_F(DocumentsTest, GlobIsSortedAndPlainPathsMustExist) {
  for (const char* name : {"c9.txt", "b.txt", "c10.txt", "a.txt", "other.md"}) write(name, "x");
  const auto files = expand_glob(file("*.txt").string());
  ASSERT_EQ(files.size(), 4u);
  EXPECT_EQ(files[0], file("a.txt"));
  EXPECT_EQ(files[1], file("b.txt"));
  EXPECT_EQ(files[2], file("c10.txt"));
  EXPECT_EQ(files[3], file("c9.txt"));
  EXPECT_EQ(expand_glob(file("c?.txt").string()), std::vector<fs::path>{file("c9.txt")});
  EXPECT_EQ(expand_glob(file("[ab].txt").string()), (std::vector<fs::path>{file("a.txt"), file("b.txt")}));
  EXPECT_EQ(expand_glob(file("other.md").string()), std::vector<fs::path>{file("other.md")});

  EXPECT_ERROR_WITH(expand_glob(file("missing.txt").string()), "no file matches " + file("missing.txt").string());
  EXPECT_ERROR_WITH(expand_glob(file("*.json").string()), "no file matches");
  EXPECT_ERROR_WITH(expand_glob(file("no_dir/*.txt").string()), "no file matches");
  fs::create_directory(file("sub.txt"));
  EXPECT_ERROR_WITH(expand_glob(file("*.txt").string()), "sub.txt", "is a directory");
  EXPECT_ERROR_WITH(expand_glob(file("sub.txt").string()), "sub.txt", "is a directory");
}

TEST_F(DocumentsTest, TextFilesAreOneDocumentEach) {
  write("1.txt", "first file\r\nwith CRLF\r\n\r\n");
  write("2.txt", "second\n\nfile");
  const Documents docs = read("*.txt");
  EXPECT_EQ(docs.texts, (std::vector<std::string>{"first file\r\nwith CRLF\r\n\r\n", "second\n\nfile"}));
  EXPECT_EQ(docs.files, (std::vector<fs::path>{file("1.txt"), file("2.txt")}));
  EXPECT_EQ(docs.skipped, 0u);
}

TEST_F(DocumentsTest, BlankLinesSplitBlocks) {
  write("a.txt", "\n\npara one\nline two\n\n  \t\n\npara two\r\nmore\r\n\r\nlast  \nline");
  write("b.txt", "only block\n\n\n");
  const Documents docs = read("*.txt", DocumentFormat::text, DocumentSplit::blank_line);
  EXPECT_EQ(docs.texts,
            (std::vector<std::string>{"para one\nline two", "para two\r\nmore\r", "last  \nline", "only block"}));
}

TEST_F(DocumentsTest, JsonlReadsTheField) {
  write("a.jsonl", "{\"text\": \"hello\\nworld\", \"id\": 1}\n\n   \n{\"text\": \"caf\\u00e9 \xe2\x82\xac\"}\r\n");
  write("b.jsonl", "{\"body\": \"custom\", \"text\": 5}");
  EXPECT_EQ(read("a.jsonl", DocumentFormat::jsonl).texts,
            (std::vector<std::string>{"hello\nworld", "caf\xc3\xa9 \xe2\x82\xac"}));
  EXPECT_EQ(read("b.jsonl", DocumentFormat::jsonl, DocumentSplit::file, OnBadDocument::error, "body").texts,
            std::vector<std::string>{"custom"});
}

TEST_F(DocumentsTest, BadDocumentsNameFileAndLine) {
  const std::string bad_jsonl =
      "{\"text\": \"good\"}\n"
      "{\"other\": \"x\"}\n"
      "{\"text\": [1]}\n"
      "{\"text\": \"unterminated}\n"
      "[\"not\", \"an object\"]\n"
      "{\"text\": \"\"}\n"
      "{\"text\": \"bad \xff byte\"}\n"
      "{\"text\": \"also good\"}\n";
  const std::string path = write("bad.jsonl", bad_jsonl).string();
  EXPECT_ERROR_WITH(read("bad.jsonl", DocumentFormat::jsonl), path + ":2: no field \"text\"");
  const Documents skipped = read("bad.jsonl", DocumentFormat::jsonl, DocumentSplit::file, OnBadDocument::skip);
  EXPECT_EQ(skipped.texts, (std::vector<std::string>{"good", "also good"}));
  EXPECT_EQ(skipped.skipped, 6u);
  EXPECT_EQ(skipped.first_skip, path + ":2: no field \"text\"");

  // Each kind on its own, as the error it raises.
  auto jsonl_error = [&](const std::string& line, const std::string& what) {
    write("one.jsonl", "{\"text\": \"fine\"}\n" + line + "\n");
    EXPECT_ERROR_WITH(read("one.jsonl", DocumentFormat::jsonl), file("one.jsonl").string() + ":2: " + what);
  };
  jsonl_error("{\"text\": [1]}", "field \"text\" is a array, not a string");
  jsonl_error("{\"text\": \"unterminated}", "invalid JSON");
  jsonl_error("[1]", "a JSON array, not an object");
  jsonl_error("{\"text\": \"\"}", "empty document");
  jsonl_error("{\"text\": \"bad \xff\"}", "invalid UTF-8 at byte 14 of the line");

  // Text: a whole file names the byte; a block names its line.
  const std::string whole = write("bad.txt", "ok\xc3\x28").string();
  EXPECT_ERROR_WITH(read("bad.txt"), whole + ": invalid UTF-8 at byte 2");
  write("blocks.txt", "fine\n\nstill fine\nab\xed\xa0\x80\n");  // a UTF-8-encoded surrogate
  EXPECT_ERROR_WITH(read("blocks.txt", DocumentFormat::text, DocumentSplit::blank_line),
                    file("blocks.txt").string() + ":4: invalid UTF-8 at byte 2 of the line");
  const Documents kept = read("blocks.txt", DocumentFormat::text, DocumentSplit::blank_line, OnBadDocument::skip);
  EXPECT_EQ(kept.texts, std::vector<std::string>{"fine"});
  EXPECT_EQ(kept.skipped, 1u);
  const std::string empty = write("empty.txt", "").string();
  EXPECT_ERROR_WITH(read("empty.txt"), empty + ":1: empty document");
}

TEST_F(DocumentsTest, NoDocumentsAtAllIsAnError) {
  write("blank.txt", "\n  \n\n");
  EXPECT_ERROR_WITH(read("blank.txt", DocumentFormat::text, DocumentSplit::blank_line), "blank.txt: no documents");
  write("bad.jsonl", "{}\n");
  EXPECT_ERROR_WITH(read("bad.jsonl", DocumentFormat::jsonl, DocumentSplit::file, OnBadDocument::skip),
                    "no documents", "skipped 1 bad document", "bad.jsonl:1: no field");
}

}  // namespace
}  // namespace dume
