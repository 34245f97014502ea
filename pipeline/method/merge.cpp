#include "merge.hpp"

#include <chrono>
#include <cstdio>
#include <numeric>
#include <optional>
#include <thread>

#include "comm.hpp"
#include "hdf5_util.hpp"
#include "layer_stream.hpp"
#include "memory_plan.hpp"
#include "regmean.hpp"
#include "resources.hpp"
#include "router_tuning.hpp"
#include "statistics.hpp"

namespace dume {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

std::size_t numel(const std::vector<std::int64_t>& shape) {
  std::size_t n = 1;
  for (auto d : shape) n *= static_cast<std::size_t>(d);
  return n;
}

}  // namespace

LoadedCorpus load_calibration(const MergeConfig& config, const CorpusSpec& spec, std::size_t vocab) {
  // One document per window needs windows no longer than the positions DUME reads.
  const std::int64_t length = spec.packing == Packing::truncate
                                  ? std::min(config.calibration.sequence_length, config.router.context_tokens)
                                  : config.calibration.sequence_length;
  return load_corpus(spec, vocab, static_cast<std::size_t>(length),
                     static_cast<std::size_t>(config.calibration.max_sequences));
}

MergeInputs merge_prepare(const MergeConfig& config) {
  MergeInputs in;
  for (const auto& e : config.experts) in.experts.emplace_back(e.checkpoint);
  const ModelConfig& first = in.experts[0].config();
  if (first.num_experts)
    throw Error("expert '" + config.experts[0].name + "' (" + config.experts[0].checkpoint.string() + ") is a " +
                first.architecture_name + " mixture of experts; dume merges dense experts");
  for (std::size_t e = 1; e < in.experts.size(); ++e) {
    std::string difference;
    if (!same_architecture(first, in.experts[e].config(), &difference))
      throw Error("expert '" + config.experts[e].name + "' (" + config.experts[e].checkpoint.string() +
                  ") does not match expert '" + config.experts[0].name + "': " + difference);
  }
  // What the experts' config bounds, before any work.
  if (config.router.routing.from_layer >= first.num_layers)
    throw Error("router.routing '" + config.router.routing.to_string() + "' takes its decision at layer " +
                std::to_string(config.router.routing.from_layer) + ", but the experts have " +
                std::to_string(first.num_layers) + " layers (0 to " + std::to_string(first.num_layers - 1) + ")");
  if (config.calibration.sequence_length > first.max_position_embeddings)
    throw Error("calibration.sequence_length " + std::to_string(config.calibration.sequence_length) +
                " is longer than the experts' max_position_embeddings " +
                std::to_string(first.max_position_embeddings) + " (" + config.experts[0].checkpoint.string() +
                "/config.json): they were not trained on such positions");
  in.dtype = config.output.dtype.value_or(in.experts[0].dtype());
  if (!config.output.dtype)
    for (std::size_t e = 1; e < in.experts.size(); ++e)
      if (in.experts[e].dtype() != in.dtype)
        throw Error("experts are stored in different dtypes (" + std::string(to_string(in.dtype)) + ", " +
                    std::string(to_string(in.experts[e].dtype())) + "): set output.dtype");
  for (const auto& e : config.experts) {
    auto corpus = load_calibration(config, e.calibration, static_cast<std::size_t>(first.vocab_size));
    in.calibration.push_back(std::move(corpus.windows));
    in.reports.push_back(std::move(corpus.report));
  }
  return in;
}

MlpWeights calibration_mlp(const HfCheckpoint& expert, std::int64_t layer, DType dtype) {
  MlpWeights w = load_mlp(expert, layer);
  for (Matrix* m : {&w.gate, &w.up, &w.down}) round_through(dtype, {m->data(), static_cast<std::size_t>(m->size())});
  return w;
}

ExpertSource expert_from_checkpoint(const HfCheckpoint& checkpoint, DType dtype) {
  return [&checkpoint, dtype](std::int64_t layer, const std::string& hf_suffix, const std::string&,
                              const std::vector<std::int64_t>& shape) {
    const std::string name = hf::layer(layer, hf_suffix);
    std::vector<float> values(numel(shape));
    checkpoint.read(name, shape, values);  // checks shape and finiteness
    const SafetensorsFile* file = nullptr;
    const TensorInfo& info = checkpoint.info(name, &file);
    const auto bytes = file->data(info);
    std::vector<std::byte> stored = info.dtype == dtype ? std::vector<std::byte>(bytes.begin(), bytes.end())  // exact copy
                                                        : encode(dtype, values);
    file->release(info);  // written: its pages would otherwise add up to the whole expert
    return stored;
  };
}

