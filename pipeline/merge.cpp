#include "merge.hpp"

#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <thread>

#include "comm.hpp"
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

// Wall time per phase, for the summary table.
class PhaseClock {
 public:
  void start(const char* phase) {
    stop();
    phase_ = phase;
    t0_ = Clock::now();
  }
  void stop() {
    if (phase_) phases_.emplace_back(phase_, std::chrono::duration<double>(Clock::now() - t0_).count());
    phase_ = nullptr;
  }
  void add(const char* phase, double seconds) { phases_.emplace_back(phase, seconds); }
  const std::vector<std::pair<std::string, double>>& phases() const { return phases_; }

 private:
  const char* phase_ = nullptr;
  Clock::time_point t0_;
  std::vector<std::pair<std::string, double>> phases_;
};

}  // namespace

MergeInputs merge_prepare(const MergeConfig& config, bool force) {
  if (fs::exists(config.output.path) && !force)
    throw Error("output " + config.output.path.string() + " exists; pass --force to replace it");
  MergeInputs in;
  for (const auto& e : config.experts) in.experts.emplace_back(e.checkpoint);
  const ModelConfig& first = in.experts[0].config();
  for (std::size_t e = 1; e < in.experts.size(); ++e) {
    std::string difference;
    if (!same_architecture(first, in.experts[e].config(), &difference))
      throw Error("expert '" + config.experts[e].name + "' (" + config.experts[e].checkpoint.string() +
                  ") does not match expert '" + config.experts[0].name + "': " + difference);
  }
  in.dtype = config.output.dtype.value_or(in.experts[0].dtype());
  if (!config.output.dtype)
    for (std::size_t e = 1; e < in.experts.size(); ++e)
      if (in.experts[e].dtype() != in.dtype)
        throw Error("experts are stored in different dtypes (" + std::string(to_string(in.dtype)) + ", " +
                    std::string(to_string(in.experts[e].dtype())) + "): set output.dtype");
  for (std::size_t e = 0; e < config.experts.size(); ++e) {
    const CorpusSpec& spec = config.experts[e].calibration;
    auto tokens = corpus_read(spec);
    corpus_check_vocab(tokens, static_cast<std::size_t>(first.vocab_size), spec.path);
    in.calibration.emplace_back(std::move(tokens), static_cast<std::size_t>(config.calibration.sequence_length),
                                static_cast<std::size_t>(config.calibration.max_sequences), spec.path);
  }
  return in;
}

SharedWeights average_shared_weights(const std::vector<const Checkpoint*>& checkpoints, DType dtype) {
  SharedWeights w;
  std::vector<float> values;
  std::vector<double> sum;
  const double scale = 1.0 / static_cast<double>(checkpoints.size());
  for_each_shared_tensor(checkpoints.at(0)->config(), w, [&](const std::string& hf_name, const std::string&,
                                                             const std::vector<std::int64_t>& shape, auto& storage) {
    const std::size_t n = numel(shape);
    values.resize(n);
    sum.assign(n, 0.0);
    for (const Checkpoint* checkpoint : checkpoints) {
      checkpoint->read(hf_name, shape, values);
      for (std::size_t i = 0; i < n; ++i) sum[i] += values[i];
    }
    for (std::size_t i = 0; i < n; ++i) storage.data()[i] = static_cast<float>(sum[i] * scale);
    round_through(dtype, {storage.data(), n});
  });
  return w;
}

std::vector<std::vector<MlpWeights>> calibration_mlps(const Checkpoint& expert, DType dtype) {
  const ModelConfig& c = expert.config();
  std::vector<std::vector<MlpWeights>> mlps(static_cast<std::size_t>(c.num_layers));
  for (std::int64_t l = 0; l + 1 < c.num_layers; ++l) {
    MlpWeights w = load_mlp(expert, l);
    for (Matrix* m : {&w.gate, &w.up, &w.down}) round_through(dtype, {m->data(), static_cast<std::size_t>(m->size())});
    mlps[static_cast<std::size_t>(l)].push_back(std::move(w));
  }
  return mlps;
}

