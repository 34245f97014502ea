// PNG heatmaps of DUME's routing without a plotting library: an RGB canvas, a built-in 5x7
// bitmap font, a viridis-like colour scale, and zlib for the PNG's compressed image data.
#include "plot.hpp"

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <string_view>

#include "error.hpp"

namespace dume {

namespace {

struct Rgb {
  std::uint8_t r, g, b;
};

constexpr Rgb kWhite{255, 255, 255}, kBlack{0, 0, 0}, kInk{30, 30, 30}, kMuted{105, 105, 105},
    kGrid{190, 190, 190}, kMissing{225, 225, 225};

// 5x7 glyphs, one row of hex per glyph: the seven rows top to bottom, bit 4 the leftmost pixel.
// Letters with descenders (kDescenders) start at x-height and are drawn two rows lower, so they
// keep their tails without making every glyph taller.
struct Glyph {
  char c;
  std::uint8_t rows[7];
};
constexpr Glyph kFont[] = {
    {' ', {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}}, {'?', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04}},
    {'.', {0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C}}, {',', {0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08}},
    {':', {0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00}}, {'%', {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03}},
    {'-', {0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00}}, {'_', {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F}},
    {'=', {0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00}}, {'@', {0x0E, 0x11, 0x01, 0x0D, 0x15, 0x15, 0x0E}},
    {'/', {0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00}}, {'(', {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02}},
    {')', {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08}}, {'\'', {0x04, 0x04, 0x08, 0x00, 0x00, 0x00, 0x00}},
    {'+', {0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00}}, {'0', {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}},
    {'1', {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E}}, {'2', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}},
    {'3', {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E}}, {'4', {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}},
    {'5', {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E}}, {'6', {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}},
    {'7', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08}}, {'8', {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}},
    {'9', {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C}}, {'A', {0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11}},
    {'B', {0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E}}, {'C', {0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E}},
    {'D', {0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C}}, {'E', {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F}},
    {'F', {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10}}, {'G', {0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F}},
    {'H', {0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11}}, {'I', {0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E}},
    {'J', {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C}}, {'K', {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11}},
    {'L', {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F}}, {'M', {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11}},
    {'N', {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11}}, {'O', {0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}},
    {'P', {0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10}}, {'Q', {0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D}},
    {'R', {0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11}}, {'S', {0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E}},
    {'T', {0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04}}, {'U', {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}},
    {'V', {0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04}}, {'W', {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A}},
    {'X', {0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11}}, {'Y', {0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04}},
    {'Z', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F}}, {'a', {0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F}},
    {'b', {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E}}, {'c', {0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E}},
    {'d', {0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F}}, {'e', {0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E}},
    {'f', {0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08}}, {'g', {0x0F, 0x11, 0x11, 0x11, 0x0F, 0x01, 0x0E}},
    {'h', {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11}}, {'i', {0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E}},
    {'j', {0x02, 0x00, 0x06, 0x02, 0x02, 0x12, 0x0C}}, {'k', {0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12}},
    {'l', {0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E}}, {'m', {0x00, 0x00, 0x1A, 0x15, 0x15, 0x11, 0x11}},
    {'n', {0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11}}, {'o', {0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E}},
    {'p', {0x1E, 0x11, 0x11, 0x11, 0x1E, 0x10, 0x10}}, {'q', {0x0F, 0x11, 0x11, 0x11, 0x0F, 0x01, 0x01}},
    {'r', {0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10}}, {'s', {0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E}},
    {'t', {0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06}}, {'u', {0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D}},
    {'v', {0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04}}, {'w', {0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0A}},
    {'x', {0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11}}, {'y', {0x11, 0x11, 0x11, 0x11, 0x0F, 0x01, 0x0E}},
    {'z', {0x00, 0x00, 0x1F, 0x02, 0x04, 0x08, 0x1F}},
};
constexpr int kGlyphW = 5, kGlyphH = 7, kAdvance = kGlyphW + 1;
constexpr std::string_view kDescenders = "gpqy";

// Characters outside the table draw as '?' rather than vanishing, so a label never silently shrinks.
const Glyph& glyph(char c) {
  for (const Glyph& g : kFont)
    if (g.c == c) return g;
  return kFont[1];
}

int text_width(std::string_view s, int scale) {
  return s.empty() ? 0 : (static_cast<int>(s.size()) * kAdvance - 1) * scale;
}

