// Corpus readers (raw uint16/uint32, text bytes, .npy parsed here without numpy, HDF5 datasets),
// vocab checks and windows. Reads the whole corpus into memory once; not a streaming data loader.
#include "corpus.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>

#include "error.hpp"
#include "hdf5_util.hpp"

namespace dume {
namespace {

namespace fs = std::filesystem;

// Ids are staged through a buffer of this many elements, so converting never holds a second copy
// of a multi-GB corpus in its on-disk width.
constexpr size_t kChunkElements = size_t{1} << 20;

[[noreturn]] void fail_file(const fs::path& path, const std::string& problem) {
  throw Error(path.string() + ": " + problem);
}

// The one place an on-disk id becomes a token id: rejects negatives and ids past 32 bits.
template <typename T>
uint32_t to_token_id(T value, uint64_t position, const std::string& where) {
  if constexpr (std::is_signed_v<T>) {
    if (value < 0) {
      throw Error(where + ": token at position " + std::to_string(position) + " has id " + std::to_string(value) +
                  ": negative ids are not token ids");
    }
  }
  if constexpr (sizeof(T) > sizeof(uint32_t)) {
    if (static_cast<uint64_t>(value) > std::numeric_limits<uint32_t>::max()) {
      throw Error(where + ": token at position " + std::to_string(position) + " has id " + std::to_string(value) +
                  ": larger than the largest 32-bit id 4294967295");
    }
  }
  return static_cast<uint32_t>(value);
}

// Decodes n little-endian ids of type T (assembled byte by byte, so the host's byte order does not
// matter) into dst. `first` is the corpus position of src's first id, for error messages.
template <typename T>
void decode_ids(const unsigned char* src, size_t n, uint32_t* dst, uint64_t first, const std::string& where) {
  for (size_t i = 0; i < n; ++i) {
    uint64_t raw = 0;
    for (size_t b = 0; b < sizeof(T); ++b) raw |= uint64_t{src[i * sizeof(T) + b]} << (8 * b);
    dst[i] = to_token_id(static_cast<T>(raw), first + i, where);  // C++20: narrowing to signed wraps
  }
}

// How ids are stored in a file: their width in bytes and the matching decoder.
struct IdType {
  size_t width;
  void (*decode)(const unsigned char*, size_t, uint32_t*, uint64_t, const std::string&);
};

template <typename T>
constexpr IdType id_type() {
  return {sizeof(T), &decode_ids<T>};
}

// Returns the size of a corpus file; a missing file, a directory or an unreadable one is an Error.
uint64_t check_regular_file(const fs::path& path) {
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (status.type() == fs::file_type::not_found) fail_file(path, "no such file");
  if (ec) fail_file(path, "cannot access (" + ec.message() + ")");
  if (fs::is_directory(status)) fail_file(path, "is a directory, not a corpus file");
  const uintmax_t size = fs::file_size(path, ec);
  if (ec) fail_file(path, "cannot get the file size (" + ec.message() + ")");
  return size;
}

std::ifstream open_binary(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_file(path, std::string("cannot open (") + std::strerror(errno) + ")");
  return in;
}

// Reads exactly n bytes at the stream's position (which is `offset`, for the message).
void read_exact(std::ifstream& in, const fs::path& path, unsigned char* dst, size_t n, uint64_t offset) {
  in.read(reinterpret_cast<char*>(dst), static_cast<std::streamsize>(n));
  if (!in || static_cast<size_t>(in.gcount()) != n) {
    fail_file(path, "read of " + std::to_string(n) + " bytes at byte " + std::to_string(offset) +
                        " failed (file changed while reading, or an I/O error)");
  }
}

// Reads `count` ids of `type` starting at byte `offset`; the caller has checked they are in the file.
std::vector<uint32_t> read_ids(std::ifstream& in, const fs::path& path, uint64_t offset, uint64_t count, IdType type) {
  std::vector<uint32_t> ids(count);
  std::vector<unsigned char> buffer(std::min<uint64_t>(count, kChunkElements) * type.width);
  in.seekg(static_cast<std::streamoff>(offset));
  if (!in) fail_file(path, "cannot seek to byte " + std::to_string(offset));
  const std::string where = path.string();
  for (uint64_t done = 0; done < count;) {
    const size_t n = std::min<uint64_t>(count - done, kChunkElements);
    read_exact(in, path, buffer.data(), n * type.width, offset + done * type.width);
    type.decode(buffer.data(), n, ids.data() + done, done, where);
    done += n;
  }
  return ids;
}

// uint16 / uint32 / text-bytes: the file is nothing but little-endian ids.
std::vector<uint32_t> read_raw(const fs::path& path, IdType type, std::string_view format) {
  const uint64_t size = check_regular_file(path);
  if (size == 0) fail_file(path, "empty corpus (0 tokens)");
  if (size % type.width != 0) {
    fail_file(path, "size " + std::to_string(size) + " bytes is not a multiple of " + std::to_string(type.width) +
                        " (" + std::string(format) + " ids): truncated, or not a " + std::string(format) + " file?");
  }
  std::ifstream in = open_binary(path);
  return read_ids(in, path, 0, size / type.width, type);
}

// ---- .npy -------------------------------------------------------------------------------------

// One value of the Python literal subset that .npy headers use.
struct PyValue {
  enum class Kind { string, integer, boolean, none, sequence };
  Kind kind = Kind::none;
  std::string text;         // string
  bool negative = false;    // integer: sign ...
  uint64_t magnitude = 0;   // ... and absolute value
  bool flag = false;        // boolean
  std::vector<PyValue> items;  // sequence (tuple or list)
};

// Parses the header's dict literal. NumPy writes one fixed layout, but other writers (and older
// NumPy) vary key order, quotes, spacing, trailing commas and `10L` longs, so parse the grammar.
class PyDictParser {
 public:
  PyDictParser(std::string_view text, const fs::path& path) : text_(text), path_(path) {}

