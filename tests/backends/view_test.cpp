// Views: trivially copyable, row-major indexing, sub-views, const conversion.
#include "test_support.hpp"

#include <type_traits>

#include "rlhf/backends/view.hpp"

using namespace rlhf;

static_assert(std::is_trivially_copyable_v<vector_view<float>>);
static_assert(std::is_trivially_copyable_v<matrix_view<double, cuda_space>>);
static_assert(std::is_convertible_v<matrix_view<float>, matrix_view<const float>>);
static_assert(!std::is_convertible_v<matrix_view<const float>, matrix_view<float>>, "const must not be dropped");
static_assert(!std::is_convertible_v<vector_view<float, cuda_space>, vector_view<const float, host_space>>,
              "views never change memory space implicitly");
static_assert(memory_space<host_space> && memory_space<cuda_space>);

TEST_CASE("matrix_view indexes row-major and slices rows", "[backends][view]") {
  std::vector<int> data{0, 1, 2, 3, 4, 5};
  const auto m = make_matrix_view(data.data(), 2, 3);
  CHECK(m(1, 2) == 5);
  CHECK(m.size() == 6);
  CHECK(m.row(1)[0] == 3);
  CHECK(m.row_block(1, 1)(0, 1) == 4);
  CHECK(m.flat().size == 6);
  CHECK(shape_string(m) == "[2, 3]");
  CHECK(shape_string(m.row(0)) == "[3]");
  const auto v = m.row(0).subview(1, 2);
  CHECK(v.size == 2);
  CHECK(v[1] == 2);
  const auto r = as_row_matrix(v);
  CHECK(r.rows == 1);
  CHECK(r.cols == 2);
  CHECK(as_row_matrix(vector_view<int>{}).rows == 0);
  matrix_view<const int> cm = m;
  CHECK(cm(0, 1) == 1);
  CHECK(as_const(m).data == m.data);
}
