#include "resume.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <regex>
#include <thread>

#include "comm.hpp"
#include "hdf5_util.hpp"
#include "moe_file.hpp"

namespace dume {

namespace fs = std::filesystem;

namespace {

constexpr const char* kFormat = "dume-resume-2";  // 2: one dataset per layer

std::string partial_name(std::size_t d, int generation, int rank) {
  return "domain-" + std::to_string(d) + ".g" + std::to_string(generation) + ".rank" + std::to_string(rank) + ".h5";
}
std::string complete_name(std::size_t d) { return "domain-" + std::to_string(d) + ".h5"; }

// Partial files of domain d (any run, any rank), with their run numbers.
std::vector<std::pair<fs::path, int>> partial_files(const fs::path& dir, std::size_t d) {
  static const std::regex pattern(R"(domain-(\d+)\.g(\d+)\.rank(\d+)\.h5)");
  std::vector<std::pair<fs::path, int>> files;
  if (!fs::is_directory(dir)) return files;
  for (const auto& entry : fs::directory_iterator(dir)) {
    std::smatch m;
    const std::string name = entry.path().filename().string();
    if (std::regex_match(name, m, pattern) && (d == SIZE_MAX || std::stoull(m[1].str()) == d))
      files.emplace_back(entry.path(), std::stoi(m[2].str()));
  }
  std::sort(files.begin(), files.end());
  return files;
}

// Flushes a written file (or directory) to disk, so that a rename after it survives a node crash.
void sync_path(const fs::path& path, int flags) {
  const int fd = ::open(path.c_str(), flags);
  if (fd < 0) throw Error(path.string() + ": cannot open to sync");
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) throw Error(path.string() + ": cannot sync to disk (disk full?)");
}

}  // namespace

fs::path checkpoint_dir(const fs::path& output) {
  const fs::path clean = output.lexically_normal();
  const fs::path name = clean.has_filename() ? clean.filename() : clean.parent_path().filename();
  const fs::path parent = clean.has_filename() ? clean.parent_path() : clean.parent_path().parent_path();
  return parent / (name.string() + ".checkpoint");
}

ResumeIdentity resume_identity(const MergeConfig& config, const std::string& shared_hash, std::int64_t hidden_size,
                               std::int64_t layers, const std::vector<const CorpusWindows*>& windows) {
  const CalibrationSettings& c = config.calibration;
  std::string text = "sequence_length " + std::to_string(c.sequence_length) + " max_sequences " +
                     std::to_string(c.max_sequences) + "\n";
  for (const ExpertSpec& e : config.experts)
    text += e.name + " " + e.checkpoint.string() + " " + e.calibration.path.string() + " " +
            std::string(to_string(e.calibration.format)) + " " + e.calibration.dataset + "\n";
  std::uint64_t hash = hash_bytes(kHashSeed, std::as_bytes(std::span(text)));
  for (const CorpusWindows* w : windows) hash = hash_bytes(hash, std::as_bytes(w->tokens()));
  ResumeIdentity id;
  id.config = hash_hex(hash);
  id.shared_hash = shared_hash;
  id.hidden_size = hidden_size;
  id.context_tokens = config.router.context_tokens;
  id.layers = layers;
  id.batch_sequences = c.batch_sequences;
  return id;
}

ResumeStore::ResumeStore(fs::path dir, ResumeIdentity identity, std::vector<std::string> domains,
                         std::vector<std::int64_t> batches)
    : dir_(std::move(dir)), identity_(std::move(identity)), domains_(std::move(domains)), batches_(std::move(batches)) {
  DUME_ASSERT(domains_.size() == batches_.size());
}

int ResumeStore::next_generation() const {
  int next = 0;
  for (const auto& [file, generation] : partial_files(dir_, SIZE_MAX)) next = std::max(next, generation + 1);
  return next;
}

