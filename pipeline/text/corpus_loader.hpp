// Every corpus format as windows of token ids, in one call: token files as they are, text and
// JSONL documents through the model's own tokenizer (each rank tokenizes its share; every rank
// ends with all tokens, in document order, whatever the rank count), Megatron datasets as stored.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "corpus.hpp"
#include "documents.hpp"
#include "tokenizer.hpp"

namespace dume {

// What reading a corpus found, for summaries.
struct CorpusReport {
  std::size_t documents = 0;  // 0 for token formats
  std::size_t skipped = 0;    // bad documents skipped (skip_bad_documents)
  std::string first_skip;     // why the first was skipped
  std::size_t too_short = 0;  // packing: truncate: documents shorter than one window, not used
  std::size_t text_bytes = 0; // text and jsonl: UTF-8 bytes tokenized
  double tokenize_seconds = 0;  // wall time of the tokenization, all ranks together
};

struct LoadedCorpus {
  CorpusWindows windows;
  CorpusReport report;
};

// Documents as token ids: `offsets` has one more entry than there are documents, and document i
// is tokens[offsets[i], offsets[i + 1]).
struct TokenizedDocuments {
  std::vector<std::uint32_t> tokens;
  std::vector<std::size_t> offsets{0};
  std::size_t documents() const { return offsets.size() - 1; }
  std::span<const std::uint32_t> document(std::size_t i) const {
    return std::span(tokens).subspan(offsets[i], offsets[i + 1] - offsets[i]);
  }
};

// The tokenizer a text corpus names: a tokenizer.json, or a directory holding one.
Tokenizer load_tokenizer(const std::filesystem::path& file_or_directory);

// The document source a text or jsonl spec describes.
DocumentSource document_source(const CorpusSpec& spec);

// encode_document() of every document, collectively: rank r tokenizes documents r, r + R, ...;
// the result is the same on every rank and for every rank count. `progress` shows documents
// tokenized on rank 0.
TokenizedDocuments tokenize_documents(const Documents& documents, const Tokenizer& tokenizer, bool progress);

// Reads `spec` (collective for text and jsonl), checks every id against `vocab` and cuts windows of
// `length` tokens (at most max_windows; 0 = all).
LoadedCorpus load_corpus(const CorpusSpec& spec, std::size_t vocab, std::size_t length, std::size_t max_windows);

// One summary line for a corpus of documents ("" for token formats): documents, skips, too-short
// documents, and the tokenization rate.
std::string describe(const CorpusReport& report);

}  // namespace dume
