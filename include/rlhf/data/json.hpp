/// @file json.hpp
/// @brief A small, strict JSON (RFC 8259) reader and writer with no dependencies.
///
/// Used for the safetensors header, checkpoint metadata and the JSON Lines data files (prompts,
/// rankings). The reader accepts exactly RFC 8259 documents: no comments, no trailing commas, no
/// single quotes, no leading zeros or '+', no NaN/Infinity, no raw control characters in strings, no
/// byte-order mark, only well-formed UTF-8, and (by default) no duplicate object keys. Errors are
/// `rlhf::invalid_argument` naming the position (1-based line and column, columns count bytes), what
/// was expected and what was received:
///
///     rlhf::parse_json: at line 1, column 17: expected ',' or '}', received 'x'
///
/// Numbers are kept twice: as a double and as their literal text, so that integers beyond 2^53 (file
/// offsets, token counts, seeds) survive a round trip exactly (`as_int64()`, `as_uint64()`). Objects
/// keep their members in document order.
#pragma once

#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include "rlhf/error.hpp"

namespace rlhf {

/// The six JSON value kinds.
enum class json_kind : unsigned char { null, boolean, number, string, array, object };

/// Name of a kind, for error messages ("null", "a boolean", "a number", ...).
inline const char* json_kind_name(json_kind k) {
  switch (k) {
    case json_kind::null: return "null";
    case json_kind::boolean: return "a boolean";
    case json_kind::number: return "a number";
    case json_kind::string: return "a string";
    case json_kind::array: return "an array";
    case json_kind::object: return "an object";
  }
  return "an unknown kind";
}

/// A JSON document node: null, boolean, number, string, array or object (members in insertion order).
///
/// Build values with the constructors (`json_value(3)`, `json_value("text")`, `json_value::array()`,
/// `json_value::object()`), `push_back` and `set`; read them with the `is_*` tests and the checked
/// `as_*` accessors, which throw `rlhf::invalid_argument` naming the kind expected and received.
class json_value {
 public:
  /// Elements of an array.
  using array_type = std::vector<json_value>;
  /// Members of an object, in document (or insertion) order.
  using object_type = std::vector<std::pair<std::string, json_value>>;

  /// null.
  json_value() = default;
  /// null.
  json_value(std::nullptr_t) {}
  /// A boolean (only `bool` itself: pointers and integers do not convert here).
  template <class U>
    requires std::same_as<U, bool>
  json_value(U b) : kind_(json_kind::boolean), bool_(b) {}
  /// An integer: the exact decimal text is kept, the double holds the nearest representable value.
  template <class I>
    requires(std::is_integral_v<I> && !std::same_as<I, bool> && !std::same_as<I, char>)
  json_value(I i) : kind_(json_kind::number), number_(static_cast<double>(i)), text_(std::to_string(i)) {}
  /// A floating-point number. NaN and infinities are accepted here but rejected by `serialize_json`
  /// (JSON cannot represent them).
  json_value(double d) : kind_(json_kind::number), number_(d) {}
  /// A floating-point number (widened to double).
  json_value(float f) : json_value(static_cast<double>(f)) {}
  /// A string (UTF-8).
  json_value(std::string s) : kind_(json_kind::string), text_(std::move(s)) {}
  /// A string (UTF-8).
  json_value(std::string_view s) : json_value(std::string(s)) {}
  /// A string (UTF-8).
  json_value(const char* s) : json_value(std::string(s)) {}
  /// An array.
  json_value(array_type a) : kind_(json_kind::array), array_(std::move(a)) {}
  /// An object; keys must be unique (checked by `serialize_json`).
  json_value(object_type o) : kind_(json_kind::object), object_(std::move(o)) {}

  /// An empty array.
  static json_value array() { return json_value(array_type{}); }
  /// An empty object.
  static json_value object() { return json_value(object_type{}); }

