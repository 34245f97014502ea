// libFuzzer harness: a Megatron indexed dataset (PREFIX.idx + PREFIX.bin) from arbitrary bytes.
// The first two bytes (little-endian) say how many of the following bytes are the .bin (at most
// what is there); the rest is the .idx. What read_megatron accepts must be consistent.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "error.hpp"
#include "megatron.hpp"
#include "temp_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const dume::fuzz::TempFile files("megatron");  // PREFIX: the .idx and .bin are its siblings
  if (size < 2) return 0;
  const std::size_t bin_size = std::min<std::size_t>(data[0] | std::size_t{data[1]} << 8, size - 2);
  files.write(data + 2, bin_size, ".bin");
  files.write(data + 2 + bin_size, size - 2 - bin_size, ".idx");
  try {
    const dume::MegatronDataset d = dume::read_megatron(files.path);
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
