// libtorch adapter: registration, masks vs the core, DyReLU-B gradients, weight sharing, training steps.
#include <east/adapters/torch.hpp>
// glog (through c10) defines CHECK; Catch2 must own it.
#undef CHECK
#include <catch2/catch.hpp>
#include <vector>

namespace ta = east::torch_adapter;

namespace {

struct Small : torch::nn::Module {
  Small() {
    conv = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 8, 3).padding(1)));
    act = register_module("act", ta::DyReLUB(8));
    fc = register_module("fc", torch::nn::Linear(8 * 6 * 6, 5));
  }
  torch::Tensor forward(torch::Tensor x) { return fc(act(conv(x)).flatten(1)); }
  torch::nn::Conv2d conv{nullptr};
  ta::DyReLUB act{nullptr};
  torch::nn::Linear fc{nullptr};
};

std::vector<float> copy_of(const torch::Tensor& t) {
  auto c = t.contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

// Copies into the existing buffer: east holds pointers to it, so it must not be reallocated.
void fill_from(std::vector<float>& v, const torch::Tensor& t) {
  const auto c = copy_of(t);
  REQUIRE(c.size() == v.size());
  std::copy(c.begin(), c.end(), v.begin());
}

}  // namespace

TEST_CASE("registration takes conv and linear weights, skips biases and DyReLU's hyper-network", "[torch]") {
  torch::manual_seed(1);
  Small m;
  auto params = ta::make_parameter_set(m);
  REQUIRE(params.size() == 2);
  CHECK(params[0].name == "conv.weight");
  CHECK(params[1].name == "fc.weight");
  CHECK(params[0].shape == east::Shape{8, 3, 3, 3});
  CHECK(params[0].weight == m.conv->weight.data_ptr<float>());
  REQUIRE(m.conv->weight.grad().defined());
  CHECK(params[0].grad == m.conv->weight.grad().data_ptr<float>());

  ta::RegisterOptions only_conv;
  only_conv.include = [](const std::string& n) { return n.rfind("conv", 0) == 0; };
  CHECK(ta::make_parameter_set(m, only_conv).size() == 1);
  ta::RegisterOptions none;
  none.include = [](const std::string&) { return false; };
  CHECK_THROWS_AS(ta::make_parameter_set(m, none), east::InvalidArgument);

  auto d = torch::nn::Linear(4, 4);
  d->to(torch::kDouble);
  CHECK_THROWS_WITH(ta::make_parameter_set(*d), Catch::Contains("float32"));
}

TEST_CASE("the adapter's masks equal the core's decisions on the same inputs", "[torch]") {
  torch::manual_seed(2);
  Small m;
  ta::Sgd sgd(m.named_parameters());
  auto tp = ta::make_parameter_set(m);
  sgd.register_state(tp);
  // Plain buffers with the same values.
  std::vector<float> cw = copy_of(m.conv->weight), fw = copy_of(m.fc->weight);
  std::vector<float> cg(cw.size()), fg(fw.size());
  east::ParameterSet raw;
  raw.add("conv.weight", cw.data(), {8, 3, 3, 3}, cg.data());
  raw.add("fc.weight", fw.data(), {5, 288}, fg.data());
  east::DstConfig cfg{0.05, 2, 100, 0.3, 0.0};
  auto a = east::make_rigl(tp, cfg, east::ControllerOptions{7});
  auto b = east::make_rigl(raw, cfg, east::ControllerOptions{7});
  for (std::size_t l = 0; l < 2; ++l) CHECK(a.masks()[l].digest() == b.masks()[l].digest());
  CHECK(copy_of(m.conv->weight) == cw);  // both zeroed the same inactive weights

  auto x = torch::randn({4, 3, 6, 6});
  auto y = torch::tensor({0, 1, 2, 3}, torch::kInt64);
  for (std::int64_t step = 0; step < 5; ++step) {
    sgd.zero_grad();
    torch::nn::functional::cross_entropy(m.forward(x), y).backward();
    fill_from(cg, m.conv->weight.grad());
    fill_from(fg, m.fc->weight.grad());
    a.before_optimizer_step(step);
    b.before_optimizer_step(step);
    CHECK(copy_of(m.conv->weight.grad()) == cg);
    sgd.step(0.1);
    fill_from(cw, m.conv->weight);
    fill_from(fw, m.fc->weight);
    a.after_optimizer_step(step);
    b.after_optimizer_step(step);
    for (std::size_t l = 0; l < 2; ++l) CHECK(a.masks()[l].digest() == b.masks()[l].digest());
    CHECK(copy_of(m.conv->weight) == cw);
    CHECK(copy_of(m.fc->weight) == fw);
  }
  CHECK(a.updates() == 2);
  // Momentum is masked like the weight.
  const auto mom = copy_of(sgd.momentum_buffers()[0]);
  for (std::size_t i = 0; i < mom.size(); ++i)
    if (!a.masks()[0].test(i)) REQUIRE(mom[i] == 0.0f);
}

