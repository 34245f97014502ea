// `dume eval`: per-domain test perplexity of the DUME MoE and of the baselines (each dense
// expert, weight averaging, random routing, oracle routing), DUME's routing per layer, and
// retention, as an MPI job whose numbers do not depend on the number of ranks.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "merge_config.hpp"

namespace dume {

struct EvalResult {
  std::vector<std::string> domains;  // = experts, in order
  std::vector<std::string> methods;  // columns: expert:<name>..., average, random, oracle, dume (@k=...)
  std::map<std::string, std::map<std::string, double>> perplexity;  // [domain][method]
  std::map<std::string, std::int64_t> tokens;                       // predicted test tokens per domain
  // DUME router (first k): fraction of domain d's test tokens whose top-1 expert is e, per layer.
  std::vector<std::vector<std::vector<double>>> routing;  // [domain][layer][expert]
  std::map<std::string, double> retention;  // ppl(expert d on d) / ppl(dume on d)
  // The same for the other one-model methods (oracle, average, ...): [method][domain].
  std::map<std::string, std::map<std::string, double>> retention_by_method;
  // Share of the gap from random to oracle routing that DUME closes: (random - dume) / (random - oracle).
  std::map<std::string, double> gap_closed;

  std::vector<double> accuracy(std::size_t domain) const;  // routing[d][l][d] per layer
};

// Runs every configured method on every domain's test windows; call on every rank. The result
// is complete on rank 0.
EvalResult run_eval(const MergeConfig& config);

// The table rank 0 prints.
std::string eval_table(const EvalResult& result);

// eval.json and routing.png into config.eval.output (each written under a temporary name).
void write_eval_outputs(const EvalResult& result, const MergeConfig& config);

}  // namespace dume
