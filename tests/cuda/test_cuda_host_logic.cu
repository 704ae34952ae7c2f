// Host-side checks of the CUDA backend's logic, run everywhere (no GPU needed): the kernels'
// per-thread pieces are __host__ __device__ functions (radix digits and prefixes, the scan's
// digit choice, tile/warp/word arithmetic, tie ranking, the SGD step, the sharing dot's lanes,
// DyReLU-B's hyper-network), and here they drive a host emulation of each kernel, thread by
// thread and warp by warp in the kernels' own layout, compared with the CPU reference with
// exact equality. What this cannot cover is CUDA's own machinery (atomics, ballots, CUB scans,
// launches); tests/cuda/test_cuda_*.cu check that against the same references on a GPU.
#include <east/activations/dyrelu.hpp>
#include <east/cuda/dyrelu.cuh>
#include <east/cuda/mask.cuh>
#include <east/cuda/mask_update.cuh>
#include <east/cuda/select.cuh>
#include <east/cuda/sharing.cuh>
#include <east/kernels/reference/select.hpp>
#include <east/kernels/reference/sgd.hpp>
#include <east/sharing/shared_weight.hpp>

#include "cuda_test_helpers.cuh"

using namespace east_cuda_test;
using east::cuda::SelectResult;
using east::kernels::Among;
using east::kernels::Extreme;
using east::kernels::Selection;
namespace cd = east::cuda::detail;

