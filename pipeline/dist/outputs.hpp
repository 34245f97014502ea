// Where a command may write, and how it writes without ever losing an input: the one rule every
// writing command checks before any work, one writer per output (a lock), and temporaries that
// land by rename or are removed. Not what is written (moe_file, mixtral, megatron, evaluate).
#pragma once

#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <vector>

namespace dume {

// One input of a command: what it is ("expert 'd0'", "the MoE", "the configuration") and where.
struct InputPath {
  std::string role;
  std::filesystem::path path;
};

// A path as the user gave it, normalized for writing: `.` and `..` folded lexically, no trailing
// slash ("out/moe/" names "out/moe").
std::filesystem::path output_path(const std::filesystem::path& given);

// What a command writes at an output, for the rule below.
struct OutputShape {
  bool directory = true;  // a directory of files (else one file)
  // A directory: what a finished output of this command holds (moe.h5, dume_export.json). An
  // existing directory is replaced (with force) only when it holds this or is empty: whatever
  // else a user keeps there is not dume's to delete.
  std::string marker;
};

// The rule, before any work, on every rank of every command that writes `output`; throws Error
// in one line naming both paths, whatever `force` says, when
// - the output is, contains, or lies inside any input (paths compared after resolving symlinks
//   and `..`), or is or contains `/`, the working directory or $HOME;
// - the output is a symbolic link, or not the kind of thing written (a file where a directory
//   is written, a directory where a file is);
// - a directory output exists without force, or with force but is not this command's output
//   (see OutputShape::marker);
// - its nearest existing ancestor is not a writable directory.
void check_output(const std::filesystem::path& output, std::span<const InputPath> inputs, bool force,
                  const OutputShape& shape);

// One writer per output: `.NAME.lock` beside it, created exclusively, holding the writer's host,
// PID and start time. A second job finds it and fails in one line naming the holder; a lock
// whose process is gone (same host) is stale and taken over; one of another host is reported
// (its process cannot be checked from here). Creates the output's missing parent directories and
// removes them again, if still empty, when released. Held by one rank (rank 0) for the job.
class OutputLock {
 public:
  explicit OutputLock(const std::filesystem::path& output);
  ~OutputLock();
  OutputLock(const OutputLock&) = delete;
  OutputLock& operator=(const OutputLock&) = delete;

 private:
  std::filesystem::path lock_;
  std::vector<std::filesystem::path> created_;  // parent directories this lock made, deepest last
};

// Removes the locks and scratch directories this process holds: for abort_job, since
// MPI_Abort runs no destructors.
void release_output_locks() noexcept;

// A job's scratch directory beside its output, `.NAME.tmp-HOST-PID.scratch` (HOST and PID of
// rank 0), for intermediate files too large to hold in memory; a job killed before removing it
// leaves a temporary that the output's next writer clears (write_output_atomically).
// Collective: rank 0 makes it and every rank learns its path; rank 0 removes it when destroyed
// (files still open or mapped stay readable until closed).
class ScratchDirectory {
 public:
  explicit ScratchDirectory(const std::filesystem::path& output);
  ~ScratchDirectory();
  ScratchDirectory(const ScratchDirectory&) = delete;
  ScratchDirectory& operator=(const ScratchDirectory&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// A file of one process in its output's directory, for a part of the output written over the
// whole job (rank 0's statistics file) and named at the end: unnamed (O_TMPFILE), so that nothing
// is left on disk whatever ends the job, until link_to names it `target` (in the same filesystem,
// so no copy). Where the filesystem has no unnamed files (NFS), it is `.NAME.tmp-HOST-PID.SUFFIX`,
// removed when destroyed unless linked, and by abort_job; a killed job's is cleared by the
// output's next writer.
class ScratchFile {
 public:
  ScratchFile(const std::filesystem::path& output, const std::string& suffix);
  ~ScratchFile();
  ScratchFile(const ScratchFile&) = delete;
  ScratchFile& operator=(const ScratchFile&) = delete;
  // Where to open it (it exists, empty at first): /proc/self/fd/N, or the named file.
  const std::filesystem::path& path() const { return path_; }
  void link_to(const std::filesystem::path& target);

 private:
  int fd_ = -1;
  std::filesystem::path path_, named_;  // named_: the fallback's name, empty for an unnamed file
  bool linked_ = false;
};

// A temporary name for `target` in its own directory, unique across hosts and processes:
// `.NAME.tmp-HOST-PID`.
std::filesystem::path temporary_name(const std::filesystem::path& target);

// A file written under a temporary name and renamed onto `target` by commit(); removed if
// never committed (an exception, a write error), so a failed command leaves nothing behind.
class TemporaryFile {
 public:
  explicit TemporaryFile(std::filesystem::path target);
  ~TemporaryFile();
  TemporaryFile(const TemporaryFile&) = delete;
  TemporaryFile& operator=(const TemporaryFile&) = delete;
  const std::filesystem::path& path() const { return tmp_; }
  void commit();  // flushes the file to disk and renames it onto the target

 private:
  std::filesystem::path target_, tmp_;
  bool committed_ = false;
};

// Writes `text` to `path` through a TemporaryFile; a short write is an Error naming the path.
void write_text_file(const std::filesystem::path& path, const std::string& text);

// Writes `fill`'s files into a temporary sibling directory of `output`, then renames it into
// place (replacing an existing output only with force; check_output allowed it). Temporaries of
// this output that killed jobs left are removed first: call it while holding its OutputLock.
void write_output_atomically(const std::filesystem::path& output, bool force,
                             const std::function<void(const std::filesystem::path& dir)>& fill);
// The same by every rank of a job: rank 0 makes the temporary directory and tells the others,
// each rank runs `fill` in it, and rank 0 renames it once `fill` returns there. `fill` must end
// in a collective step (every rank done writing) before rank 0's rename.
void write_output_together(const std::filesystem::path& output, bool force,
                           const std::function<void(const std::filesystem::path& dir)>& fill);

}  // namespace dume
