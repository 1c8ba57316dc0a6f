// The decode attention's parts (rlhf/backends/decode_attention_rows.hpp): the CUDA kernel's split of a
// (row, head) pair across a warp or a block of threads, replayed on the host with its order of sums, against
// the whole pair on one thread; ragged positions (a first token, a full cache), grouped heads, head sizes
// below and above the group.
#include "rlhf/backends/decode_attention_rows.hpp"

#include "split_rows_replay.hpp"
#include "test_support.hpp"

using namespace rlhf;
using namespace rlhf::test;

TEMPLATE_TEST_CASE("decode_attention_rows: pairs split across a warp or a block match one thread per pair",
                   "[backends][attention][decode][property]", float, double) {
  using T = TestType;
  using S = host_space;
  const double rtol = std::is_same_v<T, float> ? 1e-5 : 1e-13, atol = std::is_same_v<T, float> ? 1e-6 : 1e-14;
  auto g = rng(616);
  struct shape {
    std::size_t seq, n_heads, n_kv_heads, head_dim;
  };
  for (const shape s : {shape{1, 2, 1, 4}, shape{40, 4, 2, 3}, shape{300, 2, 2, 64}, shape{70, 8, 2, 260}}) {
    const std::size_t rows = 3, qc = s.n_heads * s.head_dim, kvc = s.n_kv_heads * s.head_dim;
    const std::vector<std::int32_t> positions{0, static_cast<std::int32_t>(s.seq / 2),
                                              static_cast<std::int32_t>(s.seq - 1)};
    const auto q = normal<T>(g, rows * qc), k = normal<T>(g, rows * s.seq * kvc), v = normal<T>(g, rows * s.seq * kvc);
    const auto run = [&](std::size_t threads) {
      std::vector<T> scores(rows * s.n_heads * s.seq, T(0)), out(rows * qc, std::numeric_limits<T>::quiet_NaN());
      const detail::decode_attention_rows<T, S> pairs{
          make_matrix_view(q.data(), rows, qc),
          make_matrix_view(k.data(), rows * s.seq, kvc),
          make_matrix_view(v.data(), rows * s.seq, kvc),
          make_vector_view(positions.data(), rows),
          make_matrix_view(scores.data(), rows * s.n_heads, s.seq),
          make_matrix_view(out.data(), rows, qc),
          s.seq,
          s.n_heads,
          s.n_heads / s.n_kv_heads,
          s.head_dim,
          1.0 / std::sqrt(static_cast<double>(s.head_dim))};
      if (threads == 0) {
        for (std::size_t i = 0; i < rows * s.n_heads; ++i) pairs(i);
      } else {
        replay_max_sum_then_write(pairs, rows * s.n_heads, threads);
      }
      return out;
    };
    const auto want = run(0);
    for (const std::size_t threads : {std::size_t{32}, std::size_t{256}}) {
      INFO("T " << s.seq << " Hq " << s.n_heads << " Hkv " << s.n_kv_heads << " hd " << s.head_dim << " threads "
                << threads);
      CHECK_THAT(run(threads), close_to<T>(want, rtol, atol));
    }
  }
}

TEST_CASE("decode_attention_rows: a single key attends to itself; the position count is checked",
          "[backends][attention][decode]") {
  // Position 0: one key, weight 1, out = v_0 whatever the scores.
  const std::vector<double> q{1, 2}, k{3, -4}, v{0.5, -1.5};
  const std::vector<std::int32_t> pos{0};
  std::vector<double> scores(1), out(2);
  const detail::decode_attention_rows<double, host_space> pair{make_matrix_view(q.data(), 1, 2),
                                                               make_matrix_view(k.data(), 1, 2),
                                                               make_matrix_view(v.data(), 1, 2),
                                                               make_vector_view(pos.data(), 1),
                                                               make_matrix_view(scores.data(), 1, 1),
                                                               make_matrix_view(out.data(), 1, 2),
                                                               /*seq_len*/ 1,
                                                               /*n_heads*/ 1,
                                                               /*group*/ 1,
                                                               /*head_dim*/ 2,
                                                               1.0 / std::sqrt(2.0)};
  pair(0);
  CHECK(out == std::vector<double>{0.5, -1.5});
  CHECK(scores[0] == 1.0);  // exp(s - max s) of the only key
  const detail::decode_count_bad_positions count{3};
  CHECK(count(0) == 0);
  CHECK(count(2) == 0);
  CHECK(count(3) == 1);
  CHECK(count(-1) == 1);
}
