/// @file safetensors.hpp
/// @brief Reading and atomically writing tensors in the safetensors format.
///
/// The format (the one PyTorch and Hugging Face read):
///
///     [8 bytes]  N, the header length, unsigned 64-bit little-endian
///     [N bytes]  a JSON object (UTF-8), optionally padded at the end with spaces:
///                {"__metadata__": {"key": "value", ...},
///                 "<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}
///     [rest]     the byte buffer; tensor <name> occupies bytes [begin, end) of it, little-endian,
///                row-major (C order)
///
/// Writing (`write_safetensors`) is atomic: the bytes go to a temporary file in the target's
/// directory (`<path>.tmp.<pid>.<counter>`, through rlhf::detail::write_file_atomically), which is flushed, `fsync`ed and then renamed over the
/// target, and the directory is `fsync`ed so the rename itself is durable. A crash or an error at any
/// point leaves either the old file or the complete new one, never a half-written one; on an error the
/// temporary file is removed and the target is untouched. The header is padded with spaces to a
/// multiple of 8 bytes, and tensors are laid out by element size (largest first), then by name, so
/// every tensor starts at an offset aligned to its element size (useful to memory-map the file) and the
/// output does not depend on the order the tensors were given in.
///
/// Reading (`read_safetensors`) validates everything before trusting it and never reads past the end
/// of the file: the file size against the header length (at most 100 MB, the reference
/// implementation's limit), the header JSON (strict, see json.hpp; duplicate names are rejected), every
/// entry's fields, dtype, shape and offsets, the size implied by dtype and shape against the offsets,
/// and that the tensors cover the byte buffer exactly, without gaps or overlaps. Every error is an
/// `rlhf::invalid_argument` naming the file, the tensor (if any) and the mismatch, for example
///
///     rlhf::read_safetensors: model.safetensors: tensor 'wq': expected data_offsets spanning 256 bytes
///     (dtype F32, shape [8, 8]), received [0, 128]
///
/// @note POSIX only (Linux, macOS): the writer uses open/write/fsync/rename. Little-endian hosts only,
///       like the format itself (checked at compile time).
#pragma once

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>


#include "rlhf/data/atomic_write.hpp"
#include "rlhf/data/json.hpp"
#include "rlhf/error.hpp"

