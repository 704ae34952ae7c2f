#include <catch2/catch.hpp>
#include <east/east.hpp>

#include "helpers.hpp"

using namespace east;

namespace {
// A {4,2} (raw 6/8), B {10,10} (raw 20/100), C {2,2,3,3} (raw 10/36): Σ raw·n = 6 + 20 + 10 = 36.
struct Three {
  std::vector<float> a = std::vector<float>(8), b = std::vector<float>(100), c = std::vector<float>(36);
  ParameterSet params() {
    ParameterSet p;
    p.add("A", a.data(), {4, 2});
    p.add("B", b.data(), {10, 10});
    p.add("C", c.data(), {2, 2, 3, 3});
    return p;
  }
};
}  // namespace

TEST_CASE("ERK densities equal the hand-solved ε·raw when no layer exceeds 1", "[distributions]") {
  Three t;
  auto p = t.params();
  // density 0.25 of 144 → budget 36 = ε·36 → ε = 1: counts 0.75·8, 0.2·100, (10/36)·36.
  CHECK(layer_counts(ErdosRenyiKernel{}, p, 0.25) == std::vector<std::size_t>{6, 20, 10});
}

TEST_CASE("ERK makes a layer dense and re-solves when its share exceeds 1 (RigL)", "[distributions]") {
  Three t;
  auto p = t.params();
  // density 0.5 → budget 72, ε = 2 → A at 1.5 becomes dense (8); the rest: ε' = 64/30,
  // B = 42.67, C = 21.33 → floors 42 + 21, the last nonzero goes to the larger remainder (B).
  CHECK(layer_counts(ErdosRenyiKernel{}, p, 0.5) == std::vector<std::size_t>{8, 43, 21});
}

TEST_CASE("The per-layer minimum pins small layers and re-solves the rest", "[distributions]") {
  Three t;
  auto p = t.params();
  // density 0.03 → budget 4; ε = 1/9 gives A 0.67 < 1 → pinned at 1; B, C share 3 as 2 + 1.
  CHECK(layer_counts(ErdosRenyiKernel{}, p, 0.03) == std::vector<std::size_t>{1, 2, 1});
  // Budget 1 < 3 layers × minimum 1: a clear error naming the budget.
  CHECK_THROWS_WITH(layer_counts(ErdosRenyiKernel{}, p, 0.01), Catch::Contains("budget 1"));
  // Without a minimum, layer collapse is allowed.
  AllocationOptions none{0};
  auto c = layer_counts(ErdosRenyiKernel{}, p, 0.01, none);
  CHECK(c[0] + c[1] + c[2] == 1);
}

TEST_CASE("Uniform and ER give the expected shares", "[distributions]") {
  Three t;
  auto p = t.params();
  CHECK(layer_counts(Uniform{}, p, 0.5) == std::vector<std::size_t>{4, 50, 18});
  // ER raw: A (2+4)/8 = .75, B .2, C (2+2)/4 = 1 (kernel dims ignored). Σ raw·n = 6 + 20 + 36 = 62.
  // density 0.25 → 36 / 62 = ε: A 3.48, B 11.61, C 20.90 → floors 3, 11, 20 (34), +1 C (.90), +1 B (.61).
  CHECK(layer_counts(ErdosRenyi{}, p, 0.25) == std::vector<std::size_t>{3, 12, 21});
}

TEST_CASE("Counts always sum exactly to the budget", "[distributions]") {
  auto m = east_test::ToyModel::small();
  auto p = m.params();
  for (double d : {1e-3, 0.01, 0.05, 0.1, 0.3, 0.77, 1.0}) {
    const auto c = layer_counts(ErdosRenyiKernel{}, p, d);
    std::size_t sum = 0;
    for (std::size_t l = 0; l < c.size(); ++l) {
      CHECK(c[l] <= p[l].size());
      CHECK(c[l] >= 1);
      sum += c[l];
    }
    CHECK(sum == nonzero_budget(p, d));
  }
}

TEST_CASE("Dense and excluded layers, custom densities", "[distributions]") {
  Three t;
  auto p = t.params();
  p.set_role("A", LayerRole::dense);
  p.set_role("C", LayerRole::excluded);
  // N = 8 + 100 = 108, density 0.5 → 54: A keeps 8, B gets 46, C is ignored.
  auto c = layer_counts(ErdosRenyiKernel{}, p, 0.5);
  CHECK(c[0] == 8);
  CHECK(c[1] == 46);

  Three u;
  auto q = u.params();
  CustomDensities custom{{{"A", 0.5}, {"B", 0.1}, {"C", 0.25}}};
  const double d = custom.overall_density(q);  // (4 + 10 + 9) / 144
  CHECK(d == Approx(23.0 / 144));
  CHECK(layer_counts(custom, q, d) == std::vector<std::size_t>{4, 10, 9});
  CustomDensities missing{{{"A", 0.5}}};
  CHECK_THROWS_WITH(layer_counts(missing, q, 0.1), Catch::Contains("no density given for layer 'B'"));
  CustomDensities bad{{{"A", 1.5}, {"B", 0.1}, {"C", 0.1}}};
  CHECK_THROWS_WITH(layer_counts(bad, q, 0.1), Catch::Contains("1.5") && Catch::Contains("(0, 1]"));
}

TEST_CASE("Shared tensors: the budget counts every use", "[distributions][sharing]") {
  // Unshared: 4 layers of 100. Shared: 2 stored layers, one of them used 3 times.
  std::vector<float> buf(400);
  ParameterSet unshared, shared;
  for (int i = 0; i < 4; ++i) unshared.add("l" + std::to_string(i), buf.data() + 100 * i, {10, 10});
  shared.add("a", buf.data(), {10, 10});
  shared.add("b", buf.data() + 100, {10, 10});
  shared.set_uses("b", 3);
  CHECK(shared.logical_size() == unshared.logical_size());
  for (double d : {0.01, 0.05, 0.1}) {
    const auto cu = layer_counts(ErdosRenyiKernel{}, unshared, d);
    const auto cs = layer_counts(ErdosRenyiKernel{}, shared, d);
    CHECK(cu[0] + cu[1] + cu[2] + cu[3] == cs[0] + cs[1]);
  }
}

TEST_CASE("Bad densities are rejected with the value and the range", "[distributions]") {
  Three t;
  auto p = t.params();
  for (double d : {0.0, -0.1, 1.01, std::nan("")})
    CHECK_THROWS_WITH(layer_counts(ErdosRenyiKernel{}, p, d), Catch::Contains("outside (0, 1]"));
  ParameterSet empty;
  CHECK_THROWS_AS(layer_counts(Uniform{}, empty, 0.5), InvalidArgument);
}