  /// A number given by its literal text (used by the parser; `text` must be a valid JSON number).
  static json_value number_from_text(double value, std::string text) {
    json_value v(value);
    v.text_ = std::move(text);
    return v;
  }

  /// The kind of this value.
  json_kind kind() const { return kind_; }
  bool is_null() const { return kind_ == json_kind::null; }
  bool is_bool() const { return kind_ == json_kind::boolean; }
  bool is_number() const { return kind_ == json_kind::number; }
  bool is_string() const { return kind_ == json_kind::string; }
  bool is_array() const { return kind_ == json_kind::array; }
  bool is_object() const { return kind_ == json_kind::object; }

  /// Whether this is a number written without fraction or exponent (e.g. `42`, `-7`, `18446744073709551615`).
  bool is_integer() const {
    return kind_ == json_kind::number && !text_.empty() && text_.find_first_of(".eE") == std::string::npos;
  }

  /// The boolean; throws if this is not a boolean.
  bool as_bool() const {
    expect(json_kind::boolean);
    return bool_;
  }
  /// The number as a double (nearest value for long integers); throws if this is not a number.
  double as_double() const {
    expect(json_kind::number);
    return number_;
  }
  /// The exact integer; throws if this is not an integer literal or lies outside int64.
  std::int64_t as_int64() const { return as_integer<std::int64_t>("an integer in [-2^63, 2^63)"); }
  /// The exact non-negative integer; throws if this is not an integer literal or lies outside uint64.
  std::uint64_t as_uint64() const { return as_integer<std::uint64_t>("an integer in [0, 2^64)"); }
  /// The literal text of a number as parsed or built from an integer (empty for numbers built from a double).
  const std::string& number_text() const {
    expect(json_kind::number);
    return text_;
  }
  /// The string; throws if this is not a string.
  const std::string& as_string() const {
    expect(json_kind::string);
    return text_;
  }
  /// The elements; throws if this is not an array.
  const array_type& as_array() const {
    expect(json_kind::array);
    return array_;
  }
  array_type& as_array() {
    expect(json_kind::array);
    return array_;
  }
  /// The members in order; throws if this is not an object.
  const object_type& as_object() const {
    expect(json_kind::object);
    return object_;
  }
  object_type& as_object() {
    expect(json_kind::object);
    return object_;
  }

  /// Number of elements (array) or members (object); throws for other kinds.
  std::size_t size() const {
    if (kind_ == json_kind::array) return array_.size();
    if (kind_ == json_kind::object) return object_.size();
    throw invalid_argument(std::string("rlhf::json_value: expected an array or an object, received ") +
                           json_kind_name(kind_));
  }

  /// The member named `key`, or nullptr when absent; throws if this is not an object.
  const json_value* find(std::string_view key) const {
    for (const auto& [k, v] : as_object())
      if (k == key) return &v;
    return nullptr;
  }
  /// The member named `key`; throws if this is not an object or the key is absent.
  const json_value& at(std::string_view key) const {
    if (const json_value* v = find(key)) return *v;
    throw invalid_argument("rlhf::json_value::at: expected a member '" + std::string(key) +
                           "', received an object without it");
  }
  /// Element i of an array; throws if this is not an array or i is out of range.
  const json_value& at(std::size_t i) const {
    const auto& a = as_array();
    if (i >= a.size())
      throw invalid_argument("rlhf::json_value::at: expected an index below " + std::to_string(a.size()) +
                             ", received " + std::to_string(i));
    return a[i];
  }

  /// Appends an element to an array (a null value becomes an empty array first).
  json_value& push_back(json_value v) {
    if (kind_ == json_kind::null) *this = array();
    as_array().push_back(std::move(v));
    return *this;
  }
  /// Sets member `key` (replacing its value in place if present, else appending); a null value becomes
  /// an empty object first.
  json_value& set(std::string key, json_value v) {
    if (kind_ == json_kind::null) *this = object();
    for (auto& [k, old] : as_object()) {
      if (k == key) {
        old = std::move(v);
        return *this;
      }
    }
    object_.emplace_back(std::move(key), std::move(v));
    return *this;
  }

