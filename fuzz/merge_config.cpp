// libFuzzer harness: the YAML merge configuration. Anything but a dume::Error escaping (a
// yaml-cpp exception, a std::out_of_range) is a finding: users must get one line naming the key.
#include <cstddef>
#include <cstdint>
#include <string>

#include "error.hpp"
#include "merge_config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const dume::MergeConfig c = dume::merge_config_parse(text, "/fuzz/merge.yaml");
    // The resolved YAML that dume writes beside the MoE must parse again.
    (void)dume::merge_config_parse(c.resolved_yaml(), "/fuzz/resolved.yaml");
  } catch (const dume::Error&) {
  }
  return 0;
}
