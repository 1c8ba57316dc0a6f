// RMSNorm's row and column steps (rlhf/backends/rms_norm_rows.hpp): the CUDA kernels' split rows (a warp or a
// block of threads per row, replayed on the host with their order of sums) and the chunked weight gradient
// against the generic path, on ragged widths around the warp and block sizes; a hand-computed chunk count;
// aliasing (out = x, d_x = d_out) under the split.
#include "rlhf/backends/rms_norm_rows.hpp"

#include "rlhf/models/layers/rms_norm.hpp"
#include "split_rows_replay.hpp"
#include "test_support.hpp"

using namespace rlhf;
using namespace rlhf::test;

TEST_CASE("rms_norm_rows: the chunk count of the weight gradient, hand-computed", "[backends][rms_norm]") {
  STATIC_REQUIRE(detail::rms_norm_weight_grad_chunk == 64);
  CHECK(detail::rms_norm_weight_grad_chunk_count(0) == 0);
  CHECK(detail::rms_norm_weight_grad_chunk_count(1) == 1);
  CHECK(detail::rms_norm_weight_grad_chunk_count(64) == 1);
  CHECK(detail::rms_norm_weight_grad_chunk_count(65) == 2);
  CHECK(detail::rms_norm_weight_grad_chunk_count(640) == 10);
}

TEMPLATE_TEST_CASE(
    "rms_norm_rows: rows split across a warp or a block match "
    "the generic path, in place too",
    "[backends][rms_norm][property]", float, double) {
  using T = TestType;
  const reference_backend b;
  using S = host_space;
  const double rtol = std::is_same_v<T, float> ? 2e-6 : 1e-13, atol = std::is_same_v<T, float> ? 1e-6 : 1e-14;
  auto g = rng(412);
  // Widths below, at and above a warp (32) and a block (256) of threads, and past the warp-per-row limit.
  for (const std::size_t d : {1, 5, 31, 32, 33, 255, 256, 300, 1025, 1500}) {
    for (const std::size_t threads : {std::size_t{32}, std::size_t{256}}) {
      INFO("D " << d << " threads per row " << threads);
      const std::size_t n = 3;
      const auto x = normal<T>(g, n * d, 0.0, 2.0), w = uniform<T>(g, d, 0.5, 1.5), gout = normal<T>(g, n * d);
      auto bx = to_backend(b, x, n, d), bw = to_backend(b, w), bg = to_backend(b, gout, n, d);
      auto want = allocate<T>(b, n, d), want_inv = allocate<T>(b, 1, n), want_dx = allocate<T>(b, n, d);
      rms_norm_forward(b, as_const(bx.view()), as_const(bw.view().flat()), want.view(), want_inv.view().flat());
      rms_norm_backward(b, as_const(bx.view()), as_const(bw.view().flat()), as_const(want_inv.view().flat()),
                        as_const(bg.view()), want_dx.view(), vector_view<T, S>{});
      // Forward into a buffer that starts as NaN (every element must be written), then in place (out = x).
      auto out = allocate_filled<T>(b, n, d, std::numeric_limits<T>::quiet_NaN());
      auto inv = allocate_filled<T>(b, 1, n, std::numeric_limits<T>::quiet_NaN());
      replay_sum_then_write(detail::rms_norm_forward_row<T, S>{as_const(bx.view()), as_const(bw.view().flat()),
                                                               out.view(), inv.view().flat(), 1e-5},
                            n, threads);
      CHECK_THAT(to_host(b, out.view()), close_to<T>(to_host(b, want.view()), rtol, atol));
      CHECK_THAT(to_host(b, inv.view()), close_to<T>(to_host(b, want_inv.view()), rtol, atol));
      auto in_place = to_backend(b, x, n, d);
      replay_sum_then_write(
          detail::rms_norm_forward_row<T, S>{
              as_const(in_place.view()), as_const(bw.view().flat()), in_place.view(), {}, 1e-5},
          n, threads);
      CHECK_THAT(to_host(b, in_place.view()), close_to<T>(to_host(b, want.view()), rtol, atol));
      // Backward in place over d_out.
      auto dx = to_backend(b, gout, n, d);
      replay_sum_then_write(
          detail::rms_norm_backward_row<T, S>{as_const(bx.view()), as_const(bw.view().flat()),
                                              as_const(want_inv.view().flat()), as_const(dx.view()), dx.view()},
          n, threads);
      CHECK_THAT(to_host(b, dx.view()), close_to<T>(to_host(b, want_dx.view()), rtol, atol));
    }
  }
}

TEMPLATE_LIST_TEST_CASE(
    "rms_norm_rows: the chunked weight gradient matches "
    "the column sums, rows around the chunk",
    "[backends][rms_norm][property]", all_configs) {
  using T = typename TestType::value;
  using S = typename decltype(TestType::make())::memory_space;
  const auto b = TestType::make();
  const double rtol = std::is_same_v<T, float> ? 1e-5 : 1e-13, atol = std::is_same_v<T, float> ? 1e-5 : 1e-13;
  auto g = rng(413);
  for (const std::size_t n : {1, 63, 64, 65, 200}) {
    for (const std::size_t d : {1, 7, 33}) {
      INFO("N " << n << " D " << d);
      const auto x = normal<T>(g, n * d), gout = normal<T>(g, n * d), inv = uniform<T>(g, n, 0.5, 2.0);
      const auto start = normal<T>(g, d);  // the gradient is added to what d_weight holds
      auto bx = to_backend(b, x, n, d), bg = to_backend(b, gout, n, d), binv = to_backend(b, inv);
      auto want = to_backend(b, start), got = to_backend(b, start);
      b.for_each_index(d, detail::rms_norm_weight_grad_column<T, S>{as_const(bx.view()), as_const(binv.view().flat()),
                                                                    as_const(bg.view()), want.view().flat()});
      const std::size_t chunks = detail::rms_norm_weight_grad_chunk_count(n);
      auto partial = allocate<double>(b, chunks, d);
      b.for_each_index(chunks * d,
                       detail::rms_norm_weight_grad_chunks<T, S>{as_const(bx.view()), as_const(binv.view().flat()),
                                                                 as_const(bg.view()), partial.view().data});
      b.for_each_index(d, detail::rms_norm_weight_grad_fold<T, S>{partial.view().data, chunks, got.view().flat()});
      CHECK_THAT(to_host(b, got.view()), close_to<T>(to_host(b, want.view()), rtol, atol));
      // A naive oracle in double too: the column sums themselves are right.
      std::vector<double> oracle(d);
      for (std::size_t j = 0; j < d; ++j) {
        oracle[j] = static_cast<double>(start[j]);
        for (std::size_t r = 0; r < n; ++r)
          oracle[j] +=
              static_cast<double>(gout[r * d + j]) * static_cast<double>(inv[r]) * static_cast<double>(x[r * d + j]);
      }
      CHECK_THAT(to_host(b, got.view()), close_to<T>(oracle, rtol, atol));
    }
  }
}
