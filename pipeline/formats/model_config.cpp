#include "model_config.hpp"

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numbers>
#include <sstream>

#include "error.hpp"

namespace dume {

using nlohmann::json;

namespace {

class ConfigReader {
 public:
  ConfigReader(const json& j, std::string source) : j_(j), source_(std::move(source)) {}

  [[noreturn]] void reject(const std::string& key, const std::string& problem) const {
    throw Error(source_ + ": '" + key + "' " + problem);
  }
  bool has(const std::string& key) const { return j_.contains(key) && !j_[key].is_null(); }

  // Sizes are bounded so that products of them (parameter counts, buffer sizes) cannot overflow.
  std::int64_t positive_int(const std::string& key) const { return bounded_int(key, std::int64_t{1} << 24); }
  std::int64_t bounded_int(const std::string& key, std::int64_t limit) const {
    if (!has(key)) reject(key, "is missing");
    const json& v = j_[key];
    if (!v.is_number_integer() || v.get<std::int64_t>() <= 0) reject(key, "must be a positive integer, got " + v.dump());
    if (v.get<std::int64_t>() > limit) reject(key, "is " + v.dump() + ", larger than any model (limit " + std::to_string(limit) + ")");
    return v.get<std::int64_t>();
  }
  std::int64_t positive_int(const std::string& key, std::int64_t fallback) const {
    return has(key) ? positive_int(key) : fallback;
  }
  double number(const json& obj, const std::string& key, double fallback) const {
    if (!obj.contains(key) || obj[key].is_null()) return fallback;
    if (!obj[key].is_number()) reject(key, "must be a number, got " + obj[key].dump());
    return obj[key].get<double>();
  }
  double number(const std::string& key, double fallback) const { return number(j_, key, fallback); }
  bool boolean(const std::string& key, bool fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_boolean()) reject(key, "must be true or false, got " + j_[key].dump());
    return j_[key].get<bool>();
  }
  std::string string(const std::string& key) const {
    if (!has(key)) return {};
    if (!j_[key].is_string()) reject(key, "must be a string, got " + j_[key].dump());
    return j_[key].get<std::string>();
  }
  const json& at(const std::string& key) const { return j_[key]; }

