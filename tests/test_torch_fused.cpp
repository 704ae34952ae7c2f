// Fused BatchNorm (+ residual add) + ReLU (east/sparse/batchnorm.hpp, adapters/torch/batchnorm.hpp)
// against libtorch's torch::batch_norm + add + relu: forward, gradients of input, weight, bias and
// residual, running statistics, eval mode, the module's state dict, errors, 1 vs 2 threads.
#include <east/adapters/torch/batchnorm.hpp>
// glog (through c10) defines CHECK; Catch2 must own it.
#undef CHECK
#include <catch2/catch.hpp>
#include <east/kernels/dispatch.hpp>
#include <vector>

namespace es = east::sparse;
namespace ta = east::torch_adapter;

namespace {

// Restores one thread and the normal parallel threshold.
struct ThreadGuard {
  ThreadGuard() { es::detail::min_parallel_work().store(0); }
  ~ThreadGuard() {
    east::kernels::set_threads(1);
    es::detail::min_parallel_work().store(1 << 18);
  }
};

double rel(const at::Tensor& a, const at::Tensor& b) {
  const double scale = std::max(1e-30, b.abs().max().item<double>());
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>() / scale;
}

struct Case {
  std::vector<long> shape;
  bool relu, residual, tiny_var;
};

struct Result {
  at::Tensor y, dx, dw, db, dres, rm, rv;
};

// One training-mode forward + backward with a fixed upstream gradient, either through east's
// fused function or through torch's ops. Inputs are converted to `dtype`.
Result run(const Case& c, at::ScalarType dtype, bool fused, bool training = true) {
  torch::manual_seed(42);
  auto x = torch::randn(c.shape, torch::kDouble);
  if (c.tiny_var) x.select(1, 0).mul_(1e-3).add_(50.0);  // |mean| ≫ std: cancellation-prone
  auto res = torch::randn(c.shape, torch::kDouble);
  auto w = torch::rand({c.shape[1]}, torch::kDouble).add_(0.5);
  auto b = torch::randn({c.shape[1]}, torch::kDouble);
  auto rm = torch::randn({c.shape[1]}, torch::kDouble);
  auto rv = torch::rand({c.shape[1]}, torch::kDouble).add_(0.5);
  auto dy = torch::randn(c.shape, torch::kDouble);
  x = x.to(dtype).requires_grad_(true);
  res = res.to(dtype).requires_grad_(c.residual);
  w = w.to(dtype).requires_grad_(true);
  b = b.to(dtype).requires_grad_(true);
  rm = rm.to(dtype);
  rv = rv.to(dtype);
  at::Tensor y;
  if (fused) {
    y = ta::batchnorm_relu(x, w, b, c.residual ? res : at::Tensor(), rm, rv, training, 0.1, 1e-5, c.relu);
  } else {
    y = torch::batch_norm(x, w, b, rm, rv, training, 0.1, 1e-5, false);
    if (c.residual) y = y + res;
    if (c.relu) y = torch::relu(y);
  }
  y.backward(dy.to(dtype));
  return {y.detach(), x.grad(), w.grad(), b.grad(), c.residual ? res.grad() : at::Tensor(), rm, rv};
}

const std::vector<Case> kCases = {
    {{4, 3, 5, 5}, true, false, false},   {{4, 3, 5, 5}, true, true, false},
    {{4, 3, 5, 5}, false, false, false},  {{2, 6, 4, 4}, false, true, false},
    {{1, 4, 3, 3}, true, false, false},                                       // batch 1, plane 9
    {{3, 5, 1, 1}, true, true, false},                                        // 1x1 planes
    {{8, 4, 9, 7}, true, true, true},     {{5, 2, 8, 8}, true, false, true},  // tiny variance channel
    {{16, 3, 17, 3}, false, false, true},
    {{3, 2, 23, 29}, true, true, false},  // 667-value planes: whole segments, chains, a partial vector
    {{2, 3, 32, 32}, true, false, true},  // segments end exactly at the plane's end
};

}  // namespace

TEST_CASE("fused BN+ReLU matches torch batch_norm + add + relu in float64", "[torch][fused]") {
  for (const auto& c : kCases) {
    INFO("shape " << c10::IntArrayRef(c.shape) << " relu " << c.relu << " residual " << c.residual);
    const auto e = run(c, torch::kDouble, true), t = run(c, torch::kDouble, false);
    CHECK(rel(e.y, t.y) < 1e-10);
    CHECK(rel(e.dx, t.dx) < 1e-9);
    CHECK(rel(e.dw, t.dw) < 1e-9);
    CHECK(rel(e.db, t.db) < 1e-10);
    if (c.residual) CHECK(rel(e.dres, t.dres) < 1e-12);
    CHECK(rel(e.rm, t.rm) < 1e-12);
    CHECK(rel(e.rv, t.rv) < 1e-12);
  }
}

