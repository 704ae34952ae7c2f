// The fused Controller::update() (kernels/update.hpp) against the multi-pass update it replaced
// (tests/reference_update.hpp): same masks, ever-active masks, weights, optimizer state, reports
// and errors, bit for bit, for every built-in criterion, user-written ones, every ISA and 1/2
// threads, on data made to hit every branch: exact zeros (random tie order), ties, -0, nonzero
// inactive weights, all-zero gradients, NaN/Inf.
#include <catch2/catch.hpp>
#include <east/east.hpp>
#include <east/kernels/update.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <random>
#include <string>

#include "kernel_configs.hpp"
#include "reference_update.hpp"

using namespace east;

namespace {

struct Buffers {
  std::vector<std::pair<std::string, Shape>> shapes;
  std::vector<std::vector<float>> w, g, m;
  explicit Buffers(std::vector<std::pair<std::string, Shape>> s) : shapes(std::move(s)) {
    for (auto& [name, shape] : shapes) {
      const auto n = shape_size(shape);
      w.emplace_back(n, 0.0f), g.emplace_back(n, 0.0f), m.emplace_back(n, 0.0f);
    }
  }
  ParameterSet params() {
    ParameterSet p;
    for (std::size_t l = 0; l < shapes.size(); ++l) {
      p.add(shapes[l].first, w[l].data(), shapes[l].second, g[l].data());
      p.add_state(shapes[l].first, m[l].data());
    }
    return p;
  }
  void copy_from(const Buffers& o) { w = o.w, g = o.g, m = o.m; }
};

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

std::vector<std::pair<std::string, Shape>> shapes() {
  return {{"stem", {16, 3, 3, 3}},  {"a", {32, 16, 3, 3}}, {"odd", {65, 33, 3, 3}},
          {"big", {128, 64, 3, 3}}, {"fc", {10, 77}},      {"tiny", {5, 7}}};
}

/// Fills weights, gradients and momentum for one step. `kind` picks the hard cases.
void fill(Buffers& b, const std::vector<BitMask>& masks, unsigned seed, int kind) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (std::size_t l = 0; l < b.w.size(); ++l) {
    const auto& mask = masks[l];
    // Disconnected layers: no gradient at all (a large one, and one small enough that the scan
    // keeps all its candidates, so the grown set is seen to reach into the zeros).
    const bool zero_grad_layer = kind == 3 && (l == 1 || b.w[l].size() < 1000);
    for (std::size_t i = 0; i < b.w[l].size(); ++i) {
      const bool active = mask.test(i);
      float w = nd(rng), g = nd(rng);
      if (kind == 1) {  // heavy ties: few distinct magnitudes
        w = std::round(w * 2.0f) / 2.0f;
        g = std::round(g * 2.0f) / 2.0f;
      }
      if (u(rng) < 0.15) w = u(rng) < 0.5 ? 0.0f : -0.0f;  // exact zeros among active weights
      // Zero gradients among candidates (not in every error case: the message depends on them).
      if (u(rng) < 0.1 && !(kind == 4 && (seed / 2) % 2 == 0)) g = u(rng) < 0.5 ? 0.0f : -0.0f;
      if (!active) w = kind == 2 ? nd(rng) : (u(rng) < 0.01 ? -0.0f : 0.0f);  // dense optimizer step
      if (zero_grad_layer) g = 0.0f;
      b.w[l][i] = w;
      b.g[l][i] = g;
      b.m[l][i] = active || kind == 2 ? nd(rng) : 0.0f;
    }
  }
  if (kind == 4) {  // a non-finite value somewhere
    const std::size_t l = seed % b.w.size();
    const std::size_t i = (seed * 7919u) % b.w[l].size();
    const float bad =
        seed % 3 == 0 ? std::numeric_limits<float>::quiet_NaN() : (seed % 3 == 1 ? INFINITY : -INFINITY);
    if (seed % 2)
      b.g[l][i] = bad;
    else
      b.w[l][i] = bad;
    if (seed % 4 == 1) b.g[(l + 1) % b.w.size()][3] = bad;  // and maybe in a later layer too
  }
}

template <class Ctl>
std::string run_update(Ctl& ctl, std::int64_t step, UpdateReport& out) {
  try {
    out = ctl.update(step);
  } catch (const InvalidArgument& e) {
    return std::string("InvalidArgument: ") + e.what();
  }
  return {};
}

