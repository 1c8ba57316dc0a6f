// The safetensors reader and atomic writer (rlhf/data/safetensors.hpp): exact bytes of a tiny file,
// round trips of every dtype, truncation at every byte, corrupted and hand-crafted headers (every
// rule of the format), atomic replacement and clean-up of the temporary file.
#include "test_support.hpp"
#include "temp_files.hpp"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include <unistd.h>

#include "rlhf/data/safetensors.hpp"

using namespace rlhf;
using namespace rlhf::test;
namespace fs = std::filesystem;

namespace {

// A file made by hand: the 8-byte length of `header`, the header, then `buffer_size` bytes 0, 1, 2, ...
void craft(const fs::path& p, const std::string& header, std::size_t buffer_size, std::uint64_t length_override = 0) {
  std::vector<unsigned char> bytes(8);
  const std::uint64_t n = length_override ? length_override : header.size();
  for (int k = 0; k < 8; ++k) bytes[static_cast<std::size_t>(k)] = static_cast<unsigned char>(n >> (8 * k));
  bytes.insert(bytes.end(), header.begin(), header.end());
  for (std::size_t k = 0; k < buffer_size; ++k) bytes.push_back(static_cast<unsigned char>(k));
  write_bytes(p, bytes);
}

std::string read_error(const fs::path& p) {
  try {
    (void)read_safetensors(p);
  } catch (const rlhf::invalid_argument& e) {
    return e.what();
  }
  return {};
}

// The small mixed-dtype file used by several tests.
struct sample {
  std::vector<float> w = {1.5f, -2.25f, 3.0f, 0.0f, -0.0f, 1e-30f};
  std::vector<double> d = {3.141592653589793, -1e300};
  std::vector<std::int32_t> ids = {7, -1, 2147483647};
  std::vector<std::uint8_t> mask = {1, 0, 1, 1, 0};
  std::vector<std::int64_t> step = {9007199254740993LL};  // scalar, 2^53 + 1
  std::vector<float> none = {};
  std::vector<safetensors_tensor_ref> refs() const {
    return {make_tensor_ref<float>("layers.0.w", w, {2, 3}),
            make_tensor_ref<double>("d", d, {2}),
            make_tensor_ref<std::int32_t>("ids", ids, {1, 3}),
            make_tensor_ref<std::uint8_t>("mask", mask, {5}),
            make_tensor_ref<std::int64_t>("step", step, {}),
            make_tensor_ref<float>("empty", none, {0, 4})};
  }
};

}  // namespace

TEST_CASE("safetensors: a tiny file has exactly the documented bytes", "[data][safetensors]") {
  temp_dir dir("rlhf_safetensors_test");
  const std::vector<std::int32_t> a = {1, -2};
  const std::vector<double> w = {1.0};
  // Given in the "wrong" order: the file puts 8-byte elements first, then 4-byte ones.
  write_safetensors(dir / "t.safetensors",
                    {make_tensor_ref<std::int32_t>("a", a, {2}), make_tensor_ref<double>("w", w, {1})}, {{"k", "v"}});
  const std::string header =
      R"({"__metadata__":{"k":"v"},"w":{"dtype":"F64","shape":[1],"data_offsets":[0,8]},)"
      R"("a":{"dtype":"I32","shape":[2],"data_offsets":[8,16]}})";
  REQUIRE(header.size() == 133);  // padded with 3 spaces to 136, a multiple of 8
  std::vector<unsigned char> want = {136, 0, 0, 0, 0, 0, 0, 0};
  want.insert(want.end(), header.begin(), header.end());
  want.insert(want.end(), {' ', ' ', ' '});
  want.insert(want.end(), {0, 0, 0, 0, 0, 0, 0xF0, 0x3F});  // 1.0 as IEEE double, little-endian
  want.insert(want.end(), {1, 0, 0, 0, 0xFE, 0xFF, 0xFF, 0xFF});  // 1, -2 as int32
  CHECK(read_bytes(dir / "t.safetensors") == want);
  CHECK(dir.entries() == std::vector<std::string>{"t.safetensors"});

  // No metadata: no "__metadata__" key. Header {"x":{"dtype":"U8","shape":[],"data_offsets":[0,1]}} is 52
  // bytes, padded with 4 spaces to 56.
  const std::vector<std::uint8_t> x = {42};
  write_safetensors(dir / "u.safetensors", {make_tensor_ref<std::uint8_t>("x", x, {})});
  const auto got = read_bytes(dir / "u.safetensors");
  REQUIRE(got.size() == 8 + 56 + 1);
  CHECK(got[0] == 56);
  CHECK(std::string(got.begin() + 8, got.begin() + 64) ==
        R"({"x":{"dtype":"U8","shape":[],"data_offsets":[0,1]}}    )");
  CHECK(got.back() == 42);
}

