// Input validation outside the checkpoint loader: shape products that overflow or exceed what a
// float buffer can hold, and DstConfig fields checked when a preset is built.
#include <catch2/catch.hpp>
#include <east/east.hpp>

#include <cmath>
#include <limits>

#include "helpers.hpp"

using namespace east;

TEST_CASE("shape_size rejects products that overflow 64 bits", "[parameter_set][errors]") {
  const std::int64_t two32 = std::int64_t{1} << 32, two62 = std::int64_t{1} << 62;
  CHECK(shape_size({4, 8, 3}) == 96);
  CHECK(shape_size({}) == 1);
  CHECK(shape_size({5, 0, 7}) == 0);
  CHECK(shape_size({two32, two32 - 1}) ==
        static_cast<std::size_t>(two32) * static_cast<std::size_t>(two32 - 1));
  CHECK_THROWS_WITH(shape_size({4, two62 + 1}), Catch::Contains("east::shape_size()") &&
                                                    Catch::Contains("{4, 4611686018427387905}") &&
                                                    Catch::Contains("overflows"));
  CHECK_THROWS_AS(shape_size({two32, two32}), InvalidArgument);
  CHECK_THROWS_WITH(shape_size({3, -2}), Catch::Contains("dimension -2"));
}

TEST_CASE("ParameterSet::add rejects shapes that overflow or no buffer can hold", "[parameter_set][errors]") {
  const std::int64_t two32 = std::int64_t{1} << 32, two62 = std::int64_t{1} << 62;
  float w[4] = {1, 2, 3, 4};
  ParameterSet p;
  // {4, 2^62 + 1} wraps to 4 weights; {2^32, 2^32} to 0; {3, 2^62} fits 64 bits but not memory.
  CHECK_THROWS_WITH(p.add("a", w, {4, two62 + 1}), Catch::Contains("east::ParameterSet::add()") &&
                                                       Catch::Contains("'a'") &&
                                                       Catch::Contains("overflows"));
  CHECK_THROWS_WITH(p.add("b", w, {two32, two32}), Catch::Contains("'b'") && Catch::Contains("overflows"));
  CHECK_THROWS_WITH(p.add("c", w, {3, two62}), Catch::Contains("'c'") &&
                                                   Catch::Contains("13835058055282163712 weights") &&
                                                   Catch::Contains("valid: at most"));
  CHECK(p.empty());
  p.add("d", w, {2, 2});
  CHECK(p[0].size() == 4);
}

TEST_CASE("DstConfig's drop_floor is validated when a preset is built", "[presets][errors]") {
  east_test::ToyModel m({{"x", {8, 8}}});
  for (double bad :
       {std::numeric_limits<double>::quiet_NaN(), 5.0, -0.1, std::numeric_limits<double>::infinity()}) {
    DstConfig c{0.2, 5, 100, 0.3};
    c.drop_floor = bad;
    INFO(bad);
    CHECK_THROWS_WITH(make_rigl(m.params(), c), Catch::Contains("drop_floor") && Catch::Contains("[0, 1]"));
    CHECK_THROWS_AS(make_set(m.params(), c), InvalidArgument);
    CHECK_THROWS_AS(make_snfs(m.params(), c), InvalidArgument);
    CHECK_THROWS_AS(make_cyclic(m.params(), c, CyclicDensity{0, 3, 2, 10}), InvalidArgument);
  }
  DstConfig ok{0.5, 5, 100, 0.3};
  ok.drop_floor = 0.3;
  CHECK_NOTHROW(make_rigl(m.params(), ok));
}
