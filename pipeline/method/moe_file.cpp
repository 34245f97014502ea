#include "moe_file.hpp"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <numeric>

#include "comm.hpp"
#include "hdf5_util.hpp"

namespace dume {

namespace fs = std::filesystem;

std::string moe_path::layer(std::int64_t l, const std::string& rest) {
  return "/layers/" + std::to_string(l) + "/" + rest;
}

std::string moe_path::expert(std::int64_t l, std::int64_t e, const std::string& proj) {
  return layer(l, "experts/" + std::to_string(e) + "/" + proj);
}

std::uint64_t hash_bytes(std::uint64_t hash, std::span<const std::byte> bytes) {
  // FNV-1a over 8-byte words (then the tail bytes): an identity check, not a cryptographic hash.
  constexpr std::uint64_t kPrime = 1099511628211ull;
  std::size_t i = 0;
  for (; i + 8 <= bytes.size(); i += 8) {
    std::uint64_t word;
    std::memcpy(&word, bytes.data() + i, 8);
    hash = (hash ^ word) * kPrime;
  }
  for (; i < bytes.size(); ++i) hash = (hash ^ static_cast<std::uint64_t>(bytes[i])) * kPrime;
  return hash;
}

std::string hash_hex(std::uint64_t hash) {
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(hash));
  return text;
}

namespace {

std::string shard_name(std::size_t i, std::size_t n) {
  char name[64];
  std::snprintf(name, sizeof name, "moe-%05zu-of-%05zu.h5", i + 1, n);
  return name;
}

DType dtype_from_attribute(const std::string& name, const std::string& where) {
  if (const auto dtype = weight_dtype_from_name(name)) return *dtype;
  throw Error(where + ": unknown weight dtype '" + name + "'");
}

}  // namespace

std::vector<std::size_t> plan_shards(const std::vector<MoeTensor>& tensors, std::uint64_t shard_bytes,
                                     std::span<const int> writer_of) {
  DUME_ASSERT(writer_of.empty() || writer_of.size() == tensors.size());
  std::vector<std::size_t> shard_of(tensors.size());
  std::size_t shards = 0, filled = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const std::size_t size = tensors[i].byte_size();
    const bool next_writer = !writer_of.empty() && i > 0 && writer_of[i] != writer_of[i - 1];
    if (shards == 0 || next_writer || (filled > 0 && filled + size > shard_bytes)) {
      ++shards;
      filled = 0;
    }
    shard_of[i] = shards - 1;
    filled += size;
  }
  return shard_of;
}

std::vector<int> tensor_writers(const std::vector<MoeTensor>& tensors, const Grid& grid) {
  std::vector<int> writers;
  for (const MoeTensor& t : tensors) writers.push_back(grid.writer_of_tensor(t.name));
  return writers;
}

namespace {

// An external link at `path` of `file` to the dataset of the same path in `target` (a file name
// in the same directory), with the groups it needs.
void link_external(hid_t file, const std::string& target, const std::string& path, const std::string& where) {
  H5Id lcpl(h5_check(H5Pcreate(H5P_LINK_CREATE), "H5Pcreate"));
  h5_check(H5Pset_create_intermediate_group(lcpl.get(), 1), "H5Pset_create_intermediate_group");
  h5_check(H5Lcreate_external(target.c_str(), path.c_str(), file, path.c_str(), lcpl.get(), H5P_DEFAULT),
           where + ": cannot link " + path);
}

struct ShardPlan {
  std::vector<std::size_t> shard_of;  // per tensor
  std::vector<std::string> names;     // per shard
};

ShardPlan shard_plan(const std::vector<MoeTensor>& tensors, std::uint64_t shard_bytes, std::span<const int> writer_of = {}) {
  ShardPlan plan{plan_shards(tensors, shard_bytes, writer_of), {}};
  const std::size_t shards = plan.shard_of.empty() ? 0 : plan.shard_of.back() + 1;
  for (std::size_t s = 0; s < shards; ++s) plan.names.push_back(shard_name(s, shards));
  return plan;
}

// The shards `mine` selects.
void write_shards(const fs::path& dir, const std::vector<MoeTensor>& tensors, const ShardPlan& plan,
                  const std::function<bool(std::size_t shard)>& mine) {
  for (std::size_t s = 0; s < plan.names.size(); ++s) {
    if (!mine(s)) continue;
    H5Id file = h5::create_file(dir / plan.names[s]);
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      if (plan.shard_of[i] != s) continue;
      const std::vector<std::byte> bytes = tensors[i].bytes();
      DUME_ASSERT(bytes.size() == tensors[i].byte_size());
      h5::write_dataset(file.get(), tensors[i].name, tensors[i].dtype, tensors[i].shape, bytes.data());
    }
    h5_check(H5Fclose(file.release()), (dir / plan.names[s]).string() + ": cannot close (disk full?)");
  }
}

