// Adapters only build views: masks computed through them equal those from raw pointers.
#include <catch2/catch.hpp>
#include <east/east.hpp>

#if defined(EAST_TEST_HAS_EIGEN)
#include <east/adapters/eigen.hpp>
#endif
#if defined(EAST_TEST_HAS_XTENSOR)
#include <east/adapters/xtensor.hpp>
#include <xtensor/xtensor.hpp>
#endif

#include <random>

namespace {
template <class F>
void fill_random(F* p, std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  for (std::size_t i = 0; i < n; ++i) p[i] = nd(rng);
}

std::uint64_t raw_digest(std::vector<float> w, std::vector<float> g, east::Shape shape) {
  east::ParameterSet p;
  p.add("w", w.data(), shape, g.data());
  auto ctl = east::make_rigl(p, east::DstConfig{0.05, 1, 10});
  ctl.after_optimizer_step(1);
  return ctl.digest();
}
}  // namespace

#if defined(EAST_TEST_HAS_EIGEN)
TEST_CASE("Eigen matrices and maps register as layers", "[adapters][eigen]") {
  Eigen::MatrixXf w(30, 20), g(30, 20);
  fill_random(w.data(), w.size(), 1);
  fill_random(g.data(), g.size(), 2);
  const std::vector<float> w0(w.data(), w.data() + w.size()), g0(g.data(), g.data() + g.size());
  east::ParameterSet p;
  east::add_eigen(p, "w", w, g);
  CHECK(p[0].shape == east::Shape{30, 20});
  auto ctl = east::make_rigl(p, east::DstConfig{0.05, 1, 10});
  ctl.after_optimizer_step(1);
  CHECK(ctl.digest() == raw_digest(w0, g0, {30, 20}));
  CHECK(ctl.masks()[0].count() == 30);  // 5% of 600
  // Masked in place: only kept weights are nonzero (the 9 grown ones start at 0).
  CHECK((w.array() != 0).count() == 30 - static_cast<long>(ctl.last_report().layers[0].grown));

  std::vector<float> wb(w0), gb(g0);
  Eigen::Map<Eigen::MatrixXf> mw(wb.data(), 30, 20), mg(gb.data(), 30, 20);
  east::ParameterSet q;
  east::add_eigen_map(q, "w", mw, mg);
  auto c2 = east::make_rigl(q, east::DstConfig{0.05, 1, 10});
  c2.after_optimizer_step(1);
  CHECK(c2.digest() == ctl.digest());

  Eigen::MatrixXf bad(3, 3);
  east::ParameterSet r;
  CHECK_THROWS_WITH(east::add_eigen(r, "w", w, bad), Catch::Contains("3x3"));
}
#endif

#if defined(EAST_TEST_HAS_XTENSOR)
TEST_CASE("xtensor containers register as layers", "[adapters][xtensor]") {
  xt::xtensor<float, 4> w = xt::zeros<float>({8, 4, 3, 3}), g = xt::zeros<float>({8, 4, 3, 3});
  fill_random(w.data(), w.size(), 3);
  fill_random(g.data(), g.size(), 4);
  const std::vector<float> w0(w.begin(), w.end()), g0(g.begin(), g.end());
  east::ParameterSet p;
  east::add_xtensor(p, "conv", w, g);
  CHECK(p[0].shape == east::Shape{8, 4, 3, 3});
  auto ctl = east::make_rigl(p, east::DstConfig{0.05, 1, 10});
  ctl.after_optimizer_step(1);
  CHECK(ctl.digest() == raw_digest(w0, g0, {8, 4, 3, 3}));
  xt::xtensor<float, 2> g2 = xt::zeros<float>({8, 36});
  east::ParameterSet q;
  CHECK_THROWS_WITH(east::add_xtensor(q, "conv", w, g2), Catch::Contains("another shape"));
}
#endif

TEST_CASE("Adapters are available in this build", "[adapters]") {
#if defined(EAST_TEST_HAS_EIGEN) && defined(EAST_TEST_HAS_XTENSOR)
  SUCCEED("both adapters compiled");
#else
  FAIL("Eigen or xtensor was not found: scripts/test installs libeigen3-dev and xtensor-dev");
#endif
}
