// libFuzzer harness: a Megatron indexed dataset (PREFIX.idx + PREFIX.bin) from arbitrary bytes.
// The first two bytes (little-endian) say how many of the following bytes are the .bin (at most
// what is there); the rest is the .idx. What read_megatron accepts must be consistent.
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "error.hpp"
#include "megatron.hpp"

namespace {

// PREFIX.idx and PREFIX.bin for every input, PREFIX unique to this process; removed at exit.
struct TempPrefix {
  std::string prefix;
  TempPrefix() {
    char name[] = "/dev/shm/dume-fuzz-megatron-XXXXXX";
    char fallback[] = "/tmp/dume-fuzz-megatron-XXXXXX";
    int fd = ::mkstemp(name);
    prefix = name;
    if (fd < 0) {
      fd = ::mkstemp(fallback);
      prefix = fallback;
    }
    if (fd < 0) __builtin_trap();
    ::close(fd);  // the file itself holds the name
  }
  ~TempPrefix() {
    for (const char* suffix : {"", ".idx", ".bin"}) ::unlink((prefix + suffix).c_str());
  }
  static void write(const std::string& path, const std::uint8_t* data, std::size_t size) {
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f || std::fwrite(data, 1, size, f) != size || std::fclose(f) != 0) __builtin_trap();
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const TempPrefix files;
  if (size < 2) return 0;
  const std::size_t bin_size = std::min<std::size_t>(data[0] | std::size_t{data[1]} << 8, size - 2);
  TempPrefix::write(files.prefix + ".bin", data + 2, bin_size);
  TempPrefix::write(files.prefix + ".idx", data + 2 + bin_size, size - 2 - bin_size);
  try {
    const dume::MegatronDataset d = dume::read_megatron(files.prefix);
    // The reader's promises: offsets from 0 to the token count, non-decreasing; the document
    // index from 0 to the sequence count, non-decreasing.
    const auto& offsets = d.sequence_offsets;
    const auto& documents = d.document_index;
    if (offsets.empty() || offsets.front() != 0 || offsets.back() != d.tokens.size()) __builtin_trap();
    if (!std::is_sorted(offsets.begin(), offsets.end())) __builtin_trap();
    if (documents.empty() || documents.front() != 0 || documents.back() != offsets.size() - 1) __builtin_trap();
    if (!std::is_sorted(documents.begin(), documents.end())) __builtin_trap();
  } catch (const dume::Error&) {
    // a refused dataset: the expected outcome for most inputs
  }
  return 0;
}
