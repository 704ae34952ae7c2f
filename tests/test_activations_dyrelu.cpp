// DyReLU-B forward/backward: finite differences, the ReLU fast path, an unblended reference,
// determinism under threads and argument checking.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "east/activations/dyrelu.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace {

struct Shape {
  int B, C, H, W;
  std::size_t size() const { return static_cast<std::size_t>(B) * C * H * W; }
};

template <class T>
std::vector<T> random_vector(std::size_t n, std::mt19937_64& rng, double lo = -1.0, double hi = 1.0) {
  std::uniform_real_distribution<double> u(lo, hi);
  std::vector<T> v(n);
  for (auto& e : v) e = static_cast<T>(u(rng));
  return v;
}

// Weights larger than PyTorch's default so the coefficients move well away from ReLU's and
// both pieces win somewhere: the test then exercises every branch.
template <class T>
std::vector<T> random_params(int C, std::mt19937_64& rng) {
  return random_vector<T>(east::dyrelu_sizes(C).total, rng, -1.5, 1.5);
}

// Straightforward, unblended DyReLU-B written from the paper's definition (no workspace, no
// tricks): the forward pass every fast path is compared against.
std::vector<double> reference_dyrelu(const std::vector<double>& flat, const std::vector<double>& x, Shape s,
                                     std::vector<double>* coefs_out = nullptr) {
  const int C = s.C, hid = std::max(1, C / 4), HW = s.H * s.W;
  const double* W1 = flat.data();
  const double* b1 = W1 + hid * C;
  const double* W2 = b1 + hid;
  const double* b2 = W2 + 4 * C * hid;
  std::vector<double> y(x.size());
  if (coefs_out) coefs_out->assign(static_cast<std::size_t>(s.B) * C * 4, 0.0);
  for (int b = 0; b < s.B; ++b) {
    std::vector<double> theta(C, 0.0), h(hid, 0.0);
    for (int c = 0; c < C; ++c) {
      for (int p = 0; p < HW; ++p) theta[c] += x[(b * C + c) * HW + p];
      theta[c] /= HW;
    }
    for (int i = 0; i < hid; ++i) {
      double a = b1[i];
      for (int c = 0; c < C; ++c) a += W1[i * C + c] * theta[c];
      h[i] = std::max(a, 0.0);
    }
    for (int c = 0; c < C; ++c) {
      double coef[4];
      const double lambda[4] = {1.0, 1.0, 0.5, 0.5}, init[4] = {1.0, 0.0, 0.0, 0.0};
      for (int j = 0; j < 4; ++j) {
        double z = b2[4 * c + j];
        for (int i = 0; i < hid; ++i) z += W2[(4 * c + j) * hid + i] * h[i];
        const double d = 2.0 / (1.0 + std::exp(-z)) - 1.0;
        coef[j] = init[j] + lambda[j] * d;
        if (coefs_out) (*coefs_out)[(b * C + c) * 4 + j] = coef[j];
      }
      for (int p = 0; p < HW; ++p) {
        const double v = x[(b * C + c) * HW + p];
        y[(b * C + c) * HW + p] = std::max(coef[0] * v + coef[2], coef[1] * v + coef[3]);
      }
    }
  }
  return y;
}

// L = sum r * y: its gradient w.r.t. y is r.
double loss(const std::vector<double>& flat, const std::vector<double>& x, const std::vector<double>& r,
            Shape s, double beta) {
  east::DyReLUWorkspace<double> ws;
  std::vector<double> y(x.size());
  east::dyrelu_forward(east::dyrelu_params_from_flat(flat.data(), s.C), x.data(), y.data(), s.B, s.C, s.H,
                       s.W, beta, ws);
  double l = 0.0;
  for (std::size_t i = 0; i < y.size(); ++i) l += r[i] * y[i];
  return l;
}

