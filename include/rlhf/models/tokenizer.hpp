/// @file tokenizer.hpp
/// @brief The llama2.c tokenizer: a sentencepiece-style vocabulary with merge scores, its file format,
///        greedy score-ordered BPE encoding and the reference program's decoding.
///
/// File format (little-endian, as llama2.c's tokenizer export writes it):
///
///     int32 max_token_length
///     vocab_size times: float32 score, int32 length, `length` bytes (the piece, not NUL-terminated)
///
/// The vocabulary size is not stored: it is the model's. Ids 0, 1 and 2 are `<unk>`, BOS and EOS;
/// ids 3..258 are the byte-fallback pieces `<0x00>`..`<0xFF>` (id = byte + 3). Sentencepiece's word
/// marker "▁" is stored as a plain space.
///
/// Encoding follows the reference program (llama2.c `run.c`, `encode`) step by step, so prompts get
/// the same ids as there: optional BOS; a dummy-prefix space piece when the text is non-empty (as
/// sentencepiece's `add_dummy_prefix`); one piece per UTF-8 code point, or its bytes as byte-fallback
/// ids when the code point is not in the vocabulary; then, repeatedly, the adjacent pair whose
/// concatenation is in the vocabulary with the highest score is merged (the leftmost pair on ties),
/// until no pair merges; optional EOS.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "rlhf/backends/view.hpp"
#include "rlhf/error.hpp"

namespace rlhf {

static_assert(std::endian::native == std::endian::little,
              "rlhf: llama2.c tokenizer files are little-endian; this reader does not byte-swap");

/// A llama2.c / sentencepiece-style vocabulary with BPE merge scores. Immutable after construction;
/// copyable; every member is safe to call concurrently.
class tokenizer {
 public:
  static constexpr token_type unk_id = 0;  ///< `<unk>`
  static constexpr token_type bos_id = 1;  ///< beginning of sequence
  static constexpr token_type eos_id = 2;  ///< end of sequence
  /// Id of the byte-fallback piece of byte 0 (`<0x00>`); byte c has id c + byte_fallback_offset.
  static constexpr token_type byte_fallback_offset = 3;

  tokenizer() = default;

  /// Builds a tokenizer from pieces and their merge scores (same length).
  /// @param pieces the vocabulary; pieces[id] is the text of token id ("▁" written as a space)
  /// @param scores merge priority of each piece: higher merges first
  /// @param max_token_length the longest piece in bytes; 0 computes it
  /// @throws rlhf::invalid_argument when the sizes differ, a piece is longer than max_token_length or
  ///         the vocabulary is larger than token_type can index
  tokenizer(std::vector<std::string> pieces, std::vector<float> scores, std::size_t max_token_length = 0)
      : pieces_(std::move(pieces)), scores_(std::move(scores)) {
    constexpr const char* fn = "rlhf::tokenizer";
    if (pieces_.size() != scores_.size()) {
      detail::throw_argument_error(fn, "scores", "size " + std::to_string(pieces_.size()) + " (same as 'pieces')",
                                   "size " + std::to_string(scores_.size()));
    }
    if (pieces_.size() > static_cast<std::size_t>(INT32_MAX)) {
      detail::throw_argument_error(fn, "pieces", "at most 2^31 - 1 pieces", std::to_string(pieces_.size()));
    }
    std::size_t longest = 0;
    for (const auto& p : pieces_) longest = std::max(longest, p.size());
    if (max_token_length == 0) max_token_length = longest;
    if (longest > max_token_length) {
      detail::throw_argument_error(fn, "max_token_length",
                                   "at least the longest piece (" + std::to_string(longest) + " bytes)",
                                   std::to_string(max_token_length));
    }
    max_token_length_ = max_token_length;
    build_index();
  }

  /// Reads a tokenizer file in llama2.c format.
  /// @param path the file (for example examples/data/tok512.bin)
  /// @param vocab_size the number of pieces to read (the model's vocabulary size); the file must end
  ///        right after them. 0 reads pieces until the end of the file.
  /// @throws rlhf::invalid_argument naming the file and the byte offset when the file cannot be opened,
  ///         is truncated, has trailing bytes, a negative length or a piece longer than max_token_length
  static tokenizer load(const std::string& path, std::size_t vocab_size = 0) {
    std::ifstream in(path, std::ios::binary);
    if (!in) detail::throw_argument_error("rlhf::tokenizer::load", "path", "a readable tokenizer file", "'" + path + "'");
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return parse(std::span<const char>(bytes.data(), bytes.size()), path, vocab_size);
  }

