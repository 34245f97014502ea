// Small helpers over the HDF5 C API: owned ids, status checks that throw dume::Error, and the
// dataset/attribute reads and writes dume's files need. Not a general C++ binding of HDF5.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "dtype.hpp"
#include "error.hpp"

namespace dume {

// Owns one HDF5 id and closes it with the function that matches its kind. Move-only.
class H5Id {
 public:
  H5Id() noexcept = default;
  explicit H5Id(hid_t id) noexcept : id_(id) {}
  ~H5Id() { reset(); }

  H5Id(const H5Id&) = delete;
  H5Id& operator=(const H5Id&) = delete;
  H5Id(H5Id&& other) noexcept : id_(std::exchange(other.id_, H5I_INVALID_HID)) {}
  H5Id& operator=(H5Id&& other) noexcept {
    if (this != &other) {
      reset();
      id_ = std::exchange(other.id_, H5I_INVALID_HID);
    }
    return *this;
  }

  hid_t get() const noexcept { return id_; }
  bool valid() const noexcept { return id_ >= 0; }

  // Gives up ownership without closing.
  hid_t release() noexcept { return std::exchange(id_, H5I_INVALID_HID); }

  // Closes the owned id (if any). Close failures are ignored: this runs in destructors, and a
  // failed close of a read handle loses nothing; writers must close explicitly and check instead.
  void reset() noexcept {
    if (valid()) close_id(id_);
    id_ = H5I_INVALID_HID;
  }

 private:
  static void close_id(hid_t id) noexcept {
    // H5Oopen hands out ids whose type is the concrete object kind (group, dataset, named
    // datatype), so H5Oclose is never needed; the type-specific close covers them.
    switch (H5Iget_type(id)) {
      case H5I_FILE: H5Fclose(id); break;
      case H5I_GROUP: H5Gclose(id); break;
      case H5I_DATATYPE: H5Tclose(id); break;
      case H5I_DATASPACE: H5Sclose(id); break;
      case H5I_DATASET: H5Dclose(id); break;
      case H5I_ATTR: H5Aclose(id); break;
      case H5I_GENPROP_LST: H5Pclose(id); break;
      default: break;  // not a closable id (or already invalid): nothing we own
    }
  }

  hid_t id_ = H5I_INVALID_HID;
};

// The innermost message of the HDF5 error stack (where the failure was detected, e.g. "data
// error detected by Fletcher32 checksum" or a write's errno text), or "" when it is empty.
std::string h5_error_detail();

// Throws Error("<what> (HDF5: <detail>)"), the detail from the current error stack.
[[noreturn]] void h5_fail(const std::string& what);

// Returns `id`, or throws (h5_fail) when HDF5 signalled failure (a negative id).
inline hid_t h5_check(hid_t id, const std::string& what) {
  if (id < 0) h5_fail(what);
  return id;
}

// Returns `status` (also htri_t, the same type), or throws (h5_fail) when it is negative.
inline herr_t h5_check(herr_t status, const std::string& what) {
  if (status < 0) h5_fail(what);
  return status;
}

// Turns off HDF5's automatic error-stack printing for the default stack, so a failure reaches the
// user as our one-line Error instead of a multi-screen dump. Process-wide and idempotent.
inline void h5_silence_errors() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

namespace h5 {

// HDF5 1.10 has no 16-bit float types: bf16 and f16 are stored as 16-bit unsigned integers
// with a string attribute "dtype" ("bfloat16" / "float16"), as Keras 3 does. Every dataset
// dume writes carries that attribute ("float32", "float64", "int64" otherwise).
std::string dtype_attribute(DType dtype);

H5Id create_file(const std::filesystem::path& path);  // fails if it exists
// In an empty file made for it (ScratchFile, opened by /proc/self/fd/N): through the stdio
// driver, since the default one resolves the name to its target, and an unnamed file has none.
H5Id create_file_in(const std::filesystem::path& empty_file);
H5Id open_file(const std::filesystem::path& path);    // read-only; names the path in errors

// Writes a dataset at `path` (intermediate groups created) holding `data` (dtype's bytes,
// row-major), chunked with a Fletcher32 checksum per chunk so that reads detect corruption.
void write_dataset(hid_t file, const std::string& path, DType dtype, std::span<const std::int64_t> shape,
                   const void* data);

void write_attribute(hid_t object, const std::string& name, const std::string& value);
void write_attribute(hid_t object, const std::string& name, double value);
void write_attribute(hid_t object, const std::string& name, std::int64_t value);
void write_attribute(hid_t object, const std::string& name, const std::vector<std::string>& values);

bool has_attribute(hid_t object, const std::string& name);
std::string read_string_attribute(hid_t object, const std::string& name);
double read_double_attribute(hid_t object, const std::string& name);
std::int64_t read_int_attribute(hid_t object, const std::string& name);
std::vector<std::string> read_strings_attribute(hid_t object, const std::string& name);

struct DatasetInfo {
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;
  std::size_t numel() const;
};
// The dataset's dume dtype (from its "dtype" attribute, checked against its HDF5 type) and shape.
DatasetInfo dataset_info(hid_t file, const std::string& path);
// Reads a float dataset widened to f32 (or f64), checking the shape and that values are finite.
std::vector<float> read_f32(hid_t file, const std::string& path, std::span<const std::int64_t> shape);
// The same for the given rows of its first dimension (ascending, each once: an embedding's ids).
// The same into `out` (as many floats as the dataset holds), without a second copy.
void read_f32(hid_t file, const std::string& path, std::span<const std::int64_t> shape, std::span<float> out);
// The rows go into `out` (rows x the other dimensions' floats).
void read_f32_rows(hid_t file, const std::string& path, std::span<const std::int64_t> shape,
                   std::span<const std::uint32_t> rows, std::span<float> out);
std::vector<double> read_f64(hid_t file, const std::string& path, std::span<const std::int64_t> shape);
std::vector<std::int64_t> read_i64(hid_t file, const std::string& path, std::span<const std::int64_t> shape);
// The raw stored bytes of a dataset (dtype's encoding), for exact copies.
std::vector<std::byte> read_raw(hid_t file, const std::string& path);

// The file that holds an object (a shard, when `object` was opened through an external link).
std::string file_name(hid_t object);
// Whether `path` exists, following its links only once they are checked (a damaged one throws).
bool exists(hid_t file, const std::string& path);
// Whether the dataset's chunks carry a Fletcher32 checksum.
bool has_checksum(hid_t file, const std::string& path);
// Every dataset path under `group` (recursively, external links followed), in name order.
std::vector<std::string> list_datasets(hid_t file, const std::string& group = "/");

}  // namespace h5

}  // namespace dume