// Viridis (matplotlib's default map) sampled at nine points: perceptually uniform and readable
// in grayscale, so equal steps in routing share look like equal steps in colour.
Rgb viridis(double t) {
  static constexpr Rgb stops[] = {{68, 1, 84},    {71, 44, 122},  {59, 81, 139},   {44, 113, 142}, {33, 144, 141},
                                  {39, 173, 129}, {92, 200, 99},  {170, 220, 50},  {253, 231, 37}};
  const double x = std::clamp(t, 0.0, 1.0) * 8.0;
  const int i = std::min(static_cast<int>(x), 7);
  const double f = x - i;
  const auto mix = [f](std::uint8_t a, std::uint8_t b) {
    return static_cast<std::uint8_t>(std::lround(a + (b - a) * f));
  };
  return {mix(stops[i].r, stops[i + 1].r), mix(stops[i].g, stops[i + 1].g), mix(stops[i].b, stops[i + 1].b)};
}

// Black text on light cells, white on dark ones (Rec. 601 luma; viridis turns light near 0.6).
Rgb text_on(Rgb bg) { return 0.299 * bg.r + 0.587 * bg.g + 0.114 * bg.b > 140.0 ? kBlack : kWhite; }

class Canvas {
 public:
  Canvas(int width, int height) : w_(width), h_(height), px_(static_cast<std::size_t>(width) * height * 3, 255) {}

  // Clipped, so layout slips cost a few pixels instead of memory errors.
  void fill(int x, int y, int w, int h, Rgb c) {
    for (int yy = std::max(y, 0); yy < std::min(y + h, h_); ++yy)
      for (int xx = std::max(x, 0); xx < std::min(x + w, w_); ++xx) {
        std::uint8_t* p = &px_[(static_cast<std::size_t>(yy) * w_ + xx) * 3];
        p[0] = c.r, p[1] = c.g, p[2] = c.b;
      }
  }

  void outline(int x, int y, int w, int h, int thick, Rgb c) {
    fill(x, y, w, thick, c), fill(x, y + h - thick, w, thick, c);
    fill(x, y, thick, h, c), fill(x + w - thick, y, thick, h, c);
  }

  // (x, y) is the top-left of the text; each font pixel becomes a scale x scale square.
  void text(int x, int y, std::string_view s, int scale, Rgb c) {
    for (char ch : s) {
      const Glyph& g = glyph(ch);
      const int drop = kDescenders.find(ch) == std::string_view::npos ? 0 : 2;
      for (int row = 0; row < kGlyphH; ++row)
        for (int col = 0; col < kGlyphW; ++col)
          if (g.rows[row] & (0x10 >> col)) fill(x + col * scale, y + (row + drop) * scale, scale, scale, c);
      x += kAdvance * scale;
    }
  }

  void text_centered(int cx, int y, std::string_view s, int scale, Rgb c) {
    text(cx - text_width(s, scale) / 2, y, s, scale, c);
  }

  // PNG: signature, IHDR (8-bit RGB), one IDAT holding every row behind a "none" filter byte, IEND.
  std::string png(const std::filesystem::path& path) const {
    std::string raw;
    raw.reserve(static_cast<std::size_t>(h_) * (1 + 3 * static_cast<std::size_t>(w_)));
    for (int y = 0; y < h_; ++y) {
      raw.push_back('\0');
      const auto* row = reinterpret_cast<const char*>(&px_[static_cast<std::size_t>(y) * w_ * 3]);
      raw.append(row, static_cast<std::size_t>(w_) * 3);
    }
    uLongf packed_size = compressBound(raw.size());
    std::string packed(packed_size, '\0');
    if (compress2(reinterpret_cast<Bytef*>(packed.data()), &packed_size,
                  reinterpret_cast<const Bytef*>(raw.data()), raw.size(), Z_BEST_COMPRESSION) != Z_OK)
      throw Error(path.string() + ": cannot compress the image");
    packed.resize(packed_size);

    std::string ihdr;
    put_u32(ihdr, static_cast<std::uint32_t>(w_));
    put_u32(ihdr, static_cast<std::uint32_t>(h_));
    ihdr += std::string("\x08\x02\x00\x00\x00", 5);  // depth 8, RGB, deflate, no filter set, no interlace
    std::string out("\x89PNG\r\n\x1a\n", 8);
    put_chunk(out, "IHDR", ihdr);
    put_chunk(out, "IDAT", packed);
    put_chunk(out, "IEND", "");
    return out;
  }

 private:
  static void put_u32(std::string& out, std::uint32_t v) {
    for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>((v >> shift) & 0xFF));
  }

  // A chunk is length (big-endian, data only), type, data, and the CRC-32 of type and data.
  static void put_chunk(std::string& out, const char* type, const std::string& data) {
    const std::string body = std::string(type, 4) + data;
    put_u32(out, static_cast<std::uint32_t>(data.size()));
    out += body;
    put_u32(out, static_cast<std::uint32_t>(
                     crc32(0, reinterpret_cast<const Bytef*>(body.data()), static_cast<uInt>(body.size()))));
  }

  int w_, h_;
  std::vector<std::uint8_t> px_;
};

