/// @file jsonl.hpp
/// @brief JSON Lines files: reading record by record with file:line:field errors, writing atomically.
///
/// A JSONL file holds one JSON value per line (UTF-8). The reader accepts LF and CRLF line ends,
/// skips blank lines (only spaces, tabs or a CR), accepts a last line without a newline and
/// tolerates a UTF-8 byte-order mark at the very start of the file (some editors write one). Each
/// non-blank line must be one complete, strict JSON document (see json.hpp). Every error is an
/// `rlhf::invalid_argument` naming the calling function, the file, the 1-based line number and,
/// for a bad field, the field:
///
///     rlhf::read_prompts: data/prompts.jsonl:17: field 'user_id': expected a string or integer, received null
///     rlhf::read_prompts: data/prompts.jsonl:3: invalid JSON at column 12: expected ',' or '}', received 'x'
///
/// The writer (`write_jsonl`) replaces the file atomically (temporary file, fsync, rename; see
/// atomic_write.hpp): a reader never sees a half-written file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "rlhf/data/atomic_write.hpp"
#include "rlhf/data/json.hpp"
#include "rlhf/error.hpp"

namespace rlhf {

namespace detail {

/// A short description of a JSON value for error messages: null, true, 3.5, the string "abc"
/// (truncated after 40 bytes), an array of 3 elements, an object.
inline std::string describe_json_value(const json_value& v) {
  switch (v.kind()) {
    case json_kind::null: return "null";
    case json_kind::boolean: return v.as_bool() ? "true" : "false";
    case json_kind::number: {
      const std::string& t = v.number_text();
      return "the number " + (t.empty() ? detail::to_display_string(v.as_double()) : t);
    }
    case json_kind::string: {
      const std::string& s = v.as_string();
      if (s.size() <= 40) return "the string " + serialize_json(json_value(s));
      // Cut at a UTF-8 code point boundary so that the excerpt stays valid UTF-8.
      std::size_t cut = 40;
      while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
      return "the string " + serialize_json(json_value(s.substr(0, cut))) + "...";
    }
    case json_kind::array: return "an array of " + std::to_string(v.size()) + " elements";
    case json_kind::object: return "an object";
  }
  return "an unknown value";
}

}  // namespace detail

/// One record of a JSONL file with its location, and checked accessors for its fields that throw
/// `rlhf::invalid_argument` "FUNCTION: FILE:LINE: field 'NAME': expected X, received Y".
/// @note A record refers to its path and value without owning them: use it only inside the
///       `for_each_jsonl` callback that receives it.
class jsonl_record {
 public:
  /// @param function the public reader, named in messages (e.g. "rlhf::read_prompts")
  /// @param path the file the record comes from
  /// @param line the 1-based line number of the record in that file
  /// @param value the parsed line
  jsonl_record(std::string_view function, const std::filesystem::path& path, std::size_t line, const json_value& value)
      : function_(function), path_(&path), line_(line), value_(&value) {}

  /// The 1-based line number.
  std::size_t line() const { return line_; }
  /// The file.
  const std::filesystem::path& path() const { return *path_; }
  /// The reader's name.
  std::string_view function() const { return function_; }
  /// The parsed line.
  const json_value& value() const { return *value_; }

  /// "FUNCTION: FILE:LINE: " (the prefix every message of this record starts with).
  std::string where() const {
    std::ostringstream os;
    os << function_ << ": " << path_->string() << ":" << line_ << ": ";
    return os.str();
  }

  /// Throws "FUNCTION: FILE:LINE: field 'FIELD': expected EXPECTED, received RECEIVED".
  [[noreturn]] void fail(std::string_view field, std::string_view expected, std::string_view received) const {
    std::ostringstream os;
    os << where() << "field '" << field << "': expected " << expected << ", received " << received;
    throw invalid_argument(os.str());
  }

