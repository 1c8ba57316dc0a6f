// The CUDA backend on a GPU: the conformance suite (every primitive and hot-path algorithm held to the
// reference backend, which runs the hand-written kernels), cuBLAS GEMM for every transposition and shape,
// the token log-prob (float, double, bfloat16 logits), GAE, one-pass advantages, PPO-clip, value-loss, ranking-loss, RMSNorm, attention (training and decode) and embedding-gradient kernels and the Llama model's forward and backward against the reference on ragged, filtered, masked rows, streams, and the stream-ordered buffers.
// Built by nvcc whenever CUDA is found; labelled `gpu`; exits 77 (ctest: skipped) when no GPU is present.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "rlhf/advantages/gae.hpp"
#include "rlhf/advantages/kl_penalized_advantages.hpp"
#include "rlhf/advantages/kl_penalized_rewards.hpp"
#include "rlhf/backends/cuda.cuh"
#include "rlhf/backends/memory.hpp"
#include "rlhf/backends/reference.hpp"
#include "rlhf/losses/ppo_clip_loss.hpp"
#include "rlhf/losses/ranking_loss.hpp"
#include "rlhf/losses/value_loss.hpp"
#include "rlhf/models/llama.hpp"
#include "rlhf/ops/token_logprobs.hpp"
#include "rlhf/testing/conformance.hpp"
#include "cuda_test_support.hpp"