TEST_CASE("DyReLU-B: both backends match an independent composition of torch ops, values and gradients",
          "[torch]") {
  torch::manual_seed(3);
  const int64_t B = 3, C = 8, H = 5, W = 4;
  for (double beta : {1.0, 0.4, 0.0}) {
    for (auto backend : {ta::DyReLUBackend::torch_ops, ta::DyReLUBackend::kernels}) {
      ta::DyReLUB m(C, 4, backend);
      m->set_beta(beta);
      auto x = torch::randn({B, C, H, W}).requires_grad_(true);
      auto g = torch::randn({B, C, H, W});
      auto y = m->forward(x);
      y.backward(g);

      // Reference in double, written out per coefficient.
      auto xd = x.detach().to(torch::kDouble).requires_grad_(true);
      auto w1 = m->fc1->weight.detach().to(torch::kDouble).requires_grad_(true);
      auto b1 = m->fc1->bias.detach().to(torch::kDouble).requires_grad_(true);
      auto w2 = m->fc2->weight.detach().to(torch::kDouble).requires_grad_(true);
      auto b2 = m->fc2->bias.detach().to(torch::kDouble).requires_grad_(true);
      auto theta = xd.sum({2, 3}) / static_cast<double>(H * W);
      auto z = torch::matmul(torch::clamp_min(torch::matmul(theta, w1.t()) + b1, 0.0), w2.t()) + b2;
      auto d = (torch::sigmoid(z) * 2 - 1).reshape({B, C, 4});
      auto a1 = (1 + beta * d.select(2, 0)).reshape({B, C, 1, 1});
      auto a2 = (beta * d.select(2, 1)).reshape({B, C, 1, 1});
      auto c1 = (0.5 * beta * d.select(2, 2)).reshape({B, C, 1, 1});
      auto c2 = (0.5 * beta * d.select(2, 3)).reshape({B, C, 1, 1});
      auto yr = torch::maximum(a1 * xd + c1, a2 * xd + c2);
      yr.backward(g.to(torch::kDouble));

      INFO("beta " << beta << " backend " << ta::to_string(backend));
      CHECK(torch::allclose(y.to(torch::kDouble), yr, 1e-5, 1e-5));
      CHECK(torch::allclose(x.grad().to(torch::kDouble), xd.grad(), 1e-4, 1e-5));
      if (beta > 0) {
        CHECK(torch::allclose(m->fc1->weight.grad().to(torch::kDouble), w1.grad(), 1e-4, 1e-5));
        CHECK(torch::allclose(m->fc1->bias.grad().to(torch::kDouble), b1.grad(), 1e-4, 1e-5));
        CHECK(torch::allclose(m->fc2->weight.grad().to(torch::kDouble), w2.grad(), 1e-4, 1e-5));
        CHECK(torch::allclose(m->fc2->bias.grad().to(torch::kDouble), b2.grad(), 1e-4, 1e-5));
      } else {
        CHECK(!m->fc1->weight.grad().defined());
      }
    }
  }
}