void write_index(const fs::path& dir, const std::vector<MoeTensor>& tensors, const ShardPlan& plan, const MoeInfo& info) {
  H5Id index = h5::create_file(dir / "moe.h5");
  const hid_t root = index.get();
  h5::write_attribute(root, "format", std::string("dume-moe"));
  h5::write_attribute(root, "format_version", std::int64_t{1});
  h5::write_attribute(root, "config", info.config.json_text);
  h5::write_attribute(root, "experts", info.experts);
  h5::write_attribute(root, "router_method", to_string(info.router.method));
  h5::write_attribute(root, "lambda", info.router.lambda);
  h5::write_attribute(root, "temperature", info.router.temperature);
  h5::write_attribute(root, "top_k", std::int64_t{info.router.top_k});
  h5::write_attribute(root, "context_tokens", info.router.context_tokens);
  h5::write_attribute(root, "router_bias", std::int64_t{info.router.bias});
  h5::write_attribute(root, "router_balance", std::int64_t{info.router.balance});
  h5::write_attribute(root, "routing", info.router.routing.to_string());
  h5::write_attribute(root, "auto_lambda", std::int64_t{info.router.auto_lambda});
  h5::write_attribute(root, "auto_temperature", std::int64_t{info.router.auto_temperature});
  h5::write_attribute(root, "expert_attention", std::int64_t{info.router.expert_attention});
  if (!info.router.layer_lambda.empty()) {  // what auto chose
    const std::int64_t shape[] = {static_cast<std::int64_t>(info.router.layer_lambda.size())};
    h5::write_dataset(root, "/layer_lambda", DType::F64, shape, info.router.layer_lambda.data());
  }
  h5::write_attribute(root, "dtype", h5::dtype_attribute(info.dtype));
  h5::write_attribute(root, "shared", info.shared);
  h5::write_attribute(root, "shared_hash", info.shared_hash);
  h5::write_attribute(root, "shards", plan.names);
  for (std::size_t i = 0; i < tensors.size(); ++i)
    link_external(root, plan.names[plan.shard_of[i]], tensors[i].name, (dir / "moe.h5").string());
  h5_check(H5Fclose(index.release()), (dir / "moe.h5").string() + ": cannot close (disk full?)");
}

}  // namespace

void write_moe(const fs::path& dir, const std::vector<MoeTensor>& tensors, const MoeInfo& info,
               std::uint64_t shard_bytes) {
  const ShardPlan plan = shard_plan(tensors, shard_bytes);
  write_shards(dir, tensors, plan, [](std::size_t) { return true; });
  write_index(dir, tensors, plan, info);
}

