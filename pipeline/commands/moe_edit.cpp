#include "moe_edit.hpp"

#include <chrono>
#include <cstdio>

#include "comm.hpp"
#include "hdf5_util.hpp"
#include "merge.hpp"
#include "router_tuning.hpp"

namespace dume {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

// Expert e's MLP tensors copied from an existing MoE's file.
ExpertSource expert_from_moe(std::shared_ptr<H5Id> file, std::int64_t e) {
  return [file, e](std::int64_t layer, const std::string&, const std::string& moe_name,
                   const std::vector<std::int64_t>& shape) {
    const std::string path = moe_path::expert(layer, e, moe_name);
    if (h5::dataset_info(file->get(), path).shape != shape) throw Error("dataset '" + path + "' has the wrong shape");
    return h5::read_raw(file->get(), path);
  };
}

// The existing MoE's merge.yaml (its experts' checkpoints and corpora), when it has one.
std::optional<MergeConfig> original_config(const fs::path& moe) {
  const fs::path path = moe / "merge.yaml";
  if (!fs::exists(path)) return std::nullopt;
  return merge_config_read(path);
}

// A plan that starts from an existing MoE: its shared weights (checked against its hash), its
// statistics and its experts.
MergePlan plan_from_moe(const fs::path& moe, std::shared_ptr<H5Id>& file) {
  MergePlan plan;
  plan.info = read_moe_info(moe);
  check_moe_datasets(moe, plan.info);
  plan.stats = open_statistics(moe / "stats.h5");
  if (plan.stats.shared_hash != plan.info.shared_hash)
    throw Error((moe / "stats.h5").string() + " was made with other shared weights (hash " + plan.stats.shared_hash +
                ", the MoE's is " + plan.info.shared_hash + ")");
  std::vector<std::string> names;
  for (const auto& d : plan.stats.domains) names.push_back(d.name);
  if (names != plan.info.experts) throw Error((moe / "stats.h5").string() + ": its domains differ from the MoE's experts");
  plan.model.config = plan.info.config;
  file = std::make_shared<H5Id>(h5::open_file(moe / "moe.h5"));
  for (std::size_t e = 0; e < plan.info.experts.size(); ++e)
    plan.sources.push_back(expert_from_moe(file, static_cast<std::int64_t>(e)));
  return plan;
}

// The MoE's shared weights into the plan's store beside `output`, checked against the MoE's
// shared_hash. Collective.
void store_moe_shared(MergePlan& plan, const fs::path& moe, const fs::path& output, const H5Id& file) {
  plan.shared = std::make_unique<SharedStore>(
      output, plan.info.config, plan.info.dtype,
      [&](const std::string&, const std::string& path, const std::vector<std::int64_t>& shape) {
        return h5::read_f32(file.get(), path, shape);
      });
  const std::string hash = plan.shared->hash();
  collective_phase([&] {
    if (hash != plan.info.shared_hash)
      throw Error((moe / "moe.h5").string() + ": the stored shared weights do not match its shared_hash (modified?)");
  });
}

// By stages (stages > 1): the grid of a job writing an MoE of `experts` experts like `plan`'s,
// made before any work (collective, refused in one line like a merge's); a job by stages keeps
// no checkpoint, so there is nothing to resume.
void set_grid(MergePlan& plan, std::size_t experts, int stages, bool resume) {
  if (stages <= 1) return;
  collective_phase([&] {
    if (resume) throw Error("--resume: a job by stages keeps no checkpoint to resume from");
  });
  plan.grid = std::make_unique<Grid>(plan.info.config, static_cast<std::int64_t>(experts), stages);
}

}  // namespace

