// The llama2.c tokenizer: file parsing and its errors, encoding against a literal port of the reference
// program's loop, hand-worked merges, decoding and round trips, on a tiny vocabulary and on tok512.bin.
#include "rlhf/models/tokenizer.hpp"

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "models/llama_test_data.hpp"
#include "test_support.hpp"

using namespace rlhf;
using namespace rlhf::test;

namespace {

// The reference program's encode, transcribed as literally as C++ allows: linear-search lookups, and
// every adjacent pair recomputed after each merge (no caching). The library's version must agree.
std::vector<token_type> oracle_encode(const tokenizer& tok, const std::string& text, bool bos, bool eos) {
  const auto lookup = [&](const std::string& s) -> token_type {
    for (std::size_t i = 0; i < tok.size(); ++i)
      if (tok.piece(static_cast<token_type>(i)) == s) return static_cast<token_type>(i);
    return -1;
  };
  std::vector<token_type> t;
  if (bos) t.push_back(1);
  if (!text.empty()) t.push_back(lookup(" "));
  std::string buf;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) buf.clear();
    buf.push_back(text[i]);
    if (i + 1 < text.size() && (static_cast<unsigned char>(text[i + 1]) & 0xC0) == 0x80 && buf.size() < 4) continue;
    const token_type id = lookup(buf);
    if (id != -1) {
      t.push_back(id);
    } else {
      for (const char c : buf) t.push_back(static_cast<token_type>(static_cast<unsigned char>(c)) + 3);
    }
    buf.clear();
  }
  for (;;) {
    float best = -1e10f;
    token_type best_id = -1;
    std::size_t best_i = 0;
    bool found = false;
    for (std::size_t i = 0; i + 1 < t.size(); ++i) {
      const token_type id = lookup(tok.piece(t[i]) + tok.piece(t[i + 1]));
      if (id != -1 && tok.score(id) > best) {
        best = tok.score(id);
        best_id = id;
        best_i = i;
        found = true;
      }
    }
    if (!found) break;
    t[best_i] = best_id;
    t.erase(t.begin() + static_cast<std::ptrdiff_t>(best_i) + 1);
  }
  if (eos) t.push_back(2);
  return t;
}

// A tiny vocabulary without byte-fallback pieces: ids 0-2 special, then " ", a, b, c and merges.
//   id:  0 <unk>  1 <s>  2 </s>  3 " "  4 a  5 b  6 c  7 ab  8 bc  9 " a"
tokenizer tiny(float score_ab, float score_bc) {
  return tokenizer({"<unk>", "\n<s>\n", "\n</s>\n", " ", "a", "b", "c", "ab", "bc", " a"},
                   {0, 0, 0, -10, -11, -12, -13, score_ab, score_bc, -5});
}

std::filesystem::path temp_file(const std::string& name) {
  return unique_temp_path("tokenizer_" + name);
}

void write_file(const std::filesystem::path& p, const std::vector<char>& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

template <class X>
void append(std::vector<char>& out, X x) {
  char b[sizeof(X)];
  std::memcpy(b, &x, sizeof(X));
  out.insert(out.end(), b, b + sizeof(X));
}

}  // namespace

TEST_CASE("tokenizer: merges the best-scoring pair first, the leftmost on ties", "[models][tokenizer]") {
  // "abc" -> [<s>, " ", a, b, c]. Pairs: " a" (-5), ab, bc; "<s> " and " ab"... are not pieces.
  // ab = bc = -1: tie, the leftmost (ab) merges: [<s>, " ", ab, c]; " ab" and "abc" are not pieces: done.
  CHECK(tiny(-1, -1).encode("abc") == std::vector<token_type>{1, 3, 7, 6});
  // bc = -0.5 beats ab: [<s>, " ", a, bc]; then only " a" (-5) merges: [<s>, " a", bc].
  CHECK(tiny(-1, -0.5f).encode("abc") == std::vector<token_type>{1, 9, 8});
  // ab and bc both below " a": " a" first: [<s>, " a", b, c]; then bc (-6; " ab" is not a piece).
  CHECK(tiny(-7, -6).encode("abc") == std::vector<token_type>{1, 9, 8});
  // BOS / EOS flags; the empty text gets no dummy prefix.
  CHECK(tiny(-1, -1).encode("", true, true) == std::vector<token_type>{1, 2});
  CHECK(tiny(-1, -1).encode("", false, false).empty());
  CHECK(tiny(-1, -1).encode("c", false, true) == std::vector<token_type>{3, 6, 2});
  // The dummy prefix is encoded even when the text starts with a space; spaces do not merge with each other.
  CHECK(tiny(-1, -1).encode(" a", false) == std::vector<token_type>{3, 9});
}

