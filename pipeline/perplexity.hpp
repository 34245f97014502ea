// Perplexity of a model on a corpus cut into windows: every token but each window's first is
// predicted from the ones before it in its window.
#pragma once

#include <cstdint>
#include <span>

#include "corpus.hpp"
#include "forward.hpp"

namespace dume {

struct Perplexity {
  double nll = 0.0;         // summed negative log-likelihood, nats
  std::int64_t tokens = 0;  // predicted tokens
  double value() const;     // exp(nll / tokens)
};

// Negative log-likelihood (nats, f64) of tokens[1..S) under logits rows 0..S-1 (S, V).
double sequence_nll(const float* logits, std::span<const std::uint32_t> tokens, std::int64_t V);

// Runs `batch` windows per forward pass; reports progress when `show_progress`.
Perplexity perplexity(Forward& forward, const ModelConfig& config, const CorpusWindows& windows, std::int64_t batch,
                      bool show_progress);

}  // namespace dume
