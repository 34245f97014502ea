// The YAML configuration of a merge (and of the jobs that reuse it: eval, fold-in).
// Unknown keys and wrong types are errors naming the file, line and key; relative paths
// resolve against the config file's folder.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "corpus.hpp"
#include "dtype.hpp"
#include "outputs.hpp"
#include "routing.hpp"

namespace dume {

struct ExpertSpec {
  std::string name;
  std::filesystem::path checkpoint;
  CorpusSpec calibration;
  std::optional<CorpusSpec> test;  // used by eval
};

// router.method. dume: the closed-form ridge router; gaussian: each domain's MLP inputs as a
// Gaussian, routing on log-densities (routers.hpp; not exportable to Mixtral); hidden: each
// domain's mean MLP input, unit-normalized, no bias (mergekit-moe's prompt-average gate);
// random: seeded Gaussian directions, no bias.
enum class RouterMethod { dume, gaussian, hidden, random };
inline const std::vector<std::string> kRouterMethods = {"dume", "gaussian", "hidden", "random"};  // enum order
std::string to_string(RouterMethod method);
std::optional<RouterMethod> router_method_from_string(const std::string& name);

struct RouterSettings {
  RouterMethod method = RouterMethod::dume;
  double lambda = 1e-2;         // ridge strength; for "gaussian" the covariance shrinkage
  double temperature = 1.0;     // logits are divided by it
  // `lambda: auto` / `temperature: auto`: chosen from the held-out split (router_tuning.hpp).
  bool auto_lambda = false, auto_temperature = false;
  std::vector<double> layer_lambda;  // what auto chose, per layer (recorded in the MoE)
  int top_k = 1;
  std::int64_t context_tokens = 256;  // C: positions of each sequence that enter the statistics
  bool bias = true;             // solve with the constant column (router bias)
  // Weight every domain equally: each domain's A and B divided by its token count before the sum.
  bool balance = false;
  Routing routing;              // how the logits become decisions at inference (routing.hpp)
  // Each expert keeps its own attention too, mixed per token by the routing decision (which
  // must be one decision taken at layer 0, where a pass with the shared attention takes it).
  bool expert_attention = false;
};

struct CalibrationSettings {
  std::int64_t sequence_length = 256;
  std::int64_t max_sequences = 0;    // per domain; 0 = every window
  std::int64_t batch_sequences = 8;  // sequences per forward pass: fixed, so results do not depend on ranks
  std::int64_t checkpoint_every = 0; // sequences a rank calibrates between checkpoint saves; 0 = none by count
  // Minutes of calibration after which a rank saves its partial statistics (and rank 0 each
  // finished domain), so that a hard kill (SIGKILL, a node lost) costs at most this much work;
  // 0 = none by time. A stop signal always saves.
  double checkpoint_minutes = 10;
  // Share of each domain's batches kept out of the statistics, for choosing router settings;
  // of their tokens at most heldout_tokens (evenly spaced) are kept, per domain and layer.
  double heldout_fraction = 0.0;
  std::int64_t heldout_tokens = 2048;
  // Whether a domain may be calibrated in one pass, one layer's statistics at a time: not with
  // periodic checkpoints, which need the chunks' partial sums of every layer (a pass cut short is
  // lost whole, and one domain's pass can take hours).
  bool one_pass() const { return checkpoint_every <= 0 && checkpoint_minutes <= 0; }
};

// `dume eval`: which methods to compare on each domain's test corpus.
struct EvalSettings {
  // dume, experts (each dense expert), average (every parameter averaged), random (random
  // top-k routing), oracle (forced to the domain's expert).
  std::vector<std::string> methods = {"dume", "experts", "average", "random", "oracle"};
  std::vector<int> top_k;            // k values for dume and random; empty: router.top_k
  std::vector<Routing> routing;      // routing modes for dume; empty: router.routing
  std::filesystem::path output;      // default: <output>/eval
  std::int64_t max_sequences = 0;    // test windows per domain; 0 = all
  std::uint64_t seed = 1234;         // of random routing
};

struct OutputSettings {
  std::filesystem::path path;
  std::optional<DType> dtype;                 // default: the experts' dtype
  std::uint64_t shard_bytes = 2ull << 30;     // shard size of the HDF5 MoE
};

// `recipe: recommended` sets the defaults the study in the README found best on the bundled
// experts (shared: regmean, the Gaussian router with lambda and temperature chosen on a 10 %
// held-out split, routing mean+layer:0, top_k 2); `recipe: paper` (the default) is DUME as
// published. Keys given explicitly override the recipe.
struct MergeConfig {
  std::filesystem::path source;  // the YAML file
  std::vector<ExpertSpec> experts;
  std::optional<std::filesystem::path> shared_checkpoint;  // shared: {checkpoint: path}, a base model's
  // shared: {checkpoint: base, scale: s}: task arithmetic, base + s * mean(expert - base)
  // = base + s * (average - base); s = 0 is the base itself, s = 1 the average.
  double shared_scale = 0.0;
  // shared: regmean, or {checkpoint: base, scale: s, combine: regmean}: RegMean (regmean.hpp)
  // in place of the average.
  bool shared_regmean = false;
  std::optional<std::filesystem::path> shared_moe;         // shared: {moe: path}, an existing MoE's
  std::optional<std::filesystem::path> fold_into;          // moe: path, the MoE `dume fold-in` extends
  RouterSettings router;
  CalibrationSettings calibration;
  OutputSettings output;
  EvalSettings eval;
  int threads = 0;  // compute threads per rank; 0 = all cores / ranks on this node
  std::string backend = "cpu";  // compute.backend: cpu, cuda or auto (cuda where a GPU is visible)
  std::int64_t memory = 0;  // compute.memory: bytes per rank; 0 = the node's memory / its ranks, less 1/8
  int stages = 1;  // parallel.stages: the ranks form stages x replicas (grid.hpp)
  std::vector<std::string> keys;  // the top-level keys the YAML gave

  // The configuration with every default filled in and paths resolved, as YAML.
  std::string resolved_yaml() const;
};

MergeConfig merge_config_read(const std::filesystem::path& path);

// Every file and directory a job of this config reads (the config itself, checkpoints, corpora,
// tokenizers, a base model or MoE), for the output rule (outputs.hpp). Globs are expanded; a
// glob that matches nothing adds nothing (the corpus reader reports it).
std::vector<InputPath> input_paths(const MergeConfig& config);
MergeConfig merge_config_parse(const std::string& text, const std::filesystem::path& source);

// "2GB", "512MiB", "1e9", "100000" -> bytes.
std::uint64_t parse_size(const std::string& text);

}  // namespace dume
