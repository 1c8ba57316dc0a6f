/// @file svg_plot.hpp
/// @brief A dependency-free SVG line chart of training curves (e.g. reward and KL over PPO steps), one
///        panel per series so series of different scales stay readable. Written atomically.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "rlhf/data/atomic_write.hpp"
#include "rlhf/error.hpp"

namespace rlhf {

/// One curve: a name and its y values (x is the index, or the shared x of the plot).
struct plot_series {
  std::string name;
  std::vector<double> y;
};

namespace detail {

inline std::string svg_escape(const std::string& s) {
  std::string o;
  for (const char c : s) {
    if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '&') o += "&amp;";
    else o += c;
  }
  return o;
}

inline std::string svg_number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", v);
  return buf;
}

}  // namespace detail

/// Writes an SVG with one panel per series (stacked), sharing the x axis.
/// @param path the file (replaced atomically: temporary file, fsync, rename)
/// @param title the chart title
/// @param x_label the x axis label (x = 0, 1, ... per point)
/// @param series the curves; non-finite points are skipped
/// @throws rlhf::invalid_argument on an I/O error
inline void write_svg_plot(const std::filesystem::path& path, const std::string& title, const std::string& x_label,
                           const std::vector<plot_series>& series) {
  constexpr double W = 640, panel_h = 180, left = 70, right = 20, top = 40, gap = 50;
  const double H = top + static_cast<double>(series.size()) * (panel_h + gap);
  std::string svg;
  svg += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + detail::svg_number(W) + "\" height=\"" +
         detail::svg_number(H) + "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  svg += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  svg += "<text x=\"" + detail::svg_number(W / 2) + "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">" +
         detail::svg_escape(title) + "</text>\n";
  static const char* colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"};
  for (std::size_t s = 0; s < series.size(); ++s) {
    const auto& y = series[s].y;
    const double y0 = top + static_cast<double>(s) * (panel_h + gap);
    double lo = INFINITY, hi = -INFINITY;
    for (const double v : y)
      if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
    if (!std::isfinite(lo)) lo = 0, hi = 1;
    if (hi - lo < 1e-12) hi = lo + 1;
    const double pw = W - left - right;
    const auto px = [&](std::size_t i) {
      return left + (y.size() > 1 ? pw * static_cast<double>(i) / static_cast<double>(y.size() - 1) : pw / 2);
    };
    const auto py = [&](double v) { return y0 + panel_h - panel_h * (v - lo) / (hi - lo); };
    svg += "<rect x=\"" + detail::svg_number(left) + "\" y=\"" + detail::svg_number(y0) + "\" width=\"" +
           detail::svg_number(pw) + "\" height=\"" + detail::svg_number(panel_h) + "\" fill=\"none\" stroke=\"#999\"/>\n";
    for (int k = 0; k <= 4; ++k) {  // y ticks
      const double v = lo + (hi - lo) * k / 4.0;
      svg += "<text x=\"" + detail::svg_number(left - 6) + "\" y=\"" + detail::svg_number(py(v) + 4) +
             "\" text-anchor=\"end\">" + detail::svg_number(v) + "</text>\n";
    }
    svg += "<text x=\"" + detail::svg_number(left) + "\" y=\"" + detail::svg_number(y0 - 6) + "\" font-weight=\"bold\">" +
           detail::svg_escape(series[s].name) + "</text>\n";
    svg += "<text x=\"" + detail::svg_number(left + pw) + "\" y=\"" + detail::svg_number(y0 + panel_h + 16) +
           "\" text-anchor=\"end\">" + detail::svg_escape(x_label) + " (0.." + std::to_string(y.empty() ? 0 : y.size() - 1) +
           ")</text>\n";
    std::string points;
    for (std::size_t i = 0; i < y.size(); ++i) {
      if (!std::isfinite(y[i])) continue;
      points += detail::svg_number(px(i)) + "," + detail::svg_number(py(y[i])) + " ";
    }
    svg += "<polyline fill=\"none\" stroke-width=\"2\" stroke=\"" + std::string(colors[s % 5]) + "\" points=\"" + points +
           "\"/>\n";
  }
  svg += "</svg>\n";
  detail::write_file_atomically("rlhf::write_svg_plot", path, svg);
}

}  // namespace rlhf
