#include "error.hpp"

namespace dume {

void fail(const char* expr, const std::string& detail, const char* file, int line) {
  throw Error(std::string(expr) + " failed: " + detail + " (" + file + ":" + std::to_string(line) + ")");
}

}  // namespace dume
