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

// Candidates whose key equals `thr` (what SelectResult::equal must hold).
std::size_t count_equal(const std::vector<float>& x, const std::uint64_t* mask, Among among, std::uint32_t thr) {
  std::size_t c = 0;
  for (std::size_t i = 0; i < x.size(); ++i)
    c += east::kernels::is_candidate(mask, among, i) && east::kernels::abs_key(x[i]) == thr;
  return c;
}

void check_floats(const std::vector<float>& x, unsigned seed) {
  const std::size_t n = x.size();
  const auto mask = random_mask(n, 0.3, seed + 7);
  const Case cases[] = {{nullptr, Among::all},
                        {&mask, Among::all},
                        {&mask, Among::active},
                        {&mask, Among::inactive},
                        {nullptr, Among::active}};  // no mask: every position, as on the CPU
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
        if (k > 0) REQUIRE(got.first.equal == count_equal(x, hm, c.among, want.threshold));
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

TEST_CASE("cuda selection splits ties exactly at warp and tile boundaries", "[cuda][select]") {
  EAST_REQUIRE_GPU_OR_SKIP();
  // All keys equal (±0 mixed): ties = k, so the last taken position can be anywhere, including
  // the edges of a 32-key ballot row, of a warp's 512 keys and of a block's 4096-key tile.
  std::vector<float> x(3 * 4096 + 77, 0.0f);
  for (std::size_t i = 0; i < x.size(); i += 3) x[i] = -0.0f;
  const auto mask = random_mask(x.size(), 0.6, 11);
  for (std::size_t k : {std::size_t{1}, std::size_t{31}, std::size_t{32}, std::size_t{33}, std::size_t{511},
                        std::size_t{512}, std::size_t{513}, std::size_t{4095}, std::size_t{4096}, std::size_t{4097},
                        std::size_t{8192}, std::size_t{8193}, x.size() - 1, x.size()}) {
    for (Extreme e : {Extreme::largest, Extreme::smallest}) {
      for (const std::uint64_t* m : {static_cast<const std::uint64_t*>(nullptr), mask.data()}) {
        const Among among = m ? Among::active : Among::all;
        const std::size_t kk = m ? k / 2 : k;
        CAPTURE(k, kk, static_cast<int>(e), m != nullptr);
        const Selection want = east::kernels::reference::select_abs(x.data(), x.size(), kk, e, m, among);
        std::vector<std::uint64_t> want_bits(east::kernels::words_for(x.size()), 0);
        east::kernels::reference::mark_selected_abs(x.data(), x.size(), want, e, m, among, want_bits.data());
        const std::vector<std::uint64_t> mv = m ? mask : std::vector<std::uint64_t>{};
        const auto got = run_device(x, kk, e, m ? &mv : nullptr, among, east::cuda::select_abs,
                                    east::cuda::mark_selected_abs);
        REQUIRE(got.first.status == east::cuda::kSelectOk);
        REQUIRE(got.first.selection == want);
        REQUIRE(got.second == want_bits);
      }
    }
  }
}

TEST_CASE("cuda select/mark on a non-blocking stream, reusing temporary storage", "[cuda][select]") {
  EAST_REQUIRE_GPU_OR_SKIP();
  cudaStream_t s{};
  EAST_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const std::size_t n = 100003;
  DeviceBuffer<float> d_x(n);
  DeviceBuffer<std::uint64_t> d_out(east::kernels::words_for(n));
  DeviceBuffer<SelectResult> d_sel(1);
  std::size_t sb = 0, mb = 0;
  EAST_CUDA_CHECK(east::cuda::select_abs(nullptr, sb, d_x.get(), n, 1, Extreme::largest, nullptr, Among::all,
                                         d_sel.get(), s));
  EAST_CUDA_CHECK(east::cuda::mark_selected_abs(nullptr, mb, d_x.get(), n, d_sel.get(), Extreme::largest, nullptr,
                                                Among::all, d_out.get(), s));
  DeviceBuffer<unsigned char> temp(std::max(sb, mb));  // one buffer for both, call after call
  for (int r = 0; r < 3; ++r) {
    const auto x = random_floats(n, r == 1 ? Values::ties : Values::normal, 700 + r);
    const std::size_t k = 1000 + 20000 * static_cast<std::size_t>(r);
    const Extreme e = r == 2 ? Extreme::smallest : Extreme::largest;
    EAST_CUDA_CHECK(cudaMemcpyAsync(d_x.get(), x.data(), n * sizeof(float), cudaMemcpyHostToDevice, s));
    EAST_CUDA_CHECK(cudaMemsetAsync(d_out.get(), 0, d_out.size() * sizeof(std::uint64_t), s));
    std::size_t b = sb;
    EAST_CUDA_CHECK(
        east::cuda::select_abs(temp.get(), b, d_x.get(), n, k, e, nullptr, Among::all, d_sel.get(), s));
    b = mb;
    EAST_CUDA_CHECK(east::cuda::mark_selected_abs(temp.get(), b, d_x.get(), n, d_sel.get(), e, nullptr,
                                                  Among::all, d_out.get(), s));
    SelectResult got{};
    std::vector<std::uint64_t> bits(d_out.size());
    EAST_CUDA_CHECK(cudaMemcpyAsync(&got, d_sel.get(), sizeof got, cudaMemcpyDeviceToHost, s));
    EAST_CUDA_CHECK(
        cudaMemcpyAsync(bits.data(), d_out.get(), bits.size() * sizeof(std::uint64_t), cudaMemcpyDeviceToHost, s));
    EAST_CUDA_CHECK(cudaStreamSynchronize(s));
    const Selection want = east::kernels::reference::select_abs(x.data(), n, k, e);
    std::vector<std::uint64_t> want_bits(bits.size(), 0);
    east::kernels::reference::mark_selected_abs(x.data(), n, want, e, nullptr, Among::all, want_bits.data());
    CAPTURE(r);
    REQUIRE(got.status == east::cuda::kSelectOk);
    REQUIRE(got.selection == want);
    REQUIRE(bits == want_bits);
  }
  EAST_CUDA_CHECK(cudaStreamDestroy(s));
}

namespace {
__global__ void mod_keys_kernel(std::uint32_t* k, std::size_t n, std::uint32_t m) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    k[i] = static_cast<std::uint32_t>(i % m) * 0x00400193u;  // increasing in i % m (< 2^32 for m <= 1000)
}
}  // namespace

