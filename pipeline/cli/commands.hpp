// The `dume` subcommands: each file registers one on the app, with its options and callback.
#pragma once

#include <CLI/CLI.hpp>

namespace dume::cli {

void add_inspect(CLI::App& app);
void add_ppl(CLI::App& app);
void add_bench(CLI::App& app);

// Formats 1234567 as "1,234,567".
std::string thousands(long long n);

}  // namespace dume::cli
