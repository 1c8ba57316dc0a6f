/// @file llama2c_checkpoint.hpp
/// @brief Reading and writing llama2.c "legacy" (version 0) checkpoints, host side, fp32.
///
/// Layout (little-endian), as llama2.c's `run.c` maps it (`memory_map_weights`):
///
///     int32 dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
///         (vocab_size < 0 means the classifier is stored separately; > 0 that it is the embedding)
///     float32 token_embedding [V, D]
///     float32 rms_att         [L, D]
///     float32 wq              [L, D, D]        each matrix row-major [out, in]: y = W x
///     float32 wk              [L, kv_dim, D]
///     float32 wv              [L, kv_dim, D]
///     float32 wo              [L, D, D]
///     float32 rms_ffn         [L, D]
///     float32 w1              [L, F, D]        gate projection
///     float32 w2              [L, D, F]        down projection
///     float32 w3              [L, F, D]        up projection
///     float32 rms_final       [D]
///     float32 freq_cis_real   [seq_len, head_dim / 2]   (RoPE table, unused: recomputed)
///     float32 freq_cis_imag   [seq_len, head_dim / 2]   (unused)
///     float32 wcls            [V, D]           only when not shared
///
/// with kv_dim = n_kv_heads * D / n_heads. The file size must match the header exactly.
#pragma once

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "rlhf/error.hpp"
#include "rlhf/models/llama_config.hpp"

namespace rlhf {

static_assert(std::endian::native == std::endian::little,
              "rlhf: llama2.c checkpoints are little-endian; this reader does not byte-swap");

/// The tensors of a llama2.c checkpoint in host memory, in file order and layout (see the file comment).
struct llama2c_weights {
  llama_config config;                  ///< from the header
  std::vector<float> token_embedding;   ///< [V, D]
  std::vector<float> rms_att;           ///< [L, D]
  std::vector<float> wq;                ///< [L, D, D]
  std::vector<float> wk;                ///< [L, kv_dim, D]
  std::vector<float> wv;                ///< [L, kv_dim, D]
  std::vector<float> wo;                ///< [L, D, D]
  std::vector<float> rms_ffn;           ///< [L, D]
  std::vector<float> w1;                ///< [L, F, D]
  std::vector<float> w2;                ///< [L, D, F]
  std::vector<float> w3;                ///< [L, F, D]
  std::vector<float> rms_final;         ///< [D]
  std::vector<float> wcls;              ///< [V, D]; empty when config.shared_classifier
};

namespace detail {
inline constexpr std::uint64_t llama2c_header_bytes = 7 * 4;

// One tensor of the file: its name and element count, in file order.
struct llama2c_section {
  const char* name;
  std::uint64_t count;
};

inline std::vector<llama2c_section> llama2c_sections(const llama_config& c) {
  const std::uint64_t D = c.dim, F = c.hidden_dim, L = c.n_layers, V = c.vocab_size, kv = c.kv_dim();
  const std::uint64_t half = static_cast<std::uint64_t>(c.seq_len) * c.head_dim() / 2;
  std::vector<llama2c_section> s = {{"token_embedding", V * D}, {"rms_att", L * D},   {"wq", L * D * D},
                                    {"wk", L * kv * D},         {"wv", L * kv * D},   {"wo", L * D * D},
                                    {"rms_ffn", L * D},         {"w1", L * F * D},    {"w2", L * D * F},
                                    {"w3", L * F * D},          {"rms_final", D},     {"freq_cis_real", half},
                                    {"freq_cis_imag", half}};
  if (!c.shared_classifier) s.push_back({"wcls", V * D});
  return s;
}

inline std::uint64_t llama2c_file_bytes(const llama_config& c) {
  std::uint64_t n = llama2c_header_bytes;
  for (const auto& s : llama2c_sections(c)) n += 4 * s.count;
  return n;
}

[[noreturn]] inline void llama2c_fail(const std::string& function, const std::string& path, const std::string& what) {
  throw invalid_argument(function + ": file '" + path + "': " + what);
}

// Parses the 7-int32 header; `available` is the file size (for the truncation message).
inline llama_config llama2c_parse_header(const std::int32_t (&h)[7], const std::string& path) {
  static const char* names[7] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};
  for (int i = 0; i < 7; ++i) {
    if (h[i] == 0 || (i != 5 && h[i] < 0) || (i == 5 && h[i] == INT32_MIN)) {
      llama2c_fail("rlhf::read_llama2c", path,
                   std::string("header field '") + names[i] + "' (byte offset " + std::to_string(4 * i) +
                       "): expected " + (i == 5 ? "a non-zero value" : "a value > 0") + ", read " +
                       std::to_string(h[i]));
    }
  }
  llama_config c;
  c.dim = static_cast<std::size_t>(h[0]);
  c.hidden_dim = static_cast<std::size_t>(h[1]);
  c.n_layers = static_cast<std::size_t>(h[2]);
  c.n_heads = static_cast<std::size_t>(h[3]);
  c.n_kv_heads = static_cast<std::size_t>(h[4]);
  c.shared_classifier = h[5] > 0;
  c.vocab_size = static_cast<std::size_t>(h[5] > 0 ? h[5] : -h[5]);
  c.seq_len = static_cast<std::size_t>(h[6]);
  try {
    c.validate("rlhf::read_llama2c");
  } catch (const invalid_argument& e) {
    llama2c_fail("rlhf::read_llama2c", path, std::string("invalid header: ") + e.what());
  }
  return c;
}

inline std::ifstream llama2c_open(const std::string& path, std::uint64_t& size) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) llama2c_fail("rlhf::read_llama2c", path, "cannot open it for reading");
  size = static_cast<std::uint64_t>(in.tellg());
  in.seekg(0);
  return in;
}

