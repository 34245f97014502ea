// Shared test helpers: expecting a dume::Error with given message parts, and a per-test
// temporary directory.
#pragma once

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>

#include "error.hpp"

namespace dume::test {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

// Runs `f`, expects a dume::Error, and expects its message to contain every one of `parts`.
template <typename F>
void expect_error_with(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "expected dume::Error, nothing was thrown";
  } catch (const dume::Error& e) {
    for (const std::string& part : parts) EXPECT_THAT(e.what(), HasSubstr(part));
  }
}

// A fresh directory for a whole test suite (made in SetUpTestSuite, removed in TearDownTestSuite).
inline fs::path make_suite_dir(const std::string& suite) {
  const fs::path dir = fs::temp_directory_path() / ("dume_test_" + suite + "_" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// Each test gets its own directory under the system temp dir, removed afterwards.
class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / ("dume_test_" + std::to_string(getpid()) + "_" +
                                        info->test_suite_name() + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  fs::path file(const std::string& name) const { return dir_ / name; }

  fs::path write(const std::string& name, const std::string& bytes) const {
    const fs::path path = file(name);
    std::ofstream out(path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    EXPECT_TRUE(out.good()) << path;
    return path;
  }

  fs::path dir_;
};

}  // namespace dume::test

#define EXPECT_ERROR_WITH(statement, ...)                                        \
  do {                                                                           \
    SCOPED_TRACE(#statement);                                                    \
    ::dume::test::expect_error_with([&] { (void)(statement); }, {__VA_ARGS__}); \
  } while (0)