  /// Throws "FUNCTION: FILE:LINE: expected EXPECTED, received RECEIVED" (an error about the whole line).
  [[noreturn]] void fail_line(std::string_view expected, std::string_view received) const {
    throw invalid_argument(where() + "expected " + std::string(expected) + ", received " + std::string(received));
  }

  /// Checks that the line is a JSON object.
  void require_object() const {
    if (!value_->is_object()) fail_line("a JSON object", detail::describe_json_value(*value_));
  }

  /// The member `name`; throws naming the field when it is absent (or the line is not an object).
  const json_value& field(std::string_view name) const {
    require_object();
    if (const json_value* v = value_->find(name)) return *v;
    fail(name, "a member '" + std::string(name) + "'", "an object without it");
  }

  /// The member `name` as a string.
  std::string string_field(std::string_view name) const {
    const json_value& v = field(name);
    if (!v.is_string()) fail(name, "a string", detail::describe_json_value(v));
    return v.as_string();
  }

  /// The member `name` as an identifier: a non-empty string, or an integer (kept as its decimal text,
  /// so that 17 and "17" name the same thing).
  std::string id_field(std::string_view name) const {
    const json_value& v = field(name);
    if (v.is_string()) {
      if (v.as_string().empty()) fail(name, "a non-empty string or integer", "the empty string");
      return v.as_string();
    }
    if (v.is_integer()) {
      try {
        return std::to_string(v.as_int64());
      } catch (const invalid_argument&) {
        fail(name, "a string or integer in [-2^63, 2^63)", detail::describe_json_value(v));
      }
    }
    fail(name, "a string or integer", detail::describe_json_value(v));
  }

  /// The member `name` as an array of strings; an element error names the field with its index, e.g.
  /// field 'responses[2]'.
  std::vector<std::string> string_array_field(std::string_view name) const {
    const json_value& v = field(name);
    if (!v.is_array()) fail(name, "an array of strings", detail::describe_json_value(v));
    std::vector<std::string> out;
    out.reserve(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) {
      const json_value& e = v.as_array()[i];
      if (!e.is_string())
        fail(std::string(name) + "[" + std::to_string(i) + "]", "a string", detail::describe_json_value(e));
      out.push_back(e.as_string());
    }
    return out;
  }

  /// The member `name` as an array of non-negative integers (written without fraction or exponent).
  std::vector<std::int64_t> non_negative_integer_array_field(std::string_view name) const {
    const json_value& v = field(name);
    if (!v.is_array()) fail(name, "an array of non-negative integers", detail::describe_json_value(v));
    std::vector<std::int64_t> out;
    out.reserve(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) {
      const json_value& e = v.as_array()[i];
      const std::string element = std::string(name) + "[" + std::to_string(i) + "]";
      if (!e.is_integer()) fail(element, "a non-negative integer", detail::describe_json_value(e));
      std::int64_t x = 0;
      try {
        x = e.as_int64();
      } catch (const invalid_argument&) {
        fail(element, "a non-negative integer below 2^63", detail::describe_json_value(e));
      }
      if (x < 0) fail(element, "a non-negative integer", detail::describe_json_value(e));
      out.push_back(x);
    }
    return out;
  }