 private:
  const json& j_;
  std::string source_;
};

Architecture parse_architecture(const ConfigReader& r, std::string& name) {
  struct Known {
    const char* class_name;
    const char* model_type;
    Architecture arch;
  };
  static constexpr Known known[] = {{"LlamaForCausalLM", "llama", Architecture::llama},
                                    {"MistralForCausalLM", "mistral", Architecture::mistral},
                                    {"Qwen2ForCausalLM", "qwen2", Architecture::qwen2},
                                    {"Qwen3ForCausalLM", "qwen3", Architecture::qwen3},
                                    {"MixtralForCausalLM", "mixtral", Architecture::mixtral}};
  if (r.has("architectures")) {
    const json& archs = r.at("architectures");
    if (!archs.is_array() || archs.size() != 1 || !archs[0].is_string())
      r.reject("architectures", "must list exactly one architecture, got " + archs.dump());
    name = archs[0].get<std::string>();
    for (const auto& k : known)
      if (name == k.class_name) return k.arch;
    r.reject("architectures", "names " + name +
                                  ", which dume does not support (supported: LlamaForCausalLM, "
                                  "MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, MixtralForCausalLM)");
  }
  const std::string type = r.string("model_type");
  for (const auto& k : known)
    if (type == k.model_type) {
      name = k.class_name;
      return k.arch;
    }
  r.reject("model_type", "is '" + type + "', which dume does not support (supported: llama, mistral, qwen2, qwen3, mixtral)");
}

// Rope settings come either as transformers 5's `rope_parameters` or as the legacy top-level
// `rope_theta` + `rope_scaling` that checkpoints on the Hub carry.
void parse_rope(const ConfigReader& r, ModelConfig& c) {
  std::string key = "rope_scaling";
  const json* params = nullptr;
  if (r.has("rope_parameters")) {
    key = "rope_parameters";
    params = &r.at(key);
  } else if (r.has("rope_scaling")) {
    params = &r.at(key);
  }
  c.rope_theta = r.number("rope_theta", 10000.0);
  if (!params) return;
  if (!params->is_object()) r.reject(key, "must be an object, got " + params->dump());
  if (params->contains("rope_theta")) c.rope_theta = r.number(*params, "rope_theta", c.rope_theta);
  std::string type = "default";
  for (const char* k : {"rope_type", "type"})
    if (params->contains(k) && (*params)[k].is_string()) type = (*params)[k].get<std::string>();
  if (type == "default") return;
  if (type != "llama3")
    r.reject(key, "has rope type '" + type + "', which dume does not support (supported: default, llama3)");
  c.rope_scaling.llama3 = true;
  c.rope_scaling.factor = r.number(*params, "factor", 0.0);
  c.rope_scaling.low_freq_factor = r.number(*params, "low_freq_factor", 0.0);
  c.rope_scaling.high_freq_factor = r.number(*params, "high_freq_factor", 0.0);
  const double original = r.number(*params, "original_max_position_embeddings", 0.0);
  if (!(original < 1e15)) r.reject(key, "has an absurd original_max_position_embeddings " + std::to_string(original));
  c.rope_scaling.original_max_position_embeddings = static_cast<std::int64_t>(original);
  if (c.rope_scaling.factor <= 0 || c.rope_scaling.low_freq_factor <= 0 ||
      c.rope_scaling.high_freq_factor <= c.rope_scaling.low_freq_factor || original <= 0)
    r.reject(key, "llama3 scaling needs factor > 0, 0 < low_freq_factor < high_freq_factor and "
                  "original_max_position_embeddings > 0, got " + params->dump());
}

// What the architecture's family decides: the MLP's activation, the attention's biases and
// per-head norms, a sliding window, and a Mixtral's experts.
void parse_architecture_options(const ConfigReader& r, ModelConfig& c) {
  const std::string act = r.has("hidden_act") ? r.string("hidden_act") : "silu";
  if (act != "silu") r.reject("hidden_act", "is '" + act + "'; dume implements SwiGLU MLPs (silu) only");
  if (r.boolean("mlp_bias", false)) r.reject("mlp_bias", "is true; dume supports MLPs without biases only");
  if (c.architecture == Architecture::qwen2 || c.architecture == Architecture::qwen3)
    if (r.boolean("use_sliding_window", false)) r.reject("use_sliding_window", "is true, which dume does not support");
  if (c.architecture == Architecture::qwen2) {
    c.qkv_bias = true;
  } else if (c.architecture != Architecture::mixtral) {  // Mixtral's attention has no biases
    c.qkv_bias = c.o_bias = r.boolean("attention_bias", false);
  }
  c.qk_norm = c.architecture == Architecture::qwen3;
  if ((c.architecture == Architecture::mistral || c.architecture == Architecture::mixtral) && r.has("sliding_window"))
    c.sliding_window = r.bounded_int("sliding_window", std::int64_t{1} << 40);
  if (c.architecture == Architecture::mixtral) {  // what `dume export` writes, read back
    c.num_experts = r.positive_int("num_local_experts", 8);
    c.experts_per_token = r.positive_int("num_experts_per_tok", 2);
    if (c.experts_per_token > c.num_experts) r.reject("num_experts_per_tok", "exceeds num_local_experts");
  }
}

}  // namespace

