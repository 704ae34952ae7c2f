#include <catch2/catch.hpp>
#include <east/east.hpp>

#include <memory>
#include <random>

#include "helpers.hpp"

using namespace east;
using east_test::ToyModel;

namespace {

// Position of weight (o, i, tap) in a [out, in, taps] tensor.
std::size_t at(std::size_t o, std::size_t i, std::size_t t, std::size_t in, std::size_t taps) {
  return (o * in + i) * taps + t;
}

// input(3) -> c1 [4,3,3,3] -> A(4) -> c2 [5,4,1,1] -> B(5) -> fc [2,5] -> logits(2)
struct Chain {
  ToyModel model{{{"c1", {4, 3, 3, 3}}, {"c2", {5, 4, 1, 1}}, {"fc", {2, 5}}}};
  ConnectivityGraph g;
  Chain() {
    const auto in = g.add_input("input", 3), a = g.add_node("A", 4), b = g.add_node("B", 5),
               out = g.add_node("logits", 2);
    g.add_layer("c1", in, a);
    g.add_layer("c2", a, b);
    g.add_layer("fc", b, out);
    g.set_output(out);
  }
};

// A CIFAR-ResNet-like stage: stem -> X0; two residual blocks whose convs are one stored pair
// (s1, s2) used twice (weight sharing), identity shortcuts; then a downsampling block with a
// projection shortcut, and the classifier.
struct Residual {
  ToyModel model{{{"stem", {8, 3, 3, 3}},
                  {"s1", {8, 8, 3, 3}},
                  {"s2", {8, 8, 3, 3}},
                  {"d1", {16, 8, 3, 3}},
                  {"d2", {16, 16, 3, 3}},
                  {"proj", {16, 8, 1, 1}},
                  {"fc", {10, 16}}}};
  ConnectivityGraph g;
  Residual() {
    const auto in = g.add_input("input", 3);
    auto x = g.add_node("x0", 8);
    g.add_layer("stem", in, x);
    for (int b = 0; b < 2; ++b) {  // shared block, used twice
      const auto mid = g.add_node("mid" + std::to_string(b), 8), y = g.add_node("y" + std::to_string(b), 8);
      g.add_layer("s1", x, mid);
      g.add_layer("s2", mid, y);
      g.add_identity(x, y);
      x = y;
    }
    const auto mid = g.add_node("dmid", 16), y = g.add_node("dy", 16), out = g.add_node("logits", 10);
    g.add_layer("d1", x, mid);
    g.add_layer("d2", mid, y);
    g.add_layer("proj", x, y);
    g.add_layer("fc", y, out);
    g.set_output(out);
  }
};

std::vector<BitMask> empty_masks(const ParameterSet& p) {
  std::vector<BitMask> m;
  for (const auto& l : p) m.emplace_back(l.size());
  return m;
}

std::vector<BitMask> random_masks(const ParameterSet& p, const std::vector<std::size_t>& counts,
                                  unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<BitMask> out;
  for (std::size_t l = 0; l < p.size(); ++l) {
    BitMask m(p[l].size());
    while (m.count() < counts[l]) m.set(std::uniform_int_distribution<std::size_t>(0, m.size() - 1)(rng));
    out.push_back(m);
  }
  return out;
}

std::vector<std::size_t> counts_of(const std::vector<BitMask>& m) {
  std::vector<std::size_t> c;
  for (const auto& x : m) c.push_back(x.count());
  return c;
}

}  // namespace