std::vector<MoeTensor> moe_tensors(const ModelConfig& config, const SharedStore& shared, DType dtype,
                                   const std::vector<ExpertSource>& experts, const RouterSource& router,
                                   bool gaussian, bool expert_attention) {
  DUME_ASSERT(shared.dtype() == dtype);
  std::vector<MoeTensor> tensors;
  const SharedWeights names;  // a const walk visits names and shapes only
  for_each_shared_tensor(config, names, [&](const std::string& hf_name, const std::string& path,
                                            const std::vector<std::int64_t>& shape, const auto&) {
    tensors.push_back({path, dtype, shape, [&shared, hf_name] { return shared.bytes(hf_name); }});
  });
  const auto E = static_cast<std::int64_t>(experts.size()), D = config.hidden_size;
  // Each layer's router is solved once, when its first tensor is written (the writer goes in
  // this order), and let go at the next layer's.
  struct Solved {
    std::int64_t layer = -1;
    RouterSolution router;
  };
  const auto solved = std::make_shared<Solved>();
  const auto router_of = [solved, router](std::int64_t l) -> const RouterSolution& {
    if (solved->layer != l) {
      solved->router = router(l);
      solved->layer = l;
    }
    return solved->router;
  };
  const auto f32_tensor = [](const Eigen::MatrixXd& m) {  // row-major f32 bytes
    const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> f = m.cast<float>();
    return encode(DType::F32, {f.data(), static_cast<std::size_t>(f.size())});
  };
  const MlpWeights mlp_layout;  // only names and shapes are visited
  const AttentionWeights attention_layout;
  for (std::int64_t l = 0; l < config.num_layers; ++l) {
    for (std::int64_t e = 0; e < E; ++e) {
      const ExpertSource& source = experts[static_cast<std::size_t>(e)];
      const auto add = [&, l, e](const std::string& suffix, const std::string& moe_name,
                                 const std::vector<std::int64_t>& shape, const auto&) {
        tensors.push_back({moe_path::expert(l, e, moe_name), dtype, shape,
                           [=, &source] { return source(l, suffix, moe_name, shape); }});
      };
      for_each_mlp_tensor(config, mlp_layout, add);
      if (expert_attention) for_each_attention_tensor(config, attention_layout, add);
    }
    tensors.push_back({moe_path::layer(l, "router/weight"), DType::F32, {E, D},
                       [=] { return f32_tensor(router_of(l).weight); }});
    tensors.push_back({moe_path::layer(l, "router/bias"), DType::F32, {E},
                       [=] { return f32_tensor(router_of(l).bias); }});
    if (gaussian)
      tensors.push_back({moe_path::layer(l, "router/quadratic"), DType::F32, {E, D, D}, [=] {
                           const RouterSolution& r = router_of(l);
                           DUME_ASSERT(r.quadratic.rows() == E * D && r.quadratic.cols() == D);
                           return f32_tensor(r.quadratic);
                         }});
  }
  return tensors;
}

std::unique_ptr<OutputLock> claim_moe_output(const fs::path& output, const std::vector<InputPath>& inputs, bool force,
                                             bool resume) {
  std::unique_ptr<OutputLock> lock;
  collective_phase([&] {
    check_output(output, inputs, force, {.directory = true, .marker = "moe.h5"});
    if (mpi_rank() == 0) lock = std::make_unique<OutputLock>(output);
  });
  const fs::path checkpoint = checkpoint_dir(output);
  collective_phase([&] {
    if (!resume && fs::exists(checkpoint)) {
      if (!force)
        throw Error(checkpoint.string() + " holds the checkpoint of an interrupted job: pass --resume to continue "
                    "it, or --force to discard it");
      if (mpi_rank() == 0) fs::remove_all(checkpoint);
    }
  });
  return lock;
}

std::unique_ptr<ResumeStore> open_resume_store(const MergeConfig& config, const MergePlan& plan, bool resume) {
  std::vector<const CorpusWindows*> windows;
  std::vector<std::int64_t> batches;
  std::vector<std::string> names;
  for (const NewDomain& d : plan.calibrate) {
    windows.push_back(d.windows);
    batches.push_back(batch_count(*d.windows, config.calibration.batch_sequences));
    names.push_back(d.name);
  }
  const fs::path checkpoint = checkpoint_dir(config.output.path);
  auto store = std::make_unique<ResumeStore>(
      checkpoint,
      resume_identity(config, plan.info.shared_hash, plan.model.config.hidden_size, plan.model.config.num_layers, windows),
      names, batches);
  if (resume && mpi_rank() == 0) {
    std::printf(fs::exists(checkpoint) ? "# dume: resuming from %s\n" : "# dume: no checkpoint at %s: starting from the beginning\n",
                checkpoint.c_str());
    std::fflush(stdout);
  }
  return store;
}

