// The fused masked SGD step equals its scalar reference bit for bit (weights, momentum and
// the |w| histogram) on every ISA and on 1 and 2 threads.
#include <catch2/catch.hpp>

#include <east/kernels/select.hpp>

#include "kernel_configs.hpp"

#include <cstring>
#include <limits>
#include <random>
#include <vector>

using namespace east::kernels;

namespace {

using east_test::for_each_kernel_config;

std::vector<float> make_data(std::size_t n, std::mt19937& rng, float scale, bool specials) {
  std::normal_distribution<float> nd(0.0f, scale);
  std::uniform_int_distribution<int> pick(0, 999);
  std::vector<float> x(n);
  for (auto& v : x) {
    v = nd(rng);
    if (specials) {
      const int p = pick(rng);
      if (p < 3)
        v = std::numeric_limits<float>::quiet_NaN();
      else if (p < 6)
        v = -std::numeric_limits<float>::infinity();
      else if (p < 20)
        v = std::numeric_limits<float>::denorm_min() * static_cast<float>(p);
      else if (p < 40)
        v = -0.0f;
    }
  }
  return x;
}

std::vector<std::uint64_t> make_mask(std::size_t n, double density, std::mt19937& rng) {
  std::bernoulli_distribution on(density);
  std::vector<std::uint64_t> m(words_for(n) + 1, 0);
  for (std::size_t i = 0; i < n; ++i)
    if (on(rng)) m[i >> 6] |= std::uint64_t{1} << (i & 63);
  return m;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  // memcmp must not see an empty vector's null data(), even for 0 bytes.
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

}  // namespace

TEST_CASE("masked_sgd equals the reference for every option combination", "[kernels][sgd]") {
  std::mt19937 rng(2024);
  SgdParams plain;
  plain.lr = 0.1f;
  SgdParams wd = plain;
  wd.weight_decay = 5e-4f;
  SgdParams mom = wd;
  mom.momentum = 0.9f;
  SgdParams damp = mom;
  damp.dampening = 0.1f;
  SgdParams nest = mom;
  nest.nesterov = true;
  for (const SgdParams& p : {plain, wd, mom, damp, nest})
    for (std::size_t n : {0u, 1u, 9u, 16u, 31u, 64u, 65u, 1000u, 20011u})
      for (double density : {0.0, 0.001, 0.3, 1.0})
        for (bool specials : {false, true}) {
          const std::size_t off = n % 4;  // unaligned views
          const auto w0 = make_data(n + off, rng, 1.0f, specials);
          const auto g = make_data(n + off, rng, 0.1f, specials);
          auto b0 = make_data(n + off + 1, rng, 0.01f, false);  // never empty: null means "no buffer"
          const auto mask = make_mask(n, density, rng);
          // Two steps, so momentum read back from the first step is exercised too.
          auto want_w = w0, want_b = b0;
          std::vector<std::uint64_t> want_h(kHistBins, 0);
          for (int step = 0; step < 2; ++step)
            reference::masked_sgd(want_w.data() + off, g.data() + off, want_b.data() + off, mask.data(), n, p,
                                  want_h.data());
          for_each_kernel_config([&](Isa isa, int t) {
            INFO("isa " << isa_name(isa) << ", threads " << t << ", n " << n << ", density " << density
                        << ", momentum " << p.momentum << ", nesterov " << p.nesterov << ", specials "
                        << specials);
            auto w = w0, b = b0;
            std::vector<std::uint64_t> h(kHistBins, 0);
            masked_sgd(w.data() + off, g.data() + off, b.data() + off, mask.data(), n, p, h.data());
            masked_sgd(w.data() + off, g.data() + off, b.data() + off, mask.data(), n, p, h.data());
            CHECK(same_bits(w, want_w));
            if (p.momentum != 0.0f) CHECK(same_bits(b, want_b));
            CHECK(h == want_h);
            // Without a histogram the weights are the same.
            auto w2 = w0, b2 = b0;
            masked_sgd(w2.data() + off, g.data() + off, b2.data() + off, mask.data(), n, p);
            masked_sgd(w2.data() + off, g.data() + off, b2.data() + off, mask.data(), n, p);
            CHECK(same_bits(w2, want_w));
          });
        }
}

TEST_CASE("masked_sgd without momentum needs no buffer; with momentum it needs one", "[kernels][sgd]") {
  std::vector<float> w(10, 1.0f), g(10, 1.0f);
  std::vector<std::uint64_t> mask(1, 0x3FF);
  SgdParams p;
  p.lr = 0.5f;
  masked_sgd(w.data(), g.data(), nullptr, mask.data(), 10, p);
  CHECK(w[3] == 0.5f);
  p.momentum = 0.9f;
  CHECK_THROWS_AS(masked_sgd(w.data(), g.data(), nullptr, mask.data(), 10, p), east::InvalidArgument);
  p.nesterov = true;
  p.dampening = 0.5f;
  std::vector<float> b(10, 0.0f);
  CHECK_THROWS_AS(masked_sgd(w.data(), g.data(), b.data(), mask.data(), 10, p), east::InvalidArgument);
}

TEST_CASE("first momentum step from a zero buffer equals PyTorch's buf = g", "[kernels][sgd]") {
  std::vector<float> w{1.0f, 2.0f, 3.0f}, g{0.25f, -0.5f, 0.125f}, b(3, 0.0f);
  std::vector<std::uint64_t> mask(1, 0x7);
  SgdParams p;
  p.lr = 0.1f;
  p.momentum = 0.9f;
  masked_sgd(w.data(), g.data(), b.data(), mask.data(), 3, p);
  CHECK(b == g);
}
