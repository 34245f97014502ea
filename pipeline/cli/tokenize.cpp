// `dume tokenize`: text or JSONL documents through a model's tokenizer into a Megatron indexed
// dataset (PREFIX.bin + PREFIX.idx), for reuse as `format: megatron` or by Megatron-LM itself.
// Under mpirun each rank tokenizes its share of the documents; rank 0 writes.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>

#include "comm.hpp"
#include "commands.hpp"
#include "documents.hpp"
#include "megatron.hpp"
#include "outputs.hpp"
#include "corpus_loader.hpp"

namespace dume::cli {

namespace {

namespace fs = std::filesystem;

struct TokenizeOptions {
  std::string input, format = "jsonl", tokenizer, output;
  CorpusSpec source;  // --field, --documents, --on-bad (path and format are set when it runs)
  bool force = false;
};

void run_tokenize(const TokenizeOptions& o) {
  const bool root = mpi_rank() == 0;
  const fs::path prefix = output_path(o.output);
  Tokenizer tokenizer = [&] {
    std::optional<Tokenizer> t;
    collective_phase([&] {
      std::vector<InputPath> inputs{{"the tokenizer", o.tokenizer}};
      for (const auto& file : expand_glob(o.input)) inputs.push_back({"the input", file});
      for (const char* suffix : {".bin", ".idx"})
        check_output(prefix.string() + suffix, inputs, o.force, {.directory = false, .marker = {}});
      t = load_tokenizer(o.tokenizer);
    });
    return std::move(*t);
  }();
  CorpusSpec spec = o.source;
  spec.path = o.input;
  spec.format = corpus_format_from_string(o.format);
  Documents documents;
  collective_phase([&] { documents = read_documents(document_source(spec)); });
  std::size_t bytes = 0;
  for (const auto& text : documents.texts) bytes += text.size();

  const auto start = std::chrono::steady_clock::now();
  const TokenizedDocuments tokens = tokenize_documents(documents, tokenizer, /*progress=*/true);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  collective_phase([&] {
    if (!root) return;
    std::vector<std::span<const std::uint32_t>> per_document;
    for (std::size_t d = 0; d < tokens.documents(); ++d) per_document.push_back(tokens.document(d));
    write_megatron(prefix, per_document, tokenizer.vocab_size());
  });
  if (!root) return;
  const double mb = static_cast<double>(bytes) / 1e6;
  std::printf("# tokenizer: %s, %zu ids\n", tokenizer.kind().c_str(), tokenizer.vocab_size());
  std::printf("tokenized %zu documents from %zu file%s: %s tokens from %.2f MB in %.2f s (%.2f MB/s, %.2f MB/s per rank, "
              "%d rank%s)\n",
              tokens.documents(), documents.files.size(), documents.files.size() == 1 ? "" : "s",
              thousands(static_cast<long long>(tokens.tokens.size())).c_str(), mb, seconds, mb / seconds,
              mb / seconds / mpi_size(), mpi_size(), mpi_size() == 1 ? "" : "s");
  if (documents.skipped)
    std::printf("skipped %zu bad document%s (first: %s)\n", documents.skipped, documents.skipped == 1 ? "" : "s",
                documents.first_skip.c_str());
  std::printf("wrote %s.bin and %s.idx\n", prefix.c_str(), prefix.c_str());
}

}  // namespace

void add_tokenize(CLI::App& app) {
  auto* cmd = app.add_subcommand("tokenize",
                                 "Tokenize text or JSONL documents with a model's tokenizer.json into a Megatron "
                                 "indexed dataset (PREFIX.bin + PREFIX.idx)");
  auto o = std::make_shared<TokenizeOptions>();
  cmd->add_option("input", o->input, "a text or JSONL file, or a glob of them (quoted)")->required();
  cmd->add_option("--format", o->format, "text | jsonl")->capture_default_str()->check(CLI::IsMember({"text", "jsonl"}));
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer.json, or a checkpoint directory holding one")->required();
  cmd->add_option("--output", o->output, "output prefix: writes PREFIX.bin and PREFIX.idx")->required();
  add_document_options(cmd, o->source);
  cmd->add_flag("--force", o->force, "replace an existing PREFIX.bin / PREFIX.idx");
  cmd->callback([o] { run_job([&] { run_tokenize(*o); }); });
}

}  // namespace dume::cli
