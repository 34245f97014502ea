#include "hdf5_util.hpp"

#include <algorithm>
#include <cmath>

#include "safetensors.hpp"

namespace dume {

std::string h5_error_detail() {
  std::string detail;
  // Upward: the first entry is the innermost, where the problem was detected.
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_UPWARD,
      [](unsigned n, const H5E_error2_t* e, void* out) -> herr_t {
        if (n == 0 && e->desc) *static_cast<std::string*>(out) = e->desc;
        return 0;
      },
      &detail);
  // A failed read or write describes itself over several lines (time, file, descriptor, buffer
  // address, ...): keep what failed and the system's reason, on one line.
  const std::string reason = "error message = '";
  if (const auto at = detail.find(reason); at != std::string::npos) {
    const auto end = detail.find('\'', at + reason.size());
    detail = detail.substr(0, detail.find_first_of(":,")) + ": " + detail.substr(at + reason.size(), end - at - reason.size());
  }
  std::replace(detail.begin(), detail.end(), '\n', ' ');
  if (detail.size() > 300) detail = detail.substr(0, 300) + "...";
  return detail;
}

void h5_fail(const std::string& what) {
  const std::string detail = h5_error_detail();
  throw Error(detail.empty() ? what : what + " (HDF5: " + detail + ")");
}

}  // namespace dume

namespace dume::h5 {

namespace {

// Chunks of about 1 MiB (whole rows where they fit): large enough that the per-chunk cost (index
// entry, checksum call) is negligible, small enough for HDF5's default 1 MiB chunk cache.
constexpr std::size_t kChunkBytes = 1 << 20;

std::vector<hsize_t> chunk_dims(const std::vector<hsize_t>& dims, std::size_t element_size) {
  std::vector<hsize_t> chunk(dims.size(), 1);
  std::size_t elements = std::max<std::size_t>(1, kChunkBytes / element_size);  // per chunk, left to place
  for (std::size_t i = dims.size(); i-- > 0 && elements > 1;) {  // from the fastest-varying dimension
    chunk[i] = std::min<hsize_t>(dims[i], elements);
    elements /= chunk[i];
  }
  return chunk;
}

hid_t file_type(DType dtype) {
  switch (dtype) {
    case DType::F64: return H5T_IEEE_F64LE;
    case DType::F32: return H5T_IEEE_F32LE;
    case DType::BF16:
    case DType::F16: return H5T_STD_U16LE;
    case DType::I64: return H5T_STD_I64LE;
    default: throw Error("cannot store " + std::string(to_string(dtype)) + " in HDF5");
  }
}

hid_t memory_type(DType dtype) {
  switch (dtype) {
    case DType::F64: return H5T_NATIVE_DOUBLE;
    case DType::F32: return H5T_NATIVE_FLOAT;
    case DType::BF16:
    case DType::F16: return H5T_NATIVE_UINT16;
    case DType::I64: return H5T_NATIVE_INT64;
    default: throw Error("cannot read " + std::string(to_string(dtype)) + " from HDF5");
  }
}

H5Id string_type(std::size_t length) {
  H5Id type(h5_check(H5Tcopy(H5T_C_S1), "H5Tcopy"));
  h5_check(H5Tset_size(type.get(), std::max<std::size_t>(length, 1)), "H5Tset_size");
  h5_check(H5Tset_cset(type.get(), H5T_CSET_UTF8), "H5Tset_cset");
  return type;
}

H5Id variable_string_type() {
  H5Id type(h5_check(H5Tcopy(H5T_C_S1), "H5Tcopy"));
  h5_check(H5Tset_size(type.get(), H5T_VARIABLE), "H5Tset_size");
  h5_check(H5Tset_cset(type.get(), H5T_CSET_UTF8), "H5Tset_cset");
  return type;
}

H5Id open_attribute(hid_t object, const std::string& name) {
  if (H5Aexists(object, name.c_str()) <= 0)
    throw Error(file_name(object) + ": attribute '" + name + "' is missing");
  return H5Id(h5_check(H5Aopen(object, name.c_str(), H5P_DEFAULT), file_name(object) + ": cannot open attribute '" + name + "'"));
}

template <class T>
void write_scalar(hid_t object, const std::string& name, hid_t type, const T& value) {
  H5Id space(h5_check(H5Screate(H5S_SCALAR), "H5Screate"));
  if (H5Aexists(object, name.c_str()) > 0) H5Adelete(object, name.c_str());
  H5Id attr(h5_check(H5Acreate2(object, name.c_str(), type, space.get(), H5P_DEFAULT, H5P_DEFAULT),
                     "cannot create attribute '" + name + "'"));
  h5_check(H5Awrite(attr.get(), type, &value), "cannot write attribute '" + name + "'");
}

}  // namespace

std::string file_name(hid_t object) {
  char name[4096] = {};
  H5Fget_name(object, name, sizeof name - 1);
  return name;
}

std::string dtype_attribute(DType dtype) {
  if (dtype != DType::F64 && dtype != DType::F32 && dtype != DType::BF16 && dtype != DType::F16 && dtype != DType::I64)
    throw Error("no HDF5 dtype attribute for " + std::string(to_string(dtype)));
  return std::string(torch_name(dtype));
}

std::size_t DatasetInfo::numel() const {
  std::size_t n = 1;
  for (auto d : shape) n *= static_cast<std::size_t>(d);
  return n;
}

H5Id create_file(const std::filesystem::path& path) {
  h5_silence_errors();
  return H5Id(h5_check(H5Fcreate(path.c_str(), H5F_ACC_EXCL, H5P_DEFAULT, H5P_DEFAULT), path.string() + ": cannot create"));
}

H5Id create_file_in(const std::filesystem::path& empty_file) {
  h5_silence_errors();
  DUME_ASSERT(std::filesystem::file_size(empty_file) == 0);
  const H5Id access(h5_check(H5Pcreate(H5P_FILE_ACCESS), "H5Pcreate"));
  h5_check(H5Pset_fapl_stdio(access.get()), "H5Pset_fapl_stdio");
  return H5Id(h5_check(H5Fcreate(empty_file.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, access.get()),
                       empty_file.string() + ": cannot create"));
}

H5Id open_file(const std::filesystem::path& path) {
  h5_silence_errors();
  if (!std::filesystem::exists(path)) throw Error(path.string() + ": no such file");
  return H5Id(h5_check(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT),
                       path.string() + ": cannot open as HDF5 (truncated or not an HDF5 file?)"));
}

