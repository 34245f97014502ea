#include "verify.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdio>
#include <optional>
#include <set>

#include <nlohmann/json.hpp>

#include "comm.hpp"
#include "grid.hpp"
#include "hdf5_util.hpp"
#include "moe_file.hpp"
#include "shared_weights.hpp"

namespace dume {

namespace fs = std::filesystem;

namespace {

// Collects the problems of one directory; every check runs even after others failed. Under a
// grid, each rank checks the datasets it would write (Grid::writer_of_tensor): its layers'
// tensors and statistics, the first stage the embedding, the last the final norm and LM head,
// rank 0 the files and the index as a whole.
class Verifier {
 public:
  Verifier(VerifyReport& report, const Grid& grid) : r_(report), grid_(grid) {}

  const Grid& grid() const { return grid_; }
  bool checks(std::int64_t layer) const { return grid_.writer_of(layer) == mpi_rank(); }
  bool root() const { return mpi_rank() == 0; }

  void problem(const std::string& line) { r_.problems.push_back(line); }

  // Runs `check`, turning a dume::Error into a problem line; returns whether it passed.
  template <class F>
  bool guarded(F&& check) {
    try {
      check();
      return true;
    } catch (const Error& e) {
      problem(e.what());
      return false;
    }
  }

  // "<file holding the dataset>: dataset '<path>'", the shard's name when the link resolves.
  static std::string where(hid_t file, const std::string& path) {
    const hid_t id = H5Dopen2(file, path.c_str(), H5P_DEFAULT);
    const std::string name = id >= 0 ? h5::file_name(id) : h5::file_name(file);
    if (id >= 0) H5Dclose(id);
    return name + ": dataset '" + path + "'";
  }

  // Reads a float dataset: present, the expected dtype and shape, checksum, finite values.
  // Returns the values widened to f32, or nothing when a check failed.
  std::optional<std::vector<float>> floats(hid_t file, const std::string& path, DType dtype,
                                           const std::vector<std::int64_t>& shape) {
    std::optional<std::vector<float>> values;
    guarded([&] {
      const h5::DatasetInfo info = h5::dataset_info(file, path);
      if (info.dtype != dtype)
        throw Error(where(file, path) + " is " + h5::dtype_attribute(info.dtype) + ", expected " + h5::dtype_attribute(dtype));
      values = h5::read_f32(file, path, shape);
      counted(file, path, info.numel() * dtype_size(dtype));
    });
    return values;
  }

  std::optional<std::vector<double>> doubles(hid_t file, const std::string& path, const std::vector<std::int64_t>& shape) {
    std::optional<std::vector<double>> values;
    guarded([&] {
      values = h5::read_f64(file, path, shape);
      counted(file, path, values->size() * 8);
    });
    return values;
  }

  void counted(hid_t file, const std::string& path, std::uint64_t bytes) {
    ++r_.datasets;
    r_.bytes += bytes;
    if (!h5::has_checksum(file, path)) ++unchecksummed_;
  }

  std::size_t unchecksummed_ = 0;

