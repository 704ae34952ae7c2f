// What makes K accumulated micro-batches in one process add exactly what K data-parallel ranks
// add (docs/distributed.md): BatchNormReLU2d's deferred running statistics (recorded per batch,
// applied later in a chosen order) and the compact layers' dense gradient at a mask update,
// summed per backward pass (one pass per rank) before the passes are added.
#include <torch/torch.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <east/adapters/torch/batchnorm.hpp>
#include <east/adapters/torch/resnet.hpp>
#include <east/adapters/torch/sparsifier.hpp>
#include <vector>

namespace ta = east::torch_adapter;

namespace {

bool same_bits(const torch::Tensor& a, const torch::Tensor& b) {
  return a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() &&
         std::memcmp(a.contiguous().data_ptr(), b.contiguous().data_ptr(), a.numel() * a.element_size()) == 0;
}

torch::Tensor images(int seed, long n = 4, long c = 3) {
  torch::manual_seed(seed);
  return torch::randn({n, c, 5, 5}) * 2 + 0.5;
}

}  // namespace

TEST_CASE("deferred BatchNorm statistics: same output, buffers untouched until applied", "[batchnorm]") {
  ta::BatchNormReLU2d now(3), later(3);
  now->train(), later->train();
  later->set_defer_running_stats(true);
  const auto x1 = images(1), x2 = images(2);
  CHECK(same_bits(now(x1), later(x1)));
  CHECK(same_bits(now(x2, x1), later(x2, x1)));  // with a residual too
  CHECK(later->recorded_batches() == 2);
  CHECK(later->running_mean.eq(0).all().item<bool>());
  CHECK(later->running_var.eq(1).all().item<bool>());
  CHECK(later->num_batches_tracked.item<long>() == 0);
  later->eval();
  later(x1);  // eval forwards record nothing
  later->train();
  CHECK(later->recorded_batches() == 2);

  std::vector<float> stats;
  later->take_recorded_statistics(stats);
  REQUIRE(stats.size() == 2 * 2 * 3);
  CHECK(later->recorded_batches() == 0);
  // The recorded values are the batches' mean and unbiased variance ...
  const auto mean1 = x1.mean({0, 2, 3}), var1 = x1.var({0, 2, 3}, /*unbiased=*/true);
  for (int c = 0; c < 3; ++c) {
    CHECK(stats[c] == Approx(mean1[c].item<float>()).epsilon(1e-5));
    CHECK(stats[3 + c] == Approx(var1[c].item<float>()).epsilon(1e-5));
  }
  // ... and applying them is the module's update, in double, from the recorded floats.
  later->apply_running_statistics(stats.data());
  later->apply_running_statistics(stats.data() + 6);
  CHECK(later->num_batches_tracked.item<long>() == 2);
  for (int c = 0; c < 3; ++c) {
    double m = 0, v = 1;
    for (int b = 0; b < 2; ++b) {
      m = static_cast<float>(0.9 * m + 0.1 * static_cast<double>(stats[6 * b + c]));
      v = static_cast<float>(0.9 * v + 0.1 * static_cast<double>(stats[6 * b + 3 + c]));
    }
    CHECK(later->running_mean[c].item<float>() == static_cast<float>(m));
    CHECK(later->running_var[c].item<float>() == static_cast<float>(v));
    // The immediate update blends the unrounded statistics: equal up to float rounding.
    CHECK(later->running_mean[c].item<float>() == Approx(now->running_mean[c].item<float>()).epsilon(1e-6));
    CHECK(later->running_var[c].item<float>() == Approx(now->running_var[c].item<float>()).epsilon(1e-6));
  }
  CHECK(now->num_batches_tracked.item<long>() == 2);

  // momentum None (a cumulative average): the same rule as the module's own.
  ta::BatchNormReLU2d avg(torch::nn::BatchNorm2dOptions(3).momentum(c10::nullopt));
  avg->train();
  avg->set_defer_running_stats(true);
  avg(x1), avg(x2);
  std::vector<float> s2;
  avg->take_recorded_statistics(s2);
  avg->apply_running_statistics(s2.data());
  avg->apply_running_statistics(s2.data() + 6);
  for (int c = 0; c < 3; ++c) {
    const double m1 = static_cast<float>(s2[c]);  // 1/1: the first batch's
    CHECK(avg->running_mean[c].item<float>() ==
          static_cast<float>(0.5 * m1 + 0.5 * static_cast<double>(s2[6 + c])));
  }
}

namespace {
struct TwoBnImpl : torch::nn::Module {
  TwoBnImpl()
      : a(register_module("a", ta::BatchNormReLU2d(3, false))),
        b(register_module("b", ta::BatchNormReLU2d(3))) {}
  torch::Tensor forward(const torch::Tensor& x) { return b(a(x)); }
  ta::BatchNormReLU2d a, b;
};
TORCH_MODULE(TwoBn);
}  // namespace