std::string truncated(const std::string& s, std::size_t max_chars) { return s.substr(0, max_chars); }

}  // namespace

void write_routing_heatmap(const std::filesystem::path& path, const std::vector<std::string>& names,
                           const std::vector<std::vector<std::vector<double>>>& routing) {
  // Experts are the domains (expert d was trained on domain d), so the grid is square.
  const std::size_t n = names.size();
  const std::size_t layers = routing.empty() ? 0 : routing[0].size();
  bool square = n > 0 && layers > 0 && routing.size() == n;
  for (const auto& per_layer : routing) {
    square = square && per_layer.size() == layers;
    for (const auto& row : per_layer) square = square && row.size() == n;
  }
  if (!square) throw Error(path.string() + ": routing must be domains x layers x experts, experts = domains");

  const int N = static_cast<int>(n), L = static_cast<int>(layers);
  constexpr int kCell = 44, kMargin = 24, kGap = 28, kBig = 2;
  const std::string title = "DUME routing: share of each domain's tokens sent to each expert (top-1)";
  const std::string subtitle = "rows: domain   columns: expert   outlined: the domain's own";

  std::size_t longest = 0;
  for (const auto& s : names) longest = std::max(longest, s.size());
  // Row labels cut at 12 characters. Column labels stay full size: on one line if every name fits
  // a cell, else alternating between two lines so each may span two cells (cut at 6 characters).
  const std::size_t row_chars = std::min<std::size_t>(longest, 12);
  const int label_w = text_width(std::string(row_chars, 'x'), kBig) + 12;
  const bool stagger = text_width(std::string(longest, 'x'), kBig) > kCell - 4;
  const std::size_t col_chars = stagger ? 6 : longest;

  // Panels side by side, wrapping to further rows past ~1900 px so a 32-layer model stays viewable.
  const int grid = N * kCell, panel_w = grid + kGap;
  const int per_row = std::clamp((1900 - label_w) / panel_w, 1, L);
  const int panel_rows = (L + per_row - 1) / per_row;
  const int line_h = (kGlyphH + 2) * kBig + 4;  // room for descenders
  const int header_h = stagger ? 2 * line_h : line_h;
  const int panel_h = line_h + 8 + header_h + grid + kGap;
  const int panels_top = kMargin + 2 * line_h + 18;
  const int width = std::max({kMargin + label_w + per_row * panel_w - kGap + kMargin,
                              2 * kMargin + text_width(title, kBig), 2 * kMargin + text_width(subtitle, kBig)});
  const int height = panels_top + panel_rows * panel_h - kGap + kMargin;

  Canvas c(width, height);
  c.text(kMargin, kMargin, title, kBig, kInk);
  c.text(kMargin, kMargin + line_h, subtitle, kBig, kMuted);

  for (int l = 0; l < L; ++l) {
    const int x0 = kMargin + label_w + (l % per_row) * panel_w;
    const int top = panels_top + (l / per_row) * panel_h;
    const int y0 = top + line_h + 8 + header_h;  // top of the grid
    c.text_centered(x0 + grid / 2, top, "layer " + std::to_string(l), kBig, kInk);
    // Gray under the whole grid shows through 1-px gaps between cells as gridlines.
    c.fill(x0 - 1, y0 - 1, grid + 1, grid + 1, kGrid);
    for (int e = 0; e < N; ++e)
      c.text_centered(x0 + e * kCell + kCell / 2, y0 - header_h + (stagger ? e % 2 : 0) * line_h,
                      truncated(names[e], col_chars), kBig, kMuted);
    for (int d = 0; d < N; ++d) {
      if (l % per_row == 0)
        c.text(x0 - label_w, y0 + d * kCell + (kCell - kGlyphH * kBig) / 2, truncated(names[d], row_chars), kBig,
               kInk);
      for (int e = 0; e < N; ++e) {
        const double v = routing[d][l][e];
        const int x = x0 + e * kCell, y = y0 + d * kCell;
        const Rgb bg = std::isfinite(v) ? viridis(v) : kMissing;  // missing: no tokens for the domain
        c.fill(x, y, kCell - 1, kCell - 1, bg);
        const std::string pct = std::isfinite(v) ? std::to_string(std::lround(100 * std::clamp(v, 0.0, 1.0))) : "-";
        c.text_centered(x + kCell / 2, y + (kCell - kGlyphH * kBig) / 2, pct, kBig, text_on(bg));
        if (d == e) c.outline(x - 1, y - 1, kCell + 1, kCell + 1, 3, kInk);
      }
    }
  }

  const std::string bytes = c.png(path);
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) throw Error(path.string() + ": cannot write");
}

}  // namespace dume
