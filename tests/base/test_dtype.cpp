// Tests for pipeline/dtype: 16-bit float conversions, exact where they must be, round-to-nearest-even.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "dtype.hpp"

namespace {

using namespace dume;

TEST(DType, Bf16RoundTripsEveryFiniteValue) {
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    const auto bits = static_cast<std::uint16_t>(h);
    const float f = bf16_to_f32(bits);
    if (std::isnan(f)) continue;
    EXPECT_EQ(f32_to_bf16(f), bits) << h;
  }
}

TEST(DType, F16RoundTripsEveryValueIncludingSubnormals) {
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    const auto bits = static_cast<std::uint16_t>(h);
    const float f = f16_to_f32(bits);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(f))));
      continue;
    }
    EXPECT_EQ(f32_to_f16(f), bits) << h;
  }
}

TEST(DType, KnownValues) {
  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0x7bff), 65504.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(bf16_to_f32(0x3f80), 1.0f);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // halfway to 65536 rounds to even: infinity
  EXPECT_EQ(f32_to_f16(1e-9f), 0x0000);
}

TEST(DType, RoundsToNearestEven) {
  // 1 + 2^-8 is halfway between two bf16 values (1 and 1 + 2^-7): ties to the even one, 1.
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to 1 + 2^-6 (even mantissa).
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  // f16: 1 + 2^-11 ties to 1; 1 + 3 * 2^-11 ties to 1 + 2^-9.
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  EXPECT_EQ(f32_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
}

TEST(DType, WidenReportsTheFirstNonFiniteValue) {
  const std::uint16_t bf16[] = {0x3f80, 0x7fc0, 0x3f80};  // 1, NaN, 1
  float out[3];
  EXPECT_EQ(widen_to_f32(DType::BF16, reinterpret_cast<const std::byte*>(bf16), 3, out), 1u);
  const float f32[] = {1.0f, 2.0f, std::numeric_limits<float>::infinity()};
  EXPECT_EQ(widen_to_f32(DType::F32, reinterpret_cast<const std::byte*>(f32), 3, out), 2u);
  EXPECT_EQ(widen_to_f32(DType::F32, reinterpret_cast<const std::byte*>(f32), 2, out), 2u);
}

}  // namespace