void check_gradients(Shape s, double beta, std::uint64_t seed) {
  INFO("B=" << s.B << " C=" << s.C << " H=" << s.H << " W=" << s.W << " beta=" << beta);
  std::mt19937_64 rng(seed);
  auto flat = random_params<double>(s.C, rng);
  auto x = random_vector<double>(s.size(), rng, -2.0, 2.0);
  auto r = random_vector<double>(s.size(), rng);

  east::DyReLUWorkspace<double> ws;
  std::vector<double> y(x.size()), dx(x.size()), grad(flat.size(), 0.0);
  const auto params = east::dyrelu_params_from_flat(flat.data(), s.C);
  const auto grads = east::dyrelu_grads_from_flat(grad.data(), s.C);
  east::dyrelu_forward(params, x.data(), y.data(), s.B, s.C, s.H, s.W, beta, ws);
  east::dyrelu_backward(params, x.data(), r.data(), dx.data(), s.B, s.C, s.H, s.W, ws, &grads);

  const double h = 1e-6;
  for (std::size_t i = 0; i < x.size(); ++i) {
    auto xp = x, xm = x;
    xp[i] += h;
    xm[i] -= h;
    const double fd = (loss(flat, xp, r, s, beta) - loss(flat, xm, r, s, beta)) / (2 * h);
    INFO("dx[" << i << "]");
    CHECK(dx[i] == Approx(fd).epsilon(1e-6).margin(1e-7));
  }
  for (std::size_t i = 0; i < flat.size(); ++i) {
    auto fp = flat, fm = flat;
    fp[i] += h;
    fm[i] -= h;
    const double fd = (loss(fp, x, r, s, beta) - loss(fm, x, r, s, beta)) / (2 * h);
    INFO("param[" << i << "] of " << flat.size());
    CHECK(grad[i] == Approx(fd).epsilon(1e-6).margin(1e-7));
  }

  // Frozen hyper-network: same dx, no parameter gradients touched.
  std::vector<double> dx_frozen(x.size());
  east::dyrelu_backward(params, x.data(), r.data(), dx_frozen.data(), s.B, s.C, s.H, s.W, ws);
  CHECK(dx_frozen == dx);
}

}  // namespace

TEST_CASE("dyrelu_hidden_size keeps at least one hidden unit", "[dyrelu]") {
  CHECK(east::dyrelu_hidden_size(1) == 1);
  CHECK(east::dyrelu_hidden_size(3) == 1);
  CHECK(east::dyrelu_hidden_size(4) == 1);
  CHECK(east::dyrelu_hidden_size(7) == 1);
  CHECK(east::dyrelu_hidden_size(8) == 2);
  CHECK(east::dyrelu_hidden_size(11) == 2);
  CHECK(east::dyrelu_hidden_size(64) == 16);
  CHECK(east::dyrelu_hidden_size(64, 8) == 8);
  const auto s = east::dyrelu_sizes(10);
  CHECK(s.hidden == 2);
  CHECK(s.total == 2 * 10 + 2 + 40 * 2 + 40);
  CHECK(s.fc2_bias_offset == 2 * 10 + 2 + 40 * 2);
  CHECK(east::dyrelu_sizes(10, 3).total == 3 * 10 + 3 + 40 * 3 + 40);
}

TEST_CASE("DyReLU-B gradients match central finite differences", "[dyrelu]") {
  const Shape fixed[] = {{2, 5, 3, 4}, {3, 8, 1, 1}, {1, 3, 2, 2}, {2, 6, 5, 1},
                         {1, 1, 1, 1}, {2, 4, 2, 3}, {1, 9, 1, 2}};
  std::uint64_t seed = 11;
  for (double beta : {1.0, 0.37}) {
    for (const Shape& s : fixed) check_gradients(s, beta, seed++);
    std::mt19937_64 rng(1234 + static_cast<std::uint64_t>(beta * 100));
    std::uniform_int_distribution<int> bd(1, 3), cd(1, 10), hd(1, 4);
    for (int t = 0; t < 4; ++t) check_gradients({bd(rng), cd(rng), hd(rng), hd(rng)}, beta, seed++);
  }
}

