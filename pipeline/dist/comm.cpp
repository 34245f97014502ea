#include "comm.hpp"

#include <unistd.h>

#include <algorithm>
#include <climits>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <utility>
#include <vector>

#include "outputs.hpp"
#include "resources.hpp"

namespace dume {

std::string mpi_error_string(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  return std::string(text, static_cast<std::size_t>(length));
}

MpiSession::MpiSession(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) MPI_CHECK(MPI_Init(argc, argv));
  MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
}

MpiSession::~MpiSession() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

int mpi_rank() {
  int rank = 0;
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  return rank;
}

int mpi_size() {
  int size = 1;
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size));
  return size;
}

namespace {
// This rank's index among the ranks that share its node, and their count.
std::pair<int, int> local_rank_and_size() {
  MPI_Comm local;
  MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local));
  int rank = 0, size = 1;
  MPI_Comm_rank(local, &rank);
  MPI_Comm_size(local, &size);
  MPI_Comm_free(&local);
  return {rank, size};
}
}  // namespace

int mpi_local_size() { return local_rank_and_size().second; }
int mpi_local_rank() { return local_rank_and_size().first; }

void barrier() { MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD)); }

std::string host_name() {
  char name[256] = {};
  gethostname(name, sizeof name - 1);
  return name;
}

std::size_t mpi_chunk_elements() {
  static const std::size_t chunk = [] {
    const char* env = std::getenv("DUME_MPI_CHUNK_ELEMENTS");
    const long long n = env ? std::atoll(env) : 0;
    return n > 0 ? static_cast<std::size_t>(n) : std::size_t{1} << 23;
  }();
  return chunk;
}

std::size_t mpi_reduce_segment_elements() { return std::min<std::size_t>(mpi_chunk_elements(), std::size_t{1} << 16); }

namespace {

template <class T, class Call>
void chunked(std::span<T> data, Call&& call, std::size_t limit = mpi_chunk_elements()) {
  const std::size_t chunk = std::clamp<std::size_t>(limit, 1, INT_MAX);
  for (std::size_t begin = 0; begin < data.size(); begin += chunk)
    call(data.data() + begin, static_cast<int>(std::min(chunk, data.size() - begin)));
}

template <class T>
void reduce_sum_as(std::span<T> data, int root, MPI_Datatype type, MPI_Comm comm) {
  const bool is_root = comm_rank(comm) == root;
  chunked(
      data,
      [&](T* p, int n) {
        MPI_CHECK(MPI_Reduce(is_root ? MPI_IN_PLACE : p, is_root ? p : nullptr, n, type, MPI_SUM, root, comm));
      },
      mpi_reduce_segment_elements());
}

}  // namespace

void reduce_sum(std::span<double> data, int root, MPI_Comm comm) { reduce_sum_as(data, root, MPI_DOUBLE, comm); }
void reduce_sum(std::span<float> data, int root, MPI_Comm comm) { reduce_sum_as(data, root, MPI_FLOAT, comm); }

int comm_rank(MPI_Comm comm) {
  int rank = 0;
  MPI_CHECK(MPI_Comm_rank(comm, &rank));
  return rank;
}

namespace {

template <class T>
void send_as(std::span<const T> data, int dest, int tag, MPI_Datatype type) {
  chunked(std::span<T>(const_cast<T*>(data.data()), data.size()),
          [&](T* p, int n) { MPI_CHECK(MPI_Send(p, n, type, dest, tag, MPI_COMM_WORLD)); });
}

template <class T>
void recv_as(std::span<T> data, int source, int tag, MPI_Datatype type) {
  chunked(data, [&](T* p, int n) {
    MPI_Status status;
    MPI_CHECK(MPI_Recv(p, n, type, source, tag, MPI_COMM_WORLD, &status));
    int count = 0;
    MPI_CHECK(MPI_Get_count(&status, type, &count));
    if (count != n)
      throw Error("rank " + std::to_string(source) + " sent " + std::to_string(count) + " values where " +
                  std::to_string(n) + " were expected");
  });
}

}  // namespace

void send(std::span<const float> data, int dest, int tag) { send_as(data, dest, tag, MPI_FLOAT); }
void recv(std::span<float> data, int source, int tag) { recv_as(data, source, tag, MPI_FLOAT); }
void send(std::span<const std::int64_t> data, int dest, int tag) { send_as(data, dest, tag, MPI_INT64_T); }
void recv(std::span<std::int64_t> data, int source, int tag) { recv_as(data, source, tag, MPI_INT64_T); }

std::vector<std::string> gather_bytes(const std::string& bytes) {
  constexpr int kGatherTag = 0x6761;  // apart from the pipeline's tags
  const bool root = mpi_rank() == 0;
  const auto size = static_cast<long long>(bytes.size());
  std::vector<long long> sizes(root ? static_cast<std::size_t>(mpi_size()) : 0);
  MPI_CHECK(MPI_Gather(&size, 1, MPI_LONG_LONG, sizes.data(), 1, MPI_LONG_LONG, 0, MPI_COMM_WORLD));
  std::vector<std::string> out(sizes.size());
  if (root) {
    out[0] = bytes;
    for (std::size_t r = 1; r < out.size(); ++r) {
      out[r].resize(static_cast<std::size_t>(sizes[r]));
      for (std::size_t begin = 0; begin < out[r].size(); begin += INT_MAX / 2)
        MPI_CHECK(MPI_Recv(out[r].data() + begin, static_cast<int>(std::min<std::size_t>(INT_MAX / 2, out[r].size() - begin)),
                           MPI_CHAR, static_cast<int>(r), kGatherTag, MPI_COMM_WORLD, MPI_STATUS_IGNORE));
    }
  } else {
    for (std::size_t begin = 0; begin < bytes.size(); begin += INT_MAX / 2)
      MPI_CHECK(MPI_Send(bytes.data() + begin, static_cast<int>(std::min<std::size_t>(INT_MAX / 2, bytes.size() - begin)),
                         MPI_CHAR, 0, kGatherTag, MPI_COMM_WORLD));
  }
  return out;
}

