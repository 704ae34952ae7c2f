// Sparse conv2d kernels (east/sparse) against a dense reference with the mask applied: forward,
// input gradient, weight gradient at active positions, dense gradient rows, regrowth top-k, the
// compact format's round trips and the compact SGD step; 1 and 2 threads give identical bits.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <east/east.hpp>
#include <east/kernels/reference/sgd.hpp>
#include <east/sparse/sparse.hpp>
#include <array>
#include <limits>
#include <random>
#include <vector>

namespace {

using east::BitMask;
using east::sparse::Conv2dGeometry;
using east::sparse::CsrWeight;

std::vector<float> randn(std::size_t n, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

// Mask of the given density; row `empty_row` (if < rows) and input channel `empty_in` are
// cleared so empty filters and empty transposed groups are always covered.
BitMask random_mask(std::size_t rows, std::size_t cols, std::size_t group, double density, std::mt19937& rng,
                    std::size_t empty_row, std::size_t empty_in) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  BitMask m(rows * cols);
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = 0; c < cols; ++c)
      if (r != empty_row && c / group != empty_in && u(rng) < density) m.set(r * cols + c);
  return m;
}

struct Dense {
  // Reference sums in double; `mag` holds Σ|terms| for a tolerance that scales with the sum.
  static void forward(const Conv2dGeometry& g, const float* x, const float* w, std::vector<double>& y,
                      std::vector<double>& mag) {
    const std::size_t ho = g.out_h(), wo = g.out_w();
    y.assign(g.output_size(), 0.0);
    mag.assign(g.output_size(), 0.0);
    for (std::size_t n = 0; n < g.batch; ++n)
      for (std::size_t co = 0; co < g.c_out; ++co)
        for (std::size_t oh = 0; oh < ho; ++oh)
          for (std::size_t ow = 0; ow < wo; ++ow) {
            const std::size_t yi = ((n * g.c_out + co) * ho + oh) * wo + ow;
            for (std::size_t ci = 0; ci < g.c_in; ++ci)
              for (std::size_t r = 0; r < g.kh; ++r)
                for (std::size_t s = 0; s < g.kw; ++s) {
                  const long ih = static_cast<long>(oh * g.stride_h + r) - static_cast<long>(g.pad_h);
                  const long iw = static_cast<long>(ow * g.stride_w + s) - static_cast<long>(g.pad_w);
                  if (ih < 0 || iw < 0 || ih >= static_cast<long>(g.h) || iw >= static_cast<long>(g.w))
                    continue;
                  const double t = static_cast<double>(w[((co * g.c_in + ci) * g.kh + r) * g.kw + s]) *
                                   x[((n * g.c_in + ci) * g.h + ih) * g.w + iw];
                  y[yi] += t;
                  mag[yi] += std::fabs(t);
                }
          }
  }
  static void grad_input(const Conv2dGeometry& g, const float* dy, const float* w, std::vector<double>& dx,
                         std::vector<double>& mag) {
    const std::size_t ho = g.out_h(), wo = g.out_w();
    dx.assign(g.input_size(), 0.0);
    mag.assign(g.input_size(), 0.0);
    for (std::size_t n = 0; n < g.batch; ++n)
      for (std::size_t co = 0; co < g.c_out; ++co)
        for (std::size_t oh = 0; oh < ho; ++oh)
          for (std::size_t ow = 0; ow < wo; ++ow)
            for (std::size_t ci = 0; ci < g.c_in; ++ci)
              for (std::size_t r = 0; r < g.kh; ++r)
                for (std::size_t s = 0; s < g.kw; ++s) {
                  const long ih = static_cast<long>(oh * g.stride_h + r) - static_cast<long>(g.pad_h);
                  const long iw = static_cast<long>(ow * g.stride_w + s) - static_cast<long>(g.pad_w);
                  if (ih < 0 || iw < 0 || ih >= static_cast<long>(g.h) || iw >= static_cast<long>(g.w))
                    continue;
                  const std::size_t xi = ((n * g.c_in + ci) * g.h + ih) * g.w + iw;
                  const double t = static_cast<double>(w[((co * g.c_in + ci) * g.kh + r) * g.kw + s]) *
                                   dy[((n * g.c_out + co) * ho + oh) * wo + ow];
                  dx[xi] += t;
                  mag[xi] += std::fabs(t);
                }
  }
  static void grad_weight(const Conv2dGeometry& g, const float* x, const float* dy, std::vector<double>& dw,
                          std::vector<double>& mag) {
    const std::size_t ho = g.out_h(), wo = g.out_w();
    dw.assign(g.weight_size(), 0.0);
    mag.assign(g.weight_size(), 0.0);
    for (std::size_t n = 0; n < g.batch; ++n)
      for (std::size_t co = 0; co < g.c_out; ++co)
        for (std::size_t oh = 0; oh < ho; ++oh)
          for (std::size_t ow = 0; ow < wo; ++ow)
            for (std::size_t ci = 0; ci < g.c_in; ++ci)
              for (std::size_t r = 0; r < g.kh; ++r)
                for (std::size_t s = 0; s < g.kw; ++s) {
                  const long ih = static_cast<long>(oh * g.stride_h + r) - static_cast<long>(g.pad_h);
                  const long iw = static_cast<long>(ow * g.stride_w + s) - static_cast<long>(g.pad_w);
                  if (ih < 0 || iw < 0 || ih >= static_cast<long>(g.h) || iw >= static_cast<long>(g.w))
                    continue;
                  const std::size_t wi = ((co * g.c_in + ci) * g.kh + r) * g.kw + s;
                  const double t = static_cast<double>(dy[((n * g.c_out + co) * ho + oh) * wo + ow]) *
                                   x[((n * g.c_in + ci) * g.h + ih) * g.w + iw];
                  dw[wi] += t;
                  mag[wi] += std::fabs(t);
                }
  }
};

