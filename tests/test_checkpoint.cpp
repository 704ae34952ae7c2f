#include <catch2/catch.hpp>
#include <east/east.hpp>

#include <sstream>

#include "helpers.hpp"

using namespace east;
using east_test::ToyModel;

namespace {
const DstConfig cfg{0.05, 5, 200, 0.4};

template <class Ctl>
void train(ToyModel& m, Ctl& ctl, std::int64_t from, std::int64_t to) {
  for (std::int64_t step = from; step < to; ++step) {
    m.randomize_grads(static_cast<unsigned>(step) * 7 + 1);
    ctl.before_optimizer_step(step);
    m.sgd(0.05f);
    ctl.after_optimizer_step(step);
  }
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
