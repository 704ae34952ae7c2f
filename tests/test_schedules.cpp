#include <catch2/catch.hpp>
#include <east/east.hpp>

using namespace east;

TEST_CASE("Periodic updates every ΔT between begin and end", "[schedules]") {
  Periodic p{100, 100, 450};
  CHECK_FALSE(p.is_update_step(0));
  CHECK(p.is_update_step(100));
  CHECK_FALSE(p.is_update_step(150));
  CHECK(p.is_update_step(400));
  CHECK_FALSE(p.is_update_step(500));
  Periodic bad{0, 0, 10};
  CHECK_THROWS_WITH(bad.is_update_step(1), Catch::Contains("interval 0"));
}

TEST_CASE("Cosine drop fraction at chosen steps", "[schedules]") {
  CosineDrop c{0.5, 0.005, 0, 1000};
  CHECK(c.drop_fraction(0) == Approx(0.5));
  CHECK(c.drop_fraction(500) == Approx(0.005 + 0.495 * 0.5));  // cos(π/2) = 0
  CHECK(c.drop_fraction(250) == Approx(0.005 + 0.495 * (1 + std::sqrt(0.5)) / 2));
  CHECK(c.drop_fraction(1000) == Approx(0.005));
  CHECK(c.drop_fraction(5000) == Approx(0.005));
}

TEST_CASE("Exponential and constant drop fractions", "[schedules]") {
  ExponentialDrop e{0.4, 0.5, 100, 0, 0.01};
  CHECK(e.drop_fraction(0) == Approx(0.4));
  CHECK(e.drop_fraction(100) == Approx(0.2));
  CHECK(e.drop_fraction(250) == Approx(0.4 * std::pow(0.5, 2.5)));
  CHECK(e.drop_fraction(10000) == Approx(0.01));
  CHECK(ConstantDrop{0.3}.drop_fraction(77) == 0.3);
}

TEST_CASE("Cubic density (Zhu & Gupta) at chosen steps", "[schedules]") {
  CubicDensity g{1.0, 0.1, 0, 100};
  CHECK(g.density(0) == Approx(1.0));
  // s = 0.9 + (0 - 0.9)(1 - 0.5)^3 = 0.9 - 0.1125 → d = 0.2125
  CHECK(g.density(50) == Approx(0.2125));
  CHECK(g.density(100) == Approx(0.1));
  CHECK(g.density(200) == Approx(0.1));
}

TEST_CASE("Cyclic density: cosine and triangular cycles, then the target", "[schedules]") {
  CyclicDensity c{0.001, 3.0, 2, 100};
  CHECK(c.end() == 200);
  CHECK(c.density(0) == Approx(0.001));
  CHECK(c.density(50) == Approx(0.003));                // cycle peak
  CHECK(c.density(25) == Approx(0.001 + 0.002 * 0.5));  // ½(1 − cos(π/2))
  CHECK(c.density(150) == Approx(0.003));
  CHECK(c.density(200) == Approx(0.001));
  CHECK(c.density(10000) == Approx(0.001));
  CHECK(c.forces_update(200));
  CHECK_FALSE(c.forces_update(199));
  CyclicDensity t{0.01, 2.0, 1, 100, 1.0, CycleShape::triangular, 10};
  CHECK(t.density(5) == Approx(0.01));    // before begin
  CHECK(t.density(35) == Approx(0.015));  // p = 0.25 → 0.5 up
  CHECK(t.density(60) == Approx(0.02));   // peak
  CyclicDensity grow{0.001, 3.0, 2, 100, 2.0};
  CHECK(grow.end() == 300);  // 100 + 200
  CHECK(grow.density(200) == Approx(0.003));
  CyclicDensity bad{0.5, 3.0};
  CHECK_THROWS_WITH(bad.density(0), Catch::Contains("multiplier 3"));
}

// Schedules compose: a user's own class is just a type with the method.
struct StepDown {
  double density(std::int64_t step) const { return step < 100 ? 0.2 : 0.1; }
};

TEST_CASE("A user-written schedule drives the controller", "[schedules]") {
  std::vector<float> w(1000, 1.0f), g(1000, 0.5f);
  ParameterSet p;
  p.add("w", w.data(), {1000}, g.data());
  Controller ctl(p, Method{Uniform{}, StepDown{}, ConstantDrop{0.0}, Periodic{50, 50, 1000}});
  CHECK(ctl.nonzeros() == 200);
  ctl.after_optimizer_step(50);
  CHECK(ctl.nonzeros() == 200);
  ctl.after_optimizer_step(100);
  CHECK(ctl.nonzeros() == 100);
}