/// Runs `steps` updates of a controller built by make(params) and of the reference on a copy,
/// and checks that they agree.
template <class Make>
void compare(Make make, double density_hint, int steps, unsigned seed, bool two_layers_roles = false) {
  (void)density_hint;
  Buffers a(shapes()), b(shapes());
  auto pa = a.params();
  if (two_layers_roles) {
    pa.set_role("tiny", LayerRole::excluded);
    pa.set_role("fc", LayerRole::dense);
  }
  auto ctl = make(pa);
  auto pb = b.params();
  if (two_layers_roles) {
    pb.set_role("tiny", LayerRole::excluded);
    pb.set_role("fc", LayerRole::dense);
  }
  for (int s = 0; s < steps; ++s) {
    const std::int64_t step = 10 * (s + 1);
    const int kind = s % 5;
    fill(a, ctl.masks(), seed * 1000u + static_cast<unsigned>(s), kind);
    b.copy_from(a);
    if constexpr (detail::has_observe<std::decay_t<decltype(ctl.method().regrow)>>::value)
      ctl.method().regrow.observe(step, ctl.params());
    east_test::ReferenceState<std::decay_t<decltype(ctl.method())>> rs{
        pb, ctl.method(), ctl.options(), ctl.masks(), ctl.ever_active(), {}};
    const Buffers before = a;
    UpdateReport ra, rb;
    const std::string ea = run_update(ctl, step, ra);
    std::string eb;
    try {
      rb = east_test::reference_update(rs, step);
    } catch (const InvalidArgument& e) {
      eb = std::string("InvalidArgument: ") + e.what();
    }
    INFO("step " << step << " kind " << kind << " seed " << seed);
    REQUIRE(ea == eb);
    if (!ea.empty()) {  // an error changes nothing
      for (std::size_t l = 0; l < a.w.size(); ++l) {
        CHECK(same_bits(a.w[l], before.w[l]));
        CHECK(same_bits(a.m[l], before.m[l]));
      }
      for (std::size_t l = 0; l < a.w.size(); ++l) REQUIRE(ctl.masks()[l] == rs.masks[l]);
      continue;
    }
    for (std::size_t l = 0; l < a.w.size(); ++l) {
      INFO("layer " << l);
      REQUIRE(ctl.masks()[l] == rs.masks[l]);
      REQUIRE(ctl.masks()[l].count() == rs.masks[l].count());
      REQUIRE(ctl.ever_active()[l] == rs.ever_active[l]);
      REQUIRE(ctl.ever_active()[l].count() == rs.ever_active[l].count());
      REQUIRE(same_bits(a.w[l], b.w[l]));
      REQUIRE(same_bits(a.m[l], b.m[l]));
      REQUIRE(same_bits(a.g[l], b.g[l]));
      const auto& la = ra.layers[l];
      const auto& lb = rb.layers[l];
      CHECK(la.nnz == lb.nnz);
      CHECK(la.dropped == lb.dropped);
      CHECK(la.grown == lb.grown);
      CHECK(la.ever_active_fraction == lb.ever_active_fraction);
    }
    CHECK(ra.density == rb.density);
  }
}

// User-written criteria: the same rules as the built-ins, so they take the general path.
struct UserMagnitudePrune {
  Scores prune_scores(const LayerContext& ctx) const { return MagnitudePrune{}.prune_scores(ctx); }
};
struct UserGradientRegrow {
  Scores regrow_scores(const LayerContext& ctx) const { return GradientRegrow{}.regrow_scores(ctx); }
};
// A GrowInit that writes something visible (and reads its layer first).
struct HalfMeanInit {
  void initialize(const LayerView& layer, const std::uint64_t* grown) const {
    double s = 0;
    for (std::size_t i = 0; i < layer.size(); ++i) s += std::abs(layer.weight[i]);
    const float v = static_cast<float>(0.5 * s / static_cast<double>(layer.size()));
    for (std::size_t i = 0; i < layer.size(); ++i)
      if (kernels::test_bit(grown, i)) layer.weight[i] = v;
  }
};

template <class P, class R, class I = ZeroInit>
auto make_method(double density, P prune = {}, R regrow = {}, I init = {}) {
  DstConfig c{density, 10, 100000};
  return Method{ErdosRenyiKernel{},
                detail::constant_of(c),
                detail::cosine_of(c),
                detail::periodic_of(c),
                prune,
                regrow,
                init};
}

}  // namespace

