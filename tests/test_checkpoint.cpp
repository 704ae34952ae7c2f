#include <catch2/catch.hpp>
#include <east/east.hpp>

#include <cmath>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>

#include "alloc_counter.hpp"
#include "checkpoint_bytes.hpp"
#include "checkpoint_subjects.hpp"
#include "helpers.hpp"

using namespace east;
using namespace east_test;

namespace {
const DstConfig cfg{0.05, 5, 200, 0.4};

template <class Ctl>
std::string save_to_string(const Ctl& ctl, const std::string& user = {}) {
  std::stringstream ss;
  save_checkpoint(ctl, ss, user);
  return ss.str();
}
}  // namespace

TEST_CASE("Resuming from a checkpoint gives bit-identical masks", "[checkpoint]") {
  for (int kind = 0; kind < 3; ++kind) {
    auto run_full = [&](auto make) {
      auto m = ToyModel::small();
      auto ctl = make(m.params());
      train(m, ctl, 0, 40);
      return std::make_pair(ctl.digest(), m.tensors);
    };
    auto run_resumed = [&](auto make) {
      auto m = ToyModel::small();
      auto ctl = make(m.params());
      train(m, ctl, 0, 17);
      std::stringstream ss;
      save_checkpoint(ctl, ss, "user");
      // A fresh process: new controller (other seed, other masks), same weights restored by
      // the user's own model checkpoint (here: a copy).
      // Order as in a real resume: build model and controller, then load the model's
      // weights, then the east checkpoint (constructing a controller masks the weights).
      auto m2 = ToyModel::small();
      auto ctl2 = make(m2.params());
      for (std::size_t l = 0; l < m2.tensors.size(); ++l)
        std::copy(m.tensors[l].w.begin(), m.tensors[l].w.end(), m2.tensors[l].w.begin());
      CHECK(load_checkpoint(ctl2, ss) == "user");
      CHECK(ctl2.digest() == ctl.digest());
      train(m2, ctl2, 17, 40);
      return std::make_pair(ctl2.digest(), m2.tensors);
    };
    if (kind == 0) {
      auto make = [](ParameterSet p) { return make_set(std::move(p), cfg, {11}); };
      CHECK(run_full(make).first == run_resumed(make).first);
    } else if (kind == 1) {
      // SNFS keeps dense momentum inside its criterion: it travels as policy state.
      auto make = [](ParameterSet p) { return make_snfs(std::move(p), cfg, {4}); };
      CHECK(run_full(make).first == run_resumed(make).first);
    } else {
      auto make = [](ParameterSet p) {
        return make_cyclic(std::move(p), cfg, CyclicDensity{0, 3, 2, 10}, {5});
      };
      const auto a = run_full(make), b = run_resumed(make);
      CHECK(a.first == b.first);
      for (std::size_t l = 0; l < a.second.size(); ++l) CHECK(a.second[l].w == b.second[l].w);
    }
  }
}

TEST_CASE("Corrupt or truncated checkpoints are rejected and change nothing", "[checkpoint][errors]") {
  auto m = ToyModel::small();
  auto ctl = make_rigl(m.params(), cfg, {1});
  train(m, ctl, 0, 12);
  std::stringstream ss;
  save_checkpoint(ctl, ss);
  const std::string good = ss.str();

  auto other = ToyModel::small();
  auto victim = make_rigl(other.params(), cfg, {2});
  const auto digest = victim.digest();
  const auto weights = other.tensors;
  auto expect_rejected = [&](const std::string& bytes, const char* what) {
    std::stringstream in(bytes);
    CHECK_THROWS_WITH(load_checkpoint(victim, in), Catch::Contains(what));
    CHECK(victim.digest() == digest);
    for (std::size_t l = 0; l < weights.size(); ++l) CHECK(other.tensors[l].w == weights[l].w);
  };
  expect_rejected(good.substr(0, good.size() / 2), "truncated");
  expect_rejected(good.substr(0, 10), "truncated");
  expect_rejected("NOTEAST" + good.substr(7), "bad magic");
  std::string flipped = good;
  flipped[good.size() / 2] ^= 0x10;
  expect_rejected(flipped, "checksum");
  std::string version = good;
  version[8] = 9;
  expect_rejected(version, "version 9");
  // A well-formed checkpoint of another model.
  auto small = ToyModel({{"x", {4, 4}}});
  auto c3 = make_rigl(small.params(), DstConfig{0.5, 5, 100});
  std::stringstream s3;
  save_checkpoint(c3, s3);
  expect_rejected(s3.str(), "layers");
}