void check_close(const std::vector<float>& got, const std::vector<double>& want,
                 const std::vector<double>& mag) {
  REQUIRE(got.size() == want.size());
  std::size_t bad = 0;
  for (std::size_t i = 0; i < got.size(); ++i)
    if (!(std::fabs(got[i] - want[i]) <= 1e-5 * mag[i] + 1e-6)) ++bad;
  CHECK(bad == 0);
}

struct ThreadGuard {
  ~ThreadGuard() {
    east::kernels::set_threads(1);
    east::kernels::reset_isa();
    east::sparse::detail::min_parallel_work() = 1 << 18;
  }
};

// Forward, input gradient and weight gradient of `wt` (dense form `w`) with 1 and 2 threads:
// identical bits, and within the reference's tolerance. The input gradients start non-zero, so
// every path must overwrite them; with `add` they must add to what is there (a joined gradient).
void check_layer(const Conv2dGeometry& g, const CsrWeight& wt, const std::vector<float>& w,
                 const std::vector<float>& x, const std::vector<float>& dy) {
  std::vector<float> y(g.output_size()), y2(g.output_size()), dx(g.input_size(), 3.0f),
      dx2(g.input_size(), -2.0f), gw(wt.nnz()), gw2(wt.nnz()), base(g.input_size());
  for (std::size_t i = 0; i < base.size(); ++i) base[i] = 0.5f * static_cast<float>(std::sin(0.37 * i));
  std::vector<float> da(base), da2(base);
  east::kernels::set_threads(1);
  east::sparse::conv2d_forward(g, x.data(), wt, y.data());
  east::sparse::conv2d_grad_input(g, dy.data(), wt, dx.data());
  east::sparse::conv2d_grad_input(g, dy.data(), wt, da.data(), /*add=*/true);
  east::sparse::conv2d_grad_weight(g, x.data(), dy.data(), wt, gw.data());
  east::kernels::set_threads(2);
  east::sparse::conv2d_forward(g, x.data(), wt, y2.data());
  east::sparse::conv2d_grad_input(g, dy.data(), wt, dx2.data());
  east::sparse::conv2d_grad_input(g, dy.data(), wt, da2.data(), /*add=*/true);
  east::sparse::conv2d_grad_weight(g, x.data(), dy.data(), wt, gw2.data());
  CHECK(y == y2);
  CHECK(dx == dx2);
  CHECK(da == da2);
  CHECK(gw == gw2);
  // Both gradients in one call (fused where the kernels allow): the same bits, with and without
  // `add`, and written over dy where the layer allows it in place.
  for (int threads : {1, 2}) {
    INFO("conv2d_backward, threads " << threads);
    east::kernels::set_threads(threads);
    std::vector<float> fx(g.input_size(), 7.0f), fa(base), fw(wt.nnz(), 9.0f), fa_w(wt.nnz());
    east::sparse::conv2d_backward(g, x.data(), dy.data(), wt, fx.data(), fw.data());
    east::sparse::conv2d_backward(g, x.data(), dy.data(), wt, fa.data(), fa_w.data(), /*add=*/true);
    CHECK(fx == dx);
    CHECK(fw == gw);
    CHECK(fa == da);
    CHECK(fa_w == gw);
    std::vector<float> dw_only(wt.nnz());
    east::sparse::conv2d_backward(g, x.data(), dy.data(), wt, nullptr, dw_only.data());
    CHECK(dw_only == gw);
    if (east::sparse::conv2d_backward_in_place_ok(g)) {
      std::vector<float> buf(dy), iw(wt.nnz());
      east::sparse::conv2d_backward(g, x.data(), buf.data(), wt, buf.data(), iw.data());
      CHECK(buf == dx);
      CHECK(iw == gw);
      CHECK_THROWS_WITH(east::sparse::conv2d_backward(g, x.data(), buf.data(), wt, buf.data(), iw.data(), true),
                        Catch::Contains("add = false"));
    } else if (g.input_size() == g.output_size()) {
      std::vector<float> buf(dy), iw(wt.nnz());
      CHECK_THROWS_WITH(east::sparse::conv2d_backward(g, x.data(), buf.data(), wt, buf.data(), iw.data()),
                        Catch::Contains("conv2d_backward_in_place_ok"));
      CHECK(buf == dy);  // refused before anything was written
    }
  }
  std::vector<double> ref, mag;
  Dense::forward(g, x.data(), w.data(), ref, mag);
  check_close(y, ref, mag);
  Dense::grad_input(g, dy.data(), w.data(), ref, mag);
  check_close(dx, ref, mag);
  for (std::size_t i = 0; i < ref.size(); ++i) {
    ref[i] += base[i];
    mag[i] += std::fabs(base[i]);
  }
  check_close(da, ref, mag);
  Dense::grad_weight(g, x.data(), dy.data(), ref, mag);
  std::vector<double> rc(wt.nnz()), mc(wt.nnz());
  for (std::size_t j = 0; j < wt.nnz(); ++j) {
    rc[j] = ref[wt.position(j)];
    mc[j] = mag[wt.position(j)];
  }
  check_close(gw, rc, mc);
}

