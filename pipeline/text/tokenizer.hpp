// A model's own tokenizer, read from its Hugging Face `tokenizer.json`: byte-level BPE (GPT-2,
// Llama 3, Qwen2, SmolLM, DeepSeek; pre-tokenizer regexes through PCRE2 with Unicode properties)
// and SentencePiece-style BPE with byte fallback (Llama 2, Mistral, Gemma), the normalizers and
// pre-tokenizers those files use, added and special tokens, and the BOS/EOS the post-processor
// adds. Token ids equal those of the `tokenizers` library. It does not decode ids back to text.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dume {

class Tokenizer {
 public:
  // Throws Error naming the file and the part (e.g. "model.type 'Unigram' is not supported",
  // "normalizer 'BertNormalizer' is not supported") for anything it cannot reproduce exactly.
  static Tokenizer from_file(const std::filesystem::path& tokenizer_json);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // The ids of `text` (valid UTF-8; an Error otherwise), added tokens matched first as the
  // library does, without the post-processor's special tokens: `tokenizer.encode(text,
  // add_special_tokens=False)`.
  std::vector<std::uint32_t> encode(std::string_view text) const;
  // encode() with the post-processor's tokens around it (e.g. Llama 3's <|begin_of_text|>):
  // `tokenizer.encode(text)`.
  std::vector<std::uint32_t> encode_document(std::string_view text) const;
  // What the post-processor puts before and after one sequence (empty when there is none).
  std::span<const std::uint32_t> prefix() const;
  std::span<const std::uint32_t> suffix() const;
  // One more than the largest id of the vocabulary and the added tokens.
  std::size_t vocab_size() const;
  // "byte-level BPE" or "SentencePiece BPE", for messages and summaries.
  const std::string& kind() const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace dume
