/// @file csv.hpp
/// @brief A small, correct CSV (RFC 4180) reader: quoted fields with commas, doubled quotes and line
/// breaks inside, LF or CRLF record ends; errors name the file and the line.
///
/// Rules: fields are separated by ','; a field that starts with '"' is quoted and runs to the next
/// lone '"' (a doubled `""` inside stands for one quote; commas, CR and LF inside are data); after
/// the closing quote only ',' or the end of the record may follow. A '"' inside an unquoted field is
/// an error, as is a quoted field still open at the end of the file. Records end at LF or CRLF; the
/// last record may lack a line end; blank lines (no characters at all) are skipped. A UTF-8
/// byte-order mark at the start is dropped. Line numbers are 1-based physical lines: a record that
/// spans lines (a line break inside quotes) is reported at the line where it starts.
#pragma once

#include <cstddef>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "rlhf/data/atomic_write.hpp"
#include "rlhf/error.hpp"

namespace rlhf {

/// One CSV record with the line it starts on.
struct csv_row {
  /// 1-based line where the record starts.
  std::size_t line = 0;
  /// The fields, unquoted.
  std::vector<std::string> fields;
};

/// Parses CSV text (see the file comment for the rules).
/// @param text the whole document
/// @param function named in error messages
/// @param source named in error messages (a file name, or "<text>")
/// @return the records in order
/// @note Throws rlhf::invalid_argument "FUNCTION: SOURCE:LINE: expected X, received Y".
inline std::vector<csv_row> parse_csv(std::string_view text, std::string_view function = "rlhf::parse_csv",
                                      std::string_view source = "<text>") {
  const auto fail = [&](std::size_t line, std::string_view expected, std::string_view received) {
    std::ostringstream os;
    os << function << ": " << source << ":" << line << ": expected " << expected << ", received " << received;
    throw invalid_argument(os.str());
  };
  if (text.size() >= 3 && static_cast<unsigned char>(text[0]) == 0xEF && static_cast<unsigned char>(text[1]) == 0xBB &&
      static_cast<unsigned char>(text[2]) == 0xBF)
    text.remove_prefix(3);
  std::vector<csv_row> rows;
  std::size_t i = 0, line = 1;
  const std::size_t n = text.size();
  while (i < n) {
    // Blank line: skip.
    if (text[i] == '\n') {
      ++i;
      ++line;
      continue;
    }
    if (text[i] == '\r' && i + 1 < n && text[i + 1] == '\n') {
      i += 2;
      ++line;
      continue;
    }
    csv_row row;
    row.line = line;
    for (;;) {  // one field per iteration
      std::string field;
      if (i < n && text[i] == '"') {
        const std::size_t open_line = line;
        ++i;
        for (;;) {
          if (i >= n)
            fail(open_line, "a closing '\"' for the quoted field of field " + std::to_string(row.fields.size() + 1),
                 "end of file");
          const char c = text[i];
          if (c == '"') {
            if (i + 1 < n && text[i + 1] == '"') {
              field += '"';
              i += 2;
              continue;
            }
            ++i;
            break;
          }
          if (c == '\n') ++line;
          field += c;
          ++i;
        }
        if (i < n && text[i] != ',' && text[i] != '\n' && !(text[i] == '\r' && i + 1 < n && text[i + 1] == '\n'))
          fail(line, "',' or a line end after a closing '\"' (field " + std::to_string(row.fields.size() + 1) + ")",
               std::string("'") + text[i] + "'");
      } else {
        while (i < n && text[i] != ',' && text[i] != '\n' && !(text[i] == '\r' && i + 1 < n && text[i + 1] == '\n')) {
          if (text[i] == '"')
            fail(line, "no '\"' inside an unquoted field (quote the field and double the quote)",
                 "'\"' in field " + std::to_string(row.fields.size() + 1));
          field += text[i];
          ++i;
        }
      }
      row.fields.push_back(std::move(field));
      if (i < n && text[i] == ',') {
        ++i;
        continue;
      }
      // End of record: LF, CRLF or end of file.
      if (i < n && text[i] == '\r') ++i;
      if (i < n && text[i] == '\n') {
        ++i;
        ++line;
      }
      break;
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

/// Reads a CSV file (see parse_csv).
/// @param path the file
/// @param function named in error messages
/// @return the records in order
inline std::vector<csv_row> read_csv(const std::filesystem::path& path, std::string_view function = "rlhf::read_csv") {
  std::ifstream in(path, std::ios::binary);
  if (!in) detail::throw_file_error(function, path, "cannot open the file for reading");
  const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  if (in.bad()) detail::throw_file_error(function, path, "read error");
  return parse_csv(text, function, path.string());
}

}  // namespace rlhf
