// llama2.c legacy checkpoints: the header and layout of stories260K.bin, write/read round trips,
// truncation at every section (and inside the header), bad headers, trailing bytes, and loading into
// a llama_model (tensor placement checked against the file's layout).
#include "rlhf/models/llama2c_checkpoint.hpp"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "models/llama_test_data.hpp"
#include "rlhf/models/llama.hpp"
#include "test_support.hpp"

using namespace rlhf;
using namespace rlhf::test;

namespace {

std::filesystem::path temp_file(const std::string& name) {
  return unique_temp_path("llama2c_" + name);
}

llama_config tiny_config(bool shared) {
  llama_config c;
  c.dim = 4;
  c.hidden_dim = 6;
  c.n_layers = 2;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.vocab_size = 5;
  c.seq_len = 3;
  c.shared_classifier = shared;
  return c;
}

// Tensors filled with distinct values: element i of tensor k is k * 1000 + i, so a misplaced slice shows.
llama2c_weights numbered_weights(const llama_config& c) {
  llama2c_weights w;
  w.config = c;
  const std::size_t D = c.dim, F = c.hidden_dim, L = c.n_layers, V = c.vocab_size, kv = c.kv_dim();
  std::vector<float>* t[] = {&w.token_embedding, &w.rms_att, &w.wq, &w.wk, &w.wv, &w.wo,       &w.rms_ffn,
                             &w.w1,              &w.w2,      &w.w3, &w.rms_final, &w.wcls};
  const std::size_t n[] = {V * D, L * D, L * D * D, L * kv * D, L * kv * D, L * D * D, L * D,
                           L * F * D, L * D * F, L * F * D, D, c.shared_classifier ? 0 : V * D};
  for (std::size_t k = 0; k < 12; ++k) {
    t[k]->resize(n[k]);
    for (std::size_t i = 0; i < n[k]; ++i) (*t[k])[i] = static_cast<float>(k * 1000 + i);
  }
  return w;
}

std::vector<char> file_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::vector<char>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::filesystem::path& p, const std::vector<char>& bytes, std::size_t n) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(n));
}

}  // namespace

TEST_CASE("llama2c: stories260K.bin has the documented header and exact size", "[models][llama2c][data]") {
  const std::string path = data_file("stories260K.bin", stories260k_sha256);
  if (path.empty()) return;
  const llama_config c = read_llama2c_config(path);
  CHECK(c.dim == 64);
  CHECK(c.hidden_dim == 172);
  CHECK(c.n_layers == 5);
  CHECK(c.n_heads == 8);
  CHECK(c.n_kv_heads == 4);
  CHECK(c.vocab_size == 512);
  CHECK(c.seq_len == 512);
  CHECK(c.shared_classifier);
  CHECK(c.kv_dim() == 32);
  // 28 header bytes + 4 * (parameters + 2 RoPE tables of 512 * 8 / 2): 260K parameters, hence the name.
  CHECK(c.parameter_count() == 260032u);
  CHECK(std::filesystem::file_size(path) == 28 + 4 * (260032u + 2 * 512 * 4));
  const llama2c_weights w = read_llama2c(path);
  CHECK(w.token_embedding.size() == 512u * 64);
  CHECK(w.wk.size() == 5u * 32 * 64);
  CHECK(w.w2.size() == 5u * 64 * 172);
  CHECK(w.rms_final.size() == 64u);
  CHECK(w.wcls.empty());
  // The first float after the header is the embedding's first element; check it against the raw bytes.
  const auto raw = read_bytes(path);
  float first = 0, last_norm = 0;
  std::memcpy(&first, raw.data() + 28, 4);
  const std::size_t final_norm_end = 28 + 4 * (260032u);  // rms_final is the last parameter tensor
  std::memcpy(&last_norm, raw.data() + final_norm_end - 4, 4);
  CHECK(w.token_embedding[0] == first);
  CHECK(w.rms_final.back() == last_norm);
}