void ResumeStore::write(const fs::path& file, std::size_t d, const std::vector<std::int64_t>& batches,
                        const PackedSums& sums) const {
  fs::create_directories(dir_);
  const fs::path tmp = file.string() + ".tmp";
  fs::remove(tmp);  // left by a writer that was killed
  {
    H5Id h5 = h5::create_file(tmp);
    const hid_t f = h5.get();
    h5::write_attribute(f, "format", std::string(kFormat));
    h5::write_attribute(f, "config", identity_.config);
    h5::write_attribute(f, "shared_hash", identity_.shared_hash);
    h5::write_attribute(f, "hidden_size", identity_.hidden_size);
    h5::write_attribute(f, "context_tokens", identity_.context_tokens);
    h5::write_attribute(f, "layers", identity_.layers);
    h5::write_attribute(f, "batch_sequences", identity_.batch_sequences);
    h5::write_attribute(f, "domain", domains_[d]);
    h5::write_attribute(f, "domain_index", static_cast<std::int64_t>(d));
    h5::write_attribute(f, "domain_batches", batches_[d]);
    const std::int64_t batches_shape[] = {static_cast<std::int64_t>(batches.size())};
    h5::write_dataset(f, "/batches", DType::I64, batches_shape, batches.data());
    DUME_ASSERT(sums.layers == identity_.layers);
    for (std::int64_t l = 0; l < identity_.layers; ++l) {  // one layer in memory at a time
      const std::vector<double> packed = sums.layer(l);
      const std::int64_t packed_shape[] = {static_cast<std::int64_t>(packed.size())};
      h5::write_dataset(f, "/statistics/" + std::to_string(l), DType::F64, packed_shape, packed.data());
    }
    const std::int64_t tokens_shape[] = {1};
    h5::write_dataset(f, "/tokens", DType::I64, tokens_shape, &sums.tokens);
    h5_check(H5Fclose(h5.release()), tmp.string() + ": cannot close (disk full?)");
  }
  sync_path(tmp, O_RDONLY);
  fs::rename(tmp, file);
  sync_path(dir_, O_RDONLY | O_DIRECTORY);
}

void ResumeStore::save_partial(std::size_t d, int rank, const std::vector<std::int64_t>& batches,
                               const PackedSums& partial) const {
  std::vector<std::int64_t> sorted = batches;
  std::sort(sorted.begin(), sorted.end());
  write(dir_ / partial_name(d, generation_, rank), d, sorted, partial);
}

void ResumeStore::save_complete(std::size_t d, const DomainStatistics& reduced) const {
  std::vector<std::int64_t> all(static_cast<std::size_t>(batches_[d]));
  for (std::size_t b = 0; b < all.size(); ++b) all[b] = static_cast<std::int64_t>(b);
  write(dir_ / complete_name(d), d, all, packed_sums(reduced));
  for (const auto& [file, generation] : partial_files(dir_, d)) fs::remove(file);
}

bool ResumeStore::has_complete(std::size_t d) const { return fs::exists(dir_ / complete_name(d)); }