void print_phase_table(const std::vector<std::pair<std::string, double>>& phases) {
  std::printf("#\n# %-24s %10s\n", "phase", "seconds");
  double total = 0;
  for (const auto& [phase, seconds] : phases) {
    std::printf("  %-24s %10.3f\n", phase.c_str(), seconds);
    total += seconds;
  }
  std::printf("  %-24s %10.3f\n", "total", total);
}

namespace {

// Domain k of plan.calibrate: what a checkpoint holds of it (rank 0 reads, every rank learns
// which batches remain).
SavedDomain load_saved(const ResumeStore* store, std::size_t k) {
  SavedDomain saved;
  if (!store) return saved;
  collective_phase([&] {
    if (mpi_rank() == 0) saved = store->load(k);
  });
  broadcast(saved.batches);
  return saved;
}

// Ends a calibration stopped by `signal` in domain k of plan.calibrate, on every rank: each rank
// has saved its part of domain k (nothing when it ran in one pass: its layers are all or none);
// rank 0 saves the domains completed before it.
[[noreturn]] void stop_calibration(const MergePlan& plan, const ResumeStore* store, std::size_t k,
                                   const std::vector<bool>& saved_whole, int signal) {
  const std::size_t carried = plan.stats.domains.size() - k;
  if (store && mpi_rank() == 0)
    for (std::size_t j = 0; j < k; ++j)
      if (!saved_whole[j]) store->save_complete(j, plan.stats.domains[carried + j]);
  barrier();
  throw JobStopped("stopped by " + signal_name(signal) + " while calibrating domain '" + plan.calibrate[k].name + "'" +
                   (store ? "; checkpoint saved in " + store->dir().string() + ": run the same `" + plan.command +
                                "` with --resume to continue (on any number of ranks)"
                          : "; nothing saved (this command cannot resume)"));
}

// The weights that calibration of an expert's domain runs, one layer at a time in `forward`
// (built on plan.model with every layer empty): the shared weights' and the expert's (its MLPs
// are 22 GB in f32 at 8B); the last layer's MLP never (the statistics stop at its input).
LayerSource domain_layers(MergePlan& plan, const HfCheckpoint& expert, Forward& forward) {
  LayerFill fill;
  fill.layer = [&plan, &expert](std::int64_t l, Model& model) {
    model.shared.layers[static_cast<std::size_t>(l)] = plan.shared->layer(l);
    if (l + 1 < model.config.num_layers)
      model.experts[static_cast<std::size_t>(l)] = {calibration_mlp(expert, l, plan.info.dtype)};
  };
  fill.embedding = [&plan](std::span<const std::uint32_t> ids) { return plan.shared->embedding_rows(ids); };
  return stream_layers(plan.model, forward, std::move(fill));
}

// The batches of domain d that calibration.heldout_fraction keeps out (required by auto router
// settings).
std::vector<std::int64_t> heldout_batches_of(const MergePlan& plan, const NewDomain& d, std::int64_t batches,
                                             const CalibrationSettings& cs) {
  std::vector<std::int64_t> heldout = heldout_batches(batches, cs.heldout_fraction);
  if ((plan.info.router.auto_lambda || plan.info.router.auto_temperature) && heldout.empty())
    throw CollectiveError("domain '" + d.name + "': router settings 'auto' need held-out tokens, but " +
                          std::to_string(batches) + " batches at calibration.heldout_fraction " +
                          std::to_string(cs.heldout_fraction) + " hold none out; raise it");
  return heldout;
}

// calibrate_plan on plan.grid: each domain runs through the stages (calibrate_staged) in chunks
// of at most `chunk_batches` per replica, and each rank that solves layers writes their
// statistics and held-out inputs into its own statistics file. A stop signal is acted on between
// domains, with nothing saved (a merge by stages keeps no checkpoint).
void calibrate_plan_staged(MergePlan& plan, const MergeConfig& config, std::int64_t chunk_batches, Backend& backend,
                           CalibrationTiming& timing) {
  const Grid& grid = *plan.grid;
  const ModelConfig& mc = plan.model.config;
  const CalibrationSettings& cs = config.calibration;
  const auto L = static_cast<std::size_t>(mc.num_layers);
  if (grid.solves_any()) plan.statistics = std::make_unique<StatisticsFile>(config.output.path, mc.num_layers, mc.hidden_size);
  const auto chunk = [&](std::size_t batches) {
    return pipeline_chunk((static_cast<std::int64_t>(batches) + grid.replicas() - 1) / grid.replicas(), grid.stages(),
                          chunk_batches);
  };
  for (const NewDomain& d : plan.calibrate) {
    const std::int64_t batches = batch_count(*d.windows, cs.batch_sequences);
    const std::vector<std::int64_t> heldout = heldout_batches_of(plan, d, batches, cs);
    const std::vector<std::int64_t> todo = batches_to_run(batches, heldout);
    if (const int signal = stop_signal_anywhere())
      throw JobStopped("stopped by " + signal_name(signal) + " before calibrating domain '" + d.name +
                       "'; nothing saved (a merge by stages keeps no checkpoint)");
    plan.model.shared.layers.assign(L, LayerWeights());
    plan.model.experts.assign(L, std::vector<MlpWeights>(1));
    Forward forward(plan.model, backend);
    const LayerSource load = domain_layers(plan, *d.checkpoint, forward);
    DomainStatistics domain;
    domain.name = d.name;
    domain.tokens = calibrate_staged(forward, load, grid, *d.windows, plan.stats.context_tokens, cs.batch_sequences, todo,
                                     chunk(todo.size()), d.name, timing, mpi_rank() == 0,
                                     [&](std::int64_t l, MatrixXdRow& A) { plan.statistics->write_layer(d.name, l, A); });
    if (!heldout.empty())
      collect_heldout_staged(forward, load, grid, *d.windows, plan.stats.context_tokens, cs.batch_sequences, heldout,
                             cs.heldout_tokens, chunk(heldout.size()), [&](std::int64_t l, const MatrixXfRow& rows) {
                               plan.statistics->write_heldout(d.name, l, rows);
                             });
    if (grid.solves_any()) plan.statistics->add(domain);  // read back one layer at a time to solve
    plan.stats.domains.push_back(std::move(domain));
    release_free_memory();
  }
  plan.model.experts.clear();
  plan.model.shared.layers.clear();
}

// Calibrates plan.calibrate in order, appending each domain's reduced statistics to plan.stats;
// saves checkpoints into `store` (if any) and throws JobStopped on a stop signal.
void calibrate_plan(MergePlan& plan, const MergeConfig& config, std::int64_t chunk_batches, Backend& backend,
                    ResumeStore* store, CalibrationTiming& timing) {
  const int rank = mpi_rank(), ranks = mpi_size();
  const bool root = rank == 0;
  const ModelConfig& mc = plan.model.config;
  const CalibrationSettings& cs = config.calibration;
  std::vector<bool> saved_whole(plan.calibrate.size(), false);  // a complete-domain file exists
  if (root) plan.statistics = std::make_unique<StatisticsFile>(config.output.path, mc.num_layers, mc.hidden_size);
  std::int64_t batches_run = 0;
  auto last_kept = Clock::now();
  for (std::size_t k = 0; k < plan.calibrate.size(); ++k) {
    const NewDomain& d = plan.calibrate[k];
    const std::int64_t batches = batch_count(*d.windows, cs.batch_sequences);
    const SavedDomain saved = load_saved(store, k);
    saved_whole[k] = saved.complete;
    const std::vector<std::int64_t> heldout = heldout_batches_of(plan, d, batches, cs);
    const std::vector<std::int64_t> todo = batches_to_run(batches, heldout, saved.batches);
    if (root && !saved.batches.empty())
      std::printf("# dume: domain '%s': %zu of %lld batches from the checkpoint, %zu to run\n", d.name.c_str(),
                  saved.batches.size(), static_cast<long long>(batches), todo.size());
    CalibrationControl control;
    control.chunk_batches = chunk_batches;
    if (store) {
      control.checkpoint_every = cs.checkpoint_every;
      control.checkpoint_seconds = 60 * cs.checkpoint_minutes;
      control.save = [&, k](const std::vector<std::int64_t>& done, const PackedSums& partial) {
        store->save_partial(k, rank, done, partial);
      };
    }
    control.stop_requested = stop_signal_anywhere;
    control.after_batch = [rank, &batches_run] { test_fault_after_batch(rank, ++batches_run); };
    // A layer's sums, complete: reduced with the checkpoint's and written into the output's stats.h5.
    const auto layer_done = [&](std::int64_t l, MatrixXdRow& partial) {
      reduce_layer(partial, timing, root ? layer_slice(saved.packed, l, mc.hidden_size + 1) : std::span<const double>());
      if (root) plan.statistics->write_layer(d.name, l, partial);
    };
    if (cs.one_pass()) control.layer_done = layer_done;
    DomainStatistics domain;
    std::vector<MatrixXfRow> heldout_inputs;
    if (todo.empty() && heldout.empty()) {  // all saved: only the sums are needed, not the expert
      domain.name = d.name;
      for (std::int64_t l = 0; l < mc.num_layers; ++l) {
        MatrixXdRow none = MatrixXdRow::Zero(mc.hidden_size + 1, mc.hidden_size + 1);
        layer_done(l, none);
      }
    } else {
      plan.model.shared.layers.assign(static_cast<std::size_t>(mc.num_layers), LayerWeights());
      plan.model.experts.assign(static_cast<std::size_t>(mc.num_layers), std::vector<MlpWeights>(1));
      Forward forward(plan.model, backend);
      const LayerSource load = domain_layers(plan, *d.checkpoint, forward);
      domain = calibrate_domain(forward, load, backend, mc, *d.windows, plan.stats.context_tokens, cs.batch_sequences,
                                todo, rank, ranks, d.name, timing, root, control);
      if (control.stopped_by == 0 && !heldout.empty())
        heldout_inputs = collect_heldout(forward, load, mc, *d.windows, plan.stats.context_tokens, cs.batch_sequences,
                                         heldout, cs.heldout_tokens, control.chunk_batches, backend, rank, ranks,
                                         [&](std::int64_t l, const MatrixXfRow& rows) {
                                           if (root) plan.statistics->write_heldout(d.name, l, rows);
                                         });
    }
    if (control.stopped_by != 0) stop_calibration(plan, store, k, saved_whole, control.stopped_by);
    reduce_domain(domain, timing, root ? std::span<const double>(saved.packed) : std::span<const double>());
    // Only rank 0 solves: another rank's partial sums are spent once reduced (L (d+1)^2 doubles
    // per domain: 4.3 GB at 8B, 43 GB at 70B).
    if (!root) domain.A.clear();
    domain.heldout = std::move(heldout_inputs);
    if (root) plan.statistics->add(domain);  // read back one layer at a time to solve
    // A finished domain is kept when checkpoints are counted, or when the time since the last
    // kept domain (or the start) reaches checkpoint_minutes: a short merge leaves none behind.
    const bool due = cs.checkpoint_every > 0 ||
                     (cs.checkpoint_minutes > 0 &&
                      std::chrono::duration<double>(Clock::now() - last_kept).count() >= 60 * cs.checkpoint_minutes);
    if (store && root && due && !saved_whole[k]) {
      last_kept = Clock::now();
      store->save_complete(k, domain);
      saved_whole[k] = true;
    }
    plan.stats.domains.push_back(std::move(domain));
    release_free_memory();
  }
  plan.model.experts.clear();
  plan.model.shared.layers.clear();
}

// Rank 0 (by stages, every rank): solves every layer's router (auto settings are recorded in
// plan.info) and writes the MoE directory; a failure aborts the job.
void solve_and_write(MergePlan& plan, const MergeConfig& config, bool force, PhaseTimes& phases,
                     ResumeStore* store) {
  try {
    auto t = Clock::now();
    RouterSettings& settings = plan.info.router;
    if (plan.grid)
      tune_routers(settings, plan.stats, *plan.grid);
    else
      tune_routers(settings, plan.stats);
    if (mpi_rank() == 0) {
      for (std::size_t l = 0; l < settings.layer_lambda.size(); ++l)
        std::printf("# router: layer %zu: lambda %.3g (chosen on the held-out split)\n", l, settings.layer_lambda[l]);
      if (settings.auto_temperature)
        std::printf("# router: temperature %.4g (chosen on the held-out split)\n", settings.temperature);
    }
    phases.emplace_back("tune routers", std::chrono::duration<double>(Clock::now() - t).count());
    t = Clock::now();
    double solving = 0;
    const RouterSource router = [&](std::int64_t l) {
      const auto t0 = Clock::now();
      RouterSolution r = layer_router(settings, plan.stats, l);
      for (int e : r.zero_norm)
        std::fprintf(stderr, "dume: warning: layer %lld: router column of expert '%s' has zero norm (replaced by 1e-6)\n",
                     static_cast<long long>(l), plan.info.experts[static_cast<std::size_t>(e)].c_str());
      solving += std::chrono::duration<double>(Clock::now() - t0).count();
      return r;
    };
    write_moe_directory(config.output.path, force, plan, router, config.output.shard_bytes, config.resolved_yaml());
    if (store) store->remove();  // the output is complete: the checkpoint has served
    phases.emplace_back("solve (as written)", solving);
    phases.emplace_back("write", std::chrono::duration<double>(Clock::now() - t).count() - solving);
  } catch (const std::exception& e) {
    abort_job(e.what());
  }
}

// Rank 0: the phase table, what the calibration processed, each rank's memory and reads, and by
// stages each rank's wait for its neighbours (`waits`) in the calibration's `seconds`.
void report_plan(const MergePlan& plan, const MergeConfig& config, const PhaseTimes& phases,
                 const CalibrationTiming& timing, const RankUsage& usage, const MemoryPlan& memory,
                 const std::vector<double>& waits, double seconds) {
  print_phase_table(phases);
  std::int64_t tokens = 0;
  for (const NewDomain& d : plan.calibrate)
    for (const auto& domain : plan.stats.domains)
      if (domain.name == d.name) tokens += domain.tokens;
  const double rate = timing.accumulate > 0 ? timing.multiply_adds / timing.accumulate : 0.0;
  std::printf("# statistics: %lld calibration tokens processed (%zu of %zu domains); A update on rank 0 at %.2f G "
              "multiply-adds/s (f64)\n",
              static_cast<long long>(tokens), plan.calibrate.size(), plan.stats.domains.size(), rate / 1e9);
  std::printf("# %s (predicted peak %s)\n", usage.line().c_str(), format_bytes(static_cast<double>(memory.peak())).c_str());
  if (plan.grid) {
    std::string each;
    for (const double w : waits) {
      char part[64];
      std::snprintf(part, sizeof part, "%s%.1f s (%.0f %%)", each.empty() ? "" : ", ", w, 100 * w / std::max(seconds, 1e-9));
      each += part;
    }
    std::printf("# pipeline: each rank waited for the stage before or after %s of the calibration's %.1f s\n",
                each.c_str(), seconds);
  }
  std::printf("# wrote %s\n", config.output.path.c_str());
}

// The memory plan of a plan's ranks (collective), by stages of this rank's stage.
MemoryPlan plan_memory_of(const MergePlan& plan, const MergeConfig& config) {
  const int replicas = plan.grid ? plan.grid->replicas() : mpi_size();  // that share a domain's batches
  std::int64_t batches_per_rank = 0;
  for (const NewDomain& d : plan.calibrate)
    batches_per_rank =
        std::max(batches_per_rank, (batch_count(*d.windows, config.calibration.batch_sequences) + replicas - 1) / replicas);
  const StageShare stage = plan.grid ? StageShare{plan.grid->stages(), plan.grid->end_layer() - plan.grid->first_layer()}
                                     : StageShare{};
  MemoryPlan memory;
  collective_phase([&] {
    memory = plan_memory(plan.model.config, config, static_cast<std::int64_t>(plan.info.experts.size()),
                         plan.info.dtype, batches_per_rank, config.memory, stage);
  });
  return memory;
}

}  // namespace