  std::vector<std::pair<std::string, PyValue>> parse() {
    std::vector<std::pair<std::string, PyValue>> entries;
    skip_space();
    expect('{');
    while (true) {
      skip_space();
      if (peek() == '}') break;
      if (peek() != '\'' && peek() != '"') fail("expected a quoted key or '}'");
      std::string key = parse_string();
      skip_space();
      expect(':');
      skip_space();
      PyValue value = parse_value(0);
      for (const auto& [k, v] : entries) {
        if (k == key) fail("duplicate key '" + key + "'");
      }
      entries.emplace_back(std::move(key), std::move(value));
      skip_space();
      if (peek() == ',') {
        ++pos_;
      } else if (peek() != '}') {
        fail("expected ',' or '}'");
      }
    }
    ++pos_;  // '}'
    skip_space();
    if (pos_ != text_.size()) fail("unexpected text after the closing '}'");
    return entries;
  }

 private:
  static constexpr int kMaxDepth = 16;  // headers nest two levels at most; bounds the recursion

  [[noreturn]] void fail(const std::string& problem) const {
    fail_file(path_, "bad .npy header: " + problem + " at header offset " + std::to_string(pos_));
  }
  char peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }
  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++pos_;
  }
  void skip_space() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' ||
                                   text_[pos_] == '\r')) {
      ++pos_;
    }
  }

  std::string parse_string() {
    const char quote = text_[pos_++];
    std::string out;
    while (true) {
      if (pos_ >= text_.size()) fail("unterminated string");
      const char c = text_[pos_++];
      if (c == quote) return out;
      if (c == '\\') {  // escapes never matter for the keys and dtypes we read: keep the next char
        if (pos_ >= text_.size()) fail("unterminated string");
        out += text_[pos_++];
      } else {
        out += c;
      }
    }
  }

  PyValue parse_value(int depth) {
    if (depth > kMaxDepth) fail("nesting too deep");
    PyValue value;
    const char c = peek();
    if (c == '\'' || c == '"') {
      value.kind = PyValue::Kind::string;
      value.text = parse_string();
    } else if (c == '(' || c == '[') {
      value.kind = PyValue::Kind::sequence;
      const char close = c == '(' ? ')' : ']';
      ++pos_;
      while (true) {
        skip_space();
        if (peek() == close) break;
        value.items.push_back(parse_value(depth + 1));
        skip_space();
        if (peek() == ',') {
          ++pos_;
        } else if (peek() != close) {
          fail(std::string("expected ',' or '") + close + "'");
        }
      }
      ++pos_;
    } else if (c == '-' || c == '+' || (c >= '0' && c <= '9')) {
      value.kind = PyValue::Kind::integer;
      if (c == '-' || c == '+') {
        value.negative = c == '-';
        ++pos_;
      }
      if (!(peek() >= '0' && peek() <= '9')) fail("expected a digit");
      while (peek() >= '0' && peek() <= '9') {
        const auto digit = static_cast<uint64_t>(peek() - '0');
        if (value.magnitude > (std::numeric_limits<uint64_t>::max() - digit) / 10) fail("integer too large");
        value.magnitude = value.magnitude * 10 + digit;
        ++pos_;
      }
      if (peek() == 'L' || peek() == 'l') ++pos_;  // Python 2 long, written by old NumPy
    } else {
      const size_t start = pos_;
      while (pos_ < text_.size() && (std::isalnum(static_cast<unsigned char>(text_[pos_])) || text_[pos_] == '_')) {
        ++pos_;
      }
      const std::string_view word = text_.substr(start, pos_ - start);
      if (word == "True" || word == "False") {
        value.kind = PyValue::Kind::boolean;
        value.flag = word == "True";
      } else if (word == "None") {
        value.kind = PyValue::Kind::none;
      } else {
        pos_ = start;
        fail("unexpected value");
      }
    }
    return value;
  }

  std::string_view text_;
  const fs::path& path_;
  size_t pos_ = 0;
};