void write_dataset(hid_t file, const std::string& path, DType dtype, std::span<const std::int64_t> shape,
                   const void* data) {
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  H5Id space(h5_check(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), "H5Screate_simple"));
  H5Id lcpl(h5_check(H5Pcreate(H5P_LINK_CREATE), "H5Pcreate"));
  h5_check(H5Pset_create_intermediate_group(lcpl.get(), 1), "H5Pset_create_intermediate_group");
  const std::string where = file_name(file) + ": dataset '" + path + "'";
  // Checksums need chunks; an empty dataset has no data to protect (and cannot be chunked).
  H5Id dcpl(h5_check(H5Pcreate(H5P_DATASET_CREATE), "H5Pcreate"));
  if (!dims.empty() && std::find(dims.begin(), dims.end(), hsize_t{0}) == dims.end()) {
    const std::vector<hsize_t> chunk = chunk_dims(dims, dtype_size(dtype));
    h5_check(H5Pset_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data()), where + ": H5Pset_chunk");
    h5_check(H5Pset_fletcher32(dcpl.get()), where + ": H5Pset_fletcher32");
  }
  H5Id dataset(h5_check(H5Dcreate2(file, path.c_str(), file_type(dtype), space.get(), lcpl.get(), dcpl.get(), H5P_DEFAULT),
                        where + ": cannot create"));
  h5_check(H5Dwrite(dataset.get(), memory_type(dtype), H5S_ALL, H5S_ALL, H5P_DEFAULT, data), where + ": cannot write");
  write_attribute(dataset.get(), "dtype", dtype_attribute(dtype));
}