void run_fold_in(const MergeConfig& config, bool force, bool reaverage, bool resume) {
  if (!config.fold_into) throw CollectiveError("a fold-in config names the MoE to extend: moe: path/to/moe");
  const fs::path moe = *config.fold_into;
  if (reaverage) {
    MergeConfig all;
    collective_phase([&] {
      const auto original = original_config(moe);
      if (!original) throw Error(moe.string() + " has no merge.yaml naming its original experts; --reaverage needs it");
      all = *original;
      all.experts.insert(all.experts.end(), config.experts.begin(), config.experts.end());
      all.output = config.output;
      all.stages = config.stages;
      all.fold_into.reset();
    });
    return run_merge(all, force, resume, input_paths(config));
  }

  const auto lock = claim_moe_output(config.output.path, input_paths(config), force, resume);
  PhaseTimes phases;
  auto t = Clock::now();
  MergePlan plan;
  std::shared_ptr<H5Id> file;
  std::vector<HfCheckpoint> checkpoints;
  std::vector<CorpusWindows> windows;
  MergeConfig resolved = config;  // what the new MoE's merge.yaml records
  collective_phase([&] {
    for (const char* key : {"router", "shared", "recipe"})
      if (std::count(config.keys.begin(), config.keys.end(), key))
        throw Error(config.source.string() + ": fold-in keeps the MoE's shared weights and router settings; remove the "
                    "router/shared/recipe sections (dume resolve changes router settings)");
    plan = plan_from_moe(moe, file);
    const std::int64_t C = plan.stats.context_tokens;
    if (config.calibration.sequence_length < C)
      throw Error("calibration.sequence_length " + std::to_string(config.calibration.sequence_length) +
                  " is shorter than the MoE's context_tokens " + std::to_string(C));
    for (const auto& e : config.experts) {
      if (std::count(plan.info.experts.begin(), plan.info.experts.end(), e.name))
        throw Error("domain '" + e.name + "' is already in " + moe.string());
      checkpoints.emplace_back(e.checkpoint);
      std::string difference;
      if (!same_architecture(plan.info.config, checkpoints.back().config(), &difference))
        throw Error("expert '" + e.name + "' (" + e.checkpoint.string() + ") does not match the MoE: " + difference);
    }
    windows.reserve(config.experts.size());
    for (const auto& e : config.experts) {
      auto corpus = load_calibration(config, e.calibration, static_cast<std::size_t>(plan.info.config.vocab_size));
      if (const auto line = describe(corpus.report); !line.empty() && mpi_rank() == 0)
        std::printf("# calibration '%s': %s\n", e.name.c_str(), line.c_str());
      windows.push_back(std::move(corpus.windows));
    }
    if (const auto original = original_config(moe)) {
      resolved = *original;
      resolved.experts.insert(resolved.experts.end(), config.experts.begin(), config.experts.end());
      resolved.output = config.output;
    }
    // This job's own checkpoint settings (the MoE's merge.yaml records the merge's).
    resolved.calibration.checkpoint_every = config.calibration.checkpoint_every;
    resolved.calibration.checkpoint_minutes = config.calibration.checkpoint_minutes;
    resolved.stages = config.stages;
    resolved.router = plan.info.router;
    if (plan.info.router.auto_lambda || plan.info.router.auto_temperature) require_heldout(plan.stats);
  });
  set_grid(plan, plan.info.experts.size() + config.experts.size(), config.stages, resume);
  store_moe_shared(plan, moe, config.output.path, *file);
  for (std::size_t e = 0; e < config.experts.size(); ++e) {
    plan.info.experts.push_back(config.experts[e].name);
    plan.sources.push_back(expert_from_checkpoint(checkpoints[e], plan.info.dtype));
    plan.calibrate.push_back({config.experts[e].name, &checkpoints[e], &windows[e]});
  }
  if (mpi_rank() == 0) {
    std::printf("# dume fold-in: %zu new domain%s into %s (%zu domains kept from stats.h5, not recomputed)\n",
                config.experts.size(), config.experts.size() == 1 ? "" : "s", moe.c_str(), plan.stats.domains.size());
    std::fflush(stdout);
  }
  phases.emplace_back("load + checks", std::chrono::duration<double>(Clock::now() - t).count());
  plan.command = "dume fold-in";
  const auto store = plan.grid ? nullptr : open_resume_store(resolved, plan, resume);
  run_plan(plan, resolved, force, phases, store.get());
}