 private:
  VerifyReport& r_;
  const Grid& grid_;
};

// Names every dataset of `file` that is not in `expected`; call inside Verifier::guarded.
void report_unexpected_datasets(Verifier& v, hid_t f, const std::string& file, const std::set<std::string>& expected) {
  for (const std::string& p : h5::list_datasets(f))
    if (!expected.contains(p)) v.problem(file + ": unexpected dataset '" + p + "'");
}

// ---- stats.h5 ----

// What the checks of stats.h5 share: the open file and its header.
struct StatsFile {
  hid_t f = -1;
  std::int64_t hidden = 0;
  std::vector<std::string> domains;
  std::vector<std::int64_t> tokens;  // /tokens, empty when it could not be read
};

// Every dataset stats.h5 may hold: /tokens, and per layer B, each domain's A and held-out rows.
std::set<std::string> statistics_paths(std::int64_t layers, const std::vector<std::string>& domains) {
  std::set<std::string> paths = {"/tokens"};
  for (std::int64_t l = 0; l < layers; ++l) {
    paths.insert(moe_path::layer(l, "B"));
    for (const std::string& domain : domains) {
      paths.insert(moe_path::layer(l, "A/" + domain));
      paths.insert(moe_path::layer(l, "heldout/" + domain));
    }
  }
  return paths;
}

// The attributes that tie stats.h5 to this MoE; false (and a problem) when they do not.
bool read_statistics_header(Verifier& v, const fs::path& path, const MoeInfo& info, StatsFile& s) {
  return v.guarded([&] {
    const hid_t f = s.f;
    if (!h5::has_attribute(f, "format") || h5::read_string_attribute(f, "format") != "dume-stats")
      throw Error(path.string() + ": not a dume statistics file (no format attribute 'dume-stats')");
    s.hidden = h5::read_int_attribute(f, "hidden_size");
    s.domains = h5::read_strings_attribute(f, "domains");
    const std::string hash = h5::read_string_attribute(f, "shared_hash");
    const std::int64_t context = h5::read_int_attribute(f, "context_tokens");
    if (hash != info.shared_hash)
      throw Error(path.string() + ": made with other shared weights (hash " + hash + ", moe.h5's is " + info.shared_hash + ")");
    if (s.hidden != info.config.hidden_size)
      throw Error(path.string() + ": hidden_size " + std::to_string(s.hidden) + ", the MoE's is " +
                  std::to_string(info.config.hidden_size));
    if (s.domains != info.experts) throw Error(path.string() + ": its domains differ from moe.h5's experts");
    if (context != info.router.context_tokens)
      throw Error(path.string() + ": context_tokens " + std::to_string(context) + ", moe.h5 says " +
                  std::to_string(info.router.context_tokens));
  });
}

// Domain e's Gram matrix A (n x n, n = hidden + 1) at A_path: symmetric; its constant-column
// corner counts the rows (/tokens); its last column is column e of B (when B was readable).
void check_gram_matrix(Verifier& v, const StatsFile& s, std::int64_t e, const std::string& A_path,
                       const std::vector<double>& A, const std::string& B_path, const std::optional<std::vector<double>>& B) {
  const hid_t f = s.f;
  const std::int64_t hidden = s.hidden, n = hidden + 1, E = static_cast<std::int64_t>(s.domains.size());
  const auto at = [&](std::int64_t i, std::int64_t j) { return A[static_cast<std::size_t>(i * n + j)]; };
  double scale = 0, asymmetry = 0, column = 0;
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      scale = std::max(scale, std::abs(at(i, j)));
      asymmetry = std::max(asymmetry, std::abs(at(i, j) - at(j, i)));
    }
  if (asymmetry > 1e-9 * scale) v.problem(Verifier::where(f, A_path) + " is not symmetric");
  if (s.tokens.size() == static_cast<std::size_t>(E) && at(hidden, hidden) != static_cast<double>(s.tokens[static_cast<std::size_t>(e)]))
    v.problem(Verifier::where(f, A_path) + ": counts " + std::to_string(at(hidden, hidden)) + " rows, /tokens says " +
              std::to_string(s.tokens[static_cast<std::size_t>(e)]));
  if (B) {
    for (std::int64_t i = 0; i < n; ++i)
      column = std::max(column, std::abs(at(i, hidden) - (*B)[static_cast<std::size_t>(i * E + e)]));
    if (column > 1e-9 * scale)
      v.problem(Verifier::where(f, B_path) + ": column " + std::to_string(e) + " differs from " + A_path + "'s last column");
  }
}

// Layer l's statistics: B (n x E) and each domain's A.
void verify_gram_matrices(Verifier& v, const StatsFile& s, std::int64_t l) {
  const std::int64_t n = s.hidden + 1, E = static_cast<std::int64_t>(s.domains.size());
  const std::string B_path = moe_path::layer(l, "B");
  const auto B = v.doubles(s.f, B_path, {n, E});
  for (std::int64_t e = 0; e < E; ++e) {
    const std::string A_path = moe_path::layer(l, "A/" + s.domains[static_cast<std::size_t>(e)]);
    const auto A = v.doubles(s.f, A_path, {n, n});
    if (A) check_gram_matrix(v, s, e, A_path, *A, B_path, B);
  }
}

// Held-out MLP inputs (a held-out split; optional): rows of `hidden` finite values.
void verify_heldout(Verifier& v, const StatsFile& s, std::int64_t l) {
  const hid_t f = s.f;
  for (const std::string& domain : s.domains) {
    const std::string heldout = moe_path::layer(l, "heldout/" + domain);
    bool present = false;
    v.guarded([&] { present = h5::exists(f, heldout); });
    if (!present) continue;
    v.guarded([&] {
      const auto shape = h5::dataset_info(f, heldout).shape;
      if (shape.size() != 2 || shape[1] != s.hidden)
        v.problem(Verifier::where(f, heldout) + " is not (tokens, " + std::to_string(s.hidden) + ")");
      else
        v.floats(f, heldout, DType::F32, shape);
    });
  }
}

// stats.h5: every rank reads its header and /tokens, and checks its layers.
void verify_statistics(Verifier& v, const fs::path& path, const MoeInfo& info) {
  if (!fs::exists(path)) return v.problem(path.string() + ": missing (fold-in, remove and resolve need it)");
  H5Id file;
  if (!v.guarded([&] { file = h5::open_file(path); })) return;
  StatsFile s;
  s.f = file.get();
  // Without a header that matches the MoE, the datasets' shapes are unknown.
  if (!read_statistics_header(v, path, info, s)) return;
  const auto E = static_cast<std::int64_t>(s.domains.size());
  v.guarded([&] {
    s.tokens = h5::read_i64(s.f, "/tokens", std::vector<std::int64_t>{E});
    if (v.root()) v.counted(s.f, "/tokens", s.tokens.size() * 8);
  });
  for (std::int64_t l = 0; l < info.config.num_layers; ++l)
    if (v.checks(l)) {
      verify_gram_matrices(v, s, l);
      verify_heldout(v, s, l);
    }
  if (v.root())
    v.guarded([&] {
      report_unexpected_datasets(v, s.f, path.string(), statistics_paths(info.config.num_layers, s.domains));
    });
}

// ---- moe.h5 and its shards ----

// The shards moe.h5 lists (each present and an HDF5 file), and shard files it does not list.
void verify_shards(Verifier& v, const fs::path& dir, const MoeInfo& info) {
  const fs::path index = dir / "moe.h5";
  for (const std::string& shard : info.shard_files) {
    if (shard.empty() || shard == "." || shard == ".." || shard.find('/') != std::string::npos)
      v.problem(index.string() + ": shard name '" + shard + "' is not a file name in the directory");
    else if (!fs::exists(dir / shard))
      v.problem((dir / shard).string() + ": missing (listed in moe.h5's shards)");
    else
      v.guarded([&] { h5::open_file(dir / shard); });
  }

  // Shard files the index does not list: left by another merge, or a sign of a damaged index.
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name.starts_with("moe-") && name.ends_with(".h5") &&
        std::find(info.shard_files.begin(), info.shard_files.end(), name) == info.shard_files.end())
      v.problem(entry.path().string() + ": a shard file that moe.h5 does not list");
  }
}

