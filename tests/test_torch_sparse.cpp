// libtorch on east's sparse kernels: east::nn::Conv2d / Linear bound by a Sparsifier against
// torch's dense ops with the mask applied, the ResNet (with and without weight sharing) on
// compact weights in lockstep with the same model on masked dense weights, and the reference
// trainer with sparse kernels against the same run on masked dense kernels.
#include "../examples/trainer/trainer.hpp"
// glog (through c10) defines CHECK; Catch2 must own it.
#undef CHECK
#include "idx_files.hpp"
#include "torch_helpers.hpp"
#include <catch2/catch.hpp>
#include <cmath>
#include <string>
#include <vector>

namespace et = east_trainer;
namespace ta = east::torch_adapter;

namespace {

torch::Tensor mask_tensor(const east::BitMask& m, at::IntArrayRef shape) {
  auto t = torch::zeros({static_cast<long>(m.size())});
  m.for_each_active([&](std::size_t i) { t[static_cast<long>(i)] = 1.0f; });
  return t.view(shape);
}

// Largest |a - b| relative to the largest |b| (1 when b is all zero and a is not).
double rel_diff(const torch::Tensor& a, const torch::Tensor& b) {
  const double scale = b.abs().max().item<double>();
  const double d = (a - b).abs().max().item<double>();
  return scale > 0 ? d / scale : d;
}

using east_test::all_compact;

}  // namespace

TEST_CASE("compact Conv2d forward and gradients equal torch's conv2d with the mask applied", "[torch][sparse]") {
  struct Case {
    long n, cin, cout, h, k, stride, pad;
    double density;
    bool bias;
  };
  for (const Case& c : {Case{2, 8, 12, 9, 3, 1, 1, 0.3, false}, Case{3, 16, 8, 10, 3, 2, 1, 0.05, true},
                       Case{2, 12, 24, 8, 1, 2, 0, 0.2, false}, Case{4, 32, 32, 4, 3, 1, 1, 0.01, true},
                       Case{2, 6, 5, 7, 5, 1, 2, 0.1, true}}) {
    torch::manual_seed(3);
    east::nn::Conv2d conv(torch::nn::Conv2dOptions(c.cin, c.cout, c.k).stride(c.stride).padding(c.pad).bias(c.bias));
    torch::optim::SGD opt(conv->parameters(), torch::optim::SGDOptions(0.1));
    ta::Sparsifier sp(*conv, opt, east::presets::static_mask(c.density), 10, all_compact());
    REQUIRE(sp.compact_layers() == 1);
    const auto& mask = sp.controller().masks()[0];
    sp.controller().sync_dense_views();
    const auto wm = (conv->weight * mask_tensor(mask, conv->weight.sizes())).detach();
    auto x1 = torch::randn({c.n, c.cin, c.h, c.h}).requires_grad_(true);
    auto x2 = x1.detach().clone().requires_grad_(true);
    auto wd = wm.clone().requires_grad_(true);
    const auto y1 = conv->forward(x1);
    const auto y2 = torch::conv2d(x2, wd, c.bias ? conv->bias.detach() : torch::Tensor(), c.stride, c.pad);
    INFO("case k " << c.k << " stride " << c.stride << " density " << c.density);
    CHECK(rel_diff(y1, y2) < 1e-5);
    const auto dy = torch::randn_like(y2);
    y1.backward(dy);
    y2.backward(dy);
    CHECK(rel_diff(x1.grad(), x2.grad()) < 1e-5);
    // The compact gradient is the dense one at the active positions.
    const torch::Tensor v = conv->named_parameters(false)["compact_values"];
    auto gd = torch::zeros({wm.numel()});
    auto gv = v.grad().contiguous();
    mask.for_each_active([&, j = 0L](std::size_t i) mutable { gd[static_cast<long>(i)] = gv[j++]; });
    CHECK(rel_diff(gd.view(wm.sizes()), wd.grad() * mask_tensor(mask, wm.sizes())) < 1e-5);
    CHECK(!conv->weight.grad().defined());  // the stale dense weight takes no part
  }
}

