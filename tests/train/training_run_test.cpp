// The loop behind every fit(): the data order is a pure function of (seed, step); checkpoints appear
// atomically in the documented layout; a run interrupted at any step and resumed gives the uninterrupted
// run's states and metrics file; bad options and foreign checkpoints are rejected with clear errors.
// The trainers' own fit() tests (sft, reward, ppo) run the same checks on real models.
#include "rlhf/train/training_run.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "temp_files.hpp"
#include "test_support.hpp"

using namespace rlhf;
using namespace rlhf::test;

namespace {

std::string read_text(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// A toy trainer: its state is a running sum over the items of the data order, saved as a text file.
struct toy_trainer {
  std::vector<double> data;
  double state = 0;
  run_result fit(const run_options& run) {
    epoch_order order(data.size(), run.seed);
    const std::size_t total = run.epochs * order.batches_per_epoch(run.batch_size);
    return detail::run_training_loop(
        "toy::fit", run, "toy", total,
        [&](std::size_t s) {
          double batch_sum = 0;
          for (const std::size_t i : order.epoch_batch(run.batch_size, s)) batch_sum += data[i];
          state = state * 0.5 + batch_sum;  // order-sensitive: any other batch order gives another state
          return metrics_row{{"state", state}, {"batch_sum", batch_sum}};
        },
        [&](const std::filesystem::path& dir) {
          std::ofstream(dir / "toy.txt") << std::hexfloat << state;
        },
        [&](const std::filesystem::path& dir) {
          std::ifstream in(dir / "toy.txt");
          std::string text;
          in >> text;
          state = std::strtod(text.c_str(), nullptr);
        });
  }
};

toy_trainer make_toy() {
  toy_trainer t;
  for (int i = 0; i < 10; ++i) t.data.push_back(1.0 + i * i);
  return t;
}

}  // namespace

TEST_CASE("epoch_order: every epoch is a permutation fixed by (seed, epoch); batches cover it", "[train][run]") {
  epoch_order a(10, 7), b(10, 7), c(10, 8);
  std::vector<std::vector<std::size_t>> epochs;
  for (std::size_t e = 0; e < 3; ++e) {
    const auto p = a.epoch(e);
    CHECK(std::set<std::size_t>(p.begin(), p.end()).size() == 10);
    CHECK(*std::max_element(p.begin(), p.end()) == 9);
    epochs.push_back(p);
  }
  CHECK(epochs[0] != epochs[1]);
  CHECK(b.epoch(2) == epochs[2]);  // no history needed: epoch 2 first
  CHECK(b.epoch(0) == epochs[0]);
  CHECK(c.epoch(0) != epochs[0]);
  // Batches of 4 over 10 items: 4, 4, 2, then the next epoch.
  CHECK(a.batches_per_epoch(4) == 3);
  CHECK(a.epoch_batch(4, 0) == std::vector<std::size_t>(epochs[0].begin(), epochs[0].begin() + 4));
  CHECK(a.epoch_batch(4, 2) == std::vector<std::size_t>(epochs[0].begin() + 8, epochs[0].end()));
  CHECK(a.epoch_batch(4, 3) == std::vector<std::size_t>(epochs[1].begin(), epochs[1].begin() + 4));
  // The endless stream: batch 2 of size 4 holds items 8, 9 of epoch 0 and 0, 1 of epoch 1.
  const std::vector<std::size_t> want{epochs[0][8], epochs[0][9], epochs[1][0], epochs[1][1]};
  CHECK(a.stream_batch(4, 2) == want);
  epoch_order one(1, 3);
  CHECK(one.stream_batch(3, 5) == std::vector<std::size_t>{0, 0, 0});
}

TEST_CASE("run_training_loop: metrics, checkpoint layout, and resumption equal to the uninterrupted run",
          "[train][run][checkpoint]") {
  temp_dir dir;
  run_options run;
  run.epochs = 3;
  run.batch_size = 4;  // 3 steps per epoch, 9 in all
  run.seed = 11;
  run.show_progress = false;
  run.metrics_path = dir / "straight.csv";
  toy_trainer straight = make_toy();
  const run_result whole = straight.fit(run);
  CHECK(whole.total_steps == 9);
  CHECK(whole.steps_done == 9);
  CHECK(whole.finished);
  CHECK(whole.resumed_from == 0);
  REQUIRE(whole.history.size() == 9);
  CHECK(whole.history[0][0] == std::pair<std::string, double>{"step", 1.0});
  CHECK(whole.last("state") == straight.state);
  CHECK(std::isnan(whole.last("absent")));
  const std::string straight_csv = read_text(dir / "straight.csv");
  CHECK(straight_csv.rfind("step,state,batch_sum\n1,", 0) == 0);

  // Interrupted after step 5 with checkpoints every 2 steps and none at the end (as a killed process):
  // the resumed run starts from step 4, repeats step 5, and ends where the straight run did.
  for (const std::string ext : {".csv", ".jsonl"}) {
    INFO("metrics " << ext);
    run_options part = run;
    part.metrics_path = dir / ("resumed" + ext);
    part.checkpoint_dir = dir / ("ckpt" + ext);
    part.checkpoint_every = 2;
    part.checkpoint_at_end = false;
    part.stop_after = 5;
    {
      toy_trainer first = make_toy();
      const run_result r = first.fit(part);
      CHECK(r.steps_done == 5);
      CHECK_FALSE(r.finished);
      CHECK(read_text(part.checkpoint_dir / "latest") == "step-000004\n");
      const auto names = [&] {
        std::vector<std::string> out;
        for (const auto& e : std::filesystem::directory_iterator(part.checkpoint_dir)) out.push_back(e.path().filename().string());
        std::sort(out.begin(), out.end());
        return out;
      }();
      CHECK(names == std::vector<std::string>{"latest", "step-000004"});  // the older one and no .partial left
    }
    part.stop_after = 0;
    part.checkpoint_at_end = true;
    toy_trainer second = make_toy();
    const run_result r = second.fit(part);
    CHECK(r.resumed_from == 4);
    CHECK(r.steps_done == 9);
    CHECK(r.history.size() == 5);
    CHECK(second.state == straight.state);
    CHECK(read_text(part.checkpoint_dir / "latest") == "step-000009\n");
    if (ext == ".csv") {
      CHECK(read_text(part.metrics_path) == straight_csv);
    } else {
      const std::string jsonl = read_text(part.metrics_path);
      CHECK(std::count(jsonl.begin(), jsonl.end(), '\n') == 9);
      CHECK(jsonl.find("{\"step\":5,") != std::string::npos);
      CHECK(jsonl.find("{\"step\":5,", jsonl.find("{\"step\":5,") + 1) == std::string::npos);  // step 5 once
    }
    // Resuming a finished run does nothing more.
    toy_trainer third = make_toy();
    const run_result again = third.fit(part);
    CHECK(again.resumed_from == 9);
    CHECK(again.history.empty());
    CHECK(third.state == straight.state);
    // resume = false starts over.
    part.resume = false;
    toy_trainer fresh = make_toy();
    CHECK(fresh.fit(part).resumed_from == 0);
    CHECK(fresh.state == straight.state);
  }
}

TEST_CASE("run_training_loop: bad options and foreign checkpoints are rejected", "[train][run][errors]") {
  temp_dir dir;
  run_options run;
  run.show_progress = false;
  run.checkpoint_every = 2;
  toy_trainer t = make_toy();
  CHECK_THROWS_WITH(t.fit(run), Catch::Contains("toy::fit") && Catch::Contains("'run.checkpoint_dir'"));
  // A checkpoint of a longer run than this one.
  run.checkpoint_dir = dir / "ckpt";
  run.epochs = 2;
  run.batch_size = 5;
  t.fit(run);
  run.epochs = 1;
  toy_trainer u = make_toy();
  CHECK_THROWS_WITH(u.fit(run), Catch::Contains("toy::fit") && Catch::Contains("at most 2 steps") &&
                                    Catch::Contains("one of 4 steps"));
  // 'latest' naming nothing.
  std::ofstream(dir / "ckpt" / "latest") << "step-000099\n";
  CHECK_THROWS_WITH(u.fit(run), Catch::Contains("'latest' naming a checkpoint directory") && Catch::Contains("step-000099"));
}