// The shared weights, each checked by the rank that holds it, and their hash against the one
// moe.h5 records. The hash runs through the tensors in order; where the next tensor's holder is
// another rank, the state so far is sent on to it, and the last holder sends it to rank 0. One
// tensor is in memory at a time: the shared weights whole are 9.6 GB in f32 at 8B, 56 GB at 70B.
void verify_shared_weights(Verifier& v, hid_t f, const fs::path& index, const MoeInfo& info) {
  struct Tensor {
    std::string path;
    std::vector<std::int64_t> shape;
    int holder;
  };
  std::vector<Tensor> tensors;
  const SharedWeights names;  // only names and shapes are visited
  for_each_shared_tensor(info.config, names, [&](const std::string&, const std::string& path,
                                                 const std::vector<std::int64_t>& shape, const auto&) {
    tensors.push_back({path, shape, v.grid().writer_of_tensor(path)});
  });
  constexpr int kTag = 31;
  const int me = mpi_rank();
  const std::string dtype_name = h5::dtype_attribute(info.dtype);
  // What passes between holders: the hash so far, and whether every tensor so far could be read.
  std::array<std::int64_t, 2> state = {
      std::bit_cast<std::int64_t>(hash_bytes(kHashSeed, std::as_bytes(std::span(dtype_name)))), 1};
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    if (t.holder != me) continue;
    if (i > 0 && tensors[i - 1].holder != me) recv(state, tensors[i - 1].holder, kTag);
    const auto values = v.floats(f, t.path, info.dtype, t.shape);
    std::uint64_t hash = hash_bytes(std::bit_cast<std::uint64_t>(state[0]), std::as_bytes(std::span(t.path)));
    if (values) hash = hash_bytes(hash, std::as_bytes(std::span(*values)));
    state = {std::bit_cast<std::int64_t>(hash), state[1] && values.has_value()};
    const int next = i + 1 < tensors.size() ? tensors[i + 1].holder : 0;
    if (next != me) send(state, next, kTag);
  }
  if (!v.root()) return;
  if (tensors.back().holder != me) recv(state, tensors.back().holder, kTag);
  const std::string hash = hash_hex(std::bit_cast<std::uint64_t>(state[0]));
  if (state[1] && hash != info.shared_hash)
    v.problem(index.string() + ": the stored shared weights hash to " + hash + ", but moe.h5 records " + info.shared_hash +
              " (modified after the merge?)");
}