  /// Structural equality. Integer literals compare exactly (by value, so `-0` equals `0`); other
  /// numbers compare as doubles; object members compare in order.
  friend bool operator==(const json_value& a, const json_value& b) {
    if (a.kind_ != b.kind_) return false;
    switch (a.kind_) {
      case json_kind::null: return true;
      case json_kind::boolean: return a.bool_ == b.bool_;
      case json_kind::number:
        if (a.is_integer() && b.is_integer()) return canonical_integer(a.text_) == canonical_integer(b.text_);
        return a.number_ == b.number_;
      case json_kind::string: return a.text_ == b.text_;
      case json_kind::array: return a.array_ == b.array_;
      case json_kind::object: return a.object_ == b.object_;
    }
    return false;
  }

 private:
  void expect(json_kind k) const {
    if (kind_ != k)
      throw invalid_argument(std::string("rlhf::json_value: expected ") + json_kind_name(k) + ", received " +
                             json_kind_name(kind_));
  }

  template <class I>
  I as_integer(const char* what) const {
    expect(json_kind::number);
    I out{};
    if (is_integer()) {
      // "-0" is a valid JSON integer and equals 0 (from_chars rejects "-0" for unsigned types).
      const std::string t = canonical_integer(text_);
      const auto r = std::from_chars(t.data(), t.data() + t.size(), out);
      if (r.ec == std::errc() && r.ptr == t.data() + t.size()) return out;
    }
    throw invalid_argument(std::string("rlhf::json_value: expected ") + what + ", received " +
                           (text_.empty() ? detail::to_display_string(number_) : text_));
  }

  // Integer literal text without a redundant sign on zero.
  static std::string canonical_integer(const std::string& t) { return t == "-0" ? std::string("0") : t; }

  json_kind kind_ = json_kind::null;
  bool bool_ = false;
  double number_ = 0.0;
  std::string text_;  // string value, or a number's literal text
  array_type array_;
  object_type object_;
};

/// Options of `parse_json`.
struct json_parse_options {
  /// Deepest nesting of arrays and objects accepted (the parser recurses; this bounds its stack use).
  std::size_t max_depth = 256;
  /// Accept objects that repeat a key (the last value wins). Off: such documents are rejected.
  bool allow_duplicate_keys = false;
};

namespace detail {

class json_parser {
 public:
  json_parser(std::string_view text, const json_parse_options& options) : s_(text), opt_(options) {}

  json_value parse_document() {
    if (s_.size() >= 3 && static_cast<unsigned char>(s_[0]) == 0xEF && static_cast<unsigned char>(s_[1]) == 0xBB &&
        static_cast<unsigned char>(s_[2]) == 0xBF)
      fail("a JSON value", "a UTF-8 byte-order mark");
    skip_ws();
    json_value v = parse_value(0);
    skip_ws();
    if (i_ != s_.size()) fail("end of input after the value", describe_here());
    return v;
  }