void run_plan(MergePlan& plan, const MergeConfig& config, bool force, PhaseTimes& phases, ResumeStore* store) {
  const bool root = mpi_rank() == 0;
  const int threads = threads_per_rank(config.threads), ranks = mpi_size();
  auto backend = rank_backend(config.backend, config.threads);
  const StopSignals signals;
  const MemoryPlan memory = plan_memory_of(plan, config);
  if (root) {
    const auto E = static_cast<std::int64_t>(plan.info.experts.size());
    std::printf("# dume: %zu new domain%s to calibrate, %d rank%s x %d thread%s; %s\n%s%s", plan.calibrate.size(),
                plan.calibrate.size() == 1 ? "" : "s", ranks, ranks == 1 ? "" : "s", threads, threads == 1 ? "" : "s",
                backend->describe().c_str(),
                plan.grid ? ("# grid: " + plan.grid->describe(plan.model.config, E) + "\n").c_str() : "",
                memory.describe().c_str());
    std::fflush(stdout);
  }
  if (store) {
    std::vector<std::int64_t> generation{0};
    collective_phase([&] {
      if (root) generation[0] = store->next_generation();
    });
    broadcast(generation);
    store->set_generation(static_cast<int>(generation[0]));
  }

  CalibrationTiming timing;
  release_free_memory();  // what the shared weights left
  const auto t0 = Clock::now();
  if (plan.grid)
    calibrate_plan_staged(plan, config, memory.chunk_rounds, *backend, timing);
  else
    calibrate_plan(plan, config, memory.chunk_rounds, *backend, store, timing);
  const double calibration = std::chrono::duration<double>(Clock::now() - t0).count();
  phases.emplace_back("forward (calibration)", calibration - timing.accumulate - timing.reduce - timing.pipeline_wait);
  if (plan.grid) phases.emplace_back("pipeline wait", timing.pipeline_wait);
  phases.emplace_back("statistics (A update)", timing.accumulate);
  phases.emplace_back("reduce", timing.reduce);
  const std::vector<double> waits = plan.grid ? gather_to_root(timing.pipeline_wait) : std::vector<double>();
  release_free_memory();  // what calibration left

  if (root || plan.grid) solve_and_write(plan, config, force, phases, store);
  barrier();
  const RankUsage usage = gather_rank_usage();
  if (root) report_plan(plan, config, phases, timing, usage, memory, waits, calibration);
}