TEST_CASE("fused BN+ReLU in float32 is as close to float64 as torch's float32", "[torch][fused]") {
  for (const auto& c : kCases) {
    INFO("shape " << c10::IntArrayRef(c.shape) << " relu " << c.relu << " residual " << c.residual);
    const auto e = run(c, torch::kFloat, true), t = run(c, torch::kFloat, false);
    const auto ref = run(c, torch::kDouble, false);
    // East's error against the float64 result: at most 4x torch's own float32 error + 1e-5, and
    // a few float32 ulps of the output scale where the float32 inputs are well conditioned.
    for (auto [a, b, r] : {std::tuple{e.y, t.y, ref.y}, std::tuple{e.dx, t.dx, ref.dx},
                           std::tuple{e.dw, t.dw, ref.dw}, std::tuple{e.db, t.db, ref.db}}) {
      CHECK(rel(a, r) < 4 * rel(b, r) + 1e-5);
      // Inputs rounded to float32 already move a tiny-variance channel by ~ulp(50)/1e-3.
      if (!c.tiny_var) CHECK(rel(a, r) < 2e-5);
    }
    CHECK(rel(e.rm, ref.rm) < 1e-6);
    CHECK(rel(e.rv, ref.rv) < 1e-6);
  }
}

TEST_CASE("fused BN+ReLU eval mode uses the running statistics like torch", "[torch][fused]") {
  for (const auto& c : kCases) {
    INFO("shape " << c10::IntArrayRef(c.shape));
    const auto e = run(c, torch::kDouble, true, false), t = run(c, torch::kDouble, false, false);
    CHECK(rel(e.y, t.y) < 1e-12);
    CHECK(rel(e.dx, t.dx) < 1e-12);
    CHECK(rel(e.dw, t.dw) < 1e-10);
    CHECK(rel(e.db, t.db) < 1e-12);
    CHECK(rel(e.rm, t.rm) == 0.0);  // untouched in eval
    CHECK(rel(e.rv, t.rv) == 0.0);
  }
}

TEST_CASE("fused BN+ReLU: one value per channel in training throws, as in torch", "[torch][fused]") {
  auto x = torch::randn({1, 3, 1, 1});
  auto w = torch::ones({3}), b = torch::zeros({3}), rm = torch::zeros({3}), rv = torch::ones({3});
  CHECK_THROWS_AS(ta::batchnorm_relu(x, w, b, at::Tensor(), rm, rv, true, 0.1, 1e-5, true),
                  east::InvalidArgument);
  torch::nn::BatchNorm2d tbn(3);
  CHECK_THROWS(tbn(x));
  ta::BatchNormReLU2d ebn(3);
  CHECK_THROWS_AS(ebn(x), east::InvalidArgument);
  ebn->eval();  // eval mode normalises with running statistics: fine with one value
  CHECK(ebn(x).sizes() == x.sizes());
  // Wrong shapes and dtypes name the argument.
  CHECK_THROWS_AS(ta::batchnorm_relu(x.expand({2, 3, 1, 1}).contiguous(), torch::ones({4}), b, at::Tensor(),
                                     rm, rv, true, 0.1, 1e-5, true),
                  east::InvalidArgument);
  CHECK_THROWS_AS(ta::batchnorm_relu(torch::randn({2, 3, 2, 2}), w, b, torch::randn({2, 3, 2, 1}), rm, rv,
                                     true, 0.1, 1e-5, true),
                  east::InvalidArgument);
  CHECK_THROWS_AS(ebn(torch::ones({2, 3, 2, 2}, torch::kInt)), east::InvalidArgument);
}

TEST_CASE("fused BN+ReLU: 1 and 2 threads give identical bits", "[torch][fused]") {
  ThreadGuard guard;
  // Channel blocks of ~64 KiB per array: {8,16,8,8} is one block, {4,96,32,32} 24 blocks of 4.
  for (auto [shape, residual] :
       {std::pair{std::vector<long>{8, 16, 8, 8}, false}, std::pair{std::vector<long>{8, 16, 8, 8}, true},
        std::pair{std::vector<long>{4, 96, 32, 32}, true}}) {
    Case c{shape, true, residual, true};
    east::kernels::set_threads(1);
    const auto a = run(c, torch::kFloat, true);
    east::kernels::set_threads(2);
    const auto b = run(c, torch::kFloat, true);
    CHECK(torch::equal(a.y, b.y));
    CHECK(torch::equal(a.dx, b.dx));
    CHECK(torch::equal(a.dw, b.dw));
    CHECK(torch::equal(a.db, b.db));
    CHECK(torch::equal(a.rm, b.rm));
    CHECK(torch::equal(a.rv, b.rv));
    if (residual) CHECK(torch::equal(a.dres, b.dres));
  }
}

