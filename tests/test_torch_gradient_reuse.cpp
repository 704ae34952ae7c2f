// Backwards that write their input gradient over their output gradient (adapters/torch/
// gradient_reuse.hpp): BatchNormReLU2d and compact Conv2d do it exactly when only autograd holds
// the gradient — the same bits as with reuse off, never over a gradient a hook holds, and a second
// backward through a retained graph gives the same gradients again.
#include <east/adapters/torch.hpp>
// glog (through c10) defines CHECK; Catch2 must own it.
#undef CHECK
#include <catch2/catch.hpp>
#include "torch_helpers.hpp"

#include <vector>

namespace ta = east::torch_adapter;

namespace {

// Hands down a fresh gradient (a copy only autograd holds) and records where it lies.
struct Fresh : torch::autograd::Function<Fresh> {
  static void*& handed() {
    static void* p = nullptr;
    return p;
  }
  static at::Tensor forward(torch::autograd::AutogradContext*, const at::Tensor& x) { return x.clone(); }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list g) {
    auto f = g[0].clone();
    handed() = f.data_ptr();
    return {f};
  }
};
// Passes its gradient through and records where it lies.
struct Seen : torch::autograd::Function<Seen> {
  static void*& seen() {
    static void* p = nullptr;
    return p;
  }
  static at::Tensor forward(torch::autograd::AutogradContext*, const at::Tensor& x) { return x.clone(); }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list g) {
    seen() = g[0].data_ptr();
    return {g[0]};
  }
};

struct ReuseGuard {
  ~ReuseGuard() { ta::gradient_reuse() = true; }
};

using east_test::all_compact;

// x → Seen → layer → Fresh → Σ (·w): the gradients of x and of the parameters, and whether the
// layer's input gradient lies where its output gradient was (written in place).
struct Pass {
  std::vector<at::Tensor> grads;
  bool in_place = false;
};
template <class Layer>
Pass run(Layer&& layer, const at::Tensor& x0, const std::vector<at::Tensor>& params, bool hold_gradient,
         int backwards = 1) {
  auto x = x0.detach().clone().requires_grad_(true);
  for (const auto& p : params) p.mutable_grad() = at::Tensor();
  const auto y = layer(Seen::apply(x));
  at::Tensor held, held_copy;
  if (hold_gradient)  // a hook that keeps the layer's output gradient: it must stay as it was
    y.register_hook([&](const at::Tensor& g) {
      held = g;
      held_copy = g.clone();
    });
  torch::manual_seed(5);
  const auto w = torch::randn_like(y);
  const auto loss = (Fresh::apply(y) * w).sum();
  for (int i = 0; i < backwards; ++i) loss.backward({}, /*retain_graph=*/i + 1 < backwards);
  if (hold_gradient) {
    REQUIRE(held.defined());
    CHECK(torch::equal(held, held_copy));
  }
  Pass p;
  p.in_place = Seen::seen() == Fresh::handed();
  p.grads.push_back(x.grad().clone());
  for (const auto& q : params) p.grads.push_back(q.grad().defined() ? q.grad().clone() : at::Tensor());
  return p;
}

void check_same(const Pass& a, const Pass& b) {
  REQUIRE(a.grads.size() == b.grads.size());
  for (std::size_t i = 0; i < a.grads.size(); ++i) {
    INFO("gradient " << i);
    REQUIRE(a.grads[i].defined() == b.grads[i].defined());
    if (a.grads[i].defined()) CHECK(torch::equal(a.grads[i], b.grads[i]));
  }
}

}  // namespace

TEST_CASE("the probe finds the references autograd holds on a backward's gradient", "[torch][reuse]") {
  const long refs = ta::detail::autograd_gradient_references();
  CHECK(refs >= 1);
  CHECK(refs <= 4);
}

