// Tests for pipeline/plot: the routing heatmap is a well-formed PNG (signature, chunk CRCs, IHDR,
// an IDAT that inflates to exactly the rows it claims), and unwritable paths raise dume::Error.
#include <gtest/gtest.h>
#include <zlib.h>

#include <cstdint>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "plot.hpp"
#include "test_util.hpp"

namespace {

using namespace dume;
using PlotTest = dume::test::TempDirTest;

std::uint32_t be32(const std::string& s, std::size_t at) {
  return static_cast<std::uint32_t>(static_cast<unsigned char>(s[at])) << 24 |
         static_cast<std::uint32_t>(static_cast<unsigned char>(s[at + 1])) << 16 |
         static_cast<std::uint32_t>(static_cast<unsigned char>(s[at + 2])) << 8 |
         static_cast<std::uint32_t>(static_cast<unsigned char>(s[at + 3]));
}

// 4 domains x 3 layers x 4 experts, mostly on the diagonal, sharper in later layers.
std::vector<std::vector<std::vector<double>>> sample_routing() {
  std::vector<std::vector<std::vector<double>>> r(4, std::vector<std::vector<double>>(3, std::vector<double>(4)));
  for (int d = 0; d < 4; ++d)
    for (int l = 0; l < 3; ++l) {
      const double own = 0.55 + 0.15 * l + 0.02 * d;
      for (int e = 0; e < 4; ++e) r[d][l][e] = e == d ? own : (1 - own) / 3;
    }
  return r;
}

TEST_F(PlotTest, WritesAValidPng) {
  const auto path = file("routing.png");
  write_routing_heatmap(path, {"c", "python", "prose", "roff"}, sample_routing());

  std::ifstream in(path, std::ios::binary);
  const std::string png((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GE(png.size(), 8u + 25u + 12u + 12u);
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));

  std::uint32_t width = 0, height = 0;
  std::string idat;
  std::vector<std::string> types;
  for (std::size_t at = 8; at < png.size();) {
    ASSERT_LE(at + 12, png.size()) << "truncated chunk header";
    const std::uint32_t length = be32(png, at);
    ASSERT_LE(at + 12 + length, png.size()) << "chunk runs past the end";
    const std::string type = png.substr(at + 4, 4), data = png.substr(at + 8, length);
    const auto crc = crc32(0, reinterpret_cast<const Bytef*>(png.data() + at + 4), length + 4);
    EXPECT_EQ(static_cast<std::uint32_t>(crc), be32(png, at + 8 + length)) << type;
    if (type == "IHDR") {
      ASSERT_EQ(length, 13u);
      width = be32(data, 0), height = be32(data, 4);
      EXPECT_EQ(data[8], 8) << "bit depth";
      EXPECT_EQ(data[9], 2) << "colour type RGB";
    }
    if (type == "IDAT") idat += data;
    types.push_back(type);
    at += 12 + length;
  }
  ASSERT_GE(types.size(), 3u);
  EXPECT_EQ(types.front(), "IHDR");
  EXPECT_EQ(types.back(), "IEND");

  // Three panels of four 40+ px columns side by side, four rows of cells below the titles.
  EXPECT_GE(width, 3u * 4 * 40);
  EXPECT_GE(height, 4u * 40);
  EXPECT_LT(width, 4000u);
  EXPECT_LT(height, 4000u);

  const std::size_t expected = static_cast<std::size_t>(height) * (1 + 3 * static_cast<std::size_t>(width));
  std::vector<Bytef> raw(expected + 1);  // one spare byte: a longer stream would not fit exactly
  uLongf raw_size = raw.size();
  ASSERT_EQ(uncompress(raw.data(), &raw_size, reinterpret_cast<const Bytef*>(idat.data()), idat.size()), Z_OK);
  EXPECT_EQ(raw_size, expected);
  for (std::size_t y = 0; y < height; ++y) ASSERT_EQ(raw[y * (1 + 3 * width)], 0) << "filter byte of row " << y;
}

TEST_F(PlotTest, UnwritablePathThrows) {
  EXPECT_THROW(write_routing_heatmap(file("missing") / "routing.png", {"a", "b"},
                                     {{{0.9, 0.1}}, {{0.2, 0.8}}}),
               dume::Error);
}

}  // namespace
