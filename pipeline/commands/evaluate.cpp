#include "evaluate.hpp"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "comm.hpp"
#include "corpus_loader.hpp"
#include "layer_stream.hpp"
#include "memory_plan.hpp"
#include "rank_backend.hpp"
#include "shared_weights.hpp"
#include "moe_file.hpp"
#include "outputs.hpp"
#include "perplexity.hpp"
#include "plot.hpp"

namespace dume {

namespace fs = std::filesystem;

std::vector<double> EvalResult::accuracy(std::size_t domain) const {
  std::vector<double> a;
  for (const auto& layer : routing.at(domain)) a.push_back(layer.at(domain));
  return a;
}

namespace {

// Deterministic uniform [0, 1) from a tuple, so random routing is the same on any number of ranks.
double uniform_hash(std::uint64_t seed, std::uint64_t a, std::uint64_t b, std::uint64_t c, std::uint64_t d) {
  std::uint64_t x = seed;
  for (std::uint64_t v : {a, b, c, d}) {  // splitmix64 steps
    x += 0x9e3779b97f4a7c15ull + v;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    x ^= x >> 31;
  }
  return static_cast<double>(x >> 11) * 0x1.0p-53;
}

std::string k_suffix(const MergeConfig& config, int k) {
  return k == config.eval.top_k.front() ? "" : "@k=" + std::to_string(k);
}

bool wants(const MergeConfig& config, const std::string& method) {
  return std::find(config.eval.methods.begin(), config.eval.methods.end(), method) != config.eval.methods.end();
}

// Every parameter, MLPs included, averaged over the experts (f64) and rounded to dtype, one
// layer at a time.
LayerFill average_layers(const std::vector<const HfCheckpoint*>& experts, DType dtype) {
  const ModelConfig& c = experts.at(0)->config();
  const auto average = [experts, dtype](const std::string& hf_name, const std::vector<std::int64_t>& shape, auto& storage) {
    average_shared_tensor(experts, hf_name, shape, dtype, {storage.data(), static_cast<std::size_t>(storage.size())});
  };
  LayerFill fill;
  fill.layer = [experts, dtype, average, c](std::int64_t l, Model& m) {
    for_each_layer_tensor(c, l, m.shared.layers[static_cast<std::size_t>(l)],
                          [&](const std::string& hf_name, const std::string&, const std::vector<std::int64_t>& shape,
                              auto& storage) { average(hf_name, shape, storage); });
    std::vector<MlpWeights> all;
    for (const HfCheckpoint* checkpoint : experts) all.push_back(load_mlp(*checkpoint, l));
    MlpWeights mean;
    for (auto member : {&MlpWeights::gate, &MlpWeights::up, &MlpWeights::down}) {
      Eigen::MatrixXd sum = Eigen::MatrixXd::Zero((all[0].*member).rows(), (all[0].*member).cols());
      for (const auto& w : all) sum += (w.*member).cast<double>();
      Matrix& out = mean.*member;
      out = (sum / static_cast<double>(all.size())).cast<float>();
      round_through(dtype, {out.data(), static_cast<std::size_t>(out.size())});
    }
    m.experts[static_cast<std::size_t>(l)] = {std::move(mean)};
  };
  fill.head = [average, c](SharedWeights& shared) {
    shared.norm.resize(c.hidden_size);
    average(std::string(hf::norm), {c.hidden_size}, shared.norm);
    if (c.tie_word_embeddings) return;
    shared.lm_head.resize(c.vocab_size, c.hidden_size);
    average(std::string(hf::lm_head), {c.vocab_size, c.hidden_size}, shared.lm_head);
  };
  fill.embedding = [experts, dtype, c](std::span<const std::uint32_t> ids) {
    const std::int64_t D = c.hidden_size;
    Matrix rows(static_cast<Eigen::Index>(ids.size()), D);
    for (std::size_t i = 0; i < ids.size(); ++i)
      average_shared_slice(experts, std::string(hf::embed_tokens), {c.vocab_size, D}, ids[i] * static_cast<std::size_t>(D),
                           dtype, {rows.data() + i * static_cast<std::size_t>(D), static_cast<std::size_t>(D)});
    for (const HfCheckpoint* checkpoint : experts) checkpoint->release(hf::embed_tokens);  // pages at row edges
    return rows;
  };
  return fill;
}

// What eval reads before any model runs. Every rank loads all of it: the ranks split each
// domain's batches, not the domains.
struct EvalInputs {
  MoeInfo info;
  std::vector<HfCheckpoint> checkpoints;  // one per expert, config order
  std::vector<CorpusWindows> tests;     // one per domain (= expert)
};

// Checks the outputs and the MoE against the config, then opens the experts and loads their test
// windows. Runs inside collective_phase, so that a failure on any rank stops every rank.
void load_eval_inputs(const MergeConfig& config, bool root, EvalInputs& in) {
  // The results replace an earlier eval's (eval.output is inside the MoE by default), but
  // never an input.
  const std::vector<InputPath> inputs = input_paths(config);
  for (const char* file : {"eval.json", "routing.png"})
    check_output(config.eval.output / file, inputs, /*force=*/true, {.directory = false, .marker = {}});
  in.info = read_moe_info(config.output.path);
  std::vector<std::string> names;
  for (const auto& e : config.experts) names.push_back(e.name);
  if (names != in.info.experts)
    throw Error(config.output.path.string() + " holds experts that differ from the config's (merge it first?)");
  for (const auto& e : config.experts) {
    if (!e.test) throw Error("expert '" + e.name + "' has no test corpus (experts[].test)");
    in.checkpoints.emplace_back(e.checkpoint);
    auto corpus = load_corpus(*e.test, static_cast<std::size_t>(in.info.config.vocab_size),
                              static_cast<std::size_t>(config.calibration.sequence_length),
                              static_cast<std::size_t>(config.eval.max_sequences));
    if (const auto line = describe(corpus.report); !line.empty() && root)
      std::printf("# test '%s': %s\n", e.name.c_str(), line.c_str());
    in.tests.push_back(std::move(corpus.windows));
  }
  if (in.info.router.expert_attention)
    for (const Routing& routing : config.eval.routing)
      if (routing.from_layer != 0)
        throw Error("eval.routing '" + routing.to_string() + "': the MoE's experts keep their own attention, which "
                    "needs one routing decision taken at layer 0 (e.g. mean+layer:0)");
}

// Forward options of domain d's batch starting at window `first` (nullptr: none).
using DomainOptions = std::function<ForwardOptions(std::size_t d, std::int64_t first)>;

// Runs each method on every domain and keeps this rank's share of the nll and tokens per
// (method, domain). Every rank runs the same methods in the same order, so the sums of all
// ranks line up element by element for the one reduce_sum at the end.
class DomainRuns {
 public:
  // By stages (`grid`), the replicas share the batches and the last stage has the results.
  DomainRuns(const MergeConfig& config, const ModelConfig& model_config, const std::vector<CorpusWindows>& tests,
             const Grid* grid, std::int64_t chunk_batches)
      : mc_(model_config), tests_(tests) {
    base_.batch = config.calibration.batch_sequences;
    base_.rank = grid ? grid->replica() : mpi_rank();
    base_.ranks = grid ? grid->replicas() : mpi_size();
    base_.chunk_batches = chunk_batches;
    base_.grid = grid;
  }

