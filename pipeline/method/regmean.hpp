// RegMean shared weights (Jin et al., 2023, "Dataless Knowledge Fusion by Merging Weights of
// Language Models"): each shared linear layer is the least-squares merge of the experts' layers on
// their own inputs, W = (sum_i W_i G_i) (sum_i G_i)^{-1}, where G_i = X_i^T X_i sums expert i's
// inputs to that layer over its calibration tokens, off-diagonals scaled by 0.9 as RegMean does
// (so the sum stays positive definite). The layers are q, k, v (one input), o and the LM head
// (unless tied to the embeddings); embeddings, norms and biases are averaged.
#pragma once

#include <Eigen/Core>
#include <span>
#include <vector>

#include "hf_checkpoint.hpp"
#include "corpus.hpp"
#include "merge_config.hpp"
#include "model.hpp"

namespace dume {

inline constexpr double kRegmeanOffDiagonal = 0.9;

// One linear layer's RegMean merge from each expert's weight [out, in] and Gram matrix [in, in]
// (full symmetric, before the off-diagonal scaling). Throws `where` when the summed Grams are
// not positive definite.
Eigen::MatrixXd regmean_merge(const std::vector<Eigen::MatrixXd>& weights, const std::vector<Eigen::MatrixXd>& grams,
                              const std::string& where);

// Collective: each expert's own dense forward over its calibration windows (truncated to
// router.context_tokens, held-out batches left out; batch i on rank i mod ranks), the Grams
// summed on rank 0, the merged layers broadcast and rounded to dtype.
SharedWeights regmean_shared_weights(const MergeConfig& config, const std::vector<const HfCheckpoint*>& experts,
                                     std::span<const CorpusWindows> windows, DType dtype);

}  // namespace dume