std::vector<MoeTensor> moe_tensors(const ModelConfig& config, const SharedWeights& shared, DType dtype,
                                   const std::vector<const Checkpoint*>& experts,
                                   const std::vector<RouterSolution>& routers) {
  std::vector<MoeTensor> tensors;
  for_each_shared_tensor(config, shared, [&](const std::string&, const std::string& path,
                                             const std::vector<std::int64_t>& shape, const auto& storage) {
    const float* data = storage.data();
    const std::size_t n = numel(shape);
    tensors.push_back({path, dtype, shape, [=] { return encode(dtype, {data, n}); }});
  });
  const auto E = static_cast<std::int64_t>(experts.size());
  const MlpWeights layout;  // only names and shapes are visited
  for (std::int64_t l = 0; l < config.num_layers; ++l) {
    for (std::int64_t e = 0; e < E; ++e)
      for_each_mlp_tensor(config, layout, [&](const std::string& suffix, const std::string& moe_name,
                                              const std::vector<std::int64_t>& shape, const auto&) {
        const Checkpoint* checkpoint = experts[static_cast<std::size_t>(e)];
        const std::string name = hf::layer(l, suffix);
        tensors.push_back({moe_path::expert(l, e, moe_name), dtype, shape, [=] {
                             std::vector<float> values(numel(shape));
                             checkpoint->read(name, shape, values);  // checks shape and finiteness
                             const SafetensorsFile* file = nullptr;
                             const TensorInfo& info = checkpoint->info(name, &file);
                             if (info.dtype == dtype) {  // exact copy of the expert's bytes
                               const auto bytes = file->data(info);
                               return std::vector<std::byte>(bytes.begin(), bytes.end());
                             }
                             return encode(dtype, values);
                           }});
      });
    const RouterSolution& r = routers[static_cast<std::size_t>(l)];
    const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> weight = r.weight.cast<float>();
    const Eigen::VectorXf bias = r.bias.cast<float>();
    tensors.push_back({moe_path::layer(l, "router/weight"), DType::F32, {E, config.hidden_size}, [weight] {
                         return encode(DType::F32, {weight.data(), static_cast<std::size_t>(weight.size())});
                       }});
    tensors.push_back({moe_path::layer(l, "router/bias"), DType::F32, {E}, [bias] {
                         return encode(DType::F32, {bias.data(), static_cast<std::size_t>(bias.size())});
                       }});
  }
  return tensors;
}

std::string shared_weights_hash(const ModelConfig& config, const SharedWeights& shared, DType dtype) {
  std::uint64_t hash = kHashSeed;
  for_each_shared_tensor(config, shared, [&](const std::string&, const std::string& path,
                                             const std::vector<std::int64_t>& shape, const auto& storage) {
    hash = hash_bytes(hash, std::as_bytes(std::span(path)));
    hash = hash_bytes(hash, encode(dtype, {storage.data(), numel(shape)}));
  });
  return hash_hex(hash);
}

