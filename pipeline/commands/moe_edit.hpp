// The "dynamic" part of DUME: fold new domains into an existing MoE, remove one, or re-solve the
// routers, all from the per-domain statistics in stats.h5 and without recomputing old domains.
// The input MoE is never modified: each writes a new MoE directory.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "merge_config.hpp"

namespace dume {

// Adds config.experts (new domains) to the MoE at config.fold_into: statistics only for the new
// domains, with the MoE's stored shared weights and router settings, then every layer re-solved.
// With reaverage, merges everything again from the original experts (the MoE's merge.yaml) plus
// the new ones instead. `resume`: continue from the checkpoint an interrupted fold-in of this
// config left (as `dume merge --resume`). By stages (config.stages), each stage calibrates, solves
// and writes only its own layers. Call on every rank.
void run_fold_in(const MergeConfig& config, bool force, bool reaverage, bool resume = false);

// Drops domain `name` (its expert and statistics) from the MoE at `moe` and re-solves. `stages`:
// the grid's stages (grid.hpp), each solving and writing its own layers, as for a merge.
void run_remove(const std::filesystem::path& moe, const std::string& name, const std::filesystem::path& output,
                bool force, int stages = 1);

// New routers from the stored statistics with changed settings; no forward pass at all.
struct ResolveOverrides {
  std::optional<double> lambda, temperature;
  std::optional<int> top_k;
  std::optional<RouterMethod> method;
  std::optional<bool> balance, bias, expert_attention;
  std::optional<Routing> routing;
  bool auto_lambda = false, auto_temperature = false;  // chosen on the stored held-out split
};
void run_resolve(const std::filesystem::path& moe, const ResolveOverrides& overrides,
                 const std::filesystem::path& output, bool force, int stages = 1);

}  // namespace dume