TEST_CASE("BatchNormReLU2d writes its input gradient in place only when nothing else holds it",
          "[torch][reuse]") {
  ReuseGuard guard;
  for (bool residual : {false, true}) {
    INFO("residual " << residual);
    torch::manual_seed(1);
    ta::BatchNormReLU2d bn(torch::nn::BatchNorm2dOptions(8));
    const auto x = torch::randn({4, 8, 6, 6});
    const auto r = torch::randn({4, 8, 6, 6}).requires_grad_(true);
    auto layer = [&](const at::Tensor& in) { return residual ? bn->forward(in, r) : bn->forward(in); };
    std::vector<at::Tensor> params{bn->weight, bn->bias};
    if (residual) params.push_back(r);
    const Pass reused = run(layer, x, params, false);
    CHECK(reused.in_place);
    const Pass held = run(layer, x, params, true);
    CHECK_FALSE(held.in_place);
    ta::gradient_reuse() = false;
    const Pass fresh = run(layer, x, params, false);
    CHECK_FALSE(fresh.in_place);
    ta::gradient_reuse() = true;
    check_same(reused, fresh);
    check_same(held, fresh);
    // A retained graph's second backward reads the saved tensors, which reuse never touches.
    const Pass twice = run(layer, x, params, false, 2);
    for (std::size_t i = 0; i < twice.grads.size(); ++i) CHECK(torch::equal(twice.grads[i], 2 * fresh.grads[i]));
  }
}

TEST_CASE("a compact Conv2d writes its input gradient over its output gradient where the kernels allow",
          "[torch][reuse]") {
  ReuseGuard guard;
  torch::manual_seed(2);
  east::nn::Conv2d conv(torch::nn::Conv2dOptions(16, 16, 3).padding(1).bias(false));
  torch::optim::SGD opt(conv->parameters(), torch::optim::SGDOptions(0.1));
  ta::Sparsifier sp(*conv, opt, east::presets::static_mask(0.2), 10, all_compact());
  REQUIRE(sp.compact_layers() == 1);
  const torch::Tensor values = conv->named_parameters(false)["compact_values"];
  const auto x = torch::randn({3, 16, 12, 12});  // 144-value planes: the fused backward
  auto layer = [&](const at::Tensor& in) { return conv->forward(in); };
  const Pass reused = run(layer, x, {values}, false);
  const bool kernels = east::sparse::conv2d_backward_in_place_ok({3, 16, 12, 12, 16, 3, 3, 1, 1, 1, 1});
  CHECK(reused.in_place == kernels);  // (AVX-512 only)
  const Pass held = run(layer, x, {values}, true);
  CHECK_FALSE(held.in_place);
  ta::gradient_reuse() = false;
  const Pass fresh = run(layer, x, {values}, false);
  CHECK_FALSE(fresh.in_place);
  ta::gradient_reuse() = true;
  check_same(reused, fresh);
  check_same(held, fresh);
  const Pass twice = run(layer, x, {values}, false, 2);
  for (std::size_t i = 0; i < twice.grads.size(); ++i) CHECK(torch::equal(twice.grads[i], 2 * fresh.grads[i]));
}

TEST_CASE("a compact ResNet trains to the same bits with and without gradient reuse, updates included",
          "[torch][reuse]") {
  ReuseGuard guard;
  std::vector<std::vector<at::Tensor>> params;
  for (bool reuse : {true, false}) {
    ta::gradient_reuse() = reuse;
    ta::ResNetOptions o;
    o.depth = 18;
    o.width = 0.125;
    o.in_channels = 1;
    torch::manual_seed(7);
    ta::ResNet model(o);
    torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
    auto method = east::presets::rigl(0.1);
    method.update_interval = 2;
    method.update_end = 1.0;
    ta::Sparsifier sp(*model, opt, method, 6, all_compact());
    for (std::int64_t step = 0; step < 6; ++step) {
      torch::manual_seed(100 + step);
      const auto x = torch::randn({8, 1, 12, 12});  // 12×12 planes: in place in the first stage
      const auto y = torch::randint(0, 10, {8});
      opt.zero_grad();
      torch::nn::functional::cross_entropy(model->forward(x), y).backward();
      opt.step();
      sp.step();
    }
    CHECK(sp.controller().updates() == 2);
    sp.controller().sync_dense_views();
    params.emplace_back();
    for (const auto& p : model->parameters()) params.back().push_back(p.detach().clone());
  }
  REQUIRE(params[0].size() == params[1].size());
  for (std::size_t i = 0; i < params[0].size(); ++i) {
    INFO("parameter " << i);
    CHECK(torch::equal(params[0][i], params[1][i]));
  }
}
