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
  return Controller(m.params(true), Method{Uniform{}, ConstantDensity{0.2}, ConstantDrop{0.25}, Periodic{1, 1, 100},
                                           prune, regrow, init},
                    ControllerOptions{seed});
}
}  // namespace

TEST_CASE("MomentumRegrow grows the largest |momentum| among inactive positions (SNFS)", "[criteria]") {
  ToyModel m({{"w", {40, 25}}});
  auto ctl = one_layer(m, MagnitudePrune{}, MomentumRegrow{0});
  for (std::size_t i = 0; i < m.tensors[0].m.size(); ++i) m.tensors[0].m[i] = std::sin(float(i) * 1.7f);
  const BitMask before = ctl.masks()[0];
  const auto momentum = m.tensors[0].m;
  ctl.update(1);
  const BitMask& now = ctl.masks()[0];
  float min_grown = INFINITY, max_other = 0;
  std::size_t grown = 0;
  before.for_each_inactive([&](std::size_t i) {
    if (now[i]) {
      min_grown = std::min(min_grown, std::abs(momentum[i]));
      ++grown;
    } else {
      max_other = std::max(max_other, std::abs(momentum[i]));
    }
  });
  CHECK(grown == 50);  // ⌈0.25 · 200⌉
  CHECK(min_grown >= max_other);
  for (std::size_t i = 0; i < now.size(); ++i)
    if (now[i] && !before[i]) CHECK(m.tensors[0].m[i] == 0.0f);  // optimizer state of grown reset
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
    for (std::size_t i = 0; i < n; ++i) keys[i] = (i % cols) < cols / 2 ? kernels::abs_key(ctx.layer.grad[i]) + 1 : 0;
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
