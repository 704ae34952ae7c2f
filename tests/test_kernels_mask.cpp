// apply_mask, fill_where and count_nonfinite equal the scalar reference bit for bit on every
// ISA and on 1 and 2 threads.
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
using east_test::from_bits;

/// Normal values with zeros, -0, NaN, ±Inf and denormals sprinkled in.
std::vector<float> make_data(std::size_t n, std::mt19937& rng, int special_pct) {
  std::normal_distribution<float> nd;
  std::uniform_int_distribution<int> pick(0, 99);
  const float special[] = {0.0f,
                           -0.0f,
                           std::numeric_limits<float>::quiet_NaN(),
                           std::numeric_limits<float>::infinity(),
                           -std::numeric_limits<float>::infinity(),
                           std::numeric_limits<float>::denorm_min(),
                           from_bits(0xFFC00001u),
                           from_bits(0x7F800001u)};
  std::vector<float> x(n);
  for (auto& v : x) v = pick(rng) < special_pct ? special[pick(rng) % 8] : nd(rng);
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

const std::size_t kSizes[] = {0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 100, 1000, 4097, 100003};

}  // namespace

TEST_CASE("apply_mask equals the reference, -0 and NaN included", "[kernels][mask]") {
  std::mt19937 rng(5);
  for (std::size_t n : kSizes)
    for (double density : {0.0, 0.01, 0.5, 0.99, 1.0}) {
      const std::size_t off = n % 5;  // unaligned views
      const auto x0 = make_data(n + off, rng, 30);
      const auto mask = make_mask(n, density, rng);
      auto want = x0;
      reference::apply_mask(want.data() + off, mask.data(), n);
      for_each_kernel_config([&](Isa isa, int t) {
        INFO("isa " << isa_name(isa) << ", threads " << t << ", n " << n << ", density " << density);
        auto got = x0;
        apply_mask(got.data() + off, mask.data(), n);
        CHECK(same_bits(got, want));
      });
    }
}

TEST_CASE("fill_where equals the reference for ordinary and special fill values", "[kernels][mask]") {
  std::mt19937 rng(6);
  for (std::size_t n : kSizes)
    for (float value : {0.0f, -0.0f, 1.5f, std::numeric_limits<float>::quiet_NaN()}) {
      const std::size_t off = (n + 1) % 3;
      const auto x0 = make_data(n + off, rng, 30);
      const auto where = make_mask(n, 0.3, rng);
      auto want = x0;
      reference::fill_where(want.data() + off, where.data(), n, value);
      for_each_kernel_config([&](Isa isa, int t) {
        INFO("isa " << isa_name(isa) << ", threads " << t << ", n " << n << ", value " << value);
        auto got = x0;
        fill_where(got.data() + off, where.data(), n, value);
        CHECK(same_bits(got, want));
      });
    }
}

TEST_CASE("count_nonfinite equals the reference, count and first index", "[kernels][mask]") {
  std::mt19937 rng(7);
  for (std::size_t n : kSizes)
    for (int pct : {0, 1, 20}) {
      const std::size_t off = n % 2;
      auto x = make_data(n + off, rng, pct);
      if (pct == 0)  // denormals and the largest finite values are finite
        for (std::size_t i = 0; i < x.size(); i += 5)
          x[i] = i % 2 ? std::numeric_limits<float>::max() : -std::numeric_limits<float>::denorm_min();
      if (n > 50 && pct == 1) x[off + n - 1] = std::numeric_limits<float>::infinity();  // in the tail
      std::size_t want_first = 12345;
      const std::size_t want = reference::count_nonfinite(x.data() + off, n, &want_first);
      for_each_kernel_config([&](Isa isa, int t) {
        INFO("isa " << isa_name(isa) << ", threads " << t << ", n " << n << ", pct " << pct);
        std::size_t first = 12345;
        CHECK(count_nonfinite(x.data() + off, n, &first) == want);
        CHECK(first == want_first);
        CHECK(count_nonfinite(x.data() + off, n) == want);
      });
    }
}