void allreduce_sum(std::span<double> data, std::size_t segment) {
  chunked(
      data, [](double* p, int n) { MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, p, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD)); },
      segment);
}

void broadcast(std::span<double> data, int root, MPI_Comm comm) {
  chunked(data, [root, comm](double* p, int n) { MPI_CHECK(MPI_Bcast(p, n, MPI_DOUBLE, root, comm)); });
}

void broadcast(std::span<float> data, int root) {
  chunked(data, [root](float* p, int n) { MPI_CHECK(MPI_Bcast(p, n, MPI_FLOAT, root, MPI_COMM_WORLD)); });
}

void broadcast(std::string& text, int root) {
  unsigned long long size = text.size();
  MPI_CHECK(MPI_Bcast(&size, 1, MPI_UNSIGNED_LONG_LONG, root, MPI_COMM_WORLD));
  text.resize(size);
  for (std::size_t begin = 0; begin < size; begin += INT_MAX / 2)
    MPI_CHECK(MPI_Bcast(text.data() + begin, static_cast<int>(std::min<std::size_t>(INT_MAX / 2, size - begin)),
                        MPI_CHAR, root, MPI_COMM_WORLD));
}

void broadcast(std::vector<std::int64_t>& values, int root) {
  unsigned long long size = values.size();
  MPI_CHECK(MPI_Bcast(&size, 1, MPI_UNSIGNED_LONG_LONG, root, MPI_COMM_WORLD));
  values.resize(size);
  chunked(std::span(values), [root](std::int64_t* p, int n) { MPI_CHECK(MPI_Bcast(p, n, MPI_INT64_T, root, MPI_COMM_WORLD)); });
}

void broadcast(std::vector<std::uint32_t>& values, int root) {
  unsigned long long size = values.size();
  MPI_CHECK(MPI_Bcast(&size, 1, MPI_UNSIGNED_LONG_LONG, root, MPI_COMM_WORLD));
  values.resize(size);
  chunked(std::span(values), [root](std::uint32_t* p, int n) { MPI_CHECK(MPI_Bcast(p, n, MPI_UINT32_T, root, MPI_COMM_WORLD)); });
}

int max_over_ranks(int value) {
  int result = value;
  MPI_CHECK(MPI_Allreduce(&value, &result, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD));
  return result;
}

std::vector<double> gather_to_root(double value) {
  std::vector<double> values(mpi_rank() == 0 ? static_cast<std::size_t>(mpi_size()) : 0);
  MPI_CHECK(MPI_Gather(&value, 1, MPI_DOUBLE, values.data(), 1, MPI_DOUBLE, 0, MPI_COMM_WORLD));
  return values;
}

RankUsage gather_rank_usage() {
  const ProcessUsage usage = process_usage();
  return {gather_to_root(static_cast<double>(usage.peak_rss_bytes)),
          gather_to_root(static_cast<double>(usage.storage_read_bytes))};
}

std::string RankUsage::line() const {
  const auto list = [](const std::vector<double>& values) {
    std::string text;
    for (const double v : values) text += (text.empty() ? "" : ", ") + format_bytes(v);
    return text;
  };
  return "peak RSS per rank " + list(peak_rss) + "; read from storage " + list(storage_read);
}

namespace {
volatile std::sig_atomic_t caught_signal = 0;
// The first stop signal is recorded. A second SIGINT ends the process as if uncaught: a user who
// presses Ctrl-C twice wants out now (a repeated SIGTERM does not: Slurm and mpirun may both send
// one for the same cancel).
extern "C" void record_signal(int signal) {
  if (signal == SIGINT && caught_signal == SIGINT) {
    std::signal(signal, SIG_DFL);
    std::raise(signal);
  }
  caught_signal = signal;
}
int guards = 0;  // StopSignals alive
}  // namespace

StopSignals::StopSignals() {
  if (guards++ == 0) caught_signal = 0;  // a new job: an earlier job's stop is done with
  struct sigaction action {};
  action.sa_handler = record_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;  // a signal must not fail a read or write in progress
  sigaction(SIGTERM, &action, &old_term_);
  sigaction(SIGINT, &action, &old_int_);
  sigaction(SIGUSR1, &action, &old_usr1_);
}

StopSignals::~StopSignals() {
  --guards;
  sigaction(SIGTERM, &old_term_, nullptr);
  sigaction(SIGINT, &old_int_, nullptr);
  sigaction(SIGUSR1, &old_usr1_, nullptr);
}

int stop_signal() { return caught_signal; }

int stop_signal_anywhere() { return max_over_ranks(stop_signal()); }

std::string signal_name(int signal) {
  switch (signal) {
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGUSR1: return "SIGUSR1";
    default: return "signal " + std::to_string(signal);
  }
}

void collective_phase(const std::function<void()>& phase) {
  std::string message;
  try {
    phase();
  } catch (const std::exception& e) {
    message = e.what();
  }
  const int mine = message.empty() ? INT_MAX : mpi_rank();
  int first = INT_MAX;
  MPI_CHECK(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD));
  if (first == INT_MAX) return;
  broadcast(message, first);
  throw CollectiveError(message);
}

void abort_job(const std::string& message, int code) {
  release_output_locks();
  std::fprintf(stderr, "dume: error: [rank %d on %s] %s\n", mpi_rank(), host_name().c_str(), message.c_str());
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);  // MPI_Abort does not return; this is for the compiler
}

}  // namespace dume
