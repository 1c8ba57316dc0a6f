// The demo's labeler: a program standing in for human labelers on the positive-sentiment continuation
// task (Ziegler et al. 2019). The trainers never see inside it: it only writes files (demonstrations,
// rankings) that the pipeline then reads like human data.
//
// - Its judgment of a text is the sum of the valences of its words. The reference scale is AFINN-165
//   (integer valences -5..+5, F. Å. Nielsen); that deterministic score is what the report uses to compare
//   policies ("the labeler's score").
// - When it ranks or picks, it disagrees like people do: each word's valence is drawn from the raw
//   ratings that ten human raters gave the word in the VADER lexicon (Hutto & Gilbert 2014; -4..+4,
//   rescaled to AFINN's range), a fresh draw per judgment; words VADER lacks keep their AFINN value.
#pragma once

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <fstream>
#include <map>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "rlhf/data/json.hpp"
#include "rlhf/error.hpp"

namespace demo {

class sentiment_labeler {
 public:
  /// Loads afinn165.json and vader_lexicon.txt from `dir`.
  sentiment_labeler(const std::string& dir, std::uint64_t seed) : rng_(seed) {
    std::ifstream a(dir + "/afinn165.json");
    if (!a) throw rlhf::invalid_argument("sentiment_labeler: cannot open " + dir + "/afinn165.json");
    std::stringstream text;
    text << a.rdbuf();
    const rlhf::json_value lexicon = rlhf::parse_json(text.str());  // kept alive for the loop
    for (const auto& [word, v] : lexicon.as_object()) afinn_[word] = v.as_double();
    std::ifstream vf(dir + "/vader_lexicon.txt");
    if (!vf) throw rlhf::invalid_argument("sentiment_labeler: cannot open " + dir + "/vader_lexicon.txt");
    std::string line;
    while (std::getline(vf, line)) {
      // token <TAB> mean <TAB> std <TAB> [r1, ..., r10]; tokens may contain brackets (emoticons).
      const auto tab1 = line.find('\t');
      const auto tab3 = line.rfind('\t');
      if (tab1 == std::string::npos || tab3 == tab1) continue;
      const auto open = line.find('[', tab3);
      const auto close = line.find(']', tab3);
      if (open == std::string::npos || close == std::string::npos) continue;
      std::vector<double> ratings;
      std::stringstream list(line.substr(open + 1, close - open - 1));
      std::string item;
      while (std::getline(list, item, ',')) ratings.push_back(std::stod(item) * 5.0 / 4.0);  // -4..4 -> -5..5
      if (!ratings.empty()) vader_[line.substr(0, tab1)] = std::move(ratings);
    }
  }

  /// The lower-cased words of a text (letters and apostrophes).
  static std::vector<std::string> words(const std::string& text) {
    std::vector<std::string> out;
    std::string w;
    for (const char c : text) {
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '\'') {
        w += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      } else if (!w.empty()) {
        out.push_back(w);
        w.clear();
      }
    }
    if (!w.empty()) out.push_back(w);
    return out;
  }

  /// The reference score: sum of AFINN valences.
  double score(const std::string& text) const {
    double s = 0;
    for (const auto& w : words(text)) {
      const auto it = afinn_.find(w);
      if (it != afinn_.end()) s += it->second;
    }
    return s;
  }

  /// One noisy judgment: each scored word's valence drawn from one of its human raters.
  double judge(const std::string& text) {
    double s = 0;
    for (const auto& w : words(text)) {
      const auto v = vader_.find(w);
      if (v != vader_.end()) {
        std::uniform_int_distribution<std::size_t> pick(0, v->second.size() - 1);
        s += v->second[pick(rng_)];
      } else if (const auto a = afinn_.find(w); a != afinn_.end()) {
        s += a->second;
      }
    }
    return s;
  }

  /// Ranks continuations of a prompt by one noisy judgment each: rank 0 is the best; equal judgments
  /// tie (an rlhf::labeler; the prompt itself does not matter to this labeler).
  std::vector<std::int64_t> rank(const std::string& /*prompt*/, const std::vector<std::string>& texts) {
    std::vector<double> j;
    for (const auto& t : texts) j.push_back(judge(t));
    std::vector<std::int64_t> ranks(texts.size());
    for (std::size_t i = 0; i < texts.size(); ++i) {
      std::int64_t r = 0;
      for (std::size_t k = 0; k < texts.size(); ++k) r += j[k] > j[i];
      ranks[i] = r;
    }
    return ranks;
  }

  /// The index of the text it likes best (one noisy judgment each; first on ties).
  std::size_t best(const std::vector<std::string>& texts) {
    std::size_t best = 0;
    double top = -1e300;
    for (std::size_t i = 0; i < texts.size(); ++i) {
      const double j = judge(texts[i]);
      if (j > top) top = j, best = i;
    }
    return best;
  }

 private:
  std::unordered_map<std::string, double> afinn_;
  std::unordered_map<std::string, std::vector<double>> vader_;
  std::mt19937_64 rng_;
};

}  // namespace demo
