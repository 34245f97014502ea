#include "resources.hpp"

#include <malloc.h>
#include <sys/resource.h>

#include <cstdio>
#include <fstream>

namespace dume {

ProcessUsage process_usage() {
  ProcessUsage usage;
  rusage r{};
  if (getrusage(RUSAGE_SELF, &r) == 0) usage.peak_rss_bytes = static_cast<std::uint64_t>(r.ru_maxrss) * 1024;  // KiB on Linux
  std::ifstream io("/proc/self/io");
  for (std::string key; io >> key;) {
    std::uint64_t value = 0;
    io >> value;
    if (key == "read_bytes:") usage.storage_read_bytes = value;
  }
  return usage;
}

std::uint64_t resident_bytes() {
  std::ifstream status("/proc/self/status");
  for (std::string key; status >> key;) {
    std::uint64_t kib = 0;
    if (key == "VmRSS:" && status >> kib) return kib * 1024;
  }
  return 0;
}

std::string format_bytes(double bytes) {
  const char* units[] = {"B", "kB", "MB", "GB", "TB"};
  int u = 0;
  while (bytes >= 1000 && u < 4) {
    bytes /= 1000;
    ++u;
  }
  char text[32];
  std::snprintf(text, sizeof text, u == 0 ? "%.0f %s" : "%.2f %s", bytes, units[u]);
  return text;
}

std::string format_count(double count) {
  char text[32];
  if (count >= 1e9)
    std::snprintf(text, sizeof text, "%.2f B", count / 1e9);
  else if (count >= 1e6)
    std::snprintf(text, sizeof text, "%.1f M", count / 1e6);
  else
    std::snprintf(text, sizeof text, "%.0f k", count / 1e3);
  return text;
}

void release_free_memory() { malloc_trim(0); }

}  // namespace dume