TEST_CASE("safetensors: round trip of every dtype, scalars, empty tensors and metadata", "[data][safetensors]") {
  temp_dir dir("rlhf_safetensors_test");
  const sample s;
  const std::map<std::string, std::string> meta = {{"config", R"({"dim": 64})"}, {"format", "pt"}, {"\xC3\xA9", ""}};
  write_safetensors(dir / "m.safetensors", s.refs(), meta);
  const auto f = read_safetensors(dir / "m.safetensors");
  CHECK(f.metadata == meta);
  REQUIRE(f.tensors.size() == 6);
  CHECK(f.tensors.at("layers.0.w").dtype == safetensors_dtype::f32);
  CHECK(f.tensors.at("layers.0.w").shape == std::vector<std::size_t>{2, 3});
  CHECK(f.tensors.at("layers.0.w").values<float>() == s.w);
  CHECK(std::signbit(f.tensors.at("layers.0.w").values<float>()[4]));  // -0.0 kept bit-exactly
  CHECK(f.tensors.at("d").values<double>() == s.d);
  CHECK(f.tensors.at("ids").values<std::int32_t>() == s.ids);
  CHECK(f.tensors.at("ids").shape == std::vector<std::size_t>{1, 3});
  CHECK(f.tensors.at("mask").values<std::uint8_t>() == s.mask);
  CHECK(f.tensors.at("step").shape.empty());
  CHECK(f.tensors.at("step").element_count() == 1);
  CHECK(f.tensors.at("step").values<std::int64_t>() == s.step);
  CHECK(f.tensors.at("empty").shape == std::vector<std::size_t>{0, 4});
  CHECK(f.tensors.at("empty").bytes.empty());
  CHECK_THROWS_WITH(f.tensors.at("d").values<float>(),
                    Catch::Contains("rlhf::safetensors_tensor::values") && Catch::Contains("expected dtype F32") &&
                        Catch::Contains("received a tensor of dtype F64"));

  // The layout does not depend on the order given, and aligns each tensor to its element size.
  auto reversed = s.refs();
  std::reverse(reversed.begin(), reversed.end());
  write_safetensors(dir / "r.safetensors", reversed, meta);
  const auto bytes = read_bytes(dir / "m.safetensors");
  CHECK(read_bytes(dir / "r.safetensors") == bytes);
  std::uint64_t n = 0;
  for (int k = 7; k >= 0; --k) n = (n << 8) | bytes[static_cast<std::size_t>(k)];
  CHECK(n % 8 == 0);
  const auto header = parse_json(std::string(bytes.begin() + 8, bytes.begin() + 8 + static_cast<std::ptrdiff_t>(n)));
  std::vector<std::string> order;
  for (const auto& [name, e] : header.as_object()) {
    if (name == "__metadata__") continue;
    order.push_back(name);
    const auto size = dtype_size(*parse_dtype(e.at("dtype").as_string()));
    CHECK(e.at("data_offsets").at(0).as_uint64() % size == 0);
  }
  CHECK(order == std::vector<std::string>{"d", "step", "empty", "ids", "layers.0.w", "mask"});

  // Every dtype name maps back to itself and has the right size.
  for (const auto& [dt, name, size] : {std::tuple{safetensors_dtype::bf16, "BF16", 2u},
                                       std::tuple{safetensors_dtype::f16, "F16", 2u},
                                       std::tuple{safetensors_dtype::boolean, "BOOL", 1u},
                                       std::tuple{safetensors_dtype::f8_e4m3, "F8_E4M3", 1u},
                                       std::tuple{safetensors_dtype::u64, "U64", 8u}}) {
    CHECK(std::string(dtype_name(dt)) == name);
    CHECK(dtype_size(dt) == size);
    CHECK(parse_dtype(name) == dt);
  }
  CHECK_FALSE(parse_dtype("f32").has_value());
  STATIC_REQUIRE(dtype_of<float> == safetensors_dtype::f32);
  STATIC_REQUIRE(dtype_of<const double> == safetensors_dtype::f64);
  STATIC_REQUIRE(dtype_of<rlhf::token_type> == safetensors_dtype::i32);
  STATIC_REQUIRE(dtype_of<rlhf::mask_type> == safetensors_dtype::u8);

  // Raw bytes of dtypes without a C++ type (BF16 here) round-trip as given.
  const std::vector<std::byte> bf16 = {std::byte{0x80}, std::byte{0x3F}, std::byte{0x00}, std::byte{0xC0}};  // 1, -2
  write_safetensors(dir / "b.safetensors", {{"h", safetensors_dtype::bf16, {2}, bf16}});
  CHECK(read_safetensors(dir / "b.safetensors").tensors.at("h").bytes == bf16);
}