 private:
  [[noreturn]] void fail_at(std::size_t pos, std::string_view expected, std::string_view received) const {
    std::size_t line = 1, col = 1;
    for (std::size_t k = 0; k < pos && k < s_.size(); ++k) {
      if (s_[k] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    std::ostringstream os;
    os << "rlhf::parse_json: at line " << line << ", column " << col << ": expected " << expected << ", received "
       << received;
    throw invalid_argument(os.str());
  }
  [[noreturn]] void fail(std::string_view expected, std::string_view received) const {
    fail_at(i_, expected, received);
  }

  // The byte at the cursor, quoted for a message ('x', U+000A, byte 0xC3, end of input).
  std::string describe_here() const {
    if (i_ >= s_.size()) return "end of input";
    const auto c = static_cast<unsigned char>(s_[i_]);
    if (c >= 0x20 && c < 0x7F) return std::string("'") + static_cast<char>(c) + "'";
    static const char* hex = "0123456789ABCDEF";
    if (c < 0x80) return std::string("U+00") + hex[c >> 4] + hex[c & 15];
    return std::string("byte 0x") + hex[c >> 4] + hex[c & 15];
  }

  bool at_end() const { return i_ >= s_.size(); }
  char peek() const { return s_[i_]; }

  void skip_ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }

  void expect_literal(std::string_view word) {
    for (char c : word) {
      if (at_end() || peek() != c) fail(std::string("'") + std::string(word) + "'", describe_here());
      ++i_;
    }
  }

  json_value parse_value(std::size_t depth) {
    if (at_end()) fail("a JSON value", "end of input");
    switch (peek()) {
      case '{': return parse_object(depth + 1);
      case '[': return parse_array(depth + 1);
      case '"': return json_value(parse_string());
      case 't': expect_literal("true"); return json_value(true);
      case 'f': expect_literal("false"); return json_value(false);
      case 'n': expect_literal("null"); return json_value(nullptr);
      default:
        if (peek() == '-' || (peek() >= '0' && peek() <= '9')) return parse_number();
        fail("a JSON value", describe_here());
    }
  }

  void check_depth(std::size_t depth) const {
    if (depth > opt_.max_depth)
      fail("nesting depth at most " + std::to_string(opt_.max_depth), "depth " + std::to_string(depth));
  }

  json_value parse_array(std::size_t depth) {
    check_depth(depth);
    ++i_;  // '['
    json_value::array_type items;
    skip_ws();
    if (!at_end() && peek() == ']') {
      ++i_;
      return json_value(std::move(items));
    }
    for (;;) {
      skip_ws();
      items.push_back(parse_value(depth));
      skip_ws();
      if (at_end()) fail("',' or ']'", "end of input");
      if (peek() == ',') {
        ++i_;
        skip_ws();
        if (!at_end() && peek() == ']') fail("a JSON value", "']' (trailing comma)");
        continue;
      }
      if (peek() == ']') {
        ++i_;
        return json_value(std::move(items));
      }
      fail("',' or ']'", describe_here());
    }
  }

  json_value parse_object(std::size_t depth) {
    check_depth(depth);
    ++i_;  // '{'
    json_value::object_type members;
    std::set<std::string, std::less<>> seen;
    skip_ws();
    if (!at_end() && peek() == '}') {
      ++i_;
      return json_value(std::move(members));
    }
    for (;;) {
      skip_ws();
      if (at_end()) fail("'\"' (a member name)", "end of input");
      if (peek() != '"') fail("'\"' (a member name)", peek() == '}' ? "'}' (trailing comma)" : describe_here());
      const std::size_t key_pos = i_;
      std::string key = parse_string();
      skip_ws();
      if (at_end() || peek() != ':') fail("':'", describe_here());
      ++i_;
      skip_ws();
      json_value v = parse_value(depth);
      if (!seen.insert(key).second) {
        if (!opt_.allow_duplicate_keys) fail_at(key_pos, "a unique member name", "duplicate key '" + key + "'");
        for (auto& [k, old] : members)
          if (k == key) old = std::move(v);
      } else {
        members.emplace_back(std::move(key), std::move(v));
      }
      skip_ws();
      if (at_end()) fail("',' or '}'", "end of input");
      if (peek() == ',') {
        ++i_;
        continue;
      }
      if (peek() == '}') {
        ++i_;
        return json_value(std::move(members));
      }
      fail("',' or '}'", describe_here());
    }
  }

  unsigned parse_hex4() {
    unsigned u = 0;
    for (int k = 0; k < 4; ++k) {
      if (at_end()) fail("4 hexadecimal digits after '\\u'", "end of input");
      const char c = peek();
      unsigned d;
      if (c >= '0' && c <= '9') d = static_cast<unsigned>(c - '0');
      else if (c >= 'a' && c <= 'f') d = static_cast<unsigned>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') d = static_cast<unsigned>(c - 'A' + 10);
      else fail("4 hexadecimal digits after '\\u'", describe_here());
      u = u * 16 + d;
      ++i_;
    }
    return u;
  }

  static void append_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  // Copies one well-formed UTF-8 sequence starting at the cursor (RFC 3629: no overlong forms, no
  // surrogates, nothing above U+10FFFF).
  void copy_utf8(std::string& out) {
    const auto b0 = static_cast<unsigned char>(peek());
    std::size_t len;
    unsigned lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (b0 >= 0xC2 && b0 <= 0xDF) len = 2;
    else if (b0 >= 0xE0 && b0 <= 0xEF) {
      len = 3;
      if (b0 == 0xE0) lo = 0xA0;
      if (b0 == 0xED) hi = 0x9F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      len = 4;
      if (b0 == 0xF0) lo = 0x90;
      if (b0 == 0xF4) hi = 0x8F;
    } else {
      fail("well-formed UTF-8", describe_here());
    }
    for (std::size_t k = 1; k < len; ++k) {
      if (i_ + k >= s_.size()) fail_at(i_ + k, "well-formed UTF-8 (a continuation byte)", "end of input");
      const auto b = static_cast<unsigned char>(s_[i_ + k]);
      const unsigned l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
      if (b < l || b > h) {
        const std::size_t keep = i_;
        i_ += k;
        const std::string got = describe_here();
        i_ = keep;
        fail_at(i_ + k, "well-formed UTF-8 (a continuation byte)", got);
      }
    }
    out.append(s_.substr(i_, len));
    i_ += len;
  }

  std::string parse_string() {
    ++i_;  // opening quote
    std::string out;
    for (;;) {
      if (at_end()) fail("'\"' (end of the string)", "end of input");
      const auto c = static_cast<unsigned char>(peek());
      if (c == '"') {
        ++i_;
        return out;
      }
      if (c < 0x20) fail("a string character (control characters must be escaped)", describe_here());
      if (c >= 0x80) {
        copy_utf8(out);
        continue;
      }
      if (c != '\\') {
        out += static_cast<char>(c);
        ++i_;
        continue;
      }
      ++i_;  // backslash
      if (at_end()) fail("an escape character", "end of input");
      const char e = peek();
      ++i_;
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          const std::size_t esc_pos = i_ - 2;
          unsigned cp = parse_hex4();
          if (cp >= 0xDC00 && cp <= 0xDFFF) fail_at(esc_pos, "a high surrogate before a low one", "a lone low surrogate");
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            // UTF-16 surrogate pair (RFC 8259 section 7): the low half must follow as another \u escape.
            if (i_ + 1 >= s_.size() || s_[i_] != '\\' || s_[i_ + 1] != 'u')
              fail("'\\u' with a low surrogate after a high surrogate", describe_here());
            i_ += 2;
            const unsigned low = parse_hex4();
            if (low < 0xDC00 || low > 0xDFFF)
              fail_at(i_ - 6, "a low surrogate (\\uDC00 to \\uDFFF)", "a code unit outside that range");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          }
          append_utf8(out, cp);
          break;
        }
        default:
          --i_;
          fail("an escape character (one of \"\\/bfnrtu)", describe_here());
      }
    }
  }