namespace {

using rlhf::test::check_close;
using rlhf::test::expect;
using rlhf::test::failures;

// Each kernel is found by its algorithm's dispatch: a signature that drifted from the hook's call would
// silently fall back to the generic path, so the calls are checked here at compile time.
template <class T>
constexpr bool kernels_found = requires(const rlhf::cuda_backend& b, rlhf::matrix_view<const T, rlhf::cuda_space> cm,
                                        rlhf::matrix_view<T, rlhf::cuda_space> m,
                                        rlhf::matrix_view<const rlhf::mask_type, rlhf::cuda_space> mm,
                                        rlhf::vector_view<const rlhf::token_type, rlhf::cuda_space> tok,
                                        rlhf::vector_view<const rlhf::mask_type, rlhf::cuda_space> vm,
                                        rlhf::vector_view<T, rlhf::cuda_space> v, rlhf::vector_view<const T, rlhf::cuda_space> cv,
                                        rlhf::vector_view<const double, rlhf::cuda_space> w, const T x, double d, double& out,
                                        std::size_t& n, rlhf::masked_moments& moments,
                                        rlhf::matrix_view<const std::int32_t, rlhf::cuda_space> ranks,
                                        rlhf::vector_view<const std::int32_t, rlhf::cuda_space> counts,
                                        rlhf::matrix_view<double, rlhf::cuda_space> scratch, bool flag) {
  rlhf_specialized_gae(b, cm, cm, mm, x, x, m, m);
  rlhf_specialized_token_logprobs(b, cm, tok, vm, v, v, v, d);
  rlhf_specialized_token_logprobs_backward(b, cm, tok, vm, cv, cv, cv, cv, m, d);
  rlhf_specialized_ppo_clip_loss(b, cm, cm, cm, mm, w, m, d, d, d, d, out, out, out, out, out, out, out);
  rlhf_specialized_k1_kl_penalized_advantages(b, cm, cm, cm, mm, cv, m, m, m, m, x, 0, x, x, out, n, out, n, moments);
  rlhf_specialized_kl_penalized_rewards(b, cm, mm, cv, m, x, 0, out, n, out, n);
  rlhf_specialized_k1_kl_penalized_rewards(b, cm, cm, m, mm, cv, m, x, 0, out, n, out, n);
  rlhf_specialized_ranking_loss(b, cm, ranks, counts, m, scratch, d, d, flag, flag);
  rlhf_specialized_clipped_value_loss(b, cm, cm, cm, mm, w, m, d, out, out, out, out, out, out);
  rlhf_specialized_causal_attention_forward(b, cm, cm, cm, n, n, n, m, m, counts);
  rlhf_specialized_causal_attention_backward(b, cm, cm, cm, cm, cm, n, n, n, m, m, m, counts);
  rlhf_specialized_causal_attention_forward_logsumexp(b, cm, cm, cm, n, n, n, m, v, counts);
  rlhf_specialized_causal_attention_backward_recompute(b, cm, cm, cm, cv, cm, n, n, n, m, m, m, counts);
  rlhf_specialized_rms_norm_forward(b, cm, cv, m, v, d);
  rlhf_specialized_rms_norm_backward(b, cm, cv, cv, cm, m, v);
  rlhf_specialized_embedding_backward(b, tok, cm, m);
  rlhf_specialized_causal_attention_decode(b, rlhf::detail::decode_attention_rows<T, rlhf::cuda_space>{});
};
// bfloat16 logits, float outputs.
constexpr bool bf16_kernels_found =
    requires(const rlhf::cuda_backend& b, rlhf::matrix_view<const rlhf::bfloat16, rlhf::cuda_space> cl,
             rlhf::matrix_view<rlhf::bfloat16, rlhf::cuda_space> l, rlhf::vector_view<const rlhf::token_type, rlhf::cuda_space> tok,
             rlhf::vector_view<const rlhf::mask_type, rlhf::cuda_space> vm, rlhf::vector_view<float, rlhf::cuda_space> v,
             rlhf::vector_view<const float, rlhf::cuda_space> cv, double d) {
      rlhf_specialized_token_logprobs(b, cl, tok, vm, v, v, v, d);
      rlhf_specialized_token_logprobs_backward(b, cl, tok, vm, cv, cv, cv, cv, l, d);
    };
static_assert(bf16_kernels_found, "the CUDA log-prob kernels no longer take bfloat16 logits");
static_assert(kernels_found<float> && kernels_found<double>,
              "a CUDA kernel's signature no longer matches its algorithm's dispatch");
static_assert(rlhf::detail::k1_kl_advantages_backend<rlhf::cuda_backend, float> &&
                  rlhf::detail::k1_kl_advantages_backend<rlhf::cuda_backend, double>,
              "rlhf::kl_penalized_advantages no longer finds the CUDA one-pass kernel");
static_assert(rlhf::detail::k1_kl_rewards_backend<rlhf::cuda_backend, float> &&
                  rlhf::detail::k1_kl_rewards_backend<rlhf::cuda_backend, double>,
              "rlhf::kl_penalized_rewards no longer finds the CUDA one-pass kernel with the k1 KL");

template <class T>
void conformance(const rlhf::cuda_backend& b, const char* name, std::size_t rows = 7, std::size_t cols = 33) {
  rlhf::testing::conformance_options o;
  o.name = name;
  o.rows = rows;
  o.cols = cols;
  const auto r = rlhf::testing::check_conformance<T>(b, o);
  std::printf("%s\n", r.summary().c_str());
  expect(r.ok(), std::string("conformance ") + name);
}

template <class T>
void gemm_matches_reference(const rlhf::cuda_backend& b) {
  std::mt19937_64 g(11);
  std::uniform_real_distribution<double> u(-1, 1);
  const auto random = [&](std::size_t n) {
    std::vector<T> v(n);
    for (auto& x : v) x = static_cast<T>(u(g));
    return v;
  };
  using rlhf::transpose;
  for (auto [m, k, n] : {std::tuple<std::size_t, std::size_t, std::size_t>{1, 1, 1}, {7, 5, 3}, {5, 0, 4}, {65, 33, 31},
                         {256, 288, 768}, {0, 3, 3}}) {
    for (auto ta : {transpose::no, transpose::yes}) {
      for (auto tb : {transpose::no, transpose::yes}) {
        const auto av = random(m * k), bv = random(k * n), c0 = random(m * n);
        const std::size_t ar = ta == transpose::no ? m : k, ac = ta == transpose::no ? k : m;
        const std::size_t br = tb == transpose::no ? k : n, bc = tb == transpose::no ? n : k;
        auto da = rlhf::to_backend(b, av, ar, ac), db = rlhf::to_backend(b, bv, br, bc), dc = rlhf::to_backend(b, c0, m, n);
        b.gemm<T>(ta, tb, T(1.5), rlhf::as_const(da.view()), rlhf::as_const(db.view()), T(-0.5), dc.view());
        std::vector<T> want = c0;
        rlhf::backends::detail::naive_gemm<T>(ta, tb, T(1.5), rlhf::make_matrix_view(av.data(), ar, ac),
                                              rlhf::make_matrix_view(bv.data(), br, bc), T(-0.5),
                                              rlhf::make_matrix_view(want.data(), m, n));
        const double eps = static_cast<double>(std::numeric_limits<T>::epsilon());
        check_close(rlhf::to_host(b, dc.view()), want, 0.0, 8.0 * static_cast<double>(k + 1) * eps,
                    "gemm m " + std::to_string(m) + " k " + std::to_string(k) + " n " + std::to_string(n));
      }
    }
  }
  // beta = 0 ignores NaN in C.
  auto da = rlhf::allocate_filled<T>(b, 2, 3, T(1)), db = rlhf::allocate_filled<T>(b, 3, 2, T(2));
  auto dc = rlhf::allocate_filled<T>(b, 2, 2, std::numeric_limits<T>::quiet_NaN());
  b.gemm<T>(transpose::no, transpose::no, T(1), rlhf::as_const(da.view()), rlhf::as_const(db.view()), T(0), dc.view());
  expect(rlhf::to_host(b, dc.view()) == std::vector<T>(4, T(6)), "gemm with beta = 0 over NaN");
  // k = 0 (handled before cuBLAS, which leaves such a C unchanged on some versions): C = beta C, zeros for beta = 0.
  auto empty_a = rlhf::allocate<T>(b, 2, 0), empty_b = rlhf::allocate<T>(b, 0, 2);
  auto dz = rlhf::allocate_filled<T>(b, 2, 2, std::numeric_limits<T>::quiet_NaN());
  b.gemm<T>(transpose::no, transpose::no, T(1), rlhf::as_const(empty_a.view()), rlhf::as_const(empty_b.view()), T(0),
            dz.view());
  expect(rlhf::to_host(b, dz.view()) == std::vector<T>(4, T(0)), "gemm with k = 0 and beta = 0 over NaN");
}

// TF32 tensor-core products (set_tf32): float GEMMs within TF32's rounding (10-bit mantissa inputs) of the
// exact product, the setting shared by copies and undone by set_tf32(false).
void tf32_gemm(cudaStream_t stream) {
  const rlhf::cuda_backend b(stream);
  expect(!b.tf32(), "TF32 is off by default");
  const rlhf::cuda_backend copy = b;
  b.set_tf32(true);
  expect(copy.tf32(), "set_tf32 reaches the backend's copies (one cuBLAS handle)");
  std::mt19937_64 g(12);
  std::uniform_real_distribution<double> u(-1, 1);
  const std::size_t m = 128, k = 256, n = 96;
  std::vector<float> av(m * k), bv(k * n);
  for (auto& x : av) x = static_cast<float>(u(g));
  for (auto& x : bv) x = static_cast<float>(u(g));
  auto da = rlhf::to_backend(b, av, m, k), db = rlhf::to_backend(b, bv, k, n);
  auto dc = rlhf::allocate_filled<float>(b, m, n, 0.0f);
  b.gemm<float>(rlhf::transpose::no, rlhf::transpose::no, 1.0f, rlhf::as_const(da.view()), rlhf::as_const(db.view()),
                0.0f, dc.view());
  std::vector<float> want(m * n, 0.0f);
  rlhf::backends::detail::naive_gemm<float>(rlhf::transpose::no, rlhf::transpose::no, 1.0f,
                                            rlhf::make_matrix_view(av.data(), m, k),
                                            rlhf::make_matrix_view(bv.data(), k, n), 0.0f,
                                            rlhf::make_matrix_view(want.data(), m, n));
  // Each of the k products carries up to 2^-10 relative rounding of its inputs: |error| <= k 2^-10 max|a b|.
  check_close(rlhf::to_host(b, dc.view()), want, 0.0, static_cast<double>(k) * std::ldexp(1.0, -10), "gemm in TF32");
  b.set_tf32(false);
  b.gemm<float>(rlhf::transpose::no, rlhf::transpose::no, 1.0f, rlhf::as_const(da.view()), rlhf::as_const(db.view()),
                0.0f, dc.view());
  check_close(rlhf::to_host(b, dc.view()), want, 0.0, 8.0 * static_cast<double>(k + 1) * 1.2e-7,
              "gemm after set_tf32(false)");
}

__global__ void spin_for(long long cycles) {
  const long long start = clock64();
  while (clock64() - start < cycles) {
  }
}

// Buffers are stream-ordered (cudaMallocAsync / cudaFreeAsync on the backend's stream): releasing one does
// not wait for the device, memory released while the stream still runs is reused only after the work
// enqueued before the release, freed memory stays in the default pool, and a request larger than the
// device fails with the function, the size and the free memory named.
void stream_ordered_buffers(cudaStream_t stream) {
  const rlhf::cuda_backend b(stream);
  int device = 0, clock_khz = 0;
  rlhf::backends::detail::cuda_check(cudaGetDevice(&device), "stream_ordered_buffers", "cudaGetDevice");
  rlhf::backends::detail::cuda_check(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, device),
                                     "stream_ordered_buffers", "cudaDeviceGetAttribute");
  // About 200 ms of device time queued before a buffer is allocated and released.
  spin_for<<<1, 1, 0, stream>>>(static_cast<long long>(clock_khz) * 200);
  { auto scratch = b.allocate<float>(1024, 1024); }
  expect(cudaStreamQuery(stream) == cudaErrorNotReady,
         "releasing a buffer waits for the device (the stream finished before the release returned)");
  b.synchronize();