void write_attribute(hid_t object, const std::string& name, const std::string& value) {
  const H5Id type = string_type(value.size());
  H5Id space(h5_check(H5Screate(H5S_SCALAR), "H5Screate"));
  if (H5Aexists(object, name.c_str()) > 0) H5Adelete(object, name.c_str());
  H5Id attr(h5_check(H5Acreate2(object, name.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT),
                     "cannot create attribute '" + name + "'"));
  std::string padded = value;
  padded.resize(std::max<std::size_t>(value.size(), 1), '\0');
  h5_check(H5Awrite(attr.get(), type.get(), padded.data()), "cannot write attribute '" + name + "'");
}

void write_attribute(hid_t object, const std::string& name, double value) {
  write_scalar(object, name, H5T_NATIVE_DOUBLE, value);
}

void write_attribute(hid_t object, const std::string& name, std::int64_t value) {
  write_scalar(object, name, H5T_NATIVE_INT64, value);
}

void write_attribute(hid_t object, const std::string& name, const std::vector<std::string>& values) {
  // Variable-length UTF-8 strings: what h5py reads as a list of str.
  const H5Id type = variable_string_type();
  const hsize_t n = values.size();
  H5Id space(h5_check(H5Screate_simple(1, &n, nullptr), "H5Screate_simple"));
  if (H5Aexists(object, name.c_str()) > 0) H5Adelete(object, name.c_str());
  H5Id attr(h5_check(H5Acreate2(object, name.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT),
                     "cannot create attribute '" + name + "'"));
  std::vector<const char*> pointers;
  for (const auto& v : values) pointers.push_back(v.c_str());
  h5_check(H5Awrite(attr.get(), type.get(), pointers.data()), "cannot write attribute '" + name + "'");
}

bool has_attribute(hid_t object, const std::string& name) { return H5Aexists(object, name.c_str()) > 0; }

std::string read_string_attribute(hid_t object, const std::string& name) {
  const H5Id attr = open_attribute(object, name);
  const H5Id type(h5_check(H5Aget_type(attr.get()), "H5Aget_type"));
  const std::string where = file_name(object) + ": attribute '" + name + "'";
  if (H5Tget_class(type.get()) != H5T_STRING) throw Error(where + " is not a string");
  if (H5Tis_variable_str(type.get()) > 0) {
    char* value = nullptr;
    const H5Id mem = variable_string_type();
    h5_check(H5Aread(attr.get(), mem.get(), &value), where + ": cannot read");
    std::string s = value ? value : "";
    H5free_memory(value);
    return s;
  }
  std::string value(H5Tget_size(type.get()), '\0');
  h5_check(H5Aread(attr.get(), type.get(), value.data()), where + ": cannot read");
  value.resize(value.find('\0') == std::string::npos ? value.size() : value.find('\0'));
  return value;
}

double read_double_attribute(hid_t object, const std::string& name) {
  const H5Id attr = open_attribute(object, name);
  double value = 0;
  h5_check(H5Aread(attr.get(), H5T_NATIVE_DOUBLE, &value), file_name(object) + ": attribute '" + name + "' is not a number");
  return value;
}

std::int64_t read_int_attribute(hid_t object, const std::string& name) {
  const H5Id attr = open_attribute(object, name);
  std::int64_t value = 0;
  h5_check(H5Aread(attr.get(), H5T_NATIVE_INT64, &value), file_name(object) + ": attribute '" + name + "' is not an integer");
  return value;
}