namespace {

// ---- Emulation of select_impl: radix_hist_kernel + radix_scan_kernel, pass by pass.
template <class Src>
SelectResult emulate_select(Src src, std::size_t n, std::size_t k, Extreme ext, const std::uint64_t* mask,
                            Among among) {
  SelectResult out{};
  cd::SelectState st{};
  for (int pass = 0; pass < cd::kPasses; ++pass) {
    std::vector<unsigned long long> hist(cd::kBins, 0);
    if (pass == 0 || !st.finished) {  // radix_hist_kernel (every block, every tile)
      const std::uint32_t prefix = pass > 0 ? st.prefix : 0u;
      for (std::size_t t = 0; t < cd::div_up(n, cd::kTile); ++t)
        for (int warp = 0; warp < cd::kWarps; ++warp)
          for (int j = 0; j < cd::kItems; ++j)
            for (int lane = 0; lane < 32; ++lane) {
              const std::size_t i = cd::tile_pos(t, warp, j, lane);
              if (i < n && cd::candidate(mask, among, i)) {
                const std::uint32_t key = cd::ordered(src(i), ext);
                if (cd::radix_in_prefix(key, prefix, pass)) {
                  const std::uint32_t d = cd::radix_digit(key, pass);
                  REQUIRE(d < static_cast<std::uint32_t>(cd::kBins));
                  ++hist[d];
                }
              }
            }
    }
    // radix_scan_kernel: kThreads threads of kScanPer bins, an exclusive scan of their sums.
    unsigned long long c[cd::kThreads][cd::kScanPer], above[cd::kThreads], total = 0;
    for (int t = 0; t < cd::kThreads; ++t) {
      above[t] = total;
      for (int j = 0; j < cd::kScanPer; ++j) total += (c[t][j] = hist[cd::scan_bin(t, j)]);
    }
    if (pass == 0) {
      out.selection.threshold = 0;
      out.selection.ties = 0;
      out.selection.k = k;
      out.candidates = total;
      out.equal = 0;
      out.status = k > total ? east::cuda::kSelectBadK : east::cuda::kSelectOk;
      st.prefix = 0;
      st.k_left = k;
      st.finished = (k == 0 || k > total) ? 1 : 0;
    }
    if (st.finished) continue;
    const unsigned long long kl = st.k_left;
    const std::uint32_t p0 = st.prefix;
    int found = 0;
    for (int t = 0; t < cd::kThreads; ++t) {
      unsigned long long before = 0, count = 0;
      const int j = cd::kth_slot(c[t], above[t], kl, &before, &count);
      if (j < 0) continue;
      ++found;
      const std::uint32_t prefix = cd::radix_extend(p0, cd::scan_bin(t, j), pass);
      if (pass == cd::kPasses - 1) {
        out.selection.threshold = cd::ordered(prefix, ext);
        out.selection.ties = static_cast<std::size_t>(kl - before);
        REQUIRE(count == c[t][j]);
        out.equal = count;
        st.finished = 1;
      } else {
        st.prefix = prefix;
        st.k_left = kl - before;
      }
    }
    REQUIRE(found == 1);  // exactly one scan thread writes the state
  }
  return out;
}

// ---- Emulation of mark_impl: tie_count_kernel, the exclusive scan, mark_kernel (ballots).
template <class Src>
std::vector<std::uint64_t> emulate_mark(Src src, std::size_t n, const SelectResult& sel, Extreme ext,
                                        const std::uint64_t* mask, Among among) {
  const std::size_t words = cd::words_for(n), tiles = cd::div_up(n, cd::kTile);
  std::vector<std::uint64_t> out(words, 0);
  if (n == 0 || sel.status != east::cuda::kSelectOk || sel.selection.k == 0) return out;
  const unsigned long long ties = sel.selection.ties;
  const std::uint32_t thr = sel.selection.threshold, othr = cd::ordered(thr, ext);
  const bool all_ties = ties >= sel.equal;
  std::vector<unsigned long long> counts(tiles, 0), offsets(tiles, 0);
  if (!all_ties)
    for (std::size_t t = 0; t < tiles; ++t)
      for (int warp = 0; warp < cd::kWarps; ++warp)
        for (int j = 0; j < cd::kItems; ++j)
          for (int lane = 0; lane < 32; ++lane) {
            const std::size_t i = cd::tile_pos(t, warp, j, lane);
            counts[t] += (i < n && cd::candidate(mask, among, i) && src(i) == thr) ? 1u : 0u;
          }
  for (std::size_t t = 1; t < tiles; ++t) offsets[t] = offsets[t - 1] + counts[t - 1];
  std::vector<bool> written(words, false);
  for (std::size_t t = 0; t < tiles; ++t) {
    std::uint32_t take[cd::kWarps][cd::kItems] = {}, eq[cd::kWarps][cd::kItems] = {};
    unsigned long long weq[cd::kWarps] = {};
    for (int warp = 0; warp < cd::kWarps; ++warp)
      for (int j = 0; j < cd::kItems; ++j) {
        for (int lane = 0; lane < 32; ++lane) {  // the two ballots
          const std::size_t i = cd::tile_pos(t, warp, j, lane);
          const bool c = i < n && cd::candidate(mask, among, i);
          const std::uint32_t key = c ? src(i) : 0u;
          if (c && cd::ordered(key, ext) > othr) take[warp][j] |= 1u << lane;
          if (c && key == thr) eq[warp][j] |= 1u << lane;
        }
        weq[warp] += static_cast<unsigned long long>(cd::popcount32(eq[warp][j]));
      }
    for (int warp = 0; warp < cd::kWarps; ++warp) {
      if (all_ties) {
        for (int j = 0; j < cd::kItems; ++j) take[warp][j] |= eq[warp][j];
      } else {
        unsigned long long rank = offsets[t];
        for (int w = 0; w < warp; ++w) rank += weq[w];
        cd::take_ties(take[warp], eq[warp], rank, ties);
      }
      for (int m = 0; m < cd::kItems / 2; ++m) {  // lane m writes word m of its warp
        const std::uint64_t word = cd::ballot_word(take[warp][2 * m], take[warp][2 * m + 1]);
        const std::size_t w = cd::tile_word(t, warp, m);
        if (w < words) {
          REQUIRE(!written[w]);  // one writer per word
          written[w] = true;
          if (word != 0) out[w] |= word;
        } else {
          REQUIRE(word == 0);  // nothing selected past n
        }
      }
    }
  }
  for (std::size_t w = 0; w < words; ++w) REQUIRE(written[w]);  // every word has its writer
  return out;
}

template <class Key, class Src, class RefSel, class RefMark>
void check_selection_emulation(const std::vector<Key>& x, Src src, std::size_t k, Extreme e,
                               const std::uint64_t* mask, Among among, RefSel ref_select, RefMark ref_mark) {
  const std::size_t n = x.size();
  std::size_t cand = 0;
  for (std::size_t i = 0; i < n; ++i) cand += east::kernels::is_candidate(mask, among, i);
  CAPTURE(n, k, cand, static_cast<int>(e), static_cast<int>(among), mask != nullptr);
  const SelectResult got = emulate_select(src, n, k, e, mask, among);
  REQUIRE(got.candidates == cand);
  if (k > cand) {
    REQUIRE(got.status == east::cuda::kSelectBadK);
    REQUIRE_THROWS_AS(east::cuda::check_selection(got), east::InvalidArgument);
    REQUIRE_THROWS_AS(ref_select(x.data(), n, k, e, mask, among), east::InvalidArgument);
    for (auto w : emulate_mark(src, n, got, e, mask, among)) REQUIRE(w == 0);
    return;
  }
  REQUIRE(got.status == east::cuda::kSelectOk);
  REQUIRE_NOTHROW(east::cuda::check_selection(got));
  const Selection want = ref_select(x.data(), n, k, e, mask, among);
  REQUIRE(got.selection == want);
  if (k > 0) {
    REQUIRE(got.selection.threshold == want.threshold);
    REQUIRE(got.selection.ties == want.ties);
    std::size_t equal = 0;
    for (std::size_t i = 0; i < n; ++i)
      equal += east::kernels::is_candidate(mask, among, i) && src(i) == want.threshold;
    REQUIRE(got.equal == equal);
  }
  std::vector<std::uint64_t> want_bits(east::kernels::words_for(n), 0);
  ref_mark(x.data(), n, want, e, mask, among, want_bits.data());
  REQUIRE(emulate_mark(src, n, got, e, mask, among) == want_bits);
}

void check_floats(const std::vector<float>& x, unsigned seed) {
  const std::size_t n = x.size();
  const auto mask = random_mask(n, 0.3, seed + 7);
  std::mt19937 rng(seed);
  struct Case {
    const std::uint64_t* mask;
    Among among;
  };
  const Case cases[] = {{nullptr, Among::all},          {mask.data(), Among::all},
                        {mask.data(), Among::active},   {mask.data(), Among::inactive},
                        {nullptr, Among::active}};
  for (const auto& c : cases) {
    std::size_t cand = 0;
    for (std::size_t i = 0; i < n; ++i) cand += east::kernels::is_candidate(c.mask, c.among, i);
    std::vector<std::size_t> ks = {0, 1, cand / 2, cand, cand + 1};
    if (cand > 0) ks.push_back(std::uniform_int_distribution<std::size_t>(0, cand)(rng));
    for (Extreme e : {Extreme::largest, Extreme::smallest})
      for (std::size_t k : ks)
        check_selection_emulation(
            x, cd::AbsKeys{x.data()}, k, e, c.mask, c.among,
            [](const float* p, std::size_t nn, std::size_t kk, Extreme ee, const std::uint64_t* m, Among a) {
              return east::kernels::reference::select_abs(p, nn, kk, ee, m, a);
            },
            [](const float* p, std::size_t nn, const Selection& s, Extreme ee, const std::uint64_t* m, Among a,
               std::uint64_t* o) { east::kernels::reference::mark_selected_abs(p, nn, s, ee, m, a, o); });
  }
}

void check_floats_one(const std::vector<float>& x, std::size_t k, Extreme e, const std::uint64_t* mask,
                      Among among) {
  check_selection_emulation(
      x, cd::AbsKeys{x.data()}, k, e, mask, among,
      [](const float* p, std::size_t nn, std::size_t kk, Extreme ee, const std::uint64_t* m, Among a) {
        return east::kernels::reference::select_abs(p, nn, kk, ee, m, a);
      },
      [](const float* p, std::size_t nn, const Selection& s, Extreme ee, const std::uint64_t* m, Among a,
         std::uint64_t* o) { east::kernels::reference::mark_selected_abs(p, nn, s, ee, m, a, o); });
}

auto ref_select_keys = [](const std::uint32_t* p, std::size_t nn, std::size_t kk, Extreme ee,
                          const std::uint64_t* m, Among a) {
  return east::kernels::reference::select_keys(p, nn, kk, ee, m, a);
};
auto ref_mark_keys = [](const std::uint32_t* p, std::size_t nn, const Selection& s, Extreme ee,
                        const std::uint64_t* m, Among a, std::uint64_t* o) {
  east::kernels::reference::mark_selected_keys(p, nn, s, ee, m, a, o);
};

}  // namespace