TEST_CASE("check_connectivity: a hand-made cut names the layer where the signal stops", "[connectivity]") {
  Chain ch;
  const auto p = ch.model.params();
  auto m = empty_masks(p);
  // c1: (o 0 <- i 0, centre tap) makes A's channel 0 live; c2 reads only A's channel 2: cut.
  m[0].set(at(0, 0, 4, 3, 9));
  m[1].set(at(1, 2, 0, 4, 1));
  m[2].set(at(0, 1, 0, 5, 1));
  auto rep = check_connectivity(ch.g, p, m);
  CHECK_FALSE(rep.connected);
  CHECK(rep.cut_node == "B");
  CHECK(rep.cut_layers == std::vector<std::string>{"c2"});
  CHECK(rep.off_path == std::vector<std::string>{"c1", "c2", "fc"});
  CHECK(rep.weights == 3);
  CHECK(rep.weights_on_path == 0);
  CHECK(rep.message().find("no input-to-output path") != std::string::npos);
  CHECK(rep.message().find("the signal stops at 'B' (no active weight of 'c2' reads a live channel)") !=
        std::string::npos);

  // c2 reading A's channel 0 into B's channel 1, and fc reading B's channel 1: connected.
  m[1].set(at(1, 0, 0, 4, 1));
  rep = check_connectivity(ch.g, p, m);
  CHECK(rep.connected);
  CHECK(rep.cut_node.empty());
  CHECK(rep.off_path.empty());
  CHECK(rep.weights == 4);
  CHECK(rep.weights_on_path == 3);  // c2's (1 <- 2) reads a dead channel
  CHECK(rep.message().empty());

  // fc reads B's channel 3 instead (dead): the cut moves to fc.
  m[2].reset(at(0, 1, 0, 5, 1));
  m[2].set(at(0, 3, 0, 5, 1));
  rep = check_connectivity(ch.g, p, m);
  CHECK_FALSE(rep.connected);
  CHECK(rep.cut_node == "logits");
  CHECK(rep.cut_layers == std::vector<std::string>{"fc"});
}

TEST_CASE("check_connectivity: a dead residual branch is off the path but the shortcut connects",
          "[connectivity]") {
  Residual r;
  const auto p = r.model.params();
  auto m = empty_masks(p);
  m[0].set(at(0, 0, 4, 3, 9));   // stem: x0 channel 0 live
  m[1].set(at(0, 5, 4, 8, 9));   // s1 reads channel 5 (dead): both shared blocks' branches dead
  m[2].set(at(0, 0, 4, 8, 9));   // s2
  m[3].set(at(0, 0, 4, 8, 9));   // d1: dmid channel 0 live
  m[4].set(at(3, 0, 4, 16, 9));  // d2: dy channel 3 live
  m[5].set(at(7, 1, 0, 8, 1));   // proj reads channel 1 (dead)
  m[6].set(at(2, 3, 0, 16, 1));  // fc reads dy channel 3
  const auto rep = check_connectivity(r.g, p, m);
  CHECK(rep.connected);
  // Each use of the shared s1/s2 is listed; proj reads nothing live.
  CHECK(rep.off_path == std::vector<std::string>{"s1", "s2", "s1", "s2", "proj"});

  // d1 reading nothing live too: the dead branches are bypassed, but 'dy' is dead and every
  // route passes it, so the cut is named there (not at the first dead branch 'mid0').
  m[3].reset(at(0, 0, 4, 8, 9));
  m[3].set(at(0, 6, 4, 8, 9));
  const auto cut = check_connectivity(r.g, p, m);
  CHECK_FALSE(cut.connected);
  CHECK(cut.cut_node == "dy");
  CHECK(cut.cut_layers == std::vector<std::string>{"proj", "d2"});  // topological order
}

TEST_CASE("connect_masks repairs a cut chain, keeps the counts and is deterministic", "[connectivity]") {
  Chain ch;
  const auto p = ch.model.params();
  auto m = empty_masks(p);
  m[0].set(at(0, 0, 4, 3, 9));
  m[0].set(at(1, 1, 0, 3, 9));
  m[1].set(at(1, 2, 0, 4, 1));
  m[2].set(at(0, 1, 0, 5, 1));
  m[2].set(at(1, 4, 0, 5, 1));
  const auto counts = counts_of(m);
  REQUIRE_FALSE(check_connectivity(ch.g, p, m).connected);
  auto a = m, b = m;
  const auto rep = connect_masks(ch.g, p, a, make_stream(7));
  connect_masks(ch.g, p, b, make_stream(7));
  CHECK(counts_of(a) == counts);
  CHECK(rep.unresolved.empty());
  CHECK(rep.moved >= 1);
  const auto after = check_connectivity(ch.g, p, a);
  CHECK(after.connected);
  CHECK(after.off_path.empty());
  for (std::size_t l = 0; l < a.size(); ++l) CHECK(a[l] == b[l]);
  // A connected mask is left alone.
  auto again = a;
  CHECK(connect_masks(ch.g, p, again, make_stream(8)).moved == 0);
  for (std::size_t l = 0; l < a.size(); ++l) CHECK(again[l] == a[l]);
}

