// CUDA DyReLU-B (with phasing) and weight-sharing kernels vs the CPU implementations.
// beta = 0 (ReLU) and the sharing scale gradients must match bit for bit; DyReLU-B with beta > 0
// reduces in another fixed order and uses CUDA's tanh, so it must match to rounding.
#include <east/cuda/dyrelu.cuh>
#include <east/cuda/sharing.cuh>

#include "cuda_test_helpers.cuh"

using namespace east_cuda_test;

namespace {

void require_close(const std::vector<float>& got, const std::vector<float>& want, float rel, float abs_tol) {
  REQUIRE(got.size() == want.size());
  float scale = 0.0f;
  for (float v : want) scale = std::max(scale, std::fabs(v));
  for (std::size_t i = 0; i < got.size(); ++i) {
    CAPTURE(i, got[i], want[i], scale);
    REQUIRE(std::fabs(got[i] - want[i]) <= abs_tol + rel * std::max(std::fabs(want[i]), 1e-3f * scale));
  }
}

struct Shape {
  int B, C, H, W;
};

}  // namespace

TEST_CASE("cuda dyrelu forward/backward match the CPU", "[cuda][dyrelu]") {
  EAST_REQUIRE_GPU_OR_SKIP();
  const Shape shapes[] = {{3, 8, 5, 7}, {2, 40, 33, 31}, {1, 3, 1, 1}, {4, 16, 16, 16}};
  unsigned seed = 21;
  for (const auto& s : shapes) {
    for (double beta : {0.0, 0.37, 1.0}) {
      CAPTURE(s.B, s.C, s.H, s.W, beta);
      const auto sz = east::dyrelu_sizes(s.C);
      const std::size_t total = static_cast<std::size_t>(s.B) * s.C * s.H * s.W;
      auto flat = random_floats(sz.total, Values::normal, seed++);
      for (auto& v : flat) v *= 0.5f;
      const auto x = random_floats(total, Values::normal, seed++);
      const auto dy = random_floats(total, Values::normal, seed++);
      // CPU
      const auto p = east::dyrelu_params_from_flat(flat.data(), s.C);
      std::vector<float> y(total), dx(total), gflat(sz.total, 0.0f);
      east::DyReLUWorkspace<float> ws;
      east::dyrelu_forward(p, x.data(), y.data(), s.B, s.C, s.H, s.W, beta, ws);
      const auto gr = east::dyrelu_grads_from_flat(gflat.data(), s.C);
      east::dyrelu_backward(p, x.data(), dy.data(), dx.data(), s.B, s.C, s.H, s.W, ws, &gr);
      // GPU
      DeviceBuffer<float> d_flat(flat), d_x(x), d_dy(dy), d_y(total), d_dx(total), d_g(sz.total);
      d_g.zero();
      const auto dp = east::dyrelu_params_from_flat(static_cast<const float*>(d_flat.get()), s.C);
      const auto dg = east::dyrelu_grads_from_flat(d_g.get(), s.C);
      std::size_t bytes = 0;
      EAST_CUDA_CHECK(east::cuda::dyrelu_forward<float>(nullptr, bytes, dp, d_x.get(), d_y.get(), s.B, s.C,
                                                        s.H, s.W, beta));
      REQUIRE(bytes == east::cuda::dyrelu_temp_bytes<float>(s.B, s.C, sz.hidden));
      DeviceBuffer<unsigned char> temp(bytes);
      EAST_CUDA_CHECK(east::cuda::dyrelu_forward<float>(temp.get(), bytes, dp, d_x.get(), d_y.get(), s.B, s.C,
                                                        s.H, s.W, beta));
      EAST_CUDA_CHECK(east::cuda::dyrelu_backward<float>(temp.get(), bytes, dp, d_x.get(), d_dy.get(),
                                                         d_dx.get(), s.B, s.C, s.H, s.W, beta, &dg));
      EAST_CUDA_CHECK(cudaDeviceSynchronize());
      if (beta == 0.0) {
        REQUIRE(float_bits(d_y.download()) == float_bits(y));
        REQUIRE(float_bits(d_dx.download()) == float_bits(dx));
        REQUIRE(float_bits(d_g.download()) == float_bits(gflat));  // untouched zeros
      } else {
        require_close(d_y.download(), y, 2e-5f, 1e-6f);
        require_close(d_dx.download(), dx, 1e-4f, 1e-6f);
        require_close(d_g.download(), gflat, 1e-3f, 1e-5f);
      }
    }
  }
}

