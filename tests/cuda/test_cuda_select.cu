// CUDA radix selection and marking vs the scalar reference: same Selection, same mask bits, on
// normal values, heavy ties, NaN/Inf/±0, raw uint32 keys, every Among, k = 0, 1, all, too many.
#include <east/cuda/select.cuh>
#include <east/kernels/reference/select.hpp>

#include "cuda_test_helpers.cuh"

namespace {

using east::cuda::SelectResult;
using east::kernels::Among;
using east::kernels::Extreme;
using east::kernels::Selection;
using namespace east_cuda_test;

struct Case {
  const std::vector<std::uint64_t>* mask;  // null: no mask
  Among among;
};

// Runs select + mark on the device; returns the result and the mask words.
template <class T, class Select, class Mark>
std::pair<SelectResult, std::vector<std::uint64_t>> run_device(const std::vector<T>& host, std::size_t k,
                                                               Extreme e,
                                                               const std::vector<std::uint64_t>* mask,
                                                               Among among, Select select, Mark mark) {
  const std::size_t n = host.size();
  DeviceBuffer<T> d_x(host);
  DeviceBuffer<std::uint64_t> d_mask(mask ? *mask : std::vector<std::uint64_t>{});
  DeviceBuffer<std::uint64_t> d_out(east::kernels::words_for(n));
  d_out.zero();
  DeviceBuffer<SelectResult> d_sel(1);
  const std::uint64_t* m = mask ? d_mask.get() : nullptr;
  two_phase([&](void* t, std::size_t& b) {
    return select(t, b, d_x.get(), n, k, e, m, among, d_sel.get(), cudaStream_t{});
  });
  two_phase([&](void* t, std::size_t& b) {
    return mark(t, b, d_x.get(), n, d_sel.get(), e, m, among, d_out.get(), cudaStream_t{});
  });
  return {d_sel.download()[0], d_out.download()};
}

void check_floats(const std::vector<float>& x, unsigned seed) {
  const std::size_t n = x.size();
  const auto mask = random_mask(n, 0.3, seed + 7);
  const Case cases[] = {
      {nullptr, Among::all}, {&mask, Among::all}, {&mask, Among::active}, {&mask, Among::inactive}};
  std::mt19937 rng(seed);
  for (const auto& c : cases) {
    const std::uint64_t* hm = c.mask ? c.mask->data() : nullptr;
    const std::size_t cand = count_candidates(mask, n, hm, c.among);
    std::vector<std::size_t> ks = {0, 1, cand / 2, cand};
    if (cand > 0) ks.push_back(std::uniform_int_distribution<std::size_t>(0, cand)(rng));
    for (Extreme e : {Extreme::largest, Extreme::smallest}) {
      for (std::size_t k : ks) {
        if (k > cand) continue;
        CAPTURE(n, k, cand, static_cast<int>(e), static_cast<int>(c.among), c.mask != nullptr);
        const Selection want = east::kernels::reference::select_abs(x.data(), n, k, e, hm, c.among);
        std::vector<std::uint64_t> want_bits(east::kernels::words_for(n), 0);
        east::kernels::reference::mark_selected_abs(x.data(), n, want, e, hm, c.among, want_bits.data());
        const auto got =
            run_device(x, k, e, c.mask, c.among, east::cuda::select_abs, east::cuda::mark_selected_abs);
        REQUIRE(got.first.status == east::cuda::kSelectOk);
        REQUIRE(got.first.candidates == cand);
        REQUIRE(got.first.selection == want);
        REQUIRE(got.second == want_bits);
      }
      // One more than the candidates: a status, nothing marked, and check_selection throws.
      const auto bad =
          run_device(x, cand + 1, e, c.mask, c.among, east::cuda::select_abs, east::cuda::mark_selected_abs);
      REQUIRE(bad.first.status == east::cuda::kSelectBadK);
      REQUIRE_THROWS_AS(east::cuda::check_selection(bad.first), east::InvalidArgument);
      for (auto w : bad.second) REQUIRE(w == 0);
    }
  }
}

}  // namespace

