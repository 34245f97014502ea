// `dume merge CONFIG.yaml`: the DUME merge as an MPI job (mpirun -np N, srun, or alone).
#include "comm.hpp"
#include "commands.hpp"
#include "merge.hpp"

namespace dume::cli {

void add_merge(CLI::App& app) {
  auto* cmd = app.add_subcommand("merge", "Merge dense experts into a DUME MoE (run under mpirun/srun for several ranks)");
  auto config = std::make_shared<std::string>();
  auto force = std::make_shared<bool>(false);
  auto resume = std::make_shared<bool>(false);
  cmd->add_option("config", *config, "Merge configuration (YAML)")->required();
  cmd->add_flag("--force", *force, "Replace the output directory if it exists (and discard a checkpoint)");
  cmd->add_flag("--resume", *resume,
                "Continue an interrupted merge from its checkpoint (<output>.checkpoint), on any number of ranks");
  const auto memory = add_memory_option(cmd);
  const auto stages = add_stages_option(cmd);
  cmd->callback([config, force, resume, memory, stages] {
    run_job([&] {
      MergeConfig c;
      collective_phase([&] {
        c = merge_config_read(*config);
        apply_memory_option(*memory, c);
        if (*stages > 0) c.stages = *stages;
      });
      run_merge(c, *force, *resume);
    });
  });
}

}  // namespace dume::cli