TEST_CASE("Checkpoint files are written atomically and read back", "[checkpoint]") {
  auto m = ToyModel::small();
  auto ctl = make_rigl(m.params(), cfg);
  train(m, ctl, 0, 6);
  const std::string path = "east_test_checkpoint.bin";
  save_checkpoint(ctl, path, "abc");
  auto m2 = ToyModel::small();
  auto ctl2 = make_rigl(m2.params(), cfg, {99});
  CHECK(load_checkpoint(ctl2, path) == "abc");
  CHECK(ctl2.digest() == ctl.digest());
  CHECK(ctl2.updates() == ctl.updates());
  CHECK_THROWS_WITH(load_checkpoint(ctl2, std::string("/nonexistent/x.bin")), Catch::Contains("cannot open"));
  std::remove(path.c_str());
}

TEST_CASE("save_checkpoint writes exactly the documented format", "[checkpoint][format]") {
  // build_checkpoint follows docs/checkpoints.md's format block field by field (uses, role and
  // the policy-state table included), so this pins the documentation to the code.
  auto m = ToyModel::small();
  auto ctl = make_snfs(mixed_params(m), subject_cfg, {3});
  train(m, ctl, 0, 12);
  const auto s = ctl.state();
  REQUIRE(s.policy_states.size() == 7);
  CHECK_FALSE(s.policy_states[5].empty());  // MomentumRegrow's state
  CHECK(build_checkpoint(s, "resume at 12") == save_to_string(ctl, "resume at 12"));
}

TEST_CASE("SNFS with dense and excluded layers (empty momentum) saves and loads", "[checkpoint]") {
  // Dense and excluded layers keep no momentum: their empty vectors have no storage, and copying
  // zero bytes from or to a null pointer is undefined behaviour (caught by UBSan).
  auto m = ToyModel::small();
  auto ctl = make_snfs(mixed_params(m), subject_cfg, {3});
  train(m, ctl, 0, 12);
  REQUIRE(ctl.method().regrow.momentum.size() == 4);
  REQUIRE(ctl.method().regrow.momentum[2].empty());
  const auto bytes = save_to_string(ctl);
  auto m2 = ToyModel::small();
  auto ctl2 = make_snfs(mixed_params(m2), subject_cfg, {8});
  std::stringstream in(bytes);
  load_checkpoint(ctl2, in);
  CHECK(same_state(ctl2.state(), ctl.state()));
  CHECK(ctl2.method().regrow.momentum == ctl.method().regrow.momentum);
}

TEST_CASE("a header claiming 3 GiB fails fast without allocating it", "[checkpoint][errors][alloc]") {
  auto m = ToyModel::small();
  auto ctl = make_rigl(m.params(), cfg, {1});
  train(m, ctl, 0, 12);
  std::string bad = save_to_string(ctl);
  poke<std::uint64_t>(bad, 12, std::uint64_t{3} << 30);  // the length is outside the CRC
  auto m2 = ToyModel::small();
  auto victim = make_rigl(m2.params(), cfg, {2});
  const auto before = victim.state();
  const std::string path = "east_test_checkpoint_3gib.bin";
  std::ofstream(path, std::ios::binary).write(bad.data(), static_cast<std::streamsize>(bad.size()));
  // A string stream and a file can tell how many bytes they hold; a pipe cannot.
  for (const char* source : {"string", "file", "pipe"}) {
    INFO(source);
    std::stringstream in(bad);
    PipeBuf pipe_buf(bad);
    std::istream pipe(&pipe_buf);
    std::string what;
    {
      // Any single request above 64 MiB is refused (std::bad_alloc) instead of served.
      CountAllocations count(std::size_t{64} << 20);
      try {
        if (source[0] == 'f')
          load_checkpoint(victim, path);
        else
          load_checkpoint(victim, source[0] == 's' ? in : pipe);
      } catch (const CorruptCheckpoint& e) {
        what = e.what();
      }
      count.stop();
      INFO("file of " << bad.size() << " bytes; allocated " << count.total() << " bytes, largest "
                      << count.largest());
      CHECK(count.largest() <= 2 * bad.size() + 65536);
      CHECK(count.total() <= 4 * bad.size() + 65536);
    }
    UNSCOPED_INFO(what);
    CHECK_THAT(what, Catch::Contains("truncated") && Catch::Contains("3221225472"));
    CHECK(same_state(victim.state(), before));
  }
  std::remove(path.c_str());
}