TEST_CASE("host: radix digits partition the key and the prefix test matches", "[cuda][host][select]") {
  REQUIRE(cd::pass_bits(0) + cd::pass_bits(1) + cd::pass_bits(2) == 32);
  REQUIRE(cd::pass_shift(2) == 0);
  REQUIRE(cd::pass_shift(1) == cd::pass_bits(2));
  REQUIRE(cd::pass_shift(0) == cd::pass_bits(2) + cd::pass_bits(1));
  REQUIRE((1 << cd::pass_bits(0)) <= cd::kBins);
  REQUIRE(cd::kBins % cd::kThreads == 0);
  std::mt19937 rng(1);
  for (int r = 0; r < 100000; ++r) {
    const std::uint32_t key = static_cast<std::uint32_t>(rng()), other = static_cast<std::uint32_t>(rng());
    std::uint32_t prefix = 0;
    for (int p = 0; p < cd::kPasses; ++p) {
      REQUIRE(cd::radix_in_prefix(key, prefix, p));
      prefix = cd::radix_extend(prefix, cd::radix_digit(key, p), p);
    }
    REQUIRE(prefix == key);
    // A key differing above pass p's digit is outside pass p's prefix.
    for (int p = 1; p < cd::kPasses; ++p) {
      const int hi = cd::pass_shift(p) + cd::pass_bits(p);
      REQUIRE(cd::radix_in_prefix(other, key, p) == ((other >> hi) == (key >> hi)));
    }
    REQUIRE(cd::ordered(cd::ordered(key, Extreme::smallest), Extreme::smallest) == key);
  }
  // Scan bins: a permutation of 0..kBins-1, best (highest) first.
  std::vector<int> seen(cd::kBins, 0);
  for (int t = 0; t < cd::kThreads; ++t)
    for (int j = 0; j < cd::kScanPer; ++j) ++seen[cd::scan_bin(t, j)];
  for (int b = 0; b < cd::kBins; ++b) REQUIRE(seen[b] == 1);
  REQUIRE(cd::scan_bin(0, 0) == static_cast<std::uint32_t>(cd::kBins - 1));
}

TEST_CASE("host: device keys and candidates are the CPU's", "[cuda][host][select]") {
  const auto x = random_floats(20000, Values::special, 3);
  const auto m = random_mask(x.size(), 0.5, 4);
  for (std::size_t i = 0; i < x.size(); ++i) {
    REQUIRE(cd::abs_bits(x[i]) == east::kernels::abs_key(x[i]));
    REQUIRE(cd::nonfinite_key(cd::abs_bits(x[i])) == !std::isfinite(x[i]));
    for (Among a : {Among::all, Among::active, Among::inactive}) {
      REQUIRE(cd::candidate(m.data(), a, i) == east::kernels::is_candidate(m.data(), a, i));
      REQUIRE(cd::candidate(nullptr, a, i));
    }
  }
  REQUIRE(cd::abs_bits(-0.0f) == cd::abs_bits(0.0f));
  REQUIRE(cd::abs_bits(std::numeric_limits<float>::quiet_NaN()) > cd::abs_bits(INFINITY));
}