void write_output_atomically(const fs::path& output, bool force, const std::function<void(const fs::path&)>& fill) {
  const fs::path parent = output.parent_path().empty() ? fs::path(".") : output.parent_path();
  fs::create_directories(parent);
  // built with append(): GCC 12 warns falsely (-Wrestrict) on "." + string
  const std::string tag =
      std::string(".").append(output.filename().string()).append(".tmp-").append(std::to_string(getpid()));
  const fs::path tmp = parent / tag;
  fs::remove_all(tmp);
  fs::create_directory(tmp);
  try {
    fill(tmp);
    if (fs::exists(output)) {
      if (!force) throw Error("output " + output.string() + " appeared while the job ran; not replacing it");
      const fs::path old = parent / (tag + ".old");
      fs::rename(output, old);
      fs::rename(tmp, output);
      fs::remove_all(old);
    } else {
      fs::rename(tmp, output);
    }
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
}

void run_merge(const MergeConfig& config, bool force) {
  const int rank = mpi_rank(), ranks = mpi_size();
  const bool root = rank == 0;
  PhaseClock clock;
  clock.start("load + checks");
  MergeInputs in;
  collective_phase([&] { in = merge_prepare(config, force); });
  const ModelConfig& mc = in.experts[0].config();
  const auto E = static_cast<std::int64_t>(config.experts.size());

  const int threads = config.threads > 0
                          ? config.threads
                          : std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / mpi_local_size());
  auto backend = make_backend(BackendKind::cpu, threads);
  if (root) {
    std::printf("# dume merge: %lld experts, %d rank%s x %d thread%s; %s\n", static_cast<long long>(E), ranks,
                ranks == 1 ? "" : "s", threads, threads == 1 ? "" : "s", backend->describe().c_str());
    std::printf("# resolved configuration:\n%s", config.resolved_yaml().c_str());
    std::fflush(stdout);
  }

  clock.start("shared weights");
  std::vector<const Checkpoint*> experts;
  for (const auto& c : in.experts) experts.push_back(&c);
  Model model;
  model.config = mc;
  collective_phase([&] {
    if (config.shared_checkpoint) {
      const Checkpoint base(*config.shared_checkpoint);
      std::string difference;
      if (!same_architecture(mc, base.config(), &difference))
        throw Error("shared checkpoint " + config.shared_checkpoint->string() + " does not match the experts: " + difference);
      model.shared = average_shared_weights({&base}, in.dtype);
    } else {
      model.shared = average_shared_weights(experts, in.dtype);
    }
  });
  const std::string hash = shared_weights_hash(mc, model.shared, in.dtype);

  Statistics stats;
  stats.hidden_size = mc.hidden_size;
  stats.context_tokens = config.router.context_tokens;
  stats.shared_hash = hash;
  CalibrationTiming timing;
  const auto t_calibration = Clock::now();
  clock.stop();
  for (std::int64_t e = 0; e < E; ++e) {
    const auto& name = config.experts[static_cast<std::size_t>(e)].name;
    model.experts = calibration_mlps(in.experts[static_cast<std::size_t>(e)], in.dtype);
    Forward forward(model, *backend);
    DomainStatistics domain = calibrate_domain(forward, *backend, mc, in.calibration[static_cast<std::size_t>(e)],
                                               config.router.context_tokens, config.calibration.batch_sequences, rank,
                                               ranks, name, timing, root);
    reduce_domain(domain, timing);
    stats.domains.push_back(std::move(domain));
  }
  model.experts.clear();
  const double calibration_seconds = std::chrono::duration<double>(Clock::now() - t_calibration).count();
  clock.add("forward (calibration)", calibration_seconds - timing.accumulate - timing.reduce);
  clock.add("statistics (A update)", timing.accumulate);
  clock.add("reduce", timing.reduce);

  if (root) {
    try {
      clock.start("solve");
      std::vector<RouterSolution> routers;
      for (std::int64_t l = 0; l < mc.num_layers; ++l) {
        routers.push_back(build_router(config.router, stats, l));
        for (int e : routers.back().zero_norm)
          std::fprintf(stderr, "dume: warning: layer %lld: router column of expert '%s' has zero norm (replaced by 1e-6)\n",
                       static_cast<long long>(l), config.experts[static_cast<std::size_t>(e)].name.c_str());
      }
      clock.start("write");
      MoeInfo info;
      info.config = mc;
      for (const auto& e : config.experts) info.experts.push_back(e.name);
      info.router = config.router;
      info.dtype = in.dtype;
      info.shared = config.shared_checkpoint ? config.shared_checkpoint->string() : "average";
      info.shared_hash = hash;
      write_output_atomically(config.output.path, force, [&](const fs::path& dir) {
        write_moe(dir, moe_tensors(mc, model.shared, in.dtype, experts, routers), info, config.output.shard_bytes);
        write_statistics(dir / "stats.h5", stats);
        std::ofstream(dir / "merge.yaml") << config.resolved_yaml();
      });
      clock.stop();
    } catch (const std::exception& e) {
      abort_job(e.what());
    }
  }
  barrier();
  if (!root) return;

  std::int64_t tokens = 0;
  for (const auto& d : stats.domains) tokens += d.tokens;
  std::printf("#\n# %-24s %10s\n", "phase", "seconds");
  double total = 0;
  for (const auto& [phase, seconds] : clock.phases()) {
    std::printf("  %-24s %10.3f\n", phase.c_str(), seconds);
    total += seconds;
  }
  std::printf("  %-24s %10.3f\n", "total", total);
  const double rate = timing.accumulate > 0 ? timing.multiply_adds / timing.accumulate : 0.0;
  std::printf("# statistics: %lld calibration tokens; A update on rank 0 at %.2f G multiply-adds/s (f64)\n",
              static_cast<long long>(tokens), rate / 1e9);
  std::printf("# wrote %s\n", config.output.path.c_str());
}

}  // namespace dume
