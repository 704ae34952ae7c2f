// Fast selection and marking equal the scalar reference bit for bit, on every ISA this CPU
// runs and on 1 and 2 threads.
#include <catch2/catch.hpp>

#include <east/kernels/select.hpp>

#include "kernel_configs.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

using namespace east::kernels;

namespace {

using east_test::for_each_kernel_config;
using east_test::from_bits;

enum class Data { normal, ties, special, denormal, zeros };

std::vector<float> make_data(Data d, std::size_t n, std::mt19937& rng) {
  std::normal_distribution<float> nd;
  std::uniform_int_distribution<int> pick(0, 99);
  std::vector<float> x(n);
  const float special[] = {std::numeric_limits<float>::quiet_NaN(),
                           std::numeric_limits<float>::infinity(),
                           -std::numeric_limits<float>::infinity(),
                           -0.0f,
                           0.0f,
                           std::numeric_limits<float>::denorm_min(),
                           std::numeric_limits<float>::max(),
                           from_bits(0xFFC00001u) /* negative NaN with payload */};
  for (auto& v : x) {
    switch (d) {
      case Data::normal:
        v = nd(rng);
        break;
      case Data::ties:
        v = static_cast<float>(pick(rng) % 8 - 4) * 0.5f;
        break;
      case Data::special:
        v = pick(rng) < 6 ? special[pick(rng) % 8] : nd(rng);
        break;
      case Data::denormal:
        v = pick(rng) < 20 ? 0.0f : from_bits((rng() & 0x807FFFFFu) | (pick(rng) < 10 ? 0x00800000u : 0u));
        break;
      case Data::zeros:
        v = pick(rng) < 90 ? (pick(rng) < 50 ? 0.0f : -0.0f) : nd(rng);
        break;
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

std::size_t candidates(const std::uint64_t* mask, Among among, std::size_t n) {
  std::size_t c = 0;
  for (std::size_t i = 0; i < n; ++i) c += is_candidate(mask, among, i);
  return c;
}

std::vector<std::size_t> ks_for(std::size_t c, bool many) {
  std::vector<std::size_t> ks{0, c};
  if (c > 0) ks.insert(ks.end(), {1, c - 1, c / 2});
  if (many && c > 2) ks.insert(ks.end(), {2, c / 1000 + 1, c / 10, c - c / 100 - 1});
  std::sort(ks.begin(), ks.end());
  ks.erase(std::unique(ks.begin(), ks.end()), ks.end());
  return ks;
}

/// Checks select + mark on every configuration against the reference for one input.
template <class T, class RefSelect, class FastSelect, class RefMark, class FastMark>
void check_all(const T* x, std::size_t n, const std::uint64_t* mask, bool many_ks, RefSelect ref_select,
               FastSelect fast_select, RefMark ref_mark, FastMark fast_mark) {
  for (Among among : {Among::all, Among::active, Among::inactive}) {
    const std::size_t c = candidates(mask, among, n);
    for (Extreme e : {Extreme::largest, Extreme::smallest})
      for (std::size_t k : ks_for(c, many_ks)) {
        const Selection want = ref_select(x, n, k, e, mask, among);
        std::vector<std::uint64_t> want_bits(words_for(n) + 1, 0);
        ref_mark(x, n, want, e, mask, among, want_bits.data());
        for_each_kernel_config(
            [&](Isa isa, int t) {
              INFO("isa " << isa_name(isa) << ", threads " << t << ", n " << n << ", k " << k << ", among "
                          << static_cast<int>(among) << ", extreme " << static_cast<int>(e));
              const Selection got = fast_select(x, n, k, e, mask, among);
              CHECK(got.k == want.k);
              if (k > 0) {
                CHECK(got.threshold == want.threshold);
                CHECK(got.ties == want.ties);
              }
              std::vector<std::uint64_t> bits(words_for(n) + 1, 0);
              fast_mark(x, n, got, e, mask, among, bits.data());
              CHECK(bits == want_bits);
            },
            k == 1 || k == c / 2 || k == c);
      }
  }
}

void check_abs(const float* x, std::size_t n, const std::uint64_t* mask, bool many_ks) {
  check_all(
      x, n, mask, many_ks, [](auto... a) { return reference::select_abs(a...); },
      [](auto... a) { return select_abs(a...); }, [](auto... a) { reference::mark_selected_abs(a...); },
      [](auto... a) { mark_selected_abs(a...); });
}

void check_keys(const std::uint32_t* x, std::size_t n, const std::uint64_t* mask, bool many_ks) {
  check_all(
      x, n, mask, many_ks, [](auto... a) { return reference::select_keys(a...); },
      [](auto... a) { return select_keys(a...); }, [](auto... a) { reference::mark_selected_keys(a...); },
      [](auto... a) { mark_selected_keys(a...); });
}

}  // namespace

TEST_CASE("select_abs and mark_selected_abs equal the reference on small and odd sizes",
          "[kernels][select]") {
  std::mt19937 rng(12345);
  for (std::size_t n : {0u, 1u, 5u, 15u, 16u, 17u, 63u, 64u, 65u, 130u, 1000u, 4099u}) {
    for (Data d : {Data::normal, Data::ties, Data::special, Data::denormal, Data::zeros}) {
      const std::size_t off = n % 3;  // unaligned views
      std::vector<float> buf = make_data(d, n + off, rng);
      const double density = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
      const auto mask = make_mask(n, density, rng);
      check_abs(buf.data() + off, n, mask.data(), true);
    }
  }
}

TEST_CASE("select_abs equals the reference on large arrays (sampled path, recursion)", "[kernels][select]") {
  std::mt19937 rng(777);
  for (std::size_t n : {200003u}) {
    for (Data d : {Data::normal, Data::ties, Data::special, Data::zeros}) {
      std::vector<float> buf = make_data(d, n + 1, rng);
      for (double density : {0.5, 0.97, 0.02}) {
        if (density == 0.97 && d != Data::normal) continue;  // keeps the suite fast
        const auto mask = make_mask(n, density, rng);
        check_abs(buf.data() + (d == Data::normal ? 1 : 0), n, mask.data(), density == 0.5);
      }
    }
  }
}

TEST_CASE("select_keys and mark_selected_keys equal the reference, extremes 0 and ~0 included",
          "[kernels][select]") {
  std::mt19937 rng(99);
  for (std::size_t n : {1u, 33u, 64u, 777u, 90001u}) {
    for (int kind = 0; kind < 3; ++kind) {
      std::vector<std::uint32_t> keys(n + 1);
      for (auto& k : keys) {
        const std::uint32_t r = rng();
        k = kind == 0 ? r : kind == 1 ? (r % 4 == 0 ? 0u : r % 4 == 1 ? ~0u : r % 16) : (r % 3 ? ~0u : r);
      }
      const auto mask = make_mask(n, 0.6, rng);
      check_keys(keys.data() + (n % 2), n, mask.data(), n < 1000);
    }
  }
}

TEST_CASE("selection survives a sample that lies about the data", "[kernels][select]") {
  // The sampled positions hold huge values, all others tie: the brackets miss, get widened,
  // miss again, and the exact fallback must still give the reference answer.
  const std::size_t n = 150000;
  std::vector<float> x(n, 1.0f);
  const std::size_t probes = std::min(n, detail::kTopSample);
  for (std::size_t j = 0; j < probes; ++j)
    x[(2 * j + 1) * n / (2 * probes)] = 1000.0f + static_cast<float>(j);
  for (std::size_t i = 0; i < n; i += 7) x[i] = 0.5f;
  check_abs(x.data(), n, nullptr, true);
}

TEST_CASE("selection rejects k above the candidate count", "[kernels][select]") {
  std::vector<float> x(100, 1.0f);
  std::vector<std::uint64_t> mask(2, 0);
  mask[0] = 0xFF;  // 8 active
  east_test::KernelConfigGuard guard;
  for (Isa isa : available_isas()) {
    set_isa(isa);
    CHECK_THROWS_AS(select_abs(x.data(), 100, 9, Extreme::largest, mask.data(), Among::active),
                    east::InvalidArgument);
    CHECK_THROWS_AS(select_abs(x.data(), 100, 93, Extreme::smallest, mask.data(), Among::inactive),
                    east::InvalidArgument);
    CHECK_THROWS_AS(select_abs(x.data(), 100, 101, Extreme::smallest), east::InvalidArgument);
    CHECK(select_abs(x.data(), 100, 8, Extreme::largest, mask.data(), Among::active).ties == 8);
  }
}

TEST_CASE("dispatch lists scalar first and refuses nothing it lists", "[kernels][dispatch]") {
  const auto isas = available_isas();
  REQUIRE(!isas.empty());
  CHECK(isas.front() == Isa::scalar);
  CHECK(isas.back() == best_isa());
  east_test::KernelConfigGuard guard;
  for (Isa isa : isas) {
    set_isa(isa);
    CHECK(active_isa() == isa);
  }
  CHECK_THROWS_AS(set_threads(-1), east::InvalidArgument);
}