  cudaMemPool_t pool = nullptr;
  std::uint64_t threshold = 0;
  cudaDeviceGetDefaultMemPool(&pool, device);
  cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold);
  expect(threshold == UINT64_MAX, "the default pool keeps released memory (release threshold " +
                                      std::to_string(threshold) + ")");

  // Each round's scratch is released while the stream may still be reading the previous ones: the rows
  // written through them must all survive.
  const std::size_t rounds = 64, cols = 4096;
  auto out = rlhf::allocate_filled<float>(b, rounds, cols, -1.0f);
  for (std::size_t r = 0; r < rounds; ++r) {
    auto scratch = rlhf::allocate_filled<float>(b, 1, cols, static_cast<float>(r));
    spin_for<<<1, 1, 0, stream>>>(1000);
    b.copy(rlhf::as_const(scratch.vector()), rlhf::vector_view<float, rlhf::cuda_space>{out.data() + r * cols, cols});
  }
  const std::vector<float> got = rlhf::to_host(b, out.view());
  bool rows_ok = true;
  for (std::size_t r = 0; r < rounds; ++r)
    for (std::size_t c = 0; c < cols; ++c) rows_ok = rows_ok && got[r * cols + c] == static_cast<float>(r);
  expect(rows_ok, "rows copied from scratch buffers released while the stream ran");

  bool named = false;
  try {
    auto too_big = b.allocate<float>(std::size_t{1} << 24, std::size_t{1} << 24);  // 1 PiB
  } catch (const rlhf::cuda_error& e) {
    const std::string what = e.what();
    named = what.find("rlhf::cuda_backend::allocate") != std::string::npos &&
            what.find("1125899906842624 bytes") != std::string::npos && what.find("free") != std::string::npos;
    if (!named) std::printf("allocation error: %s\n", e.what());
  }
  expect(named, "an impossible allocation throws rlhf::cuda_error naming the function, the bytes and the free memory");
  // The backend still works after the failure.
  auto after = rlhf::allocate_filled<float>(b, 1, 8, 2.0f);
  expect(rlhf::to_host(b, after.view()) == std::vector<float>(8, 2.0f), "allocation after a failed one");
}

template <class T>
void token_logprobs_match_reference(const rlhf::cuda_backend& b) {
  const rlhf::reference_backend ref;
  std::mt19937_64 g(12);
  std::normal_distribution<double> z(0.0, 3.0);
  const double inf = std::numeric_limits<double>::infinity();
  for (std::size_t vocab : {1u, 33u, 257u, 32000u}) {
    for (double t : {1.0, 0.7}) {
      const std::size_t rows = 37;
      std::vector<T> logits(rows * vocab);
      for (auto& x : logits) x = static_cast<T>(z(g));
      std::vector<rlhf::token_type> tokens(rows);
      std::vector<rlhf::mask_type> mask(rows, 1);
      for (std::size_t r = 0; r < rows; ++r) {
        tokens[r] = static_cast<rlhf::token_type>(g() % vocab);
        if (r % 5 == 3) mask[r] = 0, tokens[r] = -100;  // masked rows may hold pads
        if (vocab > 2 && r % 7 == 1) logits[r * vocab + (tokens[r] + 1) % vocab] = static_cast<T>(-inf);
      }
      auto d_logits = rlhf::to_backend(b, logits, rows, vocab);
      auto d_tokens = rlhf::to_backend(b, tokens);
      auto d_mask = rlhf::to_backend(b, mask);
      auto lp = rlhf::allocate<T>(b, rows), lse = rlhf::allocate<T>(b, rows), h = rlhf::allocate<T>(b, rows);
      rlhf::token_logprobs<rlhf::cuda_backend, T>(b, rlhf::as_const(d_logits.view()), rlhf::as_const(d_tokens.view().flat()),
                                                  rlhf::as_const(d_mask.view().flat()), lp.view().flat(),
                                                  lse.view().flat(), h.view().flat(), {t});
      std::vector<T> want_lp(rows), want_lse(rows), want_h(rows);
      rlhf::token_logprobs<rlhf::reference_backend, T>(
          ref, rlhf::make_matrix_view(std::as_const(logits).data(), rows, vocab),
          rlhf::make_vector_view(std::as_const(tokens).data(), rows),
          rlhf::make_vector_view(std::as_const(mask).data(), rows), rlhf::make_vector_view(want_lp.data(), rows),
          rlhf::make_vector_view(want_lse.data(), rows), rlhf::make_vector_view(want_h.data(), rows), {t});
      const double rtol = std::is_same_v<T, float> ? 1e-5 : 1e-12, atol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
      const std::string at = " V " + std::to_string(vocab) + " t " + std::to_string(t);
      check_close(rlhf::to_host(b, lp.view()), want_lp, rtol, atol, "token_logprobs logp" + at);
      check_close(rlhf::to_host(b, lse.view()), want_lse, rtol, atol, "token_logprobs logsumexp" + at);
      check_close(rlhf::to_host(b, h.view()), want_h, rtol, atol, "token_logprobs entropy" + at);

      // Backward with both gradients, written in place over a copy of the logits.
      std::vector<T> g_lp(rows), g_h(rows);
      for (std::size_t r = 0; r < rows; ++r) g_lp[r] = static_cast<T>(0.5 + 0.01 * double(r)), g_h[r] = static_cast<T>(-0.25);
      auto d_glp = rlhf::to_backend(b, g_lp), d_gh = rlhf::to_backend(b, g_h);
      auto d_grad = rlhf::to_backend(b, logits, rows, vocab);
      rlhf::token_logprobs_backward<rlhf::cuda_backend, T>(
          b, rlhf::as_const(d_grad.view()), rlhf::as_const(d_tokens.view().flat()), rlhf::as_const(d_mask.view().flat()),
          rlhf::as_const(lse.view().flat()), rlhf::as_const(d_glp.view().flat()), rlhf::as_const(h.view().flat()),
          rlhf::as_const(d_gh.view().flat()), d_grad.view(), {t});
      std::vector<T> want_grad(rows * vocab);
      rlhf::token_logprobs_backward<rlhf::reference_backend, T>(
          ref, rlhf::make_matrix_view(std::as_const(logits).data(), rows, vocab),
          rlhf::make_vector_view(std::as_const(tokens).data(), rows),
          rlhf::make_vector_view(std::as_const(mask).data(), rows),
          rlhf::make_vector_view(std::as_const(want_lse).data(), rows), rlhf::make_vector_view(std::as_const(g_lp).data(), rows),
          rlhf::make_vector_view(std::as_const(want_h).data(), rows), rlhf::make_vector_view(std::as_const(g_h).data(), rows),
          rlhf::make_matrix_view(want_grad.data(), rows, vocab), {t});
      check_close(rlhf::to_host(b, d_grad.view()), want_grad, 10 * rtol, atol, "token_logprobs_backward" + at);
    }
  }
}

template <class T>
void gae_matches_reference(const rlhf::cuda_backend& b) {
  const rlhf::reference_backend ref;
  std::mt19937_64 g(13);
  std::normal_distribution<double> z(0.0, 1.0);
  // Rows shorter than one warp tile, exactly one, and many tiles with a partial first tile.
  for (auto [rows, cols] : {std::pair<std::size_t, std::size_t>{1, 1}, {9, 31}, {3, 128}, {17, 1000}, {64, 8192}}) {
    std::vector<T> rewards(rows * cols), values(rows * cols);
    std::vector<rlhf::mask_type> mask(rows * cols);
    for (std::size_t i = 0; i < rows * cols; ++i) {
      rewards[i] = static_cast<T>(z(g));
      values[i] = static_cast<T>(z(g));
      mask[i] = static_cast<rlhf::mask_type>(g() % 5 != 0);  // interior holes
      if (!mask[i]) rewards[i] = values[i] = std::numeric_limits<T>::quiet_NaN();  // never read
    }
    for (std::size_t r = 0; r < rows; ++r) {  // right padding of a random length
      const std::size_t pad = g() % (cols / 2 + 1);
      for (std::size_t t = cols - pad; t < cols; ++t) mask[r * cols + t] = 0;
    }
    auto dr = rlhf::to_backend(b, rewards, rows, cols), dv = rlhf::to_backend(b, values, rows, cols);
    auto dm = rlhf::to_backend(b, mask, rows, cols);
    auto adv = rlhf::allocate<T>(b, rows, cols), ret = rlhf::allocate<T>(b, rows, cols);
    const rlhf::gae_options opts{0.99, 0.95};
    rlhf::gae<rlhf::cuda_backend, T>(b, rlhf::as_const(dr.view()), rlhf::as_const(dv.view()), rlhf::as_const(dm.view()),
                                     adv.view(), ret.view(), opts);
    std::vector<T> want_adv(rows * cols), want_ret(rows * cols);
    rlhf::gae<rlhf::reference_backend, T>(ref, rlhf::make_matrix_view(std::as_const(rewards).data(), rows, cols),
                                          rlhf::make_matrix_view(std::as_const(values).data(), rows, cols),
                                          rlhf::make_matrix_view(std::as_const(mask).data(), rows, cols),
                                          rlhf::make_matrix_view(want_adv.data(), rows, cols),
                                          rlhf::make_matrix_view(want_ret.data(), rows, cols), opts);
    const double tol = std::is_same_v<T, float> ? 1e-4 : 1e-10;
    const std::string at = " [" + std::to_string(rows) + ", " + std::to_string(cols) + "]";
    check_close(rlhf::to_host(b, adv.view()), want_adv, tol, tol, "gae advantages" + at);
    check_close(rlhf::to_host(b, ret.view()), want_ret, tol, tol, "gae returns" + at);
  }
}

