#include "outputs.hpp"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>

#include "comm.hpp"
#include "error.hpp"

namespace dume {

namespace fs = std::filesystem;

namespace {

// Absolute, symlinks resolved as far as the path exists, `.` and `..` folded.
fs::path resolved(const fs::path& p) {
  std::error_code ec;
  fs::path r = fs::weakly_canonical(fs::absolute(p), ec);
  if (ec) r = fs::absolute(p).lexically_normal();
  if (!r.has_filename() && r != r.root_path()) r = r.parent_path();
  return r;
}

// `inner` is `outer` or lies below it (both resolved).
bool within(const fs::path& inner, const fs::path& outer) {
  auto i = inner.begin();
  for (auto o = outer.begin(); o != outer.end(); ++o, ++i)
    if (i == inner.end() || *i != *o) return false;
  return true;
}

// `.NAME` + suffix beside `target` (NAME its file name): its lock and temporaries. Built with
// append(): GCC 12 warns falsely (-Wrestrict) on "." + string.
fs::path hidden_sibling(const fs::path& target, const std::string& suffix) {
  return target.parent_path() / std::string(".").append(target.filename().string()).append(suffix);
}

// Whether a directory may be replaced by a command whose output holds `marker`.
bool replaceable(const fs::path& dir, const std::string& marker) {
  if (fs::is_empty(dir)) return true;
  return !marker.empty() && fs::is_regular_file(dir / marker);
}

// The locks this process holds (for release_output_locks).
std::vector<fs::path>& held_locks() {
  static std::vector<fs::path> locks;
  return locks;
}

// Whether process `pid` of this host still runs: a zombie (exited, not yet reaped: under a
// container's init it may never be) holds no lock.
bool process_alive(long long pid) {
  if (pid <= 0 || (::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH)) return false;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return true;  // no /proc: kill's word
  const auto paren = line.rfind(')');
  return paren == std::string::npos || paren + 2 >= line.size() || line[paren + 2] != 'Z';
}

void sync_path(const fs::path& path, int flags) {
  const int fd = ::open(path.c_str(), flags);
  if (fd < 0) throw Error(path.string() + ": cannot open to sync: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) throw Error(path.string() + ": cannot write to disk (disk full?): " + std::strerror(errno));
}

}  // namespace

fs::path output_path(const fs::path& given) {
  fs::path p = given.lexically_normal();
  if (!p.has_filename() && p.has_parent_path() && p != p.root_path()) p = p.parent_path();
  return p.empty() ? fs::path(".") : p;
}

namespace {

// The output (resolved: `out`) is none of the places no flag may touch, nor any input.
void refuse_inputs(const std::string& name, const fs::path& out, std::span<const InputPath> inputs) {
  // Places whose loss no flag may cause: the root, where the job runs, the user's home.
  std::vector<InputPath> places{{"the file system root", "/"}, {"the working directory", fs::current_path()}};
  if (const char* home = std::getenv("HOME"); home && *home) places.push_back({"the home directory", home});
  for (const auto& [role, path] : places)
    if (const fs::path place = resolved(path); within(place, out))
      throw Error(name + (place == out ? " is " : " contains ") + role + " (" + path.string() +
                  "); name a new directory for it");
  for (const auto& [role, path] : inputs) {
    if (path.empty()) continue;
    const fs::path in = resolved(path);
    std::error_code ec;
    const bool same = in == out || fs::equivalent(in, out, ec);
    const char* relation = same ? " is " : within(in, out) ? " contains " : within(out, in) ? " lies inside " : nullptr;
    if (relation)
      throw Error(name + relation + role + " (" + path.string() + "); dume never writes over its inputs, --force or not");
  }
}

// What is at the output already may be replaced: nothing, or (with force) an earlier output.
void refuse_existing(const std::string& name, const fs::path& output, bool force, const OutputShape& shape) {
  const fs::file_status status = fs::symlink_status(output);
  if (fs::is_symlink(status))
    throw Error(name + " is a symbolic link; name the directory itself (" + resolved(output).string() + ")");
  if (!fs::exists(status)) return;
  if (shape.directory && !fs::is_directory(status))
    throw Error(name + " exists and is not a directory (not a dume output); remove it or choose another path");
  if (!shape.directory && fs::is_directory(status)) throw Error(name + " is a directory; name a file");
  if (!force) throw Error(name + " exists; pass --force to replace it");
  if (shape.directory && !replaceable(output, shape.marker))
    throw Error(name + " exists and holds no " + shape.marker +
                " (not this command's output); --force replaces only an earlier output, so remove it or choose "
                "another directory");
}

}  // namespace

void check_output(const fs::path& output, std::span<const InputPath> inputs, bool force, const OutputShape& shape) {
  const std::string name = "output " + output.string();
  const fs::path out = resolved(output);
  refuse_inputs(name, out, inputs);
  refuse_existing(name, output, force, shape);
  fs::path dir = out.parent_path();
  while (!fs::exists(dir) && dir.has_parent_path() && dir != dir.parent_path()) dir = dir.parent_path();
  if (!fs::is_directory(dir))
    throw Error(name + " cannot be created: " + dir.string() + " is not a directory");
  if (::access(dir.c_str(), W_OK) != 0)
    throw Error(name + " cannot be created: " + dir.string() + " is not writable (" + std::strerror(errno) + ")");
}

OutputLock::OutputLock(const fs::path& output) {
  const fs::path parent = output.parent_path().empty() ? fs::path(".") : output.parent_path();
  for (fs::path p = parent; !p.empty() && !fs::exists(p); p = p.parent_path()) created_.insert(created_.begin(), p);
  fs::create_directories(parent);
  lock_ = hidden_sibling(output, ".lock");
  const std::string host = host_name();
  std::ostringstream mine;
  mine << host << " " << ::getpid() << " " << std::time(nullptr) << "\n";
  for (int attempt = 0; attempt < 2; ++attempt) {
    const int fd = ::open(lock_.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (fd >= 0) {
      const std::string text = mine.str();
      const bool written = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
      ::close(fd);
      if (!written) {
        fs::remove(lock_);
        throw Error(lock_.string() + ": cannot write the output's lock (disk full?)");
      }
      held_locks().push_back(lock_);
      return;
    }
    if (errno != EEXIST) throw Error(lock_.string() + ": cannot create the output's lock: " + std::strerror(errno));
    std::ifstream in(lock_);
    std::string holder;
    long long pid = 0, since = 0;
    in >> holder >> pid >> since;
    const bool dead = holder == host && pid > 0 && !process_alive(pid);
    if (!dead || attempt > 0) {
      const std::string who = holder.empty() ? std::string("an unknown job")
                                             : "pid " + std::to_string(pid) + " on host " + holder;
      throw Error("output " + output.string() + " is being written by another job (" + who + ", lock " +
                  lock_.string() + "); wait for it, or remove the lock if that job is gone");
    }
    std::fprintf(stderr, "dume: taking over %s, left by pid %lld, which is gone\n", lock_.c_str(), pid);
    fs::remove(lock_);
  }
}

OutputLock::~OutputLock() {
  std::error_code ec;
  fs::remove(lock_, ec);
  std::erase(held_locks(), lock_);
  for (auto it = created_.rbegin(); it != created_.rend(); ++it)
    if (fs::is_directory(*it, ec) && fs::is_empty(*it, ec)) fs::remove(*it, ec);
}

// The scratch directories and files this process made (for release_output_locks).
std::vector<fs::path>& held_scratch() {
  static std::vector<fs::path> directories;
  return directories;
}

void release_output_locks() noexcept {
  std::error_code ec;
  for (const fs::path& lock : held_locks()) fs::remove(lock, ec);
  for (const fs::path& dir : held_scratch()) fs::remove_all(dir, ec);
}

ScratchDirectory::ScratchDirectory(const fs::path& output) {
  std::string path = temporary_name(output).string() + ".scratch";
  broadcast(path);
  path_ = path;
  collective_phase([&] {
    if (mpi_rank() != 0) return;
    fs::create_directories(path_);
    held_scratch().push_back(path_);
  });
}

ScratchDirectory::~ScratchDirectory() {
  if (mpi_rank() != 0) return;
  std::error_code ec;
  fs::remove_all(path_, ec);
  std::erase(held_scratch(), path_);
}

ScratchFile::ScratchFile(const fs::path& output, const std::string& suffix) {
  const fs::path dir = output.parent_path().empty() ? fs::path(".") : output.parent_path();
  fd_ = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0644);
  if (fd_ >= 0) {
    path_ = "/proc/self/fd/" + std::to_string(fd_);
    return;
  }
  named_ = temporary_name(output).string() + "." + suffix;
  fd_ = ::open(named_.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0644);
  if (fd_ < 0) throw Error(named_.string() + ": cannot create: " + std::strerror(errno));
  path_ = named_;
  held_scratch().push_back(named_);
}

ScratchFile::~ScratchFile() {
  ::close(fd_);
  if (named_.empty()) return;
  std::error_code ec;
  if (!linked_) fs::remove(named_, ec);
  std::erase(held_scratch(), named_);
}

void ScratchFile::link_to(const fs::path& target) {
  std::error_code ec;
  if (named_.empty()) {
    if (::linkat(AT_FDCWD, path_.c_str(), AT_FDCWD, target.c_str(), AT_SYMLINK_FOLLOW) != 0)
      ec = std::error_code(errno, std::generic_category());
  } else {
    fs::rename(named_, target, ec);
  }
  if (ec) throw Error(target.string() + ": cannot create: " + ec.message());
  linked_ = true;
}

fs::path temporary_name(const fs::path& target) {
  return hidden_sibling(target, ".tmp-" + host_name() + "-" + std::to_string(::getpid()));
}

TemporaryFile::TemporaryFile(fs::path target) : target_(std::move(target)), tmp_(temporary_name(target_)) {}

TemporaryFile::~TemporaryFile() {
  std::error_code ec;
  if (!committed_) fs::remove(tmp_, ec);
}

void TemporaryFile::commit() {
  sync_path(tmp_, O_RDONLY);
  std::error_code ec;
  fs::rename(tmp_, target_, ec);
  if (ec) throw Error(tmp_.string() + ": cannot rename to " + target_.string() + ": " + ec.message());
  committed_ = true;
}

void write_text_file(const fs::path& path, const std::string& text) {
  TemporaryFile file(path);
  {
    std::ofstream out(file.path(), std::ios::binary | std::ios::trunc);
    out << text;
    out.close();
    if (!out) throw Error(path.string() + ": cannot write (disk full?)");
  }
  file.commit();
}

void write_output_atomically(const fs::path& output, bool force, const std::function<void(const fs::path&)>& fill) {
  const fs::path parent = output.parent_path().empty() ? fs::path(".") : output.parent_path();
  fs::create_directories(parent);
  const fs::path tmp = temporary_name(output);
  // Temporaries of this output left by jobs that were killed while writing (any host, any pid):
  // the caller holds the output's lock, so no live job is writing one.
  const std::string stale = hidden_sibling(output, ".tmp-").filename().string();
  const auto mine = [](const fs::path& entry) {  // this job's scratch is not stale
    return std::ranges::any_of(held_scratch(), [&](const fs::path& p) { return p.filename() == entry.filename(); });
  };
  for (const auto& entry : fs::directory_iterator(parent))
    if (entry.path().filename().string().starts_with(stale) && !mine(entry.path())) {
      std::fprintf(stderr, "dume: removing %s, left by an interrupted job\n", entry.path().c_str());
      fs::remove_all(entry.path());
    }
  fs::create_directory(tmp);
  try {
    fill(tmp);
    if (fs::exists(fs::symlink_status(output))) {
      if (!force) throw Error("output " + output.string() + " appeared while the job ran; not replacing it");
      const fs::path old = tmp.string() + ".old";
      fs::rename(output, old);
      fs::rename(tmp, output);
      fs::remove_all(old);
    } else {
      fs::rename(tmp, output);
    }
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
}

void write_output_together(const fs::path& output, bool force, const std::function<void(const fs::path&)>& fill) {
  std::string dir;
  if (mpi_rank() != 0) {
    broadcast(dir);
    fill(dir);
    return;
  }
  write_output_atomically(output, force, [&](const fs::path& tmp) {
    dir = tmp.string();
    broadcast(dir);
    fill(tmp);
  });
}

}  // namespace dume
