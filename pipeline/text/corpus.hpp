// Token corpora for perplexity and calibration: reading ids from raw/npy/hdf5 files, vocab checks,
// fixed-length windows. Text, JSONL and Megatron corpora (documents) are read by corpus_loader.hpp,
// which turns them into the same windows.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dume {

enum class CorpusFormat { uint16, uint32, npy, hdf5, text_bytes, text, jsonl, megatron };
// How documents become windows: concatenated and cut (pack), or one window per document of its
// first tokens (truncate: DUME reads only the first context_tokens positions of a sequence).
enum class Packing { pack, truncate };

// "uint16" | "uint32" | "npy" | "hdf5" | "text-bytes" | "text" | "jsonl" | "megatron"; an unknown
// name is an Error listing the valid ones.
CorpusFormat corpus_format_from_string(std::string_view name);
std::string_view to_string(CorpusFormat format);

// True for the formats that hold documents to tokenize (text, jsonl).
bool is_text_format(CorpusFormat format);

struct CorpusSpec {
  std::filesystem::path path;  // text and jsonl: a file or a glob; megatron: the prefix (no .bin/.idx)
  CorpusFormat format = CorpusFormat::uint16;
  std::string dataset;  // hdf5 only: the dataset path inside the file, e.g. "/tokens"
  // text and jsonl only:
  std::filesystem::path tokenizer;  // tokenizer.json, or a directory holding one (default: the model's)
  std::string field = "text";       // jsonl: the field holding the document
  bool blank_line_documents = false;  // text: one document per blank-line-separated block (else per file)
  bool skip_bad_documents = false;    // count and skip bad documents instead of failing
  // text, jsonl and megatron:
  Packing packing = Packing::pack;
};

// Reads every token id of a token-format corpus (uint16, uint32, npy, hdf5, text-bytes) (multi-dimensional arrays flattened in row-major order).
// Throws Error naming the file and the problem; an empty corpus is an Error in every format.
std::vector<uint32_t> corpus_read(const CorpusSpec& spec);

// Throws Error naming `source`, the first offending position and id, and the vocab size when an
// id >= vocab.
void corpus_check_vocab(std::span<const uint32_t> tokens, size_t vocab, const std::filesystem::path& source);

// The corpus cut into non-overlapping windows of `length` tokens (the tail that does not fill a
// window is dropped); max_windows = 0 means all. Throws when length is 0 or the corpus is shorter
// than one window (naming both sizes).
class CorpusWindows {
 public:
  CorpusWindows(std::vector<uint32_t> tokens, size_t length, size_t max_windows, const std::filesystem::path& source);

  size_t count() const { return count_; }
  size_t length() const { return length_; }
  // Window i (i < count(); DUME_ASSERT otherwise).
  std::span<const uint32_t> window(size_t i) const;
  // All tokens the windows cover, in order: count() * length() of them.
  std::span<const uint32_t> tokens() const;
  // Tokens in the corpus as read, including the dropped tail and windows beyond max_windows.
  size_t corpus_size() const { return tokens_.size(); }
  const std::filesystem::path& source() const { return source_; }

 private:
  std::vector<uint32_t> tokens_;
  size_t length_;
  size_t count_;
  std::filesystem::path source_;
};

}  // namespace dume