TEST_CASE("safetensors: a file cut at any byte is rejected, naming the file", "[data][safetensors][truncation]") {
  temp_dir dir("rlhf_safetensors_test");
  const sample s;
  const fs::path full = dir / "full.safetensors";
  write_safetensors(full, s.refs(), {{"config", "{}"}});
  const auto bytes = read_bytes(full);
  std::uint64_t n = 0;
  for (int k = 7; k >= 0; --k) n = (n << 8) | bytes[static_cast<std::size_t>(k)];
  const fs::path cut = dir / "cut.safetensors";
  for (std::size_t size = 0; size < bytes.size(); ++size) {
    CAPTURE(size);
    write_bytes(cut, std::vector<unsigned char>(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(size)));
    const std::string err = read_error(cut);
    CHECK_THAT(err, Catch::StartsWith("rlhf::read_safetensors: " + cut.string() + ": "));
    // Which rule catches it depends on the section the cut falls in.
    if (size < 8) {
      CHECK_THAT(err, Catch::Contains("expected at least 8 bytes (the header length), received a file of " +
                                      std::to_string(size) + " bytes"));
    } else if (size < 8 + n) {
      CHECK_THAT(err, Catch::Contains("expected a header length of at most " + std::to_string(size - 8)) &&
                          Catch::Contains("received " + std::to_string(n) + " (truncated or corrupted file)"));
    } else {
      // At the header's end or inside the data: the last tensor's offsets run past the buffer.
      CHECK_THAT(err, Catch::Contains("expected data_offsets within the " + std::to_string(size - 8 - n) +
                                      "-byte data buffer"));
    }
  }
  // One byte too many is an uncovered buffer, not silently ignored.
  auto longer = bytes;
  longer.push_back(0);
  write_bytes(cut, longer);
  CHECK_THAT(read_error(cut), Catch::Contains("expected the tensors to cover the " +
                                              std::to_string(bytes.size() - 8 - n + 1) + "-byte data buffer"));
  CHECK(read_error(full).empty());
}

