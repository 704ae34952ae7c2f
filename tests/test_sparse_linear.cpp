// Sparse linear kernels (east/sparse/linear.hpp) against a dense reference with the mask applied:
// forward (with and without bias), input gradient, weight gradient at active positions, dense
// gradient rows; densities 50% to 0.01% with empty rows and columns; 1 and 2 threads agree.
#include <catch2/catch.hpp>
#include <cmath>
#include <east/east.hpp>
#include <east/sparse/sparse.hpp>
#include <random>
#include <vector>

namespace {

using east::BitMask;
using east::sparse::CsrWeight;

std::vector<float> randn(std::size_t n, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

bool close(float got, double want, double mag) { return std::fabs(got - want) <= 1e-5 * mag + 1e-6; }

struct ThreadGuard {
  ~ThreadGuard() {
    east::kernels::set_threads(1);
    east::sparse::detail::min_parallel_work() = 1 << 18;
  }
};

}  // namespace

TEST_CASE("sparse linear matches the masked dense reference", "[sparse][linear]") {
  ThreadGuard guard;
  east::sparse::detail::min_parallel_work() = 0;
  std::mt19937 rng(21);
  std::uniform_int_distribution<std::size_t> dim(1, 70), bs(1, 4);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (double d : {0.5, 0.1, 0.01, 0.001, 0.0001})
    for (int rep = 0; rep < 4; ++rep) {
      const std::size_t batch = rep == 3 ? 37 : bs(rng);
      std::size_t in = dim(rng), out = dim(rng);
      if (d <= 0.001) in = out = 300;
      INFO("density " << d << " batch " << batch << " in " << in << " out " << out);
      BitMask mask(out * in);
      for (std::size_t o = 0; o < out; ++o)
        for (std::size_t i = 0; i < in; ++i)
          if (o != 1 && i != 2 && u(rng) < d) mask.set(o * in + i);  // row 1, column 2 empty
      auto w = randn(out * in, rng), x = randn(batch * in, rng), dy = randn(batch * out, rng),
           b = randn(out, rng);
      mask.apply(w.data());
      const CsrWeight wt(w.data(), mask, out, in);

      for (int t : {1, 2}) {
        east::kernels::set_threads(t);
        std::vector<float> y(batch * out, 9.0f), yb(batch * out), dx(batch * in, 9.0f), gw(wt.nnz(), 9.0f),
            rows(out * in);
        east::sparse::linear_forward(x.data(), batch, wt, y.data());
        east::sparse::linear_forward(x.data(), batch, wt, yb.data(), b.data());
        east::sparse::linear_grad_input(dy.data(), batch, wt, dx.data());
        east::sparse::linear_grad_weight(x.data(), dy.data(), batch, wt, gw.data());
        east::sparse::linear_grad_weight_rows(x.data(), dy.data(), batch, in, out, 0, out / 2, rows.data());
        east::sparse::linear_grad_weight_rows(x.data(), dy.data(), batch, in, out, out / 2, out,
                                              rows.data() + (out / 2) * in);
        std::size_t bad = 0;
        for (std::size_t n = 0; n < batch; ++n)
          for (std::size_t o = 0; o < out; ++o) {
            double s = 0, m = 0;
            for (std::size_t i = 0; i < in; ++i) {
              const double term = static_cast<double>(w[o * in + i]) * x[n * in + i];
              s += term;
              m += std::fabs(term);
            }
            bad += !close(y[n * out + o], s, m);
            bad += !close(yb[n * out + o], s + b[o], m + std::fabs(b[o]));
          }
        for (std::size_t n = 0; n < batch; ++n)
          for (std::size_t i = 0; i < in; ++i) {
            double s = 0, m = 0;
            for (std::size_t o = 0; o < out; ++o) {
              const double term = static_cast<double>(w[o * in + i]) * dy[n * out + o];
              s += term;
              m += std::fabs(term);
            }
            bad += !close(dx[n * in + i], s, m);
          }
        std::vector<double> full(out * in, 0.0), mag(out * in, 0.0);
        for (std::size_t n = 0; n < batch; ++n)
          for (std::size_t o = 0; o < out; ++o)
            for (std::size_t i = 0; i < in; ++i) {
              const double term = static_cast<double>(dy[n * out + o]) * x[n * in + i];
              full[o * in + i] += term;
              mag[o * in + i] += std::fabs(term);
            }
        for (std::size_t j = 0; j < wt.nnz(); ++j)
          bad += !close(gw[j], full[wt.position(j)], mag[wt.position(j)]);
        for (std::size_t i = 0; i < out * in; ++i) bad += !close(rows[i], full[i], mag[i]);
        CHECK(bad == 0);
      }
    }
}

TEST_CASE("sparse linear: thread counts give identical bits", "[sparse][linear]") {
  ThreadGuard guard;
  east::sparse::detail::min_parallel_work() = 0;
  std::mt19937 rng(4);
  const std::size_t batch = 19, in = 200, out = 130;
  BitMask mask(out * in);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (std::size_t i = 0; i < mask.size(); ++i)
    if (u(rng) < 0.05) mask.set(i);
  auto w = randn(out * in, rng), x = randn(batch * in, rng), dy = randn(batch * out, rng);
  const CsrWeight wt(w.data(), mask, out, in);
  std::vector<float> y[2], dx[2], gw[2];
  for (int t : {1, 2}) {
    east::kernels::set_threads(t);
    y[t - 1].resize(batch * out);
    dx[t - 1].resize(batch * in);
    gw[t - 1].resize(wt.nnz());
    east::sparse::linear_forward(x.data(), batch, wt, y[t - 1].data());
    east::sparse::linear_grad_input(dy.data(), batch, wt, dx[t - 1].data());
    east::sparse::linear_grad_weight(x.data(), dy.data(), batch, wt, gw[t - 1].data());
  }
  CHECK(y[0] == y[1]);
  CHECK(dx[0] == dx[1]);
  CHECK(gw[0] == gw[1]);
  CHECK_THROWS_AS(east::sparse::linear_forward(x.data(), 0, wt, y[0].data()), east::InvalidArgument);
}