// check_layer on a random layer of geometry g (mask as random_mask with the given density, empty
// filter and empty input channel); returns its compact weight.
CsrWeight check_random_layer(const Conv2dGeometry& g, double density, std::mt19937& rng, std::size_t empty_row,
                             std::size_t empty_in) {
  const std::size_t cols = g.c_in * g.kh * g.kw;
  const BitMask mask = random_mask(g.c_out, cols, g.kh * g.kw, density, rng, empty_row, empty_in);
  auto w = randn(g.weight_size(), rng), x = randn(g.input_size(), rng), dy = randn(g.output_size(), rng);
  mask.apply(w.data());
  CsrWeight wt(w.data(), mask, g.c_out, cols, g.kh * g.kw);
  check_layer(g, wt, w, x, dy);
  return wt;
}

}  // namespace

TEST_CASE("sparse conv2d matches the masked dense reference", "[sparse][conv]") {
  ThreadGuard guard;
  east::sparse::detail::min_parallel_work() = 0;  // run the threaded paths on small shapes too
  std::mt19937 rng(7);
  std::uniform_int_distribution<std::size_t> dim(1, 9), ch(1, 12), bs(1, 4);
  const double densities[] = {0.5, 0.1, 0.01, 0.001, 0.0001};
  int cases = 0;
  // Every ISA: the flat (stride-1 'same') kernels have AVX-512 bodies beside the portable loops.
  for (const auto isa : east::kernels::available_isas())
    for (std::size_t k : {1u, 3u})
      for (std::size_t stride : {1u, 2u})
        for (std::size_t pad : {0u, 1u})
          for (double d : densities) {
            east::kernels::set_isa(isa);
            Conv2dGeometry g = Conv2dGeometry::square(bs(rng), ch(rng), std::max<std::size_t>(k, dim(rng)),
                                                      ch(rng), k, stride, pad);
            g.w = std::max<std::size_t>(k, dim(rng));  // non-square input
            if (d <= 0.001) g.c_in = g.c_out = 48;     // enough weights for a few nonzeros
            INFO("isa " << east::kernels::isa_name(isa) << " k " << k << " stride " << stride << " pad "
                        << pad << " density " << d << " batch " << g.batch << " c_in " << g.c_in << " c_out "
                        << g.c_out << " h " << g.h << " w " << g.w);
            const std::size_t cols = g.c_in * k * k;
            const BitMask mask =
                random_mask(g.c_out, cols, k * k, d, rng, g.c_out > 1 ? 0 : 99, g.c_in > 1 ? 1 : 99);
            auto w = randn(g.weight_size(), rng), x = randn(g.input_size(), rng),
                 dy = randn(g.output_size(), rng);
            mask.apply(w.data());
            const CsrWeight wt = CsrWeight::from_shape(w.data(), mask,
                                                       {static_cast<long>(g.c_out), static_cast<long>(g.c_in),
                                                        static_cast<long>(k), static_cast<long>(k)});
            REQUIRE(wt.nnz() == mask.count());

            std::vector<double> ref, mag;
            std::vector<float> y(g.output_size()), y2(g.output_size(), 7.0f);
            Dense::forward(g, x.data(), w.data(), ref, mag);
            east::kernels::set_threads(1);
            east::sparse::conv2d_forward(g, x.data(), wt, y.data());
            check_close(y, ref, mag);
            east::kernels::set_threads(2);
            east::sparse::conv2d_forward(g, x.data(), wt, y2.data());
            CHECK(y == y2);

            std::vector<float> dx(g.input_size(), 3.0f), dx2(g.input_size());
            Dense::grad_input(g, dy.data(), w.data(), ref, mag);
            east::kernels::set_threads(1);
            east::sparse::conv2d_grad_input(g, dy.data(), wt, dx.data());
            check_close(dx, ref, mag);
            east::kernels::set_threads(2);
            east::sparse::conv2d_grad_input(g, dy.data(), wt, dx2.data());
            CHECK(dx == dx2);

            Dense::grad_weight(g, x.data(), dy.data(), ref, mag);
            std::vector<float> gw(wt.nnz(), 5.0f), gw2(wt.nnz());
            east::kernels::set_threads(1);
            east::sparse::conv2d_grad_weight(g, x.data(), dy.data(), wt, gw.data());
            east::kernels::set_threads(2);
            east::sparse::conv2d_grad_weight(g, x.data(), dy.data(), wt, gw2.data());
            CHECK(gw == gw2);
            std::vector<double> ref_c(wt.nnz()), mag_c(wt.nnz());
            for (std::size_t j = 0; j < wt.nnz(); ++j) {
              ref_c[j] = ref[wt.position(j)];
              mag_c[j] = mag[wt.position(j)];
            }
            check_close(gw, ref_c, mag_c);

            // Dense gradient rows (for regrowth) over every position, in two uneven blocks.
            std::vector<float> rows(g.weight_size());
            const std::size_t split = g.c_out / 3;
            east::sparse::conv2d_grad_weight_rows(g, x.data(), dy.data(), 0, split, rows.data());
            east::sparse::conv2d_grad_weight_rows(g, x.data(), dy.data(), split, g.c_out,
                                                  rows.data() + split * cols);
            check_close(rows, ref, mag);
            ++cases;
          }
  CHECK(cases == 40 * static_cast<int>(east::kernels::available_isas().size()));
}