std::vector<std::string> read_strings_attribute(hid_t object, const std::string& name) {
  const H5Id attr = open_attribute(object, name);
  const std::string where = file_name(object) + ": attribute '" + name + "'";
  const H5Id space(h5_check(H5Aget_space(attr.get()), "H5Aget_space"));
  const hssize_t n = H5Sget_simple_extent_npoints(space.get());
  if (n < 0 || n > (1 << 20)) throw Error(where + " has an absurd size");
  const H5Id mem = variable_string_type();
  std::vector<char*> pointers(static_cast<std::size_t>(n), nullptr);
  h5_check(H5Aread(attr.get(), mem.get(), pointers.data()), where + " is not a list of strings");
  std::vector<std::string> values;
  for (char* p : pointers) {
    values.emplace_back(p ? p : "");
    H5free_memory(p);
  }
  return values;
}

namespace {

// Checks that the link `path` names (its parent already checked) exists and, when it is an
// external link, that its stored value is two terminated strings: HDF5 1.10 reads such a value
// with strlen, past the end of its buffer when a damaged file lacks the terminators (found by
// fuzz/moe_h5.cpp), so damaged links are refused before HDF5 follows them.
void check_link(hid_t file, const std::string& path, const std::string& where) {
  if (H5Lexists(file, path.c_str(), H5P_DEFAULT) <= 0) throw Error(where + " is missing");
  H5L_info_t link{};
  if (H5Lget_info(file, path.c_str(), &link, H5P_DEFAULT) < 0) h5_fail(where + ": unreadable link '" + path + "'");
  if (link.type != H5L_TYPE_EXTERNAL) return;
  if (link.u.val_size < 3 || link.u.val_size > 65536) throw Error(where + ": damaged external link '" + path + "'");
  std::vector<char> value(link.u.val_size);
  h5_check(H5Lget_val(file, path.c_str(), value.data(), value.size(), H5P_DEFAULT), where + ": unreadable link '" + path + "'");
  const auto file_end = std::find(value.begin() + 1, value.end(), '\0');  // flags byte, file name, object path
  if (file_end == value.end() || std::find(file_end + 1, value.end(), '\0') == value.end())
    throw Error(where + ": damaged external link '" + path + "' (unterminated names)");
  // dume links only to shards beside the index: a link that leaves the directory would make a
  // copy, a removal or a verification silently depend on (or copy) files that are not the MoE's.
  const std::string target(value.begin() + 1, file_end);
  if (target.empty() || target == "." || target == ".." || target.find('/') != std::string::npos)
    throw Error(where + " links to '" + target + "', outside the MoE's directory (dume links only to shard files beside moe.h5)");
}

// check_link for every component of an absolute path, outermost first.
void check_links(hid_t file, const std::string& path, const std::string& where) {
  for (std::size_t slash = path.find('/', 1);; slash = path.find('/', slash + 1)) {
    check_link(file, path.substr(0, slash), where);
    if (slash == std::string::npos) return;
  }
}

// Opens the dataset at `path`, naming what is wrong when it cannot: a missing dataset, or an
// external link whose shard is missing or broken. `where` names the index file and the path.
H5Id open_dataset(hid_t file, const std::string& path, const std::string& where) {
  check_links(file, path, where);
  const hid_t id = H5Dopen2(file, path.c_str(), H5P_DEFAULT);
  if (id >= 0) return H5Id(id);
  const std::string detail = h5_error_detail();
  H5L_info_t link{};
  if (H5Lget_info(file, path.c_str(), &link, H5P_DEFAULT) >= 0 && link.type == H5L_TYPE_EXTERNAL) {
    std::vector<char> value(link.u.val_size + 1, '\0');
    const char *target_file = nullptr, *target_path = nullptr;
    unsigned flags = 0;
    if (H5Lget_val(file, path.c_str(), value.data(), value.size(), H5P_DEFAULT) >= 0 &&
        H5Lunpack_elink_val(value.data(), link.u.val_size, &flags, &target_file, &target_path) >= 0) {
      const auto shard = std::filesystem::path(file_name(file)).parent_path() / target_file;
      if (!std::filesystem::exists(shard)) throw Error(where + " links to " + shard.string() + ":" + target_path + ", which is missing");
      throw Error(where + " links to " + shard.string() + ":" + target_path +
                  ", which cannot be opened (truncated or corrupt shard?)" + (detail.empty() ? "" : " (HDF5: " + detail + ")"));
    }
  }
  throw Error(where + ": cannot open" + (detail.empty() ? "" : " (HDF5: " + detail + ")"));
}

// The shape and dume dtype of an open dataset; `where` names it in errors.
DatasetInfo info_of(hid_t dataset, const std::string& where) {
  const H5Id space(h5_check(H5Dget_space(dataset), where + ": H5Dget_space"));
  const int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank < 0 || rank > 8) throw Error(where + ": unreadable shape");
  std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  DatasetInfo info;
  std::uint64_t elements = 1;
  for (const hsize_t d : dims) {
    if (d > (1ull << 62) || (d != 0 && elements > (1ull << 62) / d)) throw Error(where + ": absurd shape");
    elements *= d;
    info.shape.push_back(static_cast<std::int64_t>(d));
  }
  const std::string name = has_attribute(dataset, "dtype") ? read_string_attribute(dataset, "dtype") : "";
  const H5Id type(h5_check(H5Dget_type(dataset), where + ": H5Dget_type"));
  const H5T_class_t cls = H5Tget_class(type.get());
  const std::size_t size = H5Tget_size(type.get());
  struct Known {
    const char* name;
    DType dtype;
    H5T_class_t cls;
    std::size_t size;
  };
  static constexpr Known known[] = {{"float64", DType::F64, H5T_FLOAT, 8}, {"float32", DType::F32, H5T_FLOAT, 4},
                                    {"bfloat16", DType::BF16, H5T_INTEGER, 2}, {"float16", DType::F16, H5T_INTEGER, 2},
                                    {"int64", DType::I64, H5T_INTEGER, 8}};
  for (const auto& k : known)
    if (name == k.name) {
      if (cls != k.cls || size != k.size) throw Error(where + ": stored type does not match its dtype '" + name + "'");
      info.dtype = k.dtype;
      return info;
    }
  throw Error(where + ": unknown or missing dtype attribute '" + name + "'");
}

