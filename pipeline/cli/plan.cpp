// `dume plan CONFIG`: a merge's memory, reads, writes, FLOPs and expected time, before it runs.
#include "commands.hpp"
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
  cmd->callback([=] {
    run_job([&] {
      MergeConfig c = merge_config_read(*config);
      apply_memory_option(*memory, c);
      print_merge_plan(c, *ranks, *per_node > 0 ? std::min(*per_node, *ranks) : *ranks,
                       rates->empty() ? std::nullopt : std::optional<std::filesystem::path>(*rates));
    });
  });
}

}  // namespace dume::cli