TEST_CASE("cuda select/mark past 2^31 keys (size_t indexing)", "[cuda][select][large]") {
  EAST_REQUIRE_GPU_OR_SKIP();
  const std::size_t n = (std::size_t{1} << 31) + 4097, words = east::kernels::words_for(n);
  std::size_t free_b = 0, total_b = 0;
  EAST_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  if (free_b < n * 4 + words * 8 + (std::size_t{1} << 30)) {
    WARN("not enough device memory for 2^31 keys: skipping");
    return;
  }
  // key(i) = f(i mod M), f increasing: every key value v < M appears at i = v, v + M, v + 2M, ...
  const std::uint32_t M = 1000;
  static_assert(999ull * 0x00400193u < (1ull << 32), "keys must not wrap");
  DeviceBuffer<std::uint32_t> d_k(n);
  mod_keys_kernel<<<4096, 256>>>(d_k.get(), n, M);
  EAST_CUDA_CHECK(cudaGetLastError());
  DeviceBuffer<std::uint64_t> d_out(words);
  d_out.zero();
  DeviceBuffer<SelectResult> d_sel(1);
  // k largest with the boundary inside value v = 997's run, past position 2^31.
  const std::size_t per = n / M, rem = n % M;  // values < rem appear per + 1 times
  auto count_of = [&](std::uint32_t v) { return per + (v < rem ? 1 : 0); };
  const std::size_t above = count_of(999) + count_of(998);
  const std::size_t ties = count_of(997) - 3;
  const std::size_t k = above + ties;
  two_phase([&](void* t, std::size_t& b) {
    return east::cuda::select_keys(t, b, d_k.get(), n, k, Extreme::largest, nullptr, Among::all, d_sel.get());
  });
  two_phase([&](void* t, std::size_t& b) {
    return east::cuda::mark_selected_keys(t, b, d_k.get(), n, d_sel.get(), Extreme::largest, nullptr, Among::all,
                                          d_out.get());
  });
  const SelectResult got = d_sel.download()[0];
  REQUIRE(got.status == east::cuda::kSelectOk);
  REQUIRE(got.candidates == n);
  REQUIRE(got.selection.k == k);
  REQUIRE(got.selection.threshold == 997u * 0x00400193u);
  REQUIRE(got.selection.ties == ties);
  REQUIRE(got.equal == count_of(997));
  const auto bits = d_out.download();
  std::size_t wrong = 0, taken = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint32_t v = static_cast<std::uint32_t>(i % M);
    const bool want = v > 997 || (v == 997 && i / M < ties);
    const bool is = (bits[i >> 6] >> (i & 63)) & 1u;
    wrong += want != is;
    taken += is;
  }
  REQUIRE(wrong == 0);
  REQUIRE(taken == k);
}
