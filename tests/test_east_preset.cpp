// The EAST preset and residual weight sharing as library components.
#include <catch2/catch.hpp>
#include <east/east.hpp>

#include <cmath>
#include <random>

#include "helpers.hpp"

using namespace east;
using east_test::ToyModel;

TEST_CASE("EAST defaults: cyclic density over the first 40%, cosine drop 0.5→0.005, DyReLU ramp 25%→50%",
          "[east]") {
  auto m = ToyModel::small();
  EastConfig cfg;
  cfg.density = 0.02;
  cfg.total_steps = 1000;
  CHECK(cfg.dyrelu_phasing == DyReluPhasing::ramp_only);  // the default (docs/east.md: the evidence)
  cfg.dyrelu_phasing = DyReluPhasing::full;               // EAST-SPEC §2's reading
  auto e = make_east(m.params(), cfg);  // a Controller, like every preset
  const auto phase = make_east_phase(cfg);
  const auto& method = e.method();
  CHECK(method.update.interval == 40);  // 1000 / 25
  CHECK(method.density.cycles == 2);
  CHECK(method.density.length == 200);  // 0.4 · 1000 / 2
  CHECK(method.density.end() == 400);
  CHECK(method.density.density(100) == Approx(0.06));  // peak of the first cycle: m = 3
  CHECK(method.drop.drop_fraction(0) == Approx(0.5));
  CHECK(method.drop.drop_fraction(1000) == Approx(0.005));
  CHECK(phase.beta(0) == 1.0);
  CHECK(phase.beta(250) == 1.0);
  CHECK(phase.beta(375) == Approx(0.5));
  CHECK(phase.beta(500) == 0.0);
  CHECK(phase.beta(900) == 0.0);
}

TEST_CASE("EAST's ramp-only DyReLU phasing (ES2's code): ReLU before the ramp, DyReLU only inside it",
          "[east]") {
  auto m = ToyModel::small();
  EastConfig cfg;
  cfg.density = 0.02;
  cfg.total_steps = 1000;
  const auto e = make_east_phase(cfg);
  CHECK(e.beta(0) == 0.0);
  CHECK(e.beta(250) == 0.0);  // the ramp's first step is still β = 1: ReLU here
  CHECK(e.beta(251) == Approx(249.0 / 250.0));
  CHECK(e.beta(375) == Approx(0.5));
  CHECK(e.beta(500) == 0.0);
  CHECK(e.frozen(100));  // unused: no optimizer step
  CHECK_FALSE(e.frozen(300));
  CHECK_FALSE(e.frozen(700));
  cfg.dyrelu_phasing = DyReluPhasing::full;
  CHECK_FALSE(make_east_phase(cfg).frozen(100));
  CHECK(make_east_phase(cfg).beta(100) == 1.0);
  cfg.dyrelu_ramp = DyReluRamp::cosine;  // β = ½(1 + cos πp): 0.5 at the middle, ½(1 + cos(π/4)) at p = ¼
  CHECK(make_east_phase(cfg).beta(375) == Approx(0.5));
  CHECK(make_east_phase(cfg).beta(312) == Approx(0.5 * (1.0 + std::cos(3.14159265358979 * 62.0 / 250.0))));
}

TEST_CASE("EAST's ablation switches turn each trick off", "[east]") {
  auto m = ToyModel::small();
  EastConfig cfg;
  cfg.density = 0.02;
  cfg.total_steps = 1000;
  cfg.cyclic = false;
  cfg.dyrelu = false;
  auto e = make_east(m.params(), cfg);
  const auto phase = make_east_phase(cfg);
  for (std::int64_t s : {0, 100, 200, 700}) {
    CHECK(e.method().density.density(s) == 0.02);  // no cycles: constant target
    CHECK(phase.beta(s) == 0.0);                   // no DyReLU: plain ReLU throughout
  }
  EastConfig bad = cfg;
  bad.total_steps = 0;
  CHECK_THROWS_WITH(make_east(m.params(), bad), Catch::Contains("total_steps 0"));
  bad = cfg;
  bad.multiplier = 100;
  CHECK_THROWS_WITH(make_east(m.params(), bad), Catch::Contains("multiplier 100"));
}

TEST_CASE("An EAST run keeps exact counts and ends the cyclic phase at the target", "[east]") {
  auto m = ToyModel::small();
  EastConfig cfg;
  cfg.density = 0.02;
  cfg.total_steps = 500;
  cfg.update_interval = 15;  // not a divisor of the cyclic phase: the boundary update is forced
  auto e = make_east(m.params(), cfg);
  const auto target = nonzero_budget(e.params(), 0.02);
  std::size_t peak = 0;
  for (std::int64_t step = 0; step < 500; ++step) {
    m.randomize_grads(unsigned(step));
    e.before_optimizer_step(step);
    m.sgd(0.01f);
    e.after_optimizer_step(step);
    peak = std::max(peak, e.nonzeros());
    if (step == 200) REQUIRE(e.nonzeros() == target);  // forced update at the end of the cycles
    if (step > 200) REQUIRE(e.nonzeros() == target);
  }
  CHECK(peak > 2 * target);
}