TEST_CASE("DyReLU-B frozen: no hyper-network gradients, same input gradient", "[torch]") {
  torch::manual_seed(4);
  for (auto backend : {ta::DyReLUBackend::torch_ops, ta::DyReLUBackend::kernels}) {
    ta::DyReLUB m(6, 4, backend);
    auto x = torch::randn({2, 6, 3, 3}).requires_grad_(true);
    m->forward(x).sum().backward();
    const auto free_dx = x.grad().clone();
    x.mutable_grad().zero_();
    m->zero_grad();
    m->set_frozen(true);
    m->forward(x).sum().backward();
    CHECK(torch::allclose(x.grad(), free_dx, 1e-5, 1e-6));
    CHECK((!m->fc1->weight.grad().defined() || m->fc1->weight.grad().abs().sum().item<double>() == 0.0));
  }
}

TEST_CASE("weight-shared ResNet: uses counted, gradients of all uses add up on the stored tensor",
          "[torch]") {
  torch::manual_seed(5);
  ta::ResNetOptions o;
  o.depth = 34;
  o.width = 0.0625;
  o.in_channels = 1;
  o.share = true;
  ta::ResNet net(o);
  auto params = ta::make_parameter_set(*net);
  CHECK(params.size() == 21);  // stem, 4 stages x 2 owning blocks x 2 convs, 3 shortcuts, fc
  CHECK(params.at("layer1.1.conv1.weight").uses == 2);  // blocks 1, 2 of 3
  CHECK(params.at("layer2.1.conv2.weight").uses == 3);  // blocks 1..3 of 4
  CHECK(params.at("layer3.1.conv1.weight").uses == 5);  // blocks 1..5 of 6
  CHECK(params.at("layer1.0.conv1.weight").uses == 1);
  ta::ResNetOptions u = o;
  u.share = false;
  ta::ResNet unshared(u);
  auto up = ta::make_parameter_set(*unshared);
  CHECK(up.size() == 37);
  CHECK(up.logical_size() == params.logical_size());  // same budget at the same sparsity

  // dW = Σ_i s_i dW_i: compare with an explicit functional composition.
  auto owner = ta::Conv2d(torch::nn::Conv2dOptions(3, 3, 3).padding(1).bias(false));
  ta::SharedConv2d s1(owner, 0.3), s2(owner, 0.7);
  auto x = torch::randn({2, 3, 5, 5});
  (owner(x) + s1(x) * 2 + s2(x)).sum().backward();
  auto w = owner->weight.detach().clone().requires_grad_(true);
  auto a = torch::tensor({0.3f}, torch::requires_grad()), b = torch::tensor({0.7f}, torch::requires_grad());
  (torch::conv2d(x, w, {}, 1, 1) + torch::conv2d(x, w * a, {}, 1, 1) * 2 + torch::conv2d(x, w * b, {}, 1, 1))
      .sum()
      .backward();
  CHECK(torch::allclose(owner->weight.grad(), w.grad(), 1e-5, 1e-5));
  CHECK(torch::allclose(s1->scale.grad(), a.grad(), 1e-4, 1e-5));
  CHECK(torch::allclose(s2->scale.grad(), b.grad(), 1e-4, 1e-5));
}