TEST_CASE("DyReLU-B at beta = 1 equals an unblended reference", "[dyrelu]") {
  for (const Shape s : {Shape{2, 5, 3, 4}, Shape{3, 12, 4, 4}, Shape{1, 2, 1, 1}}) {
    std::mt19937_64 rng(77 + s.C);
    auto flat = random_params<double>(s.C, rng);
    auto x = random_vector<double>(s.size(), rng, -2.0, 2.0);
    std::vector<double> coefs;
    const auto ref = reference_dyrelu(flat, x, s, &coefs);

    east::DyReLUWorkspace<double> ws;
    std::vector<double> y(x.size());
    east::dyrelu_forward(east::dyrelu_params_from_flat(flat.data(), s.C), x.data(), y.data(), s.B, s.C, s.H,
                         s.W, 1.0, ws);
    for (std::size_t i = 0; i < y.size(); ++i) REQUIRE(y[i] == Approx(ref[i]).epsilon(1e-12).margin(1e-14));
    for (int b = 0; b < s.B; ++b)
      for (int c = 0; c < s.C; ++c)
        for (int j = 0; j < 4; ++j)
          REQUIRE(ws.coefficients(b, c)[j] ==
                  Approx(coefs[(b * s.C + c) * 4 + j]).epsilon(1e-12).margin(1e-14));

    // float agrees with the double reference to float precision.
    std::vector<float> flatf(flat.begin(), flat.end()), xf(x.begin(), x.end()), yf(x.size());
    east::DyReLUWorkspace<float> wsf;
    east::dyrelu_forward(east::dyrelu_params_from_flat(flatf.data(), s.C), xf.data(), yf.data(), s.B, s.C,
                         s.H, s.W, 1.0, wsf);
    for (std::size_t i = 0; i < y.size(); ++i) REQUIRE(yf[i] == Approx(ref[i]).epsilon(1e-5).margin(1e-5));
  }
}

TEST_CASE("DyReLU-B blends its coefficients toward ReLU's", "[dyrelu]") {
  const Shape s{2, 6, 2, 2};
  std::mt19937_64 rng(5);
  auto flat = random_params<double>(s.C, rng);
  auto x = random_vector<double>(s.size(), rng);
  const auto params = east::dyrelu_params_from_flat(flat.data(), s.C);
  east::DyReLUWorkspace<double> full, half;
  std::vector<double> y(x.size());
  east::dyrelu_forward(params, x.data(), y.data(), s.B, s.C, s.H, s.W, 1.0, full);
  east::dyrelu_forward(params, x.data(), y.data(), s.B, s.C, s.H, s.W, 0.25, half);
  const double init[4] = {1, 0, 0, 0};
  for (int b = 0; b < s.B; ++b)
    for (int c = 0; c < s.C; ++c)
      for (int j = 0; j < 4; ++j)
        CHECK(half.coefficients(b, c)[j] ==
              Approx(0.25 * full.coefficients(b, c)[j] + 0.75 * init[j]).epsilon(1e-14).margin(1e-15));
}

TEST_CASE("DyReLU-B at beta = 0 is exactly ReLU and needs no hyper-network", "[dyrelu]") {
  const Shape s{3, 7, 5, 3};
  std::mt19937_64 rng(9);
  auto x = random_vector<float>(s.size(), rng, -3.0, 3.0);
  x[0] = 0.0f;
  x[1] = -0.0f;
  auto dy = random_vector<float>(s.size(), rng);
  std::vector<float> y(x.size()), dx(x.size());
  east::DyReLUWorkspace<float> ws;
  const east::DyReLUParams<float> none{};  // all null: beta = 0 never reads them
  east::dyrelu_forward(none, x.data(), y.data(), s.B, s.C, s.H, s.W, 0.0, ws);
  std::vector<float> grad(east::dyrelu_sizes(s.C).total, 0.0f);
  const auto grads = east::dyrelu_grads_from_flat(grad.data(), s.C);
  east::dyrelu_backward(none, x.data(), dy.data(), dx.data(), s.B, s.C, s.H, s.W, ws, &grads);
  for (std::size_t i = 0; i < x.size(); ++i) {
    REQUIRE(y[i] == (x[i] > 0.0f ? x[i] : 0.0f));
    REQUIRE(dx[i] == (x[i] > 0.0f ? dy[i] : 0.0f));
  }
  for (float g : grad) REQUIRE(g == 0.0f);

  // With real parameters the result is the same bits.
  auto flat = random_params<float>(s.C, rng);
  std::vector<float> y2(x.size());
  east::dyrelu_forward(east::dyrelu_params_from_flat(flat.data(), s.C), x.data(), y2.data(), s.B, s.C, s.H,
                       s.W, 0.0, ws);
  REQUIRE(y2 == y);
}