std::string shape_string(const std::vector<uint64_t>& shape) {
  std::string out = "(";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + (shape.size() == 1 ? ",)" : ")");
}

IdType npy_id_type(const std::string& descr, const fs::path& path) {
  static const std::array<std::pair<std::string_view, IdType>, 8> kSupported = {{
      {"|u1", id_type<uint8_t>()},
      {"<u2", id_type<uint16_t>()},
      {"<u4", id_type<uint32_t>()},
      {"<u8", id_type<uint64_t>()},
      {"|i1", id_type<int8_t>()},
      {"<i2", id_type<int16_t>()},
      {"<i4", id_type<int32_t>()},
      {"<i8", id_type<int64_t>()},
  }};
  for (const auto& [name, type] : kSupported) {
    if (descr == name) return type;
  }
  if (descr.size() >= 2 && descr[0] == '>') {
    fail_file(path, "big-endian dtype '" + descr + "' is not supported; save the array as little-endian ('<" +
                        descr.substr(1) + "')");
  }
  if (descr.size() >= 2 && (descr[1] == 'f' || descr[1] == 'c')) {
    fail_file(path, "dtype '" + descr + "' is floating-point; token ids must be stored as integers");
  }
  fail_file(path, "unsupported dtype '" + descr + "' (supported: |u1 <u2 <u4 <u8 |i1 <i2 <i4 <i8)");
}

// Where the preamble (magic, version, header length) says the header and the data lie.
struct NpyLayout {
  uint64_t header_offset;
  uint64_t header_length;
  uint64_t data_offset;
};

