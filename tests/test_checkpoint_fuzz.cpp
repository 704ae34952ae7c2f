// Deterministic mutation test of the checkpoint loader: a few thousand damaged copies of the
// checkpoints of a RigL, an SNFS and an EAST controller (truncations, bit flips with the CRC
// recomputed so the parser is reached, special values in every length and count field, appended
// bytes). Every load must either throw an east exception and leave the controller and the model's
// weights exactly as they were, or load a state that passes the same validation; and no load may
// allocate more than a small multiple of the file's size.
#include <catch2/catch.hpp>
#include <east/east.hpp>

#include <cmath>
#include <limits>
#include <memory>
#include <random>
#include <sstream>

#include "alloc_counter.hpp"
#include "checkpoint_bytes.hpp"
#include "checkpoint_subjects.hpp"
#include "helpers.hpp"

using namespace east;
using namespace east_test;

namespace {

struct Mutation {
  std::string what, bytes;
  bool must_fail = false;  // truncations and appended bytes never load
};

// The invariants of a controller's state, written out here independently of restore().
template <class Ctl>
std::string broken_invariant(const Ctl& c) {
  const auto s = c.state();
  std::ostringstream why;
  if (s.last_update_step < -1) why << "last_update_step " << s.last_update_step << "; ";
  if ((s.updates == 0) != (s.last_update_step == -1)) why << "updates vs last_update_step; ";
  if (!(std::isfinite(s.density) && s.density > 0 && s.density <= 1)) {
    why << "density " << s.density << "; ";
    return why.str();
  }
  std::vector<std::size_t> counts;
  try {
    counts = layer_counts(c.method().distribution, c.params(), s.density, c.options().allocation);
  } catch (const InvalidArgument& e) {
    return why.str() + "density " + std::to_string(s.density) + " has no allocation";
  }
  for (std::size_t l = 0; l < s.names.size(); ++l) {
    const auto& layer = c.params()[l];
    const std::size_t n = layer.size();
    std::size_t active = 0, ever = 0;
    for (std::size_t i = 0; i < s.masks[l].size(); ++i) {
      const auto m = s.masks[l][i], e = s.ever_active[l][i];
      if (m & ~e) why << layer.name << ": mask outside ever_active; ";
      if (i + 1 == s.masks[l].size() && n % 64 && ((m | e) >> (n % 64))) why << layer.name << ": tail bits; ";
      active += static_cast<std::size_t>(__builtin_popcountll(m));
      ever += static_cast<std::size_t>(__builtin_popcountll(e));
    }
    if (layer.role != LayerRole::sparse && (active != n || ever != n)) why << layer.name << ": partial; ";
    if (layer.role == LayerRole::sparse && active != counts[l])
      why << layer.name << ": count " << active << "; ";
  }
  return why.str();
}

// Every mutation of `good`; `momentum_policy` is the index of a MomentumRegrow blob (or -1).
std::vector<Mutation> mutations(const std::string& good, int momentum_policy) {
  std::vector<Mutation> out;
  const auto fields = length_fields(good, momentum_policy);
  // Truncations: the first bytes one by one, then a stride, and both sides of every field.
  for (std::size_t n = 0; n < good.size(); n += n < 64 ? 1 : 37)
    out.push_back({"truncated to " + std::to_string(n), good.substr(0, n), true});
  for (const auto& f : fields)
    for (std::size_t n : {f.offset, f.offset + 1, f.offset + f.width})
      if (n < good.size()) out.push_back({"truncated to " + std::to_string(n), good.substr(0, n), true});
  // Appended bytes.
  for (const std::string& tail :
       {std::string(1, '\0'), std::string("x"), std::string(8, '\xff'), std::string(4096, 'j'), good})
    out.push_back({"appended " + std::to_string(tail.size()) + " bytes", good + tail, true});
  // Header bit flips (the header is outside the CRC) and checksum bit flips.
  for (std::size_t bit = 0; bit < 8 * ckpt_header_bytes; ++bit) {
    auto b = good;
    b[bit / 8] = static_cast<char>(b[bit / 8] ^ (1 << (bit % 8)));
    out.push_back({"header bit " + std::to_string(bit), b});
  }
  for (std::size_t bit = 0; bit < 32; ++bit) {
    auto b = good;
    const auto at = good.size() - 4 + bit / 8;
    b[at] = static_cast<char>(b[at] ^ (1 << (bit % 8)));
    out.push_back({"checksum bit " + std::to_string(bit), b});
  }
  // Payload bit flips, one and three at a time, with the CRC recomputed.
  std::mt19937_64 rng(0x5eed);
  const std::size_t payload = good.size() - ckpt_header_bytes - 4;
  for (int i = 0; i < 1200; ++i) {
    auto b = good;
    std::string what = "payload bits";
    for (int k = 0; k < (i % 4 == 3 ? 3 : 1); ++k) {
      const auto bit = rng() % (8 * payload);
      const auto at = ckpt_header_bytes + bit / 8;
      b[at] = static_cast<char>(b[at] ^ (1 << (bit % 8)));
      what += " " + std::to_string(8 * ckpt_header_bytes + bit);
    }
    out.push_back({what, with_crc(b)});
  }
  // Special values in every length and count field (the CRC recomputed unless the field is the
  // header's payload length, which the CRC does not cover).
  for (const auto& f : fields) {
    std::uint64_t orig = 0;
    std::memcpy(&orig, &good[f.offset], f.width);
    const std::uint64_t values[] = {0,
                                    1,
                                    2,
                                    3,
                                    255,
                                    orig - 1,
                                    orig + 1,
                                    orig * 2,
                                    good.size(),
                                    std::uint64_t{3} << 30,
                                    (std::uint64_t{1} << 31) - 1,
                                    std::uint64_t{1} << 31,
                                    (std::uint64_t{1} << 32) - 1,
                                    std::uint64_t{1} << 32,
                                    std::uint64_t{1} << 62,
                                    std::uint64_t{1} << 63,
                                    ~std::uint64_t{0}};
    for (auto v : values) {
      if (v == orig) continue;
      auto b = good;
      std::memcpy(&b[f.offset], &v, f.width);
      out.push_back({std::string(f.what) + " at " + std::to_string(f.offset) + " = " + std::to_string(v),
                     f.offset == 12 ? b : with_crc(b)});
    }
  }
  // Special values in the scalar fields.
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  const double density = peek<double>(good, 44);
  for (double d : {nan, inf, -inf, 0.0, -0.0, 1.0, std::nextafter(1.0, 2.0), 4.9e-324, -0.3,
                   std::nextafter(density, 0.0), std::nextafter(density, 1.0)}) {
    auto b = good;
    poke(b, 44, d);
    std::ostringstream what;
    what.precision(17);
    what << "density " << d;
    out.push_back({what.str(), with_crc(b)});
  }
  for (std::int64_t s : {std::numeric_limits<std::int64_t>::min(), std::int64_t{-2}, std::int64_t{-1},
                         std::int64_t{0}, std::numeric_limits<std::int64_t>::max()}) {
    auto b = good;
    poke(b, 28, s);
    out.push_back({"last_update_step " + std::to_string(s), with_crc(b)});
  }
  for (std::uint64_t u : {std::uint64_t{0}, std::uint64_t{1}, ~std::uint64_t{0}}) {
    auto b = good;
    poke(b, 36, u);
    out.push_back({"updates " + std::to_string(u), with_crc(b)});
  }
  return out;
}

struct Stats {
  std::size_t cases = 0, loaded = 0, corrupt = 0, invalid = 0;
  double worst_ratio = 0;  // bytes allocated during a load / file bytes, files of 1 KiB or more
};

// Runs every mutation of `make`'s checkpoint against a victim controller of the same model.
template <class Make>
Stats fuzz(Make make, int momentum_policy) {
  auto m = ToyModel::small();
  auto ctl = make(mixed_params(m), 1);
  train(m, ctl, 0, 17);
  REQUIRE(ctl.updates() >= 3);
  std::stringstream ss;
  save_checkpoint(ctl, ss, "resume at step 17");
  const std::string good = ss.str();

  using Ctl = decltype(make(std::declval<ParameterSet>(), 0));
  struct Victim {
    ToyModel m = ToyModel::small();
    std::unique_ptr<Ctl> ctl;
  };
  auto fresh = [&] {
    auto v = std::make_unique<Victim>();
    v->ctl = std::make_unique<Ctl>(make(mixed_params(v->m), 2));
    train(v->m, *v->ctl, 0, 6);
    return v;
  };
  auto victim = fresh();
  const ControllerState before = victim->ctl->state();
  const auto weights = victim->m.tensors;
  const auto check = fresh();  // restores every loaded state: the same validation must accept it

  Stats st;
  for (const auto& mu : mutations(good, momentum_policy)) {
    ++st.cases;
    std::stringstream in(mu.bytes);
    bool loaded = false;
    std::size_t allocated = 0;
    {
      CountAllocations count(std::size_t{256} << 20);  // refuse, rather than serve, a runaway request
      try {
        load_checkpoint(*victim->ctl, in);
        loaded = true;
      } catch (const CorruptCheckpoint&) {
        ++st.corrupt;
      } catch (const InvalidArgument&) {
        ++st.invalid;
      } catch (const std::exception& e) {
        FAIL_CHECK(mu.what << ": not an east exception: " << e.what());
      }
      allocated = count.total();
    }
    if (mu.bytes.size() >= 1024)  // below, the fixed costs (messages, a 64 KiB first read) dominate
      st.worst_ratio =
          std::max(st.worst_ratio, static_cast<double>(allocated) / static_cast<double>(mu.bytes.size()));
    if (allocated > 4 * mu.bytes.size() + 65536)
      FAIL_CHECK(mu.what << ": allocated " << allocated << " bytes for a file of " << mu.bytes.size());
    if (!loaded) {
      if (!same_state(victim->ctl->state(), before))
        FAIL_CHECK(mu.what << ": a rejected load changed the state");
      for (std::size_t l = 0; l < weights.size(); ++l)
        if (victim->m.tensors[l].w != weights[l].w || victim->m.tensors[l].m != weights[l].m)
          FAIL_CHECK(mu.what << ": a rejected load changed the weights of " << weights[l].name);
      continue;
    }
    ++st.loaded;
    if (mu.must_fail) FAIL_CHECK(mu.what << ": loaded");
    if (const auto why = broken_invariant(*victim->ctl); !why.empty())
      FAIL_CHECK(mu.what << ": loaded a state that breaks an invariant: " << why);
    const auto s = victim->ctl->state();
    try {
      check->ctl->restore(s);
    } catch (const std::exception& e) {
      FAIL_CHECK(mu.what << ": the loaded state fails validation: " << e.what());
    }
    // The loaded masks hold on the weights: inactive weights and momentum are zero.
    const auto& c = *victim->ctl;
    for (std::size_t l = 0; l < weights.size(); ++l) {
      if (c.params()[l].role == LayerRole::excluded) continue;
      const auto& t = victim->m.tensors[l];
      for (std::size_t i = 0; i < t.w.size(); ++i)
        if (!c.masks()[l].test(i) && (t.w[i] != 0.0f || t.m[i] != 0.0f)) {
          FAIL_CHECK(mu.what << ": layer " << t.name << " keeps a weight at inactive position " << i);
          break;
        }
    }
    victim = fresh();
  }
  return st;
}

}  // namespace

TEST_CASE("mutated checkpoints are rejected cleanly or load a valid state", "[checkpoint][fuzz]") {
  std::vector<std::pair<const char*, Stats>> runs;
  runs.emplace_back("rigl", fuzz(make_rigl_subject, -1));
  // SNFS: MomentumRegrow is policy 5 (distribution, density, drop, update, prune, regrow, init).
  runs.emplace_back("snfs", fuzz(make_snfs_subject, 5));
  runs.emplace_back("east", fuzz(make_east_subject, -1));
  std::size_t total = 0;
  for (const auto& [name, st] : runs) {
    INFO(name << ": " << st.cases << " cases, " << st.loaded << " loaded, " << st.corrupt
              << " CorruptCheckpoint, " << st.invalid << " InvalidArgument; worst allocation "
              << st.worst_ratio << " x the file");
    CHECK(st.cases == st.loaded + st.corrupt + st.invalid);
    // Both outcomes and both exception types are exercised.
    CHECK(st.loaded > 50);
    CHECK(st.corrupt > 500);
    CHECK(st.invalid > 50);
    total += st.cases;
  }
  CHECK(total >= 3000);
}
