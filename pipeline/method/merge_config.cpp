#include "merge_config.hpp"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include "documents.hpp"
#include "error.hpp"

namespace dume {

namespace fs = std::filesystem;

namespace {

// Reads one YAML mapping, refusing keys it was not asked about.
class Section {
 public:
  Section(const YAML::Node& node, std::string name, const fs::path& source)
      : node_(node), name_(std::move(name)), source_(source) {
    if (!node.IsMap()) fail(node, name_ + " must be a mapping");
  }

  [[noreturn]] void fail(const YAML::Node& at, const std::string& problem) const {
    throw Error(source_.filename().string() + ":" + std::to_string(at.Mark().line + 1) + ": " + problem);
  }

  // Call after reading every key: anything left is a typo or an option this version lacks.
  void finish(std::initializer_list<const char*> known) const {
    for (const auto& item : node_) {
      const auto key = item.first.as<std::string>();
      if (!std::count_if(known.begin(), known.end(), [&](const char* k) { return key == k; })) {
        std::string list;
        for (const char* k : known) list += (list.empty() ? "" : ", ") + std::string(k);
        fail(item.first, "unknown key '" + key + "' in " + name_ + " (known: " + list + ")");
      }
    }
  }

  bool has(const char* key) const { return static_cast<bool>(node_[key]); }
  YAML::Node node(const char* key) const { return node_[key]; }
  std::string where(const char* key) const { return name_.empty() ? key : name_ + "." + key; }

  template <class T>
  T get(const char* key, const char* type_name) const {
    const YAML::Node v = node_[key];
    if (!v) fail(node_, "missing required key '" + where(key) + "'");
    return as<T>(v, key, type_name);
  }
  template <class T>
  T get(const char* key, const char* type_name, T fallback) const {
    const YAML::Node v = node_[key];
    return v ? as<T>(v, key, type_name) : fallback;
  }

 private:
  template <class T>
  T as(const YAML::Node& v, const char* key, const char* type_name) const {
    if (!v.IsScalar()) fail(v, where(key) + " must be " + type_name);
    try {
      return v.as<T>();
    } catch (const YAML::Exception&) {
      fail(v, where(key) + " must be " + type_name + ", got '" + v.Scalar() + "'");
    }
  }

  YAML::Node node_;
  std::string name_;
  const fs::path& source_;
};

fs::path resolve(const fs::path& base, const std::string& path) {
  const fs::path p(path);
  return p.is_absolute() ? p : (base / p).lexically_normal();
}

// `checkpoint` is the expert's: text corpora use its tokenizer.json unless `tokenizer` names another.
CorpusSpec parse_corpus(const Section& parent, const char* key, const fs::path& base, const fs::path& source,
                        const fs::path& checkpoint) {
  const Section s(parent.node(key), parent.where(key), source);
  CorpusSpec spec;
  spec.path = resolve(base, s.get<std::string>("path", "a path"));
  const auto format = s.get<std::string>("format", "a corpus format", "uint16");
  try {
    spec.format = corpus_format_from_string(format);
  } catch (const Error& e) {
    s.fail(s.node("format"), e.what());
  }
  spec.dataset = s.get<std::string>("dataset", "an HDF5 dataset path", "");
  const bool text = is_text_format(spec.format), documents = text || spec.format == CorpusFormat::megatron;
  // Keys that mean nothing for this format are errors: a jsonl `field` on a uint16 corpus is a mistake.
  const auto only = [&](const char* k, bool allowed, const char* formats) {
    if (s.has(k) && !allowed) s.fail(s.node(k), s.where(k) + " applies to " + formats + " corpora, not " + format);
  };
  only("tokenizer", text, "text and jsonl");
  only("field", spec.format == CorpusFormat::jsonl, "jsonl");
  only("documents", spec.format == CorpusFormat::text, "text");
  only("on_bad", text, "text and jsonl");
  only("packing", documents, "text, jsonl and megatron");
  spec.tokenizer = s.has("tokenizer") ? resolve(base, s.get<std::string>("tokenizer", "a path")) : checkpoint;
  spec.field = s.get<std::string>("field", "a JSON field name", spec.field);
  const auto split = s.get<std::string>("documents", "file or blank-line", "file");
  if (split != "file" && split != "blank-line") s.fail(s.node("documents"), s.where("documents") + " must be file or blank-line");
  spec.blank_line_documents = split == "blank-line";
  const auto on_bad = s.get<std::string>("on_bad", "error or skip", "error");
  if (on_bad != "error" && on_bad != "skip") s.fail(s.node("on_bad"), s.where("on_bad") + " must be error or skip");
  spec.skip_bad_documents = on_bad == "skip";
  const auto packing = s.get<std::string>("packing", "pack or truncate", "pack");
  if (packing != "pack" && packing != "truncate") s.fail(s.node("packing"), s.where("packing") + " must be pack or truncate");
  spec.packing = packing == "truncate" ? Packing::truncate : Packing::pack;
  s.finish({"path", "format", "dataset", "tokenizer", "field", "documents", "on_bad", "packing"});
  return spec;
}

std::optional<DType> parse_dtype(const Section& s, const char* key) {
  if (!s.has(key)) return std::nullopt;
  auto name = s.get<std::string>(key, "a dtype");
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char ch) { return std::tolower(ch); });
  if (const auto dtype = weight_dtype_from_name(name)) return dtype;
  s.fail(s.node(key), s.where(key) + " must be bf16, f16 or f32, got '" + name + "'");
}

}  // namespace

