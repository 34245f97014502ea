// The file a harness hands each input to a reader that takes paths: one per process (in
// /dev/shm when there is one, so rewriting it costs no disk I/O), with sibling files
// `path + suffix`, all removed at exit.
#pragma once

#include <stdlib.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <string>

namespace dume::fuzz {

class TempFile {
 public:
  explicit TempFile(const std::string& tag) {
    for (const char* dir : {"/dev/shm", "/tmp"}) {
      std::string name = std::string(dir) + "/dume-fuzz-" + tag + "-XXXXXX";
      const int fd = ::mkstemp(name.data());
      if (fd < 0) continue;
      ::close(fd);  // the file holds the name
      path = name;
      return;
    }
    __builtin_trap();
  }
  ~TempFile() {
    for (const char* suffix : {"", ".idx", ".bin"}) ::unlink((path + suffix).c_str());
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  // Replaces the contents of `path + suffix` with `size` bytes of `data`.
  void write(const std::uint8_t* data, std::size_t size, const std::string& suffix = "") const {
    FILE* f = std::fopen((path + suffix).c_str(), "wb");
    if (!f || std::fwrite(data, 1, size, f) != size || std::fclose(f) != 0) __builtin_trap();
  }

  std::string path;
};

}  // namespace dume::fuzz
