// Locating the pretrained model files of examples/data for the model tests: path, SHA-256 check, skip
// message. The tests that need a file call data_file(); an empty result means "skip" (the WARN says why).
#pragma once

#include <catch2/catch.hpp>

#include <array>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <iterator>
#include <string>
#include <vector>

#ifndef RLHF_TEST_DATA_DIR
#define RLHF_TEST_DATA_DIR "examples/data"
#endif

namespace rlhf::test {

/// SHA-256 (FIPS 180-4) of a byte string, as lowercase hex. Small and slow; for file checks only.
inline std::string sha256_hex(const std::vector<unsigned char>& data) {
  static constexpr std::uint32_t k[64] = {
      0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
      0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
      0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
      0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
      0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
      0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
      0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
      0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
  std::uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  std::vector<unsigned char> m = data;
  const std::uint64_t bits = static_cast<std::uint64_t>(data.size()) * 8;
  m.push_back(0x80);
  while (m.size() % 64 != 56) m.push_back(0);
  for (int i = 7; i >= 0; --i) m.push_back(static_cast<unsigned char>(bits >> (8 * i)));
  const auto rotr = [](std::uint32_t x, int n) { return (x >> n) | (x << (32 - n)); };
  for (std::size_t off = 0; off < m.size(); off += 64) {
    std::uint32_t w[64];
    for (int i = 0; i < 16; ++i) {
      w[i] = std::uint32_t(m[off + 4 * i]) << 24 | std::uint32_t(m[off + 4 * i + 1]) << 16 |
             std::uint32_t(m[off + 4 * i + 2]) << 8 | std::uint32_t(m[off + 4 * i + 3]);
    }
    for (int i = 16; i < 64; ++i) {
      const std::uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      const std::uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    std::uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; ++i) {
      const std::uint32_t t1 = hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      const std::uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      hh = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = b;
      b = a;
      a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += hh;
  }
  std::string hex;
  char buf[9];
  for (const std::uint32_t x : h) {
    std::snprintf(buf, sizeof(buf), "%08x", static_cast<unsigned>(x));
    hex += buf;
  }
  return hex;
}

inline std::vector<unsigned char> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<unsigned char>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

/// A path in the system's temporary directory unique to this process (ctest may run test cases in
/// parallel processes; several users may run the suite at once): prefix, a per-process random tag, name.
inline std::filesystem::path unique_temp_path(const std::string& name) {
  static const std::string tag = [] {
    std::random_device rd;
    return std::to_string(rd()) + "_" + std::to_string(rd());
  }();
  return std::filesystem::temp_directory_path() / ("rlhf_test_" + tag + "_" + name);
}

inline constexpr const char* stories260k_sha256 = "b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696";
inline constexpr const char* tok512_sha256 = "037cb335abb25d1fa9e8ecae30ed2a3a8ace9302862ebcdc05d51a6bbb10c312";

/// The path of examples/data/<name> when it exists and has the expected SHA-256 (checked once per
/// process and file), else "" after a WARN naming the reason; callers then return (skip).
inline std::string data_file(const std::string& name, const char* sha256) {
  const std::string path = std::string(RLHF_TEST_DATA_DIR) + "/" + name;
  static std::vector<std::pair<std::string, bool>> verified;
  for (const auto& [p, ok] : verified) {
    if (p == path) {
      if (!ok) WARN("skipped: " << path << " is absent or has an unexpected SHA-256");
      return ok ? path : std::string();
    }
  }
  const auto bytes = read_bytes(path);
  bool ok = !bytes.empty();
  if (!ok) {
    WARN("skipped: " << path << " is absent (copy it from ../shared/data/models/)");
  } else if (const std::string got = sha256_hex(bytes); got != sha256) {
    WARN("skipped: " << path << " has SHA-256 " << got << ", expected " << sha256);
    ok = false;
  }
  verified.emplace_back(path, ok);
  return ok ? path : std::string();
}

}  // namespace rlhf::test