ModelConfig model_config_parse(const std::string& json_text, const std::string& source) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    throw Error(source + ": invalid JSON: " + e.what());
  }
  if (!j.is_object()) throw Error(source + ": not a JSON object");
  ConfigReader r(j, source);
  ModelConfig c;
  c.json_text = json_text;
  c.architecture = parse_architecture(r, c.architecture_name);
  c.vocab_size = r.positive_int("vocab_size");
  c.hidden_size = r.positive_int("hidden_size");
  c.intermediate_size = r.positive_int("intermediate_size");
  // The largest real models have under 200 layers; a config with millions would make every
  // per-layer list (tensor names, statistics) exhaust the memory before a tensor is read.
  c.num_layers = r.bounded_int("num_hidden_layers", std::int64_t{1} << 16);
  c.num_heads = r.positive_int("num_attention_heads");
  c.num_kv_heads = r.positive_int("num_key_value_heads", c.num_heads);
  c.max_position_embeddings =
      r.has("max_position_embeddings") ? r.bounded_int("max_position_embeddings", std::int64_t{1} << 40) : 2048;
  if (r.has("head_dim")) {
    c.head_dim = r.positive_int("head_dim");
  } else {
    if (c.hidden_size % c.num_heads != 0)
      r.reject("num_attention_heads", "does not divide hidden_size and no head_dim is given");
    c.head_dim = c.hidden_size / c.num_heads;
  }
  if (c.head_dim % 2 != 0) r.reject("head_dim", "must be even for rotary embeddings");
  if (c.num_heads % c.num_kv_heads != 0) r.reject("num_key_value_heads", "must divide num_attention_heads");
  const double parameters = static_cast<double>(c.num_layers) *
                                (static_cast<double>(c.hidden_size) * static_cast<double>(c.num_heads * c.head_dim) * 4 +
                                 3.0 * static_cast<double>(c.hidden_size) * static_cast<double>(c.intermediate_size)) +
                            2.0 * static_cast<double>(c.vocab_size) * static_cast<double>(c.hidden_size);
  if (parameters > 1e15) throw Error(source + ": sizes describe a model of " + std::to_string(parameters) +
                                     " parameters, larger than any real one");
  c.rms_norm_eps = r.number("rms_norm_eps", 1e-6);
  if (!(c.rms_norm_eps >= 0) || !std::isfinite(c.rms_norm_eps))
    r.reject("rms_norm_eps", "must be a finite number >= 0, got " + std::to_string(c.rms_norm_eps));
  c.tie_word_embeddings = r.boolean("tie_word_embeddings", false);
  parse_rope(r, c);
  if (!(c.rope_theta > 0) || !std::isfinite(c.rope_theta))  // here, not as an overflow after the calibration
    r.reject("rope_theta", "must be a finite number > 0, got " + std::to_string(c.rope_theta));
  parse_architecture_options(r, c);

  for (const char* key : {"dtype", "torch_dtype"}) {
    const std::string name = r.string(key);
    if (name.empty()) continue;
    c.dtype = weight_dtype_from_name(name);
    if (!c.dtype) r.reject(key, "is '" + name + "' (supported: float32, bfloat16, float16)");
    break;
  }
  return c;
}

ModelConfig model_config_read(const std::filesystem::path& checkpoint_dir) {
  const auto path = checkpoint_dir / "config.json";
  std::ifstream in(path);
  if (!in) throw Error(path.string() + ": cannot read (is " + checkpoint_dir.string() + " a Hugging Face model directory?)");
  std::stringstream text;
  text << in.rdbuf();
  return model_config_parse(text.str(), path.string());
}

std::int64_t ModelConfig::parameter_count() const {
  const std::int64_t D = hidden_size;
  const std::int64_t attention = D * q_dim() + 2 * D * kv_dim() + q_dim() * D +
                                 (qkv_bias ? q_dim() + 2 * kv_dim() : 0) + (o_bias ? D : 0) + (qk_norm ? 2 * head_dim : 0);
  const std::int64_t layer = attention + 3 * D * intermediate_size + 2 * D;
  return num_layers * layer + vocab_size * D * (tie_word_embeddings ? 1 : 2) + D;
}

std::vector<float> ModelConfig::rope_inv_freq() const {
  // transformers: inv_freq = 1 / theta^(arange(0, hd, 2) / hd), in f32.
  std::vector<float> inv(static_cast<std::size_t>(head_dim / 2));
  for (std::size_t i = 0; i < inv.size(); ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    inv[i] = static_cast<float>(1.0 / std::pow(rope_theta, static_cast<double>(exponent)));
  }
  if (!rope_scaling.llama3) return inv;
  // Llama 3.1 frequency scaling (transformers' _compute_llama3_parameters).
  const RopeScaling& s = rope_scaling;
  const double old_len = static_cast<double>(s.original_max_position_embeddings);
  const double low_freq_wavelen = old_len / s.low_freq_factor;
  const double high_freq_wavelen = old_len / s.high_freq_factor;
  for (float& f : inv) {
    const double wavelen = 2 * std::numbers::pi / f;
    if (wavelen > low_freq_wavelen) {
      f = static_cast<float>(f / s.factor);
    } else if (wavelen >= high_freq_wavelen) {  // medium frequencies: interpolate
      const double smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
      f = static_cast<float>((1 - smooth) * f / s.factor + smooth * f);
    }
  }
  return inv;
}