template <class T>
void ppo_clip_matches_reference(const rlhf::cuda_backend& b) {
  const rlhf::reference_backend ref;
  std::mt19937_64 g(14);
  std::normal_distribution<double> z(0.0, 0.3);
  for (auto [rows, cols] : {std::pair<std::size_t, std::size_t>{1, 1}, {5, 300}, {64, 2048}}) {
    std::vector<T> lp(rows * cols), old_lp(rows * cols), adv(rows * cols);
    std::vector<rlhf::mask_type> mask(rows * cols);
    for (std::size_t i = 0; i < rows * cols; ++i) {
      old_lp[i] = static_cast<T>(-1.0 + z(g));
      lp[i] = static_cast<T>(static_cast<double>(old_lp[i]) + z(g));  // ratios inside and outside the clip range
      adv[i] = static_cast<T>(3 * z(g));
      mask[i] = static_cast<rlhf::mask_type>(g() % 4 != 0);
      if (!mask[i]) lp[i] = std::numeric_limits<T>::quiet_NaN();  // never read
    }
    auto dl = rlhf::to_backend(b, lp, rows, cols), dol = rlhf::to_backend(b, old_lp, rows, cols);
    auto da = rlhf::to_backend(b, adv, rows, cols);
    auto dm = rlhf::to_backend(b, mask, rows, cols);
    auto grad = rlhf::allocate<T>(b, rows, cols);
    for (const auto& opts : {rlhf::ppo_clip_options::instructgpt(), rlhf::ppo_clip_options::verl()}) {
      const auto got = rlhf::ppo_clip_loss(b, rlhf::as_const(dl.view()), rlhf::as_const(dol.view()), rlhf::as_const(da.view()),
                                           rlhf::as_const(dm.view()), grad.view(), opts);
      std::vector<T> want_grad(rows * cols);
      const auto want = rlhf::ppo_clip_loss(ref, rlhf::make_matrix_view(std::as_const(lp).data(), rows, cols),
                                            rlhf::make_matrix_view(std::as_const(old_lp).data(), rows, cols),
                                            rlhf::make_matrix_view(std::as_const(adv).data(), rows, cols),
                                            rlhf::make_matrix_view(std::as_const(mask).data(), rows, cols),
                                            rlhf::make_matrix_view(want_grad.data(), rows, cols), opts);
      const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-11;
      const std::string at = " [" + std::to_string(rows) + ", " + std::to_string(cols) + "] dual " + std::to_string(opts.dual_clip);
      check_close(std::vector<double>{got.loss, got.clip_fraction, got.approx_kl, got.policy_kl, got.mean_ratio,
                                      got.dual_clip_fraction, got.token_count},
                  std::vector<double>{want.loss, want.clip_fraction, want.approx_kl, want.policy_kl, want.mean_ratio,
                                      want.dual_clip_fraction, want.token_count},
                  tol, tol, "ppo_clip_loss statistics" + at);
      check_close(rlhf::to_host(b, grad.view()), want_grad, tol, tol, "ppo_clip_loss gradient" + at);
    }
  }
}

// A rollout's per-token inputs for the rewards and advantages kernels: log-probs near -1, values and scores
// of unit scale, a mask with interior holes and ragged padding (row 1 without a valid token), has_eos mostly
// set; logp and values NaN where masked (the kernels must never read them).
template <class T>
struct rollout_inputs {
  std::vector<T> logp, ref_logp, values, scores;
  std::vector<rlhf::mask_type> mask, eos;
};

template <class T>
rollout_inputs<T> make_rollout_inputs(std::mt19937_64& g, std::size_t rows, std::size_t cols) {
  std::normal_distribution<double> z(0.0, 1.0);
  const std::size_t n = rows * cols;
  rollout_inputs<T> in{std::vector<T>(n), std::vector<T>(n), std::vector<T>(n), std::vector<T>(rows),
                       std::vector<rlhf::mask_type>(n), std::vector<rlhf::mask_type>(rows)};
  for (std::size_t i = 0; i < n; ++i) {
    in.logp[i] = static_cast<T>(-1.0 + 0.3 * z(g));
    in.ref_logp[i] = static_cast<T>(-1.0 + 0.3 * z(g));
    in.values[i] = static_cast<T>(z(g));
    in.mask[i] = static_cast<rlhf::mask_type>(g() % 6 != 0);
  }
  for (std::size_t r = 0; r < rows; ++r) {
    in.scores[r] = static_cast<T>(2 * z(g));
    in.eos[r] = static_cast<rlhf::mask_type>(g() % 3 != 0);
    const std::size_t pad = r == 1 ? cols : g() % (cols / 2 + 1);  // row 1 has no valid token
    for (std::size_t t = cols - pad; t < cols; ++t) in.mask[r * cols + t] = 0;
  }
  for (std::size_t i = 0; i < n; ++i)
    if (!in.mask[i]) in.logp[i] = in.values[i] = std::numeric_limits<T>::quiet_NaN();  // never read
  return in;
}

