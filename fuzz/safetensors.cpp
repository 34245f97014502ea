// libFuzzer harness: the safetensors header parser on arbitrary file bytes. Every accepted tensor's
// bytes are read, so an offset that escapes the buffer is an ASan report.
#include <cstddef>
#include <cstdint>

#include "error.hpp"
#include "safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  try {
    const dume::SafetensorsHeader header = dume::safetensors_parse(bytes);
    unsigned sum = 0;
    for (const dume::TensorInfo& t : header.tensors) {
      const auto tensor = bytes.subspan(header.data_begin + t.begin, t.end - t.begin);
      for (const std::byte b : tensor) sum += static_cast<unsigned>(b);
      if (t.numel() * dume::dtype_size(t.dtype) != tensor.size()) __builtin_trap();  // the parser's promise
    }
    volatile unsigned sink = sum;
    (void)sink;
  } catch (const dume::Error&) {
    // a refused file: the expected outcome for most inputs
  }
  return 0;
}
