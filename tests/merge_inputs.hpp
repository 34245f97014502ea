// Inputs of a small real merge for tests: E tiny Llama experts sharing an architecture (one
// base, perturbed shared weights, distinct MLPs) saved as checkpoints, one token corpus per
// domain with its own token distribution, and a YAML config pointing at them.
#pragma once

#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "model.hpp"

namespace dume::test {

// Llama's shape, or Qwen3's: q_norm / k_norm on each head, head_dim 16 (4 heads x 16 != 48).
inline ModelConfig tiny_config(std::int64_t layers = 3, Architecture architecture = Architecture::llama) {
  ModelConfig c;
  c.architecture = architecture;
  c.architecture_name = architecture == Architecture::qwen3 ? "Qwen3ForCausalLM" : "LlamaForCausalLM";
  c.vocab_size = 64;
  c.hidden_size = 48;
  c.intermediate_size = 96;
  c.num_layers = layers;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 12;
  c.max_position_embeddings = 256;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  if (architecture == Architecture::qwen3) {
    c.qk_norm = true;
    c.head_dim = 16;
  }
  c.json_text = model_config_to_json(c);
  return c;
}

// Expert e: the base's shared weights plus noise, and its own random MLPs.
inline Model tiny_expert(int e, std::int64_t layers = 3, Architecture architecture = Architecture::llama) {
  const ModelConfig c = tiny_config(layers, architecture);
  Model base = random_model(c, 1);
  const Model own = random_model(c, 100 + static_cast<std::uint64_t>(e));
  std::mt19937_64 rng(1000 + static_cast<std::uint64_t>(e));
  std::normal_distribution<float> noise(0.0f, 0.02f);
  for_each_shared_tensor(c, base.shared, [&](const std::string&, const std::string&, const std::vector<std::int64_t>&,
                                             auto& values) {
    for (Eigen::Index i = 0; i < values.size(); ++i) values.data()[i] += noise(rng);
  });
  base.experts = own.experts;
  return base;
}

// Domain e's tokens: mostly from its own band of 24 ids, sometimes anywhere.
inline std::string tiny_corpus(int e, std::size_t n, std::uint64_t seed = 77) {
  std::mt19937_64 rng(seed + static_cast<std::uint64_t>(e));
  std::string bytes(n, '\0');
  for (auto& b : bytes)
    b = static_cast<char>(rng() % 8 == 0 ? rng() % 64 : (static_cast<std::uint64_t>(e) * 20 + rng() % 24) % 64);
  return bytes;
}

// Writes experts d0.. with calibration and test corpora into dir; returns the YAML of a merge
// writing to `output` (and evaluating into `output`/eval).
inline std::string write_merge_inputs(const std::filesystem::path& dir, int E, DType dtype,
                                      const std::string& output = "out", std::size_t corpus_bytes = 4096,
                                      std::int64_t layers = 3, Architecture architecture = Architecture::llama) {
  std::string yaml = "experts:\n";
  for (int e = 0; e < E; ++e) {
    const std::string name = "d" + std::to_string(e);
    save_dense_checkpoint(tiny_expert(e, layers, architecture), dtype, dir / name);
    std::ofstream(dir / (name + ".bin"), std::ios::binary) << tiny_corpus(e, corpus_bytes);
    std::ofstream(dir / (name + ".test"), std::ios::binary) << tiny_corpus(e, corpus_bytes / 2, 99);
    yaml += "  - {name: " + name + ", checkpoint: " + name + ", calibration: {path: " + name +
            ".bin, format: text-bytes}, test: {path: " + name + ".test, format: text-bytes}}\n";
  }
  yaml += "router: {lambda: 0.01, context_tokens: 24}\n"
          "calibration: {sequence_length: 32, batch_sequences: 3}\n"
          "output: " + output + "\n"
          "compute: {threads: 1}\n";
  return yaml;
}

}  // namespace dume::test