// Preamble: magic (6), version (2), header length (2 in 1.0, 4 in 2.0 and 3.0).
NpyLayout read_npy_preamble(std::ifstream& in, const fs::path& path, uint64_t size) {
  constexpr std::string_view kMagic = "\x93NUMPY";
  if (size < 10) fail_file(path, "not a .npy file (only " + std::to_string(size) + " bytes)");
  std::array<unsigned char, 12> pre{};
  read_exact(in, path, pre.data(), 8, 0);
  if (std::string_view(reinterpret_cast<const char*>(pre.data()), 6) != kMagic) {
    fail_file(path, "not a .npy file (no \\x93NUMPY magic)");
  }
  const unsigned major = pre[6];
  const unsigned minor = pre[7];
  if (minor != 0 || major < 1 || major > 3) {
    fail_file(path, "unsupported .npy version " + std::to_string(major) + "." + std::to_string(minor) +
                        " (supported: 1.0, 2.0, 3.0)");
  }
  const size_t length_bytes = major == 1 ? 2 : 4;
  if (size < 8 + length_bytes) fail_file(path, "truncated .npy preamble");
  read_exact(in, path, pre.data() + 8, length_bytes, 8);
  uint64_t header_length = 0;
  for (size_t b = 0; b < length_bytes; ++b) header_length |= uint64_t{pre[8 + b]} << (8 * b);
  const uint64_t data_offset = 8 + length_bytes + header_length;
  if (data_offset > size) {
    fail_file(path, "truncated .npy file: header length " + std::to_string(header_length) + " runs past the end (" +
                        std::to_string(size) + " bytes)");
  }
  return {8 + length_bytes, header_length, data_offset};
}

// What the header's dict says about the array: its dtype and shape, and the element count.
struct NpyHeader {
  std::string descr;
  IdType type;
  std::vector<uint64_t> shape;
  uint64_t count;
};

// The shape's dimensions; 1-D or 2-D only.
std::vector<uint64_t> npy_shape(const PyValue& shape_value, const fs::path& path) {
  if (shape_value.kind != PyValue::Kind::sequence) fail_file(path, "bad .npy header: 'shape' is not a tuple");
  std::vector<uint64_t> shape;
  for (const PyValue& dim : shape_value.items) {
    if (dim.kind != PyValue::Kind::integer || dim.negative) {
      fail_file(path, "bad .npy header: 'shape' must hold non-negative integers");
    }
    shape.push_back(dim.magnitude);
  }
  if (shape.empty() || shape.size() > 2) {
    fail_file(path, "shape " + shape_string(shape) + " has " + std::to_string(shape.size()) +
                        " dimensions; expected a 1-D or 2-D array of token ids");
  }
  return shape;
}

// The number of elements of `shape`: not 0, and their bytes in `type` fit 64 bits.
uint64_t npy_element_count(const std::vector<uint64_t>& shape, IdType type, const fs::path& path) {
  uint64_t count = 1;
  for (const uint64_t dim : shape) {
    if (dim != 0 && count > std::numeric_limits<uint64_t>::max() / dim) {
      fail_file(path, "shape " + shape_string(shape) + " overflows: too many elements");
    }
    count *= dim;
  }
  if (count == 0) fail_file(path, "empty corpus (0 tokens; shape " + shape_string(shape) + ")");
  if (count > std::numeric_limits<uint64_t>::max() / type.width) {
    fail_file(path, "shape " + shape_string(shape) + " overflows: too many bytes");
  }
  return count;
}

NpyHeader parse_npy_header(std::string_view text, const fs::path& path) {
  const auto entries = PyDictParser(text, path).parse();
  auto find = [&](std::string_view key) -> const PyValue& {
    for (const auto& [k, v] : entries) {
      if (k == key) return v;
    }
    fail_file(path, "bad .npy header: no '" + std::string(key) + "' key");
  };
  // Keys other than the three below are ignored: NumPy writes none, and they cannot change the data.
  const PyValue& descr = find("descr");
  const PyValue& fortran_order = find("fortran_order");
  const PyValue& shape_value = find("shape");

  if (descr.kind != PyValue::Kind::string) {
    fail_file(path, "structured .npy dtypes are not supported; expected a plain integer dtype");
  }
  const IdType type = npy_id_type(descr.text, path);
  if (fortran_order.kind != PyValue::Kind::boolean) fail_file(path, "bad .npy header: 'fortran_order' is not True/False");
  if (fortran_order.flag) {
    fail_file(path, "fortran_order arrays are not supported; save a C-order array (np.ascontiguousarray)");
  }
  std::vector<uint64_t> shape = npy_shape(shape_value, path);
  const uint64_t count = npy_element_count(shape, type, path);
  return {descr.text, type, std::move(shape), count};
}

