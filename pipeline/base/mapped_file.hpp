// A read-only memory map of a whole file (RAII). Checkpoints are mapped, not read, so that a
// tensor is paged in only when it is converted.
#pragma once

#include <cstddef>
#include <filesystem>
#include <span>

namespace dume {

class MappedFile {
 public:
  explicit MappedFile(const std::filesystem::path& path);  // throws Error naming the path
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::span<const std::byte> bytes() const { return {data_, size_}; }
  const std::filesystem::path& path() const { return path_; }
  // Drops the resident pages wholly inside `range` (a part of bytes()), so that a tensor already
  // used stops counting in RSS; a later read pages them in again from the file.
  void release(std::span<const std::byte> range) const noexcept;

 private:
  std::filesystem::path path_;
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace dume