// Reads the whole dataset into `out` (bytes of `mem_type`), first checking that all of its data
// is stored: a dataset declared but never (fully) written reads as fill values otherwise.
// Reads the dataset (all of it, or the `rows` of its first dimension, ascending: HDF5 reads a
// selection in file order) as mem_type.
void read_all(hid_t dataset, hid_t mem_type, void* out, std::size_t bytes, const std::string& where,
              std::span<const std::uint32_t> rows = {}) {
  const hsize_t stored = H5Dget_storage_size(dataset);
  if (stored < bytes)
    throw Error(where + ": only " + std::to_string(stored) + " of its " + std::to_string(bytes) +
                " bytes are stored (never fully written?)");
  H5Id file_space, memory_space;
  if (!rows.empty()) {  // one hyperslab per row, in the order given
    file_space = H5Id(h5_check(H5Dget_space(dataset), where + ": cannot read its shape"));
    const int rank = H5Sget_simple_extent_ndims(file_space.get());
    std::vector<hsize_t> dims(static_cast<std::size_t>(std::max(rank, 1))), start(dims.size(), 0), count;
    H5Sget_simple_extent_dims(file_space.get(), dims.data(), nullptr);
    count = dims;
    count[0] = 1;
    H5Sselect_none(file_space.get());
    for (const std::uint32_t r : rows) {
      start[0] = r;
      h5_check(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_OR, start.data(), nullptr, count.data(), nullptr),
               where + ": cannot select row " + std::to_string(r));
    }
    std::vector<hsize_t> memory_dims = dims;
    memory_dims[0] = rows.size();
    memory_space = H5Id(h5_check(H5Screate_simple(rank, memory_dims.data(), nullptr), where + ": cannot read"));
  }
  if (H5Dread(dataset, mem_type, rows.empty() ? H5S_ALL : memory_space.get(), rows.empty() ? H5S_ALL : file_space.get(),
              H5P_DEFAULT, out) >= 0)
    return;
  const std::string detail = h5_error_detail();
  if (detail.find("Fletcher32") != std::string::npos)
    throw Error(where + ": checksum mismatch, the stored data is corrupt (HDF5: " + detail + ")");
  throw Error(where + ": cannot read" + (detail.empty() ? "" : " (HDF5: " + detail + ")"));
}

}  // namespace