TEST_CASE("connect_masks puts every layer on a path at any density the counts allow", "[connectivity]") {
  Residual r;
  const auto p = r.model.params();
  int cut_before = 0;
  for (std::size_t per_layer : {1u, 2u, 3u, 8u, 40u}) {
    for (unsigned seed = 0; seed < 40; ++seed) {
      std::vector<std::size_t> counts;
      for (const auto& l : p) counts.push_back(std::min(per_layer, l.size()));
      auto m = random_masks(p, counts, seed);
      cut_before += !check_connectivity(r.g, p, m).off_path.empty();
      const auto rep = connect_masks(r.g, p, m, make_stream(seed));
      INFO("per layer " << per_layer << ", seed " << seed);
      CHECK(counts_of(m) == counts);
      const auto after = check_connectivity(r.g, p, m);
      CHECK(after.connected);
      CHECK(after.off_path.empty());
      CHECK(rep.unresolved.empty());
    }
  }
  CHECK(cut_before > 100);  // the random masks were mostly cut: the repair did the work
}

TEST_CASE("connect_masks keeps an existing path and reports what it cannot fix", "[connectivity]") {
  // One shared tensor used twice in a chain: with one weight, both uses are on a path only when
  // the weight is diagonal (o == i); the repair may not find that, and says so.
  ToyModel t{{{"s", {4, 4, 1, 1}}, {"fc", {2, 4}}}};
  const auto p = t.params();
  ConnectivityGraph g;
  const auto in = g.add_input("in", 4), m1 = g.add_node("m1", 4), m2 = g.add_node("m2", 4),
             out = g.add_node("out", 2);
  g.add_layer("s", in, m1);
  g.add_layer("s", m1, m2);
  g.add_layer("fc", m2, out);
  g.set_output(out);
  auto m = empty_masks(p);
  m[0].set(at(2, 2, 0, 4, 1));  // diagonal: both uses on a path
  m[1].set(at(0, 2, 0, 4, 1));
  REQUIRE(check_connectivity(g, p, m).off_path.empty());
  auto kept = m;
  CHECK(connect_masks(g, p, kept, make_stream(1)).moved == 0);
  CHECK(kept[0] == m[0]);
  m[0].reset(at(2, 2, 0, 4, 1));
  m[0].set(at(1, 3, 0, 4, 1));  // off-diagonal: no path through the second use
  REQUIRE_FALSE(check_connectivity(g, p, m).connected);
  const auto rep = connect_masks(g, p, m, make_stream(1));
  CHECK(counts_of(m) == std::vector<std::size_t>{1, 1});
  const auto after = check_connectivity(g, p, m);
  CHECK(rep.unresolved == after.off_path);  // honest either way
}

TEST_CASE("Controller with ControllerOptions::connectivity: same counts, every layer on a path",
          "[connectivity]") {
  int repaired = 0;
  for (std::uint64_t seed = 0; seed < 30; ++seed) {
    Residual r;
    ControllerOptions opt;
    opt.seed = seed;
    auto plain = make_rigl(r.model.params(), DstConfig{0.004, 10, 100}, opt);
    const auto plain_masks = plain.masks();
    const auto plain_report = check_connectivity(r.g, plain.params(), plain_masks);
    opt.connectivity = std::make_shared<ConnectivityGraph>(r.g);
    Residual r2;
    auto ctl = make_rigl(r2.model.params(), DstConfig{0.004, 10, 100}, opt);
    INFO("seed " << seed);
    CHECK(counts_of(ctl.masks()) == counts_of(plain_masks));
    CHECK(counts_of(ctl.ever_active()) == counts_of(plain_masks));
    const auto rep = check_connectivity(r.g, ctl.params(), ctl.masks());
    CHECK(rep.connected);
    CHECK(rep.off_path.empty());
    // Inactive weights are zeroed under the repaired mask.
    for (std::size_t l = 0; l < r2.model.tensors.size(); ++l)
      CHECK(east_test::count_nonzero(r2.model.tensors[l].w) == ctl.masks()[l].count());
    bool same = true;
    for (std::size_t l = 0; l < plain_masks.size(); ++l) same &= plain_masks[l] == ctl.masks()[l];
    if (!plain_report.off_path.empty()) {
      CHECK_FALSE(same);
      ++repaired;
    } else {
      CHECK(same);  // nothing to repair: the mask is the plain one
    }
  }
  CHECK(repaired > 5);
}

