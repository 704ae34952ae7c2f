#include <catch2/catch.hpp>
#include <east/east.hpp>

#include <cmath>
#include <set>

#include "helpers.hpp"

using namespace east;
using east_test::ToyModel;

namespace {
std::vector<std::size_t> nnz_per_layer(const ToyModel& m) {
  std::vector<std::size_t> v;
  for (auto& t : m.tensors) v.push_back(east_test::count_nonzero(t.w));
  return v;
}

struct Recorder {
  std::vector<UpdateReport> reports;
  std::vector<std::pair<double, double>> changes;
  std::size_t grown_calls = 0;
  void on_update(const UpdateReport& r) { reports.push_back(r); }
  void on_density_change(std::int64_t, double from, double to) { changes.emplace_back(from, to); }
  void on_grown(const LayerView&, const BitMask& g) { grown_calls += g.count() > 0; }
};
}  // namespace

TEST_CASE("Initial masks have exact counts and zero the inactive weights", "[controller]") {
  auto m = ToyModel::small();
  auto ctl = make_rigl(m.params(), DstConfig{0.05, 10, 1000});
  const auto expect = layer_counts(ErdosRenyiKernel{}, ctl.params(), 0.05);
  for (std::size_t l = 0; l < expect.size(); ++l) {
    CHECK(ctl.masks()[l].count() == expect[l]);
    CHECK(east_test::count_nonzero(m.tensors[l].w) == expect[l]);
  }
  CHECK(ctl.nonzeros() == nonzero_budget(ctl.params(), 0.05));
}

TEST_CASE("RigL update: pruned are the smallest |w|, grown were inactive, start at zero, counts exact",
          "[controller]") {
  auto m = ToyModel::small();
  auto ctl = make_rigl(m.params(true), DstConfig{0.1, 10, 1000, 0.3});
  const auto before_masks = ctl.masks();
  const auto before_w = m.tensors;
  m.randomize_grads(9);
  Recorder rec;
  ctl.before_optimizer_step(10);  // update step: gradients stay dense
  CHECK(east_test::count_nonzero(m.tensors[1].g) == m.tensors[1].g.size());
  CHECK(ctl.after_optimizer_step(10, rec));
  REQUIRE(rec.reports.size() == 1);
  const auto& rep = rec.reports[0];
  for (std::size_t l = 0; l < m.tensors.size(); ++l) {
    const auto& old = before_masks[l];
    const auto& now = ctl.masks()[l];
    const auto& w0 = before_w[l].w;
    const auto& t = m.tensors[l];
    CHECK(now.count() == old.count());
    const std::size_t k = static_cast<std::size_t>(std::ceil(0.3 * old.count() - 1e-9));
    CHECK(rep.layers[l].dropped == k);
    CHECK(rep.layers[l].grown == k);
    float max_dropped = 0, min_kept = INFINITY;
    for (std::size_t i = 0; i < old.size(); ++i) {
      if (old[i] && !now[i]) max_dropped = std::max(max_dropped, std::abs(w0[i]));
      if (old[i] && now[i]) min_kept = std::min(min_kept, std::abs(w0[i]));
      if (!old[i] && now[i]) {
        CHECK(t.w[i] == 0.0f);  // grown start at zero
        CHECK(t.m[i] == 0.0f);  // and their momentum is reset
      }
      if (!now[i]) CHECK(t.w[i] == 0.0f);
    }
    CHECK(max_dropped <= min_kept);
    // Grown are the largest |g| among positions inactive before the update.
    float min_grown = INFINITY, max_not_grown = 0;
    for (std::size_t i = 0; i < old.size(); ++i) {
      if (old[i]) continue;
      if (now[i])
        min_grown = std::min(min_grown, std::abs(t.g[i]));
      else
        max_not_grown = std::max(max_not_grown, std::abs(t.g[i]));
    }
    CHECK(min_grown >= max_not_grown);
    CHECK(rep.layers[l].ever_active_fraction == Approx(double(old.count() + k) / old.size()));
  }
  CHECK(rec.grown_calls == m.tensors.size());
  CHECK(rec.changes.empty());
}

