// Tests for pipeline/corpus: every format's good path (exact ids back), every rejected input (the
// message names the file and the problem), vocab checks and windows. Files are written per test.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "corpus.hpp"
#include "error.hpp"
#include "hdf5_util.hpp"
#include "test_util.hpp"

namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using dume::test::TempDirTest;
using dume::CorpusFormat;
using dume::CorpusSpec;

// Little-endian bytes of `values`, independent of the host's byte order.
template <typename T>
std::string le_bytes(const std::vector<T>& values) {
  std::string out;
  for (const T value : values) {
    const auto u = static_cast<std::make_unsigned_t<T>>(value);
    for (size_t b = 0; b < sizeof(T); ++b) out += static_cast<char>((static_cast<uint64_t>(u) >> (8 * b)) & 0xFF);
  }
  return out;
}

// A .npy file: preamble for `major`.0, `dict` padded with spaces to a 64-byte boundary plus '\n'.
std::string npy_bytes(const std::string& dict, const std::string& data, int major = 1) {
  const size_t preamble = major == 1 ? 10 : 12;
  std::string header = dict;
  while ((preamble + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string out = "\x93NUMPY";
  out += static_cast<char>(major);
  out += '\0';
  if (major == 1) {
    out += le_bytes(std::vector<uint16_t>{static_cast<uint16_t>(header.size())});
  } else {
    out += le_bytes(std::vector<uint32_t>{static_cast<uint32_t>(header.size())});
  }
  return out + header + data;
}

std::string npy_dict(const std::string& descr, const std::string& shape, const std::string& fortran = "False") {
  return "{'descr': '" + descr + "', 'fortran_order': " + fortran + ", 'shape': " + shape + ", }";
}

std::vector<uint32_t> read(const fs::path& path, CorpusFormat format, const std::string& dataset = "") {
  CorpusSpec spec;
  spec.path = path;
  spec.format = format;
  spec.dataset = dataset;
  return dume::corpus_read(spec);
}

std::vector<uint32_t> iota_ids(size_t n, uint32_t modulo) {
  std::vector<uint32_t> ids(n);
  for (size_t i = 0; i < n; ++i) ids[i] = static_cast<uint32_t>(i % modulo);
  return ids;
}

// ---- format names -----------------------------------------------------------------------------

TEST(CorpusFormatNames, RoundTrip) {
  for (const char* name : {"uint16", "uint32", "npy", "hdf5", "text-bytes"}) {
    EXPECT_EQ(dume::to_string(dume::corpus_format_from_string(name)), name);
  }
  EXPECT_EQ(dume::corpus_format_from_string("text-bytes"), CorpusFormat::text_bytes);
}

TEST(CorpusFormatNames, UnknownNameListsValidOnes) {
  EXPECT_THROW(dume::corpus_format_from_string("u16"), dume::Error);
  EXPECT_ERROR_WITH(dume::corpus_format_from_string("text_bytes"), "'text_bytes'", "uint16, uint32, npy, hdf5, text-bytes");
}

// ---- raw uint16 / uint32 / text-bytes ---------------------------------------------------------

using CorpusRaw = TempDirTest;

TEST_F(CorpusRaw, Uint16ReadsLittleEndianIds) {
  const auto path = write("c.u16", std::string("\x01\x02\xff\xff\x00\x00\x34\x12", 8));
  EXPECT_EQ(read(path, CorpusFormat::uint16), (std::vector<uint32_t>{0x0201, 0xFFFF, 0, 0x1234}));
}

TEST_F(CorpusRaw, Uint32ReadsLittleEndianIds) {
  const std::vector<uint32_t> ids = {0, 1, 0x01020304, 0xFFFFFFFF, 70000};
  const auto path = write("c.u32", le_bytes(ids));
  EXPECT_EQ(read(path, CorpusFormat::uint32), ids);
  EXPECT_EQ(read(write("x.u32", std::string("\x04\x03\x02\x01", 4)), CorpusFormat::uint32),
            std::vector<uint32_t>{0x01020304});
}

TEST_F(CorpusRaw, TextBytesEveryByteIsAToken) {
  const auto path = write("c.txt", std::string("a\n\0\xff", 4));
  EXPECT_EQ(read(path, CorpusFormat::text_bytes), (std::vector<uint32_t>{'a', '\n', 0, 255}));
}

TEST_F(CorpusRaw, LargeFileCrossesReadChunks) {
  const auto ids = iota_ids(2'500'001, 65536);  // > 2 staging chunks, odd tail
  std::vector<uint16_t> narrow(ids.begin(), ids.end());
  EXPECT_EQ(read(write("big.u16", le_bytes(narrow)), CorpusFormat::uint16), ids);
}

TEST_F(CorpusRaw, Uint16OddSizeIsError) {
  const auto path = write("odd.u16", std::string("\x01\x00\x02", 3));
  EXPECT_THROW(read(path, CorpusFormat::uint16), dume::Error);
  EXPECT_ERROR_WITH(read(path, CorpusFormat::uint16), path.string(), "size 3 bytes", "multiple of 2");
}

TEST_F(CorpusRaw, Uint32SizeNotMultipleOf4IsError) {
  const auto path = write("bad.u32", std::string(6, '\x01'));
  EXPECT_ERROR_WITH(read(path, CorpusFormat::uint32), path.string(), "size 6 bytes", "multiple of 4");
}

TEST_F(CorpusRaw, EmptyFileIsErrorInEveryRawFormat) {
  const auto path = write("empty.bin", "");
  for (CorpusFormat format : {CorpusFormat::uint16, CorpusFormat::uint32, CorpusFormat::text_bytes}) {
    EXPECT_ERROR_WITH(read(path, format), path.string(), "empty corpus (0 tokens)");
  }
}

TEST_F(CorpusRaw, MissingFileIsErrorInEveryFormat) {
  const auto path = file("nope.bin");
  for (CorpusFormat format : {CorpusFormat::uint16, CorpusFormat::uint32, CorpusFormat::text_bytes,
                              CorpusFormat::npy}) {
    EXPECT_ERROR_WITH(read(path, format), path.string() + ": no such file");
  }
  EXPECT_ERROR_WITH(read(path, CorpusFormat::hdf5, "/tokens"), path.string() + ": no such file");
}

TEST_F(CorpusRaw, DirectoryIsError) {
  EXPECT_ERROR_WITH(read(dir_, CorpusFormat::uint16), dir_.string(), "is a directory");
}

TEST_F(CorpusRaw, DatasetWithNonHdf5FormatIsError) {
  const auto path = write("c.u16", std::string("\x01\x00", 2));
  EXPECT_ERROR_WITH(read(path, CorpusFormat::uint16, "/tokens"), path.string(), "'/tokens'", "format is uint16");
}

// ---- npy --------------------------------------------------------------------------------------

using CorpusNpy = TempDirTest;

TEST_F(CorpusNpy, EveryIntegerDtype) {
  const std::vector<uint32_t> want = {0, 1, 7, 100};
  const auto check = [&](const std::string& descr, const std::string& data) {
    SCOPED_TRACE(descr);
    const auto path = write("a.npy", npy_bytes(npy_dict(descr, "(4,)"), data));
    EXPECT_EQ(read(path, CorpusFormat::npy), want);
  };
  check("|u1", le_bytes(std::vector<uint8_t>{0, 1, 7, 100}));
  check("<u2", le_bytes(std::vector<uint16_t>{0, 1, 7, 100}));
  check("<u4", le_bytes(std::vector<uint32_t>{0, 1, 7, 100}));
  check("<u8", le_bytes(std::vector<uint64_t>{0, 1, 7, 100}));
  check("|i1", le_bytes(std::vector<int8_t>{0, 1, 7, 100}));
  check("<i2", le_bytes(std::vector<int16_t>{0, 1, 7, 100}));
  check("<i4", le_bytes(std::vector<int32_t>{0, 1, 7, 100}));
  check("<i8", le_bytes(std::vector<int64_t>{0, 1, 7, 100}));
}

TEST_F(CorpusNpy, ExtremeIdsAtEachWidth) {
  const auto path = write("max.npy", npy_bytes(npy_dict("<u8", "(2,)"),
                                               le_bytes(std::vector<uint64_t>{0xFFFFFFFFull, 0x12345678ull})));
  EXPECT_EQ(read(path, CorpusFormat::npy), (std::vector<uint32_t>{0xFFFFFFFFu, 0x12345678u}));
  const auto path16 = write("max16.npy", npy_bytes(npy_dict("<i2", "(1,)"), le_bytes(std::vector<int16_t>{32767})));
  EXPECT_EQ(read(path16, CorpusFormat::npy), std::vector<uint32_t>{32767});
}

TEST_F(CorpusNpy, Versions2And3) {
  const std::string data = le_bytes(std::vector<uint32_t>{5, 6, 7});
  EXPECT_EQ(read(write("v2.npy", npy_bytes(npy_dict("<u4", "(3,)"), data, 2)), CorpusFormat::npy),
            (std::vector<uint32_t>{5, 6, 7}));
  EXPECT_EQ(read(write("v3.npy", npy_bytes(npy_dict("<u4", "(3,)"), data, 3)), CorpusFormat::npy),
            (std::vector<uint32_t>{5, 6, 7}));
}

TEST_F(CorpusNpy, TwoDimensionalIsFlattenedRowMajor) {
  const auto path = write("2d.npy", npy_bytes(npy_dict("<u2", "(2, 3)"), le_bytes(std::vector<uint16_t>{1, 2, 3, 4, 5, 6})));
  EXPECT_EQ(read(path, CorpusFormat::npy), (std::vector<uint32_t>{1, 2, 3, 4, 5, 6}));
}

TEST_F(CorpusNpy, LargeTwoDimensionalCrossesReadChunks) {
  const auto ids = iota_ids(1500 * 1001, 1u << 31);
  std::vector<int32_t> data(ids.begin(), ids.end());
  const auto path = write("big.npy", npy_bytes(npy_dict("<i4", "(1500, 1001)"), le_bytes(data)));
  EXPECT_EQ(read(path, CorpusFormat::npy), ids);
}

TEST_F(CorpusNpy, HeaderVariationsParse) {
  const std::string data = le_bytes(std::vector<uint16_t>{9, 8});
  for (const std::string& dict : {
           std::string("{'shape': (2,), 'fortran_order': False, 'descr': '<u2'}"),
           std::string("{\"descr\":\"<u2\",\"fortran_order\":False,\"shape\":(2,)}"),
           std::string("{ 'descr' :\t'<u2' ,\n 'shape' : ( 2 , ) , 'fortran_order' : False , }"),
           std::string("{'descr': '<u2', 'fortran_order': False, 'shape': (2L,), }"),
           std::string("{'descr': '<u2', 'fortran_order': False, 'shape': [2], 'extra': None}"),
           std::string("{'descr': '<u2', 'fortran_order': False, 'shape': (1, 2)}"),
       }) {
    SCOPED_TRACE(dict);
    const auto path = write("h.npy", npy_bytes(dict, data));
    EXPECT_EQ(read(path, CorpusFormat::npy), (std::vector<uint32_t>{9, 8}));
  }
}

TEST_F(CorpusNpy, FortranOrderIsError) {
  const auto path = write("f.npy", npy_bytes(npy_dict("<u2", "(2, 1)", "True"), le_bytes(std::vector<uint16_t>{1, 2})));
  EXPECT_ERROR_WITH(read(path, CorpusFormat::npy), path.string(), "fortran_order");
}

TEST_F(CorpusNpy, BigEndianIsError) {
  const auto path = write("be.npy", npy_bytes(npy_dict(">u2", "(1,)"), std::string("\x00\x01", 2)));
  EXPECT_ERROR_WITH(read(path, CorpusFormat::npy), path.string(), "big-endian", "'>u2'");
}

TEST_F(CorpusNpy, FloatIsError) {
  const auto path = write("f4.npy", npy_bytes(npy_dict("<f4", "(1,)"), std::string(4, '\0')));
  EXPECT_ERROR_WITH(read(path, CorpusFormat::npy), path.string(), "'<f4'", "floating-point");
  const auto path8 = write("f8.npy", npy_bytes(npy_dict("<f8", "(1,)"), std::string(8, '\0')));
  EXPECT_ERROR_WITH(read(path8, CorpusFormat::npy), path8.string(), "floating-point");
}

TEST_F(CorpusNpy, UnsupportedDtypeIsError) {
  const auto path = write("b.npy", npy_bytes(npy_dict("|b1", "(1,)"), std::string(1, '\0')));
  EXPECT_ERROR_WITH(read(path, CorpusFormat::npy), path.string(), "unsupported dtype '|b1'");
  const auto structured = write("s.npy", npy_bytes("{'descr': [('a', '<u2')], 'fortran_order': False, 'shape': (1,)}",
                                                   std::string(2, '\0')));
  EXPECT_ERROR_WITH(read(structured, CorpusFormat::npy), structured.string(), "structured");
}

TEST_F(CorpusNpy, NegativeIdIsError) {
  const auto path = write("neg.npy", npy_bytes(npy_dict("<i4", "(3,)"), le_bytes(std::vector<int32_t>{4, 5, -3})));
  EXPECT_ERROR_WITH(read(path, CorpusFormat::npy), path.string(), "position 2", "id -3", "negative");
  const auto path1 = write("neg1.npy", npy_bytes(npy_dict("|i1", "(1,)"), le_bytes(std::vector<int8_t>{-128})));
  EXPECT_ERROR_WITH(read(path1, CorpusFormat::npy), path1.string(), "position 0", "id -128");
}

TEST_F(CorpusNpy, IdAbove32BitsIsError) {
  const auto path = write("u8.npy", npy_bytes(npy_dict("<u8", "(2,)"),
                                              le_bytes(std::vector<uint64_t>{1, 0x100000000ull})));
  EXPECT_ERROR_WITH(read(path, CorpusFormat::npy), path.string(), "position 1", "id 4294967296", "32-bit");
  const auto path_i8 = write("i8.npy", npy_bytes(npy_dict("<i8", "(1,)"),
                                                 le_bytes(std::vector<int64_t>{std::numeric_limits<int64_t>::max()})));
  EXPECT_ERROR_WITH(read(path_i8, CorpusFormat::npy), path_i8.string(), "id 9223372036854775807", "32-bit");
}

TEST_F(CorpusNpy, ShapeProductOverflowIsError) {
  const auto path = write("ovf.npy", npy_bytes(npy_dict("<u2", "(4294967296, 4294967296)"), std::string(2, '\0')));
  EXPECT_ERROR_WITH(read(path, CorpusFormat::npy), path.string(), "overflows");
  const auto bytes = write("ovfb.npy", npy_bytes(npy_dict("<u8", "(4611686018427387904,)"), std::string(8, '\0')));
  EXPECT_ERROR_WITH(read(bytes, CorpusFormat::npy), bytes.string(), "overflows");
  const auto huge = write("huge.npy", npy_bytes(npy_dict("<u2", "(99999999999999999999999,)"), std::string(2, '\0')));
  EXPECT_ERROR_WITH(read(huge, CorpusFormat::npy), huge.string(), "integer too large");
}

TEST_F(CorpusNpy, TruncatedDataIsError) {
  const auto path = write("trunc.npy", npy_bytes(npy_dict("<u4", "(4,)"), le_bytes(std::vector<uint32_t>{1, 2, 3})));
  EXPECT_ERROR_WITH(read(path, CorpusFormat::npy), path.string(), "truncated", "needs 16 bytes", "has 12");
}

TEST_F(CorpusNpy, TrailingDataIsError) {
  const auto path = write("extra.npy", npy_bytes(npy_dict("<u2", "(1,)"), le_bytes(std::vector<uint16_t>{1, 2})));
  EXPECT_ERROR_WITH(read(path, CorpusFormat::npy), path.string(), "2 unexpected bytes");
}

TEST_F(CorpusNpy, HeaderLengthPastEndIsError) {
  std::string bytes = npy_bytes(npy_dict("<u2", "(1,)"), "");
  bytes.resize(40);  // keep the preamble's header length, drop most of the header
  const auto path = write("hdr.npy", bytes);
  EXPECT_ERROR_WITH(read(path, CorpusFormat::npy), path.string(), "header length", "past the end");
}

TEST_F(CorpusNpy, BadMagicOrVersionIsError) {
  const auto magic = write("magic.npy", "PK\x03\x04 this is a zip, not an npy file");
  EXPECT_ERROR_WITH(read(magic, CorpusFormat::npy), magic.string(), "not a .npy file");
  const auto tiny = write("tiny.npy", "\x93NUM");
  EXPECT_ERROR_WITH(read(tiny, CorpusFormat::npy), tiny.string(), "not a .npy file");
  std::string v4 = npy_bytes(npy_dict("<u2", "(1,)"), std::string(2, '\0'), 2);
  v4[6] = 4;
  const auto version = write("v4.npy", v4);
  EXPECT_ERROR_WITH(read(version, CorpusFormat::npy), version.string(), "unsupported .npy version 4.0");
}

TEST_F(CorpusNpy, MalformedHeaderIsError) {
  const std::string data(2, '\0');
  const auto missing = write("m.npy", npy_bytes("{'descr': '<u2', 'fortran_order': False}", data));
  EXPECT_ERROR_WITH(read(missing, CorpusFormat::npy), missing.string(), "no 'shape' key");
  const auto garbled = write("g.npy", npy_bytes("{'descr': '<u2', 'fortran_order': Flase, 'shape': (1,)}", data));
  EXPECT_ERROR_WITH(read(garbled, CorpusFormat::npy), garbled.string(), "bad .npy header", "unexpected value");
  const auto unclosed = write("u.npy", npy_bytes("{'descr': '<u2', 'fortran_order': False, 'shape': (1,)", data));
  EXPECT_ERROR_WITH(read(unclosed, CorpusFormat::npy), unclosed.string(), "bad .npy header");
  const auto duplicate = write("d.npy", npy_bytes("{'descr': '<u2', 'descr': '<u2', 'fortran_order': False, 'shape': (1,)}", data));
  EXPECT_ERROR_WITH(read(duplicate, CorpusFormat::npy), duplicate.string(), "duplicate key 'descr'");
  const auto negative = write("n.npy", npy_bytes(npy_dict("<u2", "(-1,)"), data));
  EXPECT_ERROR_WITH(read(negative, CorpusFormat::npy), negative.string(), "non-negative");
}

TEST_F(CorpusNpy, RankOtherThanOneOrTwoIsError) {
  const auto scalar = write("0d.npy", npy_bytes(npy_dict("<u2", "()"), std::string(2, '\0')));
  EXPECT_ERROR_WITH(read(scalar, CorpusFormat::npy), scalar.string(), "0 dimensions");
  const auto cube = write("3d.npy", npy_bytes(npy_dict("<u2", "(1, 1, 1)"), std::string(2, '\0')));
  EXPECT_ERROR_WITH(read(cube, CorpusFormat::npy), cube.string(), "3 dimensions");
}

TEST_F(CorpusNpy, EmptyArrayIsError) {
  const auto path = write("e.npy", npy_bytes(npy_dict("<u2", "(0,)"), ""));
  EXPECT_ERROR_WITH(read(path, CorpusFormat::npy), path.string(), "empty corpus (0 tokens");
  const auto rows = write("e2.npy", npy_bytes(npy_dict("<u2", "(3, 0)"), ""));
  EXPECT_ERROR_WITH(read(rows, CorpusFormat::npy), rows.string(), "empty corpus (0 tokens");
}

// ---- hdf5 -------------------------------------------------------------------------------------

// Writes one dataset (creating the file or adding to it, and any intermediate groups).
void write_h5(const fs::path& path, const std::string& name, hid_t file_type, hid_t mem_type,
              const std::vector<hsize_t>& dims, const void* data) {
  const dume::H5Id file(fs::exists(path) ? H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT)
                                         : H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
  ASSERT_TRUE(file.valid());
  const dume::H5Id space(dims.empty() ? H5Screate(H5S_SCALAR)
                                      : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr));
  ASSERT_TRUE(space.valid());
  const dume::H5Id lcpl(H5Pcreate(H5P_LINK_CREATE));
  ASSERT_GE(H5Pset_create_intermediate_group(lcpl.get(), 1), 0);
  const dume::H5Id dataset(H5Dcreate2(file.get(), name.c_str(), file_type, space.get(), lcpl.get(), H5P_DEFAULT,
                                      H5P_DEFAULT));
  ASSERT_TRUE(dataset.valid());
  if (data != nullptr) {
    ASSERT_GE(H5Dwrite(dataset.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), 0);
  }
}

using CorpusHdf5 = TempDirTest;

TEST_F(CorpusHdf5, Int32Dataset) {
  const auto path = file("c.h5");
  const std::vector<int32_t> data = {3, 1, 4, 1, 5, 2147483647};
  write_h5(path, "/tokens", H5T_STD_I32LE, H5T_NATIVE_INT32, {data.size()}, data.data());
  EXPECT_EQ(read(path, CorpusFormat::hdf5, "/tokens"), (std::vector<uint32_t>{3, 1, 4, 1, 5, 2147483647}));
}

TEST_F(CorpusHdf5, Uint16DatasetBigEndianOnDisk) {
  // A big-endian file type checks HDF5 converts to native for us.
  const auto path = file("c.h5");
  const std::vector<uint16_t> data = {0, 65535, 258};
  write_h5(path, "/tokens", H5T_STD_U16BE, H5T_NATIVE_UINT16, {data.size()}, data.data());
  EXPECT_EQ(read(path, CorpusFormat::hdf5, "/tokens"), (std::vector<uint32_t>{0, 65535, 258}));
}

TEST_F(CorpusHdf5, TwoDimensionalIsFlattenedRowMajorInAGroup) {
  const auto path = file("c.h5");
  const std::vector<int32_t> data = {1, 2, 3, 4, 5, 6};
  write_h5(path, "/data/train/tokens", H5T_STD_I32LE, H5T_NATIVE_INT32, {2, 3}, data.data());
  EXPECT_EQ(read(path, CorpusFormat::hdf5, "/data/train/tokens"), (std::vector<uint32_t>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(read(path, CorpusFormat::hdf5, "data/train/tokens"), (std::vector<uint32_t>{1, 2, 3, 4, 5, 6}));
}

TEST_F(CorpusHdf5, ThreeDimensionalAndScalarDatasets) {
  const auto path = file("c.h5");
  const std::vector<uint8_t> cube = {1, 2, 3, 4, 5, 6, 7, 8};
  write_h5(path, "/cube", H5T_STD_U8LE, H5T_NATIVE_UINT8, {2, 2, 2}, cube.data());
  const uint64_t one = 4000000000ull;
  write_h5(path, "/one", H5T_STD_U64LE, H5T_NATIVE_UINT64, {}, &one);
  EXPECT_EQ(read(path, CorpusFormat::hdf5, "/cube"), (std::vector<uint32_t>{1, 2, 3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(read(path, CorpusFormat::hdf5, "/one"), std::vector<uint32_t>{4000000000u});
}

TEST_F(CorpusHdf5, LargeDatasetCrossesReadBlocks) {
  const auto path = file("big.h5");
  const auto ids = iota_ids(3001 * 700, 1u << 31);  // 1497 rows per block: two full blocks and a tail
  write_h5(path, "/tokens", H5T_STD_U32LE, H5T_NATIVE_UINT32, {3001, 700}, ids.data());
  EXPECT_EQ(read(path, CorpusFormat::hdf5, "/tokens"), ids);
}

TEST_F(CorpusHdf5, FloatDatasetIsError) {
  const auto path = file("f.h5");
  const std::vector<float> data = {1.0f, 2.0f};
  write_h5(path, "/tokens", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {2}, data.data());
  EXPECT_ERROR_WITH(read(path, CorpusFormat::hdf5, "/tokens"), path.string(), "'/tokens'", "floating-point",
                    "integers");
}

TEST_F(CorpusHdf5, NegativeIdIsError) {
  const auto path = file("n.h5");
  const std::vector<int32_t> data = {1, 2, 3, 4, -7, 6};
  write_h5(path, "/tokens", H5T_STD_I32LE, H5T_NATIVE_INT32, {2, 3}, data.data());
  EXPECT_ERROR_WITH(read(path, CorpusFormat::hdf5, "/tokens"), path.string(), "'/tokens'", "position 4", "id -7",
                    "negative");
}

TEST_F(CorpusHdf5, IdAbove32BitsIsError) {
  const auto path = file("u.h5");
  const std::vector<uint64_t> data = {1, 1ull << 40};
  write_h5(path, "/tokens", H5T_STD_U64LE, H5T_NATIVE_UINT64, {2}, data.data());
  EXPECT_ERROR_WITH(read(path, CorpusFormat::hdf5, "/tokens"), path.string(), "position 1", "32-bit");
}

TEST_F(CorpusHdf5, MissingDatasetIsNamed) {
  const auto path = file("c.h5");
  const std::vector<int32_t> data = {1};
  write_h5(path, "/tokens", H5T_STD_I32LE, H5T_NATIVE_INT32, {1}, data.data());
  EXPECT_ERROR_WITH(read(path, CorpusFormat::hdf5, "/tokenz"), path.string(), "no dataset '/tokenz'",
                    "top-level names: tokens");
  EXPECT_ERROR_WITH(read(path, CorpusFormat::hdf5, "/a/b/c"), path.string(), "no dataset '/a/b/c'");
}

TEST_F(CorpusHdf5, GroupIsNotADataset) {
  const auto path = file("c.h5");
  const std::vector<int32_t> data = {1};
  write_h5(path, "/g/tokens", H5T_STD_I32LE, H5T_NATIVE_INT32, {1}, data.data());
  EXPECT_ERROR_WITH(read(path, CorpusFormat::hdf5, "/g"), path.string(), "'/g'", "not a dataset");
}

TEST_F(CorpusHdf5, EmptyDatasetNameIsError) {
  const auto path = file("c.h5");
  const std::vector<int32_t> data = {1};
  write_h5(path, "/tokens", H5T_STD_I32LE, H5T_NATIVE_INT32, {1}, data.data());
  EXPECT_ERROR_WITH(read(path, CorpusFormat::hdf5), path.string(), "needs a dataset name");
}

TEST_F(CorpusHdf5, NotAnHdf5FileIsError) {
  const auto path = write("fake.h5", "just some text, not HDF5\n");
  EXPECT_ERROR_WITH(read(path, CorpusFormat::hdf5, "/tokens"), path.string(), "not an HDF5 file");
}

TEST_F(CorpusHdf5, EmptyDatasetIsError) {
  const auto path = file("e.h5");
  write_h5(path, "/tokens", H5T_STD_I32LE, H5T_NATIVE_INT32, {0}, nullptr);
  EXPECT_ERROR_WITH(read(path, CorpusFormat::hdf5, "/tokens"), path.string(), "'/tokens'", "empty corpus (0 tokens)");
}

TEST(H5Id, MoveTransfersOwnershipAndChecksThrow) {
  dume::H5Id a(H5Screate(H5S_SCALAR));
  ASSERT_TRUE(a.valid());
  const hid_t raw = a.get();
  dume::H5Id b(std::move(a));
  EXPECT_FALSE(a.valid());  // NOLINT(bugprone-use-after-move): moved-from state is specified
  EXPECT_EQ(b.get(), raw);
  b = dume::H5Id();
  EXPECT_LE(H5Iis_valid(raw), 0);  // closed by the move-assignment
  EXPECT_THROW(dume::h5_check(hid_t{-1}, "x.h5: open failed"), dume::Error);
  EXPECT_THROW(dume::h5_check(herr_t{-1}, "x.h5: write failed"), dume::Error);
  EXPECT_EQ(dume::h5_check(herr_t{0}, "unused"), 0);
}

// ---- vocab ------------------------------------------------------------------------------------

TEST(CorpusVocab, IdsBelowVocabPass) {
  const std::vector<uint32_t> ids = {0, 5, 31999};
  EXPECT_NO_THROW(dume::corpus_check_vocab(ids, 32000, "c.u16"));
  EXPECT_NO_THROW(dume::corpus_check_vocab({}, 0, "c.u16"));
}

TEST(CorpusVocab, FirstOffendingIdIsReported) {
  const std::vector<uint32_t> ids = {0, 5, 32000, 40000};
  EXPECT_THROW(dume::corpus_check_vocab(ids, 32000, "corpus.u16"), dume::Error);
  EXPECT_ERROR_WITH(dume::corpus_check_vocab(ids, 32000, "corpus.u16"), "corpus.u16", "position 2", "id 32000",
                    "size 32000");
}

// ---- windows ----------------------------------------------------------------------------------

TEST(CorpusWindows, CutsNonOverlappingWindowsAndDropsTail) {
  const dume::CorpusWindows windows(iota_ids(10, 100), 3, 0, "c.u16");
  EXPECT_EQ(windows.count(), 3u);
  EXPECT_EQ(windows.length(), 3u);
  EXPECT_EQ(windows.corpus_size(), 10u);
  EXPECT_EQ(windows.tokens().size(), 9u);
  for (size_t i = 0; i < windows.count(); ++i) {
    const auto w = windows.window(i);
    EXPECT_EQ(std::vector<uint32_t>(w.begin(), w.end()),
              (std::vector<uint32_t>{static_cast<uint32_t>(3 * i), static_cast<uint32_t>(3 * i + 1),
                                     static_cast<uint32_t>(3 * i + 2)}));
  }
}

TEST(CorpusWindows, ExactFitKeepsEveryToken) {
  const dume::CorpusWindows windows(iota_ids(8, 100), 4, 0, "c.u16");
  EXPECT_EQ(windows.count(), 2u);
  EXPECT_EQ(windows.window(1)[3], 7u);
}

TEST(CorpusWindows, MaxWindowsCaps) {
  EXPECT_EQ(dume::CorpusWindows(iota_ids(100, 100), 10, 3, "c").count(), 3u);
  EXPECT_EQ(dume::CorpusWindows(iota_ids(100, 100), 10, 50, "c").count(), 10u);
  EXPECT_EQ(dume::CorpusWindows(iota_ids(100, 100), 10, 3, "c").tokens().size(), 30u);
}

TEST(CorpusWindows, TooShortIsError) {
  EXPECT_THROW(dume::CorpusWindows(iota_ids(5, 100), 6, 0, "short.u16"), dume::Error);
  EXPECT_ERROR_WITH(dume::CorpusWindows(iota_ids(5, 100), 6, 0, "short.u16"), "short.u16", "5 tokens",
                    "window of 6 tokens");
  EXPECT_ERROR_WITH(dume::CorpusWindows(iota_ids(5, 100), 0, 0, "short.u16"), "short.u16", "window length");
}

TEST(CorpusWindows, WindowIndexIsBoundsChecked) {
  const dume::CorpusWindows windows(iota_ids(10, 100), 5, 0, "c.u16");
  EXPECT_NO_THROW(windows.window(1));
  EXPECT_THROW(windows.window(2), dume::Error);
}

}  // namespace
