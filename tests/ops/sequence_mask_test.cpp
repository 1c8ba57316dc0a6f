// Masks from ragged lengths and ranges, and the errors for lengths beyond the sequence.
#include "test_support.hpp"

#include "rlhf/ops/sequence_mask.hpp"

using namespace rlhf;
using namespace rlhf::test;

TEMPLATE_LIST_TEST_CASE("mask_from_lengths and mask_from_ranges", "[ops][sequence_mask]", all_configs) {
  const auto b = TestType::make();
  auto lengths = to_backend(b, std::vector<std::int32_t>{3, 0, 5});
  auto mask = allocate<mask_type>(b, 3, 5);
  mask_from_lengths(b, lengths.view().flat(), mask.view());
  CHECK(to_host(b, mask.view()) == std::vector<mask_type>{1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1});

  auto begins = to_backend(b, std::vector<std::int32_t>{1, 0, 2});
  mask_from_ranges(b, begins.view().flat(), lengths.view().flat(), mask.view());
  CHECK(to_host(b, mask.view()) == std::vector<mask_type>{0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1});

  // Property: random ragged lengths agree with the host helper.
  auto g = rng(21);
  const auto host_lengths = random_lengths(g, 40, 33);
  std::vector<std::int32_t> l32(host_lengths.begin(), host_lengths.end());
  auto bl = to_backend(b, l32);
  auto m = allocate<mask_type>(b, 40, 33);
  mask_from_lengths(b, bl.view().flat(), m.view());
  CHECK(to_host(b, m.view()) == mask_from_lengths(host_lengths, 33));
}

TEMPLATE_LIST_TEST_CASE("lengths beyond the sequence are rejected with the row named", "[ops][sequence_mask][errors]",
                        all_configs) {
  const auto b = TestType::make();
  auto mask = allocate<mask_type>(b, 3, 5);
  auto too_long = to_backend(b, std::vector<std::int32_t>{3, 6, 5});
  CHECK_THROWS_WITH(mask_from_lengths(b, too_long.view().flat(), mask.view()),
                    Catch::Contains("rlhf::mask_from_lengths") && Catch::Contains("'lengths'") &&
                        Catch::Contains("<= 5") && Catch::Contains("first is row 1") && Catch::Contains("largest end 6"));
  auto negative = to_backend(b, std::vector<std::int32_t>{3, 2, -1});
  CHECK_THROWS_WITH(mask_from_lengths(b, negative.view().flat(), mask.view()), Catch::Contains("row 2"));
  auto wrong_size = to_backend(b, std::vector<std::int32_t>{3, 2});
  CHECK_THROWS_WITH(mask_from_lengths(b, wrong_size.view().flat(), mask.view()),
                    "rlhf::mask_from_lengths: argument 'lengths': expected size 3 (one per row of 'mask'), received [2]");
  auto begins = to_backend(b, std::vector<std::int32_t>{4, 0, 0});
  auto ends = to_backend(b, std::vector<std::int32_t>{3, 2, 5});
  CHECK_THROWS_WITH(mask_from_ranges(b, begins.view().flat(), ends.view().flat(), mask.view()),
                    Catch::Contains("'begins'") && Catch::Contains("row 0"));
}