TEST_CASE("Gradients are masked on ordinary steps", "[controller]") {
  auto m = ToyModel::small();
  auto ctl = make_rigl(m.params(), DstConfig{0.1, 10, 1000});
  ctl.before_optimizer_step(3);
  for (std::size_t l = 0; l < m.tensors.size(); ++l)
    CHECK(east_test::count_nonzero(m.tensors[l].g) <= ctl.masks()[l].count());
}

TEST_CASE("Per-step masking can be turned off per layer; updates still mask every layer", "[controller]") {
  auto m = ToyModel::small();
  auto ctl = make_rigl(m.params(true), DstConfig{0.1, 10, 1000});
  ctl.set_per_step_masking(0, false);
  CHECK_FALSE(ctl.per_step_masking(0));
  CHECK(ctl.per_step_masking(1));
  m.randomize_grads(4);
  for (auto& t : m.tensors) std::fill(t.w.begin(), t.w.end(), 1.0f);  // as if updated elsewhere
  ctl.before_optimizer_step(3);
  CHECK(ctl.after_optimizer_step(3) == false);
  CHECK(east_test::count_nonzero(m.tensors[0].g) == m.tensors[0].g.size());  // left alone
  CHECK(east_test::count_nonzero(m.tensors[0].w) == m.tensors[0].w.size());
  CHECK(east_test::count_nonzero(m.tensors[1].g) <= ctl.masks()[1].count());  // masked
  CHECK(east_test::count_nonzero(m.tensors[1].w) == ctl.masks()[1].count());
  m.randomize_grads(5);
  ctl.before_optimizer_step(10);
  CHECK(ctl.after_optimizer_step(10));  // an update masks layer 0 too
  CHECK(east_test::count_nonzero(m.tensors[0].w) <= ctl.masks()[0].count());
  CHECK_THROWS_WITH(ctl.set_per_step_masking(99, false), Catch::Contains("layer 99"));
}

TEST_CASE("Nonzero counts stay exact over a run for every preset", "[controller]") {
  auto run = [](auto make) {
    auto m = ToyModel::small();
    auto ctl = make(m.params(true));
    const auto budget = ctl.nonzeros();
    for (std::int64_t step = 0; step < 60; ++step) {
      m.randomize_grads(static_cast<unsigned>(step) + 100);
      ctl.before_optimizer_step(step);
      m.sgd(0.01f);
      for (auto& t : m.tensors)
        for (auto& x : t.m) x = 0.9f * x + 0.1f;  // some momentum
      ctl.after_optimizer_step(step);
      REQUIRE(ctl.nonzeros() == budget);
      const auto per = nnz_per_layer(m);
      for (std::size_t l = 0; l < per.size(); ++l) REQUIRE(per[l] <= ctl.masks()[l].count());
    }
    return ctl.digest();
  };
  const DstConfig cfg{0.05, 10, 50, 0.5};
  run([&](ParameterSet p) { return make_rigl(std::move(p), cfg); });
  run([&](ParameterSet p) { return make_set(std::move(p), cfg); });
  run([&](ParameterSet p) { return make_snfs(std::move(p), cfg); });
  run([&](ParameterSet p) { return make_static(std::move(p), 0.05); });
  // Same seed, same inputs → same masks; another seed → other masks.
  CHECK(run([&](ParameterSet p) { return make_set(std::move(p), cfg, {7}); }) ==
        run([&](ParameterSet p) { return make_set(std::move(p), cfg, {7}); }));
  CHECK(run([&](ParameterSet p) { return make_set(std::move(p), cfg, {7}); }) !=
        run([&](ParameterSet p) { return make_set(std::move(p), cfg, {8}); }));
}

