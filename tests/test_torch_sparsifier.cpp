// The Sparsifier on a user's own libtorch model (a no-BatchNorm CNN with east::nn layers) and the
// user's own torch::optim optimizer: compact training equals masked dense training up to rounding,
// gradients reset to None are handled, micro-batches count as one step, checkpoints resume
// exactly, bad input is refused without changing anything.
#include <torch/torch.h>

#include <catch2/catch.hpp>
#include <east/adapters/torch/sparsifier.hpp>
#include <sstream>

namespace ta = east::torch_adapter;

namespace {

// The classic libtorch MNIST network without dropout, with east's drop-in layers.
struct NetImpl : torch::nn::Module {
  NetImpl()
      : conv1(register_module("conv1", east::nn::Conv2d(torch::nn::Conv2dOptions(1, 10, 5)))),
        conv2(register_module("conv2", east::nn::Conv2d(torch::nn::Conv2dOptions(10, 20, 5)))),
        fc1(register_module("fc1", east::nn::Linear(320, 50))),
        fc2(register_module("fc2", east::nn::Linear(50, 10))) {}
  torch::Tensor forward(torch::Tensor x) {
    x = torch::relu(torch::max_pool2d(conv1->forward(x), 2));
    x = torch::relu(torch::max_pool2d(conv2->forward(x), 2));
    x = torch::relu(fc1->forward(x.view({-1, 320})));
    return torch::log_softmax(fc2->forward(x), 1);
  }
  east::nn::Conv2d conv1, conv2;
  east::nn::Linear fc1, fc2;
};
TORCH_MODULE(Net);

Net make_net() {
  torch::manual_seed(3);
  return Net();
}
std::pair<torch::Tensor, torch::Tensor> batch(int i, int n = 16) {
  torch::manual_seed(1000 + i);
  return {torch::randn({n, 1, 28, 28}), torch::randint(0, 10, {n})};
}
double max_diff(torch::nn::Module& a, torch::nn::Module& b, const std::string& name) {
  return (a.named_parameters()[name] - b.named_parameters()[name]).abs().max().item<double>();
}
std::size_t counted_nonzeros(torch::nn::Module& m) {
  std::size_t n = 0;
  for (const auto& p : m.named_parameters())
    if (p.key().size() > 7 && p.key().compare(p.key().size() - 7, 7, ".weight") == 0)
      n += static_cast<std::size_t>((p.value() != 0).sum().item<int64_t>());
  return n;
}

ta::SparsifierOptions quiet(double crossover) {
  ta::SparsifierOptions o;
  o.crossover = {crossover, crossover};
  o.log = nullptr;
  return o;
}

}  // namespace

