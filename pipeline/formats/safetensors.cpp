#include "safetensors.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "error.hpp"

namespace dume {

using nlohmann::json;

std::size_t TensorInfo::numel() const {
  std::size_t n = 1;
  for (auto d : shape) n *= static_cast<std::size_t>(d);
  return n;
}

std::string shape_string(std::span<const std::int64_t> shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

namespace {

std::uint64_t as_offset(const json& v, const std::string& what) {
  if (!v.is_number_unsigned()) throw Error(what + " is not a non-negative integer");
  return v.get<std::uint64_t>();
}

TensorInfo parse_entry(const std::string& name, const json& entry, std::size_t data_size) {
  const std::string where = "tensor '" + name + "'";
  if (!entry.is_object()) throw Error(where + ": entry is not an object");
  for (const char* key : {"dtype", "shape", "data_offsets"})
    if (!entry.contains(key)) throw Error(where + ": missing '" + key + "'");
  TensorInfo t;
  t.name = name;
  const json& dtype = entry["dtype"];
  if (!dtype.is_string() || !dtype_from_safetensors(dtype.get<std::string>(), t.dtype))
    throw Error(where + ": unknown dtype " + dtype.dump());

  const json& shape = entry["shape"];
  if (!shape.is_array()) throw Error(where + ": shape is not an array");
  // numel * element size must not overflow: bound it by the data area as we go.
  std::uint64_t bytes = dtype_size(t.dtype);
  bool overflow = false;
  for (const json& d : shape) {
    const std::uint64_t dim = as_offset(d, where + ": shape entry");
    if (dim > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) overflow = true;
    t.shape.push_back(static_cast<std::int64_t>(std::min<std::uint64_t>(dim, std::numeric_limits<std::int64_t>::max())));
    if (dim != 0 && bytes > std::numeric_limits<std::uint64_t>::max() / dim) overflow = true;
    bytes = overflow ? 0 : bytes * dim;
  }

  const json& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2) throw Error(where + ": data_offsets is not [begin, end]");
  const std::uint64_t begin = as_offset(offsets[0], where + ": data_offsets"),
                      end = as_offset(offsets[1], where + ": data_offsets");
  if (begin > end || end > data_size)
    throw Error(where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                "] outside the data area (" + std::to_string(data_size) + " bytes)");
  if (overflow || bytes != end - begin)
    throw Error(where + ": " + std::string(to_string(t.dtype)) + " x shape " + shape_string(t.shape) + " = " +
                (overflow ? std::string("overflowing") : std::to_string(bytes)) + " bytes, but data_offsets span " +
                std::to_string(end - begin));
  t.begin = begin;
  t.end = end;
  return t;
}

}  // namespace

SafetensorsHeader safetensors_parse(std::span<const std::byte> bytes) {
  if (bytes.size() < 8) throw Error("file of " + std::to_string(bytes.size()) + " bytes is too short for a header");
  std::uint64_t header_len;
  std::memcpy(&header_len, bytes.data(), 8);
  if (header_len > SafetensorsFile::kMaxHeaderBytes)
    throw Error("header length " + std::to_string(header_len) + " is absurdly large (limit " +
                std::to_string(SafetensorsFile::kMaxHeaderBytes) + " bytes)");
  if (header_len > bytes.size() - 8)
    throw Error("header length " + std::to_string(header_len) + " runs past the end of the file (" +
                std::to_string(bytes.size()) + " bytes)");
  const auto* header_begin = reinterpret_cast<const char*>(bytes.data() + 8);
  SafetensorsHeader result;
  result.data_begin = 8 + header_len;
  const std::size_t data_size = bytes.size() - result.data_begin;

  // The parser callback sees every top-level key, so duplicates (which json objects would
  // silently collapse) are caught.
  std::set<std::string> seen;
  std::string duplicate;
  const json::parser_callback_t on_event = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth == 1 && event == json::parse_event_t::key && !seen.insert(parsed.get<std::string>()).second &&
        duplicate.empty())
      duplicate = parsed.get<std::string>();
    return true;
  };
  json header;
  try {
    header = json::parse(header_begin, header_begin + header_len, on_event);
  } catch (const json::exception& e) {
    throw Error(std::string("invalid JSON header: ") + e.what());
  }
  if (!duplicate.empty()) throw Error("duplicate tensor name '" + duplicate + "'");
  if (!header.is_object()) throw Error("header is not a JSON object");

  auto& tensors = result.tensors;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) throw Error("__metadata__ is not an object");
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) throw Error("__metadata__ value of '" + key + "' is not a string");
        result.metadata[key] = value.get<std::string>();
      }
      continue;
    }
    tensors.push_back(parse_entry(name, entry, data_size));
  }
  std::sort(tensors.begin(), tensors.end(),
            [](const TensorInfo& a, const TensorInfo& b) { return std::tie(a.begin, a.end) < std::tie(b.begin, b.end); });
  // Against the furthest end so far, not just the previous tensor: an empty tensor between two
  // overlapping ones must not hide the overlap.
  const TensorInfo* furthest = nullptr;
  for (const TensorInfo& t : tensors) {
    if (t.begin == t.end) continue;
    if (furthest && t.begin < furthest->end)
      throw Error("tensors '" + furthest->name + "' and '" + t.name + "' overlap");
    if (!furthest || t.end > furthest->end) furthest = &t;
  }
  return result;
}

SafetensorsFile::SafetensorsFile(const std::filesystem::path& path) : file_(path) {
  try {
    SafetensorsHeader header = safetensors_parse(file_.bytes());
    data_area_ = file_.bytes().subspan(header.data_begin);
    tensors_ = std::move(header.tensors);
    metadata_ = std::move(header.metadata);
  } catch (const Error& e) {
    throw Error(path.string() + ": " + e.what());
  }
  for (std::size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  const auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

std::span<const std::byte> SafetensorsFile::data(const TensorInfo& tensor) const {
  return data_area_.subspan(tensor.begin, tensor.end - tensor.begin);
}

std::size_t TensorSource::byte_size() const {
  std::size_t n = dtype_size(dtype);
  for (auto d : shape) n *= static_cast<std::size_t>(d);
  return n;
}

void safetensors_write(const std::filesystem::path& path, std::span<const TensorSource> tensors,
                       const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::size_t offset = 0;
  for (const auto& t : tensors) {
    const std::size_t bytes = t.byte_size();
    header[t.name] = {{"dtype", std::string(to_string(t.dtype))}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the data area starts 8-byte aligned
  const std::uint64_t length = text.size();
  std::ofstream out(path, std::ios::binary);
  if (!out) throw Error(path.string() + ": cannot create: " + std::strerror(errno));
  out.write(reinterpret_cast<const char*>(&length), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const auto& t : tensors) {
    const std::vector<std::byte> bytes = t.bytes();
    if (bytes.size() != t.byte_size()) throw Error(path.string() + ": tensor '" + t.name + "' has the wrong byte count");
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
  out.close();
  if (!out) throw Error(path.string() + ": cannot write (disk full?)");
}

}  // namespace dume