  /// Parses the bytes of a tokenizer file (see load). `name` names the source in error messages.
  static tokenizer parse(std::span<const char> bytes, const std::string& name, std::size_t vocab_size = 0) {
    std::size_t offset = 0;
    const auto fail = [&](const std::string& what) {
      throw invalid_argument("rlhf::tokenizer::load: file '" + name + "': " + what);
    };
    const auto read_i32 = [&](const char* what) {
      if (bytes.size() - offset < 4) {
        fail("truncated at byte offset " + std::to_string(offset) + ": expected 4 bytes (" + what + "), " +
             std::to_string(bytes.size() - offset) + " left");
      }
      std::int32_t v;
      std::memcpy(&v, bytes.data() + offset, 4);
      offset += 4;
      return v;
    };
    const auto read_f32 = [&](const char* what) {
      const std::int32_t bits = read_i32(what);
      float f;
      std::memcpy(&f, &bits, 4);
      return f;
    };
    const std::int32_t max_len = read_i32("int32 max_token_length");
    if (max_len <= 0) fail("max_token_length at byte offset 0 must be > 0, read " + std::to_string(max_len));
    std::vector<std::string> pieces;
    std::vector<float> scores;
    while (vocab_size == 0 ? offset < bytes.size() : pieces.size() < vocab_size) {
      const std::string id = std::to_string(pieces.size());
      const float score = read_f32("float32 score of token");
      const std::size_t length_at = offset;
      const std::int32_t len = read_i32("int32 length of token");
      if (len < 0 || len > max_len) {
        fail("token " + id + ": length at byte offset " + std::to_string(length_at) + " must be in [0, " +
             std::to_string(max_len) + "] (max_token_length), read " + std::to_string(len));
      }
      if (bytes.size() - offset < static_cast<std::size_t>(len)) {
        fail("truncated at byte offset " + std::to_string(offset) + ": expected " + std::to_string(len) +
             " bytes (text of token " + id + "), " + std::to_string(bytes.size() - offset) + " left");
      }
      pieces.emplace_back(bytes.data() + offset, static_cast<std::size_t>(len));
      scores.push_back(score);
      offset += static_cast<std::size_t>(len);
    }
    if (offset != bytes.size()) {
      fail("expected the file to end after " + std::to_string(vocab_size) + " tokens at byte offset " +
           std::to_string(offset) + ", but it holds " + std::to_string(bytes.size() - offset) + " more bytes");
    }
    return tokenizer(std::move(pieces), std::move(scores), static_cast<std::size_t>(max_len));
  }

  /// Number of pieces.
  std::size_t size() const { return pieces_.size(); }
  /// The longest piece in bytes (from the file's header).
  std::size_t max_token_length() const { return max_token_length_; }
  /// The text of token `id` as stored (a leading space stands for sentencepiece's "▁").
  const std::string& piece(token_type id) const { return pieces_[checked(id, "rlhf::tokenizer::piece", "id")]; }
  /// The merge score of token `id`.
  float score(token_type id) const { return scores_[checked(id, "rlhf::tokenizer::score", "id")]; }

  /// The id whose piece is exactly `text`, or -1. If several ids share a piece, the smallest.
  token_type find(std::string_view text) const {
    const auto it = index_.find(text);
    return it == index_.end() ? token_type(-1) : it->second;
  }

  /// Encodes text exactly as the llama2.c reference program does (see the file comment).
  /// @param text UTF-8 text (invalid UTF-8 is split and byte-encoded like the reference does)
  /// @param bos prepend BOS (id 1)
  /// @param eos append EOS (id 2)
  /// @return the token ids
  /// @note An embedded NUL byte ends the reference's C string; here it is encoded as its byte-fallback id.
  ///       If the vocabulary has no " " piece, the dummy prefix uses the byte-fallback id of ' '.
  std::vector<token_type> encode(std::string_view text, bool bos = true, bool eos = false) const {
    std::vector<token_type> tokens;
    tokens.reserve(text.size() + 3);
    if (bos) tokens.push_back(bos_id);
    if (!text.empty()) {
      // add_dummy_prefix: sentencepiece treats the text as if it started with "▁".
      const token_type space = find(" ");
      tokens.push_back(space >= 0 ? space : byte_token(' '));
    }
    // One piece per UTF-8 code point: a code point is a lead byte and up to 3 continuation bytes
    // (10xxxxxx); like the reference, a run is cut after 4 bytes.
    std::string cp;
    for (std::size_t i = 0; i < text.size(); ++i) {
      const auto c = static_cast<unsigned char>(text[i]);
      if ((c & 0xC0) != 0x80) cp.clear();
      cp.push_back(static_cast<char>(c));
      const bool next_is_continuation =
          i + 1 < text.size() && (static_cast<unsigned char>(text[i + 1]) & 0xC0) == 0x80;
      if (next_is_continuation && cp.size() < 4) continue;
      const token_type id = find(cp);
      if (id >= 0) {
        tokens.push_back(id);
      } else {
        for (const char byte : cp) tokens.push_back(byte_token(static_cast<unsigned char>(byte)));
      }
      cp.clear();
    }
    merge(tokens);
    if (eos) tokens.push_back(eos_id);
    return tokens;
  }