// The one-pass kernel of rlhf::kl_penalized_advantages (k1 KL, rewards, GAE, the advantages' moments) against
// the reference backend's four calls: ragged rows with interior holes, NaN where masked, a row without a valid
// token, rows of one tile and of many, every placement, with and without returns; then a non-k1 estimator,
// which takes the separate calls on the GPU too.
template <class T>
void kl_penalized_advantages_match_reference(const rlhf::cuda_backend& b) {
  const rlhf::reference_backend ref;
  std::mt19937_64 g(15);
  for (auto [rows, cols] : {std::pair<std::size_t, std::size_t>{1, 1}, {7, 129}, {33, 1024}, {4, 5000}}) {
    const std::size_t n = rows * cols;
    const auto [logp, ref_logp, values, scores, mask, eos] = make_rollout_inputs<T>(g, rows, cols);
    auto dl = rlhf::to_backend(b, logp, rows, cols), dr = rlhf::to_backend(b, ref_logp, rows, cols);
    auto dv = rlhf::to_backend(b, values, rows, cols), ds = rlhf::to_backend(b, scores);
    auto dm = rlhf::to_backend(b, mask, rows, cols), de = rlhf::to_backend(b, eos);
    auto kl = rlhf::allocate<T>(b, rows, cols), rw = rlhf::allocate<T>(b, rows, cols);
    auto adv = rlhf::allocate<T>(b, rows, cols), ret = rlhf::allocate<T>(b, rows, cols);
    for (const auto& kl_options : {rlhf::kl_estimator_options::instructgpt(), rlhf::kl_estimator_options::verl_low_var()}) {
      for (auto placement : {rlhf::score_placement::last_valid_token, rlhf::score_placement::last_position,
                             rlhf::score_placement::one_past_last_valid}) {
        for (const bool with_returns : {true, false}) {
          rlhf::kl_penalized_advantages_options o{kl_options, {0.05, 4.0, 0.5, placement}, {0.99, 0.95}};
          const auto got = rlhf::kl_penalized_advantages<rlhf::cuda_backend, T>(
              b, rlhf::as_const(dl.view()), rlhf::as_const(dr.view()), rlhf::as_const(ds.view().flat()),
              rlhf::as_const(dv.view()), rlhf::as_const(dm.view()), rlhf::as_const(de.view().flat()), kl.view(), rw.view(),
              adv.view(), with_returns ? ret.view() : rlhf::matrix_view<T, rlhf::cuda_space>{}, o);
          std::vector<T> want_kl(n), want_rw(n), want_adv(n), want_ret(n);
          const auto want = rlhf::kl_penalized_advantages<rlhf::reference_backend, T>(
              ref, rlhf::make_matrix_view(std::as_const(logp).data(), rows, cols),
              rlhf::make_matrix_view(std::as_const(ref_logp).data(), rows, cols),
              rlhf::make_vector_view(std::as_const(scores).data(), rows),
              rlhf::make_matrix_view(std::as_const(values).data(), rows, cols),
              rlhf::make_matrix_view(std::as_const(mask).data(), rows, cols),
              rlhf::make_vector_view(std::as_const(eos).data(), rows), rlhf::make_matrix_view(want_kl.data(), rows, cols),
              rlhf::make_matrix_view(want_rw.data(), rows, cols), rlhf::make_matrix_view(want_adv.data(), rows, cols),
              rlhf::make_matrix_view(want_ret.data(), rows, cols), o);
          const double tol = std::is_same_v<T, float> ? 1e-4 : 1e-10;
          const std::string at = " [" + std::to_string(rows) + ", " + std::to_string(cols) + "] estimator " +
                                 std::to_string(static_cast<int>(kl_options.estimator)) + " placement " +
                                 std::to_string(static_cast<int>(placement));
          check_close(rlhf::to_host(b, kl.view()), want_kl, 0.0, 0.0, "kl_penalized_advantages kl" + at);
          // The score added at its column may be fused into the product by the device compiler (one rounding).
          const double rtol = std::is_same_v<T, float> ? 1e-6 : 1e-14;
          check_close(rlhf::to_host(b, rw.view()), want_rw, rtol, rtol, "kl_penalized_advantages rewards" + at);
          check_close(rlhf::to_host(b, adv.view()), want_adv, tol, tol, "kl_penalized_advantages advantages" + at);
          if (with_returns) check_close(rlhf::to_host(b, ret.view()), want_ret, tol, tol, "kl_penalized_advantages returns" + at);
          const double stol = std::is_same_v<T, float> ? 1e-5 : 1e-11;
          check_close(std::vector<double>{got.advantages.count, got.advantages.mean, got.advantages.m2,
                                          static_cast<double>(got.rewards.valid_tokens),
                                          static_cast<double>(got.rewards.scored_rows), got.rewards.mean_kl,
                                          got.rewards.mean_kl_sum, got.rewards.mean_score, got.rewards.mean_raw_score},
                      std::vector<double>{want.advantages.count, want.advantages.mean, want.advantages.m2,
                                          static_cast<double>(want.rewards.valid_tokens),
                                          static_cast<double>(want.rewards.scored_rows), want.rewards.mean_kl,
                                          want.rewards.mean_kl_sum, want.rewards.mean_score, want.rewards.mean_raw_score},
                      stol, stol, "kl_penalized_advantages statistics" + at);
        }
      }
    }
  }
}

// The one-pass kernel of rlhf::kl_penalized_rewards, the KL read and (logp overload, k1) computed on the way,
// against the reference backend: ragged rows with interior holes, NaN where masked, a row without a valid token,
// rows shorter than a warp and of many warps' width, every placement, a score clip and a missing-EOS penalty.
template <class T>
void kl_penalized_rewards_match_reference(const rlhf::cuda_backend& b) {
  const rlhf::reference_backend ref;
  std::mt19937_64 g(16);
  const T nan = std::numeric_limits<T>::quiet_NaN();
  for (auto [rows, cols] : {std::pair<std::size_t, std::size_t>{1, 1}, {9, 31}, {33, 1024}, {3, 5000}}) {
    const std::size_t n = rows * cols;
    const auto [logp, ref_logp, values, scores, mask, eos] = make_rollout_inputs<T>(g, rows, cols);
    auto dl = rlhf::to_backend(b, logp, rows, cols), dr = rlhf::to_backend(b, ref_logp, rows, cols);
    auto ds = rlhf::to_backend(b, scores);
    auto dm = rlhf::to_backend(b, mask, rows, cols), de = rlhf::to_backend(b, eos);
    auto kl = rlhf::allocate<T>(b, rows, cols), rw = rlhf::allocate<T>(b, rows, cols);
    for (auto placement : {rlhf::score_placement::last_valid_token, rlhf::score_placement::last_position,
                           rlhf::score_placement::one_past_last_valid}) {
      const rlhf::kl_penalized_rewards_options o{0.05, 2.0, 0.5, placement};
      std::vector<T> want_kl(n), want_rw(n);
      const auto want = rlhf::kl_penalized_rewards<rlhf::reference_backend, T>(
          ref, rlhf::make_matrix_view(std::as_const(logp).data(), rows, cols),
          rlhf::make_matrix_view(std::as_const(ref_logp).data(), rows, cols),
          rlhf::make_vector_view(std::as_const(scores).data(), rows),
          rlhf::make_matrix_view(std::as_const(mask).data(), rows, cols),
          rlhf::make_vector_view(std::as_const(eos).data(), rows), rlhf::make_matrix_view(want_kl.data(), rows, cols),
          rlhf::make_matrix_view(want_rw.data(), rows, cols), rlhf::kl_estimator_options::instructgpt(), o);
      const std::string at = " [" + std::to_string(rows) + ", " + std::to_string(cols) + "] placement " +
                             std::to_string(static_cast<int>(placement));
      const double rtol = std::is_same_v<T, float> ? 1e-6 : 1e-14, stol = std::is_same_v<T, float> ? 1e-5 : 1e-11;
      const auto stats = [](const rlhf::kl_penalized_rewards_stats& s) {
        return std::vector<double>{static_cast<double>(s.valid_tokens), static_cast<double>(s.scored_rows), s.mean_kl,
                                   s.mean_kl_sum, s.mean_score, s.mean_raw_score, s.mean_non_score_reward};
      };
      // k1 computed inside the pass (the logp overload), then the KL read back by the other overload.
      const auto got_k1 = rlhf::kl_penalized_rewards<rlhf::cuda_backend, T>(
          b, rlhf::as_const(dl.view()), rlhf::as_const(dr.view()), rlhf::as_const(ds.view().flat()),
          rlhf::as_const(dm.view()), rlhf::as_const(de.view().flat()), kl.view(), rw.view(),
          rlhf::kl_estimator_options::instructgpt(), o);
      check_close(rlhf::to_host(b, kl.view()), want_kl, 0.0, 0.0, "kl_penalized_rewards (k1) kl" + at);
      check_close(rlhf::to_host(b, rw.view()), want_rw, rtol, rtol, "kl_penalized_rewards (k1) rewards" + at);
      check_close(stats(got_k1), stats(want), stol, stol, "kl_penalized_rewards (k1) statistics" + at);
      b.fill(rw.view().flat(), nan);  // every element must be written
      const auto got = rlhf::kl_penalized_rewards<rlhf::cuda_backend, T>(
          b, rlhf::as_const(kl.view()), rlhf::as_const(ds.view().flat()), rlhf::as_const(dm.view()),
          rlhf::as_const(de.view().flat()), rw.view(), o);
      check_close(rlhf::to_host(b, rw.view()), want_rw, rtol, rtol, "kl_penalized_rewards rewards" + at);
      check_close(stats(got), stats(want), stol, stol, "kl_penalized_rewards statistics" + at);
    }
  }
}

