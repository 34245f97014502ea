// load_corpus: one path from any corpus format to windows. Text is tokenized in parallel across
// ranks (documents dealt round-robin, so long and short documents spread evenly) and gathered
// back in document order, so every rank count sees the same token stream.
#include "corpus_loader.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <utility>

#include "comm.hpp"
#include "error.hpp"
#include "megatron.hpp"
#include "progress.hpp"

namespace dume {

namespace fs = std::filesystem;

Tokenizer load_tokenizer(const fs::path& file_or_directory) {
  const fs::path file = fs::is_directory(file_or_directory) ? file_or_directory / "tokenizer.json" : file_or_directory;
  if (!fs::exists(file))
    throw Error(file.string() + ": no such file (text and jsonl corpora are tokenized with the model's own "
                                "tokenizer.json; name one with `tokenizer:` or pre-tokenize with `dume tokenize`)");
  return Tokenizer::from_file(file);
}

DocumentSource document_source(const CorpusSpec& spec) {
  DocumentSource source;
  source.path = spec.path.string();
  source.format = spec.format == CorpusFormat::jsonl ? DocumentFormat::jsonl : DocumentFormat::text;
  source.split = spec.blank_line_documents ? DocumentSplit::blank_line : DocumentSplit::file;
  source.field = spec.field;
  source.on_bad = spec.skip_bad_documents ? OnBadDocument::skip : OnBadDocument::error;
  return source;
}

TokenizedDocuments tokenize_documents(const Documents& documents, const Tokenizer& tokenizer, bool progress) {
  const auto ranks = static_cast<std::size_t>(mpi_size()), rank = static_cast<std::size_t>(mpi_rank());
  const std::size_t n = documents.texts.size();
  Progress bar("tokenizing", static_cast<std::int64_t>(n), "documents", progress && rank == 0);

  // This rank's documents, concatenated, and their lengths. A tokenizer error (invalid UTF-8 is
  // caught when reading, so this is rare) is raised on every rank after the gather.
  std::vector<std::uint32_t> mine;
  std::vector<std::int64_t> lengths;
  std::string error;
  for (std::size_t d = rank; d < n && error.empty(); d += ranks) {
    try {
      const auto ids = tokenizer.encode_document(documents.texts[d]);
      mine.insert(mine.end(), ids.begin(), ids.end());
      lengths.push_back(static_cast<std::int64_t>(ids.size()));
    } catch (const std::exception& e) {
      error = "document " + std::to_string(d + 1) + ": " + e.what();
    }
    bar.advance(static_cast<std::int64_t>(std::min(ranks, n - d)));  // this round's documents on all ranks
  }
  if (max_over_ranks(error.empty() ? 0 : 1)) {  // the first rank's error, on every rank
    for (std::size_t r = 0; r < ranks; ++r) {
      std::string message = error;
      broadcast(message, static_cast<int>(r));
      if (!message.empty()) throw CollectiveError(message);
    }
  }

  // Every rank's share on every rank, then reassembled: document d is the (d / R)-th of rank d % R.
  std::vector<std::vector<std::uint32_t>> shares(ranks);
  std::vector<std::vector<std::int64_t>> share_lengths(ranks);
  for (std::size_t r = 0; r < ranks; ++r) {
    if (r == rank) {
      shares[r] = std::move(mine);
      share_lengths[r] = std::move(lengths);
    }
    if (ranks > 1) {
      broadcast(shares[r], static_cast<int>(r));
      broadcast(share_lengths[r], static_cast<int>(r));
    }
  }
  TokenizedDocuments out;
  out.offsets.reserve(n + 1);
  std::vector<std::size_t> cursor(ranks, 0);
  for (std::size_t d = 0; d < n; ++d) {
    const std::size_t r = d % ranks, k = d / ranks;
    const auto length = static_cast<std::size_t>(share_lengths[r].at(k));
    const auto begin = shares[r].begin() + static_cast<std::ptrdiff_t>(cursor[r]);
    out.tokens.insert(out.tokens.end(), begin, begin + static_cast<std::ptrdiff_t>(length));
    cursor[r] += length;
    out.offsets.push_back(out.tokens.size());
  }
  bar.finish();
  return out;
}

namespace {

TokenizedDocuments megatron_documents(const fs::path& prefix) {
  MegatronDataset dataset = read_megatron(prefix);
  TokenizedDocuments out;
  out.tokens = std::move(dataset.tokens);
  // Sequences between consecutive document-index entries form one document.
  for (std::size_t i = 1; i < dataset.document_index.size(); ++i)
    if (dataset.document_index[i] > dataset.document_index[i - 1])
      out.offsets.push_back(static_cast<std::size_t>(dataset.sequence_offsets[dataset.document_index[i]]));
  return out;
}

}  // namespace

LoadedCorpus load_corpus(const CorpusSpec& spec, std::size_t vocab, std::size_t length, std::size_t max_windows) {
  CorpusReport report;
  if (spec.format != CorpusFormat::text && spec.format != CorpusFormat::jsonl &&
      spec.format != CorpusFormat::megatron) {
    if (spec.packing == Packing::truncate)
      throw Error(spec.path.string() + ": packing 'truncate' needs documents (text, jsonl or megatron), and " +
                  std::string(to_string(spec.format)) + " is one token stream");
    auto tokens = corpus_read(spec);
    corpus_check_vocab(tokens, vocab, spec.path);
    return {CorpusWindows(std::move(tokens), length, max_windows, spec.path), report};
  }

  TokenizedDocuments documents;
  if (spec.format == CorpusFormat::megatron) {
    documents = megatron_documents(spec.path);
  } else {
    const Documents texts = read_documents(document_source(spec));
    const Tokenizer tokenizer = load_tokenizer(spec.tokenizer);
    if (tokenizer.vocab_size() > vocab)
      throw Error(spec.tokenizer.string() + ": the tokenizer has " + std::to_string(tokenizer.vocab_size()) +
                  " ids, more than the model's vocab of " + std::to_string(vocab));
    report.skipped = texts.skipped;
    report.first_skip = texts.first_skip;
    for (const auto& text : texts.texts) report.text_bytes += text.size();
    const auto start = std::chrono::steady_clock::now();
    documents = tokenize_documents(texts, tokenizer, /*progress=*/true);
    report.tokenize_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  report.documents = documents.documents();
  corpus_check_vocab(documents.tokens, vocab, spec.path);

  if (spec.packing == Packing::pack) return {CorpusWindows(std::move(documents.tokens), length, max_windows, spec.path), report};
  // truncate: each document long enough gives one window of its first `length` tokens.
  std::vector<std::uint32_t> windows;
  for (std::size_t d = 0; d < documents.documents(); ++d) {
    const auto doc = documents.document(d);
    if (doc.size() < length) {
      ++report.too_short;
      continue;
    }
    windows.insert(windows.end(), doc.begin(), doc.begin() + static_cast<std::ptrdiff_t>(length));
  }
  if (windows.empty())
    throw Error(spec.path.string() + ": packing 'truncate' keeps documents of at least " + std::to_string(length) +
                " tokens, and none of the " + std::to_string(report.documents) + " is that long");
  return {CorpusWindows(std::move(windows), length, max_windows, spec.path), report};
}

std::string describe(const CorpusReport& r) {
  if (r.documents == 0) return "";
  char line[512];
  std::snprintf(line, sizeof line, "%zu documents", r.documents);
  std::string text = line;
  if (r.text_bytes > 0) {
    const double mb = static_cast<double>(r.text_bytes) / 1e6;
    std::snprintf(line, sizeof line, ", %.2f MB tokenized in %.2f s (%.1f MB/s on %d rank%s)", mb, r.tokenize_seconds,
                  r.tokenize_seconds > 0 ? mb / r.tokenize_seconds : 0.0, mpi_size(), mpi_size() == 1 ? "" : "s");
    text += line;
  }
  if (r.skipped) text += ", " + std::to_string(r.skipped) + " bad skipped (first: " + r.first_skip + ")";
  if (r.too_short) text += ", " + std::to_string(r.too_short) + " shorter than a window left out";
  return text;
}

}  // namespace dume
