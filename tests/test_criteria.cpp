// Prune and regrow criteria and grown-weight initialisers, checked through one update each.
#include <catch2/catch.hpp>
#include <east/east.hpp>

#include <cmath>

#include "helpers.hpp"

using namespace east;
using east_test::ToyModel;

namespace {
template <class Prune, class Regrow, class Init = ZeroInit>
auto one_layer(ToyModel& m, Prune prune, Regrow regrow, Init init = {}, std::uint64_t seed = 0) {
  return Controller(
      m.params(true),
      Method{Uniform{}, ConstantDensity{0.2}, ConstantDrop{0.25}, Periodic{1, 1, 100}, prune, regrow, init},
      ControllerOptions{seed});
}
}  // namespace

TEST_CASE("MomentumRegrow grows the largest |momentum of the dense gradient| among inactive (SNFS)",
          "[criteria]") {
  ToyModel m({{"w", {40, 25}}});
  auto ctl = Controller(m.params(), Method{Uniform{}, ConstantDensity{0.2}, ConstantDrop{0.25},
                                           Periodic{10, 10, 100}, MagnitudePrune{}, MomentumRegrow{0.5, {}}});
  // The criterion sees every step's dense gradient, although east masks the gradient after.
  std::vector<double> ema(1000, 0.0);
  for (std::int64_t step = 0; step <= 10; ++step) {
    m.randomize_grads(unsigned(step) + 40);
    for (std::size_t i = 0; i < 1000; ++i) ema[i] = 0.5 * ema[i] + 0.5 * m.tensors[0].g[i];
    ctl.before_optimizer_step(step);
    if (step < 10) CHECK(east_test::count_nonzero(m.tensors[0].g) <= 200);  // masked on ordinary steps
  }
  const BitMask before = ctl.masks()[0];
  ctl.after_optimizer_step(10);
  const BitMask& now = ctl.masks()[0];
  double min_grown = INFINITY, max_other = 0;
  std::size_t grown = 0;
  before.for_each_inactive([&](std::size_t i) {
    if (now[i]) {
      min_grown = std::min(min_grown, std::abs(ema[i]));
      ++grown;
    } else {
      max_other = std::max(max_other, std::abs(ema[i]));
    }
  });
  CHECK(grown == 50);  // ⌈0.25 · 200⌉
  CHECK(min_grown >= max_other - 1e-6);
  // The last gradient alone would rank them differently: this is momentum, not RigL.
  double min_grown_g = INFINITY, max_other_g = 0;
  before.for_each_inactive([&](std::size_t i) {
    const double g = std::abs(m.tensors[0].g[i]);
    if (now[i])
      min_grown_g = std::min(min_grown_g, g);
    else
      max_other_g = std::max(max_other_g, g);
  });
  CHECK(min_grown_g < max_other_g);
}

TEST_CASE("Random criteria: seeded, within the right candidates, different per seed", "[criteria]") {
  auto run = [](std::uint64_t seed) {
    ToyModel m({{"w", {40, 25}}});
    auto ctl = one_layer(m, RandomPrune{}, RandomRegrow{}, ZeroInit{}, seed);
    const BitMask before = ctl.masks()[0];
    ctl.update(1);
    const BitMask& now = ctl.masks()[0];
    std::size_t dropped = 0, grown = 0;
    for (std::size_t i = 0; i < now.size(); ++i) {
      dropped += before[i] && !now[i];
      grown += !before[i] && now[i];
    }
    CHECK(dropped == 50);
    CHECK(grown == 50);
    return now.digest();
  };
  CHECK(run(1) == run(1));
  CHECK(run(1) != run(2));
}

TEST_CASE("RandomPrune ignores magnitudes; MagnitudePrune follows them", "[criteria]") {
  ToyModel m({{"w", {100}}});
  for (std::size_t i = 0; i < 100; ++i) m.tensors[0].w[i] = float(i + 1);  // |w| increasing with index
  auto mag = one_layer(m, MagnitudePrune{}, RandomRegrow{});
  // Among the active weights, the 25% smallest |w| are the lowest active indices.
  std::vector<std::size_t> active;
  mag.masks()[0].for_each_active([&](std::size_t i) { active.push_back(i); });
  const BitMask before = mag.masks()[0];
  mag.update(1);
  for (std::size_t j = 0; j < active.size(); ++j) CHECK(mag.masks()[0][active[j]] == (j >= 5));
}

TEST_CASE("ConstantInit gives grown weights a chosen start value", "[criteria]") {
  ToyModel m({{"w", {40, 25}}});
  auto ctl = one_layer(m, MagnitudePrune{}, GradientRegrow{}, ConstantInit{0.01f});
  const BitMask before = ctl.masks()[0];
  ctl.update(1);
  std::size_t checked = 0;
  for (std::size_t i = 0; i < before.size(); ++i)
    if (!before[i] && ctl.masks()[0][i]) {
      CHECK(m.tensors[0].w[i] == 0.01f);
      ++checked;
    }
  CHECK(checked == 50);
}

// A user's criterion: regrow by |g| but only in the first half of each row (keys = |g| bits).
struct FirstHalfGradient {
  mutable std::vector<std::uint32_t> keys;
  Scores regrow_scores(const LayerContext& ctx) const {
    const auto n = ctx.layer.size();
    const auto cols = static_cast<std::size_t>(ctx.layer.shape[1]);
    keys.resize(n);
    for (std::size_t i = 0; i < n; ++i)
      keys[i] = (i % cols) < cols / 2 ? kernels::abs_key(ctx.layer.grad[i]) + 1 : 0;
    return Scores{nullptr, keys.data()};
  }
};

