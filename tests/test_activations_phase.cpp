// Phase schedules: beta and the freeze rule at chosen steps against hand-computed values.
#include <catch2/catch.hpp>

#include <cmath>

#include "east/activations/phase_schedule.hpp"

namespace {
struct StepDown {  // a user-written schedule without frozen()
  double beta(std::int64_t step) const { return step < 10 ? 1.0 : 0.0; }
};
struct NotASchedule {
  int beta;
};
}  // namespace

static_assert(east::is_phase_schedule_v<east::LinearPhase>);
static_assert(east::is_phase_schedule_v<east::CosinePhase>);
static_assert(east::is_phase_schedule_v<east::ConstantPhase>);
static_assert(east::is_phase_schedule_v<StepDown>);
static_assert(!east::is_phase_schedule_v<NotASchedule>);
static_assert(!east::is_phase_schedule_v<int>);

TEST_CASE("LinearPhase: 1 until start, linear to 0 at end, then 0", "[phase]") {
  const east::LinearPhase p(100, 200);
  CHECK(p.beta(0) == 1.0);
  CHECK(p.beta(99) == 1.0);
  CHECK(p.beta(100) == 1.0);
  CHECK(p.beta(101) == Approx(0.99));
  CHECK(p.beta(150) == 0.5);
  CHECK(p.beta(175) == 0.25);
  CHECK(p.beta(199) == Approx(0.01));
  CHECK(p.beta(200) == 0.0);
  CHECK(p.beta(10000) == 0.0);
  CHECK_FALSE(p.frozen(150));
  CHECK_FALSE(east::phase_frozen(p, 1000));

  const east::LinearPhase f(100, 200, true);
  CHECK_FALSE(f.frozen(99));
  CHECK(f.frozen(100));
  CHECK(f.frozen(5000));
  CHECK(east::phase_frozen(f, 150));

  const east::LinearPhase jump(50, 50);
  CHECK(jump.beta(50) == 1.0);
  CHECK(jump.beta(51) == 0.0);
}

TEST_CASE("LinearPhase from fractions of training and from fractional epochs", "[phase]") {
  // EAST's default ramp: 25% to 50% of 1000 steps.
  const auto p = east::LinearPhase::from_fractions(0.25, 0.5, 1000);
  CHECK(p.start == 250);
  CHECK(p.end == 500);
  CHECK(p.beta(300) == Approx(0.8));
  CHECK(p.beta(450) == Approx(0.2));

  // 2.5 to 5 epochs of 40 steps.
  const auto e = east::LinearPhase::from_epochs(2.5, 5.0, 40, true);
  CHECK(e.start == 100);
  CHECK(e.end == 200);
  CHECK(e.beta(120) == Approx(0.8));
  CHECK(e.frozen(100));
  CHECK_FALSE(e.frozen(99));

  // ES2's default with E = 250 epochs of 391 steps: s = E/4 = 62.5, e = E/2 - 1 = 124.
  const auto es2 = east::LinearPhase::from_epochs(62.5, 124.0, 391);
  CHECK(es2.start == 24438);  // 24437.5 rounds away from zero
  CHECK(es2.end == 48484);
  CHECK(es2.beta(36461) == Approx((48484.0 - 36461.0) / (48484.0 - 24438.0)));

  // Fractions round to the nearest step.
  const auto r = east::LinearPhase::from_fractions(0.25, 0.5, 10);
  CHECK(r.start == 3);  // 2.5 -> 3
  CHECK(r.end == 5);
}

TEST_CASE("CosinePhase and ConstantPhase", "[phase]") {
  const east::CosinePhase c(100, 200, true);
  CHECK(c.beta(50) == 1.0);
  CHECK(c.beta(100) == 1.0);
  CHECK(c.beta(125) == Approx(0.5 * (1.0 + std::sqrt(0.5))));
  CHECK(c.beta(150) == Approx(0.5));
  CHECK(c.beta(175) == Approx(0.5 * (1.0 - std::sqrt(0.5))));
  CHECK(c.beta(200) == 0.0);
  CHECK(c.frozen(100));
  CHECK_FALSE(c.frozen(99));
  const auto cf = east::CosinePhase::from_fractions(0.25, 0.5, 1000);
  CHECK(cf.start == 250);
  CHECK(cf.end == 500);
  CHECK(cf.beta(375) == Approx(0.5));
  const auto ce = east::CosinePhase::from_epochs(1.0, 3.0, 10);
  CHECK(ce.start == 10);
  CHECK(ce.end == 30);

  const east::ConstantPhase one, relu(0.0), third(0.3);
  CHECK(one.beta(123456) == 1.0);
  CHECK(relu.beta(0) == 0.0);
  CHECK(third.beta(7) == 0.3);
  CHECK_FALSE(east::phase_frozen(third, 7));
  CHECK_FALSE(east::phase_frozen(StepDown{}, 100));
}

TEST_CASE("Phase schedules reject bad windows with a clear message", "[phase]") {
  using Catch::Matchers::Contains;
  REQUIRE_THROWS_AS(east::LinearPhase(200, 100), east::InvalidArgument);
  REQUIRE_THROWS_WITH(east::LinearPhase(200, 100),
                      Contains("LinearPhase") && Contains("end 100") && Contains("start 200"));
  REQUIRE_THROWS_WITH(east::LinearPhase(-1, 100), Contains("start -1"));
  REQUIRE_THROWS_WITH(east::CosinePhase(5, 4), Contains("CosinePhase") && Contains("end 4"));
  REQUIRE_THROWS_WITH(east::LinearPhase::from_fractions(0.5, 1.5, 10),
                      Contains("from_fractions") && Contains("end_fraction 1.5") && Contains("[0, 1]"));
  REQUIRE_THROWS_WITH(east::LinearPhase::from_fractions(0.6, 0.5, 10), Contains("end_fraction 0.5"));
  REQUIRE_THROWS_WITH(east::LinearPhase::from_fractions(0.1, 0.5, 0), Contains("total_steps 0"));
  REQUIRE_THROWS_WITH(east::LinearPhase::from_epochs(1, 2, 0), Contains("steps_per_epoch 0"));
  REQUIRE_THROWS_WITH(east::LinearPhase::from_epochs(3, 2, 10), Contains("end_epoch 2"));
  REQUIRE_THROWS_WITH(east::ConstantPhase(1.5), Contains("ConstantPhase") && Contains("value 1.5"));
}
