// `dume inspect DIR`: what a Hugging Face checkpoint holds (architecture, sizes, dtypes,
// parameters) and, on request, every tensor.
#include <cstdio>
#include <map>

#include "hf_checkpoint.hpp"
#include "commands.hpp"
#include "hdf5_util.hpp"
#include "moe_file.hpp"

namespace dume::cli {

namespace {

void inspect_checkpoint(const std::string& dir, bool list_tensors) {
  const HfCheckpoint checkpoint(dir);
  const ModelConfig& c = checkpoint.config();
  std::map<std::string, int> dtype_counts;
  std::size_t bytes = 0, tensors = 0;
  long long stored_parameters = 0;
  for (const auto& file : checkpoint.files())
    for (const auto& t : file.tensors()) {
      ++dtype_counts[std::string(to_string(t.dtype))];
      bytes += t.end - t.begin;
      stored_parameters += static_cast<long long>(t.numel());
      ++tensors;
    }
  std::string dtypes;
  for (const auto& [name, count] : dtype_counts) dtypes += (dtypes.empty() ? "" : ", ") + name + " x " + std::to_string(count);

  std::printf("checkpoint      %s\n", dir.c_str());
  std::printf("architecture    %s (%s)\n", c.architecture_name.c_str(), to_string(c.architecture).c_str());
  std::printf("layers          %lld\n", static_cast<long long>(c.num_layers));
  std::printf("hidden size     %lld (MLP %lld, vocab %lld)\n", static_cast<long long>(c.hidden_size),
              static_cast<long long>(c.intermediate_size), static_cast<long long>(c.vocab_size));
  std::printf("attention       %lld heads, %lld KV heads, head_dim %lld, biases q/k/v %s, o %s\n",
              static_cast<long long>(c.num_heads), static_cast<long long>(c.num_kv_heads),
              static_cast<long long>(c.head_dim), c.qkv_bias ? "yes" : "no", c.o_bias ? "yes" : "no");
  std::printf("rope            theta %g", c.rope_theta);
  if (c.rope_scaling.llama3)
    std::printf(", llama3 scaling x%g from %lld positions", c.rope_scaling.factor,
                static_cast<long long>(c.rope_scaling.original_max_position_embeddings));
  std::printf("\n");
  std::printf("embeddings      %s\n", c.tie_word_embeddings ? "tied (lm_head = embed_tokens)" : "untied");
  if (c.num_experts)
    std::printf("experts         %lld per layer, top-%lld (%s layout)\n", static_cast<long long>(c.num_experts),
                static_cast<long long>(c.experts_per_token),
                checkpoint.has(hf::layer(0, "mlp.experts.gate_up_proj")) ? "fused" : "per-expert");
  std::printf("dtype           %s (%s)\n", std::string(to_string(checkpoint.dtype())).c_str(), dtypes.c_str());
  std::printf("parameters      %s (%zu tensors in %zu file%s, %.1f MB)\n", thousands(stored_parameters).c_str(), tensors,
              checkpoint.files().size(), checkpoint.files().size() == 1 ? "" : "s", static_cast<double>(bytes) / 1e6);
  if (!list_tensors) return;
  std::printf("\n%-56s %-5s %-16s %s\n", "# tensor", "dtype", "shape", "file");
  for (const auto& file : checkpoint.files())
    for (const auto& t : file.tensors())
      std::printf("%-56s %-5s %-16s %s\n", t.name.c_str(), std::string(to_string(t.dtype)).c_str(),
                  shape_string(t.shape).c_str(), file.path().filename().c_str());
}

void inspect_moe(const std::string& dir) {
  const MoeInfo info = read_moe_info(dir);
  const ModelConfig& c = info.config;
  std::string names;
  for (const auto& n : info.experts) names += (names.empty() ? "" : ", ") + n;
  std::printf("moe             %s (DUME mixture of experts)\n", dir.c_str());
  std::printf("architecture    %s, %lld layers, hidden %lld, MLP %lld, vocab %lld\n", c.architecture_name.c_str(),
              static_cast<long long>(c.num_layers), static_cast<long long>(c.hidden_size),
              static_cast<long long>(c.intermediate_size), static_cast<long long>(c.vocab_size));
  std::printf("experts         %zu: %s\n", info.experts.size(), names.c_str());
  const auto number = [](double v) {
    char text[32];
    std::snprintf(text, sizeof text, "%g", v);
    return std::string(text);
  };
  std::string lambda = number(info.router.lambda);
  if (info.router.auto_lambda) {
    lambda = "auto (per layer:";
    for (double v : info.router.layer_lambda) lambda += " " + number(v);
    lambda += ")";
  }
  std::printf("router          %s: lambda %s, temperature %g%s, top_k %d, context_tokens %lld, bias %s, routing %s\n",
              to_string(info.router.method).c_str(), lambda.c_str(), info.router.temperature,
              info.router.auto_temperature ? " (auto)" : "", info.router.top_k,
              static_cast<long long>(info.router.context_tokens), info.router.bias ? "yes" : "no",
              info.router.routing.to_string().c_str());
  std::printf("weights         %s; shared weights: %s (hash %s)%s\n", h5::dtype_attribute(info.dtype).c_str(),
              info.shared.c_str(), info.shared_hash.c_str(),
              info.router.expert_attention ? "; each expert's own attention, mixed by the routing decision" : "");
  std::uintmax_t total = 0;
  for (const auto& f : info.shard_files) total += std::filesystem::file_size(std::filesystem::path(dir) / f);
  std::printf("shards          %zu files, %.1f MB\n", info.shard_files.size(), static_cast<double>(total) / 1e6);
  for (const auto& f : info.shard_files)
    std::printf("                %s  %.1f MB\n", f.c_str(),
                static_cast<double>(std::filesystem::file_size(std::filesystem::path(dir) / f)) / 1e6);
  const auto stats_path = std::filesystem::path(dir) / "stats.h5";
  if (std::filesystem::exists(stats_path)) {
    const Statistics stats = read_statistics(stats_path);
    std::printf("statistics      stats.h5:");
    for (const auto& d : stats.domains) {
      std::printf(" %s %s tokens", d.name.c_str(), thousands(d.tokens).c_str());
      if (!d.heldout.empty()) std::printf(" (+%lld held out)", static_cast<long long>(d.heldout[0].rows()));
      std::printf(";");
    }
    std::printf("\n");
  }
}

}  // namespace

void add_inspect(CLI::App& app) {
  auto* cmd = app.add_subcommand("inspect", "Summarize a Hugging Face checkpoint or a DUME MoE directory");
  auto dir = std::make_shared<std::string>();
  auto list = std::make_shared<bool>(false);
  cmd->add_option("dir", *dir, "Checkpoint directory (config.json + safetensors) or MoE directory (moe.h5)")->required();
  cmd->add_flag("--tensors", *list, "List every tensor with dtype, shape and file");
  cmd->callback([dir, list] {
    if (std::filesystem::exists(std::filesystem::path(*dir) / "moe.h5"))
      inspect_moe(*dir);
    else
      inspect_checkpoint(*dir, *list);
  });
}

}  // namespace dume::cli