DatasetInfo dataset_info(hid_t file, const std::string& path) {
  const std::string where = file_name(file) + ": dataset '" + path + "'";
  const H5Id dataset = open_dataset(file, path, where);
  return info_of(dataset.get(), file_name(dataset.get()) + ": dataset '" + path + "'");
}


namespace {

template <class T>
std::vector<T> read_checked(hid_t file, const std::string& path, std::span<const std::int64_t> shape, DType want,
                           std::span<const std::uint32_t> rows = {}, std::span<T> into = {}) {
  const H5Id dataset = open_dataset(file, path, file_name(file) + ": dataset '" + path + "'");
  const std::string where = file_name(dataset.get()) + ": dataset '" + path + "'";  // the shard's name
  const DatasetInfo info = info_of(dataset.get(), where);
  if (!std::equal(info.shape.begin(), info.shape.end(), shape.begin(), shape.end()))
    throw Error(where + " has shape " + shape_string(info.shape) + ", expected " + shape_string(shape));
  const std::size_t stored_bytes = info.numel() * dtype_size(info.dtype);
  for (std::size_t i = 0; i < rows.size(); ++i)
    if (rows[i] >= static_cast<std::uint64_t>(shape[0]) || (i > 0 && rows[i] <= rows[i - 1]))
      throw Error(where + ": row " + std::to_string(rows[i]) + " is out of range or out of order");
  const std::size_t count = rows.empty() ? info.numel() : info.numel() / static_cast<std::size_t>(shape[0]) * rows.size();
  std::vector<T> storage(into.empty() ? count : 0);  // the result, unless the caller gave `into`
  const std::span<T> out = into.empty() ? std::span<T>(storage) : into;
  DUME_ASSERT(out.size() == count);
  if (want == DType::I64) {
    if (info.dtype != DType::I64) throw Error(where + " is not int64");
    read_all(dataset.get(), H5T_NATIVE_INT64, out.data(), stored_bytes, where);
    return storage;
  }
  if (info.dtype == DType::I64) throw Error(where + " holds integers, expected floating point");
  if (info.dtype == DType::BF16 || info.dtype == DType::F16) {
    std::vector<std::uint16_t> raw(out.size());
    read_all(dataset.get(), H5T_NATIVE_UINT16, raw.data(), stored_bytes, where, rows);
    for (std::size_t i = 0; i < raw.size(); ++i)
      out[i] = static_cast<T>(info.dtype == DType::BF16 ? bf16_to_f32(raw[i]) : f16_to_f32(raw[i]));
  } else {
    read_all(dataset.get(), want == DType::F64 ? H5T_NATIVE_DOUBLE : H5T_NATIVE_FLOAT, out.data(), stored_bytes, where,
             rows);
  }
  for (std::size_t i = 0; i < out.size(); ++i)
    if (!std::isfinite(out[i]))
      throw Error(where + " holds a non-finite value at flat index " + std::to_string(i));
  return storage;
}

}  // namespace

std::vector<float> read_f32(hid_t file, const std::string& path, std::span<const std::int64_t> shape) {
  return read_checked<float>(file, path, shape, DType::F32);
}

void read_f32(hid_t file, const std::string& path, std::span<const std::int64_t> shape, std::span<float> out) {
  read_checked<float>(file, path, shape, DType::F32, {}, out);
}