TEST_CASE("Shared tensors: one mask for every use, budget as the unshared network, gradients by FD",
          "[east][sharing]") {
  // One stored 6×4 tensor used by 3 blocks, plus an unshared layer.
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  std::vector<float> w(24), g(24), other(40), other_g(40);
  for (auto& x : w) x = nd(rng);
  for (auto& x : other) x = nd(rng);
  float s[3] = {0.3f, 0.7f, 1.2f}, ds[3];
  std::vector<float> uw[3] = {std::vector<float>(24), std::vector<float>(24), std::vector<float>(24)};
  std::vector<float> ug[3] = {std::vector<float>(24), std::vector<float>(24), std::vector<float>(24)};
  SharedTensor t{"shared",
                 w.data(),
                 g.data(),
                 24,
                 {&s[0], &s[1], &s[2]},
                 {&ds[0], &ds[1], &ds[2]},
                 {uw[0].data(), uw[1].data(), uw[2].data()},
                 {ug[0].data(), ug[1].data(), ug[2].data()}};
  ParameterSet p;
  add_shared(p, t, {6, 4});
  p.add("other", other.data(), {8, 5}, other_g.data());
  CHECK(p.logical_size() == 3 * 24 + 40);

  // Same nonzero count as the unshared network (three separate 6×4 layers) at the same density.
  std::vector<float> u(72 + 40);
  ParameterSet unshared;
  for (int i = 0; i < 3; ++i) unshared.add("u" + std::to_string(i), u.data() + 24 * i, {6, 4});
  unshared.add("other", u.data() + 72, {8, 5});
  auto ctl = make_rigl(p, DstConfig{0.25, 1, 100});
  auto ref = make_rigl(unshared, DstConfig{0.25, 1, 100});
  CHECK(ctl.nonzeros() == ref.nonzeros());

  // Effective weights of every use are zero exactly where the one mask is inactive.
  t.effective_weights();
  for (int i = 0; i < 3; ++i)
    for (std::size_t j = 0; j < 24; ++j) CHECK((uw[i][j] == 0.0f) == !ctl.masks()[0][j]);

  // Loss L = Σ_i Σ_j c_ij · (s_i W_j)²/2 → dL/d(s_i W)_j = c_ij s_i W_j; check dW, ds by FD.
  std::vector<float> c(72);
  for (auto& x : c) x = nd(rng);
  auto loss = [&](const std::vector<float>& W, const float* sc) {
    double L = 0;
    for (int i = 0; i < 3; ++i)
      for (std::size_t j = 0; j < 24; ++j)
        L += 0.5 * c[24 * i + j] * double(sc[i] * W[j]) * double(sc[i] * W[j]);
    return L;
  };
  for (int i = 0; i < 3; ++i)
    for (std::size_t j = 0; j < 24; ++j) ug[i][j] = c[24 * i + j] * s[i] * w[j];
  t.accumulate_gradients();
  const double h = 1e-3;
  for (std::size_t j = 0; j < 24; j += 5) {
    auto wp = w, wm = w;
    wp[j] += float(h), wm[j] -= float(h);
    CHECK(g[j] == Approx((loss(wp, s) - loss(wm, s)) / (2 * h)).epsilon(1e-2).margin(1e-3));
  }
  for (int i = 0; i < 3; ++i) {
    float sp[3] = {s[0], s[1], s[2]}, sm[3] = {s[0], s[1], s[2]};
    sp[i] += float(h), sm[i] -= float(h);
    CHECK(ds[i] == Approx((loss(w, sp) - loss(w, sm)) / (2 * h)).epsilon(1e-2).margin(1e-3));
  }
  SharedTensor broken = t;
  broken.use_grads.pop_back();
  CHECK_THROWS_WITH(broken.accumulate_gradients(), Catch::Contains("3 scales"));
}

TEST_CASE("Named presets: east keeps DyReLU (ramp-only), east-no-dyrelu is its first-class ablation", "[east]") {
  const auto with = presets::by_name("east", 0.01), without = presets::by_name("east-no-dyrelu", 0.01);
  CHECK(with.kind == Preset::Kind::east);
  CHECK(without.kind == Preset::Kind::east);
  const auto pw = make_east_phase(with.east_config(1000)), po = make_east_phase(without.east_config(1000));
  CHECK(pw.beta(100) == 0.0);  // ramp-only: ReLU before the ramp …
  CHECK(pw.beta(375) == Approx(0.5));  // … DyReLU-B inside it
  for (std::int64_t s : {0, 100, 375, 900}) CHECK(po.beta(s) == 0.0);
  CHECK(without.east_config(1000).cyclic);  // the other tricks stay
  CHECK_THROWS_WITH(presets::by_name("east-full", 0.01), Catch::Contains("east-no-dyrelu"));
}

TEST_CASE("Preset::fan_in_init: grown weights drawn at the active fan-in's scale, every dynamic kind", "[east]") {
  for (auto kind : {Preset::Kind::set, Preset::Kind::rigl, Preset::Kind::snfs, Preset::Kind::east}) {
    for (bool fan_in : {false, true}) {
      ToyModel m({{"a", {32, 400}}, {"b", {16, 800}}});
      Preset p = presets::make(kind, 0.1);
      p.fan_in_init = fan_in;
      auto ctl = p.build(m.params(), 100);
      ctl->before_optimizer_step(0);  // SNFS observes a gradient first
      const auto before = ctl->masks();
      ctl->update(10);
      std::size_t grown = 0, nonzero = 0;
      for (std::size_t l = 0; l < before.size(); ++l)
        for (std::size_t i = 0; i < before[l].size(); ++i)
          if (!before[l][i] && ctl->masks()[l][i]) ++grown, nonzero += m.tensors[l].w[i] != 0.0f;
      INFO("kind " << static_cast<int>(kind) << " fan_in_init " << fan_in);
      CHECK(grown > 0);
      CHECK(nonzero == (fan_in ? grown : 0u));
    }
  }
}