TEST_CASE("llama2c: write then read round-trips every tensor, shared and separate classifier",
          "[models][llama2c]") {
  for (const bool shared : {true, false}) {
    const llama_config c = tiny_config(shared);
    const auto w = numbered_weights(c);
    const auto path = temp_file(shared ? "shared.bin" : "separate.bin");
    write_llama2c(path.string(), w);
    CHECK(std::filesystem::file_size(path) == 28 + 4 * (c.parameter_count() + 2 * c.seq_len * c.head_dim() / 2));
    // The header stores vocab_size negated for a separate classifier.
    const auto bytes = file_bytes(path);
    std::int32_t header[7];
    std::memcpy(header, bytes.data(), sizeof(header));
    CHECK(header[5] == (shared ? 5 : -5));
    CHECK(header[4] == 1);
    const auto r = read_llama2c(path.string());
    CHECK(r.config.shared_classifier == shared);
    CHECK(r.config.kv_dim() == 2);
    CHECK(r.token_embedding == w.token_embedding);
    CHECK(r.rms_att == w.rms_att);
    CHECK(r.wq == w.wq);
    CHECK(r.wk == w.wk);
    CHECK(r.wv == w.wv);
    CHECK(r.wo == w.wo);
    CHECK(r.rms_ffn == w.rms_ffn);
    CHECK(r.w1 == w.w1);
    CHECK(r.w2 == w.w2);
    CHECK(r.w3 == w.w3);
    CHECK(r.rms_final == w.rms_final);
    CHECK(r.wcls == w.wcls);
    // The RoPE table written after rms_final: freq_cis_real[pos][i] = cos(pos * 10000^(-2i/hd)), hd = 2.
    float cos1 = 0;
    const std::size_t table = 28 + 4 * (c.parameter_count() - (shared ? 0 : c.vocab_size * c.dim));
    std::memcpy(&cos1, bytes.data() + table + 4, 4);  // pos 1, i = 0
    CHECK(cos1 == static_cast<float>(std::cos(1.0)));
    std::filesystem::remove(path);
  }
  llama2c_weights bad = numbered_weights(tiny_config(true));
  bad.wk.pop_back();
  CHECK_THROWS_WITH(write_llama2c(temp_file("bad.bin").string(), bad),
                    Catch::Contains("rlhf::write_llama2c") && Catch::Contains("'w.wk'"));
  bad = numbered_weights(tiny_config(true));
  bad.wcls.assign(20, 0.f);
  CHECK_THROWS_WITH(write_llama2c(temp_file("bad.bin").string(), bad), Catch::Contains("'w.wcls'"));
}

TEST_CASE("llama2c: truncated files are rejected naming the file, the expected size and the section",
          "[models][llama2c]") {
  for (const bool shared : {true, false}) {
    const llama_config c = tiny_config(shared);
    const auto good = temp_file("good.bin");
    write_llama2c(good.string(), numbered_weights(c));
    const auto bytes = file_bytes(good);
    const auto cut = temp_file("cut.bin");
    // Section boundaries (in bytes) of the tiny configuration, in file order.
    const std::vector<std::pair<const char*, std::size_t>> sections = {
        {"token_embedding", 20 * 4}, {"rms_att", 8 * 4}, {"wq", 32 * 4},      {"wk", 16 * 4},
        {"wv", 16 * 4},              {"wo", 32 * 4},     {"rms_ffn", 8 * 4},  {"w1", 48 * 4},
        {"w2", 48 * 4},              {"w3", 48 * 4},     {"rms_final", 4 * 4}, {"freq_cis_real", 3 * 4},
        {"freq_cis_imag", 3 * 4},    {"wcls", 20 * 4}};
    std::size_t offset = 28;
    for (const auto& [name, size] : sections) {
      if (std::string(name) == "wcls" && shared) break;
      // Cut one byte into the section, and at its last float.
      for (const std::size_t n : {offset + 1, offset + size - 4}) {
        write_bytes(cut, bytes, n);
        INFO("cut at " << n << " bytes, inside " << name);
        CHECK_THROWS_AS(read_llama2c(cut.string()), rlhf::invalid_argument);
        CHECK_THROWS_WITH(read_llama2c(cut.string()),
                          Catch::Contains("rlhf::read_llama2c") && Catch::Contains(cut.string()) &&
                              Catch::Contains("truncated") && Catch::Contains("expected " + std::to_string(bytes.size())) &&
                              Catch::Contains("the file has " + std::to_string(n)) &&
                              Catch::Contains(std::string("inside '") + name + "'"));
      }
      offset += size;
    }
    CHECK(offset == bytes.size());
    // Inside the header.
    for (const std::size_t n : {0u, 3u, 27u}) {
      write_bytes(cut, bytes, n);
      CHECK_THROWS_WITH(read_llama2c_config(cut.string()),
                        Catch::Contains(cut.string()) && Catch::Contains("truncated") && Catch::Contains("28 bytes"));
    }
    // Trailing bytes.
    std::vector<char> longer = bytes;
    longer.push_back('\0');
    write_bytes(cut, longer, longer.size());
    CHECK_THROWS_WITH(read_llama2c(cut.string()), Catch::Contains("trailing bytes"));
    std::filesystem::remove(cut);
    std::filesystem::remove(good);
  }
  CHECK_THROWS_WITH(read_llama2c("/nonexistent/model.bin"),
                    Catch::Contains("rlhf::read_llama2c") && Catch::Contains("/nonexistent/model.bin"));
}