void write_moe(const fs::path& dir, const std::vector<MoeTensor>& unordered, const MoeInfo& info,
               std::uint64_t shard_bytes, const Grid& grid) {
  // Writer by writer (ranks ascending: stage by stage), so that a shard holds one rank's tensors.
  const std::vector<int> writer_of_unordered = tensor_writers(unordered, grid);
  std::vector<std::size_t> order(unordered.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return writer_of_unordered[a] < writer_of_unordered[b]; });
  std::vector<MoeTensor> tensors;
  std::vector<int> writer_of;
  for (const std::size_t i : order) {
    tensors.push_back(unordered[i]);
    writer_of.push_back(writer_of_unordered[i]);
  }
  const ShardPlan plan = shard_plan(tensors, shard_bytes, writer_of);
  collective_phase([&] {
    write_shards(dir, tensors, plan, [&](std::size_t shard) {
      const auto first = static_cast<std::size_t>(std::find(plan.shard_of.begin(), plan.shard_of.end(), shard) - plan.shard_of.begin());
      return writer_of[first] == mpi_rank();
    });
  });
  collective_phase([&] {
    if (mpi_rank() == 0) write_index(dir, tensors, plan, info);
  });
}

std::set<std::string> moe_dataset_paths(const MoeInfo& info) {
  const ModelConfig& c = info.config;
  std::set<std::string> paths;
  const auto add = [&](const std::string&, const std::string& path, const auto&, const auto&) { paths.insert(path); };
  SharedWeights names_only;  // the walk visits names and shapes; the const walk indexes layers
  names_only.layers.resize(static_cast<std::size_t>(c.num_layers));
  for_each_shared_tensor(c, static_cast<const SharedWeights&>(names_only), add);
  const MlpWeights mlp;
  const AttentionWeights attention;
  for (std::int64_t l = 0; l < c.num_layers; ++l) {
    for (std::int64_t e = 0; e < static_cast<std::int64_t>(info.experts.size()); ++e) {
      const auto add_expert = [&](const std::string&, const std::string& name, const auto&, const auto&) {
        paths.insert(moe_path::expert(l, e, name));
      };
      for_each_mlp_tensor(c, mlp, add_expert);
      if (info.router.expert_attention) for_each_attention_tensor(c, attention, add_expert);
    }
    paths.insert(moe_path::layer(l, "router/weight"));
    paths.insert(moe_path::layer(l, "router/bias"));
    if (info.router.method == RouterMethod::gaussian) paths.insert(moe_path::layer(l, "router/quadratic"));
  }
  if (info.router.auto_lambda) paths.insert("/layer_lambda");
  return paths;
}

void check_moe_datasets(const fs::path& dir, const MoeInfo& info) {
  const fs::path path = dir / "moe.h5";
  const H5Id file = h5::open_file(path);
  const std::set<std::string> expected = moe_dataset_paths(info);
  for (const std::string& p : h5::list_datasets(file.get()))
    if (!expected.contains(p))
      throw Error(path.string() + ": dataset '" + p + "' is not part of an MoE of " +
                  std::to_string(info.config.num_layers) + " layers and " + std::to_string(info.experts.size()) +
                  " experts (dume verify lists every problem)");
}