  json_value parse_number() {
    const std::size_t start = i_;
    auto digit = [&] { return !at_end() && peek() >= '0' && peek() <= '9'; };
    if (peek() == '-') ++i_;
    if (!digit()) fail("a digit", describe_here());
    if (peek() == '0') {
      ++i_;
      if (digit()) fail("'.', 'e' or the end of the number (no leading zeros)", describe_here());
    } else {
      while (digit()) ++i_;
    }
    if (!at_end() && peek() == '.') {
      ++i_;
      if (!digit()) fail("a digit after '.'", describe_here());
      while (digit()) ++i_;
    }
    if (!at_end() && (peek() == 'e' || peek() == 'E')) {
      ++i_;
      if (!at_end() && (peek() == '+' || peek() == '-')) ++i_;
      if (!digit()) fail("a digit in the exponent", describe_here());
      while (digit()) ++i_;
    }
    const std::string_view text = s_.substr(start, i_ - start);
    double value = 0;
    const auto r = std::from_chars(text.data(), text.data() + text.size(), value);
    if (r.ec == std::errc::result_out_of_range) {
      if (magnitude_exponent(text) < 0) {
        value = text[0] == '-' ? -0.0 : 0.0;  // underflow: the nearest double is (signed) zero
      } else {
        fail_at(start, "a number within the range of a double", std::string(text));
      }
    } else if (r.ec != std::errc() || r.ptr != text.data() + text.size()) {
      fail_at(start, "a number", std::string(text));
    }
    return json_value::number_from_text(value, std::string(text));
  }

