// The whole-model CUDA mask update vs the same update done with the CPU reference kernels, the
// way east::Controller::update() commits it: drop n_drop smallest |w| among active, grow n_grow
// largest |g| among inactive, mask = (mask & ~dropped) | grown, zero grown and inactive weights
// and optimizer state, ever_active |= mask. And all-or-nothing on NaN or too large counts.
#include <east/cuda/mask_update.cuh>
#include <east/kernels/reference/select.hpp>

#include "cuda_test_helpers.cuh"

using namespace east_cuda_test;
using east::kernels::Among;
using east::kernels::Extreme;

namespace {

struct HostLayer {
  std::vector<float> w, g, m;  // weights, gradients, one momentum buffer
  std::vector<std::uint64_t> mask, ever;
  std::size_t n_drop = 0, n_grow = 0;
  bool bare = false;  // no ever_active mask and no optimizer state on the device
};

void cpu_update(HostLayer& L) {
  const std::size_t n = L.w.size();
  std::vector<std::uint64_t> dropped(L.mask.size(), 0), grown(L.mask.size(), 0);
  namespace ref = east::kernels::reference;
  const auto sd = ref::select_abs(L.w.data(), n, L.n_drop, Extreme::smallest, L.mask.data(), Among::active);
  ref::mark_selected_abs(L.w.data(), n, sd, Extreme::smallest, L.mask.data(), Among::active, dropped.data());
  const auto sg = ref::select_abs(L.g.data(), n, L.n_grow, Extreme::largest, L.mask.data(), Among::inactive);
  ref::mark_selected_abs(L.g.data(), n, sg, Extreme::largest, L.mask.data(), Among::inactive, grown.data());
  for (std::size_t i = 0; i < L.mask.size(); ++i) {
    L.mask[i] = (L.mask[i] & ~dropped[i]) | grown[i];
    L.ever[i] |= L.mask[i];
  }
  ref::fill_where(L.w.data(), grown.data(), n, 0.0f);
  ref::fill_where(L.m.data(), grown.data(), n, 0.0f);
  ref::apply_mask(L.w.data(), L.mask.data(), n);
  ref::apply_mask(L.m.data(), L.mask.data(), n);
}

std::size_t popcount(const std::vector<std::uint64_t>& m) {
  std::size_t c = 0;
  for (auto w : m) c += static_cast<std::size_t>(__builtin_popcountll(w));
  return c;
}

std::vector<HostLayer> make_model(unsigned seed, bool ties) {
  const std::size_t sizes[] = {432, 4608, 65536 + 13, 1, 300000, 4096, 0, 777};
  std::vector<HostLayer> layers;
  std::mt19937 rng(seed);
  for (std::size_t n : sizes) {
    HostLayer L;
    L.w = random_floats(n, ties ? Values::ties : Values::normal, seed++);
    L.g = random_floats(n, ties ? Values::ties : Values::normal, seed++);
    L.m = random_floats(n, Values::normal, seed++);
    L.mask = random_mask(n, 0.1, seed++);
    L.ever = L.mask;
    east::kernels::reference::apply_mask(L.w.data(), L.mask.data(), n);
    east::kernels::reference::apply_mask(L.m.data(), L.mask.data(), n);
    const std::size_t active = popcount(L.mask), inactive = n - active;
    L.n_drop = std::uniform_int_distribution<std::size_t>(0, active)(rng);
    L.n_grow = std::uniform_int_distribution<std::size_t>(0, std::min(inactive, active))(rng);
    layers.push_back(std::move(L));
  }
  layers[1].n_drop = 0;  // a layer that only grows
  layers[2].n_grow = 0;  // and one that only drops
  layers[7].bare = true;  // no ever_active, no state buffers
  return layers;
}

struct DeviceLayer {
  DeviceBuffer<float> w, g, m;
  DeviceBuffer<std::uint64_t> mask, ever;
  explicit DeviceLayer(const HostLayer& L) : w(L.w), g(L.g), m(L.m), mask(L.mask), ever(L.ever) {}
};

// Runs the device update; returns *d_failed.
int run_update(std::vector<DeviceLayer>& dev, const std::vector<HostLayer>& host,
               std::vector<east::cuda::MaskUpdateStatus>& status) {
  std::vector<east::cuda::LayerUpdate> ups;
  for (std::size_t l = 0; l < host.size(); ++l) {
    east::cuda::LayerUpdate u;
    u.weight = dev[l].w.get();
    u.grad = dev[l].g.get();
    u.mask = dev[l].mask.get();
    u.ever_active = host[l].bare ? nullptr : dev[l].ever.get();
    u.state[0] = host[l].bare ? nullptr : dev[l].m.get();
    u.num_state = host[l].bare ? 0 : 1;
    u.n = host[l].w.size();
    u.n_drop = host[l].n_drop;
    u.n_grow = host[l].n_grow;
    ups.push_back(u);
  }
  DeviceBuffer<east::cuda::MaskUpdateStatus> d_status(ups.size());
  DeviceBuffer<int> d_failed(1);
  two_phase([&](void* t, std::size_t& b) {
    return east::cuda::mask_update(t, b, ups.data(), ups.size(), d_status.get(), d_failed.get());
  });
  status = d_status.download();
  return d_failed.download()[0];
}

}  // namespace

