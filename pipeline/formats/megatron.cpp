// Megatron-LM indexed datasets, byte for byte as megatron.core.datasets.indexed_dataset
// (_IndexWriter / _IndexReader) lays them out. All numbers are little-endian:
//   .idx: "MMIDIDX\0\0" | u64 version = 1 | u8 dtype code | u64 sequence count S |
//         u64 document-index length D (documents + 1) | i32 lengths[S] | i64 pointers[S] |
//         i64 document index[D] | (multimodal only) i8 modes[S]
//   .bin: the sequences' ids in the dtype, back to back.
// Both files come from elsewhere, so every count, length and pointer is checked before use.
#include "megatron.hpp"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <system_error>
#include <type_traits>

#include "error.hpp"
#include "mapped_file.hpp"
#include "outputs.hpp"

namespace dume {
namespace {

namespace fs = std::filesystem;

constexpr char kMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
constexpr std::uint64_t kVersion = 1;
constexpr std::size_t kHeaderBytes = 9 + 8 + 1 + 8 + 8;
constexpr std::uint8_t kCodeInt32 = 4, kCodeUint16 = 8;

fs::path with_suffix(const fs::path& prefix, const char* suffix) {
  fs::path path = prefix;
  path += suffix;
  return path;
}

// Reads a little-endian T at `at` byte by byte, so the host's byte order does not matter.
template <typename T>
T load_le(const std::byte* at) {
  std::make_unsigned_t<T> raw = 0;
  for (std::size_t b = 0; b < sizeof(T); ++b)
    raw = static_cast<std::make_unsigned_t<T>>(raw | static_cast<std::make_unsigned_t<T>>(std::to_integer<std::uint8_t>(at[b])) << (8 * b));
  return static_cast<T>(raw);  // C++20: narrowing to signed wraps
}

template <typename T>
void store_le(std::string& out, T value) {
  auto raw = static_cast<std::make_unsigned_t<T>>(value);
  for (std::size_t b = 0; b < sizeof(T); ++b) out.push_back(static_cast<char>((raw >> (8 * b)) & 0xFF));
}

// The token dtypes Megatron may write; float codes (6, 7) and unknown ones are rejected.
struct TokenType {
  const char* name;
  std::size_t width;
  bool is_signed;
};

bool token_type(std::uint8_t code, TokenType& type) {
  switch (code) {
    case 1: type = {"uint8", 1, false}; return true;
    case 2: type = {"int8", 1, true}; return true;
    case 3: type = {"int16", 2, true}; return true;
    case 4: type = {"int32", 4, true}; return true;
    case 5: type = {"int64", 8, true}; return true;
    case kCodeUint16: type = {"uint16", 2, false}; return true;
    default: return false;
  }
}

// One id of `type` at `at` as a token id; negative ids and ids past 32 bits name their sequence.
std::uint32_t load_token(const std::byte* at, const TokenType& type, const fs::path& bin, std::uint64_t sequence,
                         std::uint64_t position) {
  std::int64_t value;
  switch (type.width) {
    case 1: value = type.is_signed ? load_le<std::int8_t>(at) : load_le<std::uint8_t>(at); break;
    case 2: value = type.is_signed ? load_le<std::int16_t>(at) : load_le<std::uint16_t>(at); break;
    case 4: value = load_le<std::int32_t>(at); break;
    default: value = load_le<std::int64_t>(at); break;
  }
  if (value < 0 || value > std::int64_t{std::numeric_limits<std::uint32_t>::max()})
    throw Error(bin.string() + ": sequence " + std::to_string(sequence) + ", token " + std::to_string(position) +
                " has id " + std::to_string(value) +
                (value < 0 ? ": negative ids are not token ids" : ": larger than the largest 32-bit id"));
  return static_cast<std::uint32_t>(value);
}

// product = a * b, or false when that overflows 64 bits.
bool checked_mul(std::uint64_t a, std::uint64_t b, std::uint64_t& product) {
  if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a) return false;
  product = a * b;
  return true;
}

[[noreturn]] void fail_in(const fs::path& path, const std::string& problem) {
  throw Error(path.string() + ": " + problem);
}

// What the .idx header says, checked against the file's size.
struct IdxHeader {
  TokenType type;
  std::uint64_t sequence_count;
  std::uint64_t document_count;
};

// The 34-byte header: magic, version, dtype code and the two counts.
IdxHeader read_idx_header(std::span<const std::byte> idx, const fs::path& idx_path) {
  if (idx.size() < kHeaderBytes)
    fail_in(idx_path, "header: file of " + std::to_string(idx.size()) + " bytes is shorter than the " +
                          std::to_string(kHeaderBytes) + "-byte header");
  if (std::memcmp(idx.data(), kMagic, sizeof kMagic) != 0)
    fail_in(idx_path, "magic: not a Megatron index (expected \"MMIDIDX\\0\\0\" in the first 9 bytes)");
  const auto version = load_le<std::uint64_t>(idx.data() + 9);
  if (version != kVersion)
    fail_in(idx_path,
            "version: " + std::to_string(version) + ", only version " + std::to_string(kVersion) + " is known");
  const auto code = load_le<std::uint8_t>(idx.data() + 17);
  IdxHeader header{};
  if (!token_type(code, header.type))
    fail_in(idx_path, "dtype code " + std::to_string(code) +
                          (code == 6 || code == 7 ? std::string(" (") + (code == 6 ? "float64" : "float32") +
                                                        "): floating-point values are not token ids"
                                                  : ": unknown (Megatron knows 1-8)"));
  header.sequence_count = load_le<std::uint64_t>(idx.data() + 18);
  header.document_count = load_le<std::uint64_t>(idx.data() + 26);
  return header;
}

// The file's size against the one the counts imply: S * (4 + 8) + D * 8 after the header,
// computed without overflow.
void check_idx_size(std::span<const std::byte> idx, const IdxHeader& header, const fs::path& idx_path) {
  const std::uint64_t sequence_count = header.sequence_count, document_count = header.document_count;
  std::uint64_t sequences_bytes = 0, documents_bytes = 0;
  const bool fits = checked_mul(sequence_count, 12, sequences_bytes) && checked_mul(document_count, 8, documents_bytes) &&
                    sequences_bytes <= std::numeric_limits<std::uint64_t>::max() - kHeaderBytes - documents_bytes;
  const std::uint64_t expected = fits ? kHeaderBytes + sequences_bytes + documents_bytes : 0;
  const std::string counts =
      "sequence_count " + std::to_string(sequence_count) + " and document_count " + std::to_string(document_count);
  if (!fits || idx.size() < expected)
    fail_in(idx_path, counts + " need " + (fits ? std::to_string(expected) : std::string("more than 2^64")) +
                          " bytes, but the file has " + std::to_string(idx.size()) +
                          " (truncated, or the counts are wrong)");
  if (idx.size() > expected) {
    // Multimodal datasets append one int8 mode per sequence; nothing in the header says so.
    if (idx.size() - expected == sequence_count)
      fail_in(idx_path, "sequence_modes: " + std::to_string(sequence_count) +
                            " bytes after the document index, one per sequence: a multimodal dataset, which is not "
                            "supported");
    fail_in(idx_path, "file size " + std::to_string(idx.size()) + " bytes: " + std::to_string(idx.size() - expected) +
                          " bytes more than the " + std::to_string(expected) + " that " + counts + " make");
  }
}

// The sequence lengths and pointers (the counts fit the file, so the offsets cannot overflow):
// fills dataset.sequence_offsets and checks the sequences cover the .bin exactly.
void read_sequences(std::span<const std::byte> idx, std::uint64_t bin_size, const IdxHeader& header,
                    const fs::path& idx_path, const fs::path& bin_path, MegatronDataset& dataset) {
  const std::uint64_t sequence_count = header.sequence_count;
  const TokenType& type = header.type;
  const std::byte* lengths_at = idx.data() + kHeaderBytes;
  const std::byte* pointers_at = lengths_at + 4 * sequence_count;
  dataset.sequence_offsets.reserve(sequence_count + 1);
  dataset.sequence_offsets.push_back(0);
  // Sequences lie back to back from byte 0, as the writer puts them; Megatron's slice reads rely on it.
  std::uint64_t next_pointer = 0, total_tokens = 0;
  for (std::uint64_t i = 0; i < sequence_count; ++i) {
    const auto length = load_le<std::int32_t>(lengths_at + 4 * i);
    const auto pointer = load_le<std::int64_t>(pointers_at + 8 * i);
    // Appended rather than "[" + to_string(i): GCC 12 at -O3 warns falsely (-Wrestrict) on the latter.
    const auto field_i = [i] { return std::string(1, '[').append(std::to_string(i)).append(1, ']'); };
    if (length < 0) fail_in(idx_path, "sequence_lengths" + field_i() + " = " + std::to_string(length) + " is negative");
    if (pointer < 0 || static_cast<std::uint64_t>(pointer) != next_pointer)
      fail_in(idx_path, "sequence_pointers" + field_i() + " = " + std::to_string(pointer) + ", expected " +
                            std::to_string(next_pointer) + " (the previous sequences' lengths x " +
                            std::to_string(type.width) + " bytes)");
    const std::uint64_t bytes = static_cast<std::uint64_t>(length) * type.width;
    if (bytes > bin_size - next_pointer)
      fail_in(idx_path, "sequence" + field_i() + " (" + std::to_string(length) + " " + type.name + " ids from byte " +
                            std::to_string(next_pointer) + ") runs past the end of " + bin_path.string() + " (" +
                            std::to_string(bin_size) + " bytes)");
    next_pointer += bytes;
    total_tokens += static_cast<std::uint64_t>(length);
    dataset.sequence_offsets.push_back(total_tokens);
  }
  if (next_pointer != bin_size)
    fail_in(bin_path, std::to_string(bin_size) + " bytes, but the sequences in " + idx_path.string() + " cover " +
                          std::to_string(next_pointer));
}

// The document index: from 0 to the sequence count, never decreasing.
void read_document_index(std::span<const std::byte> idx, const IdxHeader& header, const fs::path& idx_path,
                         MegatronDataset& dataset) {
  const std::uint64_t sequence_count = header.sequence_count, document_count = header.document_count;
  const std::byte* documents_at = idx.data() + kHeaderBytes + 12 * sequence_count;
  if (document_count == 0) fail_in(idx_path, "document index: empty, expected at least the leading 0");
  dataset.document_index.reserve(document_count);
  for (std::uint64_t d = 0; d < document_count; ++d) {
    const auto entry = load_le<std::int64_t>(documents_at + 8 * d);
    const auto where = [&] { return "document_indices[" + std::to_string(d) + "] = " + std::to_string(entry); };
    if (d == 0 && entry != 0) fail_in(idx_path, where() + ": the document index must start at 0");
    if (d > 0 && entry < static_cast<std::int64_t>(dataset.document_index.back()))
      fail_in(idx_path,
              where() + " is smaller than the entry before it (" + std::to_string(dataset.document_index.back()) + ")");
    if (static_cast<std::uint64_t>(entry) > sequence_count)
      fail_in(idx_path, where() + " is past the sequence count " + std::to_string(sequence_count));
    dataset.document_index.push_back(static_cast<std::uint64_t>(entry));
  }
  if (dataset.document_index.back() != sequence_count)
    fail_in(idx_path, "document_indices[" + std::to_string(document_count - 1) + "] = " +
                          std::to_string(dataset.document_index.back()) +
                          ": the document index must end at the sequence count " + std::to_string(sequence_count));
}

// The .bin's ids, decoded into dataset.tokens at the offsets read_sequences found.
void read_tokens(std::span<const std::byte> bin, const TokenType& type, const fs::path& bin_path,
                 MegatronDataset& dataset) {
  const std::uint64_t sequence_count = dataset.sequence_offsets.size() - 1;
  dataset.tokens.resize(dataset.sequence_offsets.back());
  for (std::uint64_t i = 0; i < sequence_count; ++i) {
    const std::uint64_t begin = dataset.sequence_offsets[i], end = dataset.sequence_offsets[i + 1];
    const std::byte* at = bin.data() + begin * type.width;
    for (std::uint64_t t = begin; t < end; ++t, at += type.width)
      dataset.tokens[t] = load_token(at, type, bin_path, i, t - begin);
  }
}

}  // namespace