// The array's data, which must fill the file from `data_offset` to its end exactly.
std::vector<uint32_t> read_npy_data(std::ifstream& in, const fs::path& path, uint64_t size, uint64_t data_offset,
                                    const NpyHeader& header) {
  const uint64_t data_bytes = header.count * header.type.width;
  const uint64_t available = size - data_offset;
  if (data_bytes > available) {
    fail_file(path, "truncated .npy file: shape " + shape_string(header.shape) + " of '" + header.descr +
                        "' needs " + std::to_string(data_bytes) + " bytes of data, the file has " +
                        std::to_string(available));
  }
  if (data_bytes < available) {
    // np.save into one open file appends arrays; reading only the first would silently lose tokens.
    fail_file(path, std::to_string(available - data_bytes) + " unexpected bytes after the array data of shape " +
                        shape_string(header.shape) + " (several arrays saved into one file?)");
  }
  return read_ids(in, path, data_offset, header.count, header.type);
}

std::vector<uint32_t> read_npy(const fs::path& path) {
  const uint64_t size = check_regular_file(path);
  std::ifstream in = open_binary(path);
  const NpyLayout layout = read_npy_preamble(in, path, size);
  std::string header(layout.header_length, '\0');
  read_exact(in, path, reinterpret_cast<unsigned char*>(header.data()), header.size(), layout.header_offset);
  return read_npy_data(in, path, size, layout.data_offset, parse_npy_header(header, path));
}

// ---- HDF5 -------------------------------------------------------------------------------------

std::string h5_class_name(H5T_class_t type_class) {
  switch (type_class) {
    case H5T_FLOAT: return "floating-point";
    case H5T_STRING: return "string";
    case H5T_COMPOUND: return "compound";
    case H5T_ENUM: return "enum";
    case H5T_BITFIELD: return "bitfield";
    case H5T_ARRAY: return "array";
    default: return "non-integer";
  }
}

herr_t collect_name(hid_t, const char* name, const H5L_info_t*, void* op_data) {
  auto* names = static_cast<std::vector<std::string>*>(op_data);
  names->push_back(name);
  return names->size() >= 9 ? 1 : 0;  // stop early: the message lists a few names, not a huge file
}

// "(top-level names: a, b, ...)" to help a user who mistyped the dataset path.
std::string top_level_names(hid_t file) {
  std::vector<std::string> names;
  if (H5Literate(file, H5_INDEX_NAME, H5_ITER_INC, nullptr, collect_name, &names) < 0) return "";
  if (names.empty()) return " (the file holds nothing)";
  std::string out = " (top-level names: ";
  for (size_t i = 0; i < names.size() && i < 8; ++i) out += (i ? ", " : "") + names[i];
  return out + (names.size() > 8 ? ", ...)" : ")");
}

