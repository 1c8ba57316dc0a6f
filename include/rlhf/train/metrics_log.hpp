/// @file metrics_log.hpp
/// @brief Per-step training metrics written as CSV or JSONL, one flushed line per step, so a crash or an
///        interruption keeps every finished step and a resumed run appends after them.
#pragma once

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "rlhf/error.hpp"

namespace rlhf {

/// File format of a metrics log.
enum class metrics_format {
  csv,    ///< header line with the column names, then one row per step
  jsonl,  ///< one JSON object per step
};

/// One step's metrics: (name, value) in a fixed column order.
using metrics_row = std::vector<std::pair<std::string, double>>;

/// Writes metrics rows to a file.
class metrics_log {
 public:
  /// Opens `path` (format from the extension: ".jsonl" or ".csv"). `append` keeps an existing file (a
  /// resumed run): a CSV header is then not written again.
  /// @throws rlhf::invalid_argument when the file cannot be opened or the extension is unknown
  explicit metrics_log(const std::filesystem::path& path, bool append = false) : path_(path) {
    const auto ext = path.extension().string();
    if (ext == ".csv") {
      format_ = metrics_format::csv;
    } else if (ext == ".jsonl") {
      format_ = metrics_format::jsonl;
    } else {
      detail::throw_argument_error("rlhf::metrics_log", "path", "a file ending in .csv or .jsonl", "'" + path.string() + "'");
    }
    header_written_ = append && std::filesystem::exists(path) && std::filesystem::file_size(path) > 0;
    out_.open(path, append ? std::ios::app : std::ios::trunc);
    if (!out_) detail::throw_argument_error("rlhf::metrics_log", "path", "a writable file", "'" + path.string() + "'");
  }

  metrics_format format() const { return format_; }

  /// Appends one row (flushed). Every row of a CSV log must have the first row's columns.
  /// @throws rlhf::invalid_argument when a CSV row's columns differ from the header's
  void write(const metrics_row& row) {
    if (format_ == metrics_format::csv) {
      if (!header_written_) {
        columns_.clear();
        for (std::size_t i = 0; i < row.size(); ++i) out_ << (i ? "," : "") << row[i].first;
        out_ << '\n';
        header_written_ = true;
        for (const auto& kv : row) columns_.push_back(kv.first);
      } else if (!columns_.empty()) {
        bool same = columns_.size() == row.size();
        for (std::size_t i = 0; same && i < row.size(); ++i) same = columns_[i] == row[i].first;
        if (!same) {
          detail::throw_argument_error("rlhf::metrics_log::write", "row", "the columns of the first row",
                                       "a row with other columns");
        }
      }
      for (std::size_t i = 0; i < row.size(); ++i) out_ << (i ? "," : "") << number(row[i].second);
      out_ << '\n';
    } else {
      out_ << '{';
      for (std::size_t i = 0; i < row.size(); ++i) {
        out_ << (i ? "," : "") << '"' << row[i].first << "\":" << (std::isfinite(row[i].second) ? number(row[i].second) : "null");
      }
      out_ << "}\n";
    }
    out_.flush();
  }

 private:
  static std::string number(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.9g", v);
    return buf;
  }
  std::filesystem::path path_;
  metrics_format format_ = metrics_format::csv;
  std::ofstream out_;
  bool header_written_ = false;
  std::vector<std::string> columns_;
};

}  // namespace rlhf