TEST_CASE("host: tile, warp and word arithmetic", "[cuda][host][select]") {
  // Every position of a tile is visited once, each warp's words hold exactly its positions.
  std::vector<int> seen(cd::kTile * 2, 0);
  for (std::size_t t = 0; t < 2; ++t)
    for (int w = 0; w < cd::kWarps; ++w)
      for (int j = 0; j < cd::kItems; ++j)
        for (int l = 0; l < 32; ++l) {
          const std::size_t i = cd::tile_pos(t, w, j, l);
          REQUIRE(i < seen.size());
          ++seen[i];
          // Position i lands in word tile_word(t, w, j / 2), bit (j % 2) * 32 + l of it.
          REQUIRE(i / 64 == cd::tile_word(t, w, j / 2));
          REQUIRE(i % 64 == static_cast<std::size_t>((j % 2) * 32 + l));
        }
  for (int s : seen) REQUIRE(s == 1);
  // Large positions: no 32-bit overflow in the arithmetic (n up to and past 2^32).
  const std::size_t big_tile = (std::size_t{1} << 33) / cd::kTile + 5;
  REQUIRE(cd::tile_pos(big_tile, 7, 15, 31) == big_tile * cd::kTile + 7 * 512 + 15 * 32 + 31);
  REQUIRE(cd::tile_word(big_tile, 7, 7) == (big_tile * cd::kTile + 7 * 512) / 64 + 7);
  REQUIRE(cd::div_up(std::size_t{1} << 40, cd::kTile) == (std::size_t{1} << 40) / 4096);
  REQUIRE(cd::words_for((std::size_t{1} << 31) + 1) == (std::size_t{1} << 25) + 1);
  REQUIRE(cd::ballot_word(0x1u, 0x80000000u) == ((std::uint64_t{1} << 63) | 1u));
}

TEST_CASE("host: lowest_bits and take_ties rank equal keys by position", "[cuda][host][select]") {
  std::mt19937 rng(5);
  for (int r = 0; r < 20000; ++r) {
    const std::uint32_t x = static_cast<std::uint32_t>(rng()) & static_cast<std::uint32_t>(rng());
    const int pc = cd::popcount32(x);
    REQUIRE(pc == __builtin_popcount(x));
    const unsigned long long cnt = static_cast<unsigned long long>(rng() % (pc + 1));
    const std::uint32_t t = cd::lowest_bits(x, cnt);
    REQUIRE((t & ~x) == 0u);
    REQUIRE(static_cast<unsigned long long>(__builtin_popcount(t)) == cnt);
    // every bit of x below the highest taken bit is taken
    if (t != 0) {
      const int hi = 31 - __builtin_clz(t);
      const std::uint32_t below = hi == 31 ? 0xFFFFFFFFu : ((1u << (hi + 1)) - 1u);
      REQUIRE((x & below) == t);
    }
  }
  // take_ties against a position-by-position count.
  for (int r = 0; r < 5000; ++r) {
    std::uint32_t eq[cd::kItems], take[cd::kItems] = {};
    unsigned long long total = 0;
    for (auto& e : eq) {
      e = static_cast<std::uint32_t>(rng()) & static_cast<std::uint32_t>(rng());
      total += static_cast<unsigned long long>(__builtin_popcount(e));
    }
    const unsigned long long rank = rng() % 300, ties = rng() % (rank + total + 50);
    cd::take_ties(take, eq, rank, ties);
    unsigned long long rk = rank;
    for (int j = 0; j < cd::kItems; ++j)
      for (int l = 0; l < 32; ++l) {
        const bool is_eq = (eq[j] >> l) & 1u, taken = (take[j] >> l) & 1u;
        REQUIRE(taken == (is_eq && rk < ties));
        rk += is_eq;
      }
  }
}

TEST_CASE("host: emulated radix select and mark equal the reference (floats)", "[cuda][host][select]") {
  unsigned seed = 1;
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{2}, std::size_t{31}, std::size_t{32},
                        std::size_t{33}, std::size_t{63}, std::size_t{64}, std::size_t{65}, std::size_t{511},
                        std::size_t{512}, std::size_t{513}, std::size_t{4095}, std::size_t{4096},
                        std::size_t{4097}, std::size_t{3 * 4096 + 77}, std::size_t{40009}}) {
    for (Values v : {Values::normal, Values::ties, Values::special}) {
      check_floats(random_floats(n, v, seed), seed);
      ++seed;
    }
  }
}

TEST_CASE("host: emulated selection splits ties exactly at warp and tile boundaries", "[cuda][host][select]") {
  // All keys equal: ties = k, and the k-th candidate may sit anywhere, including at the edges of
  // a warp's 32-key row, of a warp's 512 keys and of a block's 4096-key tile.
  for (float value : {0.0f, -0.0f, 1.0f}) {
    std::vector<float> x(3 * 4096 + 77, value);
    if (value == -0.0f)  // ±0 are one key
      for (std::size_t i = 0; i < x.size(); i += 3) x[i] = 0.0f;
    const auto mask = random_mask(x.size(), 0.6, 11);
    for (std::size_t k : {std::size_t{1}, std::size_t{31}, std::size_t{32}, std::size_t{33}, std::size_t{511},
                          std::size_t{512}, std::size_t{513}, std::size_t{4095}, std::size_t{4096},
                          std::size_t{4097}, std::size_t{8192}, std::size_t{8193}, x.size() - 1, x.size()}) {
      for (Extreme e : {Extreme::largest, Extreme::smallest}) {
        check_floats_one(x, k, e, nullptr, Among::all);
        check_floats_one(x, k / 2, e, mask.data(), Among::active);
      }
    }
  }
}

