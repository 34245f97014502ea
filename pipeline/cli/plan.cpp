// `dume plan CONFIG`: a merge's memory, reads, writes, FLOPs and expected time, before it runs.
#include <cstdio>

#include "commands.hpp"
#include "error.hpp"
#include "merge_plan.hpp"

namespace dume::cli {

void add_plan(CLI::App& app) {
  auto* cmd = app.add_subcommand("plan", "What a merge will need per rank (memory, reads, FLOPs, time); exits 1 when "
                                         "it does not fit the memory budget");
  auto config = std::make_shared<std::string>();
  auto ranks = std::make_shared<int>(1);
  auto per_node = std::make_shared<int>(0);
  auto rates = std::make_shared<std::string>();
  cmd->add_option("config", *config, "Merge configuration (YAML)")->required();
  cmd->add_option("--ranks", *ranks, "MPI ranks the merge will run on")->check(CLI::PositiveNumber);
  cmd->add_option("--ranks-per-node", *per_node, "Of them on each node (default: all on this one)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--rates", *rates, "A `dume bench --json` file measured on the nodes, for the expected time");
  const auto memory = add_memory_option(cmd);
  const auto stages = add_stages_option(cmd);
  cmd->callback([=] {
    run_job([&] {
      MergeConfig c = merge_config_read(*config);
      apply_memory_option(*memory, c);
      if (*stages > 0) c.stages = *stages;
      const int node = *per_node > 0 ? std::min(*per_node, *ranks) : *ranks;
      const MergeInputs in = merge_prepare(c);  // every check a merge makes before any work
      // The fewest stages of these ranks that fit the budget: with --memory, or when the plan does not fit.
      const auto propose = [&] {
        const std::optional<int> P = smallest_grid(c, in, *ranks, node);
        if (P)
          std::printf("# grid: the fewest stages of these %d ranks that fit the budget: %d x %d (--stages %d)\n", *ranks,
                      *P, *ranks / *P, *P);
        else
          std::printf("# grid: no grid of these %d ranks fits the budget\n", *ranks);
        std::fflush(stdout);
      };
      try {
        print_merge_plan(c, in, *ranks, node, rates->empty() ? std::nullopt : std::optional<std::filesystem::path>(*rates));
      } catch (const Error&) {
        propose();
        throw;
      }
      if (!memory->empty()) propose();
    });
  });
}

}  // namespace dume::cli
