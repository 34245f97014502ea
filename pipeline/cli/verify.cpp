// `dume verify OUT_DIR`: checks an MoE directory and its statistics end to end; prints one line
// per problem (exit 1) or an OK summary.
#include <cstdio>
#include <memory>

#include "commands.hpp"
#include "verify.hpp"

namespace dume::cli {

void add_verify(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "verify", "Check an MoE directory end to end: files, links, checksums, shapes, dtypes, NaN/Inf, routers, "
                "statistics and the shared-weights hash");
  auto dir = std::make_shared<std::string>();
  cmd->add_option("dir", *dir, "the MoE directory (holding moe.h5)")->required();
  cmd->callback([dir] {
    const VerifyReport report = verify_moe(*dir);
    for (const auto& w : report.warnings) std::fprintf(stderr, "dume verify: warning: %s\n", w.c_str());
    for (const auto& p : report.problems) std::fprintf(stderr, "dume verify: %s\n", p.c_str());
    if (!report.ok()) {
      std::fprintf(stderr, "dume verify: %zu problem%s in %s\n", report.problems.size(),
                   report.problems.size() == 1 ? "" : "s", dir->c_str());
      throw ExitStatus{1};
    }
    std::printf("OK %s\n", report.summary.c_str());
  });
}

}  // namespace dume::cli