TEST_CASE("host: emulated radix select and mark equal the reference (uint32 keys)", "[cuda][host][select]") {
  std::mt19937 rng(42);
  for (std::size_t n : {std::size_t{1}, std::size_t{100}, std::size_t{4097}, std::size_t{20011}}) {
    for (int kind = 0; kind < 4; ++kind) {
      std::vector<std::uint32_t> keys(n);
      for (auto& k : keys)
        k = kind == 0   ? static_cast<std::uint32_t>(rng())                    // full range
            : kind == 1 ? static_cast<std::uint32_t>(rng() % 5) * 0x40000001u  // ties, top bit set
            : kind == 2 ? (rng() % 2 ? 0xFFFFFFFFu : 0u)                       // two extremes
                        : 0x12345000u + static_cast<std::uint32_t>(rng() % 3) * 0x400u;  // differ in pass 1 only
      const auto mask = random_mask(n, 0.5, static_cast<unsigned>(n) + kind);
      for (Among among : {Among::all, Among::active, Among::inactive}) {
        std::size_t cand = 0;
        for (std::size_t i = 0; i < n; ++i) cand += east::kernels::is_candidate(mask.data(), among, i);
        for (Extreme e : {Extreme::largest, Extreme::smallest})
          for (std::size_t k : {std::size_t{0}, std::size_t{1}, cand / 3, cand, cand + 1})
            check_selection_emulation(keys, cd::RawKeys{keys.data()}, k, e, mask.data(), among, ref_select_keys,
                                      ref_mark_keys);
      }
    }
  }
}

TEST_CASE("host: the SGD step and histogram bin equal the reference bit for bit", "[cuda][host][sgd]") {
  using east::kernels::SgdParams;
  const SgdParams params[] = {
      {0.1f, 0.0f, 0.0f, 0.0f, false},    {0.05f, 0.9f, 0.0f, 0.0f, false}, {0.05f, 0.9f, 0.0f, 5e-4f, true},
      {0.01f, 0.9f, 0.1f, 1e-4f, false},  {0.3f, 0.0f, 0.0f, 1e-2f, false}, {0.02f, 0.99f, 0.5f, 0.0f, false},
      {1e-3f, 0.5f, 0.0f, 3e-3f, true},
  };
  unsigned seed = 100;
  for (const auto& p : params) {
    for (Values v : {Values::normal, Values::special}) {
      const std::size_t n = 5000;
      const auto w0 = random_floats(n, v, seed++), g = random_floats(n, v, seed++);
      const auto b0 = random_floats(n, Values::normal, seed++);
      const auto mask = random_mask(n, 0.6, seed++);
      const bool mom = p.momentum != 0.0f;
      auto w = w0, b = b0;
      std::vector<std::uint64_t> h(east::kernels::kHistBins, 0);
      for (int s = 0; s < 2; ++s)
        east::kernels::reference::masked_sgd(w.data(), g.data(), mom ? b.data() : nullptr, mask.data(), n, p,
                                             h.data());
      // masked_sgd_kernel's body, element by element
      auto ew = w0, eb = b0;
      std::vector<std::uint64_t> eh(east::kernels::kHistBins, 0);
      for (int s = 0; s < 2; ++s)
        for (std::size_t i = 0; i < n; ++i) {
          if (!cd::bit_at(mask.data(), i)) {
            ew[i] = 0.0f;
            if (mom) eb[i] = 0.0f;
            continue;
          }
          float bb = mom ? eb[i] : 0.0f;
          const float wn = cd::sgd_step(ew[i], g[i], bb, p);
          if (mom) eb[i] = bb;
          ew[i] = wn;
          REQUIRE(cd::sgd_hist_bin(wn) == east::kernels::hist_bin(east::kernels::abs_key(wn)));
          ++eh[cd::sgd_hist_bin(wn)];
        }
      CAPTURE(p.lr, p.momentum, p.dampening, p.weight_decay, p.nesterov, static_cast<int>(v));
      REQUIRE(float_bits(ew) == float_bits(w));
      if (mom) REQUIRE(float_bits(eb) == float_bits(b));
      REQUIRE(eh == h);
    }
  }
}

TEST_CASE("host: the sharing dot's lanes reproduce east::shared_dot bit for bit", "[cuda][host][sharing]") {
  unsigned seed = 200;
  const std::size_t C = east::detail::kSharedDotChunk;
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{8}, std::size_t{9},
                        C - 1, C, C + 1, 2 * C, 3 * C + 5, std::size_t{100003}}) {
    CAPTURE(n);
    const auto a = random_floats(n, Values::normal, seed++), b = random_floats(n, Values::normal, seed++);
    const std::size_t chunks = cd::div_up(n, C);
    std::vector<double> lanes(8 * (chunks > 0 ? chunks : 1));
    for (std::size_t gid = 0; gid < chunks * 8; ++gid) lanes[gid] = cd::dot_lane(a.data(), b.data(), n, gid >> 3, gid & 7);
    const double got = cd::dot_combine(lanes.data(), chunks), want = east::shared_dot(a.data(), b.data(), n);
    REQUIRE(std::memcmp(&got, &want, sizeof got) == 0);
    // double inputs: products are not exact, the order still is the CPU's
    std::vector<double> ad(a.begin(), a.end()), bd(b.begin(), b.end());
    for (std::size_t i = 0; i < n; ++i) ad[i] *= 1.0 + 1e-9 * static_cast<double>(i % 13);
    for (std::size_t gid = 0; gid < chunks * 8; ++gid) lanes[gid] = cd::dot_lane(ad.data(), bd.data(), n, gid >> 3, gid & 7);
    const double got_d = cd::dot_combine(lanes.data(), chunks), want_d = east::shared_dot(ad.data(), bd.data(), n);
    REQUIRE(std::memcmp(&got_d, &want_d, sizeof got_d) == 0);
  }
}

