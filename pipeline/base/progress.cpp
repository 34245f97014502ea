#include "progress.hpp"

#include <unistd.h>

#include <cstdio>

namespace dume {

namespace {
using Clock = std::chrono::steady_clock;
}

std::string format_duration(double seconds) {
  const auto s = static_cast<long>(seconds + 0.5);
  char buf[64];
  if (s < 60) std::snprintf(buf, sizeof buf, "%ld s", s);
  else if (s < 3600) std::snprintf(buf, sizeof buf, "%ld min %02ld s", s / 60, s % 60);
  else std::snprintf(buf, sizeof buf, "%ld h %02ld min", s / 3600, (s % 3600) / 60);
  return buf;
}

Progress::Progress(std::string label, std::int64_t total, std::string unit, bool enabled)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total), enabled_(enabled),
      tty_(isatty(STDERR_FILENO) != 0), start_(Clock::now()), last_report_(start_) {}

double Progress::seconds() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }

void Progress::advance(std::int64_t n) {
  done_ += n;
  const auto now = Clock::now();
  const double since = std::chrono::duration<double>(now - last_report_).count();
  if (since >= (tty_ ? 0.2 : 10.0)) {
    last_report_ = now;
    report(false);
  }
}

void Progress::finish() { report(true); }

void Progress::report(bool final) {
  if (!enabled_) return;
  const double elapsed = seconds();
  const double rate = elapsed > 0 ? static_cast<double>(done_) / elapsed : 0.0;
  const double pct = total_ > 0 ? 100.0 * static_cast<double>(done_) / static_cast<double>(total_) : 100.0;
  std::string eta = final ? "done in " + format_duration(elapsed)
                          : "ETA " + (rate > 0 ? format_duration(static_cast<double>(total_ - done_) / rate) : "?");
  std::fprintf(stderr, "%s%s: %lld/%lld %s (%5.1f%%), %.0f %s/s, %s%s", tty_ ? "\r\033[K" : "", label_.c_str(),
               static_cast<long long>(done_), static_cast<long long>(total_), unit_.c_str(), pct, rate, unit_.c_str(),
               eta.c_str(), (final || !tty_) ? "\n" : "");
  std::fflush(stderr);
}

}  // namespace dume