void read_f32_rows(hid_t file, const std::string& path, std::span<const std::int64_t> shape,
                   std::span<const std::uint32_t> rows, std::span<float> out) {
  if (!rows.empty()) read_checked<float>(file, path, shape, DType::F32, rows, out);
}

std::vector<double> read_f64(hid_t file, const std::string& path, std::span<const std::int64_t> shape) {
  return read_checked<double>(file, path, shape, DType::F64);
}

std::vector<std::int64_t> read_i64(hid_t file, const std::string& path, std::span<const std::int64_t> shape) {
  return read_checked<std::int64_t>(file, path, shape, DType::I64);
}

std::vector<std::byte> read_raw(hid_t file, const std::string& path) {
  const H5Id dataset = open_dataset(file, path, file_name(file) + ": dataset '" + path + "'");
  const std::string where = file_name(dataset.get()) + ": dataset '" + path + "'";
  const DatasetInfo info = info_of(dataset.get(), where);
  std::vector<std::byte> out(info.numel() * dtype_size(info.dtype));
  read_all(dataset.get(), memory_type(info.dtype), out.data(), out.size(), where);
  return out;
}

bool exists(hid_t file, const std::string& path) {
  for (std::size_t slash = path.find('/', 1);; slash = path.find('/', slash + 1)) {
    const std::string prefix = path.substr(0, slash);
    if (H5Lexists(file, prefix.c_str(), H5P_DEFAULT) <= 0) return false;
    check_link(file, prefix, file_name(file));
    if (slash == std::string::npos) return true;
  }
}

bool has_checksum(hid_t file, const std::string& path) {
  const H5Id dataset = open_dataset(file, path, file_name(file) + ": dataset '" + path + "'");
  const H5Id dcpl(h5_check(H5Dget_create_plist(dataset.get()), file_name(file) + ": dataset '" + path + "': H5Dget_create_plist"));
  return H5Pget_filter_by_id2(dcpl.get(), H5Z_FILTER_FLETCHER32, nullptr, nullptr, nullptr, 0, nullptr, nullptr) >= 0;
}

std::vector<std::string> list_datasets(hid_t file, const std::string& group) {
  // H5Ovisit does not follow external links: walk the links and recurse into groups instead.
  std::vector<std::string> names;
  const auto on_link = [](hid_t g, const char* name, const H5L_info_t*, void* data) -> herr_t {
    (void)g;
    static_cast<std::vector<std::string>*>(data)->push_back(name);
    return 0;
  };
  std::vector<std::string> children;
  h5_check(H5Literate_by_name(file, group.c_str(), H5_INDEX_NAME, H5_ITER_INC, nullptr, on_link, &children, H5P_DEFAULT),
           file_name(file) + ": cannot list group '" + group + "'");
  for (const std::string& child : children) {
    const std::string path = (group == "/" ? "/" : group + "/") + child;
    H5O_info_t info{};
    try {
      check_link(file, path, file_name(file) + ": '" + path + "'");
    } catch (const Error&) {
      names.push_back(path);  // a damaged link: let the reader say why
      continue;
    }
    if (H5Oget_info_by_name2(file, path.c_str(), &info, H5O_INFO_BASIC, H5P_DEFAULT) < 0) {
      names.push_back(path);  // unresolvable (a broken external link): let the reader say why
      continue;
    }
    if (info.type == H5O_TYPE_GROUP) {
      // A group linked into itself (a damaged or crafted file, found by fuzz/moe_h5.cpp) would
      // recurse forever; dume's own files nest 5 deep.
      if (std::count(path.begin(), path.end(), '/') > 32)
        throw Error(file_name(file) + ": group '" + group + "' nests too deep (a link cycle?)");
      const auto below = list_datasets(file, path);
      names.insert(names.end(), below.begin(), below.end());
    } else if (info.type == H5O_TYPE_DATASET) {
      names.push_back(path);
    }
  }
  return names;
}

}  // namespace dume::h5