TEST_CASE("Fused update equals the multi-pass update: RigL / SET / SNFS / cyclic / GMP presets",
          "[controller][update]") {
  east_test::for_each_kernel_config(
      [](kernels::Isa isa, int threads) {
        INFO("isa " << kernels::isa_name(isa) << " threads " << threads);
        for (double density : {0.01, 0.1}) {
          INFO("density " << density);
          const DstConfig c{density, 10, 100000};
          compare([&](ParameterSet p) { return make_rigl(std::move(p), c, {7}); }, density, 10, 1);
          compare([&](ParameterSet p) { return make_set(std::move(p), c, {8}); }, density, 10, 2);
          compare([&](ParameterSet p) { return make_snfs(std::move(p), c, {9}); }, density, 5, 3);
          compare(
              [&](ParameterSet p) {
                return make_cyclic(std::move(p), c, CyclicDensity{0.0, 3.0, 2, 40}, {4});
              },
              density, 10, 4);
        }
        DstConfig g{0.05, 10, 60};
        compare([&](ParameterSet p) { return make_gmp(std::move(p), g, 0.8, {5}); }, 0.05, 6, 5);
        compare(
            [&](ParameterSet p) {
              return make_rigl(std::move(p), DstConfig{0.05, 10, 100000}, {6});
            },
            0.05, 5, 6, true);
      },
      false);
}

TEST_CASE("Fused update equals the multi-pass update when growth reaches into zero gradients",
          "[controller][update]") {
  // Uniform density: the small layers are sparse too, so their all-zero gradients (fill kind 3)
  // leave fewer nonzero candidates than positions to grow.
  east_test::for_each_kernel_config(
      [](kernels::Isa isa, int) {
        INFO("isa " << kernels::isa_name(isa));
        for (bool ties : {true, false})
          compare(
              [&](ParameterSet p) {
                DstConfig c{0.05, 10, 100000};
                return Controller(std::move(p),
                                  Method{Uniform{}, detail::constant_of(c), detail::cosine_of(c),
                                         detail::periodic_of(c), MagnitudePrune{ties}, GradientRegrow{ties}},
                                  ControllerOptions{31});
              },
              0.05, 5, 31);
      },
      false);
}

TEST_CASE("Fused update equals the multi-pass update on two threads (chunked scans)",
          "[controller][update][parallel]") {
  // Two threads wake a team per kernel call: slow on a loaded machine, so fewer cases here.
  east_test::KernelConfigGuard guard;
  kernels::set_threads(2);
  for (kernels::Isa isa : kernels::available_isas()) {
    INFO("isa " << kernels::isa_name(isa));
    kernels::set_isa(isa);
    const DstConfig c{0.01, 10, 100000};
    compare([&](ParameterSet p) { return make_rigl(std::move(p), c, {7}); }, 0.01, 5, 21);
    compare([&](ParameterSet p) { return make_set(std::move(p), c, {8}); }, 0.01, 5, 22);
    compare(
        [&](ParameterSet p) {
          return Controller(std::move(p), make_method(0.03, MagnitudePrune{false}, GradientRegrow{false}),
                            ControllerOptions{12});
        },
        0.03, 5, 23);
  }
}

TEST_CASE("Fused update equals the multi-pass update: other criteria and initialisers",
          "[controller][update]") {
  east_test::for_each_kernel_config(
      [](kernels::Isa isa, int threads) {
        INFO("isa " << kernels::isa_name(isa) << " threads " << threads);
        auto ctl_of = [](auto method, unsigned seed) {
          return [method, seed](ParameterSet p) {
            return Controller(std::move(p), method, ControllerOptions{seed});
          };
        };
        compare(ctl_of(make_method(0.03, RandomPrune{}, RandomRegrow{}), 11), 0.03, 5, 11);
        compare(ctl_of(make_method(0.03, MagnitudePrune{false}, GradientRegrow{false}), 12), 0.03, 10, 12);
        compare(ctl_of(make_method(0.03, MagnitudePrune{}, GradientRegrow{}, ConstantInit{0.25f}), 13), 0.03,
                5, 13);
        compare(ctl_of(make_method(0.03, UserMagnitudePrune{}, UserGradientRegrow{}), 14), 0.03, 5, 14);
        compare(ctl_of(make_method(0.03, MagnitudePrune{}, GradientRegrow{}, HalfMeanInit{}), 15), 0.03, 5,
                15);
        compare(ctl_of(make_method(0.3, MagnitudePrune{}, GradientRegrow{}), 16), 0.3, 5,
                16);  // k > cands/16
      },
      false);
}