MoeInfo read_moe_info(const fs::path& dir) {
  const fs::path path = dir / "moe.h5";
  const H5Id file = h5::open_file(path);
  const hid_t root = file.get();
  if (!h5::has_attribute(root, "format") || h5::read_string_attribute(root, "format") != "dume-moe")
    throw Error(path.string() + ": not a dume MoE index (no format attribute 'dume-moe')");
  MoeInfo info;
  info.config = model_config_parse(h5::read_string_attribute(root, "config"), path.string() + ": attribute 'config'");
  info.experts = h5::read_strings_attribute(root, "experts");
  const std::string method = h5::read_string_attribute(root, "router_method");
  const auto known = router_method_from_string(method);
  if (!known) throw Error(path.string() + ": unknown router_method '" + method + "'");
  info.router.method = *known;
  info.router.lambda = h5::read_double_attribute(root, "lambda");
  info.router.temperature = h5::read_double_attribute(root, "temperature");
  info.router.top_k = static_cast<int>(h5::read_int_attribute(root, "top_k"));
  info.router.context_tokens = h5::read_int_attribute(root, "context_tokens");
  info.router.bias = h5::read_int_attribute(root, "router_bias") != 0;
  info.router.balance = h5::read_int_attribute(root, "router_balance") != 0;
  // MoEs written before auto settings existed have neither.
  info.router.auto_lambda = h5::has_attribute(root, "auto_lambda") && h5::read_int_attribute(root, "auto_lambda") != 0;
  info.router.auto_temperature =
      h5::has_attribute(root, "auto_temperature") && h5::read_int_attribute(root, "auto_temperature") != 0;
  info.router.expert_attention =
      h5::has_attribute(root, "expert_attention") && h5::read_int_attribute(root, "expert_attention") != 0;
  if (info.router.auto_lambda && h5::exists(root, "/layer_lambda")) {
    const std::int64_t shape[] = {info.config.num_layers};
    info.router.layer_lambda = h5::read_f64(root, "/layer_lambda", shape);
  }
  try {  // MoEs written before routing modes existed route per token
    if (h5::has_attribute(root, "routing")) info.router.routing = Routing::parse(h5::read_string_attribute(root, "routing"));
  } catch (const Error& e) {
    throw Error(path.string() + ": " + e.what());
  }
  info.dtype = dtype_from_attribute(h5::read_string_attribute(root, "dtype"), path.string());
  info.shared = h5::read_string_attribute(root, "shared");
  info.shared_hash = h5::read_string_attribute(root, "shared_hash");
  info.shard_files = h5::read_strings_attribute(root, "shards");
  if (info.router.expert_attention && info.router.routing.from_layer != 0)
    throw Error(path.string() + ": expert_attention with routing '" + info.router.routing.to_string() +
                "', which takes no decision at layer 0");
  const auto E = static_cast<int>(info.experts.size());
  if (E < 1 || info.router.top_k < 1 || info.router.top_k > E || !(info.router.temperature > 0))
    throw Error(path.string() + ": inconsistent router settings (experts " + std::to_string(E) + ", top_k " +
                std::to_string(info.router.top_k) + ")");
  return info;
}

Model empty_moe_model(const MoeInfo& info) {
  Model m = empty_model(info.config, static_cast<std::int64_t>(info.experts.size()), info.router.expert_attention);
  if (m.routers.empty()) m.routers.resize(static_cast<std::size_t>(info.config.num_layers));  // one expert: routed still
  m.temperature = static_cast<float>(info.router.temperature);
  m.top_k = info.router.top_k;
  m.routing = info.router.routing;
  return m;
}