TEST_CASE("host: DyReLU-B per-thread pieces equal the CPU's forward and backward", "[cuda][host][dyrelu]") {
  struct Shape {
    int B, C, H, W, hidden;
  };
  unsigned seed = 300;
  for (const Shape s : {Shape{3, 8, 5, 7, 0}, Shape{2, 40, 3, 11, 0}, Shape{1, 3, 1, 1, 0}, Shape{2, 5, 4, 4, 7}}) {
    for (double beta : {0.37, 1.0}) {
      CAPTURE(s.B, s.C, s.H, s.W, s.hidden, beta);
      const auto sz = east::dyrelu_sizes(s.C, s.hidden);
      const int hidden = sz.hidden;
      const std::int64_t hw = static_cast<std::int64_t>(s.H) * s.W, planes = std::int64_t{s.B} * s.C;
      const std::size_t total = static_cast<std::size_t>(planes * hw);
      auto flat = random_floats(sz.total, Values::normal, seed++);
      for (auto& v : flat) v *= 0.5f;
      const auto x = random_floats(total, Values::normal, seed++), dy = random_floats(total, Values::normal, seed++);
      const auto p = east::dyrelu_params_from_flat(flat.data(), s.C, s.hidden);
      std::vector<float> y(total), dx(total), gflat(sz.total, 0.0f);
      east::DyReLUWorkspace<float> ws;
      east::dyrelu_forward(p, x.data(), y.data(), s.B, s.C, s.H, s.W, beta, ws);
      const std::vector<float> theta(ws.theta.begin(), ws.theta.begin() + planes);
      const std::vector<float> u(ws.u.begin(), ws.u.begin() + s.B * hidden);
      const std::vector<float> d(ws.d.begin(), ws.d.begin() + 4 * planes);
      const std::vector<float> coef(ws.coef.begin(), ws.coef.begin() + 4 * planes);
      const auto gr = east::dyrelu_grads_from_flat(gflat.data(), s.C, s.hidden);
      east::dyrelu_backward(p, x.data(), dy.data(), dx.data(), s.B, s.C, s.H, s.W, ws, &gr);
      const float tb = static_cast<float>(beta);
      // forward: dyrelu_hyper_forward_kernel and dyrelu_apply_kernel from the CPU's theta
      std::vector<float> eu(u.size()), ed(d.size()), ecoef(coef.size()), ey(total);
      for (int b = 0; b < s.B; ++b) {
        for (int i = 0; i < hidden; ++i) eu[b * hidden + i] = cd::dyrelu_hidden_unit(p, s.C, theta.data() + b * s.C, i);
        for (int o = 0; o < 4 * s.C; ++o) {
          const std::int64_t k = std::int64_t{b} * 4 * s.C + o;
          ecoef[k] = cd::dyrelu_output_unit(p, hidden, tb, eu.data() + b * hidden, o, ed.data() + k);
        }
      }
      for (std::size_t i = 0; i < total; ++i) ey[i] = cd::dyrelu_value(ecoef.data() + (i / hw) * 4, x[i]);
      REQUIRE(float_bits(eu) == float_bits(u));
      REQUIRE(float_bits(ed) == float_bits(d));
      REQUIRE(float_bits(ecoef) == float_bits(coef));
      REQUIRE(float_bits(ey) == float_bits(y));
      // backward: coefficient gradients (the CPU's per-plane sums), then the hyper-network backward
      std::vector<float> dz(4 * planes), du(s.B * hidden), dtheta(planes), edx(total);
      for (std::int64_t pl = 0; pl < planes; ++pl)
        east::detail::dyrelu_plane_coef_grad(coef.data() + pl * 4, x.data() + pl * hw, dy.data() + pl * hw, hw,
                                             dz.data() + pl * 4);
      for (int b = 0; b < s.B; ++b) {
        float* dzb = dz.data() + std::int64_t{b} * 4 * s.C;
        for (int o = 0; o < 4 * s.C; ++o) dzb[o] = cd::dyrelu_dz(dzb[o], tb, o, d[std::int64_t{b} * 4 * s.C + o]);
        for (int i = 0; i < hidden; ++i)
          du[b * hidden + i] = cd::dyrelu_du(p, s.C, hidden, dzb, u.data() + b * hidden, i);
        for (int c = 0; c < s.C; ++c)
          dtheta[b * s.C + c] = cd::dyrelu_dtheta(p, s.C, hidden, du.data() + b * hidden, c);
      }
      REQUIRE(float_bits(dz) == float_bits(std::vector<float>(ws.dcoef.begin(), ws.dcoef.begin() + 4 * planes)));
      REQUIRE(float_bits(du) == float_bits(std::vector<float>(ws.du.begin(), ws.du.begin() + s.B * hidden)));
      REQUIRE(float_bits(dtheta) == float_bits(std::vector<float>(ws.dtheta.begin(), ws.dtheta.begin() + planes)));
      const float inv_hw = static_cast<float>(1.0 / static_cast<double>(hw));
      for (std::size_t i = 0; i < total; ++i) {
        const std::size_t pl = i / hw;
        edx[i] = cd::dyrelu_dx(coef.data() + pl * 4, cd::mul_rn(dtheta[pl], inv_hw), x[i], dy[i]);
      }
      REQUIRE(float_bits(edx) == float_bits(dx));
      // parameter gradients: dyrelu_param_grad_kernel's elements, fc2 then fc1
      std::vector<float> eg(sz.total, 0.0f);
      const auto eg_v = east::dyrelu_grads_from_flat(eg.data(), s.C, s.hidden);
      for (int r = 0; r < 4 * s.C; ++r)
        for (int c = 0; c < hidden; ++c) {
          float bacc = 0.0f;
          const std::size_t e = static_cast<std::size_t>(r) * hidden + c;
          eg_v.fc2_weight[e] = cd::dyrelu_param_grad(dz.data(), 4 * s.C, u.data(), hidden, true, r, c, s.B,
                                                     eg_v.fc2_weight[e], &bacc);
          if (c == 0) eg_v.fc2_bias[r] = cd::add_rn(eg_v.fc2_bias[r], bacc);
        }
      for (int r = 0; r < hidden; ++r)
        for (int c = 0; c < s.C; ++c) {
          float bacc = 0.0f;
          const std::size_t e = static_cast<std::size_t>(r) * s.C + c;
          eg_v.fc1_weight[e] = cd::dyrelu_param_grad(du.data(), hidden, theta.data(), s.C, false, r, c, s.B,
                                                     eg_v.fc1_weight[e], &bacc);
          if (c == 0) eg_v.fc1_bias[r] = cd::add_rn(eg_v.fc1_bias[r], bacc);
        }
      REQUIRE(float_bits(eg) == float_bits(gflat));
    }
  }
}