TEST_CASE("sparse conv2d: a ResNet-shaped layer at 0.01% and an empty weight", "[sparse][conv]") {
  std::mt19937 rng(11);
  const auto g = Conv2dGeometry::square(2, 64, 8, 128, 3, 2, 1);
  const std::size_t cols = 64 * 9;
  for (double d : {0.0001, 0.0}) {
    const BitMask mask = random_mask(128, cols, 9, d, rng, 128, 64);
    auto w = randn(g.weight_size(), rng), x = randn(g.input_size(), rng), dy = randn(g.output_size(), rng);
    mask.apply(w.data());
    const CsrWeight wt(w.data(), mask, 128, cols, 9);
    std::vector<double> ref, mag;
    std::vector<float> y(g.output_size(), 1.0f), dx(g.input_size(), 1.0f), gw(wt.nnz());
    east::sparse::conv2d_forward(g, x.data(), wt, y.data());
    Dense::forward(g, x.data(), w.data(), ref, mag);
    check_close(y, ref, mag);
    east::sparse::conv2d_grad_input(g, dy.data(), wt, dx.data());
    Dense::grad_input(g, dy.data(), w.data(), ref, mag);
    check_close(dx, ref, mag);
    east::sparse::conv2d_grad_weight(g, x.data(), dy.data(), wt, gw.data());
    Dense::grad_weight(g, x.data(), dy.data(), ref, mag);
    for (std::size_t j = 0; j < wt.nnz(); ++j)
      CHECK(std::fabs(gw[j] - ref[wt.position(j)]) <= 1e-5 * mag[wt.position(j)] + 1e-6);
  }
}

TEST_CASE("CsrWeight round-trips and remaps", "[sparse][format]") {
  std::mt19937 rng(3);
  for (double d : {0.5, 0.05, 0.0001}) {
    const std::size_t rows = 37, cols = 5 * 9;  // rows·cols not a multiple of 64
    const BitMask mask = random_mask(rows, cols, 9, d, rng, 4, 2);
    auto w = randn(rows * cols, rng);
    CsrWeight wt(w.data(), mask, rows, cols, 9);
    REQUIRE(wt.nnz() == mask.count());
    std::vector<float> back(rows * cols, 9.0f);
    wt.scatter(back.data());
    for (std::size_t i = 0; i < rows * cols; ++i) CHECK(back[i] == (mask.test(i) ? w[i] : 0.0f));
    std::size_t j = 0;
    mask.for_each_active([&](std::size_t i) { CHECK(wt.position(j++) == i); });
    // transposed index: every entry once, grouped by input channel, in increasing dense index
    std::vector<int> seen(wt.nnz(), 0);
    for (std::size_t c = 0; c < wt.groups(); ++c)
      for (std::uint32_t t = wt.group_ptr()[c]; t < wt.group_ptr()[c + 1]; ++t) {
        ++seen[wt.t_pos()[t]];
        CHECK(wt.col()[wt.t_pos()[t]] / 9 == c);
        CHECK(wt.position(wt.t_pos()[t]) / cols == wt.t_row()[t]);
        if (t > wt.group_ptr()[c]) CHECK(wt.t_pos()[t] > wt.t_pos()[t - 1]);
      }
    CHECK(std::all_of(seen.begin(), seen.end(), [](int s) { return s == 1; }));

    // remap: kept positions carry value and momentum, new ones start at 0
    const BitMask next = random_mask(rows, cols, 9, d, rng, 5, 3);
    std::vector<float> mom(wt.nnz());
    for (std::size_t i = 0; i < mom.size(); ++i) mom[i] = static_cast<float>(i) + 0.5f;
    std::vector<float> dense_mom(rows * cols, 0.0f);
    wt.scatter_array(mom.data(), dense_mom.data());
    const CsrWeight nw = wt.remap(next, {&mom});
    REQUIRE(nw.nnz() == next.count());
    REQUIRE(mom.size() == nw.nnz());
    for (std::size_t k = 0; k < nw.nnz(); ++k) {
      const std::size_t i = nw.position(k);
      CHECK(nw.values()[k] == (mask.test(i) ? w[i] : 0.0f));
      CHECK(mom[k] == (mask.test(i) ? dense_mom[i] : 0.0f));
    }
  }
  CHECK_THROWS_AS(CsrWeight(nullptr, BitMask(10), 3, 3), east::InvalidArgument);
  CHECK_THROWS_AS(CsrWeight(nullptr, BitMask(12), 3, 4, 3), east::InvalidArgument);
  const auto g = Conv2dGeometry::square(1, 2, 4, 3, 3, 1, 1);
  const CsrWeight wrong(nullptr, BitMask(3 * 2 * 9), 3, 18, 1);
  std::vector<float> buf(1000);
  CHECK_THROWS_AS(east::sparse::conv2d_forward(g, buf.data(), wrong, buf.data()), east::InvalidArgument);
}