TEST_CASE("cuda select_abs/mark_selected_abs equal the reference", "[cuda][select]") {
  EAST_REQUIRE_GPU_OR_SKIP();
  unsigned seed = 1;
  for (std::size_t n : test_sizes()) {
    for (Values v : {Values::normal, Values::ties, Values::special}) {
      if (n > 100000 && v == Values::special) continue;  // keep the run short
      check_floats(random_floats(n, v, seed), seed);
      ++seed;
    }
  }
}

TEST_CASE("cuda select_keys/mark_selected_keys equal the reference on full 32-bit keys", "[cuda][select]") {
  EAST_REQUIRE_GPU_OR_SKIP();
  std::mt19937 rng(42);
  for (std::size_t n : {std::size_t{1}, std::size_t{100}, std::size_t{4097}, std::size_t{300001}}) {
    for (int kind = 0; kind < 3; ++kind) {
      std::vector<std::uint32_t> keys(n);
      for (auto& k : keys)
        k = kind == 0   ? static_cast<std::uint32_t>(rng())                    // full range
            : kind == 1 ? static_cast<std::uint32_t>(rng() % 5) * 0x40000001u  // ties, top bit set
                        : (rng() % 2 ? 0xFFFFFFFFu : 0u);                      // two extremes
      const auto mask = random_mask(n, 0.5, static_cast<unsigned>(n) + kind);
      for (Among among : {Among::all, Among::active, Among::inactive}) {
        const std::size_t cand = count_candidates(mask, n, mask.data(), among);
        for (Extreme e : {Extreme::largest, Extreme::smallest}) {
          for (std::size_t k : {std::size_t{0}, std::size_t{1}, cand / 3, cand}) {
            CAPTURE(n, kind, k, static_cast<int>(e), static_cast<int>(among));
            const Selection want =
                east::kernels::reference::select_keys(keys.data(), n, k, e, mask.data(), among);
            std::vector<std::uint64_t> want_bits(east::kernels::words_for(n), 0);
            east::kernels::reference::mark_selected_keys(keys.data(), n, want, e, mask.data(), among,
                                                         want_bits.data());
            const auto got =
                run_device(keys, k, e, &mask, among, east::cuda::select_keys, east::cuda::mark_selected_keys);
            REQUIRE(got.first.status == east::cuda::kSelectOk);
            REQUIRE(got.first.selection == want);
            REQUIRE(got.second == want_bits);
          }
        }
      }
    }
  }
}

TEST_CASE("cuda selection is deterministic across runs", "[cuda][select]") {
  EAST_REQUIRE_GPU_OR_SKIP();
  const auto x = random_floats(2000003, Values::ties, 9);
  const auto a = run_device(x, 777777, Extreme::largest, nullptr, Among::all, east::cuda::select_abs,
                            east::cuda::mark_selected_abs);
  for (int r = 0; r < 3; ++r) {
    const auto b = run_device(x, 777777, Extreme::largest, nullptr, Among::all, east::cuda::select_abs,
                              east::cuda::mark_selected_abs);
    REQUIRE(b.first.selection == a.first.selection);
    REQUIRE(b.second == a.second);
  }
}

TEST_CASE("cuda select with n = 0", "[cuda][select]") {
  EAST_REQUIRE_GPU_OR_SKIP();
  const std::vector<float> empty;
  const auto got = run_device(empty, 0, Extreme::largest, nullptr, Among::all, east::cuda::select_abs,
                              east::cuda::mark_selected_abs);
  REQUIRE(got.first.status == east::cuda::kSelectOk);
  REQUIRE(got.first.selection.k == 0);
  const auto bad = run_device(empty, 1, Extreme::largest, nullptr, Among::all, east::cuda::select_abs,
                              east::cuda::mark_selected_abs);
  REQUIRE(bad.first.status == east::cuda::kSelectBadK);
}