TEST_CASE("host: temporary storage sizes are what the run uses", "[cuda][host]") {
  // select: fixed size, independent of n and k; a too small buffer is refused before any launch.
  std::size_t a = 0, b = 0;
  REQUIRE(east::cuda::select_abs(nullptr, a, nullptr, 10, 3, Extreme::largest, nullptr, Among::all, nullptr) ==
          cudaSuccess);
  REQUIRE(east::cuda::select_keys(nullptr, b, nullptr, std::size_t{1} << 34, 0, Extreme::smallest, nullptr,
                                  Among::all, nullptr) == cudaSuccess);
  REQUIRE(a > 0);
  REQUIRE(a == b);
  std::size_t small = a - 1;
  std::vector<unsigned char> fake(a);  // never dereferenced: the size check comes first
  REQUIRE(east::cuda::select_abs(fake.data(), small, nullptr, 10, 3, Extreme::largest, nullptr, Among::all, nullptr) ==
          cudaErrorInvalidValue);
  // dyrelu: the query equals dyrelu_temp_bytes and covers its seven buffers.
  std::size_t t = 0;
  east::DyReLUParams<float> p;
  REQUIRE(east::cuda::dyrelu_forward<float>(nullptr, t, p, nullptr, nullptr, 3, 10, 4, 4, 0.5) == cudaSuccess);
  REQUIRE(t == east::cuda::dyrelu_temp_bytes<float>(3, 10, east::dyrelu_hidden_size(10)));
  REQUIRE(t >= sizeof(float) * (30 + 3 * 2 + 4 * 30 * 3 + 3 * 2 + 30));
  std::size_t t2 = 0;
  REQUIRE(east::cuda::dyrelu_backward<float>(nullptr, t2, p, nullptr, nullptr, nullptr, 3, 10, 4, 4, 0.5) ==
          cudaSuccess);
  REQUIRE(t2 == t);
  // sharing: 8 doubles per chunk of 2^14
  std::size_t sb = 0;
  REQUIRE(east::cuda::shared_weight_backward<float>(nullptr, sb, nullptr, nullptr, nullptr, 2, nullptr, nullptr,
                                                    3 * east::detail::kSharedDotChunk + 1) == cudaSuccess);
  REQUIRE(sb >= 4 * 8 * sizeof(double));
}

TEST_CASE("host: bad configuration throws before anything is launched", "[cuda][host]") {
  std::size_t bytes = 0;
  east::DyReLUParams<float> p;
  // shapes and beta (NaN included), for forward and backward
  REQUIRE_THROWS_AS(east::cuda::dyrelu_forward<float>(nullptr, bytes, p, nullptr, nullptr, 1, 4, 2, 2, -0.1),
                    east::InvalidArgument);
  REQUIRE_THROWS_AS(east::cuda::dyrelu_forward<float>(nullptr, bytes, p, nullptr, nullptr, 1, 4, 2, 2, NAN),
                    east::InvalidArgument);
  REQUIRE_THROWS_AS(east::cuda::dyrelu_forward<float>(nullptr, bytes, p, nullptr, nullptr, 1, 0, 2, 2, 0.5),
                    east::InvalidArgument);
  REQUIRE_THROWS_AS(east::cuda::dyrelu_backward<float>(nullptr, bytes, p, nullptr, nullptr, nullptr, 1, 4, 0, 2, 0.5),
                    east::InvalidArgument);
  REQUIRE_THROWS_AS(east::cuda::dyrelu_backward<float>(nullptr, bytes, p, nullptr, nullptr, nullptr, 1, 4, 2, 2, 2.0),
                    east::InvalidArgument);
  p.hidden = -1;
  REQUIRE_THROWS_AS(east::cuda::dyrelu_forward<float>(nullptr, bytes, p, nullptr, nullptr, 1, 4, 2, 2, 0.5),
                    east::InvalidArgument);
  // SGD: momentum without a buffer, Nesterov without momentum or with dampening (n = 0 too)
  east::kernels::SgdParams sp;
  sp.momentum = 0.9f;
  REQUIRE_THROWS_AS(east::cuda::masked_sgd(nullptr, nullptr, nullptr, nullptr, 0, sp), east::InvalidArgument);
  sp.momentum = 0.0f;
  sp.nesterov = true;
  float dummy = 0;
  REQUIRE_THROWS_AS(east::cuda::masked_sgd(nullptr, nullptr, &dummy, nullptr, 10, sp), east::InvalidArgument);
  // check_selection turns a bad status into the CPU's exception, and passes a good one
  SelectResult r{};
  r.status = east::cuda::kSelectOk;
  REQUIRE_NOTHROW(east::cuda::check_selection(r));
  r.status = east::cuda::kSelectBadK;
  r.selection.k = 5;
  r.candidates = 4;
  REQUIRE_THROWS_AS(east::cuda::check_selection(r), east::InvalidArgument);
}

