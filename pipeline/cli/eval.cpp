// `dume eval CONFIG.yaml`: the merge's YAML with test corpora and an `eval` section; evaluates
// the MoE at `output` against the baselines, as an MPI job.
#include <cstdio>

#include "comm.hpp"
#include "commands.hpp"
#include "evaluate.hpp"

namespace dume::cli {

void add_eval(CLI::App& app) {
  auto* cmd = app.add_subcommand("eval", "Evaluate a merged MoE and the baselines on each domain's test corpus");
  auto config = std::make_shared<std::string>();
  cmd->add_option("config", *config, "The merge configuration, with experts[].test and an eval section")->required();
  const auto memory = add_memory_option(cmd);
  const auto stages = add_stages_option(cmd);
  cmd->callback([config, memory, stages] {
    run_job([&] {
      MergeConfig c;
      collective_phase([&] {
        c = merge_config_read(*config);
        apply_memory_option(*memory, c);
        if (*stages > 0) c.stages = *stages;
      });
      const EvalResult result = run_eval(c);
      if (mpi_rank() != 0) return;
      std::printf("%s", eval_table(result).c_str());
      write_eval_outputs(result, c);
      std::printf("# wrote %s/eval.json%s\n", c.eval.output.c_str(), result.routing.empty() ? "" : " and routing.png");
    });
  });
}

}  // namespace dume::cli
