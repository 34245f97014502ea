#include "mixtral.hpp"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <utility>

#include "comm.hpp"
#include "error.hpp"
#include "grid.hpp"
#include "hdf5_util.hpp"
#include "merge_config.hpp"
#include "moe_file.hpp"
#include "outputs.hpp"
#include "progress.hpp"

namespace dume {

namespace fs = std::filesystem;

namespace {

// The file an export adds beside the checkpoint: its source and options (dume_export.json).
constexpr const char* kExportRecord = "dume_export.json";

// Tensor names of the layout, written and read from this one place.
std::string router_name(std::int64_t l, MixtralLayout layout) {
  return hf::layer(l, layout == MixtralLayout::fused ? "mlp.gate.weight" : "block_sparse_moe.gate.weight");
}
std::string gate_up_name(std::int64_t l) { return hf::layer(l, "mlp.experts.gate_up_proj"); }
std::string down_name(std::int64_t l) { return hf::layer(l, "mlp.experts.down_proj"); }
// Per-expert layout: w1 = gate_proj, w2 = down_proj, w3 = up_proj.
std::string expert_name(std::int64_t l, std::int64_t e, const char* w) {
  return hf::layer(l, "block_sparse_moe.experts." + std::to_string(e) + "." + w + ".weight");
}

// Files of a Hugging Face tokenizer, copied beside the exported weights.
constexpr const char* kTokenizerFiles[] = {"tokenizer.json",     "tokenizer_config.json", "special_tokens_map.json",
                                           "tokenizer.model",    "vocab.json",            "merges.txt",
                                           "added_tokens.json", "generation_config.json"};

// Encodes values as `dtype`, refusing values that do not fit (f16 overflows above 65504).
std::vector<std::byte> encode_checked(DType dtype, std::span<const float> values, const std::string& name) {
  std::vector<std::byte> bytes = encode(dtype, values);
  if (dtype == DType::F16)
    for (std::size_t i = 0; i < values.size(); ++i) {
      std::uint16_t h;
      std::memcpy(&h, bytes.data() + 2 * i, 2);
      if (!std::isfinite(f16_to_f32(h)))
        throw Error(name + ": value " + std::to_string(values[i]) + " exceeds float16's range; export as bf16 or f32");
    }
  return bytes;
}

// A tensor of the export and the rank that writes it (Grid::writer_of_tensor of its MoE path).
struct ExportTensor {
  MoeTensor tensor;
  int writer;
};

// Writes `tensors` as model.safetensors, or as model-0000i-of-0000N.safetensors shards plus
// model.safetensors.index.json when they exceed one shard (what save_pretrained writes). The
// shards do not depend on the grid; each is written by the writer of its first tensor, the
// index by rank 0.
void write_safetensors_shards(const fs::path& dir, const std::vector<ExportTensor>& tensors, std::uint64_t shard_bytes) {
  std::vector<MoeTensor> all;
  for (const ExportTensor& t : tensors) all.push_back(t.tensor);
  const std::vector<std::size_t> shard_of = plan_shards(all, shard_bytes);
  const std::size_t shards = shard_of.empty() ? 1 : shard_of.back() + 1;
  const auto file_name = [shards](std::size_t s) {
    if (shards == 1) return std::string("model.safetensors");
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", s + 1, shards);
    return std::string(name);
  };
  const int me = mpi_rank();
  std::vector<int> writer_of_shard(shards, -1);
  std::int64_t mine = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    if (writer_of_shard[shard_of[i]] < 0) writer_of_shard[shard_of[i]] = tensors[i].writer;
    if (writer_of_shard[shard_of[i]] == me) ++mine;
  }
  Progress progress("export", mine, "tensors", me == 0);  // rank 0's share stands for all
  collective_phase([&] {
    for (std::size_t s = 0; s < shards; ++s) {
      if (writer_of_shard[s] != me) continue;
      std::vector<TensorSource> shard;
      for (std::size_t i = 0; i < tensors.size(); ++i)
        if (shard_of[i] == s) {
          const MoeTensor& t = tensors[i].tensor;
          shard.push_back({t.name, t.dtype, t.shape, [&t, &progress] {
                             progress.advance(1);
                             return t.bytes();
                           }});
        }
      safetensors_write(dir / file_name(s), shard, {{"format", "pt"}});
    }
  });
  progress.finish();
  if (shards == 1 || me != 0) return;
  nlohmann::json weight_map = nlohmann::json::object();
  std::uint64_t total = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    weight_map[tensors[i].tensor.name] = file_name(shard_of[i]);
    total += tensors[i].tensor.byte_size();
  }
  const nlohmann::json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  write_text_file(dir / "model.safetensors.index.json", index.dump(2) + "\n");
}