// Layer l's expert tensors (MLPs, and attention when the experts keep their own).
void verify_layer_experts(Verifier& v, hid_t f, const MoeInfo& info, std::int64_t l) {
  const ModelConfig& c = info.config;
  const MlpWeights layout;  // only names and shapes are visited
  const AttentionWeights attention_layout;
  const auto expert_tensor = [&](std::int64_t e) {
    return [&, e](const std::string&, const std::string& name, const std::vector<std::int64_t>& shape, const auto&) {
      v.floats(f, moe_path::expert(l, e, name), info.dtype, shape);
    };
  };
  for (std::int64_t e = 0; e < static_cast<std::int64_t>(info.experts.size()); ++e) {
    for_each_mlp_tensor(c, layout, expert_tensor(e));
    if (info.router.expert_attention) for_each_attention_tensor(c, attention_layout, expert_tensor(e));
  }
}

// Layer l's router: Gaussian routers' factors are lower-triangular, other routers' rows are
// unit-normalized (zero when the norm was 0); then the bias.
void verify_router(Verifier& v, hid_t f, const MoeInfo& info, std::int64_t l) {
  const std::int64_t D = info.config.hidden_size, E = static_cast<std::int64_t>(info.experts.size());
  const std::string weight_path = moe_path::layer(l, "router/weight"), bias_path = moe_path::layer(l, "router/bias");
  const auto weight = v.floats(f, weight_path, DType::F32, {E, D});
  if (info.router.method == RouterMethod::gaussian) {  // rows are the domains' means; the factors are triangular
    const std::string quadratic_path = moe_path::layer(l, "router/quadratic");
    if (const auto q = v.floats(f, quadratic_path, DType::F32, {E, D, D}))
      for (std::int64_t e = 0; e < E; ++e)
        for (std::int64_t i = 0; i < D; ++i)
          for (std::int64_t j = i + 1; j < D; ++j)
            if ((*q)[static_cast<std::size_t>((e * D + i) * D + j)] != 0.0f) {
              v.problem(Verifier::where(f, quadratic_path) + ": expert " + std::to_string(e) +
                        "'s factor is not lower-triangular");
              i = j = D;
            }
  } else if (weight) {
    for (std::int64_t e = 0; e < E; ++e) {  // every router row is unit-normalized (zero when its norm was 0)
      double norm = 0;
      for (std::int64_t i = 0; i < D; ++i) norm += std::pow((*weight)[static_cast<std::size_t>(e * D + i)], 2);
      norm = std::sqrt(norm);
      if (norm != 0 && std::abs(norm - 1) > 1e-4)
        v.problem(Verifier::where(f, weight_path) + ": row " + std::to_string(e) + " has norm " + std::to_string(norm) +
                  ", expected 1");
    }
  }
  v.floats(f, bias_path, DType::F32, {E});
}

