// libFuzzer harness: config.json parsing, then everything derived from an accepted config.
#include <cstddef>
#include <cstdint>
#include <string>

#include "error.hpp"
#include "model_config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const dume::ModelConfig c = dume::model_config_parse(text, "fuzz/config.json");
    volatile std::int64_t sink = c.parameter_count() + c.q_dim() + c.kv_dim();
    if (c.head_dim <= 4096) sink = sink + static_cast<std::int64_t>(c.rope_inv_freq().size());
    (void)sink;
    std::string difference;
    if (!dume::same_architecture(c, c, &difference)) __builtin_trap();
    // What dume writes must read back as the same architecture.
    const dume::ModelConfig again = dume::model_config_parse(dume::model_config_to_json(c), "fuzz/written.json");
    if (!dume::same_architecture(c, again, &difference)) __builtin_trap();
  } catch (const dume::Error&) {
  }
  return 0;
}