TEST_CASE("top_inactive_gradient equals a full sort of the inactive gradients", "[sparse][regrow]") {
  std::mt19937 rng(5);
  for (std::size_t block : {0u, 1u, 3u, 100u}) {
    const std::size_t rows = 13, cols = 27;
    const BitMask mask = random_mask(rows, cols, 9, 0.2, rng, 99, 99);
    auto g = randn(rows * cols, rng);
    for (std::size_t i = 0; i < g.size(); i += 7) g[i] = 0.25f;  // ties, broken by lower index
    std::vector<std::size_t> order;
    mask.for_each_inactive([&](std::size_t i) { order.push_back(i); });
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t a, std::size_t b) { return std::fabs(g[a]) > std::fabs(g[b]); });
    for (std::size_t k : {std::size_t{0}, std::size_t{1}, std::size_t{10}, order.size()}) {
      auto got = east::sparse::top_inactive_gradient(
          mask, rows, cols, k,
          [&](std::size_t r0, std::size_t r1, float* out) {
            std::copy(g.begin() + r0 * cols, g.begin() + r1 * cols, out);
          },
          block);
      std::vector<std::size_t> want(order.begin(), order.begin() + k);
      std::sort(want.begin(), want.end());
      CHECK(got.index == want);
      for (std::size_t i = 0; i < got.index.size(); ++i) CHECK(got.grad[i] == g[got.index[i]]);
    }
  }
  CHECK_THROWS_AS(
      east::sparse::top_inactive_gradient(BitMask(4, true), 2, 2, 1, [](std::size_t, std::size_t, float*) {}),
      east::InvalidArgument);
}

TEST_CASE("compact SGD equals the masked dense SGD step", "[sparse][sgd]") {
  std::mt19937 rng(9);
  const std::size_t n = 5000;
  const BitMask mask = random_mask(50, 100, 1, 0.1, rng, 3, 99);
  auto w = randn(n, rng), g = randn(n, rng), buf = randn(n, rng);
  mask.apply(w.data());
  mask.apply(buf.data());
  for (bool nesterov : {false, true}) {
    east::kernels::SgdParams p;
    p.lr = 0.1f;
    p.momentum = 0.9f;
    p.weight_decay = 5e-4f;
    p.nesterov = nesterov;
    CsrWeight wt(w.data(), mask, 50, 100);
    std::vector<float> cg(wt.nnz()), cb(wt.nnz());
    wt.gather_array(g.data(), cg.data());
    wt.gather_array(buf.data(), cb.data());
    auto dw = w, db = buf;
    east::kernels::reference::masked_sgd(dw.data(), g.data(), db.data(), mask.words(), n, p);
    east::sparse::sgd_step(wt.values(), cg.data(), cb.data(), wt.nnz(), p);
    std::vector<float> back(n), backb(n);
    wt.scatter(back.data());
    wt.scatter_array(cb.data(), backb.data());
    CHECK(back == dw);
    CHECK(backb == db);
  }
  CHECK_THROWS_AS(
      east::sparse::sgd_step(w.data(), g.data(), nullptr, n, east::kernels::SgdParams{0.1f, 0.9f}),
      east::InvalidArgument);
}

