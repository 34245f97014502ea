// Tests for pipeline/safetensors: a good file reads back; every malformed header is rejected
// with one line naming the file and the problem.
#include <gtest/gtest.h>

#include <cstring>

#include "safetensors.hpp"
#include "test_util.hpp"

namespace {

using namespace dume;
using dume::test::TempDirTest;
using Safetensors = TempDirTest;

// A safetensors file: u64 LE header length, the header text, then `data`.
std::string file_bytes(const std::string& header, const std::string& data, std::uint64_t declared_length = 0) {
  const std::uint64_t n = declared_length ? declared_length : header.size();
  std::string bytes(8, '\0');
  std::memcpy(bytes.data(), &n, 8);
  return bytes + header + data;
}

const std::string kFourFloats(16, '\0');

TEST_F(Safetensors, ReadsTensorsAndMetadata) {
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]},)"
      R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"e":{"dtype":"F32","shape":[0],"data_offsets":[12,12]}})";
  std::string data(12, '\0');
  const float one = 1.0f;
  std::memcpy(data.data() + 4, &one, 4);
  const SafetensorsFile f(write("ok.safetensors", file_bytes(header, data)));
  ASSERT_EQ(f.tensors().size(), 3u);
  EXPECT_EQ(f.tensors()[0].name, "a");  // ordered by offset
  EXPECT_EQ(f.metadata().at("format"), "pt");
  const TensorInfo* a = f.find("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->dtype, DType::F32);
  EXPECT_EQ(a->shape, (std::vector<std::int64_t>{2}));
  float values[2];
  std::memcpy(values, f.data(*a).data(), 8);
  EXPECT_EQ(values[1], 1.0f);
  EXPECT_EQ(f.find("b")->dtype, DType::BF16);
  EXPECT_EQ(f.find("missing"), nullptr);
}

TEST_F(Safetensors, TooShortForAHeader) {
  EXPECT_ERROR_WITH(SafetensorsFile(write("t.safetensors", "abc")), "t.safetensors", "too short");
}

TEST_F(Safetensors, HeaderLengthPastTheEnd) {
  EXPECT_ERROR_WITH(SafetensorsFile(write("t.safetensors", file_bytes("{}", "", 1000))), "t.safetensors",
                    "header length 1000 runs past the end of the file");
}

TEST_F(Safetensors, AbsurdHeaderLength) {
  EXPECT_ERROR_WITH(SafetensorsFile(write("t.safetensors", file_bytes("{}", "", 1ull << 40))), "t.safetensors",
                    "absurdly large");
}

TEST_F(Safetensors, InvalidJson) {
  EXPECT_ERROR_WITH(SafetensorsFile(write("t.safetensors", file_bytes(R"({"a": {"dtype": )", ""))), "t.safetensors",
                    "invalid JSON header");
}

TEST_F(Safetensors, HeaderNotAnObject) {
  EXPECT_ERROR_WITH(SafetensorsFile(write("t.safetensors", file_bytes("[1, 2]", ""))), "not a JSON object");
}

TEST_F(Safetensors, OffsetsOutsideTheDataArea) {
  const std::string header = R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})";
  EXPECT_ERROR_WITH(SafetensorsFile(write("t.safetensors", file_bytes(header, kFourFloats))), "t.safetensors",
                    "tensor 'a'", "outside the data area (16 bytes)");
}

TEST_F(Safetensors, OffsetsReversed) {
  const std::string header = R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})";
  EXPECT_ERROR_WITH(SafetensorsFile(write("t.safetensors", file_bytes(header, kFourFloats))), "tensor 'a'",
                    "outside the data area");
}

TEST_F(Safetensors, NegativeOffset) {
  const std::string header = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})";
  EXPECT_ERROR_WITH(SafetensorsFile(write("t.safetensors", file_bytes(header, kFourFloats))), "tensor 'a'",
                    "not a non-negative integer");
}

TEST_F(Safetensors, OverlappingTensors) {
  const std::string header =
      R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})";
  EXPECT_ERROR_WITH(SafetensorsFile(write("t.safetensors", file_bytes(header, kFourFloats))), "t.safetensors",
                    "tensors 'a' and 'b' overlap");
}

TEST_F(Safetensors, DtypeTimesShapeIsNotTheByteLength) {
  const std::string header = R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}})";
  EXPECT_ERROR_WITH(SafetensorsFile(write("t.safetensors", file_bytes(header, kFourFloats))), "tensor 'a'",
                    "F32 x shape [2, 3] = 24 bytes, but data_offsets span 16");
}

TEST_F(Safetensors, ShapeProductOverflow) {
  const std::string header =
      R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}})";
  EXPECT_ERROR_WITH(SafetensorsFile(write("t.safetensors", file_bytes(header, kFourFloats))), "tensor 'a'",
                    "overflowing");
}

TEST_F(Safetensors, UnknownDtype) {
  const std::string header = R"({"a":{"dtype":"F8_E9M9","shape":[4],"data_offsets":[0,16]}})";
  EXPECT_ERROR_WITH(SafetensorsFile(write("t.safetensors", file_bytes(header, kFourFloats))), "tensor 'a'",
                    "unknown dtype \"F8_E9M9\"");
}

TEST_F(Safetensors, DuplicateNames) {
  const std::string header =
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})";
  EXPECT_ERROR_WITH(SafetensorsFile(write("t.safetensors", file_bytes(header, kFourFloats))), "t.safetensors",
                    "duplicate tensor name 'a'");
}

TEST_F(Safetensors, MissingFieldAndBadMetadata) {
  EXPECT_ERROR_WITH(SafetensorsFile(write("t.safetensors", file_bytes(R"({"a":{"dtype":"F32","shape":[4]}})", kFourFloats))),
                    "tensor 'a': missing 'data_offsets'");
  EXPECT_ERROR_WITH(SafetensorsFile(write("m.safetensors", file_bytes(R"({"__metadata__":{"n":1}})", ""))),
                    "__metadata__ value of 'n' is not a string");
}

TEST_F(Safetensors, MissingFile) {
  EXPECT_ERROR_WITH(SafetensorsFile(file("nope.safetensors")), "nope.safetensors", "cannot open");
}

}  // namespace