TEST_CASE("Cyclic density moves layers to their share and returns exactly to the target", "[controller]") {
  auto m = ToyModel::small();
  auto ctl = make_cyclic(m.params(), DstConfig{0.02, 10, 1000, 0.3}, CyclicDensity{0, 3.0, 2, 50});
  Recorder rec;
  const auto target = nonzero_budget(ctl.params(), 0.02);
  CHECK(ctl.nonzeros() == target);
  std::size_t peak = 0, expected_peak = 0;
  for (std::int64_t step = 0; step <= 130; ++step) {
    m.randomize_grads(static_cast<unsigned>(step));
    ctl.before_optimizer_step(step);
    ctl.after_optimizer_step(step, rec);
    if (ctl.is_update_step(step)) {
      const auto counts = layer_counts(ErdosRenyiKernel{}, ctl.params(), ctl.method().density.density(step));
      for (std::size_t l = 0; l < counts.size(); ++l) REQUIRE(ctl.masks()[l].count() == counts[l]);
      expected_peak =
          std::max(expected_peak, nonzero_budget(ctl.params(), ctl.method().density.density(step)));
    }
    peak = std::max(peak, ctl.nonzeros());
  }
  // Updates at steps 20 and 30 of each 50-step cycle are the highest: ½(1 − cos 0.8π) of the way up.
  CHECK(expected_peak == nonzero_budget(ctl.params(), 0.02 + 0.04 * 0.5 * (1 - std::cos(0.8 * east::pi))));
  CHECK(peak == expected_peak);
  CHECK(ctl.nonzeros() == target);
  CHECK_FALSE(rec.changes.empty());
  CHECK(rec.changes.back().second == Approx(0.02));
}

TEST_CASE("GMP prunes gradually to the final density", "[controller]") {
  auto m = ToyModel::small();
  auto ctl = make_gmp(m.params(), DstConfig{0.1, 10, 100});
  CHECK(ctl.nonzeros() == ctl.params().logical_size());  // starts dense
  std::size_t prev = ctl.nonzeros();
  for (std::int64_t step = 0; step <= 120; ++step) {
    ctl.before_optimizer_step(step);
    ctl.after_optimizer_step(step);
    CHECK(ctl.nonzeros() <= prev);
    prev = ctl.nonzeros();
  }
  CHECK(ctl.nonzeros() == nonzero_budget(ctl.params(), 0.1));
}

TEST_CASE("NaN/Inf at an update is rejected and changes nothing", "[controller][errors]") {
  auto m = ToyModel::small();
  auto ctl = make_rigl(m.params(), DstConfig{0.1, 10, 1000});
  const auto digest = ctl.digest();
  const auto w_before = m.tensors;
  m.tensors[2].g[17] = std::nanf("");
  CHECK_THROWS_WITH(ctl.update(10), Catch::Contains("conv3") && Catch::Contains("index 17"));
  CHECK(ctl.digest() == digest);
  for (std::size_t l = 0; l < m.tensors.size(); ++l) CHECK(m.tensors[l].w == w_before[l].w);
  m.tensors[2].g[17] = 0;
  // An inactive weight made Inf by a user's bug is also caught.
  std::size_t inactive = 0;
  ctl.masks()[0].for_each_inactive([&](std::size_t i) { inactive = i; });
  m.tensors[0].w[inactive] = INFINITY;
  CHECK_THROWS_WITH(ctl.update(10), Catch::Contains("conv1") && Catch::Contains("non-finite weight"));
  CHECK(ctl.digest() == digest);
}