LayerFill moe_layers(const fs::path& dir, const MoeInfo& info) {
  const auto file = std::make_shared<H5Id>(h5::open_file(dir / "moe.h5"));
  const ModelConfig& c = info.config;
  const std::int64_t D = c.hidden_size, V = c.vocab_size, E = static_cast<std::int64_t>(info.experts.size());
  const auto read_into = [file](const std::string& path, const std::vector<std::int64_t>& shape, auto& storage) {
    detail::resize_to(storage, shape.size() == 3 ? std::vector<std::int64_t>{shape[0] * shape[1], shape[2]} : shape);
    h5::read_f32(file->get(), path, shape, {storage.data(), static_cast<std::size_t>(storage.size())});
  };
  LayerFill fill;
  fill.layer = [=, gaussian = info.router.method == RouterMethod::gaussian,
                expert_attention = info.router.expert_attention](std::int64_t l, Model& m) {
    const auto layer = static_cast<std::size_t>(l);
    for_each_layer_tensor(c, l, m.shared.layers[layer], [&](const std::string&, const std::string& path,
                                                             const std::vector<std::int64_t>& shape, auto& storage) {
      read_into(path, shape, storage);
    });
    m.experts[layer].assign(static_cast<std::size_t>(E), MlpWeights());
    for (std::int64_t e = 0; e < E; ++e)
      for_each_mlp_tensor(c, m.experts[layer][static_cast<std::size_t>(e)],
                          [&](const std::string&, const std::string& name, const std::vector<std::int64_t>& shape,
                              auto& storage) { read_into(moe_path::expert(l, e, name), shape, storage); });
    if (expert_attention) {
      m.expert_attention[layer].assign(static_cast<std::size_t>(E), AttentionWeights());
      for (std::int64_t e = 0; e < E; ++e)
        for_each_attention_tensor(c, m.expert_attention[layer][static_cast<std::size_t>(e)],
                                  [&](const std::string&, const std::string& name, const std::vector<std::int64_t>& shape,
                                      auto& storage) { read_into(moe_path::expert(l, e, name), shape, storage); });
    }
    Router& router = m.routers[layer];
    read_into(moe_path::layer(l, "router/weight"), {E, D}, router.weight);
    read_into(moe_path::layer(l, "router/bias"), {E}, router.bias);
    if (gaussian) read_into(moe_path::layer(l, "router/quadratic"), {E, D, D}, router.quadratic);
  };
  fill.head = [=](SharedWeights& shared) {
    read_into("/norm", {D}, shared.norm);
    if (!c.tie_word_embeddings) read_into("/lm_head", {V, D}, shared.lm_head);
  };
  fill.embedding = [file, D, V](std::span<const std::uint32_t> ids) {
    Matrix rows(static_cast<Eigen::Index>(ids.size()), D);
    h5::read_f32_rows(file->get(), "/embed_tokens", std::vector<std::int64_t>{V, D}, ids,
                      {rows.data(), static_cast<std::size_t>(rows.size())});
    return rows;
  };
  return fill;
}

Model read_moe_model(const fs::path& dir) {
  const MoeInfo info = read_moe_info(dir);
  return load_whole(moe_layers(dir, info), empty_moe_model(info));
}

SharedWeights read_moe_shared(const fs::path& dir) {
  const MoeInfo info = read_moe_info(dir);
  const H5Id file = h5::open_file(dir / "moe.h5");
  SharedWeights w;
  for_each_shared_tensor(info.config, w, [&](const std::string&, const std::string& path,
                                             const std::vector<std::int64_t>& shape, auto& storage) {
    const auto v = h5::read_f32(file.get(), path, shape);
    std::copy(v.begin(), v.end(), storage.data());
  });
  return w;
}

namespace {

// What a statistics file says besides its per-layer datasets.
void write_statistics_attributes(hid_t f, const Statistics& stats) {
  std::vector<std::string> names;
  std::vector<std::int64_t> tokens;
  for (const auto& d : stats.domains) {
    names.push_back(d.name);
    tokens.push_back(d.tokens);
  }
  h5::write_attribute(f, "format", std::string("dume-stats"));
  h5::write_attribute(f, "domains", names);
  h5::write_attribute(f, "hidden_size", stats.hidden_size);
  h5::write_attribute(f, "context_tokens", stats.context_tokens);
  h5::write_attribute(f, "shared_hash", stats.shared_hash);
  const std::int64_t tokens_shape[] = {static_cast<std::int64_t>(tokens.size())};
  h5::write_dataset(f, "/tokens", DType::I64, tokens_shape, tokens.data());
}

}  // namespace

StatisticsFile::StatisticsFile(const fs::path& output, std::int64_t layers, std::int64_t hidden_size)
    : scratch_(output, "stats.h5"),
      layers_(layers),
      n_(hidden_size + 1),
      file_(std::make_shared<const H5Id>(h5::create_file_in(scratch_.path()))) {}

void StatisticsFile::write_layer(const std::string& name, std::int64_t l, const MatrixXdRow& A) {
  DUME_ASSERT(A.rows() == n_ && A.cols() == n_);
  const std::int64_t shape[] = {n_, n_};
  h5::write_dataset(file_->get(), moe_path::layer(l, "A/" + name), DType::F64, shape, A.data());
}