std::vector<std::int64_t> ResumeStore::read(const fs::path& file, std::size_t d, std::vector<double>& sum) const {
  const H5Id h5 = h5::open_file(file);
  const hid_t f = h5.get();
  const std::string remedy = "; remove " + dir_.string() + " to start over";
  if (!h5::has_attribute(f, "format") || h5::read_string_attribute(f, "format") != kFormat)
    throw Error(file.string() + ": not a dume checkpoint (no format attribute '" + kFormat + "')" + remedy);
  const auto differs = [&](const std::string& what, const std::string& there, const std::string& here) {
    if (there != here)
      throw Error(file.string() + ": checkpoint of a different merge (" + what + " " + there + " there, " + here +
                  " here)" + remedy);
  };
  differs("configuration/corpora hash", h5::read_string_attribute(f, "config"), identity_.config);
  differs("shared-weight hash", h5::read_string_attribute(f, "shared_hash"), identity_.shared_hash);
  for (const auto& [key, value] : {std::pair{"hidden_size", identity_.hidden_size},
                                   {"context_tokens", identity_.context_tokens},
                                   {"layers", identity_.layers},
                                   {"batch_sequences", identity_.batch_sequences},
                                   {"domain_index", static_cast<std::int64_t>(d)},
                                   {"domain_batches", batches_[d]}})
    differs(key, std::to_string(h5::read_int_attribute(f, key)), std::to_string(value));
  differs("domain", h5::read_string_attribute(f, "domain"), domains_[d]);

  const h5::DatasetInfo info = h5::dataset_info(f, "/batches");
  if (info.shape.size() != 1) throw Error(file.string() + ": /batches must be 1-D" + remedy);
  auto batches = h5::read_i64(f, "/batches", info.shape);
  for (const std::int64_t b : batches)
    if (b < 0 || b >= batches_[d])
      throw Error(file.string() + ": batch " + std::to_string(b) + " out of range (domain '" + domains_[d] + "' has " +
                  std::to_string(batches_[d]) + ")" + remedy);
  const std::int64_t n = identity_.hidden_size + 1, layer_size = n * (n + 1) / 2;
  if (sum.empty()) sum.assign(static_cast<std::size_t>(identity_.layers * layer_size + 1), 0.0);
  for (std::int64_t l = 0; l < identity_.layers; ++l) {
    const std::int64_t shape[] = {layer_size};
    const auto values = h5::read_f64(f, "/statistics/" + std::to_string(l), shape);
    double* into = sum.data() + l * layer_size;
    for (std::size_t i = 0; i < values.size(); ++i) into[i] += values[i];
  }
  const std::int64_t tokens_shape[] = {1};
  sum.back() += static_cast<double>(h5::read_i64(f, "/tokens", tokens_shape)[0]);
  return batches;
}

SavedDomain ResumeStore::load(std::size_t d) const {
  SavedDomain saved;
  if (has_complete(d)) {
    saved.complete = true;
    saved.batches = read(dir_ / complete_name(d), d, saved.packed);
    if (static_cast<std::int64_t>(saved.batches.size()) != batches_[d])
      throw Error((dir_ / complete_name(d)).string() + ": a complete domain's file lacks batches; remove " +
                  dir_.string() + " to start over");
    return saved;
  }
  std::vector<fs::path> holder(static_cast<std::size_t>(batches_[d]));  // the file holding each batch
  for (const auto& [file, generation] : partial_files(dir_, d))
    for (const std::int64_t b : read(file, d, saved.packed)) {
      fs::path& seen = holder[static_cast<std::size_t>(b)];
      if (!seen.empty())
        throw Error("batch " + std::to_string(b) + " of domain '" + domains_[d] + "' is in two checkpoint files (" +
                    seen.string() + ", " + file.string() + "); remove " + dir_.string() + " to start over");
      seen = file;
      saved.batches.push_back(b);
    }
  std::sort(saved.batches.begin(), saved.batches.end());
  return saved;
}

void ResumeStore::remove() const { fs::remove_all(dir_); }

void test_fault_after_batch(int rank, std::int64_t batches) {
  if (const char* delay = std::getenv("DUME_TEST_BATCH_DELAY_MS"))
    std::this_thread::sleep_for(std::chrono::milliseconds(std::atoi(delay)));
  const char* spec = std::getenv("DUME_TEST_FAULT");
  if (!spec) return;
  int fault_rank = -1;
  long long after = 0;
  char action[16] = {};
  if (std::sscanf(spec, "%d:%lld:%15s", &fault_rank, &after, action) != 3)
    throw Error(std::string("DUME_TEST_FAULT='") + spec + "': expected RANK:BATCHES:ACTION");
  if (rank != fault_rank || batches != after) return;
  const std::string what = action;
  if (what == "throw")
    throw Error("test fault: rank " + std::to_string(rank) + " fails after " + std::to_string(batches) + " batches");
  if (what == "kill") std::raise(SIGKILL);
  if (what == "term") std::raise(SIGTERM);
  if (what == "usr1") std::raise(SIGUSR1);
}

}  // namespace dume
