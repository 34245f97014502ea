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
                      const PerplexityRun& run, const LayerSource& source) {
  const auto S = static_cast<std::int64_t>(windows.length());
  const auto count = static_cast<std::int64_t>(windows.count());
  const std::int64_t batches = (count + run.batch - 1) / run.batch;
  std::vector<std::int64_t> mine;
  std::int64_t tokens = 0;
  for (std::int64_t b = run.rank; b < batches; b += run.ranks) {
    mine.push_back(b);
    tokens += std::min(run.batch, count - b * run.batch) * S;
  }
  Perplexity result;
  const std::int64_t layers = run.grid ? run.grid->end_layer() - run.grid->first_layer() : config.num_layers;
  Progress progress(run.label, tokens * layers, "token-layers", run.show_progress);
  // The logits of a chunk's streams, once they have run every layer.
  const auto finish = [&](std::span<const Batch> done, std::span<Stream> streams) {
    if (source.head) source.head();
    for (std::size_t i = 0; i < streams.size(); ++i) {
      const Batch& b = done[i];
      const std::vector<float> logits = forward.finish(streams[i], b.options);
      streams[i] = Stream();
      for (std::int64_t j = 0; j < b.B; ++j)
        result.nll += sequence_nll(logits.data() + j * S * config.vocab_size,
                                   b.tokens.subspan(static_cast<std::size_t>(j * S), static_cast<std::size_t>(S)),
                                   config.vocab_size);
      result.tokens += b.B * (S - 1);
    }
    if (source.layer) source.layer(-1);  // the head goes too
  };
  if (run.grid) {
    const std::vector<Batch> runs = window_batches(windows, run.batch, mine, run.options);
    run_pipelined(
        forward, source, *run.grid, runs,
        pipeline_chunk(static_cast<std::int64_t>(runs.size()), run.grid->stages(), run.chunk_batches),
        [&](std::size_t i, std::int64_t) { progress.advance(runs[i].B * S); },
        [&](std::size_t first, std::span<Stream> streams) {
          finish(std::span(runs).subspan(first, streams.size()), streams);
        });
    progress.finish();
    return result;
  }
  const auto chunk = static_cast<std::size_t>(std::max<std::int64_t>(1, run.chunk_batches));
  for (std::size_t begin = 0; begin < mine.size(); begin += chunk) {
    const std::vector<Batch> chunk_batches =
        window_batches(windows, run.batch, std::span(mine).subspan(begin, std::min(chunk, mine.size() - begin)), run.options);
    std::vector<Stream> streams = run_by_layer(forward, source, chunk_batches, [&](std::size_t i, std::int64_t) {
      progress.advance(chunk_batches[i].B * S);
    });
    finish(chunk_batches, streams);
  }
  progress.finish();
  return result;
}

}  // namespace dume