// The ranking-loss kernel against the reference backend: 64 prompts of K = 2..9 responses (ragged, NaN past
// K, ties), each option preset, forward only and with the gradient.
template <class T>
void ranking_loss_matches_reference(const rlhf::cuda_backend& b) {
  const rlhf::reference_backend ref;
  std::mt19937_64 g(16);
  std::normal_distribution<double> z(0.0, 2.0);
  for (const std::size_t prompts : {1u, 64u, 1000u}) {
    const std::size_t kmax = 9;
    std::vector<T> rewards(prompts * kmax, std::numeric_limits<T>::quiet_NaN());
    std::vector<std::int32_t> ranks(prompts * kmax, -5), counts(prompts);
    for (std::size_t p = 0; p < prompts; ++p) {
      const std::size_t k = 2 + g() % (kmax - 1);
      counts[p] = static_cast<std::int32_t>(k);
      for (std::size_t i = 0; i < k; ++i) {
        rewards[p * kmax + i] = static_cast<T>(z(g));
        ranks[p * kmax + i] = static_cast<std::int32_t>(g() % k);  // ties happen
      }
    }
    auto dr = rlhf::to_backend(b, rewards, prompts, kmax);
    auto dk = rlhf::to_backend(b, ranks, prompts, kmax), dc = rlhf::to_backend(b, counts);
    auto grad = rlhf::allocate<T>(b, prompts, kmax);
    for (const auto& opts : {rlhf::ranking_loss_options::instructgpt(), rlhf::ranking_loss_options::trl(0.5, 0.01),
                             rlhf::ranking_loss_options::nemo(),
                             rlhf::ranking_loss_options{0.0, 0.02, rlhf::centering_form::squared_rewards,
                                                        rlhf::pair_normalization::all_pairs}}) {
      for (const bool with_grad : {true, false}) {
        const auto got = rlhf::ranking_loss<rlhf::cuda_backend, T>(
            b, rlhf::as_const(dr.view()), rlhf::as_const(dk.view()), rlhf::as_const(dc.view().flat()),
            with_grad ? grad.view() : rlhf::matrix_view<T, rlhf::cuda_space>{}, opts);
        std::vector<T> want_grad(prompts * kmax);
        const auto want = rlhf::ranking_loss<rlhf::reference_backend, T>(
            ref, rlhf::make_matrix_view(std::as_const(rewards).data(), prompts, kmax),
            rlhf::make_matrix_view(std::as_const(ranks).data(), prompts, kmax),
            rlhf::make_vector_view(std::as_const(counts).data(), prompts),
            rlhf::make_matrix_view(want_grad.data(), prompts, kmax), opts);
        const std::string at = " prompts " + std::to_string(prompts) + " margin " + std::to_string(opts.margin) +
                               " center " + std::to_string(opts.center_coefficient);
        check_close(std::vector<double>{got.loss, got.pair_loss, got.center_loss, got.accuracy, got.mean_margin,
                                        got.compared_pairs},
                    std::vector<double>{want.loss, want.pair_loss, want.center_loss, want.accuracy, want.mean_margin,
                                        want.compared_pairs},
                    1e-12, 1e-12, "ranking_loss statistics" + at);
        // The generic path's expression in its order; the device's exp and fused multiply-adds round differently.
        const double gtol = std::is_same_v<T, float> ? 1e-6 : 1e-13;
        if (with_grad) check_close(rlhf::to_host(b, grad.view()), want_grad, gtol, gtol, "ranking_loss gradient" + at);
      }
    }
  }
}

// bfloat16 logits on the GPU: the forward and the backward kernels against the reference backend on the same
// bf16 buffers (-inf entries, masked rows with pads, V up to 32000).
void bf16_token_logprobs_match_reference(const rlhf::cuda_backend& b) {
  const rlhf::reference_backend ref;
  std::mt19937_64 g(17);
  std::normal_distribution<double> z(0.0, 3.0);
  for (std::size_t vocab : {1u, 257u, 32000u}) {
    const std::size_t rows = 29;
    std::vector<rlhf::bfloat16> logits(rows * vocab);
    for (auto& x : logits) x = rlhf::bfloat16(z(g));
    std::vector<rlhf::token_type> tokens(rows);
    std::vector<rlhf::mask_type> mask(rows, 1);
    for (std::size_t r = 0; r < rows; ++r) {
      tokens[r] = static_cast<rlhf::token_type>(g() % vocab);
      if (r % 5 == 3) mask[r] = 0, tokens[r] = -100;
      if (vocab > 2 && r % 7 == 1)
        logits[r * vocab + (tokens[r] + 1) % vocab] = rlhf::bfloat16(-std::numeric_limits<float>::infinity());
    }
    auto d_logits = rlhf::to_backend(b, logits, rows, vocab);
    auto d_tokens = rlhf::to_backend(b, tokens);
    auto d_mask = rlhf::to_backend(b, mask);
    auto lp = rlhf::allocate<float>(b, rows), lse = rlhf::allocate<float>(b, rows), h = rlhf::allocate<float>(b, rows);
    rlhf::token_logprobs(b, rlhf::as_const(d_logits.view()), rlhf::as_const(d_tokens.view().flat()),
                         rlhf::as_const(d_mask.view().flat()), lp.view().flat(), lse.view().flat(), h.view().flat());
    std::vector<float> want_lp(rows), want_lse(rows), want_h(rows);
    const auto host_logits = rlhf::make_matrix_view(std::as_const(logits).data(), rows, vocab);
    const auto host_tokens = rlhf::make_vector_view(std::as_const(tokens).data(), rows);
    const auto host_mask = rlhf::make_vector_view(std::as_const(mask).data(), rows);
    rlhf::token_logprobs(ref, host_logits, host_tokens, host_mask, rlhf::make_vector_view(want_lp.data(), rows),
                         rlhf::make_vector_view(want_lse.data(), rows), rlhf::make_vector_view(want_h.data(), rows));
    const std::string at = " V " + std::to_string(vocab);
    check_close(rlhf::to_host(b, lp.view()), want_lp, 1e-5, 1e-5, "bf16 token_logprobs" + at);
    check_close(rlhf::to_host(b, lse.view()), want_lse, 1e-5, 1e-5, "bf16 logsumexp" + at);
    check_close(rlhf::to_host(b, h.view()), want_h, 1e-5, 1e-5, "bf16 entropy" + at);
    std::vector<float> gl(rows, -1.0f), gh(rows, 0.5f);
    auto d_gl = rlhf::to_backend(b, gl), d_gh = rlhf::to_backend(b, gh);
    auto grad = rlhf::allocate<rlhf::bfloat16>(b, rows, vocab);
    rlhf::token_logprobs_backward(b, rlhf::as_const(d_logits.view()), rlhf::as_const(d_tokens.view().flat()),
                                  rlhf::as_const(d_mask.view().flat()), rlhf::as_const(lse.view().flat()),
                                  rlhf::as_const(d_gl.view().flat()), rlhf::as_const(h.view().flat()),
                                  rlhf::as_const(d_gh.view().flat()), grad.view());
    std::vector<rlhf::bfloat16> want_grad(rows * vocab);
    rlhf::token_logprobs_backward(ref, host_logits, host_tokens, host_mask, rlhf::make_vector_view(std::as_const(want_lse).data(), rows),
                                  rlhf::make_vector_view(std::as_const(gl).data(), rows),
                                  rlhf::make_vector_view(std::as_const(want_h).data(), rows),
                                  rlhf::make_vector_view(std::as_const(gh).data(), rows),
                                  rlhf::make_matrix_view(want_grad.data(), rows, vocab));
    const auto got = rlhf::to_host(b, grad.view());
    std::vector<double> got_d(got.size()), want_d(got.size());
    for (std::size_t i = 0; i < got.size(); ++i) got_d[i] = static_cast<double>(got[i]), want_d[i] = static_cast<double>(want_grad[i]);
    check_close(got_d, want_d, 0x1p-7, 1e-6, "bf16 token_logprobs_backward (one bf16 ulp)" + at);
  }
}