 private:
  std::string_view function_;
  const std::filesystem::path* path_;
  std::size_t line_;
  const json_value* value_;
};

/// Calls `on_record(const jsonl_record&)` for every non-blank line of a JSONL file, in file order.
/// @param path the file
/// @param function the public reader, named in messages (e.g. "rlhf::read_prompts")
/// @param on_record called once per record; it may throw (use the record's checked accessors)
/// @return the number of records read
/// @note Throws rlhf::invalid_argument "FUNCTION: FILE: cannot open ..." when the file cannot be read,
///       and "FUNCTION: FILE:LINE: invalid JSON at column C: expected X, received Y" for a line that
///       is not one strict JSON document.
template <class OnRecord>
std::size_t for_each_jsonl(const std::filesystem::path& path, std::string_view function, OnRecord&& on_record) {
  std::ifstream in(path, std::ios::binary);
  if (!in) detail::throw_file_error(function, path, "cannot open the file for reading");
  std::string line;
  std::size_t number = 0, records = 0;
  while (std::getline(in, line)) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    std::string_view text = line;
    // A byte-order mark may start the file; strict JSON rejects it, so drop it here.
    if (number == 1 && text.size() >= 3 && static_cast<unsigned char>(text[0]) == 0xEF &&
        static_cast<unsigned char>(text[1]) == 0xBB && static_cast<unsigned char>(text[2]) == 0xBF)
      text.remove_prefix(3);
    if (text.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    json_value value;
    try {
      value = parse_json(text);
    } catch (const invalid_argument& e) {
      // parse_json says "rlhf::parse_json: at line 1, column C: ..."; the line is ours, keep the rest.
      std::string msg = e.what();
      constexpr std::string_view prefix = "rlhf::parse_json: at line 1, ";
      if (msg.compare(0, prefix.size(), prefix) == 0) msg = msg.substr(prefix.size());
      std::ostringstream os;
      os << function << ": " << path.string() << ":" << number << ": invalid JSON at " << msg;
      throw invalid_argument(os.str());
    }
    on_record(jsonl_record(function, path, number, value));
    ++records;
  }
  if (in.bad()) detail::throw_file_error(function, path, "read error after line " + std::to_string(number));
  return records;
}

/// A JSONL value with the line it came from.
struct jsonl_entry {
  /// 1-based line number in the file.
  std::size_t line = 0;
  /// The parsed line.
  json_value value;
};

/// Reads every non-blank line of a JSONL file (any JSON values).
/// @param path the file
/// @param function named in error messages
/// @return the values with their line numbers, in file order
inline std::vector<jsonl_entry> read_jsonl(const std::filesystem::path& path,
                                           std::string_view function = "rlhf::read_jsonl") {
  std::vector<jsonl_entry> out;
  for_each_jsonl(path, function, [&](const jsonl_record& r) { out.push_back({r.line(), r.value()}); });
  return out;
}

/// The JSONL text of `values`: each value compact on its own line, every line ending in '\n'.
/// @note Throws rlhf::invalid_argument naming `function` and the 1-based value index for a value that
///       cannot be written (NaN, invalid UTF-8, duplicate keys).
inline std::string to_jsonl(std::span<const json_value> values, std::string_view function = "rlhf::to_jsonl") {
  std::string out;
  for (std::size_t i = 0; i < values.size(); ++i) {
    try {
      out += serialize_json(values[i]);  // compact: strings escape '\n', so one value is one line
    } catch (const invalid_argument& e) {
      throw invalid_argument(std::string(function) + ": record " + std::to_string(i + 1) + ": " + e.what());
    }
    out += '\n';
  }
  return out;
}

/// Writes values as a JSONL file, replacing it atomically (temporary file + fsync + rename).
/// @param path the file to create or replace; its directory must exist
/// @param values one line each
/// @param function named in error messages
/// @note Every value is serialized before the file system is touched: an unwritable value leaves
///       the old file in place.
inline void write_jsonl(const std::filesystem::path& path, std::span<const json_value> values,
                        std::string_view function = "rlhf::write_jsonl") {
  std::string text;
  try {
    text = to_jsonl(values, function);
  } catch (const invalid_argument& e) {
    // Add the file to the message: "FUNCTION: FILE: record N: ...".
    std::string msg = e.what();
    const std::string prefix = std::string(function) + ": ";
    if (msg.compare(0, prefix.size(), prefix) == 0) msg = msg.substr(prefix.size());
    detail::throw_file_error(function, path, msg);
  }
  detail::write_file_atomically(function, path, text);
}

/// Convenience overload taking a vector (or a braced list).
inline void write_jsonl(const std::filesystem::path& path, const std::vector<json_value>& values,
                        std::string_view function = "rlhf::write_jsonl") {
  write_jsonl(path, std::span<const json_value>(values), function);
}

}  // namespace rlhf