TEST_CASE("cuda dyrelu rejects bad configuration like the CPU", "[cuda][dyrelu]") {
  // Host-side validation: runs without a GPU too.
  std::size_t bytes = 0;
  east::DyReLUParams<float> p;
  REQUIRE_THROWS_AS(east::cuda::dyrelu_forward<float>(nullptr, bytes, p, nullptr, nullptr, 1, 4, 2, 2, 1.5),
                    east::InvalidArgument);
  REQUIRE_THROWS_AS(east::cuda::dyrelu_forward<float>(nullptr, bytes, p, nullptr, nullptr, 0, 4, 2, 2, 0.5),
                    east::InvalidArgument);
}

TEST_CASE("cuda shared weight kernels match the CPU (scale gradients bit for bit)", "[cuda][sharing]") {
  EAST_REQUIRE_GPU_OR_SKIP();
  unsigned seed = 51;
  for (std::size_t n : {std::size_t{1}, std::size_t{7}, std::size_t{16384}, std::size_t{16385},
                        std::size_t{100003}, std::size_t{1} << 20}) {
    for (std::size_t uses : {std::size_t{1}, std::size_t{3}}) {
      CAPTURE(n, uses);
      const auto w = random_floats(n, Values::normal, seed++);
      const auto dw0 = random_floats(n, Values::normal, seed++);
      std::vector<std::vector<float>> g;
      std::vector<const float*> gp;
      std::vector<float> scales(uses), ds0(uses);
      for (std::size_t i = 0; i < uses; ++i) {
        g.push_back(random_floats(n, Values::normal, seed++));
        scales[i] = 0.5f + 0.25f * static_cast<float>(i);
        ds0[i] = 0.125f * static_cast<float>(i);
      }
      for (auto& v : g) gp.push_back(v.data());
      auto dw = dw0, ds = ds0;
      east::shared_weight_backward(w.data(), gp.data(), scales.data(), uses, dw.data(), ds.data(), n);
      std::vector<float> eff(n);
      east::shared_effective_weight(w.data(), scales.back(), eff.data(), n);

      DeviceBuffer<float> d_w(w), d_dw(dw0), d_s(scales), d_ds(ds0), d_eff(n);
      std::vector<DeviceBuffer<float>> d_g;
      std::vector<const float*> d_gp;
      for (auto& v : g) d_g.emplace_back(v);
      for (auto& b : d_g) d_gp.push_back(b.get());
      two_phase([&](void* t, std::size_t& b) {
        return east::cuda::shared_weight_backward<float>(t, b, d_w.get(), d_gp.data(), d_s.get(), uses,
                                                         d_dw.get(), d_ds.get(), n);
      });
      EAST_CUDA_CHECK(
          east::cuda::shared_effective_weight<float>(d_w.get(), d_s.get() + (uses - 1), d_eff.get(), n));
      REQUIRE(float_bits(d_ds.download()) == float_bits(ds));  // double sums in the CPU's exact order
      REQUIRE(float_bits(d_eff.download()) == float_bits(eff));
      // dw: equal bits when the CPU does not contract s*g + dw into an FMA (baseline x86-64);
      // allow one rounding per use otherwise.
      require_close(d_dw.download(), dw, 4e-7f * static_cast<float>(uses), 0.0f);
    }
  }
}