TEST_CASE("A user-written regrow criterion plugs in", "[criteria]") {
  ToyModel m({{"w", {40, 25}}});
  auto ctl = one_layer(m, MagnitudePrune{}, FirstHalfGradient{});
  const BitMask before = ctl.masks()[0];
  ctl.update(1);
  for (std::size_t i = 0; i < before.size(); ++i)
    if (!before[i] && ctl.masks()[0][i]) CHECK(i % 25 < 12);
}

TEST_CASE("Zero gradients are regrown in seeded random order, after every nonzero one", "[criteria]") {
  // A disconnected layer: gradient exactly zero except at 5 inactive positions.
  auto grown_positions = [](bool random_ties, std::uint64_t seed) {
    ToyModel m({{"w", {40, 25}}});
    GradientRegrow regrow;
    regrow.random_zero_ties = random_ties;
    auto ctl = one_layer(m, MagnitudePrune{}, regrow, ZeroInit{}, seed);
    auto& g = m.tensors[0].g;
    std::fill(g.begin(), g.end(), 0.0f);
    std::vector<std::size_t> hot;
    ctl.masks()[0].for_each_inactive([&](std::size_t i) {
      if (hot.size() < 5 && i % 7 == 3) hot.push_back(i), g[i] = 1.0f + float(hot.size());
    });
    const BitMask before = ctl.masks()[0];
    ctl.update(1);
    std::vector<std::size_t> grown;
    for (std::size_t i = 0; i < before.size(); ++i)
      if (!before[i] && ctl.masks()[0][i]) grown.push_back(i);
    for (auto h : hot) CHECK(ctl.masks()[0][h]);  // every nonzero gradient grows first
    return grown;
  };
  const auto by_index = grown_positions(false, 1);
  const auto a = grown_positions(true, 1), b = grown_positions(true, 1), c = grown_positions(true, 2);
  REQUIRE(by_index.size() == 50);
  CHECK(a == b);  // seeded
  CHECK(a != c);  // another seed, other positions
  CHECK(a != by_index);
  // Index order takes the lowest inactive indices: the bias the random order removes.
  std::size_t low = 0;
  for (auto i : a) low += i < 300;
  CHECK(low < 40);
}

TEST_CASE("Zero weights are pruned before nonzero ones, in random order", "[criteria]") {
  ToyModel m({{"w", {40, 25}}});
  auto ctl = one_layer(m, MagnitudePrune{}, GradientRegrow{});
  std::vector<std::size_t> active;
  ctl.masks()[0].for_each_active([&](std::size_t i) { active.push_back(i); });
  for (std::size_t j = 0; j < 80; ++j)
    m.tensors[0].w[active[active.size() - 1 - j]] = 0.0f;  // 80 zeros, high indices
  ctl.update(1);
  std::size_t zeros_dropped = 0;
  for (std::size_t j = 0; j < 80; ++j) zeros_dropped += !ctl.masks()[0][active[active.size() - 1 - j]];
  CHECK(zeros_dropped == 50);  // all 50 drops are zeros although they have the highest indices
  m.tensors[0].g[3] = std::nanf("");
  CHECK_THROWS_WITH(ctl.update(2), Catch::Contains("non-finite"));
}

TEST_CASE("FanInInit draws grown weights from N(0, gain^2 / active fan-in), seeded", "[criteria]") {
  // 64 units of fan-in 2000 at 20% density: 400 active inputs each, 100 grown per unit (25%).
  ToyModel m({{"w", {64, 2000}}});
  const double gain = std::sqrt(2.0);
  auto ctl = one_layer(m, MagnitudePrune{}, RandomRegrow{}, FanInInit{gain}, 5);
  const BitMask before = ctl.masks()[0];
  ctl.update(1);
  const auto& now = ctl.masks()[0];
  double sum = 0, sq = 0;
  std::size_t grown = 0;
  for (std::size_t i = 0; i < before.size(); ++i)
    if (!before[i] && now[i]) {
      const double w = m.tensors[0].w[i];
      CHECK(w != 0.0);
      sum += w, sq += w * w, ++grown;
    }
  REQUIRE(grown == 64 * 100);
  const double mean = sum / grown, sd = std::sqrt(sq / grown - mean * mean);
  CHECK(std::abs(mean) < 0.004);                                 // 4 standard errors of the mean
  CHECK(sd == Approx(gain / std::sqrt(400.0)).epsilon(0.05));   // 0.0707
  // Same seed, same values; another seed, others.
  ToyModel m2({{"w", {64, 2000}}}), m3({{"w", {64, 2000}}});
  auto c2 = one_layer(m2, MagnitudePrune{}, RandomRegrow{}, FanInInit{gain}, 5);
  auto c3 = one_layer(m3, MagnitudePrune{}, RandomRegrow{}, FanInInit{gain}, 6);
  c2.update(1);
  c3.update(1);
  CHECK(m2.tensors[0].w == m.tensors[0].w);
  CHECK(m3.tensors[0].w != m.tensors[0].w);
  CHECK_THROWS_WITH(FanInInit{-1.0}.initialize(m.params()[0], now.words(), now, make_stream(0)),
                    Catch::Contains("gain -1"));
}
