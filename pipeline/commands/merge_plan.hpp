// `dume plan CONFIG`: what a merge will need before it is submitted: per rank, the memory by
// phase (memory_plan.hpp), the bytes it reads and writes, its FLOPs, and its expected time from
// rates `dume bench --json` measured on this kind of machine.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "memory_plan.hpp"
#include "merge.hpp"
#include "merge_config.hpp"

namespace dume {

// Prints the plan of `config`, whose inputs `in` are (merge_prepare: every check a merge makes
// before any work), run on `ranks` ranks, `ranks_per_node` of them on each node;
// throws Error (naming the smallest budget that works) when it does not fit the budget.
// `rates`: a `dume bench --json` file whose forward+statistics rate gives the expected time.
// By stages (config.stages > 1), per stage: its layers, parameters, reads and memory; the bytes
// sent between stages and the pipeline's expected utilization; the largest stage's memory plan.
MemoryPlan print_merge_plan(const MergeConfig& config, const MergeInputs& in, int ranks, int ranks_per_node,
                            const std::optional<std::filesystem::path>& rates);
// The fewest stages (dividing `ranks`) whose every rank fits the budget (config.memory, or the
// default for `ranks_per_node`), or none.
std::optional<int> smallest_grid(const MergeConfig& config, const MergeInputs& in, int ranks, int ranks_per_node);

}  // namespace dume
