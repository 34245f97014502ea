// Progress of long work on stderr: a live line on a terminal, a line every few seconds in a
// log file (Slurm output). Only one rank should report: construct it disabled elsewhere.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace dume {

class Progress {
 public:
  Progress(std::string label, std::int64_t total, std::string unit, bool enabled = true);
  void advance(std::int64_t n);  // n more units done
  void finish();                 // final line with the overall rate
  double seconds() const;

 private:
  void report(bool final);
  std::string label_, unit_;
  std::int64_t total_, done_ = 0;
  bool enabled_, tty_;
  std::chrono::steady_clock::time_point start_, last_report_;
};

std::string format_duration(double seconds);  // "42 s", "3 min 05 s", "2 h 07 min"

}  // namespace dume