// Reads the dataset in blocks of whole leading-dimension rows, converting each block to token ids.
template <typename T>
void read_h5_ids(hid_t dataset, hid_t space, hid_t mem_type, const std::vector<hsize_t>& dims, uint32_t* out,
                 const std::string& where) {
  if (dims.empty()) {  // scalar dataspace: a single id
    T value{};
    h5_check(H5Dread(dataset, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, &value), where + ": read failed");
    out[0] = to_token_id(value, 0, where);
    return;
  }
  hsize_t row = 1;
  for (size_t d = 1; d < dims.size(); ++d) row *= dims[d];
  const hsize_t rows_per_block = std::max<hsize_t>(1, kChunkElements / row);
  std::vector<T> buffer(std::min(rows_per_block, dims[0]) * row);
  std::vector<hsize_t> start(dims.size(), 0);
  std::vector<hsize_t> count = dims;
  for (hsize_t first_row = 0; first_row < dims[0]; first_row += rows_per_block) {
    start[0] = first_row;
    count[0] = std::min(rows_per_block, dims[0] - first_row);
    hsize_t n = count[0] * row;
    h5_check(H5Sselect_hyperslab(space, H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr),
             where + ": cannot select rows to read");
    const H5Id mem_space(h5_check(H5Screate_simple(1, &n, nullptr), where + ": cannot create a memory dataspace"));
    h5_check(H5Dread(dataset, mem_type, mem_space.get(), space, H5P_DEFAULT, buffer.data()), where + ": read failed");
    const uint64_t first = first_row * row;
    for (size_t i = 0; i < n; ++i) out[first + i] = to_token_id(buffer[i], first + i, where);
  }
}

std::vector<uint32_t> read_hdf5(const fs::path& path, const std::string& dataset_name) {
  if (dataset_name.empty()) {
    fail_file(path, "an hdf5 corpus needs a dataset name: the dataset's path inside the file, e.g. /tokens");
  }
  check_regular_file(path);
  h5_silence_errors();
  const htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
  if (is_hdf5 == 0) fail_file(path, "not an HDF5 file");
  if (is_hdf5 < 0) fail_file(path, "cannot read the file to check it is HDF5");
  const H5Id file(h5_check(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT),
                           path.string() + ": cannot open the HDF5 file (on a filesystem without file locking, "
                                           "set HDF5_USE_FILE_LOCKING=FALSE)"));

  const std::string where = path.string() + ": dataset '" + dataset_name + "'";
  const H5Id dataset(H5Dopen2(file.get(), dataset_name.c_str(), H5P_DEFAULT));
  if (!dataset.valid()) {
    const H5Id object(H5Oopen(file.get(), dataset_name.c_str(), H5P_DEFAULT));
    if (object.valid()) throw Error(where + ": not a dataset (a group or a named datatype)");
    fail_file(path, "no dataset '" + dataset_name + "'" + top_level_names(file.get()));
  }

  const H5Id type(h5_check(H5Dget_type(dataset.get()), where + ": cannot read its datatype"));
  const H5T_class_t type_class = H5Tget_class(type.get());
  if (type_class != H5T_INTEGER) {
    throw Error(where + ": holds " + h5_class_name(type_class) + " values; token ids must be integers");
  }
  const H5T_sign_t sign = H5Tget_sign(type.get());
  if (sign == H5T_SGN_ERROR) throw Error(where + ": cannot read the sign of its integer type");

  const H5Id space(h5_check(H5Dget_space(dataset.get()), where + ": cannot read its dataspace"));
  const int rank = h5_check(H5Sget_simple_extent_ndims(space.get()), where + ": cannot read its rank");
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  h5_check(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr), where + ": cannot read its shape");
  const hssize_t points = H5Sget_simple_extent_npoints(space.get());
  if (points < 0) throw Error(where + ": cannot read its size");
  if (points == 0) throw Error(where + ": empty corpus (0 tokens)");

  std::vector<uint32_t> ids(static_cast<size_t>(points));
  // Reading into a 64-bit type of the dataset's sign converts losslessly from any integer width,
  // so range checks see the stored values (a narrower memory type would clamp them silently).
  if (sign == H5T_SGN_NONE) {
    read_h5_ids<uint64_t>(dataset.get(), space.get(), H5T_NATIVE_UINT64, dims, ids.data(), where);
  } else {
    read_h5_ids<int64_t>(dataset.get(), space.get(), H5T_NATIVE_INT64, dims, ids.data(), where);
  }
  return ids;
}

