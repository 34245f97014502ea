// Entry point of the `dume` command: parses the subcommand and turns any error into one line
// on stderr and a non-zero exit.
#include <cstdio>
#include <exception>

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

}  // namespace dume::cli

int main(int argc, char** argv) {
  CLI::App app{"dume: merge dense expert language models into a Mixture-of-Experts without training (DUME)"};
  app.require_subcommand(1);
  dume::cli::add_inspect(app);
  dume::cli::add_ppl(app);
  dume::cli::add_bench(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dume: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