  /// The text the reference program prints for `token` following `prev_token`: the piece, without its
  /// leading space right after BOS (sentencepiece strips the dummy prefix), and byte-fallback pieces
  /// `<0xXX>` turned into the raw byte.
  /// @param prev_token the previous token (any value; only BOS matters)
  /// @param token a valid id
  /// @return a view of storage owned by the tokenizer
  std::string_view decode(token_type prev_token, token_type token) const {
    std::string_view p = pieces_[checked(token, "rlhf::tokenizer::decode", "token")];
    if (prev_token == bos_id && !p.empty() && p.front() == ' ') p.remove_prefix(1);
    if (p.size() == 6 && p.substr(0, 3) == "<0x" && p[5] == '>') {
      const int hi = hex_digit(p[3]), lo = hex_digit(p[4]);
      if (hi >= 0 && lo >= 0) return std::string_view(&byte_pieces_[static_cast<std::size_t>(hi * 16 + lo)], 1);
    }
    return p;
  }

  /// Whether the reference program prints this piece: it skips empty pieces and single bytes that are
  /// neither printable ASCII nor whitespace (control bytes, lone bytes of a split UTF-8 sequence).
  static bool printable(std::string_view piece) {
    if (piece.empty()) return false;
    if (piece.size() == 1) {
      const auto c = static_cast<unsigned char>(piece[0]);
      const bool print = c >= 0x20 && c <= 0x7E;
      const bool space = c == ' ' || (c >= '\t' && c <= '\r');
      return print || space;
    }
    return true;
  }

  /// The text the reference program prints for a generated sequence: for each token after the first,
  /// decode(previous, token) when printable. The first token is the context the sequence starts from
  /// (BOS for an empty prompt) and is not printed. The reference prints a final newline after the loop;
  /// that is not added here.
  std::string decode(std::span<const token_type> tokens) const {
    std::string out;
    for (std::size_t i = 1; i < tokens.size(); ++i) {
      const std::string_view p = decode(tokens[i - 1], tokens[i]);
      if (printable(p)) out.append(p);
    }
    return out;
  }

 private:
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::size_t max_token_length_ = 0;
  // Piece -> id, looked up by string_view (heterogeneous lookup).
  struct piece_hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::unordered_map<std::string, token_type, piece_hash, std::equal_to<>> index_;
  // byte_pieces_[c] is the one-byte string c, what a byte-fallback piece decodes to.
  char byte_pieces_[256] = {};

  void build_index() {
    index_.clear();
    index_.reserve(pieces_.size());
    for (std::size_t i = 0; i < pieces_.size(); ++i) index_.emplace(pieces_[i], static_cast<token_type>(i));
    for (int i = 0; i < 256; ++i) byte_pieces_[i] = static_cast<char>(static_cast<unsigned char>(i));
  }

 private:
  static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  }

  static token_type byte_token(unsigned char c) { return static_cast<token_type>(c) + byte_fallback_offset; }

  std::size_t checked(token_type id, const char* fn, const char* arg) const {
    if (id < 0 || static_cast<std::size_t>(id) >= pieces_.size()) {
      detail::throw_argument_error(fn, arg, "an id in [0, " + std::to_string(pieces_.size()) + ")",
                                   std::to_string(id));
    }
    return static_cast<std::size_t>(id);
  }

  // The id of piece(a) + piece(b) if the vocabulary holds it, else -1.
  token_type pair_id(token_type a, token_type b, std::string& scratch) const {
    const std::string& pa = pieces_[static_cast<std::size_t>(a)];
    const std::string& pb = pieces_[static_cast<std::size_t>(b)];
    if (pa.size() + pb.size() > max_token_length_) return -1;
    scratch.assign(pa).append(pb);
    return find(scratch);
  }

  // Greedy BPE as the reference does it: merge the best-scoring adjacent pair (leftmost on ties) until
  // none merges. The reference recomputes every pair after each merge; caching the pair ids and
  // recomputing only the two neighbours of a merge gives the same sequence of merges in O(n) per merge.
  // Pairs are formed over the whole sequence, BOS included, as in the reference.
  void merge(std::vector<token_type>& tokens) const {
    if (tokens.size() < 2) return;
    std::string scratch;
    std::vector<token_type> pair(tokens.size() - 1);
    for (std::size_t i = 0; i + 1 < tokens.size(); ++i) pair[i] = pair_id(tokens[i], tokens[i + 1], scratch);
    while (!pair.empty()) {
      // The reference starts from best_score = -1e10 and takes a pair only when its score is larger.
      float best = -1e10f;
      std::size_t best_i = pair.size();
      for (std::size_t i = 0; i < pair.size(); ++i) {
        if (pair[i] >= 0 && scores_[static_cast<std::size_t>(pair[i])] > best) {
          best = scores_[static_cast<std::size_t>(pair[i])];
          best_i = i;
        }
      }
      if (best_i == pair.size()) break;
      tokens[best_i] = pair[best_i];
      tokens.erase(tokens.begin() + static_cast<std::ptrdiff_t>(best_i) + 1);
      pair.erase(pair.begin() + static_cast<std::ptrdiff_t>(best_i));
      if (best_i > 0) pair[best_i - 1] = pair_id(tokens[best_i - 1], tokens[best_i], scratch);
      if (best_i < pair.size()) pair[best_i] = pair_id(tokens[best_i], tokens[best_i + 1], scratch);
    }
  }
};

}  // namespace rlhf
