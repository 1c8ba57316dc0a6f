/// @file bfloat16.hpp
/// @brief `rlhf::bfloat16`: the 16-bit brain floating-point storage type (1 sign, 8 exponent, 7 mantissa bits:
/// the upper half of an IEEE float), for logits that a model produces in bf16. Host-and-device code.
///
/// Storage only: no arithmetic operators. Algorithms that accept bf16 inputs (rlhf::token_logprobs and its
/// backward) widen each element to float or double as they read it and accumulate in float or double; bf16
/// outputs (the gradient of bf16 logits) are rounded from float once, to nearest with ties to even. The layout
/// is that of CUDA's `__nv_bfloat16` and PyTorch's `torch.bfloat16`, so their buffers can be viewed as
/// `matrix_view<const bfloat16>` without a copy.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "rlhf/config.hpp"

namespace rlhf {

/// A bfloat16 value (see the file comment). Trivially copyable, 2 bytes; default construction leaves it
/// uninitialized like a float.
struct bfloat16 {
  std::uint16_t bits;

  bfloat16() = default;
  /// Rounds to nearest, ties to even; +-inf and overflow give +-inf; NaN gives a quiet NaN of the same sign.
  RLHF_HOST_DEVICE explicit bfloat16(float f) : bits(round_bits(f)) {}
  /// Via float (the double is first rounded to float).
  RLHF_HOST_DEVICE explicit bfloat16(double d) : bits(round_bits(static_cast<float>(d))) {}

  /// Exact: every bfloat16 is a float.
  RLHF_HOST_DEVICE explicit operator float() const { return float_of_bits(static_cast<std::uint32_t>(bits) << 16); }
  /// Exact.
  RLHF_HOST_DEVICE explicit operator double() const { return static_cast<double>(static_cast<float>(*this)); }

  /// The value with these bits.
  RLHF_HOST_DEVICE static bfloat16 from_bits(std::uint16_t b) {
    bfloat16 x;
    x.bits = b;
    return x;
  }

  /// Bit equality (so -0 != +0 and a NaN equals itself): what tests and buffers compare.
  RLHF_HOST_DEVICE friend bool operator==(bfloat16 a, bfloat16 b) { return a.bits == b.bits; }

 private:
  RLHF_HOST_DEVICE static float float_of_bits(std::uint32_t u) {
#if defined(__CUDA_ARCH__)
    return __uint_as_float(u);
#else
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
#endif
  }
  RLHF_HOST_DEVICE static std::uint32_t bits_of_float(float f) {
#if defined(__CUDA_ARCH__)
    return __float_as_uint(f);
#else
    std::uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
#endif
  }
  RLHF_HOST_DEVICE static std::uint16_t round_bits(float f) {
    const std::uint32_t u = bits_of_float(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
    // Round to nearest even: add 0x7fff plus the lowest kept bit, then drop 16 bits. A carry into the exponent
    // is the correct rounding (up to the next binade, or to inf past the largest finite value).
    const std::uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);
    return static_cast<std::uint16_t>(rounded >> 16);
  }
};

static_assert(sizeof(bfloat16) == 2 && std::is_trivially_copyable_v<bfloat16> && std::is_trivial_v<bfloat16>,
              "rlhf::bfloat16 must be a trivial 2-byte type (it views foreign bf16 buffers)");

/// Element types the log-prob functions accept for logits: float, double, or bfloat16.
template <class L>
inline constexpr bool is_logit_type_v =
    std::is_same_v<L, float> || std::is_same_v<L, double> || std::is_same_v<L, bfloat16>;

namespace detail {

/// A logit widened to float (identity for float; exact for bfloat16).
RLHF_HOST_DEVICE RLHF_FORCE_INLINE float logit_as_float(float x) { return x; }
RLHF_HOST_DEVICE RLHF_FORCE_INLINE float logit_as_float(bfloat16 x) { return static_cast<float>(x); }

}  // namespace detail

}  // namespace rlhf