TEST_CASE("a few EAST training steps keep exact nonzero counts and zeros outside the masks", "[torch]") {
  torch::manual_seed(6);
  ta::ResNetOptions o;
  o.depth = 34;
  o.width = 0.125;
  o.in_channels = 1;
  o.share = true;
  o.dyrelu = true;
  o.backend = ta::DyReLUBackend::kernels;
  ta::ResNet net(o);
  ta::Sgd sgd(net->named_parameters());
  auto params = ta::make_parameter_set(*net);
  sgd.register_state(params);
  east::DstConfig cfg{0.01, 2, 12, 0.5, 0.005};
  east::CyclicDensity cyc;
  cyc.multiplier = 3;
  cyc.cycles = 2;
  cyc.length = 3;
  auto ctl = east::make_cyclic(params, cfg, cyc, east::ControllerOptions{11});
  const auto budget = east::nonzero_budget(params, 0.01);
  auto x = torch::randn({8, 1, 8, 8});
  auto y = torch::randint(0, 10, {8}, torch::kInt64);
  for (std::int64_t step = 0; step < 10; ++step) {
    sgd.zero_grad();
    torch::nn::functional::cross_entropy(net->forward(x), y).backward();
    ctl.before_optimizer_step(step);
    sgd.clip_grad_norm(1.0);
    sgd.step(0.05);
    ctl.after_optimizer_step(step);
    ta::check_views(*net, ctl.params());
    const auto expected = east::nonzero_budget(params, cyc.density(ctl.last_report().step >= 0 ? step : 0));
    (void)expected;
    if (step >= cyc.end()) CHECK(ctl.nonzeros() == budget);
    const auto named = net->named_parameters();
    for (std::size_t l = 0; l < ctl.params().size(); ++l) {
      const auto& v = ctl.params()[l];
      const auto w = copy_of(*named.find(v.name));
      std::size_t outside = 0;
      for (std::size_t i = 0; i < w.size(); ++i) outside += (!ctl.masks()[l].test(i) && w[i] != 0.0f);
      REQUIRE(outside == 0);
    }
  }
  CHECK(ctl.updates() >= 3);
  CHECK(ctl.nonzeros() == budget);
  CHECK(ctl.empty_layers().empty());
}

TEST_CASE("torch::optim::SGD works through seed_sgd_momentum", "[torch]") {
  torch::manual_seed(7);
  Small m;
  torch::optim::SGD opt(m.parameters(), torch::optim::SGDOptions(0.1).momentum(0.9).nesterov(true));
  auto params = ta::make_parameter_set(m);
  ta::seed_sgd_momentum(opt, m, params);
  CHECK(params.at("conv.weight").state.size() == 1);
  auto ctl = east::make_rigl(params, east::DstConfig{0.1, 3, 100, 0.3, 0.0}, east::ControllerOptions{1});
  auto x = torch::randn({4, 3, 6, 6});
  auto y = torch::tensor({0, 1, 2, 3}, torch::kInt64);
  for (std::int64_t step = 0; step < 4; ++step) {
    opt.zero_grad();
    torch::nn::functional::cross_entropy(m.forward(x), y).backward();
    ctl.before_optimizer_step(step);
    opt.step();
    ctl.after_optimizer_step(step);
  }
  ta::check_views(m, ctl.params());
  auto& st = static_cast<torch::optim::SGDParamState&>(
      *opt.state().at(c10::guts::to_string(m.conv->weight.unsafeGetTensorImpl())));
  CHECK(st.momentum_buffer().data_ptr<float>() == ctl.params().at("conv.weight").state[0]);
  const auto mom = copy_of(st.momentum_buffer());
  for (std::size_t i = 0; i < mom.size(); ++i)
    if (!ctl.masks()[0].test(i)) REQUIRE(mom[i] == 0.0f);
  // A gradient reset to None and reallocated is detected. The old tensor is kept alive so the new
  // one cannot land at the same address (there the view would still be valid, and no check can
  // tell: malloc may hand the freed block back, as it does in a fresh Debian root).
  const auto old_grad = m.conv->weight.grad();
  m.conv->weight.mutable_grad() = torch::Tensor();
  m.forward(x).sum().backward();
  REQUIRE(m.conv->weight.grad().data_ptr<float>() != old_grad.data_ptr<float>());
  CHECK_THROWS_AS(ta::check_views(m, ctl.params()), east::InvalidArgument);
}

TEST_CASE("state blobs restore a module and the optimizer exactly; corrupt ones are rejected", "[torch]") {
  torch::manual_seed(8);
  Small a, b;
  ta::Sgd sa(a.named_parameters()), sb(b.named_parameters());
  sa.momentum_buffers()[0].normal_();
  ta::StateWriter w;
  w.put_module(a);
  w.put_sgd(sa);
  const std::string blob = w.bytes();
  ta::StateReader r(blob);
  r.get_module(b);
  r.get_sgd(sb);
  CHECK(torch::equal(a.conv->weight, b.conv->weight));
  CHECK(torch::equal(sa.momentum_buffers()[0], sb.momentum_buffers()[0]));
  const std::string cut = blob.substr(0, blob.size() / 2);
  ta::StateReader bad(cut);
  CHECK_THROWS_AS((bad.get_module(b), bad.get_sgd(sb)), east::CorruptCheckpoint);
}