TEST_CASE("DyReLU-B parameter gradients accumulate and dx may alias dy", "[dyrelu]") {
  const Shape s{2, 8, 3, 3};
  std::mt19937_64 rng(21);
  auto flat = random_params<double>(s.C, rng);
  auto x = random_vector<double>(s.size(), rng);
  auto dy = random_vector<double>(s.size(), rng);
  const auto params = east::dyrelu_params_from_flat(flat.data(), s.C);
  east::DyReLUWorkspace<double> ws;
  std::vector<double> y(x.size()), dx(x.size()), g1(flat.size(), 0.0), g2(flat.size(), 0.0);
  east::dyrelu_forward(params, x.data(), y.data(), s.B, s.C, s.H, s.W, 0.8, ws);
  const auto v1 = east::dyrelu_grads_from_flat(g1.data(), s.C);
  const auto v2 = east::dyrelu_grads_from_flat(g2.data(), s.C);
  east::dyrelu_backward(params, x.data(), dy.data(), dx.data(), s.B, s.C, s.H, s.W, ws, &v1);
  east::dyrelu_backward(params, x.data(), dy.data(), dx.data(), s.B, s.C, s.H, s.W, ws, &v2);
  east::dyrelu_backward(params, x.data(), dy.data(), dx.data(), s.B, s.C, s.H, s.W, ws, &v2);
  for (std::size_t i = 0; i < g1.size(); ++i)
    REQUIRE(g2[i] == Approx(2 * g1[i]).epsilon(1e-14).margin(1e-15));
  auto inplace = dy;
  east::dyrelu_backward(params, x.data(), inplace.data(), inplace.data(), s.B, s.C, s.H, s.W, ws);
  REQUIRE(inplace == dx);
}

TEST_CASE("DyReLU-B results do not depend on the thread count", "[dyrelu]") {
  // 64 samples take the per-sample loop, 2 samples with 3 threads the per-plane loop; both are
  // large enough to be threaded, and both must give the bits of one thread.
  for (const Shape s : {Shape{64, 64, 4, 4}, Shape{2, 24, 40, 40}}) {
    INFO("B=" << s.B);
    std::mt19937_64 rng(3);
    auto flat = random_params<float>(s.C, rng);
    auto x = random_vector<float>(s.size(), rng);
    auto dy = random_vector<float>(s.size(), rng);
    const auto params = east::dyrelu_params_from_flat(flat.data(), s.C);
    auto run = [&](std::vector<float>& y, std::vector<float>& dx, std::vector<float>& g) {
      east::DyReLUWorkspace<float> ws;
      y.assign(x.size(), 0.0f);
      dx.assign(x.size(), 0.0f);
      g.assign(flat.size(), 0.0f);
      const auto grads = east::dyrelu_grads_from_flat(g.data(), s.C);
      east::dyrelu_forward(params, x.data(), y.data(), s.B, s.C, s.H, s.W, 0.6, ws);
      east::dyrelu_backward(params, x.data(), dy.data(), dx.data(), s.B, s.C, s.H, s.W, ws, &grads);
    };
    std::vector<float> y1, dx1, g1, y2, dx2, g2;
#if defined(_OPENMP)
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    run(y1, dx1, g1);
    omp_set_num_threads(3);
    run(y2, dx2, g2);
    omp_set_num_threads(saved);
#else
    run(y1, dx1, g1);
    run(y2, dx2, g2);
#endif
    REQUIRE(y1 == y2);
    REQUIRE(dx1 == dx2);
    REQUIRE(g1 == g2);
  }
}