TEST_CASE("ConnectivityGraph rejects bad declarations with the value and the valid range", "[connectivity]") {
  ConnectivityGraph g;
  const auto in = g.add_input("in", 3), a = g.add_node("a", 4);
  CHECK_THROWS_AS(g.add_node("zero", 0), InvalidArgument);
  CHECK_THROWS_WITH(g.add_identity(in, a), Catch::Contains("valid: equal counts"));
  CHECK_THROWS_WITH(g.add_layer("x", in, 9), Catch::Contains("add_layer"));
  CHECK_THROWS_AS(g.add_layer("x", a, a), InvalidArgument);
  CHECK_THROWS_AS(g.add_layer("x", a, in), InvalidArgument);
  CHECK_THROWS_AS(g.add_layer("", in, a), InvalidArgument);
  CHECK_THROWS_AS(g.set_output(5), InvalidArgument);

  Chain ch;
  const auto p = ch.model.params();
  auto m = empty_masks(p);
  ConnectivityGraph no_out;
  no_out.add_input("in", 3);
  CHECK_THROWS_WITH(check_connectivity(no_out, p, m), Catch::Contains("no output node"));
  ConnectivityGraph unknown = ch.g;
  unknown.add_layer("nope", 0, 1);
  CHECK_THROWS_WITH(check_connectivity(unknown, p, m), Catch::Contains("'nope'"));
  ConnectivityGraph wrong;
  const auto i2 = wrong.add_input("in", 3), b2 = wrong.add_node("b", 6);
  wrong.add_layer("c1", i2, b2);  // c1 has 4 outputs
  wrong.set_output(b2);
  CHECK_THROWS_WITH(check_connectivity(wrong, p, m), Catch::Contains("has 4 outputs"));
  ConnectivityGraph cyc;
  const auto x = cyc.add_node("x", 4), y = cyc.add_node("y", 4);
  cyc.add_identity(x, y);
  cyc.add_identity(y, x);
  cyc.set_output(y);
  CHECK_THROWS_WITH(check_connectivity(cyc, p, m), Catch::Contains("cycle"));
  // A failed call changes no mask.
  auto before = m;
  CHECK_THROWS_AS(connect_masks(unknown, p, m, make_stream(0)), InvalidArgument);
  for (std::size_t l = 0; l < m.size(); ++l) CHECK(m[l] == before[l]);
}

TEST_CASE("A Linear reading flattened C x H x W features maps feature j to channel j / (H W)",
          "[connectivity]") {
  ToyModel t{{{"c", {2, 1, 3, 3}}, {"fc", {3, 8}}}};  // 2 channels x 2 x 2 features
  const auto p = t.params();
  ConnectivityGraph g;
  const auto in = g.add_input("in", 1), a = g.add_node("a", 2), out = g.add_node("out", 3);
  g.add_layer("c", in, a);
  g.add_layer("fc", a, out);
  g.set_output(out);
  auto m = empty_masks(p);
  m[0].set(at(1, 0, 4, 1, 9));  // channel 1 live
  m[1].set(at(0, 3, 0, 8, 1));  // feature 3: channel 0 (dead)
  CHECK_FALSE(check_connectivity(g, p, m).connected);
  m[1].set(at(2, 5, 0, 8, 1));  // feature 5: channel 1
  CHECK(check_connectivity(g, p, m).connected);
}

TEST_CASE("connect_every_weight puts every weight on a path where the counts allow", "[connectivity]") {
  Residual r;
  const auto p = r.model.params();
  for (std::size_t per_layer : {2u, 6u, 30u}) {
    for (unsigned seed = 0; seed < 20; ++seed) {
      std::vector<std::size_t> counts;
      for (const auto& l : p) counts.push_back(std::min(per_layer, l.size()));
      auto m = random_masks(p, counts, 100 + seed);
      const auto before = check_connectivity(r.g, p, m);
      auto a = m, b = m;
      connect_every_weight(r.g, p, a, make_stream(seed));
      connect_every_weight(r.g, p, b, make_stream(seed));
      INFO("per layer " << per_layer << ", seed " << seed);
      CHECK(counts_of(a) == counts);
      for (std::size_t l = 0; l < a.size(); ++l) CHECK(a[l] == b[l]);
      const auto after = check_connectivity(r.g, p, a);
      CHECK(after.connected);
      CHECK(after.off_path.empty());
      CHECK(after.weights == before.weights);
      CHECK(after.weights_on_path >= before.weights_on_path);
      CHECK(after.weights - after.weights_on_path <= 2);  // (a shared s1/s2 weight may serve neither use)
    }
  }
}