inline llama_config llama2c_read_header(std::ifstream& in, std::uint64_t size, const std::string& path) {
  if (size < llama2c_header_bytes) {
    llama2c_fail("rlhf::read_llama2c", path,
                 "truncated: expected a header of 28 bytes (7 int32), the file has " + std::to_string(size) + " bytes");
  }
  std::int32_t h[7];
  in.read(reinterpret_cast<char*>(h), sizeof(h));
  if (!in) llama2c_fail("rlhf::read_llama2c", path, "read error in the header");
  return llama2c_parse_header(h, path);
}
}  // namespace detail

/// Reads only the configuration (header) of a llama2.c checkpoint, checking the file size against it.
/// @param path the checkpoint (for example examples/data/stories260K.bin)
/// @return the configuration (norm_eps and rope_theta are llama2.c's fixed 1e-5 and 10000)
/// @throws rlhf::invalid_argument naming the file: unreadable, bad header, or a size different from
///         the one the header implies (the message gives both)
inline llama_config read_llama2c_config(const std::string& path) {
  std::uint64_t size = 0;
  auto in = detail::llama2c_open(path, size);
  const llama_config c = detail::llama2c_read_header(in, size, path);
  const std::uint64_t want = detail::llama2c_file_bytes(c);
  if (size != want) {
    // Name the first section the file does not fully hold, for truncated files.
    std::string where;
    std::uint64_t offset = detail::llama2c_header_bytes;
    for (const auto& s : detail::llama2c_sections(c)) {
      if (size < offset + 4 * s.count) {
        where = " (it ends inside '" + std::string(s.name) + "', which spans bytes [" + std::to_string(offset) + ", " +
                std::to_string(offset + 4 * s.count) + "))";
        break;
      }
      offset += 4 * s.count;
    }
    detail::llama2c_fail("rlhf::read_llama2c", path,
                         std::string(size < want ? "truncated" : "trailing bytes") + ": expected " +
                             std::to_string(want) + " bytes for the header's configuration (dim " +
                             std::to_string(c.dim) + ", hidden_dim " + std::to_string(c.hidden_dim) + ", n_layers " +
                             std::to_string(c.n_layers) + ", n_heads " + std::to_string(c.n_heads) + ", n_kv_heads " +
                             std::to_string(c.n_kv_heads) + ", vocab_size " + std::to_string(c.vocab_size) +
                             (c.shared_classifier ? " shared" : " separate classifier") + ", seq_len " +
                             std::to_string(c.seq_len) + "), the file has " + std::to_string(size) + where);
  }
  return c;
}