// The tensors of the Mixtral checkpoint in the order of the model (the embedding, each layer's
// shared tensors, router and experts, the final norm and LM head), each read from the open
// moe.h5 when it is written.
std::vector<ExportTensor> mixtral_tensors(const std::shared_ptr<H5Id>& file, const MoeInfo& info, DType dtype,
                                          MixtralLayout layout, const Grid& grid) {
  const ModelConfig& c = info.config;
  const std::int64_t L = c.num_layers, E = static_cast<std::int64_t>(info.experts.size()), D = c.hidden_size,
                     F = c.intermediate_size;
  const hid_t f = file->get();
  // One dataset of moe.h5 as `dtype` bytes (read_f32 checks its shape and that it is finite).
  const auto stored = [file, f, dtype](const std::string& path, const std::vector<std::int64_t>& shape) {
    return encode_checked(dtype, h5::read_f32(f, path, shape), path);
  };
  // The shared tensors by layer: [0] the embedding, [l + 1] layer l's, [L + 1] the final ones.
  std::vector<std::vector<ExportTensor>> shared(static_cast<std::size_t>(L + 2));
  const SharedWeights names;  // only names and shapes are visited
  for_each_shared_tensor(c, names, [&](const std::string& hf_name, const std::string& path,
                                       const std::vector<std::int64_t>& shape, const auto&) {
    const std::int64_t slot = path == "/embed_tokens"      ? 0
                              : path.starts_with("/layers/") ? std::stoll(path.substr(8)) + 1
                                                             : L + 1;
    shared[static_cast<std::size_t>(slot)].push_back(
        {{hf_name, dtype, shape, [=] { return stored(path, shape); }}, grid.writer_of_tensor(path)});
  });
  std::vector<ExportTensor> tensors = shared[0];
  const MlpWeights mlp;
  const float temperature = static_cast<float>(info.router.temperature);
  for (std::int64_t l = 0; l < L; ++l) {
    const auto& own = shared[static_cast<std::size_t>(l + 1)];
    tensors.insert(tensors.end(), own.begin(), own.end());
    const auto add = [&](MoeTensor t) { tensors.push_back({std::move(t), grid.writer_of(l)}); };
    add({router_name(l, layout), DType::F32, {E, D}, [=] {
           std::vector<float> w = h5::read_f32(f, moe_path::layer(l, "router/weight"), std::vector<std::int64_t>{E, D});
           for (float& v : w) v /= temperature;  // the temperature folded into the weights
           return encode(DType::F32, w);
         }});
    if (layout == MixtralLayout::fused) {
      add({gate_up_name(l), dtype, {E, 2 * F, D}, [=] {
             std::vector<std::byte> bytes;
             for (std::int64_t e = 0; e < E; ++e)
               for (const char* proj : {"gate_proj", "up_proj"}) {
                 const auto part = stored(moe_path::expert(l, e, proj), {F, D});
                 bytes.insert(bytes.end(), part.begin(), part.end());
               }
             return bytes;
           }});
      add({down_name(l), dtype, {E, D, F}, [=] {
             std::vector<std::byte> bytes;
             for (std::int64_t e = 0; e < E; ++e) {
               const auto part = stored(moe_path::expert(l, e, "down_proj"), {D, F});
               bytes.insert(bytes.end(), part.begin(), part.end());
             }
             return bytes;
           }});
    } else {
      for (std::int64_t e = 0; e < E; ++e)
        for_each_mlp_tensor(c, mlp, [&](const std::string&, const std::string& proj,
                                        const std::vector<std::int64_t>& shape, const auto&) {
          const char* w = proj == "gate_proj" ? "w1" : proj == "down_proj" ? "w2" : "w3";
          const std::string path = moe_path::expert(l, e, proj);
          add({expert_name(l, e, w), dtype, shape, [=] { return stored(path, shape); }});
        });
    }
  }
  tensors.insert(tensors.end(), shared.back().begin(), shared.back().end());
  return tensors;
}