void write_moe_directory(const fs::path& output, bool force, const MergePlan& plan, const RouterSource& router,
                         std::uint64_t shard_bytes, const std::string& yaml) {
  const auto tensors = [&] {
    return moe_tensors(plan.model.config, *plan.shared, plan.info.dtype, plan.sources, router,
                       plan.info.router.method == RouterMethod::gaussian, plan.info.router.expert_attention);
  };
  if (plan.grid) {  // rank 0 makes the directory, every stage writes its part into it
    const auto fill = [&](const fs::path& dir) {
      write_moe(dir, tensors(), plan.info, shard_bytes, *plan.grid);
      StatisticsFile::finish(plan.statistics.get(), plan.stats, dir / "stats.h5", *plan.grid);
      if (mpi_rank() == 0) write_text_file(dir / "merge.yaml", yaml);
    };
    write_output_together(output, force, fill);
    return;
  }
  write_output_atomically(output, force, [&](const fs::path& dir) {
    write_moe(dir, tensors(), plan.info, shard_bytes);
    std::optional<StatisticsFile> fresh;  // a job that calibrated nothing writes it now
    StatisticsFile& statistics =
        plan.statistics ? *plan.statistics : fresh.emplace(dir / "stats.h5", plan.stats.layers(), plan.stats.hidden_size);
    statistics.finish(plan.stats, dir / "stats.h5");
    write_text_file(dir / "merge.yaml", yaml);
  });
}