TEST_CASE("compact layers train like masked dense ones with the user's SGD", "[sparsifier]") {
  Net dense = make_net(), compact = make_net();
  auto sgd = [](Net& n) {
    return torch::optim::SGD(n->parameters(),
                             torch::optim::SGDOptions(0.05).momentum(0.9).nesterov(true).weight_decay(5e-4));
  };
  auto od = sgd(dense), oc = sgd(compact);
  auto method = east::presets::rigl(0.05);
  method.updates = 6;
  ta::Sparsifier sd(*dense, od, method, 40, quiet(0.0));
  ta::Sparsifier sc(*compact, oc, method, 40, quiet(2.0));
  REQUIRE(sd.compact_layers() == 0);
  REQUIRE(sc.compact_layers() == 4);
  REQUIRE(sd.controller().digest() == sc.controller().digest());
  for (int step = 0; step < 40; ++step) {
    const auto [x, y] = batch(step);
    double losses[2];
    int k = 0;
    for (auto* pair : {&dense, &compact}) {
      auto& opt = pair == &dense ? od : oc;
      auto& sp = pair == &dense ? sd : sc;
      opt.zero_grad();
      auto loss = torch::nll_loss((*pair)->forward(x), y);
      loss.backward();
      torch::nn::utils::clip_grad_norm_((*pair)->parameters(), 1.0);
      opt.step();
      sp.step();
      losses[k++] = loss.item<double>();
    }
    REQUIRE(losses[0] == Approx(losses[1]).epsilon(1e-4));
    REQUIRE(sd.controller().digest() == sc.controller().digest());
  }
  CHECK(sc.controller().updates() == 6);
  sc.controller().sync_dense_views();
  for (const char* n : {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight", "fc1.bias"})
    CHECK(max_diff(*dense, *compact, n) < 1e-4);
  // Nonzeros counted from the weights are the controller's exact budget.
  CHECK(counted_nonzeros(*dense) == sd.nonzeros());
  CHECK(counted_nonzeros(*compact) == sc.nonzeros());
  // Optimizer state lives on the nnz compact values: momentum equals the dense one there.
  const torch::Tensor cv = compact->fc1->named_parameters(false)["compact_values"];
  REQUIRE(cv.numel() == static_cast<long>(sc.controller().mask("fc1.weight").count()));
  auto& st = static_cast<torch::optim::SGDParamState&>(*oc.state().at(ta::detail::state_key(cv)));
  auto& dst = static_cast<torch::optim::SGDParamState&>(
      *od.state().at(ta::detail::state_key(dense->fc1->weight)));
  const auto m = sc.controller().mask("fc1.weight").to_bytes();
  const auto active = torch::from_blob(const_cast<std::uint8_t*>(m.data()), {static_cast<long>(m.size())}, torch::kUInt8)
                          .to(torch::kBool);
  const auto dense_at_active = dst.momentum_buffer().flatten().masked_select(active);
  REQUIRE(st.momentum_buffer().numel() == dense_at_active.numel());
  CHECK((st.momentum_buffer() - dense_at_active).abs().max().item<double>() < 1e-4);
}

TEST_CASE("Adam's state is carried through mask updates on compact weights", "[sparsifier]") {
  Net dense = make_net(), compact = make_net();
  torch::optim::Adam od(dense->parameters(), torch::optim::AdamOptions(1e-3).weight_decay(1e-4));
  torch::optim::Adam oc(compact->parameters(), torch::optim::AdamOptions(1e-3).weight_decay(1e-4));
  auto method = east::presets::set(0.05);  // random regrowth: no gradient near-ties to flip
  method.updates = 5;
  ta::Sparsifier sd(*dense, od, method, 30, quiet(0.0));
  ta::Sparsifier sc(*compact, oc, method, 30, quiet(2.0));
  for (int step = 0; step < 30; ++step) {
    const auto [x, y] = batch(step);
    for (auto* n : {&dense, &compact}) {
      auto& opt = n == &dense ? od : oc;
      opt.zero_grad();
      torch::nll_loss((*n)->forward(x), y).backward();
      opt.step();
      (n == &dense ? sd : sc).step();
    }
    REQUIRE(sd.controller().digest() == sc.controller().digest());
  }
  CHECK(sc.controller().updates() == 5);
  sc.controller().sync_dense_views();
  for (const char* n : {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"})
    CHECK(max_diff(*dense, *compact, n) < 1e-4);
  // exp_avg at the active positions, scattered back, equals the dense layer's.
  const torch::Tensor cv = compact->conv2->named_parameters(false)["compact_values"];
  auto& cs = static_cast<torch::optim::AdamParamState&>(*oc.state().at(ta::detail::state_key(cv)));
  auto& ds = static_cast<torch::optim::AdamParamState&>(*od.state().at(ta::detail::state_key(dense->conv2->weight)));
  CHECK(cs.step() == ds.step());
  const auto m = sc.controller().mask("conv2.weight").to_bytes();
  const auto active = torch::from_blob(const_cast<std::uint8_t*>(m.data()), {static_cast<long>(m.size())}, torch::kUInt8)
                          .to(torch::kBool);
  CHECK(cs.exp_avg().numel() == active.sum().item<int64_t>());
  CHECK((ds.exp_avg().flatten().masked_select(active) - cs.exp_avg()).abs().max().item<double>() < 1e-5);
}

TEST_CASE("gradients reset to None between steps are handled", "[sparsifier]") {
  Net a = make_net(), b = make_net();
  torch::optim::SGD oa(a->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  torch::optim::SGD ob(b->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  auto method = east::presets::rigl(0.1);
  method.updates = 4;
  ta::Sparsifier sa(*a, oa, method, 20, quiet(0.0));  // dense form: the hooks and views matter most
  ta::Sparsifier sb(*b, ob, method, 20, quiet(0.0));
  for (int step = 0; step < 20; ++step) {
    const auto [x, y] = batch(step);
    oa.zero_grad();  // in place
    for (auto& p : b->parameters()) p.mutable_grad() = torch::Tensor();  // libtorch >= 2.0's default
    torch::nll_loss(a->forward(x), y).backward();
    torch::nll_loss(b->forward(x), y).backward();
    oa.step(), ob.step();
    sa.step(), sb.step();
    REQUIRE(sa.controller().digest() == sb.controller().digest());
  }
  for (const char* n : {"conv1.weight", "fc2.weight"}) CHECK(max_diff(*a, *b, n) == 0.0);
}

TEST_CASE("micro-batches make one step; steps and updates follow the schedule", "[sparsifier]") {
  Net n = make_net();
  torch::optim::SGD opt(n->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  auto method = east::presets::rigl(0.05);
  method.updates = 3;
  ta::Sparsifier sp(*n, opt, method, 24, quiet(2.0));
  const auto sched = method.schedule(24);
  std::uint64_t expected = 0;
  for (int step = 0; step < 24; ++step) {
    expected += sp.is_update_step();
    opt.zero_grad();
    for (int k = 0; k < 3; ++k) {  // 3 micro-batches of 8
      const auto [x, y] = batch(step * 3 + k, 8);
      (torch::nll_loss(n->forward(x), y) / 3).backward();
    }
    opt.step();
    sp.step();
  }
  CHECK(sp.steps() == 24);
  CHECK(sched.update_interval == 4);  // 0.75 · 24 = 18 → 18 / (3 + 1) = 4
  CHECK(expected == 3);               // steps 4, 8, 12
  CHECK(sp.controller().updates() == expected);
}

TEST_CASE("a Sparsifier checkpoint resumes bit for bit", "[sparsifier]") {
  const std::string path = "east_test_sparsifier.east";
  auto method = east::presets::rigl(0.05);
  method.updates = 6;
  auto run = [&](Net& n, torch::optim::SGD& opt, ta::Sparsifier& sp, int from, int to) {
    for (int step = from; step < to; ++step) {
      const auto [x, y] = batch(step);
      opt.zero_grad();
      torch::nll_loss(n->forward(x), y).backward();
      opt.step();
      sp.step();
    }
  };
  Net ref = make_net();
  torch::optim::SGD oref(ref->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  ta::Sparsifier sref(*ref, oref, method, 30, quiet(2.0));
  run(ref, oref, sref, 0, 30);

  Net first = make_net();
  torch::optim::SGD o1(first->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  ta::Sparsifier s1(*first, o1, method, 30, quiet(2.0));
  run(first, o1, s1, 0, 13);
  s1.save(path);

  torch::manual_seed(99);
  Net second;  // another initialisation: everything comes from the file
  torch::optim::SGD o2(second->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  ta::Sparsifier s2(*second, o2, method, 30, quiet(2.0));
  s2.load(path);
  CHECK(s2.steps() == 13);
  run(second, o2, s2, 13, 30);
  CHECK(s2.controller().digest() == sref.controller().digest());
  s2.controller().sync_dense_views();
  sref.controller().sync_dense_views();
  for (const char* n : {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight", "fc2.bias"})
    CHECK(max_diff(*second, *ref, n) == 0.0);

  // Another configuration's file is refused and changes nothing.
  auto other = method;
  other.density = 0.1;
  Net third = make_net();
  torch::optim::SGD o3(third->parameters(), torch::optim::SGDOptions(0.05));
  ta::Sparsifier s3(*third, o3, other, 30, quiet(2.0));
  const auto digest = s3.controller().digest();
  CHECK_THROWS_WITH(s3.load(path), Catch::Contains("other settings"));
  CHECK(s3.controller().digest() == digest);
  std::remove(path.c_str());
}

TEST_CASE("the Sparsifier refuses bad input and changes nothing", "[sparsifier]") {
  Net n = make_net();
  Net other = make_net();
  torch::optim::SGD opt(n->parameters(), torch::optim::SGDOptions(0.05));
  torch::optim::SGD wrong(other->parameters(), torch::optim::SGDOptions(0.05));
  const auto before = n->conv1->weight.clone();
  CHECK_THROWS_WITH(ta::Sparsifier(*n, wrong, east::presets::rigl(0.1), 10, quiet(2.0)),
                    Catch::Contains("does not hold 'conv1.weight'"));
  CHECK_THROWS_WITH(ta::Sparsifier(*n, opt, east::presets::rigl(0.0), 10, quiet(2.0)), Catch::Contains("density 0"));
  CHECK_THROWS_WITH(ta::Sparsifier(*n, opt, east::presets::rigl(1.5), 10, quiet(2.0)),
                    Catch::Contains("outside (0, 1]"));
  CHECK_THROWS_WITH(ta::Sparsifier(*n, opt, east::presets::rigl(0.1), 0, quiet(2.0)),
                    Catch::Contains("total_steps 0"));
  torch::optim::LBFGS lbfgs(n->parameters(), torch::optim::LBFGSOptions(1));
  CHECK_THROWS_WITH(ta::Sparsifier(*n, lbfgs, east::presets::rigl(0.1), 10, quiet(2.0)),
                    Catch::Contains("unsupported optimizer"));
  CHECK(torch::equal(before, n->conv1->weight));
  CHECK(n->conv1->east_layer() == nullptr);
  torch::nn::Sequential no_prunable(torch::nn::BatchNorm1d(4));
  torch::optim::SGD o2(no_prunable->parameters(), torch::optim::SGDOptions(0.1));
  CHECK_THROWS_WITH(ta::Sparsifier(*no_prunable, o2, east::presets::rigl(0.1), 10, quiet(2.0)),
                    Catch::Contains("no prunable parameter"));
  ta::SparsifierOptions nan_strided = quiet(2.0);
  nan_strided.crossover.conv_strided = std::nan("");
  CHECK_THROWS_WITH(ta::Sparsifier(*n, opt, east::presets::rigl(0.1), 10, nan_strided),
                    Catch::Contains("conv_strided a number"));
  CHECK(n->conv1->east_layer() == nullptr);
}

TEST_CASE("strided convolutions switch at their own crossover", "[sparsifier]") {
  // Two layers of one shape, so ERK gives both the same density (6%): below the 10% crossover of
  // stride-1 convolutions, above the 4.5% of strided ones.
  torch::manual_seed(2);
  torch::nn::Sequential m(east::nn::Conv2d(torch::nn::Conv2dOptions(8, 8, 3).padding(1)),
                          east::nn::Conv2d(torch::nn::Conv2dOptions(8, 8, 3).padding(1).stride(2)));
  torch::optim::SGD opt(m->parameters(), torch::optim::SGDOptions(0.01));
  ta::SparsifierOptions o;
  o.log = nullptr;
  {
    ta::Sparsifier sp(*m, opt, east::presets::static_mask(0.06), 10, o);
    CHECK(sp.compact_layers() == 1);
    CHECK(m[0]->as<east::nn::Conv2d>()->east_layer()->mode().compact == true);
    CHECK(m[1]->as<east::nn::Conv2d>()->east_layer()->mode().compact == false);
  }
  // The same model bound again (its first Sparsifier destroyed): with the strided crossover
  // raised, both run compact, and the first layer's emptied compact_values is reused.
  o.crossover.conv_strided = 0.08;
  ta::Sparsifier sp(*m, opt, east::presets::static_mask(0.06), 10, o);
  CHECK(sp.compact_layers() == 2);
  CHECK(m[0]->named_parameters(false).size() == 3);  // weight, bias, compact_values: not registered twice
  CHECK(m[1]->named_parameters(false).size() == 3);
  std::size_t held = 0;
  for (const auto& g : opt.param_groups()) held += g.params().size();
  CHECK(held == 6);
}

TEST_CASE("layers east's kernels do not cover stay dense, with a notice", "[sparsifier]") {
  torch::manual_seed(1);
  torch::nn::Sequential m(east::nn::Conv2d(torch::nn::Conv2dOptions(4, 8, 3).groups(2).padding(1)),
                          torch::nn::Conv2d(torch::nn::Conv2dOptions(8, 8, 3).padding(1)),
                          east::nn::Conv2d(torch::nn::Conv2dOptions(8, 8, 3).padding(torch::kSame)));
  torch::optim::SGD opt(m->parameters(), torch::optim::SGDOptions(0.01));
  std::ostringstream log;
  ta::SparsifierOptions o = quiet(2.0);
  o.log = &log;
  ta::Sparsifier sp(*m, opt, east::presets::static_mask(0.2), 10, o);
  CHECK_THAT(log.str(), Catch::Contains("0.weight stays dense: groups 2"));
  CHECK_THAT(log.str(), Catch::Contains("1.weight stays dense: a libtorch module"));
  CHECK(sp.compact_layers() == 1);
  CHECK_THAT(sp.summary(), Catch::Contains("2.weight [8x8x3x3]"));
  // The compact 'same' convolution computes what libtorch computes with the masked weight.
  const auto x = torch::randn({2, 4, 6, 6});
  const auto y = m->forward(x);
  sp.controller().sync_dense_views();
  auto* last = m[2]->as<torch::nn::Conv2d>();
  const auto ref = torch::conv2d(m[1]->as<torch::nn::Conv2d>()->forward(m[0]->as<torch::nn::Conv2d>()->forward(x)),
                                 last->weight, last->bias, 1, 1);
  CHECK((y - ref).abs().max().item<double>() < 1e-5);
}

TEST_CASE("destroying the Sparsifier hands the model back dense", "[sparsifier]") {
  Net n = make_net();
  torch::optim::SGD opt(n->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  const auto [x, y] = batch(0);
  torch::Tensor out_sparse;
  {
    ta::Sparsifier sp(*n, opt, east::presets::rigl(0.05), 10, quiet(2.0));
    for (int s = 0; s < 3; ++s) {
      opt.zero_grad();
      torch::nll_loss(n->forward(x), y).backward();
      opt.step();
      sp.step();
    }
    torch::NoGradGuard ng;
    out_sparse = n->forward(x);
  }
  torch::NoGradGuard ng;
  CHECK(n->conv1->east_layer() == nullptr);
  CHECK((n->forward(x) - out_sparse).abs().max().item<double>() < 1e-5);
}

TEST_CASE("an MLP of east::nn::Linear layers trains like its masked dense twin", "[sparsifier]") {
  auto make = [] {
    torch::manual_seed(11);
    return torch::nn::Sequential(east::nn::Linear(64, 48), torch::nn::ReLU(), east::nn::Linear(48, 32),
                                 torch::nn::ReLU(), east::nn::Linear(32, 10));
  };
  auto dense = make(), compact = make();
  torch::optim::SGD od(dense->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9).weight_decay(1e-4));
  torch::optim::SGD oc(compact->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9).weight_decay(1e-4));
  auto method = east::presets::rigl(0.1);
  method.updates = 5;
  ta::Sparsifier sd(*dense, od, method, 30, quiet(0.0)), sc(*compact, oc, method, 30, quiet(2.0));
  REQUIRE(sc.compact_layers() == 3);
  for (int step = 0; step < 30; ++step) {
    torch::manual_seed(500 + step);
    const auto x = torch::randn({16, 64});
    const auto y = torch::randint(0, 10, {16});
    for (auto* m : {&dense, &compact}) {
      auto& opt = m == &dense ? od : oc;
      opt.zero_grad();
      torch::nn::functional::cross_entropy((*m)->forward(x), y).backward();
      opt.step();
      (m == &dense ? sd : sc).step();
    }
    REQUIRE(sd.controller().digest() == sc.controller().digest());
  }
  CHECK(sc.controller().updates() == 5);
  sc.controller().sync_dense_views();
  for (const char* n : {"0.weight", "2.weight", "4.weight", "4.bias"}) CHECK(max_diff(*dense, *compact, n) < 1e-4);
}
