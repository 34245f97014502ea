// dume's one error type and the checks that raise it. Only a command's entry point catches:
// it prints the one line and exits non-zero (or aborts the MPI job).
#pragma once

#include <stdexcept>
#include <string>

namespace dume {

// An error a user can act on: what went wrong and where (a file, a tensor, a config key).
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Throws Error("<expr> failed: <detail> (<file>:<line>)"); used by the DUME_CHECK macros.
[[noreturn]] void fail(const char* expr, const std::string& detail, const char* file, int line);

}  // namespace dume

// Checks a library status code `e` against its success value `ok`; `str` turns it into text.
#define DUME_CHECK_GEN(e, ok, str)                                        \
  do {                                                                    \
    auto dume_status_ = (e);                                              \
    if (dume_status_ != (ok)) ::dume::fail(#e, str(dume_status_), __FILE__, __LINE__); \
  } while (0)

// Checks an internal invariant (a bug if it fails, not a user error).
#define DUME_ASSERT(cond)                                                      \
  do {                                                                         \
    if (!(cond)) ::dume::fail(#cond, "internal invariant", __FILE__, __LINE__); \
  } while (0)