namespace rlhf {

static_assert(std::endian::native == std::endian::little,
              "rlhf safetensors support needs a little-endian host (the format stores little-endian data)");

/// Element types of the safetensors format (the byte-sized and wider ones).
enum class safetensors_dtype : unsigned char {
  boolean,  ///< "BOOL", 1 byte
  u8,       ///< "U8"
  i8,       ///< "I8"
  f8_e5m2,  ///< "F8_E5M2", 1 byte
  f8_e4m3,  ///< "F8_E4M3", 1 byte
  i16,      ///< "I16"
  u16,      ///< "U16"
  f16,      ///< "F16" (IEEE half)
  bf16,     ///< "BF16" (bfloat16)
  i32,      ///< "I32"
  u32,      ///< "U32"
  f32,      ///< "F32"
  f64,      ///< "F64"
  i64,      ///< "I64"
  u64,      ///< "U64"
};

namespace detail {
struct safetensors_dtype_info {
  safetensors_dtype dtype;
  const char* name;
  std::size_t size;
};
inline constexpr safetensors_dtype_info safetensors_dtypes[] = {
    {safetensors_dtype::boolean, "BOOL", 1}, {safetensors_dtype::u8, "U8", 1},   {safetensors_dtype::i8, "I8", 1},
    {safetensors_dtype::f8_e5m2, "F8_E5M2", 1}, {safetensors_dtype::f8_e4m3, "F8_E4M3", 1},
    {safetensors_dtype::i16, "I16", 2},      {safetensors_dtype::u16, "U16", 2}, {safetensors_dtype::f16, "F16", 2},
    {safetensors_dtype::bf16, "BF16", 2},    {safetensors_dtype::i32, "I32", 4}, {safetensors_dtype::u32, "U32", 4},
    {safetensors_dtype::f32, "F32", 4},      {safetensors_dtype::f64, "F64", 8}, {safetensors_dtype::i64, "I64", 8},
    {safetensors_dtype::u64, "U64", 8},
};
}  // namespace detail

/// The dtype's name in the header ("F32", "BF16", ...).
inline const char* dtype_name(safetensors_dtype d) {
  for (const auto& info : detail::safetensors_dtypes)
    if (info.dtype == d) return info.name;
  return "?";
}

/// Bytes per element of the dtype.
inline std::size_t dtype_size(safetensors_dtype d) {
  for (const auto& info : detail::safetensors_dtypes)
    if (info.dtype == d) return info.size;
  return 0;
}

/// The dtype named `name` in a header, or nothing if the name is not one of the supported dtypes.
inline std::optional<safetensors_dtype> parse_dtype(std::string_view name) {
  for (const auto& info : detail::safetensors_dtypes)
    if (name == info.name) return info.dtype;
  return std::nullopt;
}

/// The safetensors dtype of a C++ element type (float -> F32, double -> F64, std::int32_t -> I32, ...).
template <class T>
inline constexpr safetensors_dtype dtype_of = [] {
  using U = std::remove_cv_t<T>;
  static_assert(std::is_arithmetic_v<U>, "rlhf::dtype_of: T must be an arithmetic type");
  if constexpr (std::is_same_v<U, bool>) return safetensors_dtype::boolean;
  else if constexpr (std::is_floating_point_v<U>) {
    static_assert(sizeof(U) == 4 || sizeof(U) == 8, "rlhf::dtype_of: only float and double map to safetensors dtypes");
    return sizeof(U) == 4 ? safetensors_dtype::f32 : safetensors_dtype::f64;
  } else if constexpr (std::is_signed_v<U>) {
    return sizeof(U) == 1 ? safetensors_dtype::i8
           : sizeof(U) == 2 ? safetensors_dtype::i16
           : sizeof(U) == 4 ? safetensors_dtype::i32
                            : safetensors_dtype::i64;
  } else {
    return sizeof(U) == 1 ? safetensors_dtype::u8
           : sizeof(U) == 2 ? safetensors_dtype::u16
           : sizeof(U) == 4 ? safetensors_dtype::u32
                            : safetensors_dtype::u64;
  }
}();

/// Shape as text, "[2, 3]" ("[]" for a scalar).
inline std::string shape_string(const std::vector<std::size_t>& shape) {
  std::string s = "[";
  for (std::size_t k = 0; k < shape.size(); ++k) {
    if (k) s += ", ";
    s += std::to_string(shape[k]);
  }
  return s + "]";
}

/// One tensor to write: a name, a dtype, a shape and its bytes (row-major, little-endian, not copied).
struct safetensors_tensor_ref {
  std::string name;                ///< unique, non-empty, not "__metadata__"
  safetensors_dtype dtype;         ///< element type
  std::vector<std::size_t> shape;  ///< dimensions; {} is a scalar (one element)
  std::span<const std::byte> bytes;  ///< exactly product(shape) * dtype_size(dtype) bytes
};

/// A tensor of element type T viewed for writing (the data must outlive the write).
template <class T>
safetensors_tensor_ref make_tensor_ref(std::string name, std::span<const T> data, std::vector<std::size_t> shape) {
  return {std::move(name), dtype_of<T>, std::move(shape), std::as_bytes(data)};
}

/// One tensor read from a file.
struct safetensors_tensor {
  safetensors_dtype dtype = safetensors_dtype::f32;  ///< element type
  std::vector<std::size_t> shape;                      ///< dimensions; {} is a scalar
  std::vector<std::byte> bytes;                        ///< the data, row-major, little-endian

  /// Number of elements (the product of the shape; 1 for a scalar).
  std::size_t element_count() const {
    std::size_t n = 1;
    for (std::size_t d : shape) n *= d;
    return n;
  }

