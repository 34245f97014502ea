// Reader of one .safetensors file: memory-mapped, with the header treated as untrusted input.
// Layout: u64 LE header length, JSON header {name: {dtype, shape, data_offsets}, __metadata__},
// then the data area that data_offsets index.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <unordered_map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dtype.hpp"
#include "mapped_file.hpp"

namespace dume {

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;
  std::size_t begin = 0, end = 0;  // byte offsets within the data area

  std::size_t numel() const;
};

std::string shape_string(std::span<const std::int64_t> shape);  // "[4, 64]"

// The parsed and validated header of a whole safetensors file held in memory.
struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // ordered by offset
  std::map<std::string, std::string> metadata;
  std::size_t data_begin = 0;  // where the data area starts in the file
};

// Validates `bytes` (the whole file) as untrusted input: bounds, overflow, overlap, duplicate
// names, dtype x shape = byte length. Throws Error("<problem>") without naming a file; the fuzz
// harness calls it on raw buffers.
SafetensorsHeader safetensors_parse(std::span<const std::byte> bytes);

class SafetensorsFile {
 public:
  // Largest header accepted: real headers are a few hundred KB even for 400-tensor shards.
  static constexpr std::uint64_t kMaxHeaderBytes = 100ull << 20;

  // Maps and validates the file; every problem is an Error "<path>: <problem>".
  explicit SafetensorsFile(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return file_.path(); }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // ordered by offset
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const TensorInfo* find(std::string_view name) const;
  std::span<const std::byte> data(const TensorInfo& tensor) const;
  // Lets the tensor's mapped pages go (MappedFile::release) once it has been read.
  void release(const TensorInfo& tensor) const { release(data(tensor)); }
  void release(std::span<const std::byte> part) const { file_.release(part); }  // a part of data()

 private:
  MappedFile file_;
  std::span<const std::byte> data_area_;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, std::size_t> index_;  // name -> position in tensors_
  std::map<std::string, std::string> metadata_;
};

// A tensor to write: its bytes (dtype x shape long) are produced only when it is written, so a
// writer holds one tensor at a time, never a whole model (an 8B model is 16 GB in bf16).
struct TensorSource {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;
  std::function<std::vector<std::byte>()> bytes;
  std::size_t byte_size() const;
};

// Writes a .safetensors file (tensors in the given order, 8-byte aligned header), one tensor's
// bytes in memory at a time.
void safetensors_write(const std::filesystem::path& path, std::span<const TensorSource> tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace dume