TEST_CASE("host: mask_update's commit words equal the controller's commit", "[cuda][host][mask_update]") {
  // Decide with the reference selections, commit the way update_zero_kernel and
  // update_words_kernel do, and compare with the controller's phase 2 + apply_masks().
  namespace ref = east::kernels::reference;
  unsigned seed = 400;
  for (std::size_t n : {std::size_t{1}, std::size_t{63}, std::size_t{64}, std::size_t{65}, std::size_t{4097},
                        std::size_t{20000}}) {
    for (bool ties : {false, true}) {
      CAPTURE(n, ties);
      const auto w0 = random_floats(n, ties ? Values::ties : Values::normal, seed++);
      const auto g = random_floats(n, ties ? Values::ties : Values::normal, seed++);
      const auto s0 = random_floats(n, Values::normal, seed++);
      const auto mask0 = random_mask(n, 0.3, seed++);
      std::vector<std::uint64_t> ever0 = random_mask(n, 0.2, seed++);
      for (std::size_t i = 0; i < mask0.size(); ++i) ever0[i] |= mask0[i];
      std::size_t active = 0;
      for (std::size_t i = 0; i < n; ++i) active += east::kernels::test_bit(mask0.data(), i);
      const std::size_t n_drop = active / 3, n_grow = std::min(n - active, active / 2 + 1);
      std::vector<std::uint64_t> dropped(mask0.size(), 0), grown(mask0.size(), 0);
      const auto sd = ref::select_abs(w0.data(), n, n_drop, Extreme::smallest, mask0.data(), Among::active);
      ref::mark_selected_abs(w0.data(), n, sd, Extreme::smallest, mask0.data(), Among::active, dropped.data());
      const auto sg = ref::select_abs(g.data(), n, n_grow, Extreme::largest, mask0.data(), Among::inactive);
      ref::mark_selected_abs(g.data(), n, sg, Extreme::largest, mask0.data(), Among::inactive, grown.data());
      // the controller's commit
      auto cm = mask0, ce = ever0;
      auto cw = w0, cs = s0;
      for (std::size_t i = 0; i < cm.size(); ++i) {
        cm[i] = (cm[i] & ~dropped[i]) | grown[i];
        ce[i] |= cm[i];
      }
      ref::fill_where(cw.data(), grown.data(), n, 0.0f);
      ref::fill_where(cs.data(), grown.data(), n, 0.0f);
      ref::apply_mask(cw.data(), cm.data(), n);
      ref::apply_mask(cs.data(), cm.data(), n);
      // the kernels': element pass on the old words first, then the word pass
      auto em = mask0, ee = ever0;
      auto ew = w0, es = s0;
      for (std::size_t i = 0; i < n; ++i) {
        const std::size_t wi = i >> 6;
        if ((cd::zeroed_word(em[wi], dropped[wi], grown[wi]) >> (i & 63)) & 1u) {
          ew[i] = 0.0f;
          es[i] = 0.0f;
        }
      }
      for (std::size_t wi = 0; wi < em.size(); ++wi) {
        em[wi] = cd::committed_word(em[wi], dropped[wi], grown[wi]);
        ee[wi] |= em[wi];
      }
      REQUIRE(em == cm);
      REQUIRE(ee == ce);
      REQUIRE(float_bits(ew) == float_bits(cw));
      REQUIRE(float_bits(es) == float_bits(cs));
    }
  }
}

TEST_CASE("host: mask_update rejects bad layer descriptions before anything is queued", "[cuda][host][mask_update]") {
  float w[4] = {};
  std::uint64_t m[1] = {};
  auto ok = [&] {
    east::cuda::LayerUpdate u;
    u.weight = w;  // never dereferenced on the host
    u.mask = m;
    u.grad = w;
    u.n = 4;
    return u;
  };
  std::size_t bytes = 0;
  auto call = [&](const east::cuda::LayerUpdate& bad) {
    const east::cuda::LayerUpdate ls[2] = {ok(), bad};
    return east::cuda::mask_update(nullptr, bytes, ls, 2, nullptr, nullptr);
  };
  auto u = ok();
  u.mask = nullptr;
  REQUIRE_THROWS_AS(call(u), east::InvalidArgument);
  u = ok();
  u.grad = nullptr;
  u.n_grow = 1;
  REQUIRE_THROWS_AS(call(u), east::InvalidArgument);
  u = ok();
  u.n_drop = 5;
  REQUIRE_THROWS_AS(call(u), east::InvalidArgument);
  u = ok();
  u.num_state = east::cuda::kMaxStateBuffers + 1;
  REQUIRE_THROWS_AS(call(u), east::InvalidArgument);
  u = ok();
  u.num_state = 1;
  REQUIRE_THROWS_AS(call(u), east::InvalidArgument);  // state[0] null
  u = ok();
  u.n = 0;
  u.weight = nullptr;
  u.mask = nullptr;
  u.num_state = 2;  // null state of an empty layer is fine
  REQUIRE_NOTHROW(call(u));  // (the size query itself may fail without a device; it must not throw)
}