std::uint64_t parse_size(const std::string& text) {
  std::size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    throw Error("'" + text + "' is not a size (e.g. 2GB, 512MiB, 1000000)");
  }
  std::string unit = text.substr(used);
  unit.erase(0, unit.find_first_not_of(' '));
  static const std::pair<const char*, double> units[] = {
      {"", 1},      {"B", 1},          {"KB", 1e3},       {"MB", 1e6},       {"GB", 1e9},       {"TB", 1e12},
      {"KiB", 1024}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1099511627776.0}};
  for (const auto& [name, scale] : units)
    if (unit == name && value > 0 && std::isfinite(value)) return static_cast<std::uint64_t>(value * scale);
  throw Error("'" + text + "' is not a size (e.g. 2GB, 512MiB, 1000000)");
}

namespace {

// experts: each one's name, checkpoint and corpora.
void parse_experts(const Section& top, const YAML::Node& root, MergeConfig& c) {
  const fs::path& source = c.source;
  const fs::path base = source.parent_path();
  const YAML::Node experts = top.node("experts");
  if (!experts) top.fail(root, "missing required key 'experts'");
  if (!experts.IsSequence() || experts.size() == 0) top.fail(experts, "experts must be a non-empty list");
  std::set<std::string> names;
  for (std::size_t i = 0; i < experts.size(); ++i) {
    const Section e(experts[i], "experts[" + std::to_string(i) + "]", source);
    ExpertSpec spec;
    spec.name = e.get<std::string>("name", "a name");
    // A name is a path component of the statistics' datasets (A/{name}): "." and ".." are not.
    if (spec.name.empty() || spec.name == "." || spec.name == ".." || spec.name.find_first_of("/ \t") != std::string::npos)
      e.fail(e.node("name"), "expert name '" + spec.name + "' must be non-empty without '/' or spaces, and not '.' or '..'");
    if (!names.insert(spec.name).second) e.fail(e.node("name"), "expert name '" + spec.name + "' appears twice");
    spec.checkpoint = resolve(base, e.get<std::string>("checkpoint", "a path"));
    if (!e.has("calibration")) e.fail(experts[i], "missing required key '" + e.where("calibration") + "'");
    spec.calibration = parse_corpus(e, "calibration", base, source, spec.checkpoint);
    if (e.has("test")) spec.test = parse_corpus(e, "test", base, source, spec.checkpoint);
    e.finish({"name", "checkpoint", "calibration", "test"});
    c.experts.push_back(std::move(spec));
  }
}

// recipe: defaults that the sections after it override.
void parse_recipe(const Section& top, MergeConfig& c) {
  if (top.has("recipe")) {
    const auto recipe = top.get<std::string>("recipe", "paper or recommended");
    if (recipe == "recommended") {
      c.shared_regmean = true;
      c.router.method = RouterMethod::gaussian;
      c.router.auto_lambda = c.router.auto_temperature = true;
      c.router.routing = Routing::parse("mean+layer:0");
      c.router.top_k = std::min<int>(2, static_cast<int>(c.experts.size()));
      c.calibration.heldout_fraction = 0.1;
      c.router.expert_attention = true;
    } else if (recipe != "paper") {
      top.fail(top.node("recipe"), "recipe must be paper or recommended, got '" + recipe + "'");
    }
  }
}

// shared: how the non-MLP weights are made.
void parse_shared(const Section& top, MergeConfig& c) {
  const fs::path& source = c.source;
  const fs::path base = source.parent_path();
  if (top.has("shared")) {
    const YAML::Node shared = top.node("shared");
    if (shared.IsScalar()) {
      if (shared.Scalar() != "average" && shared.Scalar() != "regmean")
        top.fail(shared, "shared must be 'average', 'regmean', {checkpoint: path} or {moe: path}");
      c.shared_regmean = shared.Scalar() == "regmean";
    } else {
      const Section s(shared, "shared", source);
      if (s.has("checkpoint") == s.has("moe")) s.fail(shared, "shared needs exactly one of checkpoint or moe");
      if (s.has("checkpoint")) c.shared_checkpoint = resolve(base, s.get<std::string>("checkpoint", "a path"));
      if (s.has("moe")) c.shared_moe = resolve(base, s.get<std::string>("moe", "a path"));
      if (s.has("scale")) {
        if (!s.has("checkpoint")) s.fail(s.node("scale"), "shared.scale needs shared.checkpoint (the base it scales from)");
        c.shared_scale = s.get<double>("scale", "a number", 0.0);
        if (!std::isfinite(c.shared_scale)) s.fail(s.node("scale"), "shared.scale must be finite");
      }
      if (s.has("combine")) {
        if (!s.has("scale")) s.fail(s.node("combine"), "shared.combine needs shared.scale (base + scale x (combined - base))");
        const auto combine = s.get<std::string>("combine", "average or regmean");
        if (combine != "average" && combine != "regmean")
          s.fail(s.node("combine"), "shared.combine must be average or regmean, got '" + combine + "'");
        c.shared_regmean = combine == "regmean";
      }
      s.finish({"checkpoint", "moe", "scale", "combine"});
    }
  }
}

// router: the method, its settings and the routing mode.
void parse_router(const Section& top, MergeConfig& c) {
  const fs::path& source = c.source;
  if (top.has("router")) {
    const Section r(top.node("router"), "router", source);
    RouterSettings& rs = c.router;
    const auto method = r.get<std::string>("method", "dume, gaussian, hidden or random", to_string(rs.method));
    if (const auto known = router_method_from_string(method))
      rs.method = *known;
    else
      r.fail(r.node("method"), "router.method must be dume, gaussian, hidden or random, got '" + method + "'");
    // A number, or `auto`: chosen on the held-out split.
    const auto number_or_auto = [&](const char* key, double& value, bool& automatic) {
      if (!r.has(key)) return;
      automatic = r.node(key).IsScalar() && r.node(key).Scalar() == "auto";
      if (!automatic) value = r.get<double>(key, "a number or auto");
    };
    number_or_auto("lambda", rs.lambda, rs.auto_lambda);
    number_or_auto("temperature", rs.temperature, rs.auto_temperature);
    rs.top_k = r.get<int>("top_k", "an integer", rs.top_k);
    rs.context_tokens = r.get<std::int64_t>("context_tokens", "an integer", rs.context_tokens);
    rs.bias = r.get<bool>("bias", "true or false", rs.bias);
    rs.balance = r.get<bool>("balance", "true or false", rs.balance);
    if (!(rs.lambda >= 0) || !std::isfinite(rs.lambda)) r.fail(r.node("lambda"), "router.lambda must be >= 0");
    if (!(rs.temperature > 0) || !std::isfinite(rs.temperature))
      r.fail(r.node("temperature"), "router.temperature must be > 0");
    if (rs.top_k < 1 || static_cast<std::size_t>(rs.top_k) > c.experts.size())
      r.fail(r.node("top_k"), "router.top_k must be between 1 and the number of experts (" +
                                  std::to_string(c.experts.size()) + "), got " + std::to_string(rs.top_k));
    if (rs.context_tokens < 1) r.fail(r.node("context_tokens"), "router.context_tokens must be >= 1");
    if (r.has("routing")) {
      try {
        rs.routing = Routing::parse(r.get<std::string>("routing", "a string"));
      } catch (const Error& e) {
        r.fail(r.node("routing"), std::string("router.") + e.what());
      }
    }
    rs.expert_attention = r.get<bool>("expert_attention", "true or false", rs.expert_attention);
    r.finish({"method", "lambda", "temperature", "top_k", "context_tokens", "bias", "balance", "routing",
              "expert_attention"});
  }
  if (c.router.expert_attention && c.router.routing.from_layer != 0) {
    const std::string message = "router.expert_attention needs one routing decision taken at layer 0 (routing '" +
                                c.router.routing.to_string() + "' is not; try 'mean+layer:0')";
    if (top.has("router") && top.node("router")["routing"]) top.fail(top.node("router")["routing"], message);
    if (top.has("router") && top.node("router")["expert_attention"]) top.fail(top.node("router")["expert_attention"], message);
    top.fail(top.node("recipe"), message);
  }
}

// calibration: windows, batches, checkpoints and the held-out split.
void parse_calibration(const Section& top, MergeConfig& c) {
  const fs::path& source = c.source;
  if (top.has("calibration")) {
    const Section s(top.node("calibration"), "calibration", source);
    CalibrationSettings& cs = c.calibration;
    cs.sequence_length = s.get<std::int64_t>("sequence_length", "an integer", cs.sequence_length);
    cs.max_sequences = s.get<std::int64_t>("max_sequences", "an integer", cs.max_sequences);
    cs.batch_sequences = s.get<std::int64_t>("batch_sequences", "an integer", cs.batch_sequences);
    if (cs.sequence_length < 2) s.fail(s.node("sequence_length"), "calibration.sequence_length must be >= 2");
    if (cs.max_sequences < 0) s.fail(s.node("max_sequences"), "calibration.max_sequences must be >= 0");
    cs.checkpoint_every = s.get<std::int64_t>("checkpoint_every", "an integer", cs.checkpoint_every);
    if (cs.batch_sequences < 1) s.fail(s.node("batch_sequences"), "calibration.batch_sequences must be >= 1");
    if (cs.checkpoint_every < 0)
      s.fail(s.node("checkpoint_every"), "calibration.checkpoint_every must be >= 0 (sequences; 0 = no periodic checkpoints)");
    cs.checkpoint_minutes = s.get<double>("checkpoint_minutes", "a number", cs.checkpoint_minutes);
    if (!(cs.checkpoint_minutes >= 0 && cs.checkpoint_minutes <= 1e6))
      s.fail(s.node("checkpoint_minutes"), "calibration.checkpoint_minutes must be >= 0 (0 = no timed checkpoints)");
    cs.heldout_fraction = s.get<double>("heldout_fraction", "a number", cs.heldout_fraction);
    if (!(cs.heldout_fraction >= 0 && cs.heldout_fraction < 1))
      s.fail(s.node("heldout_fraction"), "calibration.heldout_fraction must be in [0, 1)");
    cs.heldout_tokens = s.get<std::int64_t>("heldout_tokens", "an integer", cs.heldout_tokens);
    if (cs.heldout_tokens < 1) s.fail(s.node("heldout_tokens"), "calibration.heldout_tokens must be >= 1");
    s.finish({"sequence_length", "max_sequences", "batch_sequences", "checkpoint_every", "checkpoint_minutes",
              "heldout_fraction", "heldout_tokens"});
  }
}

// Checks across sections: auto settings need a held-out split; C is at most the window.
void check_router_settings(const Section& top, const YAML::Node& root, MergeConfig& c) {
  const YAML::Node router = top.has("router") ? top.node("router") : root;
  if (c.router.auto_lambda && c.router.method != RouterMethod::dume && c.router.method != RouterMethod::gaussian)
    top.fail(router, "router.lambda: auto applies to the dume and gaussian routers, not '" + to_string(c.router.method) + "'");
  if ((c.router.auto_lambda || c.router.auto_temperature) && c.calibration.heldout_fraction == 0)
    top.fail(router, "router.lambda or router.temperature 'auto' is chosen on a held-out split: set "
                     "calibration.heldout_fraction (for example 0.1)");
  // Only the first C positions are ever used: a window shorter than C just uses all of it.
  c.router.context_tokens = std::min(c.router.context_tokens, c.calibration.sequence_length);
}

// output: a path, or {path, dtype, shard_size}.
void parse_output(const Section& top, const YAML::Node& root, MergeConfig& c) {
  const fs::path& source = c.source;
  const fs::path base = source.parent_path();
  const YAML::Node output = top.node("output");
  if (!output) top.fail(root, "missing required key 'output'");
  if (output.IsScalar()) {
    c.output.path = output_path(resolve(base, output.Scalar()));
  } else {
    const Section o(output, "output", source);
    c.output.path = output_path(resolve(base, o.get<std::string>("path", "a path")));
    c.output.dtype = parse_dtype(o, "dtype");
    if (o.has("shard_size")) {
      try {
        c.output.shard_bytes = parse_size(o.get<std::string>("shard_size", "a size"));
      } catch (const Error& e) {
        o.fail(o.node("shard_size"), std::string("output.shard_size: ") + e.what());
      }
    }
    o.finish({"path", "dtype", "shard_size"});
  }
}

// eval: methods, k values and routing modes compared, where results go.
void parse_eval(const Section& top, MergeConfig& c) {
  const fs::path& source = c.source;
  const fs::path base = source.parent_path();
  c.eval.output = c.output.path / "eval";
  if (top.has("eval")) {
    const Section s(top.node("eval"), "eval", source);
    EvalSettings& es = c.eval;
    if (s.has("methods")) {
      const YAML::Node methods = s.node("methods");
      if (!methods.IsSequence() || methods.size() == 0) s.fail(methods, "eval.methods must be a non-empty list");
      es.methods.clear();
      for (const auto& m : methods) {
        const auto name = m.as<std::string>();
        static const std::set<std::string> known = {"dume", "experts", "average", "random", "oracle"};
        if (!known.contains(name))
          s.fail(m, "unknown eval method '" + name + "' (known: dume, experts, average, random, oracle)");
        es.methods.push_back(name);
      }
    }
    if (s.has("top_k")) {
      const YAML::Node ks = s.node("top_k");
      if (!ks.IsSequence() || ks.size() == 0) s.fail(ks, "eval.top_k must be a non-empty list of integers");
      for (const auto& k : ks) {
        int value = 0;
        try {
          value = k.as<int>();
        } catch (const YAML::Exception&) {
          s.fail(k, "eval.top_k must list integers, got '" + k.Scalar() + "'");
        }
        if (value < 1 || static_cast<std::size_t>(value) > c.experts.size())
          s.fail(k, "eval.top_k values must be between 1 and the number of experts");
        es.top_k.push_back(value);
      }
    }
    if (s.has("routing")) {
      const YAML::Node modes = s.node("routing");
      if (!modes.IsSequence() || modes.size() == 0) s.fail(modes, "eval.routing must be a non-empty list");
      for (const auto& m : modes) {
        try {
          es.routing.push_back(Routing::parse(m.as<std::string>()));
        } catch (const Error& e) {
          s.fail(m, std::string("eval.") + e.what());
        }
      }
    }
    if (s.has("output")) es.output = output_path(resolve(base, s.get<std::string>("output", "a path")));
    es.max_sequences = s.get<std::int64_t>("max_sequences", "an integer", es.max_sequences);
    if (es.max_sequences < 0) s.fail(s.node("max_sequences"), "eval.max_sequences must be >= 0");
    es.seed = s.get<std::uint64_t>("seed", "a non-negative integer", es.seed);
    s.finish({"methods", "top_k", "routing", "output", "max_sequences", "seed"});
  }
  if (c.eval.top_k.empty()) c.eval.top_k = {c.router.top_k};
  if (c.eval.routing.empty()) c.eval.routing = {c.router.routing};
}

// compute: threads, backend and memory; parallel: the grid's stages.
void parse_compute(const Section& top, MergeConfig& c) {
  const fs::path& source = c.source;
  if (top.has("compute")) {
    const Section s(top.node("compute"), "compute", source);
    c.threads = s.get<int>("threads", "an integer", 0);
    // OpenMP's runtime crashes long before 100000 threads; no node has over 1024 cores.
    if (c.threads < 0 || c.threads > 1024) s.fail(s.node("threads"), "compute.threads must be between 0 and 1024");
    c.backend = s.get<std::string>("backend", "a string", c.backend);
    if (c.backend != "cpu" && c.backend != "cuda" && c.backend != "auto")
      s.fail(s.node("backend"), "compute.backend must be cpu, cuda or auto, not '" + c.backend + "'");
    if (s.has("memory")) {
      try {
        c.memory = static_cast<std::int64_t>(parse_size(s.get<std::string>("memory", "a size")));
      } catch (const Error& e) {
        s.fail(s.node("memory"), std::string("compute.memory: ") + e.what());
      }
    }
    s.finish({"threads", "backend", "memory"});
  }
  if (top.has("parallel")) {
    const Section s(top.node("parallel"), "parallel", source);
    c.stages = s.get<int>("stages", "an integer", 1);
    if (c.stages < 1) s.fail(s.node("stages"), "parallel.stages must be at least 1");
    s.finish({"stages"});
  }
}

MergeConfig parse_config(const std::string& text, const fs::path& source) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw Error(source.filename().string() + ":" + std::to_string(e.mark.line + 1) + ": invalid YAML: " + e.msg);
  }
  if (!root || root.IsNull()) throw Error(source.string() + ": empty configuration");
  MergeConfig c;
  c.source = source;
  const Section top(root, "", source);
  // In this order: the recipe's defaults need the experts; checks and eval's defaults need the
  // router and calibration.
  parse_experts(top, root, c);
  parse_recipe(top, c);
  parse_shared(top, c);
  parse_router(top, c);
  parse_calibration(top, c);
  check_router_settings(top, root, c);
  parse_output(top, root, c);
  if (top.has("moe")) c.fold_into = resolve(source.parent_path(), top.get<std::string>("moe", "a path"));
  parse_eval(top, c);
  parse_compute(top, c);
  top.finish({"experts", "recipe", "shared", "router", "calibration", "output", "eval", "compute", "parallel", "moe"});
  for (const auto& item : root) c.keys.push_back(item.first.as<std::string>());
  return c;
}

}  // namespace

