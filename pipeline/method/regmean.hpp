// RegMean shared weights (Jin et al., 2023, "Dataless Knowledge Fusion by Merging Weights of
// Language Models"): each shared linear layer is the least-squares merge of the experts' layers on
// their own inputs, W = (sum_i W_i G_i) (sum_i G_i)^{-1}, where G_i = X_i^T X_i sums expert i's
// inputs to that layer over its calibration tokens, off-diagonals scaled by 0.9 as RegMean does
// (so the sum stays positive definite). The layers are q, k, v (one input), o and the LM head
// (unless tied to the embeddings); embeddings, norms and biases are averaged.
#pragma once

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "hdf5_util.hpp"
#include "hf_checkpoint.hpp"
#include "corpus.hpp"
#include "merge_config.hpp"
#include "model.hpp"

namespace dume {

inline constexpr double kRegmeanOffDiagonal = 0.9;

// One linear layer's RegMean merge from each expert's Gram matrix [in, in] (full symmetric,
// before the off-diagonal scaling), applied to their weights [out, in] a block of rows at a time
// (each output row depends only on the experts' same row). Throws `where` when the summed Grams
// are not positive definite.
class RegmeanSolver {
 public:
  RegmeanSolver(const std::vector<Eigen::MatrixXd>& grams, const std::string& where);
  // The merged rows from the experts' same rows. Blocks of kBlockRows give the bits of the whole
  // matrix at once (a multiple of 48 rows: Eigen's kernels tile rows by 24 or fewer; checked by
  // SharedStrategies tests), and hold (E + 2) x 8160 x in doubles (1.1 GB for two 8B LM heads).
  Eigen::MatrixXd merge(const std::vector<Eigen::MatrixXd>& rows) const;
  static constexpr std::int64_t kBlockRows = 170 * 48;

 private:
  std::vector<Eigen::MatrixXd> scaled_;  // the Grams, off-diagonals scaled
  Eigen::LLT<Eigen::MatrixXd> factor_;   // of their sum
};

// The whole layer at once.
Eigen::MatrixXd regmean_merge(const std::vector<Eigen::MatrixXd>& weights, const std::vector<Eigen::MatrixXd>& grams,
                              const std::string& where);

// The Gram matrices RegMean merges with. Collective: each expert's own dense forward over its
// calibration windows (truncated to router.context_tokens, held-out batches left out; batch i on
// rank i mod ranks), read one layer at a time (layer_stream.hpp) over chunks of `chunk_batches`
// batches; the sums are reduced to rank 0, which moves each expert's into an unlinked scratch
// file beside the output (L (D^2 + q_dim^2) doubles: 8.6 GB per expert at 8B) and reads them
// back one layer at a time to merge.
class RegmeanGrams {
 public:
  RegmeanGrams(const MergeConfig& config, const std::vector<const HfCheckpoint*>& experts,
               std::span<const CorpusWindows> windows, std::int64_t chunk_batches);
  ~RegmeanGrams();
  RegmeanGrams(const RegmeanGrams&) = delete;
  RegmeanGrams& operator=(const RegmeanGrams&) = delete;

  // Whether RegMean merges the shared tensor `hf_name`: q, k, v, o, and the LM head unless tied
  // (the rest is averaged).
  bool merges(const std::string& hf_name) const { return gram_of_.contains(hf_name); }
  // Rank 0: that tensor merged over the experts, rounded to dtype.
  std::vector<float> merged(const std::string& hf_name, const std::vector<std::int64_t>& shape, DType dtype) const;

 private:
  std::vector<const HfCheckpoint*> experts_;
  std::unordered_map<std::string, std::pair<std::string, std::int64_t>> gram_of_;  // tensor -> (dataset, width)
  std::unique_ptr<H5Id> file_;  // rank 0's scratch file
};

}  // namespace dume