// The clipped value loss kernel against the reference backend: values inside and outside the clip range, NaN
// where masked, each aggregation, with and without the gradient, unclipped too.
template <class T>
void value_loss_matches_reference(const rlhf::cuda_backend& b) {
  const rlhf::reference_backend ref;
  std::mt19937_64 g(18);
  std::normal_distribution<double> z(0.0, 0.5);
  for (auto [rows, cols] : {std::pair<std::size_t, std::size_t>{1, 1}, {5, 300}, {64, 2048}}) {
    std::vector<T> v(rows * cols), v_old(rows * cols), ret(rows * cols);
    std::vector<rlhf::mask_type> mask(rows * cols);
    for (std::size_t i = 0; i < rows * cols; ++i) {
      v_old[i] = static_cast<T>(z(g));
      v[i] = static_cast<T>(static_cast<double>(v_old[i]) + z(g));  // inside and outside +-0.2
      ret[i] = static_cast<T>(2 * z(g));
      mask[i] = static_cast<rlhf::mask_type>(g() % 4 != 0);
      if (!mask[i]) v[i] = std::numeric_limits<T>::quiet_NaN();  // never read
    }
    auto dv = rlhf::to_backend(b, v, rows, cols), dvo = rlhf::to_backend(b, v_old, rows, cols);
    auto dr = rlhf::to_backend(b, ret, rows, cols);
    auto dm = rlhf::to_backend(b, mask, rows, cols);
    auto grad = rlhf::allocate<T>(b, rows, cols);
    for (const auto& opts : {rlhf::value_loss_options::instructgpt(), rlhf::value_loss_options::unclipped()}) {
      for (const auto& agg : {rlhf::loss_aggregation::token_mean(), rlhf::loss_aggregation::seq_mean_token_mean()}) {
        for (const bool with_grad : {true, false}) {
          const auto got = rlhf::clipped_value_loss(b, rlhf::as_const(dv.view()), rlhf::as_const(dvo.view()),
                                                    rlhf::as_const(dr.view()), rlhf::as_const(dm.view()),
                                                    with_grad ? grad.view() : rlhf::matrix_view<T, rlhf::cuda_space>{},
                                                    opts, agg);
          std::vector<T> want_grad(rows * cols);
          const auto want = rlhf::clipped_value_loss(ref, rlhf::make_matrix_view(std::as_const(v).data(), rows, cols),
                                                     rlhf::make_matrix_view(std::as_const(v_old).data(), rows, cols),
                                                     rlhf::make_matrix_view(std::as_const(ret).data(), rows, cols),
                                                     rlhf::make_matrix_view(std::as_const(mask).data(), rows, cols),
                                                     rlhf::make_matrix_view(want_grad.data(), rows, cols), opts, agg);
          const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-11;
          const std::string at = " [" + std::to_string(rows) + ", " + std::to_string(cols) + "] clip " +
                                 std::to_string(opts.clip) + " aggregation " + std::to_string(static_cast<int>(agg.mode));
          check_close(std::vector<double>{got.loss, got.clip_fraction, got.mean_value, got.mean_return,
                                          got.mean_squared_error, got.token_count},
                      std::vector<double>{want.loss, want.clip_fraction, want.mean_value, want.mean_return,
                                          want.mean_squared_error, want.token_count},
                      tol, tol, "clipped_value_loss statistics" + at);
          if (with_grad) check_close(rlhf::to_host(b, grad.view()), want_grad, tol, tol, "clipped_value_loss gradient" + at);
        }
      }
    }
  }
}

// The decode attention over a key/value cache (a warp per (row, head), a block past 1024 cached keys) against
// the reference backend: rows at the first position, in the middle and at the end of the cache.
template <class T>
void decode_matches_reference(const rlhf::cuda_backend& b) {
  const rlhf::reference_backend ref;
  std::mt19937_64 g(17);
  std::normal_distribution<double> nd;
  for (const std::size_t seq : {std::size_t{40}, std::size_t{1500}}) {
    const std::size_t rows = 3, hq = 8, hkv = 2, hd = 64;
    const std::vector<std::int32_t> positions{0, static_cast<std::int32_t>(seq / 2), static_cast<std::int32_t>(seq - 1)};
    std::vector<T> q(rows * hq * hd), k(rows * seq * hkv * hd), v(rows * seq * hkv * hd);
    for (auto* vec : {&q, &k, &v})
      for (auto& x : *vec) x = static_cast<T>(nd(g));
    auto dq = rlhf::to_backend(b, q, rows, hq * hd), dk = rlhf::to_backend(b, k, rows * seq, hkv * hd);
    auto dv = rlhf::to_backend(b, v, rows * seq, hkv * hd);
    auto dp = rlhf::to_backend(b, positions);
    auto scores = rlhf::allocate<T>(b, rows * hq, seq), out = rlhf::allocate<T>(b, rows, hq * hd);
    rlhf::causal_attention_decode(b, rlhf::as_const(dq.view()), rlhf::as_const(dk.view()), rlhf::as_const(dv.view()),
                                  rlhf::as_const(dp.view().flat()), seq, hq, hkv, scores.view(), out.view());
    std::vector<T> want_scores(rows * hq * seq), want(rows * hq * hd);
    rlhf::causal_attention_decode(ref, rlhf::make_matrix_view(std::as_const(q).data(), rows, hq * hd),
                                  rlhf::make_matrix_view(std::as_const(k).data(), rows * seq, hkv * hd),
                                  rlhf::make_matrix_view(std::as_const(v).data(), rows * seq, hkv * hd),
                                  rlhf::make_vector_view(positions.data(), rows), seq, hq, hkv,
                                  rlhf::make_matrix_view(want_scores.data(), rows * hq, seq),
                                  rlhf::make_matrix_view(want.data(), rows, hq * hd));
    const double tol = std::is_same_v<T, float> ? 1e-4 : 1e-10;
    check_close(rlhf::to_host(b, out.view()), want, tol, tol, "causal_attention_decode, cache of " + std::to_string(seq));
  }
}

