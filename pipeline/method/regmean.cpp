#include "regmean.hpp"

#include <Eigen/Cholesky>

#include "comm.hpp"
#include "forward.hpp"
#include "rank_backend.hpp"
#include "shared_weights.hpp"
#include "progress.hpp"
#include "statistics.hpp"

namespace dume {

Eigen::MatrixXd regmean_merge(const std::vector<Eigen::MatrixXd>& weights, const std::vector<Eigen::MatrixXd>& grams,
                              const std::string& where) {
  const Eigen::Index in = grams.at(0).rows();
  Eigen::MatrixXd gram = Eigen::MatrixXd::Zero(in, in), weighted = Eigen::MatrixXd::Zero(weights.at(0).rows(), in);
  for (std::size_t i = 0; i < grams.size(); ++i) {
    Eigen::MatrixXd g = kRegmeanOffDiagonal * grams[i];
    g.diagonal() = grams[i].diagonal();
    gram += g;
    weighted += weights[i] * g;
  }
  const Eigen::LLT<Eigen::MatrixXd> cholesky(gram);
  if (cholesky.info() != Eigen::Success || !(cholesky.matrixLLT().diagonal().minCoeff() > 0))
    throw Error(where + ": the experts' inputs are degenerate (their Gram matrix is singular); use shared: average");
  return cholesky.solve(weighted.transpose()).transpose();  // the Gram is symmetric
}

namespace {

using Input = ForwardOptions::SharedInput;

// One expert's Gram matrices on rank 0 (full symmetric): per layer the attention input's and
// the attention output's, then the LM head input's.
struct Grams {
  std::vector<Eigen::MatrixXd> attention, output;
  Eigen::MatrixXd head;
};

Grams expert_grams(const HfCheckpoint& checkpoint, const CorpusWindows& windows, const MergeConfig& config,
                   Backend& backend, bool head, const std::string& name) {
  const int rank = mpi_rank(), ranks = mpi_size();
  const Model dense = load_dense_model(checkpoint);
  const ModelConfig& c = dense.config;
  const std::int64_t L = c.num_layers;
  const auto S = static_cast<std::int64_t>(windows.length());
  const std::int64_t C = std::min(config.router.context_tokens, S), per_batch = config.calibration.batch_sequences;
  const auto count = static_cast<std::int64_t>(windows.count());
  const std::int64_t batches = batch_count(windows, per_batch);
  const std::vector<std::int64_t> mine =
      rank_share(batches_to_run(batches, heldout_batches(batches, config.calibration.heldout_fraction)), rank, ranks);

  // stats_accumulate sums [x 1]^T [x 1] (upper triangle); the Gram is its top-left block.
  const auto buffer = [&](std::int64_t width) { return backend.alloc64(static_cast<std::size_t>((width + 1) * (width + 1))); };
  std::vector<Buffer64> attention, output;
  for (std::int64_t l = 0; l < L; ++l) {
    attention.push_back(buffer(c.hidden_size));
    output.push_back(buffer(c.q_dim()));
  }
  Buffer64 head_sum = buffer(head ? c.hidden_size : 0);
  ForwardOptions options;
  options.context_tokens = C;
  options.logits = head;
  options.on_shared_input = [&](Input which, std::int64_t layer, const float* x, std::int64_t T) {
    if (which == Input::attention) backend.stats_accumulate(x, T, c.hidden_size, attention[static_cast<std::size_t>(layer)].data());
    if (which == Input::attention_output) backend.stats_accumulate(x, T, c.q_dim(), output[static_cast<std::size_t>(layer)].data());
    if (which == Input::lm_head && head) backend.stats_accumulate(x, T, c.hidden_size, head_sum.data());
  };
  Forward forward(dense, backend);
  std::int64_t tokens = 0;
  for (const std::int64_t b : mine) tokens += std::min(per_batch, count - b * per_batch) * C;
  Progress progress("regmean " + name, tokens, "tokens", rank == 0);
  for (const std::int64_t b : mine) {
    const std::int64_t B = std::min(per_batch, count - b * per_batch);
    forward.run(windows.tokens().subspan(static_cast<std::size_t>(b * per_batch * S), static_cast<std::size_t>(B * S)), B, S,
                options);
    progress.advance(B * C);
  }
  progress.finish();

  const auto gather = [&](const Buffer64& sum, std::int64_t width) {
    const std::int64_t n = width + 1;
    std::vector<double> host(static_cast<std::size_t>(n * n));
    backend.download(sum.data(), host);
    reduce_sum(host);
    MatrixXdRow full = Eigen::Map<const MatrixXdRow>(host.data(), n, n);
    symmetrize(full);
    return Eigen::MatrixXd(full.topLeftCorner(width, width));
  };
  Grams grams;
  for (std::int64_t l = 0; l < L; ++l) {
    grams.attention.push_back(gather(attention[static_cast<std::size_t>(l)], c.hidden_size));
    grams.output.push_back(gather(output[static_cast<std::size_t>(l)], c.q_dim()));
  }
  if (head) grams.head = gather(head_sum, c.hidden_size);
  return grams;
}

}  // namespace

SharedWeights regmean_shared_weights(const MergeConfig& config, const std::vector<const HfCheckpoint*>& experts,
                                     std::span<const CorpusWindows> windows, DType dtype) {
  SharedWeights merged = average_shared_weights(experts, dtype);  // embeddings, norms, biases
  const ModelConfig& c = experts.at(0)->config();
  const bool head = merged.lm_head.size() > 0;
  auto backend = rank_backend(config.backend, config.threads);
  std::vector<Grams> grams;
  for (std::size_t i = 0; i < experts.size(); ++i)
    grams.push_back(expert_grams(*experts[i], windows[i], config, *backend, head, config.experts.at(i).name));

  std::string error;  // rank 0's, rethrown on every rank after the broadcasts
  // One layer: each expert's tensor `hf_name` (shaped as `out`) and Gram, merged on rank 0.
  const auto merge_into = [&](Matrix& out, const std::string& hf_name,
                              const std::function<const Eigen::MatrixXd&(const Grams&)>& gram) {
    if (mpi_rank() == 0 && error.empty()) try {
        std::vector<Eigen::MatrixXd> weights, inputs;
        const std::int64_t shape[] = {out.rows(), out.cols()};
        for (std::size_t i = 0; i < experts.size(); ++i) {
          Matrix w(out.rows(), out.cols());
          experts[i]->read(hf_name, shape, {w.data(), static_cast<std::size_t>(w.size())});
          weights.push_back(w.cast<double>());
          inputs.push_back(gram(grams[i]));
        }
        out = regmean_merge(weights, inputs, hf_name).cast<float>();
        round_through(dtype, {out.data(), static_cast<std::size_t>(out.size())});
      } catch (const std::exception& e) {
        error = e.what();
      }
    broadcast(std::span<float>(out.data(), static_cast<std::size_t>(out.size())));
  };
  for (std::int64_t l = 0; l < c.num_layers; ++l) {
    const auto i = static_cast<std::size_t>(l);
    const auto attention_gram = [i](const Grams& g) -> const Eigen::MatrixXd& { return g.attention[i]; };
    AttentionWeights& a = merged.layers[i].attention;
    merge_into(a.q, hf::layer(l, hf::q_proj), attention_gram);
    merge_into(a.k, hf::layer(l, hf::k_proj), attention_gram);
    merge_into(a.v, hf::layer(l, hf::v_proj), attention_gram);
    merge_into(a.o, hf::layer(l, hf::o_proj), [i](const Grams& g) -> const Eigen::MatrixXd& { return g.output[i]; });
  }
  if (head) merge_into(merged.lm_head, std::string(hf::lm_head), [](const Grams& g) -> const Eigen::MatrixXd& { return g.head; });
  collective_phase([&] {
    if (!error.empty()) throw Error("shared: regmean: " + error);
  });
  return merged;
}

}  // namespace dume
