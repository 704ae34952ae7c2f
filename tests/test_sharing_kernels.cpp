// Weight-sharing kernels: effective weights, gradients against finite differences of a scalar
// loss, and determinism of the double-accumulated dot product.
#include <catch2/catch.hpp>

#include <cstdint>
#include <random>
#include <vector>

#include "east/sharing/shared_weight.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace {

std::vector<double> random_vector(std::size_t n, std::mt19937_64& rng, double lo = -1.0, double hi = 1.0) {
  std::uniform_real_distribution<double> u(lo, hi);
  std::vector<double> v(n);
  for (auto& e : v) e = u(rng);
  return v;
}

// A nonlinear scalar loss of the effective weights E_i = s_i W:
//   L = sum_i sum_j (r_ij E_ij^2 / 2 + q_ij E_ij),   dL/dE_ij = r_ij E_ij + q_ij.
struct Problem {
  std::size_t n, uses;
  std::vector<double> w, s;
  std::vector<std::vector<double>> r, q;

  double loss(const std::vector<double>& wv, const std::vector<double>& sv) const {
    double l = 0.0;
    std::vector<double> e(n);
    for (std::size_t i = 0; i < uses; ++i) {
      east::shared_effective_weight(wv.data(), sv[i], e.data(), n);
      for (std::size_t j = 0; j < n; ++j) l += r[i][j] * e[j] * e[j] / 2 + q[i][j] * e[j];
    }
    return l;
  }
  std::vector<std::vector<double>> use_grads() const {
    std::vector<std::vector<double>> g(uses, std::vector<double>(n));
    for (std::size_t i = 0; i < uses; ++i)
      for (std::size_t j = 0; j < n; ++j) g[i][j] = r[i][j] * s[i] * w[j] + q[i][j];
    return g;
  }
};

Problem make_problem(std::size_t n, std::size_t uses, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  Problem p{n, uses, random_vector(n, rng), random_vector(uses, rng, 0.0, 1.0), {}, {}};
  for (std::size_t i = 0; i < uses; ++i) {
    p.r.push_back(random_vector(n, rng));
    p.q.push_back(random_vector(n, rng));
  }
  return p;
}

}  // namespace

TEST_CASE("shared_effective_weight scales the stored tensor", "[sharing]") {
  const std::vector<float> w{1.0f, -2.0f, 0.0f, 3.5f};
  std::vector<float> e(w.size());
  east::shared_effective_weight(w.data(), 0.5f, e.data(), w.size());
  CHECK(e == std::vector<float>{0.5f, -1.0f, 0.0f, 1.75f});
  auto inplace = w;
  east::shared_effective_weight(inplace.data(), 0.5f, inplace.data(), w.size());
  CHECK(inplace == e);
}

TEST_CASE("shared weight gradients match finite differences of the loss", "[sharing]") {
  for (std::size_t uses : {1u, 2u, 4u}) {
    const Problem p = make_problem(23, uses, 100 + uses);
    const auto g = p.use_grads();
    std::vector<const double*> gp;
    for (const auto& v : g) gp.push_back(v.data());
    std::vector<double> dw(p.n, 0.0), ds(uses, 0.0);
    east::shared_weight_backward(p.w.data(), gp.data(), p.s.data(), uses, dw.data(), ds.data(), p.n);

    const double h = 1e-6;
    for (std::size_t j = 0; j < p.n; ++j) {
      auto wp = p.w, wm = p.w;
      wp[j] += h;
      wm[j] -= h;
      INFO("uses " << uses << " dW[" << j << "]");
      CHECK(dw[j] == Approx((p.loss(wp, p.s) - p.loss(wm, p.s)) / (2 * h)).epsilon(1e-7).margin(1e-9));
    }
    for (std::size_t i = 0; i < uses; ++i) {
      auto sp = p.s, sm = p.s;
      sp[i] += h;
      sm[i] -= h;
      INFO("uses " << uses << " ds[" << i << "]");
      CHECK(ds[i] == Approx((p.loss(p.w, sp) - p.loss(p.w, sm)) / (2 * h)).epsilon(1e-7).margin(1e-9));
    }
  }
}