void StatisticsFile::write_heldout(const std::string& name, std::int64_t l, const MatrixXfRow& X) {
  const std::int64_t shape[] = {X.rows(), X.cols()};
  h5::write_dataset(file_->get(), moe_path::layer(l, "heldout/" + name), DType::F32, shape, X.data());
  heldout_written_.insert(name);
}

void StatisticsFile::add(DomainStatistics& domain) {
  DUME_ASSERT(domain.A.empty() || static_cast<std::int64_t>(domain.A.size()) == layers_);
  const bool heldout = !domain.heldout.empty() || heldout_written_.contains(domain.name);
  for (std::int64_t l = 0; l < layers_; ++l) {
    const auto i = static_cast<std::size_t>(l);
    if (!domain.A.empty()) write_layer(domain.name, l, domain.A[i]);
    if (!domain.heldout.empty()) write_heldout(domain.name, l, domain.heldout.at(i));
  }
  domain.stored = std::make_shared<const StoredStatistics>(file_, domain.name, layers_, n_, heldout, /*checked=*/false);
  domain.A = {};
  domain.heldout = {};
  added_.insert(domain.name);
}

void StatisticsFile::write_rest(const Statistics& stats, std::span<const std::int64_t> layers) {
  const hid_t f = file_->get();
  const std::int64_t n = stats.hidden_size + 1, E = static_cast<std::int64_t>(stats.domains.size());
  write_statistics_attributes(f, stats);
  for (const std::int64_t l : layers) {
    const Statistics one = stats.only_layer(l);  // one layer's statistics in memory at a time
    const auto i = static_cast<std::size_t>(l);
    for (const auto& d : one.domains) {
      if (added_.contains(d.name)) continue;
      write_layer(d.name, l, d.A[i]);
      if (!d.heldout.empty()) write_heldout(d.name, l, d.heldout[i]);
    }
    const std::int64_t b_shape[] = {n, E};
    const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> B = one.B(l);
    h5::write_dataset(f, moe_path::layer(l, "B"), DType::F64, b_shape, B.data());
  }
  // Stays open while the added domains' statistics are read from it (until the job ends).
  h5_check(H5Fflush(f, H5F_SCOPE_GLOBAL), scratch_.path().string() + ": cannot write (disk full?)");
}

void StatisticsFile::finish(const Statistics& stats, const fs::path& target) {
  std::vector<std::int64_t> every(static_cast<std::size_t>(stats.layers()));
  std::iota(every.begin(), every.end(), 0);
  write_rest(stats, every);
  scratch_.link_to(target);
}

void StatisticsFile::finish(StatisticsFile* stage_file, const Statistics& stats, const fs::path& target,
                            const Grid& grid) {
  const std::vector<int> writers = grid.solving_ranks();
  const auto file_of = [&](int rank) {  // of a writer rank
    char name[64];
    std::snprintf(name, sizeof name, "stats-%05d-of-%05zu.h5",
                  static_cast<int>(std::find(writers.begin(), writers.end(), rank) - writers.begin()) + 1, writers.size());
    return std::string(name);
  };
  collective_phase([&] {
    if (!stage_file) return;
    std::vector<std::int64_t> mine;
    for (std::int64_t l = grid.first_layer(); l < grid.end_layer(); ++l)
      if (grid.solves(l)) mine.push_back(l);
    stage_file->write_rest(stats, mine);
    stage_file->scratch_.link_to(target.parent_path() / file_of(mpi_rank()));
  });
  collective_phase([&] {
    if (mpi_rank() != 0) return;
    H5Id index = h5::create_file(target);
    write_statistics_attributes(index.get(), stats);
    for (std::int64_t l = 0; l < stats.layers(); ++l) {
      const std::string file = file_of(grid.writer_of(l));
      for (const DomainStatistics& d : stats.domains) {
        link_external(index.get(), file, moe_path::layer(l, "A/" + d.name), target.string());
        if (d.has_heldout()) link_external(index.get(), file, moe_path::layer(l, "heldout/" + d.name), target.string());
      }
      link_external(index.get(), file, moe_path::layer(l, "B"), target.string());
    }
    h5_check(H5Fclose(index.release()), target.string() + ": cannot close (disk full?)");
  });
}