TEST_CASE("tokenizer: decode strips the space after BOS and maps byte pieces to bytes", "[models][tokenizer]") {
  std::vector<std::string> pieces = {"<unk>", "\n<s>\n", "\n</s>\n"};
  std::vector<float> scores = {0, 0, 0};
  for (int c = 0; c < 256; ++c) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", c);
    pieces.emplace_back(name);
    scores.push_back(0);
  }
  pieces.emplace_back(" hi");
  scores.push_back(-1);
  const tokenizer tok(pieces, scores);
  const token_type hi = 259;
  CHECK(tok.decode(tokenizer::bos_id, hi) == "hi");
  CHECK(tok.decode(5, hi) == " hi");
  CHECK(tok.decode(hi, 0x0A + 3) == "\n");
  CHECK(tok.decode(hi, 0xFF + 3) == std::string(1, '\xFF'));
  CHECK(tok.decode(hi, 0x00 + 3) == std::string(1, '\0'));
  // The printed text skips lone non-printable bytes, as the reference's safe_printf does.
  CHECK_FALSE(tokenizer::printable(std::string(1, '\x01')));
  CHECK_FALSE(tokenizer::printable(std::string(1, '\xF0')));
  CHECK(tokenizer::printable("\n"));
  CHECK(tokenizer::printable("\t"));
  CHECK_FALSE(tokenizer::printable(""));
  const std::vector<token_type> seq = {1, hi, 0x01 + 3, 0x0A + 3, hi, 0xF0 + 3, 0x21 + 3};
  CHECK(tok.decode(seq) == "hi\n hi!");
  // Unknown code points fall back to bytes: "é" = C3 A9 -> ids 0xC3 + 3, 0xA9 + 3 (after the dummy " "
  // byte, since this vocabulary has no " " piece).
  CHECK(tok.encode("\xC3\xA9", false) == std::vector<token_type>{0x20 + 3, 0xC3 + 3, 0xA9 + 3});
  CHECK_THROWS_WITH(tok.decode(1, 260), Catch::Contains("rlhf::tokenizer::decode") && Catch::Contains("'token'"));
  CHECK_THROWS_WITH(tok.decode(1, -1), Catch::Contains("[0, 260)"));
}

TEST_CASE("tokenizer: file parsing rejects truncation at every byte, naming the file and offset",
          "[models][tokenizer]") {
  std::vector<char> file;
  append(file, std::int32_t(3));
  const std::vector<std::pair<std::string, float>> toks = {{"ab", -1.5f}, {"", 0.f}, {"xyz", 2.f}};
  for (const auto& [s, score] : toks) {
    append(file, score);
    append(file, static_cast<std::int32_t>(s.size()));
    file.insert(file.end(), s.begin(), s.end());
  }
  const auto path = temp_file("good.bin");
  write_file(path, file);
  const tokenizer tok = tokenizer::load(path.string());
  REQUIRE(tok.size() == 3);
  CHECK(tok.max_token_length() == 3);
  CHECK(tok.piece(0) == "ab");
  CHECK(tok.piece(1).empty());
  CHECK(tok.piece(2) == "xyz");
  CHECK(tok.score(0) == -1.5f);
  CHECK(tok.score(2) == 2.f);
  CHECK(tok.find("xyz") == 2);
  CHECK(tok.find("zz") == -1);
  CHECK(tokenizer::load(path.string(), 3).size() == 3);
  CHECK_THROWS_WITH(tokenizer::load(path.string(), 2), Catch::Contains("end after 2 tokens"));
  CHECK_THROWS_WITH(tokenizer::load(path.string(), 4), Catch::Contains("truncated"));

  // Every strict prefix that does not end on a token boundary is truncated; the message names the
  // file and the byte offset where data ran out.
  const std::vector<std::size_t> boundaries = {4, 4 + 8 + 2, 4 + 8 + 2 + 8, file.size()};
  for (std::size_t n = 0; n < file.size(); ++n) {
    if (std::find(boundaries.begin(), boundaries.end(), n) != boundaries.end()) continue;
    const auto cut = temp_file("cut.bin");
    write_file(cut, std::vector<char>(file.begin(), file.begin() + static_cast<std::ptrdiff_t>(n)));
    INFO("prefix of " << n << " bytes");
    CHECK_THROWS_AS(tokenizer::load(cut.string()), rlhf::invalid_argument);
    CHECK_THROWS_WITH(tokenizer::load(cut.string()), Catch::Contains("rlhf::tokenizer::load") &&
                                                         Catch::Contains(cut.string()) &&
                                                         Catch::Contains("byte offset"));
    std::filesystem::remove(cut);
  }
  // A negative length or one beyond max_token_length is rejected, with its offset.
  std::vector<char> bad = file;
  const std::int32_t too_long = 4;
  std::memcpy(bad.data() + 4 + 4, &too_long, 4);
  write_file(path, bad);
  CHECK_THROWS_WITH(tokenizer::load(path.string()), Catch::Contains("byte offset 8") && Catch::Contains("read 4"));
  CHECK_THROWS_WITH(tokenizer::load("/nonexistent/tok.bin"),
                    Catch::Contains("rlhf::tokenizer::load") && Catch::Contains("/nonexistent/tok.bin"));
  std::filesystem::remove(path);
  CHECK_THROWS_WITH(tokenizer({"a", "b"}, {0.f}), Catch::Contains("'scores'"));
  CHECK_THROWS_WITH(tokenizer({"abc"}, {0.f}, 2), Catch::Contains("'max_token_length'"));
}