  // Runs `method`'s model, read one layer at a time through `fill` into `model` (empty).
  void evaluate(const std::string& method, Model& model, Backend& backend, const LayerFill& fill,
                const DomainOptions& options) {
    Forward forward(model, backend);
    const LayerSource source = stream_layers(model, forward, fill);
    for (std::size_t d = 0; d < tests_.size(); ++d) {
      PerplexityRun run = base_;
      if (options) run.options = [&, d](std::int64_t first) { return options(d, first); };
      record(method, d, perplexity(forward, mc_, tests_[d], run, source));
    }
    if (mpi_rank() == 0) std::fprintf(stderr, "eval: %s done\n", method.c_str());
  }

  std::vector<std::pair<std::string, std::size_t>> keys;  // (method, domain), in the order run
  std::vector<double> sums;                               // nll, tokens per key

 private:
  void record(const std::string& method, std::size_t d, const Perplexity& p) {
    keys.emplace_back(method, d);
    sums.push_back(p.nll);
    sums.push_back(static_cast<double>(p.tokens));
  }

  const ModelConfig& mc_;
  const std::vector<CorpusWindows>& tests_;
  PerplexityRun base_;
};

// The dense baselines: each expert on its own, and every parameter averaged.
void eval_dense_baselines(const MergeConfig& config, const EvalInputs& in, Backend& backend, DomainRuns& runs) {
  std::vector<const HfCheckpoint*> experts;
  for (const auto& c : in.checkpoints) experts.push_back(&c);
  const ModelConfig& c = in.info.config;
  if (wants(config, "experts"))
    for (std::size_t e = 0; e < config.experts.size(); ++e) {
      Model dense = empty_model(c, 1);
      runs.evaluate("expert:" + config.experts[e].name, dense, backend, checkpoint_layers(in.checkpoints[e]), nullptr);
    }
  if (wants(config, "average")) {
    Model average = empty_model(c, 1);
    runs.evaluate("average", average, backend, average_layers(experts, in.info.dtype), nullptr);
  }
}

// The MoE with its router logits replaced by a hash of (domain, window, layer, position, expert):
// the same choices on any number of ranks. Leaves moe.top_k at the last k.
void eval_random_routing(const MergeConfig& config, Model& moe, const LayerFill& fill, Backend& backend,
                         DomainRuns& runs) {
  const auto E = static_cast<std::int64_t>(config.experts.size());
  const auto S = static_cast<std::int64_t>(config.calibration.sequence_length);
  for (int k : config.eval.top_k) {
    moe.top_k = k;
    runs.evaluate("random" + k_suffix(config, k), moe, backend, fill, [&](std::size_t d, std::int64_t first) {
      ForwardOptions o;
      o.on_router_logits = [&, d, first](std::int64_t layer, std::span<float> logits) {
        for (std::size_t i = 0; i < logits.size(); ++i) {
          const auto t = static_cast<std::int64_t>(i) / E, e = static_cast<std::int64_t>(i) % E;
          logits[i] = static_cast<float>(uniform_hash(config.eval.seed, d, static_cast<std::uint64_t>(first + t / S),
                                                      static_cast<std::uint64_t>(layer * S + t % S),
                                                      static_cast<std::uint64_t>(e)));
        }
      };
      return o;
    });
  }
}

// The MoE with each domain's own expert forced: the routing DUME's router aims for.
void eval_oracle(Model& moe, const LayerFill& fill, Backend& backend, DomainRuns& runs) {
  runs.evaluate("oracle", moe, backend, fill, [](std::size_t d, std::int64_t) {
    ForwardOptions o;
    o.forced_expert = static_cast<int>(d);
    return o;
  });
}

// "dume", "dume@k=2", "dume[ema:0.1+layer:0]": the first routing and k are the plain name.
std::string dume_method_name(const MergeConfig& config, const Routing& routing, int k) {
  const bool first_routing = routing == config.eval.routing.front();
  // built with append(): GCC 12 warns falsely (-Wrestrict) on "literal" + string
  return std::string("dume")
      .append(first_routing ? "" : std::string("[").append(routing.to_string()).append("]"))
      .append(k_suffix(config, k));
}

// DUME's own router, for every configured routing and k. The first (routing, k) also counts
// each token's top-1 expert per (domain, layer) into routing_counts [domain][layer][expert].
void eval_dume(const MergeConfig& config, const ModelConfig& mc, Model& moe, const LayerFill& fill, Backend& backend,
               DomainRuns& runs, std::vector<double>& routing_counts) {
  const auto E = static_cast<std::int64_t>(config.experts.size());
  for (const Routing& routing : config.eval.routing)
    for (int k : config.eval.top_k) {
      moe.top_k = k;
      moe.routing = routing;
      const bool count_routing = k == config.eval.top_k.front() && routing == config.eval.routing.front();
      runs.evaluate(dume_method_name(config, routing, k), moe, backend, fill, [&](std::size_t d, std::int64_t) {
        ForwardOptions o;
        if (count_routing)
          o.on_router_logits = [&, d](std::int64_t layer, std::span<float> logits) {
            for (std::size_t t = 0; t < logits.size() / static_cast<std::size_t>(E); ++t) {
              const auto row = logits.subspan(t * static_cast<std::size_t>(E), static_cast<std::size_t>(E));
              const auto top = std::max_element(row.begin(), row.end()) - row.begin();
              routing_counts[static_cast<std::size_t>((static_cast<std::int64_t>(d) * mc.num_layers + layer) * E + top)] += 1;
            }
          };
        return o;
      });
    }
}

// Rank 0, after the reduction: each (method, domain)'s perplexity, and the methods in run order.
void collect_perplexity(const DomainRuns& runs, EvalResult& result) {
  for (std::size_t i = 0; i < runs.keys.size(); ++i) {
    const auto& [method, d] = runs.keys[i];
    const Perplexity p{runs.sums[2 * i], static_cast<std::int64_t>(runs.sums[2 * i + 1])};
    result.perplexity[result.domains[d]][method] = p.value();
    result.tokens[result.domains[d]] = p.tokens;
    if (std::find(result.methods.begin(), result.methods.end(), method) == result.methods.end())
      result.methods.push_back(method);
  }
}

// Rank 0: the summed top-1 counts as fractions of each (domain, layer)'s tokens.
void collect_routing(const std::vector<double>& routing_counts, std::int64_t E, std::int64_t layers,
                     EvalResult& result) {
  result.routing.assign(static_cast<std::size_t>(E), {});
  for (std::int64_t d = 0; d < E; ++d)
    for (std::int64_t l = 0; l < layers; ++l) {
      std::vector<double> row(static_cast<std::size_t>(E));
      double total = 0;
      for (std::int64_t e = 0; e < E; ++e) total += row[static_cast<std::size_t>(e)] = routing_counts[static_cast<std::size_t>((d * layers + l) * E + e)];
      for (double& v : row) v /= total;
      result.routing[static_cast<std::size_t>(d)].push_back(row);
    }
}

// Rank 0: retention against each domain's own expert, and the random-to-oracle gap DUME closes.
void collect_retention(const MergeConfig& config, EvalResult& result) {
  if (wants(config, "experts"))
    for (const auto& d : result.domains)
      for (const auto& m : result.methods)
        if (!m.starts_with("expert:"))
          result.retention_by_method[m][d] = result.perplexity[d]["expert:" + d] / result.perplexity[d][m];
  if (result.retention_by_method.contains("dume")) result.retention = result.retention_by_method["dume"];
  if (wants(config, "dume") && wants(config, "random") && wants(config, "oracle"))
    for (const auto& d : result.domains) {
      auto& p = result.perplexity[d];
      result.gap_closed[d] = (p["random"] - p["dume"]) / (p["random"] - p["oracle"]);
    }
}

}  // namespace

EvalResult run_eval(const MergeConfig& config) {
  const int rank = mpi_rank(), ranks = mpi_size();
  const bool root = rank == 0;
  const auto E = static_cast<std::int64_t>(config.experts.size());
  EvalInputs in;
  collective_phase([&] { load_eval_inputs(config, root, in); });
  const ModelConfig& mc = in.info.config;
  auto backend = rank_backend(config.backend, config.threads);

  // By stages, each stage runs its own layers of every model (grid.hpp).
  const std::unique_ptr<Grid> grid = config.stages > 1 ? std::make_unique<Grid>(mc, E, config.stages) : nullptr;
  if (grid && root) std::printf("# grid: %s\n", grid->describe(mc, E).c_str());
  // Every model runs one layer at a time over chunks of batches (what the budget holds).
  const int replicas = grid ? grid->replicas() : ranks;
  std::int64_t batches_per_rank = 0;
  for (const CorpusWindows& test : in.tests)
    batches_per_rank =
        std::max(batches_per_rank, (batch_count(test, config.calibration.batch_sequences) + replicas - 1) / replicas);
  const MemoryPlan memory =
      plan_eval_memory(mc, E, in.info.router.expert_attention, in.info.router.method == RouterMethod::gaussian,
                       config.calibration.batch_sequences, config.calibration.sequence_length, batches_per_rank,
                       config.memory);
  if (root) std::printf("%s", memory.describe().c_str());

  EvalResult result;
  for (const auto& e : config.experts) result.domains.push_back(e.name);
  DomainRuns runs(config, mc, in.tests, grid.get(), memory.chunk_rounds);
  eval_dense_baselines(config, in, *backend, runs);

  Model moe = empty_moe_model(in.info);
  const LayerFill moe_fill = moe_layers(config.output.path, in.info);
  std::vector<double> routing_counts(static_cast<std::size_t>(E * mc.num_layers * E), 0.0);
  if (wants(config, "random")) eval_random_routing(config, moe, moe_fill, *backend, runs);
  if (wants(config, "oracle")) eval_oracle(moe, moe_fill, *backend, runs);
  if (wants(config, "dume")) eval_dume(config, mc, moe, moe_fill, *backend, runs, routing_counts);

  // Every rank makes both reductions, in this order, whatever it ran; only rank 0 has the sums.
  reduce_sum(runs.sums);
  reduce_sum(routing_counts);
  if (!root) return result;
  collect_perplexity(runs, result);
  if (wants(config, "dume")) collect_routing(routing_counts, E, mc.num_layers, result);
  collect_retention(config, result);
  return result;
}

std::string eval_table(const EvalResult& r) {
  std::string out = "# test perplexity per domain (lower is better)\n";
  char cell[64];
  const auto add = [&](const char* format, auto value) {
    std::snprintf(cell, sizeof cell, format, value);
    out += cell;
  };
  // Columns as wide as the longest method name ("dume[ema:0.1+layer:0]@k=2").
  std::size_t width = 12;
  for (const auto& m : r.methods) width = std::max(width, m.size());
  const auto column = [&](const std::string& text) {
    out.append(width + 1 - std::min(width, text.size()), ' ');
    out += text;
  };
  const auto number = [&](const char* format, double value) {
    std::snprintf(cell, sizeof cell, format, value);
    column(cell);
  };
  add("%-10s", "domain");
  for (const auto& m : r.methods) column(m);
  out += "\n";
  for (const auto& d : r.domains) {
    add("%-10s", d.c_str());
    for (const auto& m : r.methods) number("%.4f", r.perplexity.at(d).at(m));
    out += "\n";
  }
  if (!r.retention_by_method.empty()) {
    out += "# retention = ppl(own expert) / ppl(method) on each domain";
    out += r.gap_closed.empty() ? "\n" : "; gap = share of the random-to-oracle gap DUME closes\n";
    add("%-10s", "domain");
    for (const auto& [m, values] : r.retention_by_method) column(m);
    if (!r.gap_closed.empty()) column("gap");
    out += "\n";
    for (const auto& d : r.domains) {
      add("%-10s", d.c_str());
      for (const auto& [m, values] : r.retention_by_method) number("%.1f%%", 100 * values.at(d));
      if (r.gap_closed.contains(d)) number("%.1f%%", 100 * r.gap_closed.at(d));
      out += "\n";
    }
  }
  if (!r.routing.empty()) {
    out += "# DUME routing accuracy per layer (top-1 expert = the domain's own)\n";
    for (std::size_t d = 0; d < r.domains.size(); ++d) {
      add("%-10s", r.domains[d].c_str());
      for (double a : r.accuracy(d)) add(" %6.3f", a);
      out += "\n";
    }
  }
  return out;
}

void write_eval_outputs(const EvalResult& r, const MergeConfig& config) {
  const fs::path dir = config.eval.output;
  // One eval writes here at a time; the folder is made, and removed again if nothing lands.
  const OutputLock lock(dir / "eval.json");
  nlohmann::json j;
  j["perplexity"] = r.perplexity;
  j["tokens"] = r.tokens;
  j["retention"] = r.retention;
  j["retention_by_method"] = r.retention_by_method;
  j["gap_closed"] = r.gap_closed;
  j["methods"] = r.methods;
  for (std::size_t d = 0; d < r.domains.size() && !r.routing.empty(); ++d) {
    j["routing_accuracy"][r.domains[d]] = r.accuracy(d);
    j["routing"][r.domains[d]] = r.routing[d];
  }
  j["experts"] = r.domains;
  j["config"] = config.resolved_yaml();
  write_text_file(dir / "eval.json", j.dump(2) + "\n");
  if (!r.routing.empty()) {
    TemporaryFile png(dir / "routing.png");
    write_routing_heatmap(png.path(), r.domains, r.routing);
    png.commit();
  }
}

}  // namespace dume