SharedValues shared_values_for(const MergeConfig& config, const std::vector<const HfCheckpoint*>& experts, DType dtype,
                               std::span<const CorpusWindows> calibration, std::int64_t chunk_batches) {
  const ModelConfig& mc = experts.at(0)->config();
  std::string difference;
  SharedValues out;
  if (config.shared_moe) {
    const MoeInfo info = read_moe_info(*config.shared_moe);
    if (!same_architecture(mc, info.config, &difference))
      throw Error("shared MoE " + config.shared_moe->string() + " does not match the experts: " + difference);
    const auto file = std::make_shared<const H5Id>(h5::open_file(*config.shared_moe / "moe.h5"));
    out.values = [file, dtype](const std::string&, const std::string& path, const std::vector<std::int64_t>& shape) {
      std::vector<float> values = h5::read_f32(file->get(), path, shape);
      round_through(dtype, values);
      return values;
    };
    return out;
  }
  std::shared_ptr<const HfCheckpoint> base;
  if (config.shared_checkpoint) {
    base = std::make_shared<const HfCheckpoint>(*config.shared_checkpoint);
    if (!same_architecture(mc, base->config(), &difference))
      throw Error("shared checkpoint " + config.shared_checkpoint->string() + " does not match the experts: " + difference);
  }
  // The experts combined: averaged, or RegMean's merge of the linear layers (on rank 0, which
  // holds the Grams).
  SharedStore::Values combined = [experts, dtype](const std::string& hf_name, const std::string&,
                                                  const std::vector<std::int64_t>& shape) {
    return average_shared_tensor(experts, hf_name, shape, dtype);
  };
  const bool combines = !base || config.shared_scale != 0.0;
  if (combines && config.shared_regmean) {
    DUME_ASSERT(calibration.size() == experts.size());
    const auto grams = std::make_shared<const RegmeanGrams>(config, experts, calibration, chunk_batches);
    combined = [grams, average = combined, dtype](const std::string& hf_name, const std::string& path,
                                                  const std::vector<std::int64_t>& shape) {
      return grams->merges(hf_name) ? grams->merged(hf_name, shape, dtype) : average(hf_name, path, shape);
    };
    out.root_only = [grams](const std::string& hf_name) { return grams->merges(hf_name); };
  }
  if (!base) {
    out.values = combined;
    return out;
  }
  // Task arithmetic: base + s * (combined - base), rounded once to the stored dtype.
  out.values = [base, combined, dtype, s = config.shared_scale](const std::string& hf_name, const std::string& path,
                                                                const std::vector<std::int64_t>& shape) {
    std::vector<float> w = average_shared_tensor({base.get()}, hf_name, shape, dtype);
    if (s == 0.0) return w;
    const std::vector<float> a = combined(hf_name, path, shape);
    for (std::size_t j = 0; j < w.size(); ++j) w[j] = static_cast<float>(w[j] + s * (static_cast<double>(a[j]) - w[j]));
    round_through(dtype, w);
    return w;
  };
  return out;
}