TEST_CASE("deferred statistics of a model: batch-major layout, order matters, bad use refused",
          "[batchnorm]") {
  TwoBn model;
  model->train();
  CHECK(ta::batchnorms_with_running_stats(*model).size() == 2);
  CHECK(ta::running_statistics_size(*model) == 12);
  ta::set_defer_running_stats(*model, true);
  const auto x1 = images(3), x2 = images(4);
  model->forward(x1), model->forward(x2);
  // One batch too many asked for: refused, nothing taken.
  CHECK_THROWS_WITH(
      ta::take_running_statistics(*model, 3),
      Catch::Contains("take_running_statistics()") && Catch::Contains("recorded 2 batches (valid: 3"));
  const auto stats = ta::take_running_statistics(*model, 2);
  REQUIRE(stats.size() == 24);
  // Batch 0: module 0 (mean, var of x1), module 1; then batch 1.
  CHECK(stats[0] == Approx(x1.mean({0, 2, 3})[0].item<float>()).epsilon(1e-5));
  CHECK(stats[12] == Approx(x2.mean({0, 2, 3})[0].item<float>()).epsilon(1e-5));

  // Applied in the recorded order on a fresh copy: what the immediate updates give, up to rounding.
  TwoBn a, b, ref;
  ref->train();
  ref->forward(x1), ref->forward(x2);
  ta::apply_running_statistics(*a, stats.data(), 2);
  std::vector<float> swapped(stats.begin() + 12, stats.end());
  swapped.insert(swapped.end(), stats.begin(), stats.begin() + 12);
  ta::apply_running_statistics(*b, swapped.data(), 2);
  const auto rm = [](TwoBn& s, int i) { return i == 0 ? s->a->running_mean : s->b->running_mean; };
  for (int i = 0; i < 2; ++i) {
    CHECK(torch::allclose(rm(a, i), rm(ref, i), 1e-6, 1e-7));
    CHECK_FALSE(same_bits(rm(a, i), rm(b, i)));  // the order of batches changes the result
  }

  ta::BatchNormReLU2d untracked(torch::nn::BatchNorm2dOptions(3).track_running_stats(false));
  CHECK_THROWS_WITH(untracked->set_defer_running_stats(true),
                    Catch::Contains("track_running_stats is false"));
  CHECK_FALSE(untracked->defers_running_stats());
}

namespace {

// One east::nn::Conv2d used twice per forward (the second use through SharedConv2d, as EAST's
// residual weight sharing does), then a dense head: its compact dense gradient at an update sums
// two captures per backward pass.
struct TwiceImpl : torch::nn::Module {
  TwiceImpl()
      : conv(register_module("conv",
                             east::nn::Conv2d(torch::nn::Conv2dOptions(4, 4, 3).padding(1).bias(false)))),
        again(register_module("again", ta::SharedConv2d(conv, 0.7))),
        head(register_module("head", torch::nn::Linear(4 * 6 * 6, 3))) {}
  torch::Tensor forward(const torch::Tensor& x) {
    auto h = torch::relu(conv->forward(x));
    h = torch::relu(again->forward(h));
    return head->forward(h.flatten(1));
  }
  east::nn::Conv2d conv;
  ta::SharedConv2d again;
  torch::nn::Linear head;
};
TORCH_MODULE(Twice);

std::pair<torch::Tensor, torch::Tensor> micro_batch(int i) {
  torch::manual_seed(500 + i);
  return {torch::randn({5, 4, 6, 6}), torch::randint(0, 3, {5})};
}

// Trains to the first mask update; there, runs backward on the micro-batches `passes` and returns
// the dense gradient of "conv.weight" the reducer is handed.
torch::Tensor update_gradient(const std::vector<int>& passes) {
  torch::manual_seed(11);
  Twice net;
  torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  auto method = east::presets::rigl(0.3);
  method.updates = 2;
  ta::SparsifierOptions o;
  o.crossover = {2.0, 2.0};  // compact
  o.log = nullptr;
  ta::Sparsifier sp(*net, opt, method, 12, o);
  REQUIRE(sp.compact_layers() == 1);
  torch::Tensor seen;
  sp.set_gradient_reducer([&](float* d, std::size_t n) {
    if (n == 4 * 4 * 9 && !seen.defined()) seen = torch::from_blob(d, {static_cast<long>(n)}).clone();
  });
  for (int step = 0;; ++step) {
    REQUIRE(step < 12);
    const bool update = sp.is_update_step();
    opt.zero_grad();
    for (int k : update ? passes : std::vector<int>{0, 1}) {
      const auto [x, y] = micro_batch(2 * step + k);
      (torch::nn::functional::cross_entropy(net->forward(x), y) * 0.5).backward();
    }
    opt.step();
    sp.step();
    if (update) break;
  }
  REQUIRE(seen.defined());
  return seen;
}

}  // namespace

TEST_CASE("a compact layer's dense gradient at an update: each backward pass summed first", "[sparsifier]") {
  // Two micro-batches in one process == what two ranks (one pass each) hold, added.
  const auto both = update_gradient({0, 1});
  const auto first = update_gradient({0}), second = update_gradient({1});
  CHECK(same_bits(both, first + second));
  CHECK_FALSE(same_bits(both, first));
  CHECK(first.abs().sum().item<double>() > 0);
}