/// Reads a whole llama2.c checkpoint into host memory.
/// @param path the checkpoint
/// @return its configuration and tensors (the RoPE tables are skipped)
/// @throws rlhf::invalid_argument as read_llama2c_config does, or on a read error
inline llama2c_weights read_llama2c(const std::string& path) {
  llama2c_weights w;
  w.config = read_llama2c_config(path);
  std::uint64_t size = 0;
  auto in = detail::llama2c_open(path, size);
  in.seekg(static_cast<std::streamoff>(detail::llama2c_header_bytes));
  std::vector<float>* targets[] = {&w.token_embedding, &w.rms_att, &w.wq, &w.wk, &w.wv, &w.wo,       &w.rms_ffn,
                                   &w.w1,              &w.w2,      &w.w3, &w.rms_final, nullptr, nullptr, &w.wcls};
  std::size_t i = 0;
  for (const auto& s : detail::llama2c_sections(w.config)) {
    std::vector<float>* t = targets[i++];
    if (t == nullptr) {
      in.seekg(static_cast<std::streamoff>(4 * s.count), std::ios::cur);
      continue;
    }
    t->resize(static_cast<std::size_t>(s.count));
    in.read(reinterpret_cast<char*>(t->data()), static_cast<std::streamsize>(4 * s.count));
    if (!in) detail::llama2c_fail("rlhf::read_llama2c", path, std::string("read error in '") + s.name + "'");
  }
  return w;
}

/// Writes a llama2.c legacy checkpoint (the RoPE tables are written as llama2.c's exporter does:
/// cos and sin of pos * theta^(-2i / head_dim)). The inverse of read_llama2c.
/// @param path the file to write (replaced)
/// @param w the tensors; each must have the size the configuration implies (wcls empty when shared)
/// @throws rlhf::invalid_argument naming the tensor of the wrong size, or the file on a write error
inline void write_llama2c(const std::string& path, const llama2c_weights& w) {
  const llama_config& c = w.config;
  c.validate("rlhf::write_llama2c");
  const std::vector<float>* sources[] = {&w.token_embedding, &w.rms_att, &w.wq,        &w.wk,   &w.wv,
                                         &w.wo,              &w.rms_ffn, &w.w1,        &w.w2,   &w.w3,
                                         &w.rms_final,       nullptr,    nullptr,      &w.wcls};
  const auto sections = detail::llama2c_sections(c);
  for (std::size_t i = 0; i < sections.size(); ++i) {
    if (sources[i] != nullptr && sources[i]->size() != sections[i].count) {
      detail::throw_argument_error("rlhf::write_llama2c", std::string("w.") + sections[i].name,
                                   std::to_string(sections[i].count) + " elements", std::to_string(sources[i]->size()));
    }
  }
  if (c.shared_classifier && !w.wcls.empty()) {
    detail::throw_argument_error("rlhf::write_llama2c", "w.wcls", "empty (the configuration shares the classifier)",
                                 std::to_string(w.wcls.size()) + " elements");
  }
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) detail::llama2c_fail("rlhf::write_llama2c", path, "cannot open it for writing");
  const std::int32_t v = static_cast<std::int32_t>(c.vocab_size);
  const std::int32_t h[7] = {static_cast<std::int32_t>(c.dim),     static_cast<std::int32_t>(c.hidden_dim),
                             static_cast<std::int32_t>(c.n_layers), static_cast<std::int32_t>(c.n_heads),
                             static_cast<std::int32_t>(c.n_kv_heads), c.shared_classifier ? v : -v,
                             static_cast<std::int32_t>(c.seq_len)};
  out.write(reinterpret_cast<const char*>(h), sizeof(h));
  const std::size_t hd = c.head_dim();
  for (std::size_t i = 0; i < sections.size(); ++i) {
    if (sources[i] != nullptr) {
      out.write(reinterpret_cast<const char*>(sources[i]->data()),
                static_cast<std::streamsize>(sources[i]->size() * sizeof(float)));
      continue;
    }
    std::vector<float> table(c.seq_len * hd / 2);
    for (std::size_t p = 0; p < c.seq_len; ++p) {
      for (std::size_t k = 0; k < hd / 2; ++k) {
        const double angle = static_cast<double>(p) * std::pow(c.rope_theta, -2.0 * static_cast<double>(k) /
                                                                                  static_cast<double>(hd));
        table[p * (hd / 2) + k] = static_cast<float>(std::string(sections[i].name) == "freq_cis_real" ? std::cos(angle) : std::sin(angle));
      }
    }
    out.write(reinterpret_cast<const char*>(table.data()), static_cast<std::streamsize>(table.size() * sizeof(float)));
  }
  out.flush();
  if (!out) detail::llama2c_fail("rlhf::write_llama2c", path, "write error");
}

}  // namespace rlhf