TEST_CASE("Crossover picks sparse below the crossover density", "[sparse][policy]") {
  east::sparse::Crossover c;
  c.conv = 0.05;
  CHECK(c.for_conv(0.001) == east::sparse::Backend::sparse);
  CHECK(c.for_conv(0.5) == east::sparse::Backend::dense);
  CHECK_THROWS_AS(c.for_linear(1.5), east::InvalidArgument);
  // Defaults: 10% for stride-1 convolutions; strided ones 4.5%, except with `conv` 0 (all
  // dense) or above 1 (all compact), or as set.
  CHECK(east::sparse::Crossover{}.conv == 0.10);
  CHECK(east::sparse::Crossover{}.strided_conv() == 0.045);
  CHECK(east::sparse::Crossover{}.for_conv(0.04, true) == east::sparse::Backend::sparse);
  CHECK(east::sparse::Crossover{}.for_conv(0.06, false) == east::sparse::Backend::sparse);
  CHECK(east::sparse::Crossover{}.for_conv(0.06, true) == east::sparse::Backend::dense);
  CHECK(east::sparse::Crossover{}.for_conv(0.11, false) == east::sparse::Backend::dense);
  CHECK(east::sparse::Crossover{0.015, 0.07}.strided_conv() == 0.045);
  CHECK(east::sparse::Crossover{2, 2}.strided_conv() == 2);
  CHECK(east::sparse::Crossover{2, 2}.for_conv(1.0, true) == east::sparse::Backend::sparse);
  CHECK(east::sparse::Crossover{0, 0}.for_conv(0.001, true) == east::sparse::Backend::dense);
  CHECK(east::sparse::Crossover{0.015, 0.07, 0.02}.for_conv(0.03, true) == east::sparse::Backend::dense);
}

TEST_CASE("sparse conv2d: CIFAR-sized planes", "[sparse][conv]") {
  ThreadGuard guard;
  std::mt19937 rng(13);
  for (auto g : {Conv2dGeometry::square(2, 6, 32, 5, 3, 1, 1), Conv2dGeometry::square(2, 6, 32, 5, 3, 2, 1),
                 Conv2dGeometry::square(2, 6, 32, 5, 1, 2, 0), Conv2dGeometry::square(3, 5, 16, 4, 3, 1, 1),
                 Conv2dGeometry::square(2, 4, 7, 4, 3, 2, 1), Conv2dGeometry::square(2, 4, 14, 4, 1, 2, 0),
                 // stride 2 with rows of 35 and 34 outputs: two whole 16-lane chunks and a partial one
                 Conv2dGeometry::square(5, 3, 70, 4, 3, 2, 1), Conv2dGeometry::square(3, 3, 67, 3, 1, 2, 0)}) {
    INFO("k " << g.kh << " stride " << g.stride_h << " hw " << g.h);
    check_random_layer(g, 0.3, rng, 99, 99);
  }
}

TEST_CASE("sparse conv2d: weight gradient over chunks of images", "[sparse][conv]") {
  // Planes larger than 8×8 take the weight gradient in chunks of images (~512 KiB of input and
  // output gradient each, so K = 1 image at 64 + 48 channels of 32×32, 2 at 96 + 96 of 16×16):
  // several chunks and a partial last one, partial sums added in chunk order, every ISA.
  ThreadGuard guard;
  east::sparse::detail::min_parallel_work() = 0;
  std::mt19937 rng(31);
  for (const auto isa : east::kernels::available_isas())
    for (auto g : {Conv2dGeometry::square(3, 64, 32, 48, 3, 1, 1), Conv2dGeometry::square(5, 96, 16, 96, 3, 1, 1),
                   Conv2dGeometry::square(3, 128, 16, 160, 1, 1, 0)}) {
      INFO("isa " << east::kernels::isa_name(isa) << " batch " << g.batch << " hw " << g.h << " k " << g.kh);
      east::kernels::set_isa(isa);
      check_random_layer(g, 0.02, rng, 99, 99);
    }
}

TEST_CASE("sparse conv2d: one-run path of stride-1 'same' convs on small planes", "[sparse][conv]") {
  // 3×3 pad 1 and 1×1 pad 0 at stride 1 take FlatRuns (one masked multiply-add per stored weight
  // and image); small, non-square and one-row/one-column planes, 1 and 2 threads.
  ThreadGuard guard;
  east::sparse::detail::min_parallel_work() = 0;
  std::mt19937 rng(21);
  // Batch 3 and 21: image groups of the AVX-512 small-plane kernels (4, 8 or 16 images) with a
  // remainder, and groups that touch the first and last image (edge loads).
  for (const auto isa : east::kernels::available_isas())
    for (std::size_t batch : {3u, 21u})
      for (auto [h, w, k] : {std::array<std::size_t, 3>{4, 4, 3},
                             {8, 8, 3},
                             {7, 7, 3},
                             {4, 7, 3},
                             {6, 5, 3},
                             {16, 16, 3},
                             {1, 5, 3},
                             {5, 1, 3},
                             {1, 1, 3},
                             {2, 2, 3},
                             {4, 4, 1},
                             {3, 6, 1}}) {
        east::kernels::set_isa(isa);
        Conv2dGeometry g{batch, 20, h, w, 18, k, k, 1, 1, k / 2, k / 2};
        INFO("isa " << east::kernels::isa_name(isa) << " batch " << batch << " h " << h << " w " << w << " k "
                    << k);
        check_random_layer(g, 0.2, rng, 0, 1);
      }
}