TEST_CASE("fused BN+ReLU: every instruction set's body agrees with the baseline one", "[torch][fused]") {
  ThreadGuard guard;
  struct IsaGuard {
    ~IsaGuard() { east::kernels::reset_isa(); }
  } isa_guard;
  for (const Case& c : {Case{{4, 5, 23, 29}, true, true, false}, Case{{16, 8, 4, 4}, true, false, false},
                        Case{{8, 6, 7, 7}, true, true, true}}) {
    east::kernels::set_isa(east::kernels::Isa::scalar);
    const auto base = run(c, torch::kFloat, true);
    for (const auto isa : east::kernels::available_isas()) {
      INFO("isa " << east::kernels::isa_name(isa) << ", shape " << c.shape);
      east::kernels::set_isa(isa);
      east::kernels::set_threads(1);
      const auto one = run(c, torch::kFloat, true);
      east::kernels::set_threads(2);
      const auto two = run(c, torch::kFloat, true);
      CHECK(torch::equal(one.y, two.y));  // any instruction set: bits independent of threads
      CHECK(torch::equal(one.dx, two.dx));
      // Instruction sets differ only by fused multiply-adds: float32 rounding, not formula errors.
      CHECK(rel(one.y, base.y) < 1e-5);
      CHECK(rel(one.dx, base.dx) < 1e-4);
      CHECK(rel(one.dw, base.dw) < 1e-4);
      CHECK(rel(one.db, base.db) < 1e-5);
      CHECK(rel(one.rv, base.rv) < 1e-5);
      if (c.residual) CHECK(rel(one.dres, base.dres) == 0.0);
    }
  }
}

TEST_CASE("fused BN+ReLU without a residual: the mask recomputed from x is the output's mask", "[torch][fused]") {
  // batchnorm_backward with y = nullptr recomputes the ReLU's mask from x as the forward computed
  // the output; it must give the same bits as reading y, on every instruction set, in training and
  // eval, with channels whose values sit on the ReLU's edge (x = mean exactly, beta = 0) and NaNs;
  // and the same again written in place over dy.
  ThreadGuard guard;
  struct IsaGuard {
    ~IsaGuard() { east::kernels::reset_isa(); }
  } isa_guard;
  for (const auto isa : east::kernels::available_isas())
    for (const bool training : {true, false})
      for (const auto& shape : {std::vector<long>{4, 5, 23, 29}, std::vector<long>{16, 8, 4, 4},
                                std::vector<long>{3, 6, 7, 7}}) {
        INFO("isa " << east::kernels::isa_name(isa) << " training " << training << " shape " << shape);
        east::kernels::set_isa(isa);
        torch::manual_seed(5);
        auto x = torch::randn(shape);
        x.select(1, 1).fill_(0.25f);             // a constant channel: x − mean = 0 exactly
        x.select(1, 2).mul_(0.5f).round_();      // many ties
        x.select(1, 3).index_put_({0, 0, 0}, NAN);  // non-finite input: masked to 0 both ways
        const long c = shape[1];
        auto w = torch::rand({c}).add_(0.5f), b = torch::randn({c});
        b.index_put_({1}, 0.0f);
        b.index_put_({2}, 0.0f);
        auto rm = torch::randn({c}), rv = torch::rand({c}).add_(0.5f);
        rm.index_put_({1}, 0.25f);  // eval normalises with it: channel 1 sits on the edge in both modes
        const auto dy = torch::randn(shape);
        const es::BatchNormShape s = ta::detail::bn_shape(x);
        es::BatchNormOptions o;
        o.training = training;
        auto y = torch::empty_like(x), mean = torch::empty({c}), invstd = torch::empty({c});
        es::batchnorm_forward<float>(s, x.data_ptr<float>(), nullptr, w.data_ptr<float>(), b.data_ptr<float>(),
                                     rm.data_ptr<float>(), rv.data_ptr<float>(), o, y.data_ptr<float>(),
                                     mean.data_ptr<float>(), invstd.data_ptr<float>());
        at::Tensor dx[2], dw[2], db[2];
        for (int from_x = 0; from_x < 2; ++from_x) {
          dx[from_x] = torch::empty_like(x), dw[from_x] = torch::empty({c}), db[from_x] = torch::empty({c});
          es::batchnorm_backward<float>(s, dy.data_ptr<float>(), x.data_ptr<float>(),
                                        from_x ? nullptr : y.data_ptr<float>(), w.data_ptr<float>(),
                                        b.data_ptr<float>(), mean.data_ptr<float>(), invstd.data_ptr<float>(), o,
                                        dx[from_x].data_ptr<float>(), nullptr, dw[from_x].data_ptr<float>(),
                                        db[from_x].data_ptr<float>());
        }
        {  // in place (dx = dy, as BatchNormReLU2d does when only autograd holds dy): the same bits
          auto buf = dy.clone(), dw2 = torch::empty({c}), db2 = torch::empty({c});
          es::batchnorm_backward<float>(s, buf.data_ptr<float>(), x.data_ptr<float>(), nullptr, w.data_ptr<float>(),
                                        b.data_ptr<float>(), mean.data_ptr<float>(), invstd.data_ptr<float>(), o,
                                        buf.data_ptr<float>(), nullptr, dw2.data_ptr<float>(), db2.data_ptr<float>());
          CHECK(torch::allclose(buf, dx[1], 0.0, 0.0, /*equal_nan=*/true));
          CHECK(torch::allclose(dw2, dw[1], 0.0, 0.0, /*equal_nan=*/true));
        }
        CHECK(y.select(1, 1).eq(0).all().item<bool>());  // the edge is hit
        // Same bits (NaN where the other has NaN: a NaN input spoils its channel's statistics).
        CHECK(torch::allclose(dx[0], dx[1], 0.0, 0.0, /*equal_nan=*/true));
        CHECK(torch::allclose(dw[0], dw[1], 0.0, 0.0, /*equal_nan=*/true));
        CHECK(torch::allclose(db[0], db[1], 0.0, 0.0, /*equal_nan=*/true));
        CHECK(dx[1].select(1, 0).isfinite().all().item<bool>());
      }
}

