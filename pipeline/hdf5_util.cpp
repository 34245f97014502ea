#include "hdf5_util.hpp"

#include <cmath>

#include "safetensors.hpp"

namespace dume::h5 {

namespace {

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

std::string file_name(hid_t object) {
  char name[4096] = {};
  H5Fget_name(object, name, sizeof name - 1);
  return name;
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

std::string dtype_attribute(DType dtype) {
  switch (dtype) {
    case DType::F64: return "float64";
    case DType::F32: return "float32";
    case DType::BF16: return "bfloat16";
    case DType::F16: return "float16";
    case DType::I64: return "int64";
    default: throw Error("no HDF5 dtype attribute for " + std::string(to_string(dtype)));
  }
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
  H5Id dataset(h5_check(H5Dcreate2(file, path.c_str(), file_type(dtype), space.get(), lcpl.get(), H5P_DEFAULT, H5P_DEFAULT),
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

DatasetInfo dataset_info(hid_t file, const std::string& path) {
  const std::string where = file_name(file) + ": dataset '" + path + "'";
  if (H5Lexists(file, path.c_str(), H5P_DEFAULT) <= 0) throw Error(where + " is missing");
  const H5Id dataset(h5_check(H5Dopen2(file, path.c_str(), H5P_DEFAULT), where + ": cannot open (broken link or shard?)"));
  const H5Id space(h5_check(H5Dget_space(dataset.get()), "H5Dget_space"));
  const int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank < 0 || rank > 8) throw Error(where + ": unreadable shape");
  std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  DatasetInfo info;
  info.shape.assign(dims.begin(), dims.end());
  const std::string name = has_attribute(dataset.get(), "dtype") ? read_string_attribute(dataset.get(), "dtype") : "";
  const H5Id type(h5_check(H5Dget_type(dataset.get()), "H5Dget_type"));
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

namespace {

template <class T>
std::vector<T> read_checked(hid_t file, const std::string& path, std::span<const std::int64_t> shape, DType want) {
  const DatasetInfo info = dataset_info(file, path);
  const std::string where = file_name(file) + ": dataset '" + path + "'";
  if (!std::equal(info.shape.begin(), info.shape.end(), shape.begin(), shape.end()))
    throw Error(where + " has shape " + shape_string(info.shape) + ", expected " + shape_string(shape));
  const H5Id dataset(h5_check(H5Dopen2(file, path.c_str(), H5P_DEFAULT), where + ": cannot open"));
  std::vector<T> out(info.numel());
  if (want == DType::I64) {
    if (info.dtype != DType::I64) throw Error(where + " is not int64");
    h5_check(H5Dread(dataset.get(), H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()), where + ": cannot read");
    return out;
  }
  if (info.dtype == DType::I64) throw Error(where + " holds integers, expected floating point");
  if (info.dtype == DType::BF16 || info.dtype == DType::F16) {
    std::vector<std::uint16_t> raw(out.size());
    h5_check(H5Dread(dataset.get(), H5T_NATIVE_UINT16, H5S_ALL, H5S_ALL, H5P_DEFAULT, raw.data()), where + ": cannot read");
    for (std::size_t i = 0; i < raw.size(); ++i)
      out[i] = static_cast<T>(info.dtype == DType::BF16 ? bf16_to_f32(raw[i]) : f16_to_f32(raw[i]));
  } else {
    h5_check(H5Dread(dataset.get(), want == DType::F64 ? H5T_NATIVE_DOUBLE : H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL,
                     H5P_DEFAULT, out.data()),
             where + ": cannot read");
  }
  for (std::size_t i = 0; i < out.size(); ++i)
    if (!std::isfinite(out[i]))
      throw Error(where + " holds a non-finite value at flat index " + std::to_string(i));
  return out;
}

}  // namespace

std::vector<float> read_f32(hid_t file, const std::string& path, std::span<const std::int64_t> shape) {
  return read_checked<float>(file, path, shape, DType::F32);
}

std::vector<double> read_f64(hid_t file, const std::string& path, std::span<const std::int64_t> shape) {
  return read_checked<double>(file, path, shape, DType::F64);
}

std::vector<std::int64_t> read_i64(hid_t file, const std::string& path, std::span<const std::int64_t> shape) {
  return read_checked<std::int64_t>(file, path, shape, DType::I64);
}

std::vector<std::byte> read_raw(hid_t file, const std::string& path) {
  const DatasetInfo info = dataset_info(file, path);
  const std::string where = file_name(file) + ": dataset '" + path + "'";
  const H5Id dataset(h5_check(H5Dopen2(file, path.c_str(), H5P_DEFAULT), where + ": cannot open"));
  std::vector<std::byte> out(info.numel() * dtype_size(info.dtype));
  h5_check(H5Dread(dataset.get(), memory_type(info.dtype), H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()), where + ": cannot read");
  return out;
}

}  // namespace dume::h5
