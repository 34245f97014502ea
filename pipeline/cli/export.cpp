// `dume export`: a DUME MoE as a Hugging Face Mixtral checkpoint, for the inference engines
// users already run (transformers, vLLM, SGLang, llama.cpp).
#include <algorithm>

#include "commands.hpp"
#include "merge_config.hpp"
#include "mixtral.hpp"

namespace dume::cli {

void add_export(CLI::App& app) {
  auto* cmd = app.add_subcommand("export", "Write a DUME MoE as a Hugging Face checkpoint (MixtralForCausalLM)");
  struct Options {
    std::string moe, output, format = "hf-mixtral", dtype, shard_size = "5GB", layout = "fused", tokenizer;
    bool force = false;
  };
  auto o = std::make_shared<Options>();
  cmd->add_option("moe", o->moe, "The MoE directory (moe.h5)")->required();
  cmd->add_option("--output", o->output, "The checkpoint directory to write")->required();
  cmd->add_option("--format", o->format, "Output format")->capture_default_str()->check(CLI::IsMember({"hf-mixtral"}));
  cmd->add_option("--dtype", o->dtype, "Weight dtype: bf16 | f16 | f32 (default: the MoE's; routers stay f32)")
      ->check(CLI::IsMember({"bf16", "f16", "f32"}));
  cmd->add_option("--shard-size", o->shard_size, "Largest safetensors shard, e.g. 5GB, 500MiB")->capture_default_str();
  cmd->add_option("--layout", o->layout,
                  "fused: transformers 5's mlp.experts.gate_up_proj/down_proj; per-expert: the original "
                  "block_sparse_moe.experts.{e}.w1/w2/w3")
      ->capture_default_str()
      ->check(CLI::IsMember({"fused", "per-expert"}));
  cmd->add_option("--tokenizer", o->tokenizer,
                  "Directory to copy tokenizer files from (default: the first expert's checkpoint)");
  cmd->add_flag("--force", o->force, "Replace the output directory if it exists");
  const auto stages = add_stages_option(cmd);
  cmd->callback([o, stages] {
    ExportOptions options;
    if (!o->dtype.empty()) options.dtype = weight_dtype_from_name(o->dtype);
    options.shard_bytes = parse_size(o->shard_size);
    options.layout = o->layout == "fused" ? MixtralLayout::fused : MixtralLayout::per_expert;
    if (!o->tokenizer.empty()) options.tokenizer = o->tokenizer;
    options.stages = std::max(1, *stages);
    run_job([&] { export_mixtral(o->moe, o->output, options, o->force); });
  });
}

}  // namespace dume::cli