TEST_CASE("bytes after the checksum are rejected", "[checkpoint][errors]") {
  auto m = ToyModel::small();
  auto ctl = make_rigl(m.params(), cfg, {1});
  train(m, ctl, 0, 12);
  const std::string good = save_to_string(ctl, "u");
  auto m2 = ToyModel::small();
  auto victim = make_rigl(m2.params(), cfg, {2});
  const auto before = victim.state();
  for (const std::string& junk : {std::string(1, '\0'), std::string("junk"), good}) {
    std::stringstream in(good + junk);
    CHECK_THROWS_WITH(load_checkpoint(victim, in), Catch::Contains("after the checksum"));
    CHECK(same_state(victim.state(), before));
  }
  const std::string path = "east_test_checkpoint_junk.bin";
  std::ofstream(path, std::ios::binary) << good << "junk";
  CHECK_THROWS_AS(load_checkpoint(victim, path), CorruptCheckpoint);
  CHECK(same_state(victim.state(), before));
  std::remove(path.c_str());
}

TEST_CASE("a zero-size layer in a checkpoint is rejected", "[checkpoint][errors]") {
  // Size 0 and 0 words is self-consistent, so the parser reads 0 mask bytes into an empty vector
  // (a null pointer: undefined behaviour before the fix) before restore() rejects the size.
  auto m = ToyModel::small();
  auto ctl = make_rigl(m.params(), cfg, {1});
  auto s = ctl.state();
  s.sizes[0] = 0;
  s.masks[0].clear();
  s.ever_active[0].clear();
  std::stringstream in(build_checkpoint(s, ""));
  const auto before = ctl.state();
  CHECK_THROWS_WITH(load_checkpoint(ctl, in), Catch::Contains("conv1") && Catch::Contains("size 0"));
  CHECK(same_state(ctl.state(), before));
}