TEST_CASE("a GradientJoin sums a tensor's gradients in a compact convolution's input-gradient pass",
          "[torch][sparse]") {
  // A residual block's two uses of x: y = BN(conv(x), residual x) (the BN parks dL/dresidual, the
  // convolution adds its input gradient into it) and y = conv_a(x) + conv_b(x) (a projection
  // shortcut: whichever backward runs first parks, the other adds). x's gradient equals autograd's
  // own sum; a dense (not compact) convolution does not join, and then its gradient goes to
  // autograd as usual.
  auto compact_conv = [](bool compact, long k) {
    east::nn::Conv2d conv(torch::nn::Conv2dOptions(8, 8, k).padding(k / 2).bias(false));
    auto opt = std::make_shared<torch::optim::SGD>(conv->parameters(), torch::optim::SGDOptions(0.1));
    auto so = all_compact();
    if (!compact) so.crossover = {0.0, 0.0};
    auto sp = std::make_shared<ta::Sparsifier>(*conv, *opt, east::presets::static_mask(0.2), 10, so);
    REQUIRE(sp->compact_layers() == (compact ? 1u : 0u));
    return std::make_tuple(conv, opt, sp);
  };
  const auto x0 = torch::randn({3, 8, 6, 6}), dy = torch::randn({3, 8, 6, 6});
  for (const bool compact : {true, false}) {
    INFO("compact " << compact);
    torch::manual_seed(5);
    auto [conv, opt, sp] = compact_conv(compact, 3);
    ta::BatchNormReLU2d bn(8);
    auto x1 = x0.clone().requires_grad_(true), x2 = x0.clone().requires_grad_(true);
    bn->forward(conv->forward(x1), x1).backward(dy);
    const auto join = c10::make_intrusive<ta::GradientJoin>();
    bn->forward(conv->forward_joined(x2, join), x2, join).backward(dy);
    CHECK(join->convolutions == (compact ? 1 : 0));
    CHECK(join->uses == (compact ? 2 : 0));  // the BN joins only after a compact convolution
    CHECK(join->arrived == 0);
    CHECK(!join->pending.defined());
    CHECK(rel_diff(x2.grad(), x1.grad()) < 1e-6);
  }
  {  // The BN alone, with a convolution to come: its residual gradient waits in the join, not in x.
    ta::BatchNormReLU2d bn(8);
    const auto held = c10::make_intrusive<ta::GradientJoin>();
    held->convolutions = held->uses = 1;
    auto h = torch::randn({3, 8, 6, 6}).requires_grad_(true), x3 = x0.clone().requires_grad_(true);
    bn->forward(h, x3, held).backward(dy);
    REQUIRE(held->pending.defined());
    CHECK(held->arrived == 1);
    CHECK(!x3.grad().defined());
    CHECK(held->pending.abs().sum().item<double>() > 0);
  }
  for (const bool b_compact : {true, false}) {  // two convolutions of x, both or only one compact
    INFO("second convolution compact " << b_compact);
    torch::manual_seed(6);
    auto [ca, oa, sa] = compact_conv(true, 3);
    auto [cb, ob, sb] = compact_conv(b_compact, 1);
    auto x1 = x0.clone().requires_grad_(true), x2 = x0.clone().requires_grad_(true);
    (ca->forward(x1) + cb->forward(x1)).backward(dy);
    const auto join = c10::make_intrusive<ta::GradientJoin>();
    const auto y = ca->forward_joined(x2, join) + cb->forward_joined(x2, join);
    y.backward(dy, /*retain_graph=*/true);  // (the third argument would be create_graph)
    CHECK(join->uses == (b_compact ? 2 : 1));
    CHECK(rel_diff(x2.grad(), x1.grad()) < 1e-6);
    y.backward(dy);  // the same graph again: the join starts over
    CHECK(join->arrived == 0);
    CHECK(!join->pending.defined());
    CHECK(rel_diff(x2.grad(), 2 * x1.grad()) < 1e-6);
  }
}

TEST_CASE("compact Linear forward and gradients equal torch's linear with the mask applied", "[torch][sparse]") {
  for (const bool bias : {true, false}) {
    torch::manual_seed(5);
    east::nn::Linear lin(torch::nn::LinearOptions(40, 24).bias(bias));
    torch::optim::SGD opt(lin->parameters(), torch::optim::SGDOptions(0.1));
    ta::Sparsifier sp(*lin, opt, east::presets::static_mask(0.1), 10, all_compact());
    const auto& mask = sp.controller().masks()[0];
    sp.controller().sync_dense_views();
    const auto wm = (lin->weight * mask_tensor(mask, lin->weight.sizes())).detach();
    auto x1 = torch::randn({3, 5, 40}).requires_grad_(true);  // leading dimensions, as torch allows
    auto x2 = x1.detach().clone().requires_grad_(true);
    const auto y1 = lin->forward(x1);
    const auto y2 = torch::linear(x2, wm, bias ? lin->bias.detach() : torch::Tensor());
    CHECK(y1.sizes() == y2.sizes());
    CHECK(rel_diff(y1, y2) < 1e-5);
    const auto dy = torch::randn_like(y2);
    y1.backward(dy), y2.backward(dy);
    CHECK(rel_diff(x1.grad(), x2.grad()) < 1e-5);
    if (bias) CHECK(rel_diff(lin->bias.grad(), dy.sum(std::vector<int64_t>{0, 1})) < 1e-5);
  }
}

