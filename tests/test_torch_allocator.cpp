// east::torch_adapter::use_caching_allocator() (adapters/torch/allocator.hpp): large CPU tensors
// come page-aligned (2 MiB-aligned from 2 MiB) and their blocks are reused; small ones go to the
// allocator it replaced; the raw interface (oneDNN's convolutions use it) works for both;
// empty_cache() returns free blocks; a training step computes the same values as without it.
#include <east/adapters/torch/allocator.hpp>
// glog (through c10) defines CHECK; Catch2 must own it.
#undef CHECK
#include <catch2/catch.hpp>

#include <cstdint>

namespace ta = east::torch_adapter;

namespace {
std::uintptr_t address(const at::Tensor& t) { return reinterpret_cast<std::uintptr_t>(t.data_ptr()); }

// A few steps of a small CNN (libtorch's convolution, batch norm, linear) from a fixed seed; its
// last loss and first-layer weight.
std::pair<double, at::Tensor> train_a_little() {
  torch::manual_seed(7);
  torch::nn::Sequential net(torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 32, 3).padding(1)),
                            torch::nn::BatchNorm2d(32), torch::nn::ReLU(), torch::nn::AdaptiveAvgPool2d(1),
                            torch::nn::Flatten(), torch::nn::Linear(32, 10));
  torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  const auto x = torch::randn({64, 3, 32, 32});  // conv output 64·32·32·32 floats = 8 MiB: cached blocks
  const auto y = torch::randint(0, 10, {64});
  double loss = 0;
  for (int i = 0; i < 3; ++i) {
    opt.zero_grad();
    auto l = torch::nn::functional::cross_entropy(net->forward(x), y);
    l.backward();
    opt.step();
    loss = l.item<double>();
  }
  return {loss, net->parameters()[0].detach().clone()};
}
}  // namespace

TEST_CASE("the caching CPU allocator reuses page-aligned blocks and leaves small tensors alone",
          "[torch][allocator]") {
  const auto before = train_a_little();  // with libtorch's own allocator
  ta::CachingCpuAllocator& cache = ta::CachingCpuAllocator::instance();
  REQUIRE_FALSE(cache.installed());
  ta::use_caching_allocator();
  ta::use_caching_allocator();  // idempotent
  REQUIRE(cache.installed());
  REQUIRE(c10::GetCPUAllocator() == &cache);

  const long big = 3L << 20;  // floats: 12 MiB
  std::uintptr_t first = 0;
  {
    const auto t = torch::empty({big});
    first = address(t);
    CHECK(first % (std::uintptr_t{2} << 20) == 0);  // 2 MiB or more: on a huge-page boundary
    CHECK(cache.held_bytes() >= static_cast<std::size_t>(big) * 4);
    CHECK(cache.cached_bytes() == 0);
  }
  CHECK(cache.cached_bytes() >= static_cast<std::size_t>(big) * 4);  // freed: kept, not returned
  {
    const auto t = torch::empty({big});  // the same size: the same block
    CHECK(address(t) == first);
    CHECK(cache.cached_bytes() == 0);
    const auto u = torch::empty({big});  // while that one is in use: a new block
    CHECK(address(u) != first);
    CHECK(address(u) % 4096 == 0);
    const auto v = torch::empty({300000});  // 1.2 MB: a block, page-aligned, below huge pages
    CHECK(address(v) % 4096 == 0);
  }
  const std::size_t held = cache.held_bytes();
  {
    const auto s = torch::ones({1000});  // small: the previous allocator, nothing cached
    CHECK(s.sum().item<double>() == 1000.0);
    CHECK(cache.held_bytes() == held);
  }

  // The raw interface (oneDNN): large and small, through the installed allocator.
  c10::Allocator* a = c10::GetCPUAllocator();
  void* r1 = a->raw_allocate(std::size_t{5} << 20);
  void* r2 = a->raw_allocate(256);
  REQUIRE(r1 != nullptr);
  REQUIRE(r2 != nullptr);
  CHECK(reinterpret_cast<std::uintptr_t>(r1) % 4096 == 0);
  static_cast<char*>(r1)[(std::size_t{5} << 20) - 1] = 1;
  static_cast<char*>(r2)[255] = 1;
  a->raw_deallocate(r1);
  a->raw_deallocate(r2);

  // The same training as before, on cached blocks: the same values.
  const auto after = train_a_little();
  CHECK(after.first == before.first);
  CHECK(torch::equal(after.second, before.second));
  CHECK(cache.cached_bytes() > 0);

  const std::size_t cached = cache.cached_bytes(), held_all = cache.held_bytes();
  CHECK(cache.empty_cache() == cached);
  CHECK(cache.cached_bytes() == 0);
  CHECK(cache.held_bytes() == held_all - cached);
  const auto t = torch::zeros({big});  // after empty_cache: a fresh block, zeroed by zeros()
  CHECK(t.sum().item<double>() == 0.0);
}
