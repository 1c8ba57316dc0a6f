// Sharding a global batch: contiguous blocks in rank order that cover every row once and differ in size
// by at most one (a property test over batch sizes and rank counts), and the span form.
#include "rlhf/dist/shard.hpp"

#include <numeric>
#include <vector>

#include "dist/simulated_ranks.hpp"
#include "test_support.hpp"

using namespace rlhf;
using namespace rlhf::test;

TEST_CASE("shard_of: blocks in rank order cover the batch once, sizes within one", "[dist][shard]") {
  for (std::size_t ranks = 1; ranks <= 9; ++ranks) {
    for (std::size_t rows = 0; rows <= 40; ++rows) {
      std::size_t next = 0, smallest = rows + 1, largest = 0;
      for (std::size_t r = 0; r < ranks; ++r) {
        const shard_range s = shard_of(rows, r, ranks);
        INFO("rows " << rows << ", rank " << r << " of " << ranks);
        CHECK(s.first == next);
        next = s.first + s.count;
        smallest = std::min(smallest, s.count);
        largest = std::max(largest, s.count);
      }
      CHECK(next == rows);
      CHECK(largest - smallest <= 1);
    }
  }
  CHECK(shard_of(5, 0, 2).count == 2);  // the later ranks take the extra rows
  CHECK(shard_of(5, 1, 2).count == 3);
  CHECK(shard_of(1, 0, 2).count == 0);  // a rank may get none
}

TEST_CASE("shard: this rank's block of a span", "[dist][shard]") {
  std::vector<int> items(7);
  std::iota(items.begin(), items.end(), 0);
  simulated_ranks comm;
  comm.rank_ = 1;
  comm.size_ = 3;
  const std::span<int> mine = shard(std::span<int>(items), comm);
  CHECK(std::vector<int>(mine.begin(), mine.end()) == std::vector<int>{2, 3});
  comm.rank_ = 2;
  const std::span<int> last = shard(std::span<int>(items), comm);
  CHECK(std::vector<int>(last.begin(), last.end()) == std::vector<int>{4, 5, 6});
}
