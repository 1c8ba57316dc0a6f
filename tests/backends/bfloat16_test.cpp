// rlhf::bfloat16: exact widening, round-to-nearest-even narrowing checked against an independent rounding of
// every float bit pattern's neighbourhood, NaN, infinities, overflow, signed zeros and subnormals.
#include "test_support.hpp"

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include "rlhf/backends/bfloat16.hpp"

using rlhf::bfloat16;

namespace {
// Independent oracle: the two bf16 neighbours of f, chosen by comparing distances in double (exact here).
std::uint16_t nearest_even(float f) {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  const std::uint16_t down = static_cast<std::uint16_t>(u >> 16);  // toward zero
  const std::uint16_t up = static_cast<std::uint16_t>(down + 1);   // away from zero (may become inf)
  const double x = std::fabs(static_cast<double>(f));
  const double lo = std::fabs(static_cast<double>(std::bit_cast<float>(static_cast<std::uint32_t>(down) << 16)));
  // Past the largest finite value the next neighbour is 2^128 (IEEE rounds as if the exponent were unbounded,
  // then overflows to inf).
  const double hi_f = (up & 0x7fffu) == 0x7f80u
                          ? std::ldexp(1.0, 128)
                          : std::fabs(static_cast<double>(std::bit_cast<float>(static_cast<std::uint32_t>(up) << 16)));
  if (x - lo < hi_f - x) return down;
  if (x - lo > hi_f - x) return up;
  return (down & 1u) == 0 ? down : up;  // a tie: the even one
}
}  // namespace

TEST_CASE("bfloat16: widening is exact and narrowing rounds to nearest even", "[backends][bfloat16]") {
  // Every bf16 pattern widens to the float with the same upper half and narrows back to itself (NaN: quiet NaN).
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const bfloat16 x = bfloat16::from_bits(static_cast<std::uint16_t>(b));
    const float f = static_cast<float>(x);
    REQUIRE(std::bit_cast<std::uint32_t>(f) == b << 16);
    if (std::isnan(f)) {
      CHECK(std::isnan(static_cast<float>(bfloat16(f))));
    } else {
      REQUIRE(bfloat16(f).bits == b);
      CHECK(static_cast<double>(x) == static_cast<double>(f));
    }
  }
  // Finite floats between bf16 neighbours, ties included: the oracle's choice.
  auto g = rlhf::test::rng(3);
  for (int i = 0; i < 200000; ++i) {
    std::uint32_t u = static_cast<std::uint32_t>(g());
    if (i % 4 == 0) u = (u & 0xffff0000u) | 0x8000u;  // an exact tie
    const float f = std::bit_cast<float>(u);
    if (!std::isfinite(f)) continue;
    INFO("float bits " << u);
    REQUIRE(bfloat16(f).bits == nearest_even(f));
  }
}

TEST_CASE("bfloat16: special values", "[backends][bfloat16]") {
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(bfloat16(inf).bits == 0x7f80);
  CHECK(bfloat16(-inf).bits == 0xff80);
  CHECK(bfloat16(0.0f).bits == 0x0000);
  CHECK(bfloat16(-0.0f).bits == 0x8000);
  CHECK(bfloat16(1.0f).bits == 0x3f80);
  // The largest finite float rounds past the largest finite bf16 (0x7f7f): to inf.
  CHECK(bfloat16(std::numeric_limits<float>::max()).bits == 0x7f80);
  CHECK(static_cast<float>(bfloat16::from_bits(0x7f7f)) == 0x1.fep127f);
  // 1 + 2^-8 is the tie between 1 and 1 + 2^-7: to even (1); 1 + 3 * 2^-8 ties up to 1 + 2^-6.
  CHECK(bfloat16(1.0f + 0x1p-8f).bits == 0x3f80);
  CHECK(bfloat16(1.0f + 3 * 0x1p-8f).bits == 0x3f82);
  // A NaN whose payload sits in the dropped half stays a NaN (not inf), with its sign.
  const float nan_low = std::bit_cast<float>(0x7f800001u), neg_nan = std::bit_cast<float>(0xff800001u);
  CHECK(std::isnan(static_cast<float>(bfloat16(nan_low))));
  CHECK(std::isnan(static_cast<float>(bfloat16(neg_nan))));
  CHECK((bfloat16(neg_nan).bits & 0x8000u) != 0);
  // The smallest subnormal float rounds to +0; a bf16 subnormal survives the round trip.
  CHECK(bfloat16(std::numeric_limits<float>::denorm_min()).bits == 0);
  CHECK(bfloat16(static_cast<float>(bfloat16::from_bits(0x0001))).bits == 0x0001);
  // Doubles go through float.
  CHECK(bfloat16(1.0 / 3.0).bits == bfloat16(static_cast<float>(1.0 / 3.0)).bits);
  // Bit equality.
  CHECK(bfloat16::from_bits(0x7fc0) == bfloat16::from_bits(0x7fc0));
  CHECK(!(bfloat16(0.0f) == bfloat16(-0.0f)));
  static_assert(rlhf::is_logit_type_v<bfloat16> && rlhf::is_logit_type_v<float> && !rlhf::is_logit_type_v<int>);
}