TEST_CASE("llama2c: bad header fields are rejected by name", "[models][llama2c]") {
  const auto good = temp_file("hdr.bin");
  write_llama2c(good.string(), numbered_weights(tiny_config(true)));
  const auto bytes = file_bytes(good);
  const auto bad = temp_file("hdr_bad.bin");
  const auto with_field = [&](int field, std::int32_t value) {
    std::vector<char> b = bytes;
    std::memcpy(b.data() + 4 * field, &value, 4);
    write_bytes(bad, b, b.size());
  };
  with_field(0, 0);
  CHECK_THROWS_WITH(read_llama2c(bad.string()), Catch::Contains("'dim'") && Catch::Contains("read 0"));
  with_field(2, -3);
  CHECK_THROWS_WITH(read_llama2c(bad.string()), Catch::Contains("'n_layers'") && Catch::Contains("read -3"));
  with_field(5, 0);
  CHECK_THROWS_WITH(read_llama2c(bad.string()), Catch::Contains("'vocab_size'"));
  with_field(4, 3);  // n_heads = 2 is not a multiple of 3
  CHECK_THROWS_WITH(read_llama2c(bad.string()), Catch::Contains("invalid header") && Catch::Contains("'n_kv_heads'"));
  with_field(6, 1000000);  // seq_len: the RoPE tables no longer fit the file
  CHECK_THROWS_WITH(read_llama2c(bad.string()), Catch::Contains("truncated") && Catch::Contains("freq_cis_real"));
  std::filesystem::remove(bad);
  std::filesystem::remove(good);
}

TEMPLATE_LIST_TEST_CASE("llama2c: load_llama2c places every tensor where the file layout says", "[models][llama2c]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  for (const bool shared : {true, false}) {
    const llama_config c = tiny_config(shared);
    const auto w = numbered_weights(c);
    const auto path = temp_file(shared ? "load_s.bin" : "load_x.bin");
    write_llama2c(path.string(), w);
    auto m = load_llama2c<T>(b, path.string());
    CHECK(m.config().shared_classifier == shared);
    const auto slice = [](const std::vector<float>& v, std::size_t layer, std::size_t n) {
      return std::vector<double>(v.begin() + static_cast<std::ptrdiff_t>(layer * n),
                                 v.begin() + static_cast<std::ptrdiff_t>((layer + 1) * n));
    };
    CHECK(cast<double>(to_host(b, m.parameter("tok_embeddings"))) == cast<double>(w.token_embedding));
    for (std::size_t l = 0; l < c.n_layers; ++l) {
      const std::string p = "layers." + std::to_string(l) + ".";
      INFO("layer " << l);
      CHECK(cast<double>(to_host(b, m.parameter(p + "attention_norm"))) == slice(w.rms_att, l, 4));
      CHECK(cast<double>(to_host(b, m.parameter(p + "attention.wq"))) == slice(w.wq, l, 16));
      CHECK(cast<double>(to_host(b, m.parameter(p + "attention.wk"))) == slice(w.wk, l, 8));
      CHECK(cast<double>(to_host(b, m.parameter(p + "attention.wv"))) == slice(w.wv, l, 8));
      CHECK(cast<double>(to_host(b, m.parameter(p + "attention.wo"))) == slice(w.wo, l, 16));
      CHECK(cast<double>(to_host(b, m.parameter(p + "ffn_norm"))) == slice(w.rms_ffn, l, 4));
      CHECK(cast<double>(to_host(b, m.parameter(p + "feed_forward.w1"))) == slice(w.w1, l, 24));
      CHECK(cast<double>(to_host(b, m.parameter(p + "feed_forward.w2"))) == slice(w.w2, l, 24));
      CHECK(cast<double>(to_host(b, m.parameter(p + "feed_forward.w3"))) == slice(w.w3, l, 24));
    }
    CHECK(cast<double>(to_host(b, m.parameter("norm"))) == cast<double>(w.rms_final));
    if (!shared) CHECK(cast<double>(to_host(b, m.parameter("output"))) == cast<double>(w.wcls));
    if (shared) CHECK_THROWS_WITH(m.parameter("output"), Catch::Contains("'output'"));
    std::filesystem::remove(path);
  }
}
