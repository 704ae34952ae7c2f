// torch_adapter's data-parallel module helpers over an in-process group (no Gloo needed):
// rank 0's parameters and buffers, float and int64, reach every rank in one broadcast each.
#include <east/adapters/torch/distributed.hpp>
#include <east/distributed/in_process.hpp>

#include <catch2/catch.hpp>

#include <thread>

using namespace east;

namespace {
torch::nn::Sequential small_net() {
  return torch::nn::Sequential(torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 4, 3).bias(false)),
                               torch::nn::BatchNorm2d(4), torch::nn::Functional(torch::relu),
                               torch::nn::Flatten(), torch::nn::Linear(4 * 6 * 6, 5));
}
}  // namespace

TEST_CASE("broadcast_module_state gives every rank rank 0's parameters and buffers") {
  const int world = 3;
  std::vector<torch::nn::Sequential> nets;
  for (int r = 0; r < world; ++r) {
    torch::manual_seed(100 + r);  // different initial weights per rank
    nets.push_back(small_net());
    // Different BN running statistics and num_batches_tracked: r + 1 training forwards.
    for (int i = 0; i <= r; ++i) nets.back()->forward(torch::randn({2, 3, 8, 8}));
  }
  const auto before = nets[0]->parameters()[0].clone();
  CHECK_FALSE(torch::equal(nets[0]->parameters()[0], nets[1]->parameters()[0]));

  distributed::InProcessGroup g(world);
  std::vector<std::thread> ts;
  std::vector<std::string> err(world);
  for (int r = 0; r < world; ++r)
    ts.emplace_back([&, r] {
      try {
        torch_adapter::broadcast_module_state(g[r], *nets[r]);
      } catch (const std::exception& e) {
        err[r] = e.what();
      }
    });
  for (auto& t : ts) t.join();

  for (int r = 0; r < world; ++r) {
    INFO("rank " << r << " " << err[r]);
    CHECK(err[r].empty());
    auto p0 = nets[0]->named_parameters(), pr = nets[r]->named_parameters();
    for (const auto& kv : p0) CHECK(torch::equal(kv.value(), pr[kv.key()]));
    auto b0 = nets[0]->named_buffers(), br = nets[r]->named_buffers();
    for (const auto& kv : b0) CHECK(torch::equal(kv.value(), br[kv.key()]));
    CHECK(br["1.num_batches_tracked"].item<int64_t>() == 1);
    // One float broadcast (every float parameter and buffer) and one int64 broadcast.
    CHECK(g[r].traffic()[distributed::CallKind::broadcast].calls == 2);
  }
  CHECK(torch::equal(nets[0]->parameters()[0], before));  // the root's values are unchanged
  const auto floats = torch_adapter::pack_module_state(*nets[0]).size();
  // conv 4·3·3·3 + BN weight, bias, running mean, running var 4·4 + linear 5·144 + 5.
  CHECK(floats == 108 + 16 + 720 + 5);
}