TEST_CASE("restore() rejects inconsistent state and changes nothing", "[checkpoint][errors][restore]") {
  auto m = ToyModel::small(), m2 = ToyModel::small();
  auto ctl = make_snfs(mixed_params(m), subject_cfg, {1});
  train(m, ctl, 0, 12);
  REQUIRE(ctl.updates() == 2);
  const ControllerState good = ctl.state();
  // A fresh victim for every case (a wrongly accepted state must not spill into the next one).
  auto make_victim = [&] {
    m2 = ToyModel::small();
    auto c = make_snfs(mixed_params(m2), subject_cfg, {2});
    train(m2, c, 0, 3);
    return c;
  };
  const auto before = make_victim().state();
  const auto weights = m2.tensors;
  const double nan = std::numeric_limits<double>::quiet_NaN();

  // In sparse layer conv2 (layer 1): a position never active, and an active one.
  auto bit = [](const std::vector<std::uint64_t>& w, std::size_t i) { return (w[i / 64] >> (i % 64)) & 1; };
  std::size_t off = 0, on = 0;
  while (off < good.sizes[1] && bit(good.ever_active[1], off)) ++off;
  while (on < good.sizes[1] && !bit(good.masks[1], on)) ++on;
  REQUIRE(off < good.sizes[1]);
  REQUIRE(on < good.sizes[1]);
  REQUIRE(good.sizes[0] == 432);  // conv1's last word has 48 bits: room for tail bits

  struct Case {
    const char* name;
    std::function<void(ControllerState&)> edit;
    std::vector<std::string> message;
  };
  const std::vector<Case> cases = {
      {"mask outside ever-active",
       [&](ControllerState& s) {
         s.masks[1][off / 64] |= std::uint64_t{1} << (off % 64);   // a new position active,
         s.masks[1][on / 64] &= ~(std::uint64_t{1} << (on % 64));  // one dropped: the count is kept
       },
       {"conv2", "ever_active", "position " + std::to_string(off)}},
      {"partial mask on a dense layer",
       [](ControllerState& s) { s.masks[2][0] &= ~std::uint64_t{1}; },
       {"conv3", "dense", "1023 of 1024"}},
      {"partial ever-active on a dense layer",
       [](ControllerState& s) { s.ever_active[2][1] = 0; },
       {"conv3", "dense", "ever_active"}},
      {"partial mask on an excluded layer",
       [](ControllerState& s) { s.masks[3][4] = 0; },
       {"fc", "excluded"}},
      {"density NaN", [&](ControllerState& s) { s.density = nan; }, {"density", "nan"}},
      {"density 0", [](ControllerState& s) { s.density = 0; }, {"density 0"}},
      {"density 1.5", [](ControllerState& s) { s.density = 1.5; }, {"density 1.5"}},
      {"density inf",
       [](ControllerState& s) { s.density = std::numeric_limits<double>::infinity(); },
       {"density inf"}},
      {"last_update_step -2", [](ControllerState& s) { s.last_update_step = -2; }, {"last_update_step -2"}},
      {"updates without a last update",
       [](ControllerState& s) { s.last_update_step = -1; },
       {"updates 2", "last_update_step -1"}},
      {"a last update without updates",
       [](ControllerState& s) { s.updates = 0; },
       {"updates 0", "last_update_step 10"}},
      {"mask tail bits",
       [&](ControllerState& s) {
         s.masks[0].back() |= std::uint64_t{1} << 63;
         s.ever_active[0].back() |= std::uint64_t{1} << 63;
       },
       {"conv1", "beyond", "432"}},
      {"ever-active tail bits",
       [&](ControllerState& s) { s.ever_active[0].back() |= std::uint64_t{1} << 60; },
       {"conv1", "ever_active", "beyond"}},
      {"popcount off by one",
       [&](ControllerState& s) {
         s.masks[1][off / 64] |= std::uint64_t{1} << (off % 64);
         s.ever_active[1][off / 64] |= std::uint64_t{1} << (off % 64);
       },
       {"conv2", "active weights", "distribution"}},
  };
  for (const auto& c : cases) {
    INFO(c.name);
    auto victim = make_victim();
    ControllerState s = good;
    c.edit(s);
    std::string what;
    try {
      victim.restore(s);
    } catch (const InvalidArgument& e) {
      what = e.what();
    }
    CHECK_THAT(what, Catch::Contains("east::Controller::restore()"));
    for (const auto& part : c.message) CHECK_THAT(what, Catch::Contains(part));
    CHECK(same_state(victim.state(), before));
    for (std::size_t l = 0; l < weights.size(); ++l) CHECK(m2.tensors[l].w == weights[l].w);
    // The same state in a file with a valid checksum.
    std::stringstream in(build_checkpoint(s, ""));
    CHECK_THROWS_AS(load_checkpoint(victim, in), InvalidArgument);
    CHECK(same_state(victim.state(), before));
  }
  // The unedited state is accepted.
  auto victim = make_victim();
  victim.restore(good);
  CHECK(same_state(victim.state(), good));
}

TEST_CASE("the portable CRC-32 equals zlib's", "[checkpoint]") {
  std::string data;
  for (int i = 0; i < 100000; ++i) data.push_back(static_cast<char>((i * 131 + 7) % 251));
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{63}, std::size_t{4096}, data.size()}) {
    CAPTURE(n);
#if defined(EAST_HAS_ZLIB) && EAST_HAS_ZLIB
    CHECK(east::detail::crc32_portable(data.data(), n) == east::detail::crc32_of(data.data(), n));
#endif
  }
  CHECK(east::detail::crc32_portable("123456789", 9) == 0xCBF43926u);  // the standard check value
}
