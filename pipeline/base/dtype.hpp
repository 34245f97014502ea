// Element types of checkpoint tensors and conversions between the 16-bit floats and f32.
// Compute is f32; 16-bit weights are widened once at load and rounded (nearest-even) when stored.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dume {

enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

// Names as safetensors writes them ("F32", "BF16", ...); an unknown name returns false.
bool dtype_from_safetensors(std::string_view name, DType& out);
std::string_view to_string(DType dtype);
// torch's name ("float32", "bfloat16", ...), which config.json and dume's HDF5 files use.
std::string_view torch_name(DType dtype);
// A weight dtype (F32, F16, BF16) by torch's name or the short one ("bf16"); nullopt otherwise.
std::optional<DType> weight_dtype_from_name(std::string_view name);
std::size_t dtype_size(DType dtype);
bool dtype_is_float(DType dtype);

inline float bf16_to_f32(std::uint16_t h) {
  std::uint32_t bits = static_cast<std::uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Round to nearest even; NaN stays NaN (quiet), infinities and overflow go to infinity.
inline std::uint16_t f32_to_bf16(float f) {
  std::uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((bits >> 16) | 0x40u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<std::uint16_t>(bits >> 16);
}

float f16_to_f32(std::uint16_t h);
std::uint16_t f32_to_f16(float f);

// Widens `count` elements of `dtype` at `src` (little-endian bytes, any alignment) into `dst`.
// Only float dtypes; returns the index of the first non-finite value, or `count` if all are finite.
std::size_t widen_to_f32(DType dtype, const std::byte* src, std::size_t count, float* dst);

// Rounds f32 values to `dtype` (F32, F16 or BF16) and widens them back: the value a stored
// tensor of that dtype would hold.
void round_through(DType dtype, std::span<float> values);

// Encodes f32 values as `dtype` bytes (F32, F16, BF16; rounding to nearest even).
std::vector<std::byte> encode(DType dtype, std::span<const float> values);

}  // namespace dume