TEST_CASE("tokenizer: tok512.bin encodes like the reference program", "[models][tokenizer][data]") {
  const std::string path = data_file("tok512.bin", tok512_sha256);
  if (path.empty()) return;
  const tokenizer tok = tokenizer::load(path, 512);
  REQUIRE(tok.size() == 512);
  CHECK(tok.max_token_length() == 7);
  CHECK(tok.piece(1) == "\n<s>\n");
  CHECK(tok.piece(3) == "<0x00>");
  CHECK(tok.piece(258) == "<0xFF>");
  CHECK(tok.find(" ") == 410);
  // Worked out from the vocabulary: " Once" (403), " upon" (407), " a" (261) and " time" (378) are
  // pieces, and no two of them concatenate to a piece.
  CHECK(tok.encode("Once upon a time") == std::vector<token_type>{1, 403, 407, 261, 378});
  // " Lily" (317), "'" (439), "s" (419): "'s" is not a piece.
  CHECK(tok.encode("Lily's") == std::vector<token_type>{1, 317, 439, 419});
  // "\n" is not a piece: byte fallback <0x0A> = 10 + 3; " hi" is not a piece, " h" (270) + "i" (417).
  CHECK(tok.encode("hi\nthere", true, true) == std::vector<token_type>{1, 270, 417, 13, 413, 260, 276, 2});
  // é (485) and € (503) are pieces; the emoji is not: its 4 bytes fall back to <0xF0> <0x9F> <0x98> <0x80>.
  CHECK(tok.encode("h\xC3\xA9llo\xE2\x82\xAC \xF0\x9F\x98\x80") ==
        std::vector<token_type>{1, 270, 485, 306, 414, 503, 410, 0xF0 + 3, 0x9F + 3, 0x98 + 3, 0x80 + 3});

  // Random texts built from pieces, letters, punctuation, whitespace, UTF-8 and stray bytes agree with
  // the literal port of the reference loop.
  auto g = rng(31);
  const std::vector<std::string> atoms = {"a", "e", " ", "  ", ".", ",", "\n", "\t", "Lily", " the", "T", "om",
                                          "\xC3\xA9", "\xE2\x80\x9C", "\xF0\x9F\x98\x80", "\x80", "\xC3", "!", "'s"};
  std::uniform_int_distribution<std::size_t> pick(0, tok.size() - 1), pick_atom(0, atoms.size() - 1), len(0, 25);
  for (int trial = 0; trial < 150; ++trial) {
    std::string text;
    const std::size_t n = len(g);
    for (std::size_t i = 0; i < n; ++i) {
      if (g() % 2 == 0) {
        const std::string& p = tok.piece(static_cast<token_type>(pick(g)));
        if (p.find('\n') == std::string::npos || p.size() == 1) text += p;
      } else {
        text += atoms[pick_atom(g)];
      }
    }
    const bool bos = g() % 4 != 0, eos = g() % 3 == 0;
    INFO("text: " << text);
    CHECK(tok.encode(text, bos, eos) == oracle_encode(tok, text, bos, eos));
  }
}

TEST_CASE("tokenizer: decode(encode(text)) round-trips printable text with tok512.bin", "[models][tokenizer][data]") {
  const std::string path = data_file("tok512.bin", tok512_sha256);
  if (path.empty()) return;
  const tokenizer tok = tokenizer::load(path, 512);
  for (const std::string text : {"Once upon a time, there was a little girl named Lily.",
                                 "  leading spaces\nand\ttabs\n\n", "\xE2\x80\x9CQuotes\xE2\x80\x9D \xC3\xA9t\xC3\xA9",
                                 "x", "Sue went to the park. She said, \"Hi!\""}) {
    INFO(text);
    const auto ids = tok.encode(text, true, false);
    CHECK(tok.decode(ids) == text);
    // Decoding without BOS keeps the dummy space.
    const auto no_bos = tok.encode(text, false, false);
    std::string joined;
    for (std::size_t i = 0; i < no_bos.size(); ++i) joined += tok.decode(-1, no_bos[i]);
    CHECK(joined == " " + text);
  }
}
