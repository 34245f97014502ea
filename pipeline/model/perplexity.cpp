#include "perplexity.hpp"

#include <algorithm>
#include <cmath>

#include "progress.hpp"

namespace dume {

double Perplexity::value() const { return tokens > 0 ? std::exp(nll / static_cast<double>(tokens)) : 0.0; }

double sequence_nll(const float* logits, std::span<const std::uint32_t> tokens, std::int64_t V) {
  double nll = 0.0;
  for (std::size_t t = 0; t + 1 < tokens.size(); ++t) {
    const float* row = logits + static_cast<std::int64_t>(t) * V;
    const double max = *std::max_element(row, row + V);
    double sum = 0.0;
    for (std::int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(row[v]) - max);
    nll += std::log(sum) + max - static_cast<double>(row[tokens[t + 1]]);
  }
  return nll;
}

Perplexity perplexity(Forward& forward, const ModelConfig& config, const CorpusWindows& windows,
                      const PerplexityRun& run) {
  const auto S = static_cast<std::int64_t>(windows.length());
  const auto count = static_cast<std::int64_t>(windows.count());
  const std::int64_t batches = (count + run.batch - 1) / run.batch;
  std::int64_t mine = 0;
  for (std::int64_t b = run.rank; b < batches; b += run.ranks) mine += std::min(run.batch, count - b * run.batch) * S;
  Perplexity result;
  Progress progress(run.label, mine, "tokens", run.show_progress);
  for (std::int64_t b = run.rank; b < batches; b += run.ranks) {
    const std::int64_t first = b * run.batch, B = std::min(run.batch, count - first);
    const auto tokens = windows.tokens().subspan(static_cast<std::size_t>(first * S), static_cast<std::size_t>(B * S));
    const std::vector<float> logits = forward.run(tokens, B, S, run.options ? run.options(first) : ForwardOptions{});
    for (std::int64_t i = 0; i < B; ++i)
      result.nll += sequence_nll(logits.data() + i * S * config.vocab_size,
                                 tokens.subspan(static_cast<std::size_t>(i * S), static_cast<std::size_t>(S)),
                                 config.vocab_size);
    result.tokens += B * (S - 1);
    progress.advance(B * S);
  }
  progress.finish();
  return result;
}

}  // namespace dume