namespace {
std::string rope_description(const RopeScaling& s) {
  if (!s.llama3) return "default";
  std::ostringstream out;
  out << "llama3 (factor " << s.factor << ", low_freq_factor " << s.low_freq_factor << ", high_freq_factor "
      << s.high_freq_factor << ", original_max_position_embeddings " << s.original_max_position_embeddings << ")";
  return out.str();
}
}  // namespace

bool same_architecture(const ModelConfig& a, const ModelConfig& b, std::string* difference) {
  const auto differ = [&](const char* what, auto x, auto y) {
    if (x == y) return false;
    if (difference) *difference = std::string(what) + " " + std::to_string(x) + " vs " + std::to_string(y);
    return true;
  };
  if (a.architecture != b.architecture) {
    if (difference) *difference = "architecture " + a.architecture_name + " vs " + b.architecture_name;
    return false;
  }
  if (differ("vocab_size", a.vocab_size, b.vocab_size) || differ("hidden_size", a.hidden_size, b.hidden_size) ||
      differ("intermediate_size", a.intermediate_size, b.intermediate_size) ||
      differ("num_hidden_layers", a.num_layers, b.num_layers) ||
      differ("num_attention_heads", a.num_heads, b.num_heads) ||
      differ("num_key_value_heads", a.num_kv_heads, b.num_kv_heads) || differ("head_dim", a.head_dim, b.head_dim) ||
      differ("tie_word_embeddings", a.tie_word_embeddings, b.tie_word_embeddings) ||
      differ("attention biases", a.qkv_bias, b.qkv_bias) || differ("rope_theta", a.rope_theta, b.rope_theta) ||
      differ("rms_norm_eps", a.rms_norm_eps, b.rms_norm_eps) ||
      differ("num_local_experts", a.num_experts, b.num_experts))
    return false;
  // The rotary frequencies: experts of one base share them (Llama 3.1's scaling against none would
  // merge attention that places positions differently).
  const std::string rope_a = rope_description(a.rope_scaling), rope_b = rope_description(b.rope_scaling);
  if (rope_a == rope_b) return true;
  if (difference) *difference = "rope_scaling " + rope_a + " vs " + rope_b;
  return false;
}

std::string to_string(Architecture architecture) {
  switch (architecture) {
    case Architecture::llama: return "llama";
    case Architecture::mistral: return "mistral";
    case Architecture::qwen2: return "qwen2";
    case Architecture::qwen3: return "qwen3";
    case Architecture::mixtral: return "mixtral";
  }
  return "?";
}

std::string model_config_to_json(const ModelConfig& c) {
  json j;
  j["architectures"] = {c.architecture_name.empty() ? "LlamaForCausalLM" : c.architecture_name};
  j["model_type"] = to_string(c.architecture);
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = c.num_heads;
  j["num_key_value_heads"] = c.num_kv_heads;
  j["head_dim"] = c.head_dim;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["hidden_act"] = "silu";
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  if (c.architecture == Architecture::llama || c.architecture == Architecture::mistral ||
      c.architecture == Architecture::qwen3)
    j["attention_bias"] = c.qkv_bias;
  if (c.sliding_window) j["sliding_window"] = *c.sliding_window;
  if (c.num_experts) {
    j["num_local_experts"] = c.num_experts;
    j["num_experts_per_tok"] = c.experts_per_token;
    j["router_jitter_noise"] = 0.0;
  }
  json rope = {{"rope_theta", c.rope_theta}, {"rope_type", c.rope_scaling.llama3 ? "llama3" : "default"}};
  if (c.rope_scaling.llama3) {
    rope["factor"] = c.rope_scaling.factor;
    rope["low_freq_factor"] = c.rope_scaling.low_freq_factor;
    rope["high_freq_factor"] = c.rope_scaling.high_freq_factor;
    rope["original_max_position_embeddings"] = c.rope_scaling.original_max_position_embeddings;
  }
  j["rope_parameters"] = rope;
  if (c.dtype) j["dtype"] = torch_name(*c.dtype);
  // The special token ids belong to the tokenizer; keep the source's.
  const json source = json::parse(c.json_text, nullptr, /*allow_exceptions=*/false);
  if (source.is_object())
    for (const char* key : {"bos_token_id", "eos_token_id", "pad_token_id"})
      if (source.contains(key)) j[key] = source[key];
  return j.dump(2) + "\n";
}

}  // namespace dume