TEST_CASE("Fused update: on_grown sees the grown positions; a state with masks outside ever-active is refused",
          "[controller][update]") {
  struct Grown {
    std::vector<BitMask> seen;
    void on_grown(const LayerView&, const BitMask& g) { seen.push_back(g); }
  };
  Buffers a(shapes());
  auto ctl = make_rigl(a.params(), DstConfig{0.05, 10, 1000}, {3});
  fill(a, ctl.masks(), 77, 0);
  const auto before = ctl.masks();
  Grown cb;
  ctl.update(10, cb);
  std::size_t j = 0;
  for (std::size_t l = 0; l < before.size(); ++l) {
    BitMask expect(before[l].size());
    for (std::size_t i = 0; i < expect.size(); ++i)
      if (ctl.masks()[l].test(i) && !before[l].test(i)) expect.set(i);
    if (expect.count() == 0) continue;
    REQUIRE(j < cb.seen.size());
    CHECK(cb.seen[j++] == expect);
  }
  CHECK(j == cb.seen.size());

  // A hand-made state whose ever-active masks miss active bits is refused by restore() (so the
  // update's defensive repair of ever_active never has work) and leaves the controller as it was.
  auto s = ctl.state();
  for (auto& e : s.ever_active) std::fill(e.begin(), e.end(), 0);
  const auto digest = ctl.digest();
  const auto ever = ctl.ever_active();
  CHECK_THROWS_WITH(ctl.restore(s), Catch::Contains("not in ever_active"));
  CHECK(ctl.digest() == digest);
  CHECK(ctl.ever_active() == ever);
}

