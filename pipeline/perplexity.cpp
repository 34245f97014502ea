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

Perplexity perplexity(Forward& forward, const ModelConfig& config, const CorpusWindows& windows, std::int64_t batch,
                      bool show_progress) {
  const auto S = static_cast<std::int64_t>(windows.length());
  const auto count = static_cast<std::int64_t>(windows.count());
  Perplexity result;
  Progress progress("ppl", count * S, "tokens", show_progress);
  for (std::int64_t first = 0; first < count; first += batch) {
    const std::int64_t B = std::min(batch, count - first);
    const auto tokens = windows.tokens().subspan(static_cast<std::size_t>(first * S), static_cast<std::size_t>(B * S));
    const std::vector<float> logits = forward.run(tokens, B, S);
    for (std::int64_t b = 0; b < B; ++b)
      result.nll += sequence_nll(logits.data() + b * S * config.vocab_size,
                                 tokens.subspan(static_cast<std::size_t>(b * S), static_cast<std::size_t>(S)),
                                 config.vocab_size);
    result.tokens += B * (S - 1);
    progress.advance(B * S);
  }
  progress.finish();
  return result;
}

}  // namespace dume