// Every dataset of moe.h5 through its links: each layer's experts and router (every rank its
// layers), the shared weights (last: their hash passes from rank to rank), the per-layer lambdas,
// and nothing else.
void verify_index(Verifier& v, hid_t f, const fs::path& index, const MoeInfo& info) {
  for (std::int64_t l = 0; l < info.config.num_layers; ++l)
    if (v.checks(l)) {
      verify_layer_experts(v, f, info, l);
      verify_router(v, f, info, l);
    }
  verify_shared_weights(v, f, index, info);
  if (!v.root()) return;
  if (info.router.auto_lambda) v.doubles(f, "/layer_lambda", {info.config.num_layers});  // the per-layer choice
  v.guarded([&] { report_unexpected_datasets(v, f, index.string(), moe_dataset_paths(info)); });
}

// Every rank's problems and counts on rank 0, in rank order; a problem that several ranks found
// alike (a file none could open) once.
void gather_report(VerifyReport& report, Verifier& v) {
  const nlohmann::json mine = {{"problems", report.problems},
                               {"datasets", report.datasets},
                               {"bytes", report.bytes},
                               {"unchecksummed", v.unchecksummed_}};
  const std::vector<std::string> all = gather_bytes(mine.dump());
  if (!v.root()) return;
  report.problems.clear();
  report.datasets = report.bytes = v.unchecksummed_ = 0;
  for (const std::string& text : all) {
    const nlohmann::json rank = nlohmann::json::parse(text);
    for (const std::string p : rank["problems"])
      if (std::find(report.problems.begin(), report.problems.end(), p) == report.problems.end()) report.problems.push_back(p);
    report.datasets += rank["datasets"].get<std::size_t>();
    report.bytes += rank["bytes"].get<std::uint64_t>();
    v.unchecksummed_ += rank["unchecksummed"].get<std::size_t>();
  }
}

// The warning about datasets without a checksum, and the summary of the OK line.
void finish_report(VerifyReport& report, const Verifier& v, const fs::path& dir, const MoeInfo& info) {
  if (v.unchecksummed_ > 0)
    report.warnings.push_back(dir.string() + ": " + std::to_string(v.unchecksummed_) +
                              " datasets carry no checksum (written by a dume before checksums); their bytes were "
                              "checked for shape and finiteness only");
  char bytes[32];
  std::snprintf(bytes, sizeof bytes, "%.1f MB", static_cast<double>(report.bytes) / 1e6);
  report.summary = dir.string() + ": " + std::to_string(info.experts.size()) + " experts, " +
                   std::to_string(info.config.num_layers) + " layers; " + std::to_string(report.datasets) +
                   " datasets (" + bytes + ") in moe.h5, " + std::to_string(info.shard_files.size()) + " shard" +
                   (info.shard_files.size() == 1 ? "" : "s") +
                   " and stats.h5: checksums, shapes, dtypes, finite values, router rows, statistics and the "
                   "shared-weights hash " + info.shared_hash + " agree";
}

}  // namespace

VerifyReport verify_moe(const fs::path& dir, int stages) {
  VerifyReport report;
  if (!fs::is_directory(dir)) {
    report.problems.push_back(dir.string() + ": not a directory");
    return report;
  }
  MoeInfo info;
  try {
    info = read_moe_info(dir);
  } catch (const Error& e) {
    report.problems.push_back(e.what());
    return report;
  }
  const Grid grid(info.config, static_cast<std::int64_t>(info.experts.size()), stages);
  Verifier v(report, grid);
  if (v.root()) verify_shards(v, dir, info);
  const fs::path index = dir / "moe.h5";
  H5Id file;
  if (v.guarded([&] { file = h5::open_file(index); })) verify_index(v, file.get(), index, info);
  verify_statistics(v, dir / "stats.h5", info);
  gather_report(report, v);
  if (v.root()) finish_report(report, v, dir, info);
  return report;
}

}  // namespace dume
