// libFuzzer harness: dume's HDF5 readers on arbitrary file bytes. HDF5 reads from disk, so each
// input is written to a fresh file (HDF5 would reuse a still-open file of the same name) that
// serves as moe.h5, as its one shard (moe.h5's links resolve into it) and as stats.h5; then every
// dataset of it is read the way dume reads its own (shape, dtype attribute, checksum, finiteness).
// libhdf5 itself is not instrumented: only dume's code is under the sanitizers.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include "error.hpp"
#include "hdf5_util.hpp"
#include "moe_file.hpp"

namespace {

namespace fs = std::filesystem;

const fs::path& scratch() {
  static const fs::path dir = [] {
    const fs::path d = fs::temp_directory_path() / ("dume_fuzz_h5_" + std::to_string(getpid()));
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

template <class F>
void refused_or_ok(F&& f) {
  try {
    f();
  } catch (const dume::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static std::uint64_t run = 0;
  const fs::path dir = scratch() / std::to_string(run++);
  fs::create_directories(dir);
  for (const char* name : {"moe.h5", "moe-00001-of-00001.h5", "stats.h5"})
    std::ofstream(dir / name, std::ios::binary).write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));

  refused_or_ok([&] {
    const dume::MoeInfo info = dume::read_moe_info(dir);
    // The model reader allocates what the (checked) config says: only for small ones here.
    if (info.config.parameter_count() * static_cast<std::int64_t>(info.experts.size()) < (1 << 22))
      (void)dume::read_moe_model(dir);
  });
  refused_or_ok([&] { (void)dume::read_statistics(dir / "stats.h5"); });
  refused_or_ok([&] {
    const dume::H5Id file = dume::h5::open_file(dir / "moe.h5");
    for (const std::string& path : dume::h5::list_datasets(file.get())) {
      refused_or_ok([&] {
        const dume::h5::DatasetInfo info = dume::h5::dataset_info(file.get(), path);
        if (info.numel() > (1 << 22)) return;
        (void)dume::h5::has_checksum(file.get(), path);
        (void)dume::h5::read_raw(file.get(), path);
        if (info.dtype == dume::DType::I64) (void)dume::h5::read_i64(file.get(), path, info.shape);
        else (void)dume::h5::read_f32(file.get(), path, info.shape);
      });
    }
  });
  std::error_code ec;
  fs::remove_all(dir, ec);
  return 0;
}
