// `dume verify OUT_DIR`: checks an MoE directory and its statistics end to end; prints one line
// per problem (exit 1) or an OK summary. Under mpirun the ranks share the layers (--stages as
// in merge), so an MoE larger than a node is checked where it was made.
#include <algorithm>
#include <cstdio>
#include <memory>

#include "comm.hpp"
#include "commands.hpp"
#include "verify.hpp"

namespace dume::cli {

namespace {

void verify(const std::string& dir, int stages) {
  const VerifyReport report = verify_moe(dir, stages);
  if (mpi_rank() != 0) return;  // rank 0 holds the whole report
  for (const auto& w : report.warnings) std::fprintf(stderr, "dume verify: warning: %s\n", w.c_str());
  for (const auto& p : report.problems) std::fprintf(stderr, "dume verify: %s\n", p.c_str());
  if (!report.ok()) {
    std::fprintf(stderr, "dume verify: %zu problem%s in %s\n", report.problems.size(),
                 report.problems.size() == 1 ? "" : "s", dir.c_str());
    throw ExitStatus{1};
  }
  std::printf("OK %s\n", report.summary.c_str());
}

}  // namespace

void add_verify(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "verify", "Check an MoE directory end to end: files, links, checksums, shapes, dtypes, NaN/Inf, routers, "
                "statistics and the shared-weights hash");
  auto dir = std::make_shared<std::string>();
  cmd->add_option("dir", *dir, "the MoE directory (holding moe.h5)")->required();
  const auto stages = add_stages_option(cmd);
  cmd->callback([dir, stages] { run_job([&] { verify(*dir, std::max(1, *stages)); }); });
}

}  // namespace dume::cli
