#include "memory_plan.hpp"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "comm.hpp"
#include "error.hpp"
#include "grid.hpp"
#include "layer_stream.hpp"
#include "regmean.hpp"
#include "resources.hpp"

namespace dume {

namespace {

std::string bytes(std::int64_t n) { return format_bytes(static_cast<double>(n)); }

// What the process holds besides the plan's items (code, libraries, MPI, the corpora's tokens):
// as measured when its first plan is made (once, so that every plan of a process agrees), and
// at least what a bare `dume` holds here, about 0.1 GB.
std::int64_t process_bytes() {
  static const std::int64_t measured = std::max<std::int64_t>(static_cast<std::int64_t>(resident_bytes()), 100 << 20);
  return measured;
}

}  // namespace

std::int64_t MemoryPlan::peak() const {
  std::int64_t most = 0;
  for (const auto& [phase, items] : phases) {
    std::int64_t sum = 0;
    for (const auto& [what, size] : items) sum += size;
    most = std::max(most, sum);
  }
  return most;
}

std::string MemoryPlan::describe() const {
  std::ostringstream out;
  out << "# memory per rank: budget " << bytes(budget) << ", predicted peak " << bytes(peak())
      << (one_pass ? "; each domain's calibration in one pass" : "; chunks of up to " + std::to_string(chunk_rounds) +
                                                                      " batches (" + bytes(round_bytes) + " each)")
      << "\n";
  for (const auto& [phase, items] : phases) {
    std::int64_t sum = 0;
    std::string parts;
    for (const auto& [what, size] : items) {
      sum += size;
      parts += (parts.empty() ? "" : ", ") + what + " " + bytes(size);
    }
    out << "#   " << phase << ": " << bytes(sum) << " (" << parts << ")\n";
  }
  return out.str();
}

MemoryPlan plan_memory(const ModelConfig& c, const MergeConfig& config, std::int64_t experts, DType dtype,
                       std::int64_t batches_per_rank, std::int64_t budget, const StageShare& stage) {
  MemoryPlan plan;
  plan.budget = budget > 0 ? budget : memory_budget_default(mpi_local_size());
  const std::int64_t baseline = process_bytes();
  const std::int64_t D = c.hidden_size, F = c.intermediate_size, V = c.vocab_size, L = c.num_layers, n = D + 1;
  const auto stored = static_cast<std::int64_t>(dtype_size(dtype));
  const CalibrationSettings& cs = config.calibration;
  const std::int64_t C = std::min(config.router.context_tokens, cs.sequence_length);
  const std::int64_t T = cs.batch_sequences * C;  // rows of one batch
  const std::int64_t f32 = 4, f64 = 8;
  const std::int64_t attention = (2 * c.q_dim() * D + 2 * c.kv_dim() * D + 2 * D) * f32;
  const std::int64_t mlp = 3 * D * F * f32;
  // The forward's buffers: x, h, q, attention output, k, v, gate, up (T rows each).
  const std::int64_t workspace = T * (2 * D + 2 * c.q_dim() + 2 * c.kv_dim() + 2 * F) * f32;
  // Held-out MLP inputs while they are collected: one layer's until it goes to disk in one pass,
  // every layer's in chunks.
  const std::int64_t heldout = cs.heldout_fraction > 0 ? std::min<std::int64_t>(cs.heldout_tokens, 1 << 30) * D * f32 : 0;
  plan.round_bytes = T * D * f32;
  // A domain whose batches all fit runs in one pass, holding one layer's statistics (calibrate_domain's
  // layer_done), unless checkpoints are periodic; otherwise in chunks that each run every layer,
  // holding all of its layers'.
  std::vector<std::pair<std::string, std::int64_t>> calibration = {
      {"process", baseline},
      {"statistics of one layer", n * n * f64},
      {"one layer's weights", attention + mlp + mlp / f32 * stored},
      {"forward buffers", workspace + T * D * f32},
      {"one layer's held-out inputs", heldout}};
  const auto sum = [](const std::vector<std::pair<std::string, std::int64_t>>& items) {
    std::int64_t total = 0;
    for (const auto& [what, size] : items) total += size;
    return total;
  };
  // RegMean's forward (shared: regmean) runs in the same chunks, with one expert's Gram sums in
  // place of the statistics: per layer the attention's input and output, and the LM head's.
  const bool regmean_head = config.shared_regmean && !c.tie_word_embeddings;
  const std::int64_t grams = L * (n * n + (c.q_dim() + 1) * (c.q_dim() + 1)) * f64 + (regmean_head ? n * n * f64 : 0);
  std::vector<std::pair<std::string, std::int64_t>> regmean = {
      {"process", baseline},
      {"Gram sums of one expert", grams},
      {"one layer's weights", attention + mlp + mlp / f32 * stored},
      {"forward buffers and a batch's logits", workspace + T * D * f32 + (regmean_head ? 2 * T * V * f32 : 0)}};
  const auto fixed_with = [&](const std::vector<std::pair<std::string, std::int64_t>>& calibrating) {
    return std::max(sum(calibrating), config.shared_regmean ? sum(regmean) : 0);
  };
  auto chunked = calibration;
  const bool staged = stage.stages > 1;  // chunks through the pipeline, the stage's layers' sums
  const std::int64_t held_layers = staged ? stage.layers : L;
  // By stages each layer's upper triangle is kept packed, and the layer being run unpacked.
  const std::int64_t held_statistics = staged ? (held_layers * n * (n + 1) / 2 + n * n) * f64 : L * n * n * f64;
  chunked[1] = {staged ? "statistics of the stage's " + std::to_string(held_layers) + " layers" : "statistics of one domain",
                held_statistics};
  chunked[4] = {staged ? "the stage's held-out inputs" : "every layer's held-out inputs", held_layers * heldout};
  const std::int64_t batches = std::max<std::int64_t>(1, batches_per_rank);
  const std::int64_t one_pass_needs = fixed_with(calibration) + batches * plan.round_bytes;
  const std::int64_t chunks_need = fixed_with(chunked) + plan.round_bytes;
  const bool unsplit = cs.one_pass() && !staged;  // periodic checkpoints need chunks whatever the memory
  plan.one_pass = unsplit && plan.budget >= one_pass_needs;
  if (!plan.one_pass) calibration = chunked;
  const std::int64_t fixed = fixed_with(calibration);
  plan.minimum = unsplit ? std::min(one_pass_needs, chunks_need) : chunks_need;
  if (plan.budget < plan.minimum)
    throw Error("compute.memory " + bytes(plan.budget) + " per rank is too small for this merge: it needs at least " +
                bytes(plan.minimum) +
                (staged ? " (one layer's weights, and the stage's statistics " + bytes(held_statistics) +
                              " with one batch of windows at a time)"
                        : " (one layer's weights, and one domain's statistics " + bytes(held_statistics) +
                              " with one batch of windows at a time or one layer's with all of a rank's at once)"));
  plan.chunk_rounds = (plan.budget - fixed) / plan.round_bytes;
  // By stages the pipeline runs smaller chunks (pipeline_chunk), one resident at a time.
  const std::int64_t streams = (staged ? pipeline_chunk(batches, stage.stages, plan.chunk_rounds)
                                       : std::min(plan.chunk_rounds, batches)) *
                               plan.round_bytes;
  auto calibrating = calibration;
  calibrating.emplace_back("residual streams of a chunk", streams);
  regmean.emplace_back("residual streams of a chunk", streams);
  // Rank 0 merges RegMean's LM head by blocks of rows: each expert's block in f64, their weighted
  // sum, the solution; the Grams, their sum's factor; and the result in f32 and stored.
  const std::int64_t head_rows = std::min(V, RegmeanSolver::kBlockRows);
  const std::int64_t largest_shared = regmean_head ? (experts + 2) * head_rows * D * f64 + (experts + 1) * D * D * f64 +
                                                         V * D * (f32 + stored)
                                                   : V * D * (f32 + stored);
  plan.phases = {{"shared weights", {{"process", baseline}, {"largest tensor as it is computed", largest_shared}}}};
  if (config.shared_regmean) plan.phases.emplace_back("RegMean Grams", regmean);
  plan.phases.emplace_back("calibration", calibrating);
  plan.phases.emplace_back(
      "solve", std::vector<std::pair<std::string, std::int64_t>>{
                   {"process", baseline},
                   {"one layer's statistics of every domain", 3 * experts * n * n * f64},
                   {"one layer's held-out inputs", cs.heldout_fraction > 0 ? experts * cs.heldout_tokens * D * f32 : 0},
                   // Solved as it is written (layer_router), in f64 and its f32 copy.
                   {"one layer's router", experts * D * (config.router.method == RouterMethod::gaussian ? D : 1) * (f64 + f32)}});
  plan.phases.emplace_back("write", std::vector<std::pair<std::string, std::int64_t>>{
                                        {"process", baseline},
                                        {"one tensor (f32 and stored)", std::max(V, F) * D * (f32 + stored)}});
  return plan;
}

MemoryPlan plan_eval_memory(const ModelConfig& c, std::int64_t experts, bool expert_attention, bool gaussian,
                            std::int64_t batch_sequences, std::int64_t sequence_length, std::int64_t batches_per_rank,
                            std::int64_t budget) {
  MemoryPlan plan;
  plan.budget = budget > 0 ? budget : memory_budget_default(mpi_local_size());
  const std::int64_t baseline = process_bytes();
  const std::int64_t D = c.hidden_size, F = c.intermediate_size, V = c.vocab_size, E = experts;
  const std::int64_t T = batch_sequences * sequence_length, f32 = 4;
  // x, h, q, attention output, k, v, gate, up; expert in/out, router logits, Gaussian whitening.
  std::int64_t workspace = T * (2 * D + 2 * c.q_dim() + 2 * c.kv_dim() + 2 * F) * f32;
  if (E > 1) workspace += T * (2 * D + E + (gaussian ? E * D : 0)) * f32;
  // The backend's logits buffer lives through the run; the host's copy only once the head is in,
  // after its stored 16 bits (widened whole) have gone.
  const std::int64_t logits = T * V * f32;
  const std::vector<std::pair<std::string, std::int64_t>> fixed_items = {
      {"process", baseline},
      {"one layer's weights, or the head and a batch's logits",
       std::max(layer_bytes(c, E, expert_attention, gaussian), head_bytes(c) + std::max(V * D * 2, logits))},
      {"forward buffers and the logits buffer", workspace + logits}};
  std::int64_t fixed = 0;
  for (const auto& [what, size] : fixed_items) fixed += size;
  plan.round_bytes = 2 * T * D * f32;  // the residual stream, and (expert attention) its embedding rows until layer 0
  plan.minimum = fixed + plan.round_bytes;
  if (plan.budget < plan.minimum)
    throw Error("compute.memory " + bytes(plan.budget) + " per rank is too small to evaluate this model: it needs at least " +
                bytes(plan.minimum) + " (one layer's weights, one batch's buffers and logits)");
  plan.chunk_rounds = std::min((plan.budget - fixed) / plan.round_bytes, std::max<std::int64_t>(1, batches_per_rank));
  auto items = fixed_items;
  items.emplace_back("residual streams of a chunk", plan.chunk_rounds * plan.round_bytes);
  plan.phases = {{"evaluation", items}};
  return plan;
}

std::int64_t memory_budget_default(int ranks_on_node) {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  std::int64_t kib = 0;
  while (meminfo >> key >> kib)
    if (key == "MemTotal:") break;
  const std::int64_t node = kib * 1024;
  return node / std::max(1, ranks_on_node) / 8 * 7;
}

}  // namespace dume