// Refuses what Mixtral cannot express, naming the way out.
void check_exportable(const fs::path& moe, const MoeInfo& info, hid_t f) {
  const ModelConfig& c = info.config;
  if (c.qkv_bias || c.o_bias)
    throw Error(moe.string() + ": the experts (" + c.architecture_name +
                ") have attention biases, which Mixtral's attention lacks; export to Qwen2-MoE is not implemented");
  if (c.qk_norm)
    throw Error(moe.string() + ": the experts (" + c.architecture_name +
                ") normalize each head's q and k (q_norm, k_norm), which Mixtral's attention lacks; export to Qwen3-MoE "
                "is not implemented");
  if (info.router.expert_attention)
    throw Error(moe.string() + ": each expert keeps its own attention (router.expert_attention), which Mixtral's one "
                "attention per layer cannot hold; drop it first (dume resolve " + moe.string() +
                " --expert-attention false --method dume --bias false --routing token --output NEW_DIR)");
  if (!info.router.routing.per_token())
    throw Error(moe.string() + ": routing '" + info.router.routing.to_string() +
                "' looks beyond the token (or across layers), which Mixtral's router cannot; export it with "
                "per-token routing (dume resolve " + moe.string() + " --routing token --output NEW_DIR)");
  if (info.router.method == RouterMethod::gaussian)
    throw Error(moe.string() + ": its Gaussian routers are quadratic in the hidden state, which Mixtral's linear gate "
                "cannot express; export a ridge router (dume resolve " + moe.string() +
                " --method dume --bias false --routing token --output NEW_DIR)");
  const auto E = static_cast<std::int64_t>(info.experts.size());
  for (std::int64_t l = 0; l < c.num_layers; ++l) {
    const std::vector<float> bias = h5::read_f32(f, moe_path::layer(l, "router/bias"), std::vector<std::int64_t>{E});
    for (std::int64_t e = 0; e < E; ++e)
      if (bias[static_cast<std::size_t>(e)] != 0.0f)
        throw Error(moe.string() + ": layer " + std::to_string(l) +
                    "'s router has a bias, which Mixtral's router lacks; make the MoE with router.bias: false "
                    "(from the stored statistics: dume resolve " + moe.string() + " --bias false --output NEW_DIR)");
  }
}

// Copies the tokenizer files found in `source`; returns their names.
std::vector<std::string> copy_tokenizer(const fs::path& source, const fs::path& dir) {
  std::vector<std::string> copied;
  for (const char* name : kTokenizerFiles)
    if (fs::is_regular_file(source / name)) {
      fs::copy_file(source / name, dir / name);
      copied.push_back(name);
    }
  return copied;
}

}  // namespace

ModelConfig mixtral_config(const ModelConfig& source, std::int64_t experts, int top_k, DType dtype) {
  ModelConfig c = source;
  c.architecture = Architecture::mixtral;
  c.architecture_name = "MixtralForCausalLM";
  c.num_experts = experts;
  c.experts_per_token = top_k;
  c.dtype = dtype;
  c.json_text = model_config_to_json(c);
  return c;
}

void export_mixtral(const fs::path& moe, const fs::path& given, const ExportOptions& options, bool force) {
  const fs::path output = output_path(given);
  fs::path tokenizer_source;
  MoeInfo info;
  std::shared_ptr<H5Id> file;
  std::unique_ptr<OutputLock> lock;
  collective_phase([&] {  // every rank checks alike; rank 0 holds the lock
    if (options.tokenizer) {
      tokenizer_source = *options.tokenizer;
      if (!fs::is_directory(tokenizer_source)) throw Error("--tokenizer " + tokenizer_source.string() + " is not a directory");
    } else if (fs::exists(moe / "merge.yaml")) {
      tokenizer_source = merge_config_read(moe / "merge.yaml").experts.at(0).checkpoint;
    }
    const std::vector<InputPath> inputs{{"the MoE", moe}, {"the tokenizer source", tokenizer_source}};
    check_output(output, inputs, force, {.directory = true, .marker = kExportRecord});
    if (mpi_rank() == 0) lock = std::make_unique<OutputLock>(output);
    info = read_moe_info(moe);
    check_moe_datasets(moe, info);
    file = std::make_shared<H5Id>(h5::open_file(moe / "moe.h5"));
    check_exportable(moe, info, file->get());
  });
  const auto E = static_cast<std::int64_t>(info.experts.size());
  const Grid grid(info.config, E, options.stages);
  const DType dtype = options.dtype.value_or(info.dtype);
  const ModelConfig config = mixtral_config(info.config, E, info.router.top_k, dtype);
  const std::vector<ExportTensor> tensors = mixtral_tensors(file, info, dtype, options.layout, grid);
  std::vector<std::string> tokenizer_files;
  const auto fill = [&](const fs::path& dir) {
    write_safetensors_shards(dir, tensors, options.shard_bytes);
    if (mpi_rank() != 0) return;
    write_text_file(dir / "config.json", config.json_text);
    if (!tokenizer_source.empty()) tokenizer_files = copy_tokenizer(tokenizer_source, dir);
    // What made this checkpoint: also how a later `--force` knows it may replace it.
    const nlohmann::json record = {{"dume_export", {{"moe", fs::absolute(moe).string()},
                                                    {"format", "hf-mixtral"},
                                                    {"dtype", std::string(to_string(dtype))},
                                                    {"layout", options.layout == MixtralLayout::fused ? "fused" : "per-expert"}}}};
    write_text_file(dir / kExportRecord, record.dump(2) + "\n");
  };
  write_output_together(output, force, fill);  // every rank writes its shards (a collective phase)
  if (mpi_rank() != 0) return;

  std::uint64_t bytes = 0;
  for (const auto& t : tensors) bytes += t.tensor.byte_size();
  std::printf("exported %s -> %s: MixtralForCausalLM, %zu experts, top-%d, %s weights (%.1f MB), %s layout%s\n",
              moe.c_str(), output.c_str(), info.experts.size(), info.router.top_k,
              std::string(to_string(dtype)).c_str(), static_cast<double>(bytes) / 1e6,
              options.layout == MixtralLayout::fused ? "fused (transformers 5)" : "per-expert (original Mixtral)",
              grid.stages() * grid.replicas() > 1 ? (", written by " + grid.describe(info.config, E)).c_str() : "");
  std::printf("router: temperature %g folded into the f32 gate weights; no bias\n", info.router.temperature);
  if (tokenizer_files.empty())
    std::printf("tokenizer: none found%s; copy the source model's tokenizer files into %s to serve it\n",
                tokenizer_source.empty() ? "" : (" in " + tokenizer_source.string()).c_str(), output.c_str());
  else
    std::printf("tokenizer: %zu files copied from %s\n", tokenizer_files.size(), tokenizer_source.c_str());
}