TEST_CASE("BatchNormReLU2d is a drop-in for BatchNorm2d + ReLU (state dict, steps, eval)", "[torch][fused]") {
  torch::manual_seed(3);
  torch::nn::BatchNorm2d tbn(torch::nn::BatchNorm2dOptions(6));
  ta::BatchNormReLU2d ebn(torch::nn::BatchNorm2dOptions(6));
  {
    torch::NoGradGuard ng;
    tbn->weight.uniform_(0.5, 1.5);
    tbn->bias.normal_();
  }
  // Same names → a torch state dict loads into the fused module.
  auto tp = tbn->named_parameters(), ep = ebn->named_parameters();
  auto tb = tbn->named_buffers(), eb = ebn->named_buffers();
  REQUIRE(tp.keys() == ep.keys());
  REQUIRE(tb.keys() == eb.keys());
  {
    torch::NoGradGuard ng;
    for (auto& p : tp) ep[p.key()].copy_(p.value());
    for (auto& p : tb) eb[p.key()].copy_(p.value());
  }
  for (int step = 0; step < 3; ++step) {
    auto x = torch::randn({4, 6, 5, 5});
    auto s = torch::randn({4, 6, 5, 5});
    auto yt = torch::relu(tbn(x) + s), ye = ebn(x, s);
    CHECK(rel(ye, yt) < 1e-5);
  }
  CHECK(ebn->num_batches_tracked.item<long>() == 3);
  CHECK(rel(ebn->running_mean, tbn->running_mean) < 1e-6);
  CHECK(rel(ebn->running_var, tbn->running_var) < 1e-6);
  tbn->eval();
  ebn->eval();
  auto x = torch::randn({2, 6, 3, 3});
  CHECK(rel(ebn(x), torch::relu(tbn(x))) < 1e-5);

  // momentum = None: cumulative average, as torch.
  torch::nn::BatchNorm2d tc(torch::nn::BatchNorm2dOptions(2).momentum(c10::nullopt));
  ta::BatchNormReLU2d ec(torch::nn::BatchNorm2dOptions(2).momentum(c10::nullopt), /*relu=*/false);
  for (int step = 0; step < 3; ++step) {
    auto xx = torch::randn({3, 2, 4, 4});
    CHECK(rel(ec(xx), tc(xx)) < 1e-5);
  }
  CHECK(rel(ec->running_var, tc->running_var) < 1e-6);
}
