/// @file polynomial_exp.hpp
/// @brief exp for float in plain arithmetic (no library call), so loops that call it vectorize on any host
/// compiler and run on a device: the generic token log-probs (rlhf/ops/token_logprobs.hpp) use it for float
/// logits.
///
/// Range reduction x = n ln 2 + r with n = round(x / ln 2) and ln 2 split in two parts (Cody and Waite 1980),
/// so r in [-ln 2 / 2, ln 2 / 2] carries no rounding error worth counting; exp(r) by the degree-7 minimax
/// polynomial with Cephes' `expf` coefficients (Moshier 1989); the result scaled by 2^n by adding n to the
/// exponent bits. Relative error below 1.5e-7 (about 1 ulp) on [-87, 88]; below -87.3 the result is 0 (the
/// subnormal range is flushed: a probability under 1e-38 next to the row maximum's 1 changes no sum);
/// NaN in, NaN out. tests/backends/polynomial_exp_test.cpp holds it to std::exp.
#pragma once

#include <cstdint>
#include <cstring>

#include "rlhf/config.hpp"

namespace rlhf::detail {

/// The bits of a float as an int32 and back (memcpy: valid in host and device code, compiled to a move).
RLHF_HOST_DEVICE RLHF_FORCE_INLINE std::int32_t float_bits(float x) {
  std::int32_t i;
  std::memcpy(&i, &x, sizeof i);
  return i;
}
RLHF_HOST_DEVICE RLHF_FORCE_INLINE float float_from_bits(std::int32_t i) {
  float x;
  std::memcpy(&x, &i, sizeof x);
  return x;
}

/// exp(x) for x <= 88 (see the file comment): 0 below -87.3, NaN for NaN. Branch-free.
RLHF_HOST_DEVICE RLHF_FORCE_INLINE float polynomial_exp(float x) {
  constexpr float log2e = 1.44269504088896341f;
  constexpr float round_shift = 12582912.0f;  // 1.5 * 2^23: (t + shift) - shift rounds t to an integer
  constexpr float ln2_high = 0.693359375f, ln2_low = -2.12194440e-4f;  // ln 2 = high + low, high exact in 9 bits
  // Clamped first (NaN included: the comparisons fail), so the float -> int conversion below is always defined.
  const float low_clamped = x > -88.0f ? x : -88.0f;
  const float xc = low_clamped < 88.0f ? low_clamped : 88.0f;
  const float n = (xc * log2e + round_shift) - round_shift;
  const float r = (xc - n * ln2_high) - n * ln2_low;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // n is in [-125, 127] wherever the result is used, so the sum stays a normal float's exponent.
  const float y = float_from_bits(float_bits(p) + (static_cast<std::int32_t>(n) << 23));
  const float flushed = x < -87.3f ? 0.0f : y;
  return x == x ? flushed : x;  // NaN in, NaN out
}

}  // namespace rlhf::detail
