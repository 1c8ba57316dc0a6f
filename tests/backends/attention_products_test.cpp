// The product formulation of causal attention (rlhf/backends/attention_products.hpp), the CUDA backend's
// algorithm, run on the host: each strided-batched product by a plain column-major loop with cuBLAS's
// semantics, the row passes on the reference backend (one thread per row) and as the CUDA backend's split-row
// kernels replay them (a warp or a block of threads per row, tests/backends/split_rows_replay.hpp), against
// the generic path of rlhf::causal_attention_forward / _backward. Grouped heads (every operand stride),
// several sequences, ragged lengths (an empty sequence; NaN in the padding keys and values, which the products
// must not read), T = 1, with saved probs and with the scratch, in blocks of queries of several sizes; and
// the logsumexp pair (forward and recomputing backward) in blocks against the generic logsumexp pair.
#include "rlhf/backends/attention_products.hpp"

#include <vector>

#include "rlhf/models/layers/attention.hpp"
#include "split_rows_replay.hpp"
#include "test_support.hpp"

using namespace rlhf;
using namespace rlhf::test;

namespace {

// C_i = alpha op(A_i) op(B_i) + beta C_i, column-major, accumulated in double; beta = 0 ignores C (as
// cuBLAS does: stale NaN must not leak).
template <class T>
void host_product(const detail::strided_product<T>& p) {
  for (std::size_t i = 0; i < p.batch; ++i) {
    const T* a = p.a + i * p.stride_a;
    const T* b = p.b + i * p.stride_b;
    T* c = p.c + i * p.stride_c;
    for (std::size_t col = 0; col < p.n; ++col) {
      for (std::size_t row = 0; row < p.m; ++row) {
        double acc = 0.0;
        for (std::size_t x = 0; x < p.k; ++x) {
          const double av = static_cast<double>(p.trans_a ? a[x + row * p.lda] : a[row + x * p.lda]);
          const double bv = static_cast<double>(p.trans_b ? b[col + x * p.ldb] : b[x + col * p.ldb]);
          acc += av * bv;
        }
        T& out = c[row + col * p.ldc];
        const double old = p.beta == T(0) ? 0.0 : static_cast<double>(p.beta) * static_cast<double>(out);
        out = static_cast<T>(static_cast<double>(p.alpha) * acc + old);
      }
    }
  }
}

// The row passes of cuda/causal_attention.cuh (attention_split_rows), replayed with `threads` per row; 0
// runs the default, one row per index.
struct replayed_row_pass {
  std::size_t threads;
  template <class T, class S>
  void operator()(const reference_backend& b, std::size_t count, std::size_t work,
                  const detail::attention_softmax_rows<T, S>& rows) const {
    if (threads == 0) return detail::attention_rows_by_index{}(b, count, work, rows);
    replay_max_sum_then_write(rows, count, threads);
  }
  template <class T, class S>
  void operator()(const reference_backend& b, std::size_t count, std::size_t work,
                  const detail::attention_softmax_backward_rows<T, S>& rows) const {
    if (threads == 0) return detail::attention_rows_by_index{}(b, count, work, rows);
    replay_sum_then_write(rows, count, threads);
  }
  template <class T, class S>
  void operator()(const reference_backend& b, std::size_t count, std::size_t work,
                  const detail::attention_recompute_backward_rows<T, S>& rows) const {
    if (threads == 0) return detail::attention_rows_by_index{}(b, count, work, rows);
    replay_sum_then_write(rows, count, threads);
  }
};

}  // namespace

