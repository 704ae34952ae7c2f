// Adapters only build views: masks computed through them equal those from raw pointers.
#include <catch2/catch.hpp>
#include <east/east.hpp>

#if defined(EAST_TEST_HAS_EIGEN)
#include <east/adapters/eigen.hpp>
#include <east/sparse/compact_layer.hpp>
#endif
#if defined(EAST_TEST_HAS_XTENSOR)
#include <east/adapters/xtensor.hpp>
#include <xtensor/xtensor.hpp>
#endif

#include <cmath>
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

TEST_CASE("Eigen storage order is recorded: fan-in scaling follows it, compact layers need row-major",
          "[adapters][eigen]") {
  using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Eigen::MatrixXf cm(40, 30), cg(40, 30);  // Eigen's default: column-major
  RowMajor rm(40, 30);
  Eigen::VectorXf v(40);
  fill_random(cm.data(), cm.size(), 5);
  rm = cm;  // the same matrix, stored row by row
  east::ParameterSet p;
  CHECK(east::add_eigen(p, "cm", cm, cg).column_major);
  CHECK_FALSE(east::add_eigen(p, "rm", rm).column_major);  // no gradient: deduces
  CHECK_FALSE(east::add_eigen(p, "v", v).column_major);    // a vector is the same memory either way
  CHECK(p[0].shape == east::Shape{40, 30});

  // Fan-in scaling: each output unit (a row of the matrix, strided in column-major memory) gets
  // its surviving weights × sqrt(30 / its active count), in either storage order.
  const Eigen::MatrixXf cm0 = cm;
  const RowMajor rm0 = rm;
  east::ParameterSet q;
  east::add_eigen(q, "cm", cm);
  east::add_eigen(q, "rm", rm);
  auto ctl = east::make_static(q, 0.2, {3}, east::Uniform{});
  for (int which = 0; which < 2; ++which) {
    const auto& mask = ctl.mask(which == 0 ? "cm" : "rm");
    for (Eigen::Index r = 0; r < 40; ++r) {
      auto index = [&](Eigen::Index c) {
        return static_cast<std::size_t>(which == 0 ? r + c * 40 : r * 30 + c);
      };
      std::size_t active = 0;
      for (Eigen::Index c = 0; c < 30; ++c) active += mask.test(index(c));
      if (active == 0) continue;
      const float s = static_cast<float>(std::sqrt(30.0 / static_cast<double>(active)));
      for (Eigen::Index c = 0; c < 30; ++c) {
        const float now = which == 0 ? cm(r, c) : rm(r, c), before = which == 0 ? cm0(r, c) : rm0(r, c);
        if (mask.test(index(c)))
          REQUIRE(now == Approx(before * s));
        else
          REQUIRE(now == 0.0f);
      }
    }
  }

  // Compact layers read {out, in} row-major: column-major is rejected with the fix in the message.
  Eigen::MatrixXf cm2 = cm0;
  RowMajor rm2 = rm0;
  east::ParameterSet r;
  east::add_eigen(r, "cm", cm2);
  east::add_eigen(r, "rm", rm2);
  CHECK_THROWS_WITH(east::sparse::CompactLinear(r, "cm"),
                    Catch::Contains("column-major") && Catch::Contains("Eigen::RowMajor"));
  CHECK(r.at("cm").storage == nullptr);
  east::sparse::CompactLinear fc(r, "rm");
  CHECK(r.at("rm").storage == &fc);
}

TEST_CASE("Eigen registration rejects non-contiguous maps and mixed storage orders", "[adapters][eigen]") {
  std::vector<float> buf(10 * 8, 1.0f), gbuf(10 * 8, 0.0f);
  // Every other column of a 10 × 8 buffer: 10 × 4 with outer stride 20.
  Eigen::Map<Eigen::MatrixXf, 0, Eigen::OuterStride<>> strided(buf.data(), 10, 4, Eigen::OuterStride<>(20));
  Eigen::Map<Eigen::MatrixXf, 0, Eigen::OuterStride<>> gstrided(gbuf.data(), 10, 4, Eigen::OuterStride<>(20));
  east::ParameterSet p;
  CHECK_THROWS_WITH(east::add_eigen_map(p, "w", strided, gstrided),
                    Catch::Contains("add_eigen_map") && Catch::Contains("outer stride 20"));
  CHECK(p.empty());  // nothing registered
  Eigen::Map<Eigen::MatrixXf> mw(buf.data(), 10, 8), mg(gbuf.data(), 10, 8);
  CHECK(east::add_eigen_map(p, "w", mw, mg).column_major);

  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> w(6, 5);
  Eigen::MatrixXf g(6, 5);
  east::ParameterSet q;
  CHECK_THROWS_WITH(east::add_eigen(q, "w", w, g),
                    Catch::Contains("column-major") && Catch::Contains("row-major"));
  CHECK(q.empty());
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
