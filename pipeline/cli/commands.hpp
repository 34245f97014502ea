// The `dume` subcommands: each file registers one on the app, with its options and callback.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <memory>
#include <string>

#include "corpus.hpp"
#include "merge_config.hpp"

namespace dume::cli {

void add_inspect(CLI::App& app);
void add_ppl(CLI::App& app);
void add_bench(CLI::App& app);
void add_merge(CLI::App& app);
void add_plan(CLI::App& app);
void add_eval(CLI::App& app);
void add_dynamic(CLI::App& app);  // fold-in, remove, resolve
void add_verify(CLI::App& app);
void add_export(CLI::App& app);
void add_tokenize(CLI::App& app);

// Thrown to end the command with this exit status after its message was printed.
struct ExitStatus {
  int code;
};

// Runs `body` as an MPI job. An error all ranks share (a bad config) is printed once by rank 0
// and every rank exits 1; an error on some ranks aborts the job naming the rank.
void run_job(const std::function<void()>& body);

// --memory SIZE: the memory budget per rank (compute.memory), given as a size ("20GB"). The
// option's text; apply it to a config with apply_memory_option, where an error names it.
std::shared_ptr<std::string> add_memory_option(CLI::App* cmd);
void apply_memory_option(const std::string& memory, MergeConfig& config);
// --stages P: the grid's stages (parallel.stages), overriding the config's; 0 when not given.
std::shared_ptr<int> add_stages_option(CLI::App* cmd);

// --field, --documents and --on-bad: how text and JSONL files become `spec`'s documents.
void add_document_options(CLI::App* cmd, CorpusSpec& spec);

// Formats 1234567 as "1,234,567".
std::string thousands(long long n);

}  // namespace dume::cli