TEST_CASE("cuda dyrelu and sharing in double match the CPU", "[cuda][dyrelu][sharing]") {
  EAST_REQUIRE_GPU_OR_SKIP();
  // DyReLU-B in double: same math as float, tighter agreement.
  const int B = 2, C = 12, H = 9, W = 10;
  const auto sz = east::dyrelu_sizes(C);
  const std::size_t total = static_cast<std::size_t>(B) * C * H * W;
  auto to_double = [](const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); };
  const auto flat = to_double(random_floats(sz.total, Values::normal, 901));
  const auto x = to_double(random_floats(total, Values::normal, 902));
  const auto dy = to_double(random_floats(total, Values::normal, 903));
  const auto p = east::dyrelu_params_from_flat(flat.data(), C);
  std::vector<double> y(total), dx(total), gflat(sz.total, 0.0);
  east::DyReLUWorkspace<double> ws;
  east::dyrelu_forward(p, x.data(), y.data(), B, C, H, W, 0.6, ws);
  const auto gr = east::dyrelu_grads_from_flat(gflat.data(), C);
  east::dyrelu_backward(p, x.data(), dy.data(), dx.data(), B, C, H, W, ws, &gr);
  DeviceBuffer<double> d_flat(flat), d_x(x), d_dy(dy), d_y(total), d_dx(total), d_g(sz.total);
  d_g.zero();
  const auto dp = east::dyrelu_params_from_flat(static_cast<const double*>(d_flat.get()), C);
  const auto dg = east::dyrelu_grads_from_flat(d_g.get(), C);
  std::size_t bytes = 0;
  EAST_CUDA_CHECK(east::cuda::dyrelu_forward<double>(nullptr, bytes, dp, d_x.get(), d_y.get(), B, C, H, W, 0.6));
  REQUIRE(bytes == east::cuda::dyrelu_temp_bytes<double>(B, C, sz.hidden));
  DeviceBuffer<unsigned char> temp(bytes);
  EAST_CUDA_CHECK(east::cuda::dyrelu_forward<double>(temp.get(), bytes, dp, d_x.get(), d_y.get(), B, C, H, W, 0.6));
  EAST_CUDA_CHECK(east::cuda::dyrelu_backward<double>(temp.get(), bytes, dp, d_x.get(), d_dy.get(), d_dx.get(), B,
                                                      C, H, W, 0.6, &dg));
  EAST_CUDA_CHECK(cudaDeviceSynchronize());
  auto close = [](const std::vector<double>& got, const std::vector<double>& want, double rel) {
    REQUIRE(got.size() == want.size());
    double scale = 0.0;
    for (double v : want) scale = std::max(scale, std::fabs(v));
    for (std::size_t i = 0; i < got.size(); ++i) {
      CAPTURE(i, got[i], want[i]);
      REQUIRE(std::fabs(got[i] - want[i]) <= rel * std::max(std::fabs(want[i]), 1e-3 * scale) + 1e-300);
    }
  };
  close(d_y.download(), y, 1e-12);
  close(d_dx.download(), dx, 1e-10);
  close(d_g.download(), gflat, 1e-9);

  // Sharing in double: the scale gradients in the CPU's exact order.
  const std::size_t n = 3 * east::detail::kSharedDotChunk + 11;
  const auto w = to_double(random_floats(n, Values::normal, 904));
  const auto g0 = to_double(random_floats(n, Values::normal, 905));
  const auto g1 = to_double(random_floats(n, Values::normal, 906));
  const std::vector<double> scales = {0.75, -1.25};
  std::vector<double> dw(n, 0.5), ds = {0.0, 0.25};
  const double* gp[2] = {g0.data(), g1.data()};
  const auto dw0 = dw;
  const auto ds0 = ds;
  east::shared_weight_backward(w.data(), gp, scales.data(), 2, dw.data(), ds.data(), n);
  DeviceBuffer<double> d_w(w), d_g0(g0), d_g1(g1), d_s(scales), d_dw(dw0), d_ds(ds0);
  const double* d_gp[2] = {d_g0.get(), d_g1.get()};
  two_phase([&](void* t, std::size_t& b) {
    return east::cuda::shared_weight_backward<double>(t, b, d_w.get(), d_gp, d_s.get(), 2, d_dw.get(), d_ds.get(),
                                                      n);
  });
  const auto got_ds = d_ds.download();
  REQUIRE(std::memcmp(got_ds.data(), ds.data(), 2 * sizeof(double)) == 0);
  close(d_dw.download(), dw, 1e-15);
}