TEST_CASE("a ResNet on compact weights trains like the masked dense one, with and without sharing",
          "[torch][sparse]") {
  for (bool share : {false, true}) {
    INFO("share " << share);
    ta::ResNetOptions o;
    o.depth = 18;
    o.width = 0.125;
    o.in_channels = 1;
    o.share = share;
    torch::manual_seed(7);
    ta::ResNet dense_model(o);
    torch::manual_seed(7);
    ta::ResNet sparse_model(o);
    auto make_opt = [](ta::ResNet& m) {
      return torch::optim::SGD(m->parameters(),
                               torch::optim::SGDOptions(0.05).momentum(0.9).nesterov(true).weight_decay(5e-4));
    };
    auto od = make_opt(dense_model), os = make_opt(sparse_model);
    auto method = east::presets::rigl(0.1);
    method.update_interval = 2;
    method.update_end = 1.0;
    auto dense_opts = all_compact();
    dense_opts.crossover = {0.0, 0.0};
    ta::Sparsifier sd(*dense_model, od, method, 6, dense_opts), ss(*sparse_model, os, method, 6, all_compact());
    CHECK(ss.compact_layers() == ss.layers());  // every conv and the fc
    CHECK(sd.compact_layers() == 0);
    for (std::int64_t step = 0; step < 6; ++step) {
      torch::manual_seed(100 + step);
      const auto x = torch::randn({8, 1, 12, 12});
      const auto y = torch::randint(0, 10, {8});
      od.zero_grad(), os.zero_grad();
      auto ld = torch::nn::functional::cross_entropy(dense_model->forward(x), y);
      auto ls = torch::nn::functional::cross_entropy(sparse_model->forward(x), y);
      CHECK(std::abs(ld.item<double>() - ls.item<double>()) < 1e-4 * std::abs(ld.item<double>()));
      ld.backward(), ls.backward();
      const double nd = torch::nn::utils::clip_grad_norm_(dense_model->parameters(), 1.0);
      const double ns = torch::nn::utils::clip_grad_norm_(sparse_model->parameters(), 1.0);
      CHECK(std::abs(nd - ns) < 1e-4 * nd);  // the same norm: inactive gradients take part in neither
      od.step(), os.step();
      sd.step(), ss.step();
      REQUIRE(sd.controller().digest() == ss.controller().digest());  // the same regrowth decisions
    }
    CHECK(ss.controller().updates() == 2);
    ss.controller().sync_dense_views();
    for (const auto& p : dense_model->named_parameters()) {
      if (p.key().find("compact_values") != std::string::npos) continue;
      const torch::Tensor q = sparse_model->named_parameters()[p.key()];
      INFO(p.key());
      CHECK(rel_diff(q, p.value()) < 1e-3);
    }
  }
}

TEST_CASE("the trainer on sparse kernels follows the masked-dense run", "[torch][sparse][trainer]") {
  const std::string data = "east_test_torch_sparse_data";
  std::system(("rm -rf " + data + " && mkdir -p " + data).c_str());
  east_test::write_idx_dataset(data, 200, 64, 16, false);
  for (const std::string method : {"rigl", "east"}) {
    et::Config c;
    c.method = method;
    c.sparsity = 0.95;
    c.depth = 18;
    c.width = 0.125;
    c.epochs = 2;
    c.batch = 16;
    c.lr = 0.05;
    c.threads = 1;
    c.updates = 3;
    c.quiet = true;
    c.augment = false;
    c.train_subset = 160;
    c.test_subset = 64;
    c.data_dir = data;
    c.dataset = "fashion-mnist";
    auto d = c, s = c;
    d.kernels = "dense";
    s.kernels = "sparse";
    const auto rd = et::run(d), rs = et::run(s);
    INFO(method);
    REQUIRE(rd.loss_history.size() == rs.loss_history.size());
    REQUIRE(rd.loss_history.size() >= 16);
    CHECK(rs.sparse_kernel_layers > 0);
    CHECK(rd.sparse_kernel_layers == 0);
    CHECK(rd.mask_updates == rs.mask_updates);
    CHECK(rd.mask_updates >= 2);
    // The first epoch (9 steps, 2 mask updates) agrees to rounding. Later, a pair of weights
    // (or gradients) equal to ~1e-7 may be ordered differently by magnitude pruning (or
    // regrowth) in the two runs, one discrete decision that then moves the trajectories apart
    // slowly: there only closeness is required.
    for (std::size_t i = 0; i < rd.loss_history.size(); ++i) {
      INFO("step " << i << ": dense " << rd.loss_history[i] << ", sparse " << rs.loss_history[i]);
      const double tol = i < 9 ? 1e-5 : 1e-2;
      CHECK(std::abs(rd.loss_history[i] - rs.loss_history[i]) < tol * rd.loss_history[i]);
    }
    for (std::size_t l = 0; l < rd.layers.size(); ++l) CHECK(rd.layers[l].nnz == rs.layers[l].nnz);
    CHECK(std::abs(rd.test_loss - rs.test_loss) < 1e-2 * rd.test_loss);
  }
}
