// Heatmaps as PNG files without a plotting library: one panel per layer, domains x experts.
// `dume eval` draws DUME's routing with it, for people who would rather look than read.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace dume {

// routing[d][l][e]: fraction (0..1) of domain d's tokens routed (top-1) to expert e at layer l.
// Rows are domains, columns experts (both labelled with `names`), one panel per layer titled
// "layer l"; each cell shows its value as a percentage and is coloured on a perceptual scale;
// the diagonal (a domain's own expert) is outlined. Throws dume::Error (from "error.hpp") on I/O failure.
void write_routing_heatmap(const std::filesystem::path& path, const std::vector<std::string>& names,
                           const std::vector<std::vector<std::vector<double>>>& routing);

}  // namespace dume
