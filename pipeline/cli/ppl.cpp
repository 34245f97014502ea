// `dume ppl`: perplexity of a checkpoint (dense, or a Mixtral MoE) on a token corpus.
#include <algorithm>
#include <cstdio>

#include "hf_checkpoint.hpp"
#include "comm.hpp"
#include "commands.hpp"
#include "corpus.hpp"
#include "grid.hpp"
#include "memory_plan.hpp"
#include "mixtral.hpp"
#include "perplexity.hpp"
#include "corpus_loader.hpp"

namespace dume::cli {

namespace {

struct PplOptions {
  std::string checkpoint, corpus, format = "uint16", dataset, tokenizer, packing = "pack";
  CorpusSpec source;  // --field, --documents, --on-bad (path and format are set when it runs)
  std::int64_t sequence_length = 256, max_sequences = 0, batch = 0;
  std::string memory;
  int threads = 0;
  int stages = 1;
  std::string backend = "cpu";
};

void run_ppl(const PplOptions& o) {
  const HfCheckpoint checkpoint(o.checkpoint);
  const ModelConfig& c = checkpoint.config();
  CorpusSpec spec = o.source;
  spec.path = o.corpus;
  spec.format = corpus_format_from_string(o.format);
  spec.dataset = o.dataset;
  spec.tokenizer = o.tokenizer.empty() ? std::filesystem::path(o.checkpoint) : std::filesystem::path(o.tokenizer);
  spec.packing = o.packing == "truncate" ? Packing::truncate : Packing::pack;
  const LoadedCorpus corpus = load_corpus(spec, static_cast<std::size_t>(c.vocab_size),
                                          static_cast<std::size_t>(o.sequence_length),
                                          static_cast<std::size_t>(o.max_sequences));
  if (const auto line = describe(corpus.report); !line.empty()) std::printf("# corpus: %s\n", line.c_str());
  const CorpusWindows& windows = corpus.windows;
  // Default batch: about 2048 tokens per forward pass, enough rows for GEMMs to run at full rate.
  const std::int64_t batch = o.batch > 0 ? o.batch : std::max<std::int64_t>(1, 2048 / o.sequence_length);
  const auto batches = (static_cast<std::int64_t>(windows.count()) + batch - 1) / batch;
  std::int64_t budget = 0;
  try {
    if (!o.memory.empty()) budget = static_cast<std::int64_t>(parse_size(o.memory));
  } catch (const Error& e) {
    throw Error(std::string("--memory: ") + e.what());
  }
  // The model is read one layer at a time, over chunks of as many batches as the budget holds.
  const MemoryPlan plan = plan_eval_memory(c, std::max<std::int64_t>(1, c.num_experts), false, false, batch,
                                           o.sequence_length, batches, budget);
  std::printf("%s", plan.describe().c_str());
  // By stages the ranks run the model's layers in a pipeline and the replicas share the windows;
  // otherwise every rank runs them all.
  const std::int64_t experts = std::max<std::int64_t>(1, c.num_experts);
  const std::unique_ptr<Grid> grid = o.stages > 1 ? std::make_unique<Grid>(c, experts, o.stages) : nullptr;
  if (grid && mpi_rank() == 0) std::printf("# grid: %s\n", grid->describe(c, experts).c_str());
  Model model = c.num_experts ? empty_mixtral_model(checkpoint) : empty_model(c, 1);
  auto backend = make_backend(parse_backend(o.backend), o.threads, mpi_local_rank());
  Forward forward(model, *backend);
  const LayerSource source =
      stream_layers(model, forward, c.num_experts ? mixtral_layers(checkpoint) : checkpoint_layers(checkpoint));
  PerplexityRun run;
  run.batch = batch;
  run.chunk_batches = plan.chunk_rounds;
  run.show_progress = !grid || mpi_rank() == 0;
  if (grid) {
    run.grid = grid.get();
    run.rank = grid->replica();
    run.ranks = grid->replicas();
  }
  Perplexity p = perplexity(forward, c, windows, run, source);
  if (grid) {  // the last stage's replicas hold the sums
    double sums[] = {p.nll, static_cast<double>(p.tokens)};
    reduce_sum(std::span<double>(sums));
    p = {sums[0], static_cast<std::int64_t>(sums[1])};
    if (mpi_rank() != 0) return;
  }
  std::printf("perplexity %.6f over %lld predicted tokens (%zu windows of %lld tokens from %s)\n", p.value(),
              static_cast<long long>(p.tokens), windows.count(), static_cast<long long>(o.sequence_length),
              o.corpus.c_str());
}

}  // namespace

void add_ppl(CLI::App& app) {
  auto* cmd = app.add_subcommand("ppl", "Perplexity of a checkpoint (dense or Mixtral MoE) on a corpus");
  auto o = std::make_shared<PplOptions>();
  cmd->add_option("--checkpoint", o->checkpoint, "Hugging Face checkpoint directory")->required();
  cmd->add_option("--corpus", o->corpus, "Corpus file (text, jsonl: a glob too; megatron: the prefix)")->required();
  cmd->add_option("--format", o->format, "uint16 | uint32 | npy | hdf5 | text-bytes | text | jsonl | megatron")
      ->capture_default_str();
  cmd->add_option("--dataset", o->dataset, "Dataset path inside an hdf5 corpus, e.g. /tokens");
  cmd->add_option("--tokenizer", o->tokenizer, "text, jsonl: tokenizer.json or its directory (default: the checkpoint's)");
  add_document_options(cmd, o->source);
  cmd->add_option("--packing", o->packing, "Documents packed into windows, or one per window, truncated")
      ->capture_default_str()
      ->check(CLI::IsMember({"pack", "truncate"}));
  cmd->add_option("--sequence-length", o->sequence_length, "Window length N: the corpus is cut into windows of N")
      ->capture_default_str()
      ->check(CLI::Range(2, 1 << 20));
  cmd->add_option("--max-sequences", o->max_sequences, "Use at most this many windows (0: all)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--batch", o->batch, "Windows per forward pass (default: about 2048 tokens)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--memory", o->memory,
                  "Memory budget, e.g. 8GB (default: the node's memory / its ranks, less 1/8); the model is read one "
                  "layer at a time, over as many windows at once as it holds");
  cmd->add_option("--threads", o->threads, "Compute threads (0: all cores)")->check(CLI::NonNegativeNumber);
  const auto stages = add_stages_option(cmd);
  cmd->add_option("--backend", o->backend, "cpu | cuda | auto (cuda where a GPU is visible)")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}))
      ->capture_default_str();
  // A job (text corpora are tokenized collectively); every error is every rank's, reported once.
  cmd->callback([o, stages] {
    o->stages = std::max(1, *stages);
    run_job([&] { collective_phase([&] { run_ppl(*o); }); });
  });
}

}  // namespace dume::cli
