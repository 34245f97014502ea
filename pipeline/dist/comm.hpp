// MPI as dume uses it: the world communicator, sums of f64 arrays in bounded chunks (so any
// size works with MPI's int counts), broadcasts, and failure handling that never leaves a
// rank hanging in a collective.
#pragma once

#include <mpi.h>
#include <signal.h>

#include <cstddef>
#include <functional>
#include <span>
#include <cstdint>
#include <string>
#include <vector>

#include "error.hpp"

#define MPI_CHECK(e) DUME_CHECK_GEN(e, MPI_SUCCESS, ::dume::mpi_error_string)

namespace dume {

std::string mpi_error_string(int code);

// MPI_Init / MPI_Finalize for a command's lifetime; errors are returned, not fatal, so that
// MPI_CHECK can report them with file and line.
class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
};

int mpi_rank();
int mpi_size();
// Ranks sharing this node (they share its cores).
int mpi_local_size();
int mpi_local_rank();  // this rank's index among them
void barrier();
std::string host_name();

// Largest message of one MPI call, in elements: 2^23 (64 MiB of f64), or the environment's
// DUME_MPI_CHUNK_ELEMENTS (tests lower it to exercise the chunking).
std::size_t mpi_chunk_elements();
// Largest message of one reduction call: 2^16 elements (512 KiB of f64), or a smaller
// mpi_chunk_elements(). MPI's reductions of one large buffer measured 2-3x slower here than the
// same bytes in cache-sized segments (its temporaries leave the cache); broadcasts are not.
std::size_t mpi_reduce_segment_elements();

// Sums `data` over the ranks of `comm` into rank `root`'s `data` (other ranks' data is left as it
// was); `root` is a rank of `comm`.
void reduce_sum(std::span<double> data, int root = 0, MPI_Comm comm = MPI_COMM_WORLD);
void reduce_sum(std::span<float> data, int root = 0, MPI_Comm comm = MPI_COMM_WORLD);
int comm_rank(MPI_Comm comm);
// Sums `data` over all ranks into every rank's `data`, at most `segment` elements per MPI call
// (the benchmark's reference).
void allreduce_sum(std::span<double> data, std::size_t segment);
void broadcast(std::span<double> data, int root = 0, MPI_Comm comm = MPI_COMM_WORLD);
void broadcast(std::span<float> data, int root = 0);
void broadcast(std::string& text, int root = 0);
void broadcast(std::vector<std::int64_t>& values, int root = 0);  // resized on the other ranks
void broadcast(std::vector<std::uint32_t>& values, int root = 0);  // resized on the other ranks
// Point-to-point between two ranks of the world, in messages of at most mpi_chunk_elements():
// `recv` receives exactly data.size() values from `source` with `tag` (an Error otherwise).
void send(std::span<const float> data, int dest, int tag);
void recv(std::span<float> data, int source, int tag);
void send(std::span<const std::int64_t> data, int dest, int tag);
void recv(std::span<std::int64_t> data, int source, int tag);
// Every rank's `bytes`, in rank order, on rank 0 (empty elsewhere).
std::vector<std::string> gather_bytes(const std::string& bytes);
// The largest of every rank's `value`, on every rank.
int max_over_ranks(int value);
// Every rank's `value`, in rank order, on rank 0 (empty elsewhere).
std::vector<double> gather_to_root(double value);
// Each rank's peak RSS and bytes read from storage so far (process_usage), on rank 0.
struct RankUsage {
  std::vector<double> peak_rss, storage_read;  // bytes, in rank order; empty on other ranks
  // "peak RSS per rank 1.74 GB, 1.60 GB; read from storage 3.00 GB, 0 B"
  std::string line() const;
};
RankUsage gather_rank_usage();  // collective

// An error every rank has raised together (see collective_phase): each rank can exit cleanly.
class CollectiveError : public Error {
 public:
  using Error::Error;
};

// Every rank stopped together at the same point (a stop signal, see StopSignals), after saving
// what it could: the command exits with kStoppedExitCode on every rank.
class JobStopped : public CollectiveError {
 public:
  using CollectiveError::CollectiveError;
};
// EX_TEMPFAIL: the job did not finish but can be resumed (`dume merge --resume`).
inline constexpr int kStoppedExitCode = 75;

// While alive, SIGTERM, SIGINT (Ctrl-C) and SIGUSR1 (Slurm's warnings before a time limit or a
// cancel; the README's signal table) are caught instead of ending the process: the handler only
// records the signal (a second SIGINT ends the process at once), and the work loop
// asks stop_signal_anywhere() at points where all ranks can stop together. The previous
// handlers are restored afterwards. Nested guards are fine.
class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

 private:
  struct sigaction old_term_ {}, old_int_ {}, old_usr1_ {};
};
// The stop signal this process caught (0: none).
int stop_signal();
// Collective: the largest stop signal any rank caught, so that all ranks decide alike (0: none).
int stop_signal_anywhere();
std::string signal_name(int signal);

// Runs a phase that every rank performs identically (checks, loading). If it fails on any
// rank, every rank learns it: the lowest failing rank's error is rethrown on all ranks (as
// CollectiveError), so
// that the job ends cleanly on every rank with one message and no rank waits in a collective.
void collective_phase(const std::function<void()>& phase);

// Prints "dume: error: [rank r on host] message" and aborts the whole job with `code`.
[[noreturn]] void abort_job(const std::string& message, int code = 1);

}  // namespace dume
