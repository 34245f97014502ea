// Token corpora for perplexity and calibration: reading ids from raw/npy/hdf5/text files, vocab
// checks, fixed-length windows. Not a tokenizer: every format already holds token ids.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dume {

enum class CorpusFormat { uint16, uint32, npy, hdf5, text_bytes };

// "uint16" | "uint32" | "npy" | "hdf5" | "text-bytes"; an unknown name is an Error listing the valid ones.
CorpusFormat corpus_format_from_string(std::string_view name);
std::string_view to_string(CorpusFormat format);

struct CorpusSpec {
  std::filesystem::path path;
  CorpusFormat format = CorpusFormat::uint16;
  std::string dataset;  // hdf5 only: the dataset path inside the file, e.g. "/tokens"
};

// Reads every token id of the corpus (multi-dimensional arrays flattened in row-major order).
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