TEST_CASE("per-use backward equals the all-uses backward bit for bit", "[sharing]") {
  const std::size_t n = 40000, uses = 3;  // more than one dot-product chunk
  std::mt19937_64 rng(8);
  auto wd = random_vector(n, rng);
  std::vector<float> w(wd.begin(), wd.end()), dw_init(n), s{0.3f, 0.9f, 0.55f};
  for (auto& v : dw_init) v = static_cast<float>(std::uniform_real_distribution<double>(-1, 1)(rng));
  std::vector<std::vector<float>> g(uses, std::vector<float>(n));
  for (auto& v : g)
    for (auto& e : v) e = static_cast<float>(std::uniform_real_distribution<double>(-1, 1)(rng));
  std::vector<const float*> gp{g[0].data(), g[1].data(), g[2].data()};

  auto dw_all = dw_init;
  std::vector<float> ds_all{0.1f, 0.2f, 0.3f};
  east::shared_weight_backward(w.data(), gp.data(), s.data(), uses, dw_all.data(), ds_all.data(), n);

  auto dw_one = dw_init;
  std::vector<float> ds_one{0.1f, 0.2f, 0.3f};
  for (std::size_t i = 0; i < uses; ++i)
    east::shared_use_backward(w.data(), gp[i], s[i], dw_one.data(), &ds_one[i], n);
  REQUIRE(dw_one == dw_all);
  REQUIRE(ds_one == ds_all);

  // ds_i is the dot product, added to what was there, accurate to float rounding of the result.
  long double ref = 0.0L;
  for (std::size_t j = 0; j < n; ++j) ref += static_cast<long double>(w[j]) * g[1][j];
  CHECK(ds_all[1] == Approx(static_cast<double>(ref) + 0.2f).epsilon(1e-6));
  // dscales may be skipped.
  auto dw_skip = dw_init;
  east::shared_weight_backward(w.data(), gp.data(), s.data(), uses, dw_skip.data(),
                               static_cast<float*>(nullptr), n);
  REQUIRE(dw_skip == dw_all);
}

TEST_CASE("shared_dot is independent of the thread count", "[sharing]") {
  const std::size_t n = 100003;
  std::mt19937_64 rng(4);
  auto a = random_vector(n, rng), b = random_vector(n, rng);
#if defined(_OPENMP)
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const double one = east::shared_dot(a.data(), b.data(), n);
  omp_set_num_threads(3);
  const double three = east::shared_dot(a.data(), b.data(), n);
  omp_set_num_threads(saved);
  REQUIRE(one == three);
#endif
  long double ref = 0.0L;
  for (std::size_t j = 0; j < n; ++j) ref += static_cast<long double>(a[j]) * b[j];
  CHECK(east::shared_dot(a.data(), b.data(), n) == Approx(static_cast<double>(ref)).epsilon(1e-12));
  CHECK(east::shared_dot<double>(nullptr, nullptr, 0) == 0.0);
}

TEST_CASE("sharing kernels reject null buffers", "[sharing]") {
  using Catch::Matchers::Contains;
  std::vector<double> w(4, 1.0), dw(4, 0.0);
  REQUIRE_THROWS_AS(east::shared_effective_weight<double>(w.data(), 1.0, nullptr, 4), east::InvalidArgument);
  REQUIRE_THROWS_WITH(east::shared_use_backward<double>(w.data(), nullptr, 1.0, dw.data(), nullptr, 4),
                      Contains("shared_use_backward") && Contains("n 4"));
  const double* uses[2] = {w.data(), nullptr};
  const double s[2] = {1.0, 2.0};
  REQUIRE_THROWS_WITH(
      east::shared_weight_backward(w.data(), uses, s, 2, dw.data(), static_cast<double*>(nullptr), 4),
      Contains("shared_weight_backward") && Contains("dw_uses[1] is null"));
}