  /// The elements as T; throws rlhf::invalid_argument unless the dtype is exactly dtype_of<T>.
  template <class T>
  std::vector<T> values() const {
    if (dtype != dtype_of<T>)
      detail::throw_argument_error("rlhf::safetensors_tensor::values", "T", std::string("dtype ") + dtype_name(dtype_of<T>),
                                   std::string("a tensor of dtype ") + dtype_name(dtype));
    std::vector<T> out(bytes.size() / sizeof(T));
    if (!out.empty()) std::memcpy(out.data(), bytes.data(), out.size() * sizeof(T));
    return out;
  }
};

/// The contents of a safetensors file.
struct safetensors_file {
  std::map<std::string, std::string> metadata;         ///< the "__metadata__" object (empty if absent)
  std::map<std::string, safetensors_tensor> tensors;  ///< by name
};

/// Options of `read_safetensors`.
struct safetensors_read_options {
  /// Largest header accepted, in bytes (the reference implementation's limit is 100,000,000).
  std::uint64_t max_header_bytes = 100'000'000;
};

namespace detail {

inline std::string safetensors_error(std::string_view function, const std::filesystem::path& path,
                                     std::string_view what) {
  std::ostringstream os;
  os << function << ": " << path.string() << ": " << what;
  return os.str();
}

[[noreturn]] inline void throw_safetensors(std::string_view function, const std::filesystem::path& path,
                                           std::string_view what) {
  throw invalid_argument(safetensors_error(function, path, what));
}

// a * b, or nothing on overflow.
inline std::optional<std::uint64_t> checked_mul(std::uint64_t a, std::uint64_t b) {
  if (a != 0 && b > UINT64_MAX / a) return std::nullopt;
  return a * b;
}

}  // namespace detail

/// Writes tensors and metadata to a safetensors file, atomically (see the file comment).
/// @param path the file to create or replace; its directory must exist
/// @param tensors the tensors, in any order (the file orders them by element size, then name)
/// @param metadata string pairs stored under "__metadata__" (omitted when empty), e.g. {"config": "<json>"}
/// @note Throws `rlhf::invalid_argument` naming the file and the tensor for an empty, reserved or
///       duplicate name or a byte count that does not match dtype and shape (before anything is
///       written), and for any I/O error (after removing the temporary file; the target is untouched).
inline void write_safetensors(const std::filesystem::path& path, std::span<const safetensors_tensor_ref> tensors,
                              const std::map<std::string, std::string>& metadata = {}) {
  constexpr std::string_view fn = "rlhf::write_safetensors";
  // Validate everything before touching the file system.
  std::vector<std::size_t> order(tensors.size());
  for (std::size_t k = 0; k < order.size(); ++k) order[k] = k;
  for (const auto& t : tensors) {
    if (t.name.empty()) detail::throw_safetensors(fn, path, "expected non-empty tensor names, received an empty name");
    if (t.name == "__metadata__")
      detail::throw_safetensors(fn, path, "tensor '__metadata__': expected a tensor name, received the reserved key");
    if (dtype_size(t.dtype) == 0)
      detail::throw_safetensors(fn, path, "tensor '" + t.name + "': expected a known dtype, received value " +
                                              std::to_string(static_cast<int>(t.dtype)));
    std::optional<std::uint64_t> bytes = dtype_size(t.dtype);
    for (std::size_t d : t.shape)
      if (bytes) bytes = detail::checked_mul(*bytes, d);
    if (!bytes || *bytes != t.bytes.size())
      detail::throw_safetensors(fn, path, "tensor '" + t.name + "': expected " +
                                              (bytes ? std::to_string(*bytes) : std::string("a representable number of")) +
                                              " bytes (dtype " + dtype_name(t.dtype) + ", shape " + shape_string(t.shape) +
                                              "), received " + std::to_string(t.bytes.size()) + " bytes");
  }
  // Largest elements first, then by name: each tensor then starts at a multiple of its element size.
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    const std::size_t sa = dtype_size(tensors[a].dtype), sb = dtype_size(tensors[b].dtype);
    return sa != sb ? sa > sb : tensors[a].name < tensors[b].name;
  });
  {
    std::set<std::string_view> names;
    for (const auto& t : tensors)
      if (!names.insert(t.name).second)
        detail::throw_safetensors(fn, path, "tensor '" + t.name + "': expected unique tensor names, received the name twice");
  }

  json_value header = json_value::object();
  if (!metadata.empty()) {
    json_value meta = json_value::object();
    for (const auto& [k, v] : metadata) meta.as_object().emplace_back(k, json_value(v));
    header.as_object().emplace_back("__metadata__", std::move(meta));
  }
  std::uint64_t offset = 0;
  for (std::size_t k : order) {
    const auto& t = tensors[k];
    json_value entry = json_value::object();
    entry.as_object().emplace_back("dtype", json_value(dtype_name(t.dtype)));
    json_value shape = json_value::array();
    for (std::size_t d : t.shape) shape.push_back(json_value(d));
    entry.as_object().emplace_back("shape", std::move(shape));
    json_value offsets = json_value::array();
    offsets.push_back(json_value(offset));
    offset += t.bytes.size();
    offsets.push_back(json_value(offset));
    entry.as_object().emplace_back("data_offsets", std::move(offsets));
    header.as_object().emplace_back(t.name, std::move(entry));
  }
  std::string text;
  try {
    // Checks that names and metadata are well-formed UTF-8.
    text = serialize_json(header);
  } catch (const invalid_argument& e) {
    detail::throw_safetensors(fn, path, std::string("cannot encode the header: ") + e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  std::byte prefix[8];
  for (int k = 0; k < 8; ++k) prefix[k] = static_cast<std::byte>((text.size() >> (8 * k)) & 0xFF);

  std::vector<std::span<const std::byte>> pieces{std::span<const std::byte>(prefix, 8),
                                                 std::span<const std::byte>(reinterpret_cast<const std::byte*>(text.data()), text.size())};
  for (std::size_t k : order) pieces.emplace_back(tensors[k].bytes.data(), tensors[k].bytes.size());
  detail::write_file_atomically(fn, path, pieces);
}

/// Convenience overload taking a vector (or a braced list) of tensors.
inline void write_safetensors(const std::filesystem::path& path, const std::vector<safetensors_tensor_ref>& tensors,
                              const std::map<std::string, std::string>& metadata = {}) {
  write_safetensors(path, std::span<const safetensors_tensor_ref>(tensors), metadata);
}

namespace detail {

// Reads a non-negative integer array (shape or data_offsets) of an entry.
inline std::vector<std::uint64_t> safetensors_uints(const json_value& v, const std::filesystem::path& path,
                                                    const std::string& name, std::string_view field) {
  constexpr std::string_view fn = "rlhf::read_safetensors";
  if (!v.is_array())
    throw_safetensors(fn, path, "tensor '" + name + "': expected '" + std::string(field) + "' to be an array, received " +
                                    json_kind_name(v.kind()));
  std::vector<std::uint64_t> out;
  for (const auto& x : v.as_array()) {
    if (!x.is_integer() || x.number_text()[0] == '-')
      throw_safetensors(fn, path, "tensor '" + name + "': expected '" + std::string(field) +
                                      "' to hold non-negative integers, received " + serialize_json(v));
    const auto& t = x.number_text();
    // At most 2^64 - 1; json_value::as_uint64 reports the overflow.
    try {
      out.push_back(x.as_uint64());
    } catch (const invalid_argument&) {
      throw_safetensors(fn, path, "tensor '" + name + "': expected '" + std::string(field) +
                                      "' to hold integers below 2^64, received " + t);
    }
  }
  return out;
}

}  // namespace detail

/// Reads and fully validates a safetensors file (see the file comment for what is checked).
/// @param path the file
/// @param options header size limit
/// @return the metadata and every tensor, by name
/// @note Throws `rlhf::invalid_argument` "rlhf::read_safetensors: <path>: [tensor '<name>': ]<mismatch>".
inline safetensors_file read_safetensors(const std::filesystem::path& path, const safetensors_read_options& options = {}) {
  constexpr std::string_view fn = "rlhf::read_safetensors";
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    detail::throw_safetensors(fn, path, std::filesystem::exists(path, ec)
                                            ? "expected a regular file, received another kind of file"
                                            : "expected an existing file, received a path that does not exist");
  std::ifstream in(path, std::ios::binary);
  if (!in) detail::throw_safetensors(fn, path, "cannot open the file for reading: " + detail::errno_message(errno));
  in.seekg(0, std::ios::end);
  const std::streamoff end = in.tellg();
  in.seekg(0, std::ios::beg);
  if (end < 0 || !in) detail::throw_safetensors(fn, path, "cannot determine the file size");
  const auto file_size = static_cast<std::uint64_t>(end);

  auto read_exact = [&](void* dst, std::uint64_t n, std::string_view what) {
    in.read(static_cast<char*>(dst), static_cast<std::streamsize>(n));
    if (static_cast<std::uint64_t>(in.gcount()) != n)
      detail::throw_safetensors(fn, path, "expected " + std::to_string(n) + " bytes of " + std::string(what) +
                                              ", received " + std::to_string(in.gcount()) +
                                              " (the file changed while being read or cannot be read)");
  };

  if (file_size < 8)
    detail::throw_safetensors(fn, path, "expected at least 8 bytes (the header length), received a file of " +
                                            std::to_string(file_size) + " bytes");
  unsigned char prefix[8];
  read_exact(prefix, 8, "header length");
  std::uint64_t header_len = 0;
  for (int k = 7; k >= 0; --k) header_len = (header_len << 8) | prefix[k];
  if (header_len > options.max_header_bytes)
    detail::throw_safetensors(fn, path, "expected a header length of at most " + std::to_string(options.max_header_bytes) +
                                            " bytes, received " + std::to_string(header_len));
  if (header_len > file_size - 8)
    detail::throw_safetensors(fn, path, "expected a header length of at most " + std::to_string(file_size - 8) +
                                            " bytes (the file size " + std::to_string(file_size) +
                                            " minus 8), received " + std::to_string(header_len) +
                                            " (truncated or corrupted file)");
  std::string text(static_cast<std::size_t>(header_len), '\0');
  read_exact(text.data(), header_len, "header");
  if (text.empty() || text[0] != '{')
    detail::throw_safetensors(fn, path, "expected the header to start with '{', received " +
                                            (text.empty() ? std::string("an empty header")
                                                          : "byte " + std::to_string(static_cast<unsigned char>(text[0]))));
  json_value header;
  try {
    header = parse_json(text);
  } catch (const invalid_argument& e) {
    detail::throw_safetensors(fn, path, std::string("invalid header JSON: ") + e.what());
  }
  if (!header.is_object())
    detail::throw_safetensors(fn, path, std::string("expected the header to be a JSON object, received ") +
                                            json_kind_name(header.kind()));

  safetensors_file result;
  struct placed {
    std::string name;
    std::uint64_t begin, end;
  };
  std::vector<placed> layout;
  const std::uint64_t buffer_size = file_size - 8 - header_len;
  for (const auto& [name, entry] : header.as_object()) {
    if (name == "__metadata__") {
      if (!entry.is_object())
        detail::throw_safetensors(fn, path, std::string("expected '__metadata__' to be an object of strings, received ") +
                                                json_kind_name(entry.kind()));
      for (const auto& [k, v] : entry.as_object()) {
        if (!v.is_string())
          detail::throw_safetensors(fn, path, "metadata '" + k + "': expected a string value, received " +
                                                  json_kind_name(v.kind()));
        result.metadata.emplace(k, v.as_string());
      }
      continue;
    }
    const std::string where = "tensor '" + name + "': ";
    if (!entry.is_object())
      detail::throw_safetensors(fn, path, where + "expected an object with dtype, shape and data_offsets, received " +
                                              json_kind_name(entry.kind()));
    for (const auto& member : entry.as_object())
      if (member.first != "dtype" && member.first != "shape" && member.first != "data_offsets")
        detail::throw_safetensors(fn, path, where + "expected only the fields dtype, shape and data_offsets, received '" +
                                                member.first + "'");
    for (const char* field : {"dtype", "shape", "data_offsets"})
      if (!entry.find(field))
        detail::throw_safetensors(fn, path, where + "expected a field '" + field + "', received an entry without it");
    const json_value& dt = entry.at("dtype");
    if (!dt.is_string())
      detail::throw_safetensors(fn, path, where + "expected 'dtype' to be a string, received " + json_kind_name(dt.kind()));
    const auto dtype = parse_dtype(dt.as_string());
    if (!dtype)
      detail::throw_safetensors(fn, path, where + "expected a known dtype (BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, "
                                                  "F16, BF16, I32, U32, F32, F64, I64, U64), received '" +
                                              dt.as_string() + "'");
    const auto shape = detail::safetensors_uints(entry.at("shape"), path, name, "shape");
    const auto offsets = detail::safetensors_uints(entry.at("data_offsets"), path, name, "data_offsets");
    if (offsets.size() != 2)
      detail::throw_safetensors(fn, path, where + "expected 'data_offsets' to hold 2 integers [begin, end], received " +
                                              std::to_string(offsets.size()));
    std::vector<std::size_t> dims(shape.begin(), shape.end());
    std::optional<std::uint64_t> bytes = dtype_size(*dtype);
    for (std::uint64_t d : shape)
      if (bytes) bytes = detail::checked_mul(*bytes, d);
    const std::string offsets_text = "[" + std::to_string(offsets[0]) + ", " + std::to_string(offsets[1]) + "]";
    if (offsets[1] < offsets[0])
      detail::throw_safetensors(fn, path, where + "expected data_offsets [begin, end] with begin <= end, received " +
                                              offsets_text);
    if (offsets[1] > buffer_size)
      detail::throw_safetensors(fn, path, where + "expected data_offsets within the " + std::to_string(buffer_size) +
                                              "-byte data buffer, received " + offsets_text +
                                              " (truncated or corrupted file)");
    if (!bytes || *bytes != offsets[1] - offsets[0])
      detail::throw_safetensors(fn, path, where + "expected data_offsets spanning " +
                                              (bytes ? std::to_string(*bytes) : std::string("more than 2^64")) +
                                              " bytes (dtype " + dt.as_string() + ", shape " + shape_string(dims) +
                                              "), received " + offsets_text);
    result.tensors[name] = safetensors_tensor{*dtype, std::move(dims), {}};
    layout.push_back({name, offsets[0], offsets[1]});
  }
  // The tensors must tile the buffer: sorted by offset, each begins where the previous ended.
  std::sort(layout.begin(), layout.end(),
            [](const placed& a, const placed& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  std::uint64_t cursor = 0;
  for (const auto& p : layout) {
    if (p.begin != cursor)
      detail::throw_safetensors(fn, path, "tensor '" + p.name + "': expected data_offsets beginning at byte " +
                                              std::to_string(cursor) + " (tensors must cover the data buffer without " +
                                              (p.begin < cursor ? "overlapping" : "gaps") + "), received [" +
                                              std::to_string(p.begin) + ", " + std::to_string(p.end) + "]");
    cursor = p.end;
  }
  if (cursor != buffer_size)
    detail::throw_safetensors(fn, path, "expected the tensors to cover the " + std::to_string(buffer_size) +
                                            "-byte data buffer, received tensors covering " + std::to_string(cursor) +
                                            " bytes");
  // Every size is now checked against the file size: read the data, in file order.
  for (const auto& p : layout) {
    auto& t = result.tensors[p.name];
    t.bytes.resize(static_cast<std::size_t>(p.end - p.begin));
    if (!t.bytes.empty()) read_exact(t.bytes.data(), t.bytes.size(), "tensor '" + p.name + "'");
  }
  return result;
}

}  // namespace rlhf
