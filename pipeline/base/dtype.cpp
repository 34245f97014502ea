#include "dtype.hpp"

#include <algorithm>
#include <bit>
#include <cmath>

#include "error.hpp"

static_assert(std::endian::native == std::endian::little, "dume reads little-endian files natively");

namespace dume {

namespace {
struct DTypeInfo {
  DType dtype;
  std::string_view name;   // safetensors'
  std::string_view torch;  // torch's, as config.json and dume's HDF5 files write it
  std::string_view short_name;
  std::size_t size;
  bool is_float;
};
constexpr DTypeInfo kDTypes[] = {
    {DType::F64, "F64", "float64", "f64", 8, true},     {DType::F32, "F32", "float32", "f32", 4, true},
    {DType::F16, "F16", "float16", "f16", 2, true},     {DType::BF16, "BF16", "bfloat16", "bf16", 2, true},
    {DType::I64, "I64", "int64", "i64", 8, false},      {DType::I32, "I32", "int32", "i32", 4, false},
    {DType::I16, "I16", "int16", "i16", 2, false},      {DType::I8, "I8", "int8", "i8", 1, false},
    {DType::U8, "U8", "uint8", "u8", 1, false},         {DType::BOOL, "BOOL", "bool", "bool", 1, false},
};
const DTypeInfo& info(DType dtype) {
  for (const auto& i : kDTypes)
    if (i.dtype == dtype) return i;
  DUME_ASSERT(false);
}
}  // namespace

bool dtype_from_safetensors(std::string_view name, DType& out) {
  for (const auto& i : kDTypes)
    if (i.name == name) {
      out = i.dtype;
      return true;
    }
  return false;
}

std::string_view to_string(DType dtype) { return info(dtype).name; }
std::string_view torch_name(DType dtype) { return info(dtype).torch; }

std::optional<DType> weight_dtype_from_name(std::string_view name) {
  for (const DType d : {DType::F32, DType::F16, DType::BF16})
    if (name == info(d).torch || name == info(d).short_name) return d;
  return std::nullopt;
}

std::size_t dtype_size(DType dtype) { return info(dtype).size; }
bool dtype_is_float(DType dtype) { return info(dtype).is_float; }

float f16_to_f32(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1fu;
  std::uint32_t mantissa = h & 0x3ffu;
  std::uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // inf or nan
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal: normalize
    int shift = 0;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      ++shift;
    }
    mantissa &= 0x3ffu;
    bits = sign | (static_cast<std::uint32_t>(113 - shift) << 23) | (mantissa << 13);
  }
  return std::bit_cast<float>(bits);
}

std::uint16_t f32_to_f16(float f) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(f);
  const auto sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
  const std::uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u);  // nan
  if (abs >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // rounds to inf
  if (abs < 0x38800000u) {  // subnormal or zero in f16: round (abs as float) * 2^24 to an integer
    const float scaled = std::bit_cast<float>(abs) * 16777216.0f;  // exact: power of two
    return static_cast<std::uint16_t>(sign | static_cast<std::uint16_t>(std::nearbyint(scaled)));
  }
  // normal: rebias the exponent and round the mantissa to 10 bits, nearest even
  std::uint32_t rebased = abs - (112u << 23);
  rebased += 0xfffu + ((rebased >> 13) & 1u);
  return static_cast<std::uint16_t>(sign | (rebased >> 13));
}

std::size_t widen_to_f32(DType dtype, const std::byte* src, std::size_t count, float* dst) {
  switch (dtype) {
    case DType::F32:
      std::memcpy(dst, src, count * sizeof(float));
      break;
    case DType::F64:
      for (std::size_t i = 0; i < count; ++i) {
        double v;
        std::memcpy(&v, src + 8 * i, 8);
        dst[i] = static_cast<float>(v);
      }
      break;
    case DType::BF16:
    case DType::F16: {
      // In chunks through an aligned buffer (the source may be unaligned), so the loops vectorize.
      constexpr std::size_t kChunk = 4096;
      std::uint16_t h[kChunk];
      for (std::size_t begin = 0; begin < count; begin += kChunk) {
        const std::size_t n = std::min(kChunk, count - begin);
        std::memcpy(h, src + 2 * begin, 2 * n);
        float* out = dst + begin;
        if (dtype == DType::BF16)
          for (std::size_t i = 0; i < n; ++i) out[i] = std::bit_cast<float>(static_cast<std::uint32_t>(h[i]) << 16);
        else
          for (std::size_t i = 0; i < n; ++i) out[i] = f16_to_f32(h[i]);
      }
      break;
    }
    default:
      throw Error("cannot read a " + std::string(to_string(dtype)) + " tensor as floating point");
  }
  // Non-finite values have an all-ones exponent; an OR-reduction finds whether any exists.
  bool any = false;
  for (std::size_t i = 0; i < count; ++i)
    any |= (std::bit_cast<std::uint32_t>(dst[i]) & 0x7f800000u) == 0x7f800000u;
  if (!any) return count;
  for (std::size_t i = 0; i < count; ++i)
    if (!std::isfinite(dst[i])) return i;
  return count;
}

void round_through(DType dtype, std::span<float> values) {
  switch (dtype) {
    case DType::F32:
      return;
    case DType::BF16:
      for (float& v : values) v = bf16_to_f32(f32_to_bf16(v));
      return;
    case DType::F16:
      for (float& v : values) v = f16_to_f32(f32_to_f16(v));
      return;
    default:
      throw Error("cannot store weights as " + std::string(to_string(dtype)));
  }
}

std::vector<std::byte> encode(DType dtype, std::span<const float> values) {
  std::vector<std::byte> out(values.size() * dtype_size(dtype));
  switch (dtype) {
    case DType::F32:
      std::memcpy(out.data(), values.data(), out.size());
      break;
    case DType::BF16:
    case DType::F16:
      for (std::size_t i = 0; i < values.size(); ++i) {
        const std::uint16_t h = dtype == DType::BF16 ? f32_to_bf16(values[i]) : f32_to_f16(values[i]);
        std::memcpy(out.data() + 2 * i, &h, 2);
      }
      break;
    default:
      throw Error("cannot store weights as " + std::string(to_string(dtype)));
  }
  return out;
}

}  // namespace dume
