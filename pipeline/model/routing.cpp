#include "routing.hpp"

#include <charconv>
#include <cmath>
#include <vector>

#include "error.hpp"

namespace dume {

std::string Routing::to_string() const {
  std::string text = mode == Mode::token ? "token" : mode == Mode::mean ? "mean" : "ema:";
  if (mode == Mode::ema) {
    char rate[32];
    std::snprintf(rate, sizeof rate, "%g", ema_rate);
    text += rate;
  }
  if (from_layer >= 0) text += "+layer:" + std::to_string(from_layer);
  return text;
}

Routing Routing::parse(const std::string& text) {
  const auto bad = [&text](const std::string& why) -> Error {
    return Error("routing '" + text + "': " + why + " (expected token, mean or ema:RATE, optionally +layer:L)");
  };
  Routing r;
  std::string mode = text;
  if (const auto plus = text.find('+'); plus != std::string::npos) {
    mode = text.substr(0, plus);
    const std::string layer = text.substr(plus + 1);
    const bool prefixed = layer.rfind("layer:", 0) == 0;
    const char* last = layer.data() + layer.size();
    if (!prefixed || std::from_chars(layer.data() + 6, last, r.from_layer).ptr != last || r.from_layer < 0)
      throw bad("'" + layer + "' is not layer:L with L >= 0");
  }
  if (mode == "token") {
    r.mode = Mode::token;
  } else if (mode == "mean") {
    r.mode = Mode::mean;
  } else if (mode.rfind("ema:", 0) == 0) {
    r.mode = Mode::ema;
    char* end = nullptr;
    r.ema_rate = std::strtod(mode.c_str() + 4, &end);
    if (*end != '\0' || !(r.ema_rate > 0 && r.ema_rate <= 1)) throw bad("the ema rate must be in (0, 1]");
  } else {
    throw bad("unknown mode '" + mode + "'");
  }
  return r;
}

void smooth_router_logits(const Routing& routing, std::span<float> logits, std::int64_t S, std::int64_t E) {
  if (routing.mode == Routing::Mode::token) return;
  const auto rows = static_cast<std::int64_t>(logits.size()) / E;
  std::vector<double> state(static_cast<std::size_t>(E));
  for (std::int64_t t = 0; t < rows; ++t) {
    const std::int64_t position = t % S;  // a new sequence starts the average afresh
    float* row = logits.data() + t * E;
    for (std::int64_t e = 0; e < E; ++e) {
      double& m = state[static_cast<std::size_t>(e)];
      const double rate = routing.mode == Routing::Mode::mean ? 1.0 / static_cast<double>(position + 1) : routing.ema_rate;
      m = position == 0 ? row[e] : m + rate * (row[e] - m);
      row[e] = static_cast<float>(m);
    }
  }
}

}  // namespace dume