TEST_CASE("update_scan: every ISA and thread count finds what brute force finds", "[kernels][update]") {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  std::uniform_real_distribution<double> u(0, 1);
  kernels::ScanResult r;  // reused across calls, as the controller does
  int case_no = 0;
  for (std::size_t n : {1u, 63u, 64u, 65u, 1000u, 4097u, 100003u, 300007u})
    for (double density : {0.0, 0.001, 0.01, 0.3, 1.0})
      for (auto kind :
           {kernels::RegrowKeys::none, kernels::RegrowKeys::magnitude, kernels::RegrowKeys::random}) {
        if (n > 100003 && density > 0.01) continue;
        const bool tied = ++case_no % 2 == 0;  // few distinct magnitudes, zeros, a NaN or Inf
        std::vector<float> w(n), x(n);
        BitMask mask(n), ever(n);
        for (std::size_t i = 0; i < n; ++i) {
          if (u(rng) < density) mask.set(i);
          if (u(rng) < 0.9 || mask.test(i)) ever.set(i);
          w[i] = mask.test(i) || u(rng) < 0.02 ? nd(rng) : 0.0f;
          x[i] = tied ? (u(rng) < 0.05 ? 0.0f : std::round(nd(rng) * 8) / 8) : nd(rng);
          if (tied && u(rng) < 0.001) w[i] = INFINITY;
          if (tied && u(rng) < 0.001) x[i] = std::nanf("");
        }
        const std::size_t cands = n - mask.count();
        for (double kf : {0.0005, 0.02, 1.0 / 16, 1.0}) {
          kernels::ScanPlan plan;
          if (kind != kernels::RegrowKeys::none && cands > 0) {
            plan.regrow = kind;
            plan.x = x.data();
            plan.stream = make_stream(5).derive(n);
            plan.k = std::min(cands, 1 + static_cast<std::size_t>(kf * static_cast<double>(cands)));
          }
          if (kf == 1.0) plan.active = mask.count();  // given instead of counted
          // Expected, by brute force.
          std::size_t wbad = 0, wfirst = 0, xbad = 0, xfirst = 0;
          bool zc = false, missing = false;
          std::vector<std::uint32_t> act, dirty;
          for (std::size_t i = 0; i < n; ++i) {
            if (!std::isfinite(w[i]) && wbad++ == 0) wfirst = i;
            if (mask.test(i)) {
              act.push_back(static_cast<std::uint32_t>(i));
              missing |= !ever.test(i);
            } else if (kernels::abs_key(w[i]) != 0 || std::signbit(w[i])) {
              if (dirty.empty() || dirty.back() != i / 64)
                dirty.push_back(static_cast<std::uint32_t>(i / 64));
            }
            if (plan.regrow == kernels::RegrowKeys::magnitude) {
              if (!std::isfinite(x[i]) && xbad++ == 0) xfirst = i;
              if (!mask.test(i)) zc |= x[i] == 0.0f;
            }
          }
          std::vector<std::uint32_t> best;  // the k best by brute force
          if (plan.k > 0) {
            std::vector<std::pair<std::uint32_t, std::uint32_t>> c;
            for (std::size_t i = 0; i < n; ++i)
              if (!mask.test(i)) {
                const std::uint32_t key =
                    kind == kernels::RegrowKeys::magnitude ? kernels::abs_key(x[i]) : plan.stream.bits32(i);
                c.emplace_back(~key, static_cast<std::uint32_t>(i));
              }
            std::sort(c.begin(), c.end());
            for (std::size_t j = 0; j < plan.k; ++j) best.push_back(c[j].second);
            std::sort(best.begin(), best.end());
          }
          east_test::for_each_kernel_config(
              [&](kernels::Isa isa, int threads) {
                INFO("n " << n << " density " << density << " kind " << int(kind) << " k " << plan.k
                          << " tied " << tied << " isa " << kernels::isa_name(isa) << " threads " << threads);
                kernels::update_scan(w.data(), mask.words(), ever.words(), n, plan, r);
                CHECK(r.weight_bad.count == wbad);
                if (wbad) CHECK(r.weight_bad.first == wfirst);
                CHECK(r.x_bad.count == xbad);
                if (xbad) CHECK(r.x_bad.first == xfirst);
                if (xbad) CHECK(r.x_zero_candidate == zc);
                CHECK(r.ever_missing == missing);
                CHECK(std::vector<std::uint32_t>(r.active_index.begin(), r.active_index.end()) == act);
                CHECK(std::vector<std::uint32_t>(r.dirty_words.begin(), r.dirty_words.end()) == dirty);
                for (std::size_t j = 0; j < r.active_index.size(); ++j) {
                  std::uint32_t bits;
                  std::memcpy(&bits, &w[r.active_index[j]], 4);
                  CHECK(r.active_bits[j] == bits);
                }
                // Distinct keys never leave the list incomplete; ties may (then the caller selects
                // otherwise).
                if (plan.k > 0 && (!tied || kind == kernels::RegrowKeys::random)) REQUIRE(!r.incomplete);
                if (plan.k > 0 && !r.incomplete && xbad == 0) {
                  std::vector<std::uint32_t> got;
                  kernels::select_smallest(r.top_index.data(), r.top_key.data(), r.top_count, plan.k, got);
                  CHECK(got == best);
                }
              },
              n < 100000);
        }
      }
}

TEST_CASE("kth_key equals nth_element", "[kernels][update]") {
  std::mt19937 rng(9);
  std::vector<std::uint32_t> tmp;
  for (std::size_t n : {1u, 2u, 1000u, 1025u, 5000u, 100000u})
    for (int kind = 0; kind < 4; ++kind) {
      std::vector<std::uint32_t> v(n);
      for (auto& x : v) {
        switch (kind) {
          case 0:
            x = static_cast<std::uint32_t>(rng());
            break;  // distinct, full range
          case 1:
            x = 0x80000000u | (static_cast<std::uint32_t>(rng()) % 50);
            break;  // heavy ties
          case 2:
            x = 7;
            break;  // all equal
          default:
            x = ~(0x3F000000u + static_cast<std::uint32_t>(rng() % 4096) * 977u);  // clustered
        }
      }
      for (std::size_t r : {std::size_t{0}, n / 3, n - 1}) {
        auto s = v;
        std::nth_element(s.begin(), s.begin() + static_cast<std::ptrdiff_t>(r), s.end());
        INFO("n " << n << " kind " << kind << " r " << r);
        CHECK(kernels::detail::kth_key(v.data(), n, r, tmp) == s[r]);
      }
    }
}