TEST_CASE("Sgd::set_group: a group's learning-rate scale and weight decay, by hand", "[torch]") {
  torch::manual_seed(3);
  Small m;
  ta::Sgd sgd(m.named_parameters(), ta::SgdOptions{0.9, 0.1, true});
  CHECK(sgd.set_group("act.", 0.5, 0.0) == 4);  // fc1/fc2 weight and bias
  CHECK_THROWS_WITH(sgd.set_group("act.", -1.0, 0.0), Catch::Contains("lr_scale -1"));
  CHECK_THROWS_WITH(sgd.set_group("act.", 1.0, -2.0), Catch::Contains("weight_decay -2"));
  const auto w_act = copy_of(m.act->fc2->weight), w_conv = copy_of(m.conv->weight);
  m.act->fc2->weight.mutable_grad().fill_(1.0f);
  m.conv->weight.mutable_grad().fill_(1.0f);
  sgd.step(0.2);
  // First Nesterov step: buf = g + wd w, w -= lr·scale·(1 + m)·buf.
  const auto a = copy_of(m.act->fc2->weight), c = copy_of(m.conv->weight);
  for (std::size_t i = 0; i < a.size(); ++i) REQUIRE(a[i] == Approx(w_act[i] - 0.2 * 0.5 * 1.9 * 1.0));
  for (std::size_t i = 0; i < c.size(); ++i)
    REQUIRE(c[i] == Approx(w_conv[i] - 0.2 * 1.9 * (1.0 + 0.1 * w_conv[i])));
}

TEST_CASE("resnet_connectivity: every layer use of a shared ResNet-34, cuts found and repaired", "[torch]") {
  ta::ResNetOptions o;
  o.depth = 34;
  o.width = 0.0625;
  o.in_channels = 1;
  o.share = true;
  ta::ResNet net(o);
  auto params = ta::make_parameter_set(*net);
  const auto g = ta::resnet_connectivity(*net);
  std::size_t layer_edges = 0, identities = 0;
  for (const auto& e : g->edges()) (e.layer.empty() ? identities : layer_edges)++;
  CHECK(layer_edges == 37);  // stem, 16 blocks x 2 convs, 3 projections, fc: every use
  CHECK(identities == 13);
  CHECK(params.size() == 21);  // stored tensors: shared blocks borrow
  for (const auto& e : g->edges())
    if (!e.layer.empty()) CHECK(params.find(e.layer) != east::ParameterSet::npos);
  std::vector<east::BitMask> full;
  for (const auto& l : params) full.emplace_back(l.size(), true);
  CHECK(east::check_connectivity(*g, params, full).connected);
  CHECK(east::check_connectivity(*g, params, full).off_path.empty());
  // Stage 2's first block without weights in its branch and its projection: the signal stops there.
  auto cut = full;
  cut[params.find("layer2.0.conv1.weight")].fill(false);
  cut[params.find("layer2.0.shortcut.weight")].fill(false);
  const auto rep = east::check_connectivity(*g, params, cut);
  CHECK_FALSE(rep.connected);
  CHECK(rep.cut_node == "layer2.0");
  CHECK(rep.message().find("layer2.0.shortcut.weight") != std::string::npos);
  // A controller at 99.95% with the graph: every use on a path, exact budget.
  east::ControllerOptions opt;
  opt.seed = 4;
  opt.connectivity = g;
  auto ctl = east::make_rigl(params, east::DstConfig{0.0005, 10, 100}, opt);
  const auto after = east::check_connectivity(*g, ctl.params(), ctl.masks());
  CHECK(after.connected);
  CHECK(after.off_path.empty());
  CHECK(ctl.nonzeros() == east::nonzero_budget(ctl.params(), 0.0005));
}