TEMPLATE_TEST_CASE("attention as strided-batched products matches the generic path", "[backends][attention]", float,
                   double) {
  using T = TestType;
  const reference_backend b;
  const double rtol = std::is_same_v<T, float> ? 1e-4 : 1e-11, atol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
  const auto product = [](const detail::strided_product<T>& p) { host_product(p); };
  auto g = rng(96);
  struct shape {
    std::size_t batch, seq, n_heads, n_kv_heads, head_dim;
  };
  for (const shape s : {shape{3, 7, 4, 2, 3}, shape{2, 9, 6, 2, 4}, shape{2, 5, 3, 3, 2}, shape{2, 1, 2, 1, 2}}) {
    const std::size_t rows = s.batch * s.seq, qc = s.n_heads * s.head_dim, kc = s.n_kv_heads * s.head_dim;
    auto [q, k, v, d_out, lengths] =
        random_attention_inputs<T>(g, s.batch, s.seq, s.n_heads, s.n_kv_heads, s.head_dim);
    for (int with_lengths = 0; with_lengths < 2; ++with_lengths) {
      for (const std::size_t threads : {std::size_t{0}, std::size_t{32}, std::size_t{256}}) {
        INFO("B " << s.batch << " T " << s.seq << " Hq " << s.n_heads << " Hkv " << s.n_kv_heads << " hd " << s.head_dim
                  << " lengths " << with_lengths << " threads per row " << threads);
        const replayed_row_pass row_pass{threads};
        auto bq = to_backend(b, q, rows, qc), bk = to_backend(b, k, rows, kc), bv = to_backend(b, v, rows, kc);
        auto bd = to_backend(b, d_out, rows, qc);
        auto bl = to_backend(b, lengths);
        const vector_view<const std::int32_t, host_space> lv =
            with_lengths ? as_const(bl.view().flat()) : vector_view<const std::int32_t, host_space>{};
        const std::size_t prob_rows = s.batch * s.n_heads * s.seq;
        // The generic path.
        auto want_out = allocate<T>(b, rows, qc), want_probs = allocate<T>(b, prob_rows, s.seq);
        causal_attention_forward(b, as_const(bq.view()), as_const(bk.view()), as_const(bv.view()), s.batch, s.n_heads,
                                 s.n_kv_heads, want_out.view(), want_probs.view(), lv);
        auto want_dq = allocate<T>(b, rows, qc), want_dk = allocate<T>(b, rows, kc), want_dv = allocate<T>(b, rows, kc);
        causal_attention_backward(b, as_const(bq.view()), as_const(bk.view()), as_const(bv.view()),
                                  as_const(want_probs.view()), as_const(bd.view()), s.batch, s.n_heads, s.n_kv_heads,
                                  want_dq.view(), want_dk.view(), want_dv.view(), lv);
        // The products, outputs starting as NaN (beta = 0 must overwrite them), and with lengths, the key and
        // value rows past each length NaN too: the products must not read them (the generic path does not).
        const T nan = std::numeric_limits<T>::quiet_NaN();
        std::vector<T> k_pad = k, v_pad = v;
        if (with_lengths) {
          for (std::size_t bb = 0; bb < s.batch; ++bb) {
            for (std::size_t t = static_cast<std::size_t>(lengths[bb]); t < s.seq; ++t) {
              for (std::size_t c = 0; c < kc; ++c) k_pad[(bb * s.seq + t) * kc + c] = v_pad[(bb * s.seq + t) * kc + c] = nan;
            }
          }
        }
        auto pk = to_backend(b, k_pad, rows, kc), pv = to_backend(b, v_pad, rows, kc);
        // Blocks of 1 and 3 queries (a last block shorter than the others) and the default (all T here).
        for (const std::size_t block : {std::size_t{1}, std::size_t{3}, std::size_t{0}}) {
          INFO("block " << block);
          auto out = allocate_filled<T>(b, rows, qc, nan), online = allocate_filled<T>(b, rows, qc, nan);
          auto probs = allocate_filled<T>(b, prob_rows, s.seq, nan);
          detail::attention_forward_by_products<reference_backend, T>(
              b, product, row_pass, as_const(bq.view()), as_const(pk.view()), as_const(pv.view()), s.batch,
              s.n_heads, s.n_kv_heads, out.view(), probs.view(), lv, block);
          detail::attention_forward_by_products<reference_backend, T>(
              b, product, row_pass, as_const(bq.view()), as_const(pk.view()), as_const(pv.view()), s.batch,
              s.n_heads, s.n_kv_heads, online.view(), {}, lv, block);
          CHECK_THAT(to_host(b, out.view()), close_to<T>(to_host(b, want_out.view()), rtol, atol));
          CHECK_THAT(to_host(b, online.view()), close_to<T>(to_host(b, want_out.view()), rtol, atol));
          // Whole rows: exact zeros past each query's visible keys, whatever the block.
          CHECK_THAT(to_host(b, probs.view()), close_to<T>(to_host(b, want_probs.view()), rtol, atol));
          auto dq = allocate_filled<T>(b, rows, qc, nan), dk = allocate_filled<T>(b, rows, kc, nan),
               dv = allocate_filled<T>(b, rows, kc, nan);
          detail::attention_backward_by_products<reference_backend, T>(
              b, product, row_pass, as_const(bq.view()), as_const(pk.view()), as_const(pv.view()),
              as_const(probs.view()), as_const(bd.view()), s.batch, s.n_heads, s.n_kv_heads, dq.view(), dk.view(),
              dv.view(), lv, block);
          CHECK_THAT(to_host(b, dq.view()), close_to<T>(to_host(b, want_dq.view()), rtol, atol));
          CHECK_THAT(to_host(b, dk.view()), close_to<T>(to_host(b, want_dk.view()), rtol, atol));
          CHECK_THAT(to_host(b, dv.view()), close_to<T>(to_host(b, want_dv.view()), rtol, atol));
        }
      }
    }
  }
}

