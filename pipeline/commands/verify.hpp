// `dume verify`: an MoE directory and its statistics checked end to end (files present, links
// resolve, every dataset's checksum, shapes and dtypes against the config, finite values, router
// rows, the shared-weights hash of moe.h5 and of stats.h5), reporting every problem found.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace dume {

struct VerifyReport {
  std::vector<std::string> problems;  // one line each, naming the file and dataset
  std::vector<std::string> warnings;  // not wrong, but worth knowing (datasets without a checksum)
  std::size_t datasets = 0;           // datasets read and checked
  std::uint64_t bytes = 0;            // their stored bytes
  std::string summary;                // what was checked, for the OK line

  bool ok() const { return problems.empty(); }
};

// Never throws for a problem of the MoE itself: every problem becomes a line of the report.
// Collective: the ranks form a grid of `stages` (Grid; it throws CollectiveError for a grid that
// cannot be built), each rank checks what it would write, and the report is whole on rank 0.
VerifyReport verify_moe(const std::filesystem::path& dir, int stages = 1);

}  // namespace dume