  // Decimal exponent of the first significant digit of a number literal (negative: |x| < 1). Only
  // called for literals that overflow or underflow a double, to tell the two apart.
  static long long magnitude_exponent(std::string_view t) {
    std::size_t k = t[0] == '-' ? 1 : 0;
    long long first = 0;
    bool found = false;
    const std::size_t int_start = k;
    while (k < t.size() && t[k] >= '0' && t[k] <= '9') ++k;
    const std::size_t int_digits = k - int_start;
    for (std::size_t d = 0; d < int_digits && !found; ++d) {
      if (t[int_start + d] != '0') {
        first = static_cast<long long>(int_digits - d) - 1;
        found = true;
      }
    }
    if (k < t.size() && t[k] == '.') {
      ++k;
      for (long long p = -1; k < t.size() && t[k] >= '0' && t[k] <= '9'; --p, ++k) {
        if (!found && t[k] != '0') {
          first = p;
          found = true;
        }
      }
    }
    long long e = 0;
    if (k < t.size() && (t[k] == 'e' || t[k] == 'E')) {
      ++k;
      bool neg = false;
      if (t[k] == '+' || t[k] == '-') neg = t[k++] == '-';
      for (; k < t.size() && e < 1000000000LL; ++k) e = e * 10 + (t[k] - '0');  // saturates far beyond any double
      if (neg) e = -e;
    }
    return found ? first + e : -1;
  }

  std::string_view s_;
  std::size_t i_ = 0;
  const json_parse_options& opt_;
};

