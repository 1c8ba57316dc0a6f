// A reward model trained on real human comparisons: the FineGrainedRLHF feedback file (Wu et al. 2023;
// 399 questions, 4 model answers each, human labels for all 6 pairs) in InstructGPT's shape: each
// question's answers form one K = 4 ranking, and all its comparisons are one batch element.
//
// The questions are split 80 / 20 (deterministically, by a hash of the question); the RM (the pretrained
// stories260K trunk with a fresh scalar head) trains on the rankings of the first part, and the program
// prints its pairwise accuracy on the held-out part's labelled pairs beside the accuracy of a length-only
// baseline (the longer answer wins) and of chance.
//
//   human_preferences [--file PATH] [--data DIR] [--epochs N] [--max-tokens N] [--threads N]
//
// Without the file (it lives in ../shared/data/prefs/, outside the project), the program says so and
// exits with code 0 after printing how to get it.
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "rlhf/data/human_preferences.hpp"
#include "rlhf/data/prompt_split.hpp"
#include "rlhf/rlhf.hpp"

#ifndef RLHF_EXAMPLE_DATA_DIR
#define RLHF_EXAMPLE_DATA_DIR "examples/data"
#endif
#ifndef RLHF_SHARED_PREFS
#define RLHF_SHARED_PREFS "../shared/data/prefs/fgrlhf_feedback_train.json"
#endif

int main(int argc, char** argv) {
  std::string file = RLHF_SHARED_PREFS, data = RLHF_EXAMPLE_DATA_DIR;
  std::size_t epochs = 3, max_tokens = 320;
  int threads = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--file") file = value;
    else if (flag == "--data") data = value;
    else if (flag == "--epochs") epochs = std::stoul(value);
    else if (flag == "--max-tokens") max_tokens = std::stoul(value);
    else if (flag == "--threads") threads = std::stoi(value);
    else {
      std::fprintf(stderr, "usage: human_preferences [--file PATH] [--data DIR] [--epochs N] [--max-tokens N] [--threads N]\n");
      return 2;
    }
  }
  if (!std::filesystem::exists(file)) {
    std::printf("human_preferences: %s not found; this example needs the FineGrainedRLHF feedback file "
                "(see ../shared/data/README.md); pass --file PATH. Skipped.\n",
                file.c_str());
    return 0;
  }
  try {
    using backend = rlhf::eigen_backend;
    const backend b{threads};
    const auto tok = rlhf::tokenizer::load(data + "/tok512.bin");
    const auto questions = rlhf::read_fgrlhf_feedback(file);
    // Held-out split by question (each question is its own "user").
    std::vector<rlhf::fgrlhf_question> train, test;
    for (const auto& q : questions) (rlhf::stable_hash(q.question, 7) % 5 == 0 ? test : train).push_back(q);
    const auto encode = [&](const std::string& text, bool bos) {
      auto t = tok.encode(text, bos);
      if (t.size() > max_tokens / 2) t.resize(max_tokens / 2);  // keep prompt and answer within the window
      return t;
    };
    std::vector<rlhf::ranked_responses> rankings;
    for (std::size_t i = 0; i < train.size(); ++i) {
      const auto r = rlhf::fgrlhf_ranking(train[i], "q" + std::to_string(i));
      if (!r) continue;  // all four answers tie
      rlhf::ranked_responses e;
      e.prompt = encode(train[i].question, true);
      for (const auto& a : r->responses) e.responses.push_back(encode(a, false));
      e.ranks.assign(r->ranks.begin(), r->ranks.end());
      rankings.push_back(std::move(e));
    }
    // Held-out pairs as K = 2 rankings (the chosen answer first).
    const auto pairs = rlhf::fgrlhf_preference_pairs(test);
    std::vector<rlhf::ranked_responses> held_out;
    // The length baseline learns one bit on the training pairs: whether the longer or the shorter answer
    // tends to win; then it predicts the held-out pairs by length alone (equal lengths count half).
    const auto length_accuracy = [](const std::vector<rlhf::preference_pair>& ps, bool longer_wins) {
      double right = 0;
      for (const auto& p : ps) {
        if (p.chosen.size() == p.rejected.size()) right += 0.5;
        else right += (p.chosen.size() > p.rejected.size()) == longer_wins ? 1.0 : 0.0;
      }
      return ps.empty() ? 0.0 : right / static_cast<double>(ps.size());
    };
    const auto train_pairs = rlhf::fgrlhf_preference_pairs(train);
    const bool longer_wins = length_accuracy(train_pairs, true) >= 0.5;
    for (const auto& p : pairs) {
      held_out.push_back({encode(p.prompt, true), {encode(p.chosen, false), encode(p.rejected, false)}, {0, 1}});
    }
    std::printf("FineGrainedRLHF feedback: %zu questions -> %zu training rankings (K = 4), %zu held-out questions "
                "with %zu labelled pairs\n",
                questions.size(), rankings.size(), test.size(), held_out.size());

    auto pretrained = rlhf::load_llama2c(b, data + "/stories260K.bin");
    auto rm = rlhf::llama_reward_model<backend, float>::from_language_model(b, pretrained, 1);
    rlhf::adamw<backend, float> opt(rlhf::adamw_options{2e-4, 0.9, 0.95, 1e-8, 0.0});
    rlhf::reward_trainer_options ro;
    ro.max_length = max_tokens;
    rlhf::reward_trainer trainer(rm, opt, ro);
    const auto before = trainer.evaluate(b, held_out);
    rlhf::progress bar("RM", epochs * ((rankings.size() + 7) / 8));
    std::mt19937_64 g(3);
    std::size_t step = 0;
    for (std::size_t epoch = 0; epoch < epochs; ++epoch) {
      std::shuffle(rankings.begin(), rankings.end(), g);
      for (std::size_t i = 0; i < rankings.size(); i += 8) {
        const auto s = trainer.step(b, std::span<const rlhf::ranked_responses>(rankings).subspan(i, std::min<std::size_t>(8, rankings.size() - i)));
        char msg[64];
        std::snprintf(msg, sizeof msg, "loss %.3f  acc %.2f", s.loss, s.accuracy);
        bar.update(++step, msg);
      }
    }
    bar.finish();
    const auto after = trainer.evaluate(b, held_out);
    std::printf("\nheld-out pairwise accuracy\n| predictor | accuracy |\n|---|---|\n");
    std::printf("| reward model before training | %.3f |\n", before.accuracy);
    std::printf("| reward model after %zu epochs | %.3f |\n", epochs, after.accuracy);
    std::printf("| length only (the %s answer wins, as on the training pairs) | %.3f |\n",
                longer_wins ? "longer" : "shorter", length_accuracy(pairs, longer_wins));
    std::printf("| chance | 0.500 |\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