TEST_CASE("Bad configuration gets clear errors", "[controller][errors]") {
  auto m = ToyModel::small();
  CHECK_THROWS_WITH(make_rigl(m.params(), DstConfig{1.5, 10, 100}), Catch::Contains("1.5"));
  CHECK_THROWS_WITH(make_rigl(m.params(), DstConfig{0.1, 0, 100}), Catch::Contains("update_interval 0"));
  CHECK_THROWS_WITH(make_rigl(ParameterSet{}, DstConfig{0.1, 10, 100}), Catch::Contains("empty"));
  ParameterSet p;
  CHECK_THROWS_WITH(p.add("x", nullptr, {3}), Catch::Contains("null"));
  std::vector<float> w(4);
  CHECK_THROWS_WITH(p.add("x", w.data(), {2, 0}), Catch::Contains("dimension 0"));
  p.add("x", w.data(), {4});
  CHECK_THROWS_WITH(p.add("x", w.data(), {4}), Catch::Contains("already registered"));
  CHECK_THROWS_WITH(p.at("nope"), Catch::Contains("unknown layer name 'nope'"));
  auto ctl = make_rigl(p, DstConfig{0.5, 10, 100});  // no gradient buffer registered
  CHECK_THROWS_WITH(ctl.update(10), Catch::Contains("no gradient buffer"));
  auto snfs = make_snfs(p, DstConfig{0.5, 10, 100});
  CHECK_THROWS_WITH(snfs.update(10), Catch::Contains("no gradient has been observed"));
  CHECK_THROWS_WITH(make_snfs(p, DstConfig{0.5, 10, 100}, {}, ErdosRenyiKernel{}, 1.0),
                    Catch::Contains("beta 1"));
}

TEST_CASE("Data-parallel ranks with the same averaged gradient agree without communication",
          "[controller][parallel]") {
  // Two ranks see different micro-batch gradients; both average them (the all-reduce) into the
  // buffer registered with east, so both make identical decisions, which the digests confirm.
  auto a = ToyModel::small(), b = ToyModel::small();
  auto ca = make_rigl(a.params(), DstConfig{0.05, 5, 100}, {3});
  auto cb = make_rigl(b.params(), DstConfig{0.05, 5, 100}, {3});
  for (std::int64_t step = 0; step < 30; ++step) {
    ToyModel g0 = ToyModel::small(), g1 = ToyModel::small();
    g0.randomize_grads(unsigned(2 * step)), g1.randomize_grads(unsigned(2 * step + 1));
    for (std::size_t l = 0; l < a.tensors.size(); ++l)
      for (std::size_t i = 0; i < a.tensors[l].g.size(); ++i) {
        const float avg = 0.5f * (g0.tensors[l].g[i] + g1.tensors[l].g[i]);
        a.tensors[l].g[i] = b.tensors[l].g[i] = avg;
      }
    ca.before_optimizer_step(step), cb.before_optimizer_step(step);
    a.sgd(0.1f), b.sgd(0.1f);
    ca.after_optimizer_step(step), cb.after_optimizer_step(step);
    REQUIRE(ca.digest() == cb.digest());
  }
}

#if defined(EAST_HAS_OPENMP)
#include <omp.h>
TEST_CASE("Mask decisions do not depend on the number of threads", "[controller][parallel]") {
  auto run = [](int threads) {
    omp_set_num_threads(threads);
    auto m = ToyModel({{"big", {256, 128, 3, 3}}, {"fc", {10, 256}}});
    auto ctl = make_rigl(m.params(), DstConfig{0.01, 5, 100});
    for (std::int64_t step = 0; step < 20; ++step) {
      m.randomize_grads(unsigned(step));
      ctl.before_optimizer_step(step);
      m.sgd(0.05f);
      ctl.after_optimizer_step(step);
    }
    return ctl.digest();
  };
  CHECK(run(1) == run(2));
}
#endif

TEST_CASE("Weight sharing: one mask per stored tensor serves every use", "[controller][sharing]") {
  auto m = ToyModel({{"stem", {8, 3, 3, 3}}, {"shared", {8, 8, 3, 3}}, {"fc", {10, 8}}});
  auto p = m.params();
  p.set_uses("shared", 4);
  auto ctl = make_rigl(p, DstConfig{0.05, 10, 100});
  CHECK(ctl.nonzeros() == nonzero_budget(ctl.params(), 0.05));
  CHECK(ctl.density() == Approx(double(ctl.nonzeros()) / ctl.params().logical_size()));
  CHECK(ctl.stored_density() > ctl.density());
}