TEST_CASE("cuda mask_update equals the CPU reference update", "[cuda][mask_update]") {
  EAST_REQUIRE_GPU_OR_SKIP();
  for (bool ties : {false, true}) {
    auto host = make_model(ties ? 100 : 200, ties);
    const auto original = host;
    std::vector<DeviceLayer> dev;
    for (const auto& L : host) dev.emplace_back(L);
    std::vector<east::cuda::MaskUpdateStatus> status;
    REQUIRE(run_update(dev, host, status) == 0);
    REQUIRE_NOTHROW(east::cuda::check_mask_update(status.data(), status.size()));
    for (std::size_t l = 0; l < host.size(); ++l) {
      CAPTURE(ties, l, host[l].w.size(), host[l].n_drop, host[l].n_grow);
      const std::size_t before = popcount(host[l].mask);
      cpu_update(host[l]);
      REQUIRE(popcount(host[l].mask) == before - host[l].n_drop + host[l].n_grow);
      REQUIRE(dev[l].mask.download() == host[l].mask);
      REQUIRE(float_bits(dev[l].w.download()) == float_bits(host[l].w));
      if (host[l].bare) {  // untouched: not given to the device
        REQUIRE(dev[l].ever.download() == original[l].ever);
      } else {
        REQUIRE(dev[l].ever.download() == host[l].ever);
        REQUIRE(float_bits(dev[l].m.download()) == float_bits(host[l].m));
      }
      // the drop and grow selections the device reports are the CPU's
      const auto want_drop = east::kernels::reference::select_abs(
          original[l].w.data(), original[l].w.size(), original[l].n_drop, Extreme::smallest,
          original[l].mask.data(), Among::active);
      const auto want_grow = east::kernels::reference::select_abs(
          original[l].g.data(), original[l].g.size(), original[l].n_grow, Extreme::largest,
          original[l].mask.data(), Among::inactive);
      REQUIRE(status[l].drop.selection == want_drop);
      REQUIRE(status[l].grow.selection == want_grow);
      REQUIRE(status[l].weight_nonfinite.count == 0);
      REQUIRE(status[l].weight_nonfinite.first == host[l].w.size());
    }
  }
}

TEST_CASE("cuda mask_update is all-or-nothing", "[cuda][mask_update]") {
  EAST_REQUIRE_GPU_OR_SKIP();
  for (int fault = 0; fault < 3; ++fault) {
    auto host = make_model(300 + fault, false);
    const std::size_t bad_layer = 4;
    if (fault == 0) host[bad_layer].w[1234] = std::numeric_limits<float>::quiet_NaN();
    if (fault == 1) {
      host[bad_layer].g[77] = std::numeric_limits<float>::infinity();
      host[bad_layer].n_grow = std::max<std::size_t>(host[bad_layer].n_grow, 1);
    }
    if (fault == 2) host[bad_layer].n_drop = popcount(host[bad_layer].mask) + 1;
    std::vector<DeviceLayer> dev;
    for (const auto& L : host) dev.emplace_back(L);
    std::vector<east::cuda::MaskUpdateStatus> status;
    CAPTURE(fault);
    REQUIRE(run_update(dev, host, status) == 1);
    REQUIRE_THROWS_AS(east::cuda::check_mask_update(status.data(), status.size()), east::InvalidArgument);
    if (fault == 0) {
      REQUIRE(status[bad_layer].weight_nonfinite.count == 1);
      REQUIRE(status[bad_layer].weight_nonfinite.first == 1234);
    }
    if (fault == 1) REQUIRE(status[bad_layer].grad_nonfinite.first == 77);
    if (fault == 2) REQUIRE(status[bad_layer].drop.status == east::cuda::kSelectBadK);
    for (std::size_t l = 0; l < host.size(); ++l) {  // nothing changed anywhere
      REQUIRE(dev[l].mask.download() == host[l].mask);
      REQUIRE(dev[l].ever.download() == host[l].ever);
      REQUIRE(float_bits(dev[l].w.download()) == float_bits(host[l].w));
      REQUIRE(float_bits(dev[l].m.download()) == float_bits(host[l].m));
    }
  }
}