TEST_CASE("safetensors: corrupted header lengths are rejected", "[data][safetensors]") {
  temp_dir dir("rlhf_safetensors_test");
  const fs::path p = dir / "c.safetensors";
  const std::string h = R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})";
  craft(p, h, 2);
  REQUIRE(read_error(p).empty());
  craft(p, h, 2, h.size() + 3);  // beyond the end of the file
  CHECK_THAT(read_error(p), Catch::Contains("expected a header length of at most " + std::to_string(h.size() + 2)) &&
                                Catch::Contains("received " + std::to_string(h.size() + 3)));
  craft(p, h, 2, 0xFFFFFFFFFFFFFFFFull);  // absurd: no allocation attempted
  CHECK_THAT(read_error(p), Catch::Contains("expected a header length of at most 100000000 bytes, received "
                                            "18446744073709551615"));
  craft(p, h, 2, 100000001);
  CHECK_THAT(read_error(p), Catch::Contains("at most 100000000 bytes, received 100000001"));
  craft(p, h, 2, h.size() - 1);  // too short: the JSON is cut
  CHECK_THAT(read_error(p), Catch::Contains("invalid header JSON: rlhf::parse_json: at line 1, column") &&
                                Catch::Contains("received end of input"));
  craft(p, h, 2, h.size() + 1);  // too long: the header swallows a data byte
  CHECK_THAT(read_error(p), Catch::Contains("invalid header JSON") && Catch::Contains("U+0000"));
  craft(p, "", 0);
  CHECK_THAT(read_error(p), Catch::Contains("expected the header to start with '{', received an empty header"));
  craft(p, " {}", 0);
  CHECK_THAT(read_error(p), Catch::Contains("expected the header to start with '{', received byte 32"));
  craft(p, "{}", 0);  // an empty file: no tensors is valid
  CHECK(read_error(p).empty());
  CHECK(read_safetensors(p).tensors.empty());
  craft(p, "{}      ", 0);  // trailing space padding is allowed
  CHECK(read_error(p).empty());
  // Tighter limit by option.
  safetensors_read_options small;
  small.max_header_bytes = 16;
  craft(p, h, 2);
  CHECK_THROWS_WITH(read_safetensors(p, small), Catch::Contains("at most 16 bytes, received " + std::to_string(h.size())));
}

