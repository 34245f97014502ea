// How router logits become routing decisions. The paper routes each token on its own logits
// (`token`). A sequence's domain rarely changes mid-sequence, so `mean` and `ema` route token t
// on the running mean, or the exponential moving average, of the logits of positions <= t of
// its own sequence: still causal, no training. With `from_layer` = l, every layer after l
// reuses layer l's decision (a layer that routes well, typically the first, decides for all).
// None of this fits a plain Mixtral checkpoint: an engine needs a custom router module for it.
#pragma once

#include <cstdint>
#include <span>
#include <string>

namespace dume {

struct Routing {
  enum class Mode { token, mean, ema };
  Mode mode = Mode::token;
  double ema_rate = 0.5;         // ema: m_t = (1 - rate) m_{t-1} + rate logits_t, m_0 = logits_0
  std::int64_t from_layer = -1;  // >= 0: layers after it reuse its decision

  bool per_token() const { return mode == Mode::token && from_layer < 0; }
  // "token", "mean", "ema:0.25", each optionally followed by "+layer:L" (e.g. "mean+layer:0").
  std::string to_string() const;
  static Routing parse(const std::string& text);  // throws dume::Error naming the text
  bool operator==(const Routing&) const = default;
};

// Replaces the router logits (B * S rows of E, sequence-major) by their running mean or moving
// average along each sequence, as `routing` says (nothing for `token`).
void smooth_router_logits(const Routing& routing, std::span<float> logits, std::int64_t S, std::int64_t E);

}  // namespace dume