namespace {

// Re-solves and writes an MoE from a plan with no domain to calibrate (remove, resolve).
void rewrite(MergePlan& plan, const fs::path& moe, const fs::path& output, bool force) {
  MergeConfig config = original_config(moe).value_or(MergeConfig{});
  std::erase_if(config.experts, [&](const ExpertSpec& e) {
    return std::find(plan.info.experts.begin(), plan.info.experts.end(), e.name) == plan.info.experts.end();
  });
  config.output.path = output;
  config.router = plan.info.router;
  PhaseTimes phases;
  run_plan(plan, config, force, phases);
}

// remove and resolve: the MoE's plan, changed by `edit` (collective: an error on any rank stops
// all), written to `given` with no calibration.
void edit_moe(const fs::path& moe, const fs::path& given, bool force, int stages,
              const std::function<void(MergePlan&)>& edit) {
  const fs::path output = output_path(given);
  const auto lock = claim_moe_output(output, {{"the MoE", moe}}, force, /*resume=*/false);
  MergePlan plan;
  std::shared_ptr<H5Id> file;
  collective_phase([&] {
    plan = plan_from_moe(moe, file);
    edit(plan);
  });
  set_grid(plan, plan.info.experts.size(), stages, /*resume=*/false);
  store_moe_shared(plan, moe, output, *file);
  rewrite(plan, moe, output, force);
}

}  // namespace

void run_remove(const fs::path& moe, const std::string& name, const fs::path& given, bool force, int stages) {
  edit_moe(moe, given, force, stages, [&](MergePlan& plan) {
    const auto it = std::find(plan.info.experts.begin(), plan.info.experts.end(), name);
    if (it == plan.info.experts.end()) throw Error("no domain '" + name + "' in " + moe.string());
    if (plan.info.experts.size() == 1) throw Error("cannot remove the only domain of " + moe.string());
    const auto e = it - plan.info.experts.begin();
    plan.info.experts.erase(it);
    plan.stats.domains.erase(plan.stats.domains.begin() + e);
    plan.sources.erase(plan.sources.begin() + e);
    plan.info.router.top_k = std::min<int>(plan.info.router.top_k, static_cast<int>(plan.info.experts.size()));
  });
}

void run_resolve(const fs::path& moe, const ResolveOverrides& o, const fs::path& given, bool force, int stages) {
  edit_moe(moe, given, force, stages, [&](MergePlan& plan) {
    RouterSettings& r = plan.info.router;
    r.lambda = o.lambda.value_or(r.lambda);
    r.temperature = o.temperature.value_or(r.temperature);
    // An explicit value replaces auto; --auto-* asks for it.
    r.auto_lambda = o.auto_lambda || (r.auto_lambda && !o.lambda);
    r.auto_temperature = o.auto_temperature || (r.auto_temperature && !o.temperature);
    if (r.auto_lambda || r.auto_temperature) require_heldout(plan.stats);
    r.top_k = o.top_k.value_or(r.top_k);
    r.method = o.method.value_or(r.method);
    r.balance = o.balance.value_or(r.balance);
    r.bias = o.bias.value_or(r.bias);
    r.routing = o.routing.value_or(r.routing);
    if (o.expert_attention && *o.expert_attention && !r.expert_attention)
      throw Error("--expert-attention true: this MoE stores no per-expert attention (merge with router.expert_attention)");
    r.expert_attention = o.expert_attention.value_or(r.expert_attention);
    if (r.expert_attention && r.routing.from_layer != 0)
      throw Error("routing '" + r.routing.to_string() + "': this MoE's experts keep their own attention, which needs one "
                  "routing decision taken at layer 0 (e.g. mean+layer:0); --expert-attention false drops it");
    if (!(r.lambda >= 0)) throw Error("--lambda must be >= 0");
    if (!(r.temperature > 0)) throw Error("--temperature must be > 0");
    if (r.top_k < 1 || static_cast<std::size_t>(r.top_k) > plan.info.experts.size())
      throw Error("--top-k must be between 1 and the number of experts (" + std::to_string(plan.info.experts.size()) + ")");
  });
}

}  // namespace dume
