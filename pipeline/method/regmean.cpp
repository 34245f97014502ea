#include "regmean.hpp"

#include <Eigen/Cholesky>

#include "comm.hpp"
#include "forward.hpp"
#include "layer_stream.hpp"
#include "outputs.hpp"
#include "rank_backend.hpp"
#include "shared_weights.hpp"
#include "progress.hpp"
#include "statistics.hpp"

namespace dume {

RegmeanSolver::RegmeanSolver(const std::vector<Eigen::MatrixXd>& grams, const std::string& where) {
  const Eigen::Index in = grams.at(0).rows();
  Eigen::MatrixXd sum = Eigen::MatrixXd::Zero(in, in);
  for (const Eigen::MatrixXd& gram : grams) {
    Eigen::MatrixXd g = kRegmeanOffDiagonal * gram;
    g.diagonal() = gram.diagonal();
    sum += g;
    scaled_.push_back(std::move(g));
  }
  factor_.compute(sum);
  if (factor_.info() != Eigen::Success || !(factor_.matrixLLT().diagonal().minCoeff() > 0))
    throw Error(where + ": the experts' inputs are degenerate (their Gram matrix is singular); use shared: average");
}

Eigen::MatrixXd RegmeanSolver::merge(const std::vector<Eigen::MatrixXd>& rows) const {
  Eigen::MatrixXd weighted = Eigen::MatrixXd::Zero(rows.at(0).rows(), rows.at(0).cols());
  for (std::size_t i = 0; i < rows.size(); ++i) weighted += rows[i] * scaled_.at(i);
  return factor_.solve(weighted.transpose()).transpose();  // the Gram is symmetric
}

Eigen::MatrixXd regmean_merge(const std::vector<Eigen::MatrixXd>& weights, const std::vector<Eigen::MatrixXd>& grams,
                              const std::string& where) {
  return RegmeanSolver(grams, where).merge(weights);
}

namespace {

using Input = ForwardOptions::SharedInput;

// The dataset of expert e's Gram `kind` (attention, output: per layer; head).
std::string gram_dataset(std::size_t e, const std::string& kind) { return "/" + std::to_string(e) + "/" + kind; }

// One expert's Gram sums on the backend, accumulated over its batches layer by layer:
// stats_accumulate sums [x 1]^T [x 1] (upper triangle); the Gram is its top-left block.
void accumulate_grams(const HfCheckpoint& checkpoint, const CorpusWindows& windows, const MergeConfig& config,
                      Backend& backend, bool head, std::int64_t chunk_batches, const std::string& name,
                      std::vector<Buffer64>& attention, std::vector<Buffer64>& output, Buffer64& head_sum) {
  const int rank = mpi_rank(), ranks = mpi_size();
  const ModelConfig& c = checkpoint.config();
  const std::int64_t L = c.num_layers;
  const auto S = static_cast<std::int64_t>(windows.length());
  const std::int64_t C = std::min(config.router.context_tokens, S), per_batch = config.calibration.batch_sequences;
  const auto count = static_cast<std::int64_t>(windows.count());
  const std::int64_t batches = batch_count(windows, per_batch);
  const std::vector<std::int64_t> mine =
      rank_share(batches_to_run(batches, heldout_batches(batches, config.calibration.heldout_fraction)), rank, ranks);
  const auto buffer = [&](std::int64_t width) { return backend.alloc64(static_cast<std::size_t>((width + 1) * (width + 1))); };
  for (std::int64_t l = 0; l < L; ++l) {
    attention.push_back(buffer(c.hidden_size));
    output.push_back(buffer(c.q_dim()));
  }
  head_sum = buffer(head ? c.hidden_size : 0);
  ForwardOptions options;
  options.context_tokens = C;
  options.logits = head;
  options.on_shared_input = [&](Input which, std::int64_t layer, const float* x, std::int64_t T) {
    if (which == Input::attention) backend.stats_accumulate(x, T, c.hidden_size, attention[static_cast<std::size_t>(layer)].data());
    if (which == Input::attention_output) backend.stats_accumulate(x, T, c.q_dim(), output[static_cast<std::size_t>(layer)].data());
    if (which == Input::lm_head && head) backend.stats_accumulate(x, T, c.hidden_size, head_sum.data());
  };
  Model dense = empty_model(c, 1);
  Forward forward(dense, backend);
  const LayerSource source = stream_layers(dense, forward, checkpoint_layers(checkpoint));
  std::int64_t tokens = 0;
  for (const std::int64_t b : mine) tokens += std::min(per_batch, count - b * per_batch) * C;
  Progress progress("regmean " + name, tokens * L, "token-layers", rank == 0);
  const auto chunk = static_cast<std::size_t>(std::max<std::int64_t>(1, chunk_batches));
  for (std::size_t begin = 0; begin < mine.size(); begin += chunk) {
    const std::vector<Batch> runs =
        window_batches(windows, per_batch, std::span(mine).subspan(begin, std::min(chunk, mine.size() - begin)), options);
    std::vector<Stream> streams =
        run_by_layer(forward, source, runs, [&](std::size_t i, std::int64_t) { progress.advance(runs[i].B * C); });
    if (!head) continue;
    source.head();  // the LM head's input is the final norm's output
    for (Stream& stream : streams) forward.finish(stream, options);
    source.layer(-1);
  }
  progress.finish();
}

}  // namespace

RegmeanGrams::RegmeanGrams(const MergeConfig& config, const std::vector<const HfCheckpoint*>& experts,
                           std::span<const CorpusWindows> windows, std::int64_t chunk_batches)
    : experts_(experts) {
  const ModelConfig& c = experts.at(0)->config();
  const bool head = !c.tie_word_embeddings;
  for (std::int64_t l = 0; l < c.num_layers; ++l) {
    const std::string layer = std::to_string(l);
    for (const auto name : {hf::q_proj, hf::k_proj, hf::v_proj})
      gram_of_[hf::layer(l, name)] = {"attention" + layer, c.hidden_size};
    gram_of_[hf::layer(l, hf::o_proj)] = {"output" + layer, c.q_dim()};
  }
  if (head) gram_of_[std::string(hf::lm_head)] = {"head", c.hidden_size};

  const bool root = mpi_rank() == 0;
  const std::filesystem::path path = temporary_name(config.output.path).string() + ".regmean.h5";
  H5Id out;
  collective_phase([&] {
    if (root) out = h5::create_file(path);
  });
  auto backend = rank_backend(config.backend, config.threads);
  std::string error;  // rank 0's failure to write, raised on every rank once the reductions are done
  try {
    for (std::size_t e = 0; e < experts.size(); ++e) {
      std::vector<Buffer64> attention, output;
      Buffer64 head_sum;
      accumulate_grams(*experts[e], windows[e], config, *backend, head, chunk_batches, config.experts.at(e).name, attention,
                       output, head_sum);
      // Each sum reduced to rank 0 and written there as the full symmetric Gram, then freed.
      const auto keep = [&](Buffer64& sum, std::int64_t width, const std::string& kind) {
        const std::int64_t n = width + 1;
        std::vector<double> host(static_cast<std::size_t>(n * n));
        backend->download(sum.data(), host);
        sum = Buffer64();
        reduce_sum(host);
        if (!root || !error.empty()) return;
        MatrixXdRow full = Eigen::Map<const MatrixXdRow>(host.data(), n, n);
        symmetrize(full);
        const MatrixXdRow gram = full.topLeftCorner(width, width);
        const std::int64_t shape[] = {width, width};
        try {
          h5::write_dataset(out.get(), gram_dataset(e, kind), DType::F64, shape, gram.data());
        } catch (const std::exception& problem) {
          error = problem.what();
        }
      };
      for (std::int64_t l = 0; l < c.num_layers; ++l) {
        keep(attention[static_cast<std::size_t>(l)], c.hidden_size, "attention" + std::to_string(l));
        keep(output[static_cast<std::size_t>(l)], c.q_dim(), "output" + std::to_string(l));
      }
      if (head) keep(head_sum, c.hidden_size, "head");
    }
    collective_phase([&] {
      if (!error.empty()) throw Error(error);
      if (!root) return;
      h5_check(H5Fclose(out.release()), path.string() + ": cannot close (disk full?)");
      file_ = std::make_unique<H5Id>(h5::open_file(path));
    });
  } catch (...) {
    if (root) std::filesystem::remove(path);
    throw;
  }
  if (root) std::filesystem::remove(path);  // readable through the open file until the merge is done
}

RegmeanGrams::~RegmeanGrams() = default;

std::vector<float> RegmeanGrams::merged(const std::string& hf_name, const std::vector<std::int64_t>& shape,
                                        DType dtype) const {
  DUME_ASSERT(file_ && shape.size() == 2);
  const auto& [kind, width] = gram_of_.at(hf_name);
  const std::int64_t out_rows = shape[0], in = shape[1];
  std::vector<Eigen::MatrixXd> grams;  // E in^2 doubles: 268 MB for two 8B experts
  for (std::size_t e = 0; e < experts_.size(); ++e) {
    const std::int64_t gram_shape[] = {width, width};
    const std::vector<double> gram = h5::read_f64(file_->get(), gram_dataset(e, kind), gram_shape);
    grams.push_back(Eigen::Map<const MatrixXdRow>(gram.data(), width, width));
  }
  std::vector<float> values(static_cast<std::size_t>(out_rows * in));
  try {
    const RegmeanSolver solver(grams, hf_name);
    // The LM head by blocks of rows (16.8 GB whole for two 8B experts).
    for (std::int64_t r0 = 0; r0 < out_rows; r0 += RegmeanSolver::kBlockRows) {
      const std::int64_t rows = std::min(RegmeanSolver::kBlockRows, out_rows - r0);
      std::vector<Eigen::MatrixXd> weights;
      for (const HfCheckpoint* expert : experts_) {
        Matrix w(rows, in);
        expert->read_slice(hf_name, shape, static_cast<std::size_t>(r0 * in), {w.data(), static_cast<std::size_t>(w.size())});
        expert->release(hf_name, static_cast<std::size_t>(r0 * in), static_cast<std::size_t>(w.size()));
        weights.push_back(w.cast<double>());
      }
      const Matrix merged = solver.merge(weights).cast<float>();
      std::copy(merged.data(), merged.data() + merged.size(), values.begin() + r0 * in);
    }
  } catch (const Error& e) {
    throw Error(std::string("shared: regmean: ") + e.what());
  }
  for (const HfCheckpoint* expert : experts_) expert->release(hf_name);  // the pages at block edges
  round_through(dtype, values);
  return values;
}

}  // namespace dume