namespace {

// read_statistics, and open_statistics when `in_memory` is false.
Statistics load_statistics(const fs::path& path, bool in_memory) {
  const auto file = std::make_shared<const H5Id>(h5::open_file(path));
  const hid_t f = file->get();
  if (!h5::has_attribute(f, "format") || h5::read_string_attribute(f, "format") != "dume-stats")
    throw Error(path.string() + ": not a dume statistics file (no format attribute 'dume-stats')");
  Statistics s;
  s.hidden_size = h5::read_int_attribute(f, "hidden_size");
  s.context_tokens = h5::read_int_attribute(f, "context_tokens");
  s.shared_hash = h5::read_string_attribute(f, "shared_hash");
  const auto names = h5::read_strings_attribute(f, "domains");
  const std::int64_t n = s.hidden_size + 1, E = static_cast<std::int64_t>(names.size());
  if (s.hidden_size < 1 || s.hidden_size > (1 << 20) || E < 1) throw Error(path.string() + ": inconsistent attributes");
  const std::int64_t tokens_shape[] = {E};
  const auto tokens = h5::read_i64(f, "/tokens", tokens_shape);
  std::int64_t L = 0;
  while (h5::exists(f, "/layers/" + std::to_string(L))) ++L;
  for (std::int64_t e = 0; e < E; ++e) {
    DomainStatistics d;
    d.name = names[static_cast<std::size_t>(e)];
    d.tokens = tokens[static_cast<std::size_t>(e)];
    for (std::int64_t l = 0; l < L; ++l) {
      const std::int64_t shape[] = {n, n};
      const auto values = h5::read_f64(f, moe_path::layer(l, "A/" + d.name), shape);  // checked either way
      if (in_memory) d.A.emplace_back(Eigen::Map<const MatrixXdRow>(values.data(), n, n));
      const std::string heldout = moe_path::layer(l, "heldout/" + d.name);
      if (h5::exists(f, heldout)) {
        const std::vector<std::int64_t> rows_shape = h5::dataset_info(f, heldout).shape;
        if (rows_shape.size() != 2 || rows_shape[1] != s.hidden_size)
          throw Error(path.string() + ": dataset '" + heldout + "' is not (tokens, " + std::to_string(s.hidden_size) + ")");
        if (rows_shape[0] > (std::int64_t{1} << 24))  // a dume merge keeps heldout_tokens, a few thousand
          throw Error(path.string() + ": dataset '" + heldout + "' claims " + std::to_string(rows_shape[0]) +
                      " held-out tokens, absurdly many");
        const auto rows = h5::read_f32(f, heldout, rows_shape);  // checked either way
        d.heldout.emplace_back(Eigen::Map<const MatrixXfRow>(rows.data(), in_memory ? rows_shape[0] : 0, rows_shape[1]));
      }
    }
    if (!d.heldout.empty() && static_cast<std::int64_t>(d.heldout.size()) != L)
      throw Error(path.string() + ": domain '" + d.name + "' has held-out tokens for some layers only");
    if (!in_memory) {
      d.stored = std::make_shared<const StoredStatistics>(file, d.name, L, n, !d.heldout.empty(), /*checked=*/true);
      d.heldout = {};
    }
    s.domains.push_back(std::move(d));
  }
  return s;
}

}  // namespace

Statistics read_statistics(const fs::path& path) { return load_statistics(path, true); }

Statistics open_statistics(const fs::path& path) { return load_statistics(path, false); }

}  // namespace dume
