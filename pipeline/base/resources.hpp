// What this process has used so far, as the OS counts it: what the "memory proportional to one
// layer" promise is measured against.
#pragma once

#include <cstdint>
#include <string>

namespace dume {

struct ProcessUsage {
  std::uint64_t peak_rss_bytes = 0;      // getrusage's maximum resident set (mapped pages included)
  std::uint64_t storage_read_bytes = 0;  // /proc/self/io read_bytes: fetched from storage, page faults
                                         // of mapped files included, page-cache hits not (0 if unreadable)
};

ProcessUsage process_usage();
// What this process holds now (VmRSS): code, libraries, MPI, the corpora's tokens.
std::uint64_t resident_bytes();

// Gives the heap's free memory back to the system (malloc_trim). glibc keeps what is freed: after
// the first large buffer is freed, its mmap threshold rises to 32 MB, so later buffers up to that
// size come from the heap and stay resident once freed. Called between a job's phases, so that
// each phase's peak is its own and not the sum of what the phases before left behind.
void release_free_memory();

// "1.74 GB" (decimal units, as `ls -l --si` and the issue tracker's figures).
std::string format_bytes(double bytes);
// "8.03 B", "103.8 M", "52 k": a parameter count.
std::string format_count(double count);

}  // namespace dume