std::unique_ptr<SharedStore> shared_store_for(const MergeConfig& config, const std::vector<const HfCheckpoint*>& experts,
                                              DType dtype, std::span<const CorpusWindows> calibration) {
  const ModelConfig& mc = experts.at(0)->config();
  // RegMean's forward runs in the chunks a calibration would (its Grams take the place of the
  // statistics).
  std::int64_t batches_per_rank = 0;
  for (const CorpusWindows& windows : calibration)
    batches_per_rank = std::max(batches_per_rank,
                                (batch_count(windows, config.calibration.batch_sequences) + mpi_size() - 1) / mpi_size());
  SharedValues shared;
  collective_phase([&] {
    const std::int64_t chunk = plan_memory(mc, config, static_cast<std::int64_t>(experts.size()), dtype,
                                           batches_per_rank, config.memory).chunk_rounds;
    shared = shared_values_for(config, experts, dtype, calibration, chunk);
  });
  return std::make_unique<SharedStore>(config.output.path, mc, dtype, shared.values, shared.root_only);
}

void run_merge(const MergeConfig& config, bool force, bool resume, const std::vector<InputPath>& also_read) {
  if (config.fold_into) throw CollectiveError("'moe:' names the MoE to extend: that is `dume fold-in`, not merge");
  const StopSignals signals;  // caught from the start, acted on once calibration runs
  PhaseTimes phases;
  auto t = Clock::now();
  std::vector<InputPath> inputs = also_read;
  const std::vector<InputPath> own = input_paths(config);
  inputs.insert(inputs.end(), own.begin(), own.end());
  const auto lock = claim_moe_output(config.output.path, inputs, force, resume);
  MergeInputs in;
  collective_phase([&] { in = merge_prepare(config); });
  if (mpi_rank() == 0) {
    std::printf("# dume merge: %zu experts\n# resolved configuration:\n%s", config.experts.size(),
                config.resolved_yaml().c_str());
    for (std::size_t e = 0; e < in.reports.size(); ++e)
      if (const auto line = describe(in.reports[e]); !line.empty())
        std::printf("# calibration '%s': %s\n", config.experts[e].name.c_str(), line.c_str());
    std::fflush(stdout);
  }
  MergePlan plan;
  if (config.stages > 1) {  // refused before any work
    collective_phase([&] {
      if (config.shared_regmean)
        throw Error("shared: regmean runs every expert whole on each rank: it is not implemented with parallel.stages > 1");
      if (resume) throw Error("--resume: a merge by stages keeps no checkpoint to resume from");
    });
    plan.grid = std::make_unique<Grid>(in.experts[0].config(), static_cast<std::int64_t>(in.experts.size()), config.stages);
  }
  phases.emplace_back("load + checks", std::chrono::duration<double>(Clock::now() - t).count());

  t = Clock::now();
  std::vector<const HfCheckpoint*> experts;
  for (const auto& c : in.experts) experts.push_back(&c);
  plan.model.config = in.experts[0].config();
  plan.shared = shared_store_for(config, experts, in.dtype, in.calibration);
  plan.info.config = plan.model.config;
  plan.info.router = config.router;
  plan.info.dtype = in.dtype;
  const std::string combined = config.shared_regmean ? "regmean" : "average";
  plan.info.shared = config.shared_checkpoint ? config.shared_checkpoint->string() +
                                                    (config.shared_scale != 0.0 ? " + " + std::to_string(config.shared_scale) +
                                                                                      " x (" + combined + " - base)"
                                                                                : "")
                     : config.shared_moe      ? "moe " + config.shared_moe->string()
                                              : combined;
  plan.info.shared_hash = plan.shared->hash();
  plan.stats.hidden_size = plan.model.config.hidden_size;
  plan.stats.context_tokens = config.router.context_tokens;
  plan.stats.shared_hash = plan.info.shared_hash;
  for (std::size_t e = 0; e < experts.size(); ++e) {
    plan.info.experts.push_back(config.experts[e].name);
    plan.sources.push_back(expert_from_checkpoint(*experts[e], in.dtype));
    plan.calibrate.push_back({config.experts[e].name, experts[e], &in.calibration[e]});
  }
  phases.emplace_back("shared weights", std::chrono::duration<double>(Clock::now() - t).count());
  const auto store = plan.grid ? nullptr : open_resume_store(config, plan, resume);
  run_plan(plan, config, force, phases, store.get());
}

}  // namespace dume