MergeConfig merge_config_parse(const std::string& text, const fs::path& source) {
  try {
    return parse_config(text, source);
  } catch (const YAML::Exception& e) {  // a node of the wrong kind that a check above missed (found by fuzzing)
    throw Error(source.filename().string() + ":" + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
}

MergeConfig merge_config_read(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw Error(path.string() + ": cannot read the configuration");
  std::stringstream text;
  text << in.rdbuf();
  return merge_config_parse(text.str(), fs::absolute(path));
}

namespace {

void add_corpus(std::vector<InputPath>& inputs, const std::string& role, const CorpusSpec& spec) {
  if (spec.path.empty()) return;
  if (spec.format == CorpusFormat::megatron) {
    inputs.push_back({role, spec.path.string() + ".bin"});
    inputs.push_back({role, spec.path.string() + ".idx"});
  } else if (spec.format == CorpusFormat::text || spec.format == CorpusFormat::jsonl) {
    try {
      for (const auto& file : expand_glob(spec.path.string())) inputs.push_back({role, file});
    } catch (const Error&) {  // nothing matches: nothing to protect, and the reader says so
    }
  } else {
    inputs.push_back({role, spec.path});
  }
  if (!spec.tokenizer.empty()) inputs.push_back({role + "'s tokenizer", spec.tokenizer});
}

}  // namespace

std::string to_string(RouterMethod method) { return kRouterMethods.at(static_cast<std::size_t>(method)); }

std::optional<RouterMethod> router_method_from_string(const std::string& name) {
  const auto it = std::find(kRouterMethods.begin(), kRouterMethods.end(), name);
  if (it == kRouterMethods.end()) return std::nullopt;
  return static_cast<RouterMethod>(it - kRouterMethods.begin());
}

std::vector<InputPath> input_paths(const MergeConfig& config) {
  std::vector<InputPath> inputs;
  if (!config.source.empty()) inputs.push_back({"the configuration", config.source});
  for (const auto& e : config.experts) {
    inputs.push_back({"expert '" + e.name + "'", e.checkpoint});
    add_corpus(inputs, "the calibration corpus of '" + e.name + "'", e.calibration);
    if (e.test) add_corpus(inputs, "the test corpus of '" + e.name + "'", *e.test);
  }
  if (config.shared_checkpoint) inputs.push_back({"the shared checkpoint", *config.shared_checkpoint});
  if (config.shared_moe) inputs.push_back({"the shared MoE", *config.shared_moe});
  if (config.fold_into) inputs.push_back({"the MoE", *config.fold_into});
  return inputs;
}

std::string MergeConfig::resolved_yaml() const {
  YAML::Emitter out;
  const auto corpus = [&out](const CorpusSpec& s) {
    out << YAML::Flow << YAML::BeginMap << YAML::Key << "path" << YAML::Value << s.path.string() << YAML::Key
        << "format" << YAML::Value << std::string(to_string(s.format));
    if (!s.dataset.empty()) out << YAML::Key << "dataset" << YAML::Value << s.dataset;
    if (is_text_format(s.format)) {
      out << YAML::Key << "tokenizer" << YAML::Value << s.tokenizer.string();
      if (s.format == CorpusFormat::jsonl) out << YAML::Key << "field" << YAML::Value << s.field;
      if (s.format == CorpusFormat::text)
        out << YAML::Key << "documents" << YAML::Value << (s.blank_line_documents ? "blank-line" : "file");
      out << YAML::Key << "on_bad" << YAML::Value << (s.skip_bad_documents ? "skip" : "error");
    }
    if (is_text_format(s.format) || s.format == CorpusFormat::megatron)
      out << YAML::Key << "packing" << YAML::Value << (s.packing == Packing::truncate ? "truncate" : "pack");
    out << YAML::EndMap;
  };
  out << YAML::BeginMap << YAML::Key << "experts" << YAML::Value << YAML::BeginSeq;
  for (const auto& e : experts) {
    out << YAML::BeginMap << YAML::Key << "name" << YAML::Value << e.name << YAML::Key << "checkpoint"
        << YAML::Value << e.checkpoint.string() << YAML::Key << "calibration" << YAML::Value;
    corpus(e.calibration);
    if (e.test) {
      out << YAML::Key << "test" << YAML::Value;
      corpus(*e.test);
    }
    out << YAML::EndMap;
  }
  out << YAML::EndSeq << YAML::Key << "shared" << YAML::Value;
  if (shared_checkpoint)
    out << YAML::Flow << YAML::BeginMap << YAML::Key << "checkpoint" << YAML::Value << shared_checkpoint->string()
        << YAML::Key << "scale" << YAML::Value << shared_scale << YAML::Key << "combine" << YAML::Value
        << (shared_regmean ? "regmean" : "average") << YAML::EndMap;
  else if (shared_moe)
    out << YAML::Flow << YAML::BeginMap << YAML::Key << "moe" << YAML::Value << shared_moe->string() << YAML::EndMap;
  else
    out << (shared_regmean ? "regmean" : "average");
  if (fold_into) out << YAML::Key << "moe" << YAML::Value << fold_into->string();
  out << YAML::Key << "router" << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key << "method"
      << YAML::Value << to_string(router.method) << YAML::Key << "lambda" << YAML::Value;
  if (router.auto_lambda)
    out << "auto";
  else
    out << router.lambda;
  out << YAML::Key << "temperature" << YAML::Value;
  if (router.auto_temperature)
    out << "auto";
  else
    out << router.temperature;
  out << YAML::Key << "top_k" << YAML::Value << router.top_k << YAML::Key << "context_tokens" << YAML::Value
      << router.context_tokens << YAML::Key << "bias" << YAML::Value << router.bias << YAML::Key << "balance"
      << YAML::Value << router.balance << YAML::Key << "routing" << YAML::Value << router.routing.to_string()
      << YAML::Key << "expert_attention" << YAML::Value << router.expert_attention << YAML::EndMap;
  out << YAML::Key << "calibration" << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key
      << "sequence_length" << YAML::Value << calibration.sequence_length << YAML::Key << "max_sequences"
      << YAML::Value << calibration.max_sequences << YAML::Key << "batch_sequences" << YAML::Value
      << calibration.batch_sequences << YAML::Key << "checkpoint_every" << YAML::Value << calibration.checkpoint_every
      << YAML::Key << "checkpoint_minutes" << YAML::Value << calibration.checkpoint_minutes
      << YAML::Key << "heldout_fraction" << YAML::Value << calibration.heldout_fraction << YAML::Key << "heldout_tokens"
      << YAML::Value << calibration.heldout_tokens << YAML::EndMap;
  out << YAML::Key << "output" << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key << "path" << YAML::Value
      << output.path.string();
  if (output.dtype) out << YAML::Key << "dtype" << YAML::Value << std::string(to_string(*output.dtype));
  out << YAML::Key << "shard_size" << YAML::Value << std::to_string(output.shard_bytes) << YAML::EndMap;
  out << YAML::Key << "eval" << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key << "methods" << YAML::Value
      << YAML::Flow << eval.methods << YAML::Key << "top_k" << YAML::Value << YAML::Flow << eval.top_k;
  std::vector<std::string> routing;
  for (const Routing& r : eval.routing) routing.push_back(r.to_string());
  out << YAML::Key << "routing" << YAML::Value << YAML::Flow << routing << YAML::Key << "output" << YAML::Value << eval.output.string() << YAML::Key << "max_sequences" << YAML::Value
      << eval.max_sequences << YAML::Key << "seed" << YAML::Value << eval.seed << YAML::EndMap;
  out << YAML::Key << "compute" << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key << "threads"
      << YAML::Value << threads << YAML::Key << "backend" << YAML::Value << backend;
  if (memory > 0) out << YAML::Key << "memory" << YAML::Value << std::to_string(memory);
  out << YAML::EndMap;
  out << YAML::Key << "parallel" << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key << "stages" << YAML::Value
      << stages << YAML::EndMap << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

}  // namespace dume