TEST_CASE("DyReLU-B rejects bad arguments with a clear message", "[dyrelu]") {
  using Catch::Matchers::Contains;
  std::vector<double> flat(east::dyrelu_sizes(4).total, 0.1), x(2 * 4 * 3 * 3, 0.5), y(x.size()),
      dx(x.size());
  const auto p = east::dyrelu_params_from_flat(flat.data(), 4);
  east::DyReLUWorkspace<double> ws;
  auto fwd = [&](int B, int C, int H, int W, double beta, const double* xin = nullptr) {
    east::dyrelu_forward(p, xin ? xin : x.data(), y.data(), B, C, H, W, beta, ws);
  };
  REQUIRE_THROWS_AS(fwd(0, 4, 3, 3, 1.0), east::InvalidArgument);
  REQUIRE_THROWS_WITH(fwd(0, 4, 3, 3, 1.0), Contains("dyrelu_forward") && Contains("B 0"));
  REQUIRE_THROWS_WITH(fwd(2, -1, 3, 3, 1.0), Contains("C -1") && Contains(">= 1"));
  REQUIRE_THROWS_WITH(fwd(2, 4, 0, 3, 1.0), Contains("H 0"));
  REQUIRE_THROWS_WITH(fwd(2, 4, 3, 0, 1.0), Contains("W 0"));
  REQUIRE_THROWS_WITH(fwd(2, 4, 3, 3, 1.5), Contains("beta 1.5") && Contains("[0, 1]"));
  REQUIRE_THROWS_WITH(fwd(2, 4, 3, 3, -0.1), Contains("beta -0.1"));
  REQUIRE_THROWS_WITH(fwd(2, 4, 3, 3, std::nan("")), Contains("beta nan"));
  REQUIRE_THROWS_WITH(
      east::dyrelu_forward(p, static_cast<const double*>(nullptr), y.data(), 2, 4, 3, 3, 1.0, ws),
      Contains("dyrelu_forward") && Contains("x is null"));
  east::DyReLUParams<double> missing = p;
  missing.fc2_weight = nullptr;
  REQUIRE_THROWS_WITH(east::dyrelu_forward(missing, x.data(), y.data(), 2, 4, 3, 3, 0.5, ws),
                      Contains("params.fc2_weight is null"));
  missing = p;
  missing.hidden = -2;
  REQUIRE_THROWS_WITH(east::dyrelu_forward(missing, x.data(), y.data(), 2, 4, 3, 3, 0.5, ws),
                      Contains("params.hidden -2"));

  east::DyReLUWorkspace<double> fresh;
  REQUIRE_THROWS_WITH(east::dyrelu_backward(p, x.data(), x.data(), dx.data(), 2, 4, 3, 3, fresh),
                      Contains("dyrelu_backward") && Contains("dyrelu_forward first"));
  east::dyrelu_forward(p, x.data(), y.data(), 2, 4, 3, 3, 0.5, ws);
  REQUIRE_THROWS_WITH(east::dyrelu_backward(p, x.data(), x.data(), dx.data(), 1, 4, 3, 3, ws),
                      Contains("B=1") && Contains("B=2"));
  REQUIRE_THROWS_WITH(
      east::dyrelu_backward(p, x.data(), static_cast<const double*>(nullptr), dx.data(), 2, 4, 3, 3, ws),
      Contains("dy is null"));
  std::vector<double> g(flat.size());
  auto grads = east::dyrelu_grads_from_flat(g.data(), 4);
  grads.fc1_bias = nullptr;
  REQUIRE_THROWS_WITH(east::dyrelu_backward(p, x.data(), x.data(), dx.data(), 2, 4, 3, 3, ws, &grads),
                      Contains("grads->fc1_bias is null"));
  REQUIRE_THROWS_WITH(east::dyrelu_hidden_size(0), Contains("channels 0"));
  REQUIRE_THROWS_WITH(east::dyrelu_sizes(4, -1), Contains("hidden -1"));
}