TEST_CASE("sparse conv2d: the one-run path does not leak wrapped-edge values", "[sparse][conv]") {
  // One weight at the left tap (r = 1, s = 0) of a 3×3 pad-1 conv: the run over a 4×4 plane passes
  // over the previous row's last column, which must be selected out, not multiplied by 0 (Inf·0).
  Conv2dGeometry g = Conv2dGeometry::square(1, 1, 4, 1, 3, 1, 1);
  std::vector<float> wv(9, 0.0f);
  wv[3] = 2.0f;
  BitMask mask(9);
  mask.set(3);
  const CsrWeight wt(wv.data(), mask, 1, 9, 9);
  std::vector<float> x(16, 1.0f);
  for (std::size_t r = 0; r < 4; ++r) x[r * 4 + 3] = std::numeric_limits<float>::infinity();
  std::vector<float> y(16);
  east::sparse::conv2d_forward(g, x.data(), wt, y.data());
  for (std::size_t r = 0; r < 4; ++r) {
    CHECK(y[r * 4 + 0] == 0.0f);  // left edge: tap falls in the padding
    CHECK(y[r * 4 + 1] == 2.0f);
    CHECK(y[r * 4 + 3] == 2.0f);  // y(r, 3) = 2·x(r, 2)
  }
  // Weight gradient: x(·, 3) never meets this tap, so Inf there must not reach the sum.
  std::vector<float> dy(16, 1.0f), gw(1);
  east::sparse::conv2d_grad_weight(g, x.data(), dy.data(), wt, gw.data());
  CHECK(gw[0] == 12.0f);  // Σ over 4 rows × 3 valid columns of x(r, c − 1) = 1
}

TEST_CASE("sparse conv2d: shifted windows never pick up neighbouring planes", "[sparse][conv]") {
  // The AVX-512 small-plane kernels load a tap's whole shifted window, which reaches into the
  // neighbouring channel's (or image's) plane; those lanes must be masked out. Every plane but
  // channel 1 holds NaN and every stored weight connects channel 1 to channel 1, so any leak
  // shows up as NaN. Batches 1, 5 and 17 put channel 1 next to the ends of the arrays too.
  ThreadGuard guard;
  for (const auto isa : east::kernels::available_isas())
    for (std::size_t batch : {1u, 5u, 17u})
      for (std::size_t hw : {4u, 7u, 8u}) {
        east::kernels::set_isa(isa);
        INFO("isa " << east::kernels::isa_name(isa) << " batch " << batch << " hw " << hw);
        const Conv2dGeometry g = Conv2dGeometry::square(batch, 3, hw, 3, 3, 1, 1);
        std::vector<float> wv(g.weight_size(), 0.0f);
        BitMask mask(g.weight_size());
        for (std::size_t t = 0; t < 9; ++t) {  // all nine taps of (co 1, ci 1)
          const std::size_t i = (1 * 3 + 1) * 9 + t;
          mask.set(i);
          wv[i] = 0.5f + static_cast<float>(t);
        }
        const CsrWeight wt(wv.data(), mask, 3, 27, 9);
        const float nan = std::numeric_limits<float>::quiet_NaN();
        std::vector<float> x(g.input_size(), nan), dy(g.output_size(), nan);
        const std::size_t p = hw * hw;
        for (std::size_t n = 0; n < batch; ++n)
          for (std::size_t i = 0; i < p; ++i) {
            x[(n * 3 + 1) * p + i] = 1.0f;
            dy[(n * 3 + 1) * p + i] = 1.0f;
          }
        std::vector<float> y(g.output_size()), dx(g.input_size()), gw(wt.nnz());
        east::sparse::conv2d_forward(g, x.data(), wt, y.data());
        east::sparse::conv2d_grad_input(g, dy.data(), wt, dx.data());
        east::sparse::conv2d_grad_weight(g, x.data(), dy.data(), wt, gw.data());
        std::vector<double> ref, mag;
        std::vector<float> x1(g.input_size(), 0.0f), dy1(g.output_size(), 0.0f);
        for (std::size_t n = 0; n < batch; ++n)
          for (std::size_t i = 0; i < p; ++i) x1[(n * 3 + 1) * p + i] = dy1[(n * 3 + 1) * p + i] = 1.0f;
        Dense::forward(g, x1.data(), wv.data(), ref, mag);
        for (std::size_t n = 0; n < batch; ++n)
          for (std::size_t i = 0; i < p; ++i) {
            const std::size_t yi = (n * 3 + 1) * p + i;
            CHECK(y[yi] == static_cast<float>(ref[yi]));  // small integers: exact
          }
        Dense::grad_input(g, dy1.data(), wv.data(), ref, mag);
        for (std::size_t n = 0; n < batch; ++n)
          for (std::size_t c = 0; c < 3; ++c)
            for (std::size_t i = 0; i < p; ++i) {
              const std::size_t xi = (n * 3 + c) * p + i;
              CHECK(dx[xi] == static_cast<float>(ref[xi]));  // channels 0 and 2: exactly 0
            }
        Dense::grad_weight(g, x1.data(), dy1.data(), ref, mag);
        for (std::size_t j = 0; j < wt.nnz(); ++j) CHECK(gw[j] == static_cast<float>(ref[wt.position(j)]));
      }
}

