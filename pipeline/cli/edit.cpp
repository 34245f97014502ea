// `dume fold-in`, `dume remove`, `dume resolve`: change an existing MoE's set of domains or its
// routers from its stored statistics, writing a new MoE directory.
#include <cmath>

#include "comm.hpp"
#include "commands.hpp"
#include "moe_edit.hpp"

namespace dume::cli {

namespace {

// A finite number >= 0, or > 0 when `positive` (CLI11's Range lets inf and nan through).
CLI::Validator finite_number(bool positive) {
  return CLI::Validator(
      [positive](std::string& text) -> std::string {
        double value = 0;
        if (!CLI::detail::lexical_cast(text, value) || !std::isfinite(value) || value < 0 || (positive && value == 0))
          return std::string("must be a finite number ") + (positive ? "> 0" : ">= 0") + ", got " + text;
        return {};
      },
      positive ? "FINITE > 0" : "FINITE >= 0");
}

}  // namespace

namespace {

void add_fold_in(CLI::App& app) {
  auto* cmd = app.add_subcommand("fold-in", "Add experts of new domains to an existing MoE (MPI job)");
  auto config = std::make_shared<std::string>();
  auto force = std::make_shared<bool>(false);
  auto reaverage = std::make_shared<bool>(false);
  auto resume = std::make_shared<bool>(false);
  cmd->add_option("config", *config, "YAML: moe (the MoE to extend), experts (the new ones), output")->required();
  cmd->add_flag("--force", *force, "Replace the output directory if it exists (and discard a checkpoint)");
  cmd->add_flag("--resume", *resume, "Continue from the checkpoint an interrupted fold-in of this config left");
  cmd->add_flag("--reaverage", *reaverage,
                "Re-average the shared weights over all experts and recompute everything (a full merge)");
  const auto memory = add_memory_option(cmd);
  const auto stages = add_stages_option(cmd);
  cmd->callback([=] {
    run_job([&] {
      MergeConfig c;
      collective_phase([&] {
        c = merge_config_read(*config);
        apply_memory_option(*memory, c);
        if (*stages > 0) c.stages = *stages;
      });
      run_fold_in(c, *force, *reaverage, *resume);
    });
  });
}

void add_remove(CLI::App& app) {
  auto* cmd = app.add_subcommand("remove", "Drop one domain's expert and statistics from an MoE and re-solve");
  auto moe = std::make_shared<std::string>();
  auto domain = std::make_shared<std::string>();
  auto output = std::make_shared<std::string>();
  auto force = std::make_shared<bool>(false);
  cmd->add_option("moe", *moe, "The MoE directory")->required();
  cmd->add_option("--domain", *domain, "The domain (expert name) to drop")->required();
  cmd->add_option("--output", *output, "The new MoE directory")->required();
  cmd->add_flag("--force", *force, "Replace the output directory if it exists");
  const auto stages = add_stages_option(cmd);
  cmd->callback([=] { run_job([&] { run_remove(*moe, *domain, *output, *force, std::max(1, *stages)); }); });
}

void add_resolve(CLI::App& app) {
  auto* cmd = app.add_subcommand("resolve", "New routers from an MoE's stored statistics (no forward pass)");
  auto moe = std::make_shared<std::string>();
  auto output = std::make_shared<std::string>();
  auto force = std::make_shared<bool>(false);
  auto o = std::make_shared<ResolveOverrides>();
  auto lambda = std::make_shared<double>(), temperature = std::make_shared<double>();
  auto top_k = std::make_shared<int>();
  auto method = std::make_shared<std::string>();
  auto balance = std::make_shared<bool>(false);
  auto bias = std::make_shared<bool>(true);
  cmd->add_option("moe", *moe, "The MoE directory")->required();
  cmd->add_option("--output", *output, "The new MoE directory")->required();
  // As the YAML has them: a lambda of inf or a temperature of 0 would write a degenerate MoE.
  auto* l = cmd->add_option("--lambda", *lambda, "Ridge strength (gaussian: covariance shrinkage)")
                ->check(finite_number(/*positive=*/false));
  auto* t = cmd->add_option("--temperature", *temperature, "Router temperature")->check(finite_number(/*positive=*/true));
  auto* k = cmd->add_option("--top-k", *top_k, "Experts per token");
  auto* m = cmd->add_option("--method", *method, "Router: dume | gaussian | hidden | random")
                ->check(CLI::IsMember(kRouterMethods));
  cmd->add_flag("--balance", *balance, "Weight every domain equally (statistics divided by token counts)");
  cmd->add_flag("--auto-lambda", o->auto_lambda, "Choose lambda per layer by routing accuracy on the stored held-out split")
      ->excludes(l);
  cmd->add_flag("--auto-temperature", o->auto_temperature,
                "Choose the temperature by cross-entropy on the stored held-out split")
      ->excludes(t);
  auto* b = cmd->add_option("--bias", *bias, "Routers with a bias: true | false (false for a Mixtral export)");
  auto routing = std::make_shared<std::string>();
  auto* r = cmd->add_option("--routing", *routing, "token | mean | ema:RATE, optionally +layer:L (see README)");
  auto expert_attention = std::make_shared<bool>();
  auto* a = cmd->add_option("--expert-attention", *expert_attention,
                            "false: keep only the shared attention (the experts' own attention is dropped)");
  cmd->add_flag("--force", *force, "Replace the output directory if it exists");
  const auto stages = add_stages_option(cmd);
  cmd->callback([=] {
    if (*l) o->lambda = *lambda;
    if (*t) o->temperature = *temperature;
    if (*k) o->top_k = *top_k;
    if (*m) o->method = router_method_from_string(*method);
    if (*balance) o->balance = true;
    if (*b) o->bias = *bias;
    if (*r) o->routing = Routing::parse(*routing);
    if (*a) o->expert_attention = *expert_attention;
    run_job([&] { run_resolve(*moe, *o, *output, *force, std::max(1, *stages)); });
  });
}

}  // namespace

void add_dynamic(CLI::App& app) {
  add_fold_in(app);
  add_remove(app);
  add_resolve(app);
}

}  // namespace dume::cli
