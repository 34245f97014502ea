// Megatron-LM indexed datasets (`PREFIX.bin` + `PREFIX.idx`), as megatron.core.datasets.indexed_dataset
// writes them: the .idx header ("MMIDIDX\0\0", version 1, dtype code), sequence count, document
// count, int32 sequence lengths, int64 byte offsets into .bin, int64 document boundaries.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <vector>

namespace dume {

struct MegatronDataset {
  std::vector<std::uint32_t> tokens;           // every sequence, concatenated in order
  std::vector<std::uint64_t> sequence_offsets; // sequence i is tokens[offsets[i], offsets[i+1])
  std::vector<std::uint64_t> document_index;   // as stored: sequence indices where documents start, ..., count
};

// Reads and checks PREFIX.idx and PREFIX.bin (magic, version, dtype code, counts against file
// sizes, offsets in bounds and consistent with the lengths, document index monotone). Throws Error
// naming the file and the field.
MegatronDataset read_megatron(const std::filesystem::path& prefix);

// Writes one sequence per document with the smallest dtype Megatron would pick for `vocab_size`
// (uint16 below 65500, else int32), to temporary names renamed into place.
void write_megatron(const std::filesystem::path& prefix, std::span<const std::span<const std::uint32_t>> documents,
                    std::size_t vocab_size);

}  // namespace dume