// The reference model's layers (embedding, RMSNorm, RoPE, grouped-query attention (the cuBLAS products of
// cuda/causal_attention.cuh), SwiGLU, the LM head) run on the GPU: log-probs, entropy and every
// parameter's gradient match the reference backend, with the attention memory mode `memory` on the GPU (the
// reference keeps each layer's softmax). (The conformance suite above checks the attention alone too: saved
// and unsaved probs, the logsumexp pair, ragged lengths, grouped heads.)
template <class T>
void llama_matches_reference(const rlhf::cuda_backend& b,
                             rlhf::attention_memory memory = rlhf::attention_memory::per_layer_softmax) {
  const rlhf::reference_backend ref;
  rlhf::llama_config c;
  c.dim = 16;
  c.hidden_dim = 24;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.vocab_size = 37;
  c.seq_len = 12;
  rlhf::llama_model<rlhf::cuda_backend, T> gpu_model(b, c);
  rlhf::llama_model<rlhf::reference_backend, T> ref_model(ref, c);
  gpu_model.init_random(b, 3, 0.3, 0.2);
  ref_model.init_random(ref, 3, 0.3, 0.2);
  gpu_model.set_attention_memory(memory);
  const std::size_t rows = 3, cols = c.seq_len;
  std::vector<rlhf::token_type> tokens(rows * cols);
  for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<rlhf::token_type>((i * 7 + 3) % c.vocab_size);
  const std::vector<std::int32_t> lengths{12, 7, 1};
  auto d_tokens = rlhf::to_backend(b, tokens, rows, cols);
  auto d_lengths = rlhf::to_backend(b, lengths);
  auto lp = rlhf::allocate<T>(b, rows, cols), ent = rlhf::allocate<T>(b, rows, cols);
  gpu_model.log_probs(b, rlhf::as_const(d_tokens.view()), rlhf::as_const(d_lengths.view().flat()), lp.view(), ent.view(),
                      rlhf::forward_mode::training);
  std::vector<T> want_lp(rows * cols), want_ent(rows * cols);
  ref_model.log_probs(ref, rlhf::make_matrix_view(std::as_const(tokens).data(), rows, cols),
                      rlhf::make_vector_view(std::as_const(lengths).data(), rows),
                      rlhf::make_matrix_view(want_lp.data(), rows, cols), rlhf::make_matrix_view(want_ent.data(), rows, cols),
                      rlhf::forward_mode::training);
  const double tol = std::is_same_v<T, float> ? 2e-4 : 1e-9;
  check_close(rlhf::to_host(b, lp.view()), want_lp, tol, tol, "llama log_probs");
  check_close(rlhf::to_host(b, ent.view()), want_ent, tol, tol, "llama entropy");
  // Backward of sum(logp) - 0.1 sum(H).
  const std::vector<T> ones(rows * cols, T(1)), tenth(rows * cols, T(-0.1));
  auto d_ones = rlhf::to_backend(b, ones, rows, cols), d_tenth = rlhf::to_backend(b, tenth, rows, cols);
  gpu_model.zero_grad(b);
  ref_model.zero_grad(ref);
  gpu_model.log_probs_backward(b, rlhf::as_const(d_ones.view()), rlhf::as_const(d_tenth.view()));
  ref_model.log_probs_backward(ref, rlhf::make_matrix_view(ones.data(), rows, cols),
                               rlhf::make_matrix_view(tenth.data(), rows, cols));
  const auto gp = gpu_model.parameters();
  const auto rp = ref_model.parameters();
  for (std::size_t k = 0; k < gp.size() && k < rp.size(); ++k) {
    std::vector<T> want(rp[k].grad.size());
    for (std::size_t i = 0; i < want.size(); ++i) want[i] = rp[k].grad.data[i];
    check_close(rlhf::to_host(b, gp[k].grad), want, 10 * tol, 10 * tol, "llama gradient " + std::to_string(k));
  }
  expect(gp.size() == rp.size(), "llama parameter count");
}

}  // namespace

int main() {
  const int devices = rlhf::cuda_device_count();
  if (devices == 0) {
    std::printf("rlhf CUDA backend test: no CUDA device, skipped (this binary compiled: the kernels build)\n");
    return 77;  // ctest SKIP_RETURN_CODE
  }
  cudaDeviceProp prop{};
  rlhf::backends::detail::cuda_check(cudaGetDeviceProperties(&prop, 0), "cuda_backend_test", "cudaGetDeviceProperties");
  std::printf("rlhf CUDA backend test on %s (sm_%d%d, %d device(s))\n", prop.name, prop.major, prop.minor, devices);

  const rlhf::cuda_backend on_default_stream;
  conformance<float>(on_default_stream, "cuda (default stream), float");
  conformance<double>(on_default_stream, "cuda (default stream), double");
  // Rows longer than a warp's share (cuda/row_groups.cuh: a block per row past 1024 elements) for RMSNorm and
  // the attention softmax, and more than two 64-row chunks of RMSNorm's weight gradient.
  conformance<float>(on_default_stream, "cuda (default stream), float, [130, 1100]", 130, 1100);

  // A non-blocking stream: nothing may rely on the legacy default stream's implicit synchronization.
  cudaStream_t stream{};
  rlhf::backends::detail::cuda_check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cuda_backend_test",
                                     "cudaStreamCreateWithFlags");
  {
    const rlhf::cuda_backend on_stream(stream);
    conformance<float>(on_stream, "cuda (non-blocking stream), float");
    gemm_matches_reference<float>(on_stream);
    gemm_matches_reference<double>(on_stream);
    tf32_gemm(stream);
    stream_ordered_buffers(stream);
    token_logprobs_match_reference<float>(on_stream);
    token_logprobs_match_reference<double>(on_stream);
    bf16_token_logprobs_match_reference(on_stream);
    gae_matches_reference<float>(on_stream);
    gae_matches_reference<double>(on_stream);
    ppo_clip_matches_reference<float>(on_stream);
    ppo_clip_matches_reference<double>(on_stream);
    kl_penalized_advantages_match_reference<float>(on_stream);
    kl_penalized_advantages_match_reference<double>(on_stream);
    kl_penalized_rewards_match_reference<float>(on_stream);
    kl_penalized_rewards_match_reference<double>(on_stream);
    ranking_loss_matches_reference<float>(on_stream);
    ranking_loss_matches_reference<double>(on_stream);
    value_loss_matches_reference<float>(on_stream);
    value_loss_matches_reference<double>(on_stream);
    llama_matches_reference<float>(on_stream);
    llama_matches_reference<double>(on_stream);
    llama_matches_reference<float>(on_stream, rlhf::attention_memory::logsumexp);
    llama_matches_reference<double>(on_stream, rlhf::attention_memory::logsumexp);
    decode_matches_reference<float>(on_stream);
    decode_matches_reference<double>(on_stream);
    on_stream.synchronize();
  }
  cudaStreamDestroy(stream);

  if (failures != 0) {
    std::printf("rlhf CUDA backend test: %d failure(s)\n", failures);
    return 1;
  }
  std::printf("rlhf CUDA backend test: all passed\n");
  return 0;
}