inline void serialize_string(std::string& out, std::string_view s) {
  static const char* hex = "0123456789abcdef";
  out += '"';
  for (std::size_t k = 0; k < s.size(); ++k) {
    const auto c = static_cast<unsigned char>(s[k]);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out += hex[c >> 4];
          out += hex[c & 15];
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

// Checks that a string is well-formed UTF-8 (the writer never emits invalid JSON text).
inline void check_utf8(std::string_view s) {
  for (std::size_t k = 0; k < s.size();) {
    const auto b0 = static_cast<unsigned char>(s[k]);
    if (b0 < 0x80) {
      ++k;
      continue;
    }
    std::size_t len = 0;
    unsigned lo = 0x80, hi = 0xBF;
    if (b0 >= 0xC2 && b0 <= 0xDF) len = 2;
    else if (b0 >= 0xE0 && b0 <= 0xEF) len = 3, lo = b0 == 0xE0 ? 0xA0 : 0x80, hi = b0 == 0xED ? 0x9F : 0xBF;
    else if (b0 >= 0xF0 && b0 <= 0xF4) len = 4, lo = b0 == 0xF0 ? 0x90 : 0x80, hi = b0 == 0xF4 ? 0x8F : 0xBF;
    bool ok = len != 0 && k + len <= s.size();
    for (std::size_t j = 1; ok && j < len; ++j) {
      const auto b = static_cast<unsigned char>(s[k + j]);
      ok = b >= (j == 1 ? lo : 0x80u) && b <= (j == 1 ? hi : 0xBFu);
    }
    if (!ok)
      throw invalid_argument("rlhf::serialize_json: expected strings of well-formed UTF-8, received an invalid byte "
                             "sequence at byte " + std::to_string(k) + " of a string");
    k += len;
  }
}

inline void serialize_into(std::string& out, const json_value& v, int indent, int level) {
  auto newline = [&](int lvl) {
    if (indent < 0) return;
    out += '\n';
    out.append(static_cast<std::size_t>(indent) * static_cast<std::size_t>(lvl), ' ');
  };
  switch (v.kind()) {
    case json_kind::null: out += "null"; return;
    case json_kind::boolean: out += v.as_bool() ? "true" : "false"; return;
    case json_kind::number: {
      if (!v.number_text().empty()) {
        out += v.number_text();
        return;
      }
      const double d = v.as_double();
      if (!std::isfinite(d))
        throw invalid_argument("rlhf::serialize_json: expected finite numbers, received " + to_display_string(d));
      char buf[32];
      // Shortest text that reads back to the same double, with ".0" added to integral values so that
      // every JSON reader keeps them floating-point (and -0.0 keeps its sign).
      const auto r = std::to_chars(buf, buf + sizeof buf, d);
      out.append(buf, r.ptr);
      if (std::string_view(buf, static_cast<std::size_t>(r.ptr - buf)).find_first_of(".eE") == std::string_view::npos)
        out += ".0";
      return;
    }
    case json_kind::string:
      check_utf8(v.as_string());
      serialize_string(out, v.as_string());
      return;
    case json_kind::array: {
      const auto& a = v.as_array();
      out += '[';
      for (std::size_t k = 0; k < a.size(); ++k) {
        if (k) out += ',';
        newline(level + 1);
        serialize_into(out, a[k], indent, level + 1);
      }
      if (!a.empty()) newline(level);
      out += ']';
      return;
    }
    case json_kind::object: {
      const auto& o = v.as_object();
      std::set<std::string_view> keys;
      out += '{';
      for (std::size_t k = 0; k < o.size(); ++k) {
        if (!keys.insert(o[k].first).second)
          throw invalid_argument("rlhf::serialize_json: expected unique member names, received duplicate key '" +
                                 o[k].first + "'");
        if (k) out += ',';
        newline(level + 1);
        check_utf8(o[k].first);
        serialize_string(out, o[k].first);
        out += indent < 0 ? ":" : ": ";
        serialize_into(out, o[k].second, indent, level + 1);
      }
      if (!o.empty()) newline(level);
      out += '}';
      return;
    }
  }
}

}  // namespace detail

/// Parses one JSON document (RFC 8259, strict; see the file comment).
/// @param text the document, UTF-8; surrounding whitespace is allowed, anything else after the value is not
/// @param options nesting limit and duplicate-key policy
/// @return the document's root value
/// @note Throws `rlhf::invalid_argument` "rlhf::parse_json: at line L, column C: expected X, received Y".
inline json_value parse_json(std::string_view text, const json_parse_options& options = {}) {
  return detail::json_parser(text, options).parse_document();
}

/// Writes a value as JSON text: compact (no whitespace) by default, or pretty-printed with `indent`
/// spaces per level when indent >= 0. Numbers keep their literal text when they have one (parsed or
/// built from an integer), else the shortest text that reads back to the same double (integral doubles
/// get a ".0": `3.0` is written "3.0", `-0.0` "-0.0").
/// @param value the value to write
/// @param indent -1 for compact output, else spaces per nesting level
/// @return the JSON text (UTF-8)
/// @note Throws `rlhf::invalid_argument` for NaN or infinite numbers, strings that are not well-formed
///       UTF-8, and objects with duplicate member names.
inline std::string serialize_json(const json_value& value, int indent = -1) {
  std::string out;
  detail::serialize_into(out, value, indent, 0);
  return out;
}

}  // namespace rlhf
