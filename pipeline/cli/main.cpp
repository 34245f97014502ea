// Entry point of the `dume` command: parses the subcommand and turns any error into one line
// on stderr and a non-zero exit.
#include <cstdio>
#include <exception>

#include "comm.hpp"
#include "commands.hpp"
#include "error.hpp"

namespace dume::cli {

std::string thousands(long long n) {
  std::string digits = std::to_string(n < 0 ? -n : n), out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return (n < 0 ? "-" : "") + out;
}

void add_document_options(CLI::App* cmd, CorpusSpec& spec) {
  cmd->add_option("--field", spec.field, "jsonl: the field holding each document")->capture_default_str();
  cmd->add_option_function<std::string>(
         "--documents", [&spec](const std::string& v) { spec.blank_line_documents = v == "blank-line"; },
         "text: one document per file or per blank-line-separated block (default: file)")
      ->check(CLI::IsMember({"file", "blank-line"}));
  cmd->add_option_function<std::string>(
         "--on-bad", [&spec](const std::string& v) { spec.skip_bad_documents = v == "skip"; },
         "a bad document (invalid UTF-8, empty, missing field) fails the job or is counted and skipped (default: "
         "error)")
      ->check(CLI::IsMember({"error", "skip"}));
}

std::shared_ptr<std::string> add_memory_option(CLI::App* cmd) {
  auto memory = std::make_shared<std::string>();
  cmd->add_option("--memory", *memory,
                  "Memory budget per rank, e.g. 20GB (compute.memory; default: the node's memory / its ranks, "
                  "less 1/8); refused with the smallest that works when too small");
  return memory;
}

std::shared_ptr<int> add_stages_option(CLI::App* cmd) {
  auto stages = std::make_shared<int>(0);
  cmd->add_option("--stages", *stages,
                  "Stages of the grid of ranks (parallel.stages; default 1): each stage holds a contiguous range of "
                  "layers, and the ranks must be a multiple of it")
      ->check(CLI::PositiveNumber);
  return stages;
}

void apply_memory_option(const std::string& memory, MergeConfig& config) {
  if (memory.empty()) return;
  try {
    config.memory = static_cast<std::int64_t>(parse_size(memory));
  } catch (const Error& e) {
    throw Error(std::string("--memory: ") + e.what());
  }
}

void run_job(const std::function<void()>& body) {
  MpiSession mpi(nullptr, nullptr);
  try {
    body();
  } catch (const JobStopped& e) {
    if (mpi_rank() == 0) std::fprintf(stderr, "dume: %s\n", e.what());
    throw ExitStatus{kStoppedExitCode};
  } catch (const CollectiveError& e) {
    if (mpi_rank() == 0) std::fprintf(stderr, "dume: error: %s\n", e.what());
    throw ExitStatus{1};
  } catch (const std::exception& e) {
    abort_job(e.what());
  }
}

}  // namespace dume::cli

int main(int argc, char** argv) {
  CLI::App app{"dume: merge dense expert language models into a Mixture-of-Experts without training (DUME)"};
  app.require_subcommand(1);
  // One line, as every other error (CLI11's default adds a second, "Run with --help").
  app.failure_message([](const CLI::App*, const CLI::Error& e) {
    return "dume: error: " + std::string(e.what()) + " (dume --help lists the commands, dume COMMAND --help their options)\n";
  });
  dume::cli::add_inspect(app);
  dume::cli::add_ppl(app);
  dume::cli::add_bench(app);
  dume::cli::add_merge(app);
  dume::cli::add_plan(app);
  dume::cli::add_eval(app);
  dume::cli::add_dynamic(app);
  dume::cli::add_verify(app);
  dume::cli::add_export(app);
  dume::cli::add_tokenize(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const dume::cli::ExitStatus& e) {
    return e.code;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dume: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