constexpr std::array<std::pair<std::string_view, CorpusFormat>, 8> kFormatNames = {{
    {"uint16", CorpusFormat::uint16},
    {"uint32", CorpusFormat::uint32},
    {"npy", CorpusFormat::npy},
    {"hdf5", CorpusFormat::hdf5},
    {"text-bytes", CorpusFormat::text_bytes},
    {"text", CorpusFormat::text},
    {"jsonl", CorpusFormat::jsonl},
    {"megatron", CorpusFormat::megatron},
}};

}  // namespace

CorpusFormat corpus_format_from_string(std::string_view name) {
  for (const auto& [text, format] : kFormatNames) {
    if (text == name) return format;
  }
  std::string valid;
  for (const auto& [text, format] : kFormatNames) valid += (valid.empty() ? "" : ", ") + std::string(text);
  throw Error("unknown corpus format '" + std::string(name) + "' (valid: " + valid + ")");
}

std::string_view to_string(CorpusFormat format) {
  for (const auto& [text, f] : kFormatNames) {
    if (f == format) return text;
  }
  DUME_ASSERT(false && "CorpusFormat value without a name");
  return {};
}

bool is_text_format(CorpusFormat format) { return format == CorpusFormat::text || format == CorpusFormat::jsonl; }

std::vector<uint32_t> corpus_read(const CorpusSpec& spec) {
  if (spec.format != CorpusFormat::hdf5 && !spec.dataset.empty()) {
    // A dataset given with another format is almost surely a mistaken --format; ignoring it would
    // read the file as the wrong thing.
    fail_file(spec.path, "a dataset ('" + spec.dataset + "') is given but the format is " +
                             std::string(to_string(spec.format)) + "; only hdf5 corpora have datasets");
  }
  switch (spec.format) {
    case CorpusFormat::uint16: return read_raw(spec.path, id_type<uint16_t>(), "uint16");
    case CorpusFormat::uint32: return read_raw(spec.path, id_type<uint32_t>(), "uint32");
    case CorpusFormat::text_bytes: return read_raw(spec.path, id_type<uint8_t>(), "text-bytes");
    case CorpusFormat::npy: return read_npy(spec.path);
    case CorpusFormat::hdf5: return read_hdf5(spec.path, spec.dataset);
    case CorpusFormat::text:
    case CorpusFormat::jsonl:
    case CorpusFormat::megatron:  // documents: load_corpus (corpus_loader.hpp) reads them
      fail_file(spec.path, std::string(to_string(spec.format)) + " corpora hold documents, not a token stream");
  }
  DUME_ASSERT(false && "unhandled CorpusFormat");
  return {};
}

void corpus_check_vocab(std::span<const uint32_t> tokens, size_t vocab, const std::filesystem::path& source) {
  const auto bad = std::find_if(tokens.begin(), tokens.end(), [vocab](uint32_t id) { return id >= vocab; });
  if (bad == tokens.end()) return;
  fail_file(source, "token at position " + std::to_string(bad - tokens.begin()) + " has id " + std::to_string(*bad) +
                        ", outside the vocab (size " + std::to_string(vocab) + ")");
}

CorpusWindows::CorpusWindows(std::vector<uint32_t> tokens, size_t length, size_t max_windows,
                             const std::filesystem::path& source)
    : tokens_(std::move(tokens)), length_(length), count_(0), source_(source) {
  if (length_ == 0) fail_file(source_, "window length must be at least 1 token");
  if (tokens_.size() < length_) {
    fail_file(source_, "corpus has " + std::to_string(tokens_.size()) + " tokens, fewer than one window of " +
                           std::to_string(length_) + " tokens");
  }
  count_ = tokens_.size() / length_;
  if (max_windows != 0) count_ = std::min(count_, max_windows);
}

std::span<const uint32_t> CorpusWindows::window(size_t i) const {
  DUME_ASSERT(i < count_);
  return std::span<const uint32_t>(tokens_).subspan(i * length_, length_);
}

std::span<const uint32_t> CorpusWindows::tokens() const {
  return std::span<const uint32_t>(tokens_).first(count_ * length_);
}

}  // namespace dume