MegatronDataset read_megatron(const fs::path& prefix) {
  const fs::path idx_path = with_suffix(prefix, ".idx"), bin_path = with_suffix(prefix, ".bin");
  const MappedFile idx_file(idx_path), bin_file(bin_path);
  const std::span<const std::byte> idx = idx_file.bytes(), bin = bin_file.bytes();
  const IdxHeader header = read_idx_header(idx, idx_path);
  check_idx_size(idx, header, idx_path);
  MegatronDataset dataset;
  read_sequences(idx, bin.size(), header, idx_path, bin_path, dataset);
  read_document_index(idx, header, idx_path, dataset);
  read_tokens(bin, header.type, bin_path, dataset);
  return dataset;
}

void write_megatron(const fs::path& prefix, std::span<const std::span<const std::uint32_t>> documents,
                    std::size_t vocab_size) {
  const fs::path idx_path = with_suffix(prefix, ".idx"), bin_path = with_suffix(prefix, ".bin");
  // DType.optimal_dtype: uint16 below 65500 ids, else int32.
  const bool narrow = vocab_size < 65500;
  const std::uint8_t code = narrow ? kCodeUint16 : kCodeInt32;
  const std::size_t width = narrow ? 2 : 4;
  if (vocab_size > std::size_t{std::numeric_limits<std::int32_t>::max()} + 1)
    throw Error(idx_path.string() + ": a vocabulary of " + std::to_string(vocab_size) +
                " ids does not fit Megatron's int32 token dtype");

  // The .bin is written a document at a time (it may be GBs); the .idx is small and built whole.
  TemporaryFile bin_file(bin_path), idx_file(idx_path);  // removed unless both land
  std::ofstream bin(bin_file.path(), std::ios::binary | std::ios::trunc);
  if (!bin) throw Error(bin_path.string() + ": cannot create: " + std::strerror(errno));
  std::string lengths, pointers, document_index, buffer;
  std::uint64_t pointer = 0;
  for (std::size_t d = 0; d < documents.size(); ++d) {
    const std::span<const std::uint32_t> document = documents[d];
    if (document.size() > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()))
      throw Error(bin_path.string() + ": document " + std::to_string(d) + " has " + std::to_string(document.size()) +
                  " tokens, more than an int32 sequence length holds");
    buffer.clear();
    for (std::size_t t = 0; t < document.size(); ++t) {
      // An id past the vocabulary would wrap silently in uint16.
      if (document[t] >= vocab_size)
        throw Error(bin_path.string() + ": document " + std::to_string(d) + ", token " + std::to_string(t) +
                    " has id " + std::to_string(document[t]) + ", outside the vocabulary of " +
                    std::to_string(vocab_size));
      if (narrow)
        store_le(buffer, static_cast<std::uint16_t>(document[t]));
      else
        store_le(buffer, static_cast<std::int32_t>(document[t]));
    }
    bin.write(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    if (!bin) throw Error(bin_path.string() + ": cannot write: " + std::strerror(errno));
    store_le(lengths, static_cast<std::int32_t>(document.size()));
    store_le(pointers, static_cast<std::int64_t>(pointer));
    pointer += document.size() * width;
  }
  bin.close();
  if (!bin) throw Error(bin_path.string() + ": cannot write: " + std::strerror(errno));
  for (std::size_t d = 0; d <= documents.size(); ++d) store_le(document_index, static_cast<std::int64_t>(d));

  std::string idx(kMagic, sizeof kMagic);
  store_le(idx, kVersion);
  store_le(idx, code);
  store_le(idx, static_cast<std::uint64_t>(documents.size()));      // one sequence per document
  store_le(idx, static_cast<std::uint64_t>(documents.size() + 1));  // the index's length, leading 0 included
  idx += lengths;
  idx += pointers;
  idx += document_index;
  std::ofstream idx_out(idx_file.path(), std::ios::binary | std::ios::trunc);
  if (!idx_out) throw Error(idx_path.string() + ": cannot create: " + std::strerror(errno));
  idx_out.write(idx.data(), static_cast<std::streamsize>(idx.size()));
  idx_out.close();
  if (!idx_out) throw Error(idx_path.string() + ": cannot write: " + std::strerror(errno));

  // The .idx lands last, so a complete index never sits next to a partial .bin.
  bin_file.commit();
  idx_file.commit();
}

}  // namespace dume