Model empty_mixtral_model(const HfCheckpoint& checkpoint) {
  const ModelConfig& c = checkpoint.config();
  if (c.num_experts == 0)
    throw Error(checkpoint.dir().string() + " is a dense " + c.architecture_name + ", not a Mixtral MoE");
  Model m = empty_model(c, c.num_experts);
  m.top_k = static_cast<int>(c.experts_per_token);
  return m;
}

LayerFill mixtral_layers(const HfCheckpoint& checkpoint) {
  const ModelConfig& c = checkpoint.config();
  const MixtralLayout layout =
      checkpoint.has(router_name(0, MixtralLayout::fused)) ? MixtralLayout::fused : MixtralLayout::per_expert;
  LayerFill fill = checkpoint_layers(checkpoint);  // its head and embedding
  fill.layer = [&checkpoint, &c, layout](std::int64_t l, Model& m) {
    const std::int64_t E = c.num_experts, D = c.hidden_size, F = c.intermediate_size;
    const auto span_of = [](auto& storage) { return std::span<float>(storage.data(), static_cast<std::size_t>(storage.size())); };
    const auto layer = static_cast<std::size_t>(l);
    m.shared.layers[layer] = load_layer_shared(checkpoint, l);
    Router& router = m.routers[layer];
    router.weight.resize(E, D);
    router.bias = Vector::Zero(E);
    checkpoint.read(router_name(l, layout), std::vector<std::int64_t>{E, D}, span_of(router.weight));
    auto& experts = m.experts[layer];
    experts.assign(static_cast<std::size_t>(E), MlpWeights());
    for (std::int64_t e = 0; e < E; ++e) {
      MlpWeights& w = experts[static_cast<std::size_t>(e)];
      w.gate.resize(F, D);
      w.up.resize(F, D);
      w.down.resize(D, F);
      if (layout == MixtralLayout::fused) {
        const std::vector<std::int64_t> gate_up{E, 2 * F, D}, down{E, D, F};
        const auto block = static_cast<std::size_t>(F * D);
        checkpoint.read_slice(gate_up_name(l), gate_up, static_cast<std::size_t>(2 * e) * block, span_of(w.gate));
        checkpoint.read_slice(gate_up_name(l), gate_up, static_cast<std::size_t>(2 * e + 1) * block, span_of(w.up));
        checkpoint.read_slice(down_name(l), down, static_cast<std::size_t>(e) * block, span_of(w.down));
      } else {
        checkpoint.read(expert_name(l, e, "w1"), std::vector<std::int64_t>{F, D}, span_of(w.gate));
        checkpoint.read(expert_name(l, e, "w3"), std::vector<std::int64_t>{F, D}, span_of(w.up));
        checkpoint.read(expert_name(l, e, "w2"), std::vector<std::int64_t>{D, F}, span_of(w.down));
        for (const char* name : {"w1", "w2", "w3"}) checkpoint.release(expert_name(l, e, name));
      }
    }
    if (layout == MixtralLayout::fused)
      for (const std::string& name : {gate_up_name(l), down_name(l)}) checkpoint.release(name);
  };
  return fill;
}

Model load_mixtral_model(const HfCheckpoint& checkpoint) {
  return load_whole(mixtral_layers(checkpoint), empty_mixtral_model(checkpoint));
}

}  // namespace dume
