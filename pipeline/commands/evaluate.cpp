#include "evaluate.hpp"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "comm.hpp"
#include "merge.hpp"
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

// Every parameter, MLPs included, averaged over the experts (f64) and rounded to dtype.
Model average_model(const std::vector<const Checkpoint*>& experts, DType dtype) {
  Model m;
  m.config = experts[0]->config();
  m.shared = average_shared_weights(experts, dtype);
  for (std::int64_t l = 0; l < m.config.num_layers; ++l) {
    MlpWeights mean;
    std::vector<MlpWeights> all;
    for (const Checkpoint* c : experts) all.push_back(load_mlp(*c, l));
    for (auto member : {&MlpWeights::gate, &MlpWeights::up, &MlpWeights::down}) {
      Eigen::MatrixXd sum = Eigen::MatrixXd::Zero((all[0].*member).rows(), (all[0].*member).cols());
      for (const auto& w : all) sum += (w.*member).cast<double>();
      Matrix& out = mean.*member;
      out = (sum / static_cast<double>(all.size())).cast<float>();
      round_through(dtype, {out.data(), static_cast<std::size_t>(out.size())});
    }
    m.experts.push_back({std::move(mean)});
  }
  return m;
}

}  // namespace

EvalResult run_eval(const MergeConfig& config) {
  const int rank = mpi_rank(), ranks = mpi_size();
  const bool root = rank == 0;
  const auto E = static_cast<std::int64_t>(config.experts.size());
  MoeInfo info;
  std::vector<Checkpoint> checkpoints;
  std::vector<CorpusWindows> tests;
  collective_phase([&] {
    // The results replace an earlier eval's (eval.output is inside the MoE by default), but
    // never an input.
    const std::vector<InputPath> inputs = input_paths(config);
    for (const char* file : {"eval.json", "routing.png"})
      check_output(config.eval.output / file, inputs, /*force=*/true, {.directory = false});
    info = read_moe_info(config.output.path);
    std::vector<std::string> names;
    for (const auto& e : config.experts) names.push_back(e.name);
    if (names != info.experts)
      throw Error(config.output.path.string() + " holds experts that differ from the config's (merge it first?)");
    for (const auto& e : config.experts) {
      if (!e.test) throw Error("expert '" + e.name + "' has no test corpus (experts[].test)");
      checkpoints.emplace_back(e.checkpoint);
      auto corpus = load_corpus(*e.test, static_cast<std::size_t>(info.config.vocab_size),
                                static_cast<std::size_t>(config.calibration.sequence_length),
                                static_cast<std::size_t>(config.eval.max_sequences));
      if (const auto line = describe(corpus.report); !line.empty() && root)
        std::printf("# test '%s': %s\n", e.name.c_str(), line.c_str());
      tests.push_back(std::move(corpus.windows));
    }
    if (info.router.expert_attention)
      for (const Routing& routing : config.eval.routing)
        if (routing.from_layer != 0)
          throw Error("eval.routing '" + routing.to_string() + "': the MoE's experts keep their own attention, which "
                      "needs one routing decision taken at layer 0 (e.g. mean+layer:0)");
  });
  const ModelConfig& mc = info.config;
  auto backend = rank_backend(config.backend, config.threads);

  EvalResult result;
  for (const auto& e : config.experts) result.domains.push_back(e.name);
  // Per (method, domain): nll and tokens, summed over ranks at the end.
  std::vector<std::pair<std::string, std::size_t>> keys;
  std::vector<double> sums;
  const auto record = [&](const std::string& method, std::size_t d, const Perplexity& p) {
    keys.emplace_back(method, d);
    sums.push_back(p.nll);
    sums.push_back(static_cast<double>(p.tokens));
  };
  PerplexityRun base;
  base.batch = config.calibration.batch_sequences;
  base.rank = rank;
  base.ranks = ranks;
  const auto run_domains = [&](const std::string& method, Forward& forward,
                               const std::function<ForwardOptions(std::size_t d, std::int64_t first)>& options) {
    for (std::size_t d = 0; d < tests.size(); ++d) {
      PerplexityRun run = base;
      if (options) run.options = [&, d](std::int64_t first) { return options(d, first); };
      record(method, d, perplexity(forward, mc, tests[d], run));
    }
    if (root) std::fprintf(stderr, "eval: %s done\n", method.c_str());
  };

  std::vector<const Checkpoint*> experts;
  for (const auto& c : checkpoints) experts.push_back(&c);
  if (wants(config, "experts"))
    for (std::int64_t e = 0; e < E; ++e) {
      const Model dense = load_dense_model(checkpoints[static_cast<std::size_t>(e)]);
      Forward forward(dense, *backend);
      run_domains("expert:" + config.experts[static_cast<std::size_t>(e)].name, forward, nullptr);
    }
  if (wants(config, "average")) {
    const Model average = average_model(experts, info.dtype);
    Forward forward(average, *backend);
    run_domains("average", forward, nullptr);
  }

  Model moe = read_moe_model(config.output.path);
  const auto S = static_cast<std::int64_t>(config.calibration.sequence_length);
  std::vector<double> routing_counts(static_cast<std::size_t>(E * mc.num_layers * E), 0.0);
  if (wants(config, "random"))
    for (int k : config.eval.top_k) {
      moe.top_k = k;
      Forward forward(moe, *backend);
      run_domains("random" + k_suffix(config, k), forward, [&](std::size_t d, std::int64_t first) {
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
  if (wants(config, "oracle")) {
    Forward forward(moe, *backend);
    run_domains("oracle", forward, [](std::size_t d, std::int64_t) {
      ForwardOptions o;
      o.forced_expert = static_cast<int>(d);
      return o;
    });
  }
  if (wants(config, "dume"))
    for (const Routing& routing : config.eval.routing)
      for (int k : config.eval.top_k) {
        moe.top_k = k;
        moe.routing = routing;
        Forward forward(moe, *backend);
        const bool first_routing = routing == config.eval.routing.front();
        const bool count_routing = k == config.eval.top_k.front() && first_routing;
        // built with append(): GCC 12 warns falsely (-Wrestrict) on "literal" + string
        const std::string name = std::string("dume")
                                     .append(first_routing ? "" : std::string("[").append(routing.to_string()).append("]"))
                                     .append(k_suffix(config, k));
        run_domains(name, forward, [&](std::size_t d, std::int64_t) {
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

  reduce_sum(sums);
  reduce_sum(routing_counts);
  if (!root) return result;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    const auto& [method, d] = keys[i];
    const Perplexity p{sums[2 * i], static_cast<std::int64_t>(sums[2 * i + 1])};
    result.perplexity[result.domains[d]][method] = p.value();
    result.tokens[result.domains[d]] = p.tokens;
    if (std::find(result.methods.begin(), result.methods.end(), method) == result.methods.end())
      result.methods.push_back(method);
  }
  if (wants(config, "dume")) {
    result.routing.assign(static_cast<std::size_t>(E), {});
    for (std::int64_t d = 0; d < E; ++d)
      for (std::int64_t l = 0; l < mc.num_layers; ++l) {
        std::vector<double> row(static_cast<std::size_t>(E));
        double total = 0;
        for (std::int64_t e = 0; e < E; ++e) total += row[static_cast<std::size_t>(e)] = routing_counts[static_cast<std::size_t>((d * mc.num_layers + l) * E + e)];
        for (double& v : row) v /= total;
        result.routing[static_cast<std::size_t>(d)].push_back(row);
      }
  }
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