TEST_CASE("sparse conv2d: strided layers run as stride-1 layers over phase planes", "[sparse][conv]") {
  // detail::StrideSplit: input rows S·i + a form phase plane a, each stored weight moves to one
  // (channel, phase) input channel of a stride-1 layer. Every split policy (none, default, all),
  // even and odd sizes, strides 2 and 3, one or several phases: the same results as the reference,
  // identical for 1 and 2 threads, and the input gradient overwritten everywhere (rows and
  // columns no phase reads are 0).
  ThreadGuard guard;
  struct PolicyGuard {
    ~PolicyGuard() { east::sparse::detail::phase_split_policy() = 1; }
  } policy_guard;
  east::sparse::detail::min_parallel_work() = 0;
  std::mt19937 rng(31);
  const Conv2dGeometry shapes[] = {
      Conv2dGeometry::square(3, 5, 16, 6, 3, 2, 1),  // ResNet's 3×3 downsampling conv
      Conv2dGeometry::square(3, 5, 16, 6, 1, 2, 0),  // its 1×1 shortcut: one phase
      Conv2dGeometry::square(2, 4, 8, 5, 3, 2, 1),   Conv2dGeometry::square(2, 4, 7, 5, 3, 2, 1),
      Conv2dGeometry::square(2, 4, 7, 5, 1, 2, 0),   Conv2dGeometry::square(2, 3, 11, 4, 3, 3, 1),
      Conv2dGeometry::square(2, 3, 12, 4, 5, 2, 2),  Conv2dGeometry::square(2, 3, 9, 4, 3, 2, 0),
      Conv2dGeometry{2, 3, 8, 10, 4, 3, 3, 2, 1, 1, 1},  // stride 2 along rows only
      Conv2dGeometry{2, 3, 9, 8, 4, 1, 3, 1, 2, 0, 1},
      Conv2dGeometry::square(2, 2, 34, 3, 3, 2, 1),  // 17-wide output rows: split only under policy 2
      Conv2dGeometry{2, 3, 1, 8, 4, 1, 3, 2, 2, 1, 1}};  // a 1-row input whose one row phase is padding
  int split_ran = 0;
  for (const auto isa : east::kernels::available_isas())
    for (int policy : {0, 1, 2})
      for (const auto& g : shapes) {
        east::kernels::set_isa(isa);
        east::sparse::detail::phase_split_policy() = policy;
        INFO("isa " << east::kernels::isa_name(isa) << " policy " << policy << " k " << g.kh << "x" << g.kw
                    << " stride " << g.stride_h << "x" << g.stride_w << " pad " << g.pad_h << " h " << g.h
                    << " w " << g.w);
        const CsrWeight wt = check_random_layer(g, 0.4, rng, 0, 1);
        if (east::sparse::detail::StrideSplit(g, wt).ok) ++split_ran;
      }
  // Policy 2 splits every shape but the unpadded 3×3 one (its output is shorter than the phase
  // planes, so the stride-1 form is not a 'same' layer), policy 1 also leaves the 17-wide one.
  CHECK(split_ran == 19 * static_cast<int>(east::kernels::available_isas().size()));
}

TEST_CASE("CsrWeight::from_index refuses a malformed index", "[sparse][format]") {
  const auto w = CsrWeight::from_index(2, 6, 3, {0, 2, 3}, {1, 4, 5});
  CHECK(w.nnz() == 3);
  CHECK(w.position(2) == 6 + 5);
  CHECK(w.group_ptr()[2] == 3);  // groups {cols 0-2, cols 3-5}: entries 1, then 4 and 5
  CHECK_THROWS_WITH(CsrWeight::from_index(2, 6, 3, {0, 2, 3}, {4, 1, 5}), Catch::Contains("increasing"));
  CHECK_THROWS_WITH(CsrWeight::from_index(2, 6, 3, {0, 2, 3}, {1, 4, 6}), Catch::Contains("valid: < 6"));
  CHECK_THROWS_WITH(CsrWeight::from_index(2, 6, 3, {0, 3}, {1, 4, 5}), Catch::Contains("rows + 1 = 3"));
  CHECK_THROWS_WITH(CsrWeight::from_index(2, 7, 3, {0, 2, 3}, {1, 4, 5}), Catch::Contains("group_size divides"));
}
