// Perplexity of a model on a corpus cut into windows: every token but each window's first is
// predicted from the ones before it in its window.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>

#include "corpus.hpp"
#include "forward.hpp"
#include "grid.hpp"

namespace dume {

struct Perplexity {
  double nll = 0.0;         // summed negative log-likelihood, nats
  std::int64_t tokens = 0;  // predicted tokens
  double value() const;     // exp(nll / tokens)
};

// Negative log-likelihood (nats, f64) of tokens[1..S) under logits rows 0..S-1 (S, V).
double sequence_nll(const float* logits, std::span<const std::uint32_t> tokens, std::int64_t V);

// How a perplexity run splits its windows: fixed batches of `batch` windows, batch i on rank
// i mod ranks (so each window's logits are the same for any number of ranks).
struct PerplexityRun {
  std::int64_t batch = 8;
  int rank = 0, ranks = 1;
  bool show_progress = false;
  std::string label = "ppl";
  // Forward options of the batch starting at window `first` (forced expert, routing hooks).
  std::function<ForwardOptions(std::int64_t first)> options;
  // Batches run layer by layer at once (run_by_layer; each holds its residual stream, batch x S x
  // D floats): the more, the fewer times a streamed model's layers are read.
  std::int64_t chunk_batches = 1;
  // By stages (grid.hpp): the batches go through the grid's pipeline (rank, ranks: the replica and
  // the replicas), and only the last stage's ranks have logits and a share of the result.
  const Grid* grid = nullptr;
};

// This rank's share of the windows' negative log-likelihood; the weights come from `source`
// (stream_layers) one layer at a time, or are the Forward's model's when it is empty.
Perplexity perplexity(Forward& forward, const ModelConfig& config, const CorpusWindows& windows,
                      const PerplexityRun& run = {}, const LayerSource& source = {});

}  // namespace dume