TEST_CASE("safetensors: every header rule is enforced with a message naming the tensor", "[data][safetensors]") {
  temp_dir dir("rlhf_safetensors_test");
  const fs::path p = dir / "h.safetensors";
  const auto err = [&](const std::string& header, std::size_t buffer) {
    craft(p, header, buffer);
    return read_error(p);
  };
  CHECK(err(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[],"data_offsets":[8,9]}})", 9)
            .empty());
  CHECK(err(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", 16) ==
        "rlhf::read_safetensors: " + p.string() +
            ": invalid header JSON: rlhf::parse_json: at line 1, column 55: expected a unique member name, received "
            "duplicate key 'a'");
  CHECK(err("[1]", 0) == "rlhf::read_safetensors: " + p.string() + ": expected the header to start with '{', received byte 91");
  CHECK(err(R"({"a":{"dtype":"F32","shape":[2]}})", 8) ==
        "rlhf::read_safetensors: " + p.string() +
            ": tensor 'a': expected a field 'data_offsets', received an entry without it");
  CHECK_THAT(err(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", 8), Catch::Contains("tensor 'a': expected a field 'dtype'"));
  CHECK_THAT(err(R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", 8), Catch::Contains("tensor 'a': expected a field 'shape'"));
  CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", 8),
             Catch::Contains("tensor 'a': expected only the fields dtype, shape and data_offsets, received 'x'"));
  CHECK_THAT(err(R"({"a":[1]})", 0), Catch::Contains("tensor 'a': expected an object with dtype, shape and data_offsets, "
                                                     "received an array"));
  CHECK_THAT(err(R"({"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", 8),
             Catch::Contains("tensor 'a': expected a known dtype (BOOL") && Catch::Contains("received 'F33'"));
  CHECK_THAT(err(R"({"a":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", 8),
             Catch::Contains("tensor 'a': expected 'dtype' to be a string, received a number"));
  CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", 8),
             Catch::Contains("tensor 'a': expected 'shape' to be an array, received a number"));
  CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
             Catch::Contains("tensor 'a': expected 'shape' to hold non-negative integers, received [-2]"));
  CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", 8),
             Catch::Contains("expected 'shape' to hold non-negative integers, received [2.0]"));
  CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,"8"]}})", 8),
             Catch::Contains("expected 'data_offsets' to hold non-negative integers"));
  CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,18446744073709551616]}})", 8),
             Catch::Contains("expected 'data_offsets' to hold integers below 2^64, received 18446744073709551616"));
  CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4,8]}})", 8),
             Catch::Contains("tensor 'a': expected 'data_offsets' to hold 2 integers [begin, end], received 3"));
  CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8),
             Catch::Contains("tensor 'a': expected data_offsets [begin, end] with begin <= end, received [8, 0]"));
  // Shape * dtype size must equal end - begin.
  CHECK(err(R"({"wq":{"dtype":"F32","shape":[8,8],"data_offsets":[0,128]}})", 128) ==
        "rlhf::read_safetensors: " + p.string() +
            ": tensor 'wq': expected data_offsets spanning 256 bytes (dtype F32, shape [8, 8]), received [0, 128]");
  CHECK_THAT(err(R"({"a":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}})", 8),
             Catch::Contains("tensor 'a': expected data_offsets spanning 16 bytes (dtype F64, shape [2])"));
  // A shape whose byte count overflows 64 bits.
  CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8),
             Catch::Contains("expected data_offsets spanning more than 2^64 bytes"));
  CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 8),
             Catch::Contains("tensor 'a': expected data_offsets within the 8-byte data buffer, received [4, 12]"));
  // Overlap, gap, uncovered tail, buffer not starting at 0.
  CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8),
             Catch::Contains("tensor 'b': expected data_offsets beginning at byte 8 (tensors must cover the data buffer "
                             "without overlapping), received [4, 8]"));
  CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8),
             Catch::Contains("without overlapping"));
  CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})", 12),
             Catch::Contains("tensor 'b': expected data_offsets beginning at byte 4 (tensors must cover the data buffer "
                             "without gaps), received [8, 12]"));
  CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8),
             Catch::Contains("tensor 'a': expected data_offsets beginning at byte 0"));
  CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 8),
             Catch::Contains("expected the tensors to cover the 8-byte data buffer, received tensors covering 4 bytes"));
  // Zero-sized tensors may share an offset.
  CHECK(err(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"b":{"dtype":"I64","shape":[3,0],"data_offsets":[0,0]},"c":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", 1)
            .empty());
  // Metadata must be an object of strings.
  CHECK_THAT(err(R"({"__metadata__":{"a":1}})", 0), Catch::Contains("metadata 'a': expected a string value, received a number"));
  CHECK_THAT(err(R"({"__metadata__":"x"})", 0),
             Catch::Contains("expected '__metadata__' to be an object of strings, received a string"));
  // Missing file, a directory.
  CHECK(read_error(dir / "nope.safetensors") == "rlhf::read_safetensors: " + (dir / "nope.safetensors").string() +
                                                    ": expected an existing file, received a path that does not exist");
  CHECK_THAT(read_error(dir.path), Catch::Contains("expected a regular file"));
}

TEST_CASE("safetensors: random corruption of a valid file never crashes", "[data][safetensors][property]") {
  temp_dir dir("rlhf_safetensors_test");
  const sample s;
  write_safetensors(dir / "ok.safetensors", s.refs(), {{"config", "{\"dim\": 4}"}});
  const auto bytes = read_bytes(dir / "ok.safetensors");
  auto g = rlhf::test::rng(5);
  std::uniform_int_distribution<std::size_t> pos(0, bytes.size() - 1);
  std::uniform_int_distribution<int> val(0, 255);
  int rejected = 0;
  for (int trial = 0; trial < 300; ++trial) {
    auto bad = bytes;
    for (int k = 0; k < 1 + trial % 3; ++k) bad[pos(g)] = static_cast<unsigned char>(val(g));
    write_bytes(dir / "bad.safetensors", bad);
    try {
      const auto f = read_safetensors(dir / "bad.safetensors");
      // Accepted: then it is self-consistent.
      for (const auto& [name, t] : f.tensors) REQUIRE(t.bytes.size() == t.element_count() * dtype_size(t.dtype));
    } catch (const rlhf::invalid_argument& e) {
      ++rejected;
      REQUIRE_THAT(std::string(e.what()), Catch::StartsWith("rlhf::read_safetensors: "));
    }
  }
  CHECK(rejected > 0);
}

