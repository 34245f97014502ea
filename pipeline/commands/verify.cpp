#include "verify.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <optional>
#include <set>

#include "hdf5_util.hpp"
#include "merge.hpp"
#include "moe_file.hpp"

namespace dume {

namespace fs = std::filesystem;

namespace {

// Collects the problems of one directory; every check runs even after others failed.
class Verifier {
 public:
  explicit Verifier(VerifyReport& report) : r_(report) {}

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
};

void verify_statistics(Verifier& v, const fs::path& path, const MoeInfo& info) {
  if (!fs::exists(path)) return v.problem(path.string() + ": missing (fold-in, remove and resolve need it)");
  H5Id file;
  if (!v.guarded([&] { file = h5::open_file(path); })) return;
  const hid_t f = file.get();
  std::int64_t hidden = 0;
  std::vector<std::string> domains;
  const bool attributes = v.guarded([&] {
    if (!h5::has_attribute(f, "format") || h5::read_string_attribute(f, "format") != "dume-stats")
      throw Error(path.string() + ": not a dume statistics file (no format attribute 'dume-stats')");
    hidden = h5::read_int_attribute(f, "hidden_size");
    domains = h5::read_strings_attribute(f, "domains");
    const std::string hash = h5::read_string_attribute(f, "shared_hash");
    const std::int64_t context = h5::read_int_attribute(f, "context_tokens");
    if (hash != info.shared_hash)
      throw Error(path.string() + ": made with other shared weights (hash " + hash + ", moe.h5's is " + info.shared_hash + ")");
    if (hidden != info.config.hidden_size)
      throw Error(path.string() + ": hidden_size " + std::to_string(hidden) + ", the MoE's is " +
                  std::to_string(info.config.hidden_size));
    if (domains != info.experts) throw Error(path.string() + ": its domains differ from moe.h5's experts");
    if (context != info.router.context_tokens)
      throw Error(path.string() + ": context_tokens " + std::to_string(context) + ", moe.h5 says " +
                  std::to_string(info.router.context_tokens));
  });
  if (!attributes) return;
  const std::int64_t n = hidden + 1, E = static_cast<std::int64_t>(domains.size());
  std::vector<std::int64_t> tokens;
  v.guarded([&] {
    tokens = h5::read_i64(f, "/tokens", std::vector<std::int64_t>{E});
    v.counted(f, "/tokens", tokens.size() * 8);
  });
  std::set<std::string> expected = {"/tokens"};
  for (std::int64_t l = 0; l < info.config.num_layers; ++l) {
    const std::string B_path = moe_path::layer(l, "B");
    expected.insert(B_path);
    const auto B = v.doubles(f, B_path, {n, E});
    for (std::int64_t e = 0; e < E; ++e) {
      const std::string A_path = moe_path::layer(l, "A/" + domains[static_cast<std::size_t>(e)]);
      expected.insert(A_path);
      const auto A = v.doubles(f, A_path, {n, n});
      if (!A) continue;
      // A is symmetric; its constant-column corner counts the rows; its last column is B's column e.
      const auto at = [&](std::int64_t i, std::int64_t j) { return (*A)[static_cast<std::size_t>(i * n + j)]; };
      double scale = 0, asymmetry = 0, column = 0;
      for (std::int64_t i = 0; i < n; ++i)
        for (std::int64_t j = 0; j < n; ++j) {
          scale = std::max(scale, std::abs(at(i, j)));
          asymmetry = std::max(asymmetry, std::abs(at(i, j) - at(j, i)));
        }
      if (asymmetry > 1e-9 * scale) v.problem(Verifier::where(f, A_path) + " is not symmetric");
      if (tokens.size() == static_cast<std::size_t>(E) && at(hidden, hidden) != static_cast<double>(tokens[static_cast<std::size_t>(e)]))
        v.problem(Verifier::where(f, A_path) + ": counts " + std::to_string(at(hidden, hidden)) + " rows, /tokens says " +
                  std::to_string(tokens[static_cast<std::size_t>(e)]));
      if (B) {
        for (std::int64_t i = 0; i < n; ++i)
          column = std::max(column, std::abs(at(i, hidden) - (*B)[static_cast<std::size_t>(i * E + e)]));
        if (column > 1e-9 * scale)
          v.problem(Verifier::where(f, B_path) + ": column " + std::to_string(e) + " differs from " + A_path + "'s last column");
      }
    }
    // Held-out MLP inputs (a held-out split): rows of `hidden` finite values.
    for (const std::string& domain : domains) {
      const std::string heldout = moe_path::layer(l, "heldout/" + domain);
      bool present = false;
      v.guarded([&] { present = h5::exists(f, heldout); });
      if (!present) continue;
      expected.insert(heldout);
      v.guarded([&] {
        const auto shape = h5::dataset_info(f, heldout).shape;
        if (shape.size() != 2 || shape[1] != hidden)
          v.problem(Verifier::where(f, heldout) + " is not (tokens, " + std::to_string(hidden) + ")");
        else
          v.floats(f, heldout, DType::F32, shape);
      });
    }
  }
  v.guarded([&] {
    for (const std::string& p : h5::list_datasets(f))
      if (!expected.contains(p)) v.problem(path.string() + ": unexpected dataset '" + p + "'");
  });
}

}  // namespace

VerifyReport verify_moe(const fs::path& dir) {
  VerifyReport report;
  Verifier v(report);
  if (!fs::is_directory(dir)) {
    v.problem(dir.string() + ": not a directory");
    return report;
  }
  MoeInfo info;
  if (!v.guarded([&] { info = read_moe_info(dir); })) return report;
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

  H5Id file;
  if (!v.guarded([&] { file = h5::open_file(index); })) return report;
  const hid_t f = file.get();
  const ModelConfig& c = info.config;
  const std::int64_t D = c.hidden_size, E = static_cast<std::int64_t>(info.experts.size());

  SharedWeights shared;
  bool shared_ok = true;
  for_each_shared_tensor(c, shared, [&](const std::string&, const std::string& path, const std::vector<std::int64_t>& shape,
                                        auto& storage) {
    const auto values = v.floats(f, path, info.dtype, shape);
    if (values) std::copy(values->begin(), values->end(), storage.data());
    shared_ok = shared_ok && values.has_value();
  });
  if (shared_ok) {
    const std::string hash = shared_weights_hash(c, shared, info.dtype);
    if (hash != info.shared_hash)
      v.problem(index.string() + ": the stored shared weights hash to " + hash + ", but moe.h5 records " + info.shared_hash +
                " (modified after the merge?)");
  }
  shared = {};

  const MlpWeights layout;  // only names and shapes are visited
  const AttentionWeights attention_layout;
  for (std::int64_t l = 0; l < c.num_layers; ++l) {
    const auto expert_tensor = [&](std::int64_t e) {
      return [&, e](const std::string&, const std::string& name, const std::vector<std::int64_t>& shape, const auto&) {
        v.floats(f, moe_path::expert(l, e, name), info.dtype, shape);
      };
    };
    for (std::int64_t e = 0; e < E; ++e) {
      for_each_mlp_tensor(c, layout, expert_tensor(e));
      if (info.router.expert_attention) for_each_attention_tensor(c, attention_layout, expert_tensor(e));
    }
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
  if (info.router.auto_lambda) v.doubles(f, "/layer_lambda", {c.num_layers});  // the per-layer choice
  v.guarded([&] {
    const std::set<std::string> expected = moe_dataset_paths(info);
    for (const std::string& p : h5::list_datasets(f))
      if (!expected.contains(p)) v.problem(index.string() + ": unexpected dataset '" + p + "'");
  });

  verify_statistics(v, dir / "stats.h5", info);
  if (v.unchecksummed_ > 0)
    report.warnings.push_back(dir.string() + ": " + std::to_string(v.unchecksummed_) +
                              " datasets carry no checksum (written by a dume before checksums); their bytes were "
                              "checked for shape and finiteness only");
  char bytes[32];
  std::snprintf(bytes, sizeof bytes, "%.1f MB", static_cast<double>(report.bytes) / 1e6);
  report.summary = dir.string() + ": " + std::to_string(E) + " experts, " + std::to_string(c.num_layers) + " layers; " +
                   std::to_string(report.datasets) + " datasets (" + bytes + ") in moe.h5, " +
                   std::to_string(info.shard_files.size()) + " shard" + (info.shard_files.size() == 1 ? "" : "s") +
                   " and stats.h5: checksums, shapes, dtypes, finite values, router rows, statistics and the "
                   "shared-weights hash " + info.shared_hash + " agree";
  return report;
}

}  // namespace dume