TEMPLATE_TEST_CASE("attention's logsumexp pair as blocked products matches the generic path", "[backends][attention]",
                   float, double) {
  using T = TestType;
  const reference_backend b;
  const double rtol = std::is_same_v<T, float> ? 1e-4 : 1e-11, atol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
  const auto product = [](const detail::strided_product<T>& p) { host_product(p); };
  auto g = rng(97);
  struct shape {
    std::size_t batch, seq, n_heads, n_kv_heads, head_dim;
  };
  for (const shape s : {shape{3, 7, 4, 2, 3}, shape{2, 9, 6, 2, 4}, shape{2, 1, 2, 1, 2}}) {
    const std::size_t rows = s.batch * s.seq, qc = s.n_heads * s.head_dim, kc = s.n_kv_heads * s.head_dim;
    auto [q, k, v, d_out, lengths] =
        random_attention_inputs<T>(g, s.batch, s.seq, s.n_heads, s.n_kv_heads, s.head_dim);
    const T nan = std::numeric_limits<T>::quiet_NaN();
    std::vector<T> k_pad = k, v_pad = v;  // padding keys and values NaN: the products must not read them
    for (std::size_t bb = 0; bb < s.batch; ++bb) {
      for (std::size_t t = static_cast<std::size_t>(lengths[bb]); t < s.seq; ++t) {
        for (std::size_t c = 0; c < kc; ++c) k_pad[(bb * s.seq + t) * kc + c] = v_pad[(bb * s.seq + t) * kc + c] = nan;
      }
    }
    auto bq = to_backend(b, q, rows, qc), bk = to_backend(b, k, rows, kc), bv = to_backend(b, v, rows, kc);
    auto pk = to_backend(b, k_pad, rows, kc), pv = to_backend(b, v_pad, rows, kc);
    auto bd = to_backend(b, d_out, rows, qc);
    auto bl = to_backend(b, lengths);
    const auto lv = as_const(bl.view().flat());
    const std::size_t lse_size = s.batch * s.n_heads * s.seq;
    auto want_out = allocate<T>(b, rows, qc), want_lse = allocate<T>(b, lse_size, 1);
    causal_attention_forward_logsumexp(b, as_const(bq.view()), as_const(bk.view()), as_const(bv.view()), s.batch,
                                       s.n_heads, s.n_kv_heads, want_out.view(), want_lse.view().flat(), lv);
    auto want_dq = allocate<T>(b, rows, qc), want_dk = allocate<T>(b, rows, kc), want_dv = allocate<T>(b, rows, kc);
    causal_attention_backward_recompute(b, as_const(bq.view()), as_const(bk.view()), as_const(bv.view()),
                                        as_const(want_lse.view().flat()), as_const(bd.view()), s.batch, s.n_heads,
                                        s.n_kv_heads, want_dq.view(), want_dk.view(), want_dv.view(), lv);
    // Blocks of 2 and 3 queries (a last block shorter than the others), one block of all T, the default.
    for (const std::size_t block : {std::size_t{2}, std::size_t{3}, s.seq, std::size_t{0}}) {
      for (const std::size_t threads : {std::size_t{0}, std::size_t{32}}) {
        INFO("B " << s.batch << " T " << s.seq << " Hq " << s.n_heads << " Hkv " << s.n_kv_heads << " hd "
                  << s.head_dim << " block " << block << " threads per row " << threads);
        const replayed_row_pass row_pass{threads};
        auto out = allocate_filled<T>(b, rows, qc, nan), lse = allocate_filled<T>(b, lse_size, 1, nan);
        detail::attention_forward_logsumexp_by_products<reference_backend, T>(
            b, product, row_pass, as_const(bq.view()), as_const(pk.view()), as_const(pv.view()), s.batch, s.n_heads,
            s.n_kv_heads, out.view(), lse.view().flat(), lv, block);
        CHECK_THAT(to_host(b, out.view()), close_to<T>(to_host(b, want_out.view()), rtol, atol));
        CHECK_THAT(to_host(b, lse.view()), close_to<T>(to_host(b, want_lse.view()), rtol, atol));
        auto dq = allocate_filled<T>(b, rows, qc, nan), dk = allocate_filled<T>(b, rows, kc, nan),
             dv = allocate_filled<T>(b, rows, kc, nan);
        detail::attention_backward_recompute_by_products<reference_backend, T>(
            b, product, row_pass, as_const(bq.view()), as_const(pk.view()), as_const(pv.view()),
            as_const(want_lse.view().flat()), as_const(bd.view()), s.batch, s.n_heads, s.n_kv_heads, dq.view(),
            dk.view(), dv.view(), lv, block);
        CHECK_THAT(to_host(b, dq.view()), close_to<T>(to_host(b, want_dq.view()), rtol, atol));
        CHECK_THAT(to_host(b, dk.view()), close_to<T>(to_host(b, want_dk.view()), rtol, atol));
        CHECK_THAT(to_host(b, dv.view()), close_to<T>(to_host(b, want_dv.view()), rtol, atol));
      }
    }
  }
  CHECK(detail::attention_query_block_rows(32, 4096) == 128);  // 2^24 / (32 * 4096)
  CHECK(detail::attention_query_block_rows(32, 100) == 100);   // never more than T
  CHECK(detail::attention_query_block_rows(64, 65536) == 64);  // never fewer than 64
}