TEST_CASE("safetensors: writes are atomic and leave no temporary files", "[data][safetensors][atomic]") {
  temp_dir dir("rlhf_safetensors_test");
  const fs::path target = dir / "model.safetensors";
  const std::vector<float> old_values = {1, 2, 3};
  write_safetensors(target, {make_tensor_ref<float>("w", old_values, {3})});
  const auto old_bytes = read_bytes(target);
  const std::vector<float> v = {4, 5, 6, 7};

  // Invalid tensors are rejected before anything is created.
  CHECK_THROWS_WITH(write_safetensors(target, {make_tensor_ref<float>("w", v, {3})}),
                    "rlhf::write_safetensors: " + target.string() +
                        ": tensor 'w': expected 12 bytes (dtype F32, shape [3]), received 16 bytes");
  CHECK_THROWS_WITH(write_safetensors(target, {make_tensor_ref<float>("w", v, {4}), make_tensor_ref<float>("w", v, {2, 2})}),
                    Catch::Contains("tensor 'w': expected unique tensor names, received the name twice"));
  CHECK_THROWS_WITH(write_safetensors(target, {make_tensor_ref<float>("", v, {4})}),
                    Catch::Contains("expected non-empty tensor names"));
  CHECK_THROWS_WITH(write_safetensors(target, {make_tensor_ref<float>("__metadata__", v, {4})}),
                    Catch::Contains("received the reserved key"));
  CHECK_THROWS_WITH(write_safetensors(target, {make_tensor_ref<float>("w", v, {4})}, {{"k", "\xFF"}}),
                    Catch::Contains("cannot encode the header") && Catch::Contains("well-formed UTF-8"));
  CHECK(read_bytes(target) == old_bytes);
  CHECK(dir.entries() == std::vector<std::string>{"model.safetensors"});

  // A directory that does not exist: nothing is created anywhere.
  const fs::path missing = dir / "no" / "such" / "dir" / "m.safetensors";
  CHECK_THROWS_WITH(write_safetensors(missing, {make_tensor_ref<float>("w", v, {4})}),
                    Catch::StartsWith("rlhf::write_safetensors: " + missing.string() +
                                      ": cannot create the temporary file " + missing.string() + ".tmp.") &&
                        Catch::Contains("No such file or directory"));
  CHECK(dir.entries() == std::vector<std::string>{"model.safetensors"});

  // A failure after the data was written (the target is a non-empty directory, so the rename fails):
  // the temporary file is removed and the directory is untouched.
  const fs::path occupied = dir / "occupied";
  fs::create_directories(occupied / "inside");
  CHECK_THROWS_WITH(write_safetensors(occupied, {make_tensor_ref<float>("w", v, {4})}),
                    Catch::Contains("cannot rename the temporary file") && Catch::Contains(occupied.string() + ".tmp."));
  CHECK(dir.entries() == std::vector<std::string>{"model.safetensors", "occupied"});
  CHECK(fs::is_directory(occupied / "inside"));

  // A successful write replaces the old content in one step.
  write_safetensors(target, {make_tensor_ref<float>("w", v, {4})}, {{"step", "2"}});
  const auto f = read_safetensors(target);
  CHECK(f.tensors.at("w").values<float>() == v);
  CHECK(f.metadata.at("step") == "2");
  CHECK(dir.entries() == std::vector<std::string>{"model.safetensors", "occupied"});

  // A relative path (no parent directory component) works too.
  const fs::path cwd = fs::current_path();
  fs::current_path(dir.path);
  write_safetensors("rel.safetensors", {make_tensor_ref<float>("w", v, {4})});
  fs::current_path(cwd);
  CHECK(read_safetensors(dir / "rel.safetensors").tensors.at("w").values<float>() == v);
}
