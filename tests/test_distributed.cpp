// Framework-free data-parallel pieces: the Communicator seam and its counting, the in-process
// group, init options, FloatPack, agreement checks, and the exactness argument of
// distributed/exact.hpp played out on threads (multi-process Gloo runs: test_distributed_gloo).
#include <east/distributed.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <thread>

#include "helpers.hpp"

using namespace east;
using namespace east::distributed;

namespace {

// Runs fn(rank) on one thread per rank; returns each rank's exception message ("" if none).
std::vector<std::string> on_threads(InProcessGroup& g, const std::function<void(int)>& fn) {
  std::vector<std::string> err(static_cast<std::size_t>(g.size()));
  std::vector<std::thread> ts;
  for (int r = 0; r < g.size(); ++r)
    ts.emplace_back([&, r] {
      try {
        fn(r);
      } catch (const std::exception& e) {
        err[static_cast<std::size_t>(r)] = e.what();
      }
    });
  for (auto& t : ts) t.join();
  return err;
}

std::uint32_t bits(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}

}  // namespace

TEST_CASE("Communicator rejects bad ranks, sizes, roots and null buffers without counting") {
  CHECK_THROWS_AS(InProcessGroup(0), InvalidArgument);
  SingleProcess one;
  CHECK(one.rank() == 0);
  CHECK(one.world_size() == 1);
  CHECK_THROWS_WITH(one.broadcast_bytes(nullptr, 4, 0), Catch::Contains("null"));
  float x = 1;
  CHECK_THROWS_WITH(one.broadcast(&x, 1, 1), Catch::Contains("root 1 (valid: [0, 1))"));
  CHECK_THROWS_WITH(one.all_reduce_sum(static_cast<float*>(nullptr), 3), Catch::Contains("all_reduce_sum()"));
  CHECK(one.traffic().total().calls == 0);
}

TEST_CASE("wire_bytes follows the ring formulas (hand-worked)") {
  CHECK(wire_bytes(CallKind::all_reduce, 1000, 1) == 0);
  CHECK(wire_bytes(CallKind::all_reduce, 1000, 2) == 1000);  // 2·1/2·B
  CHECK(wire_bytes(CallKind::all_reduce, 1000, 4) == 1500);  // 2·3/4·B
  CHECK(wire_bytes(CallKind::all_gather, 1000, 2) == 1000);  // (N-1)·B: equal to the ring at N = 2
  CHECK(wire_bytes(CallKind::all_gather, 1000, 4) == 3000);
  CHECK(wire_bytes(CallKind::broadcast, 1000, 4) == 750);
  CHECK(wire_bytes(CallKind::barrier, 0, 4) == 0);
}

TEST_CASE("SingleProcess counts the payload of every call kind") {
  SingleProcess c;
  std::vector<float> f(10, 1.0f);
  std::vector<double> d(3, 2.0);
  std::uint64_t u[2] = {5, 6};
  c.all_reduce_sum(f.data(), f.size());
  c.all_reduce_sum(d.data(), d.size());
  c.all_reduce_sum(u, 2);
  c.broadcast(f.data(), 4, 0);
  const auto g = c.all_gather(u, 2);
  c.barrier();
  CHECK(f[0] == 1.0f);
  CHECK(g == std::vector<std::uint64_t>{5, 6});
  const auto& t = c.traffic();
  CHECK(t[CallKind::all_reduce].calls == 3);
  CHECK(t[CallKind::all_reduce].payload_bytes == 40 + 24 + 16);
  CHECK(t[CallKind::broadcast].payload_bytes == 16);
  CHECK(t[CallKind::all_gather].payload_bytes == 16);
  CHECK(t[CallKind::barrier].calls == 1);
  CHECK(t.total().wire_bytes == 0);
  const Traffic before = t;
  c.all_reduce_sum(f.data(), 2);
  CHECK(c.traffic().since(before).total().payload_bytes == 8);
  CHECK(c.traffic().since(before).total().calls == 1);
}

TEST_CASE("InProcessGroup: all-reduce, broadcast, all-gather and barrier on 3 threads") {
  InProcessGroup g(3);
  std::vector<std::vector<float>> f(3);
  std::vector<std::vector<std::uint64_t>> gathered(3);
  std::vector<std::vector<std::uint8_t>> bytes(3);
  std::vector<std::uint64_t> u(3);
  std::vector<double> b(3);
  const auto err = on_threads(g, [&](int r) {
    auto& c = g[r];
    f[r] = {float(r), float(10 * r), 0.5f};
    c.all_reduce_sum(f[r].data(), 3);
    u[r] = ~std::uint64_t{0} - static_cast<std::uint64_t>(r);  // wraps modulo 2^64
    c.all_reduce_sum(&u[r], 1);
    b[r] = r == 1 ? 3.25 : -1.0;
    c.broadcast(&b[r], 1, 1);
    gathered[r] = c.all_gather(static_cast<std::uint64_t>(100 + r));
    const std::uint8_t mine[2] = {std::uint8_t(r), std::uint8_t(2 * r)};
    bytes[r] = c.all_gather_bytes(mine, 2);
    c.barrier();
  });
  for (int r = 0; r < 3; ++r) {
    CHECK(err[r].empty());
    CHECK(f[r] == std::vector<float>{3.0f, 30.0f, 1.5f});
    CHECK(u[r] == ~std::uint64_t{0} * 3 - 3);
    CHECK(b[r] == 3.25);
    CHECK(gathered[r] == std::vector<std::uint64_t>{100, 101, 102});
    CHECK(bytes[r] == std::vector<std::uint8_t>{0, 0, 1, 2, 2, 4});
    CHECK(g[r].traffic()[CallKind::all_reduce].wire_bytes == 2 * 2 * 12 / 3 + 2 * 2 * 8 / 3);
  }
}

TEST_CASE("InProcessGroup: a silent peer times out and an aborted peer is named, on every rank") {
  SECTION("timeout") {
    InProcessGroup g(3, std::chrono::milliseconds(100));
    const auto t0 = std::chrono::steady_clock::now();
    const auto err = on_threads(g, [&](int r) {
      if (r == 2) return;  // never joins
      float x = 1;
      g[r].all_reduce_sum(&x, 1);
    });
    const auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
    CHECK(ms.count() < 5000);
    for (int r : {0, 1}) {
      CHECK_THAT(err[r], Catch::Contains("all_reduce_sum on rank " + std::to_string(r) + " of 3 failed"));
      CHECK_THAT(err[r], Catch::Contains("timed out after 100 ms waiting for rank(s) 2"));
    }
    // The group is broken: later calls are refused at once.
    CHECK(g[0].broken());
    float x = 0;
    CHECK_THROWS_WITH(g[0].all_reduce_sum(&x, 1), Catch::Contains("refused"));
  }
  SECTION("abort") {
    InProcessGroup g(3, std::chrono::seconds(30));
    const auto err = on_threads(g, [&](int r) {
      if (r == 1) {
        g[r].abort("killed");
        return;
      }
      float x = 1;
      for (int i = 0; i < 3; ++i) g[r].all_reduce_sum(&x, 1);
    });
    CHECK_THAT(err[0], Catch::Contains("rank 1 aborted: killed"));
    CHECK_THAT(err[2], Catch::Contains("rank 1 aborted: killed"));
  }
  SECTION("ranks calling different collectives") {
    InProcessGroup g(2);
    const auto err = on_threads(g, [&](int r) {
      float x[2] = {1, 2};
      if (r == 0)
        g[r].all_reduce_sum(x, 2);
      else
        g[r].all_reduce_sum(x, 1);
    });
    CHECK_THAT(err[0], Catch::Contains("different calls"));
    CHECK_THAT(err[1], Catch::Contains("different calls"));
  }
}

TEST_CASE("parse_init_url and resolve_init_options accept tcp/file and name what is wrong") {
  auto a = parse_init_url("tcp://node-3.example:29500");
  CHECK(a.kind == InitAddress::Kind::tcp);
  CHECK(a.host == "node-3.example");
  CHECK(a.port == 29500);
  a = parse_init_url("tcp://[::1]:1234");
  CHECK(a.host == "::1");
  CHECK(a.port == 1234);
  a = parse_init_url("file:///tmp/east/store");
  CHECK(a.kind == InitAddress::Kind::file);
  CHECK(a.path == "/tmp/east/store");
  for (const char* bad : {"tcp://host", "tcp://:80", "tcp://h:0", "tcp://h:65536", "tcp://h:8x",
                          "tcp://::1:80", "udp://h:1", "file://relative", "file:///dir/", "", "tcp://[::1"})
    CHECK_THROWS_AS(parse_init_url(bad), InvalidArgument);
  CHECK_THROWS_WITH(parse_init_url("tcp://h:70000"), Catch::Contains("parse_init_url()") &&
                                                         Catch::Contains("'tcp://h:70000'") &&
                                                         Catch::Contains("1..65535"));

  std::map<std::string, std::string> env;
  const auto getenv = [&](const char* n) -> const char* {
    auto it = env.find(n);
    return it == env.end() ? nullptr : it->second.c_str();
  };
  auto o = resolve_init_options({}, getenv);
  CHECK(o.world_size == 1);
  CHECK(o.rank == 0);
  CHECK(o.init.empty());
  env = {{"WORLD_SIZE", "4"},
         {"RANK", "3"},
         {"MASTER_ADDR", "10.0.0.1"},
         {"MASTER_PORT", "29500"},
         {"GLOO_SOCKET_IFNAME", "eth1"}};
  o = resolve_init_options({}, getenv);
  CHECK(o.world_size == 4);
  CHECK(o.rank == 3);
  CHECK(o.init == "tcp://10.0.0.1:29500");
  CHECK(o.interface == "eth1");
  env["EAST_DIST_INIT"] = "file:///tmp/s";  // launch-local's store wins over MASTER_*
  CHECK(resolve_init_options({}, getenv).init == "file:///tmp/s");
  InitOptions explicit_o;
  explicit_o.world_size = 2;
  explicit_o.rank = 1;
  explicit_o.init = "tcp://h:1";
  explicit_o.interface = "lo";
  o = resolve_init_options(explicit_o, getenv);  // explicit values beat the environment
  CHECK((o.world_size == 2 && o.rank == 1 && o.init == "tcp://h:1" && o.interface == "lo"));

  env = {{"WORLD_SIZE", "2"}, {"RANK", "2"}, {"EAST_DIST_INIT", "file:///tmp/s"}};
  CHECK_THROWS_WITH(resolve_init_options({}, getenv), Catch::Contains("rank 2 (valid: [0, 2)"));
  env = {{"WORLD_SIZE", "two"}};
  CHECK_THROWS_WITH(resolve_init_options({}, getenv), Catch::Contains("$WORLD_SIZE is 'two'"));
  env = {{"WORLD_SIZE", "2"}, {"RANK", "0"}};
  CHECK_THROWS_WITH(resolve_init_options({}, getenv), Catch::Contains("no rendezvous address"));
  env = {{"WORLD_SIZE", "2"}, {"RANK", "0"}, {"MASTER_ADDR", "h"}};
  CHECK_THROWS_WITH(resolve_init_options({}, getenv), Catch::Contains("$MASTER_PORT ''"));
  env = {{"WORLD_SIZE", "2"}, {"RANK", "0"}, {"EAST_DIST_INIT", "tcp://h"}};
  CHECK_THROWS_AS(resolve_init_options({}, getenv), InvalidArgument);
  explicit_o.timeout = std::chrono::milliseconds(0);
  CHECK_THROWS_WITH(resolve_init_options(explicit_o, getenv), Catch::Contains("timeout 0 ms"));
}

TEST_CASE("FloatPack packs views of different sizes into one message and scales on unpack") {
  std::vector<float> a{1, 2, 3}, b{}, c{4, 5};
  FloatPack p;
  p.add(a).add(b).add(c);
  CHECK(p.size() == 5);
  CHECK(p.count() == 3);
  std::vector<float> flat(5);
  p.pack(flat.data());
  CHECK(flat == std::vector<float>{1, 2, 3, 4, 5});
  const std::vector<float> in{10, 20, 30, 40, 50};
  p.unpack(in.data(), 0.5f);
  CHECK(a == std::vector<float>{5, 10, 15});
  CHECK(c == std::vector<float>{20, 25});
  CHECK_THROWS_WITH(p.add(nullptr, 2), Catch::Contains("FloatPack::add()") && Catch::Contains("null"));

  SingleProcess one;  // one call whatever the number of views
  p.all_reduce_sum(one);
  CHECK(one.traffic()[CallKind::all_reduce].calls == 1);
  CHECK(one.traffic()[CallKind::all_reduce].payload_bytes == 20);
  CHECK(a == std::vector<float>{5, 10, 15});
}

TEST_CASE("Summation order: rank order equals sequential accumulation; a ring order need not") {
  // One process accumulating micro-batches 0, 1, 2 computes (x0 + x1) + x2. A ring all-reduce
  // over 3 ranks computes some chunks as (x1 + x2) + x0: not the same float when magnitudes differ.
  const float x0 = 1.0f, x1 = 1e8f, x2 = -1e8f;
  const float sequential = (x0 + x1) + x2, ring_chunk = (x1 + x2) + x0;
  CHECK(sequential == 0.0f);
  CHECK(ring_chunk == 1.0f);
  // Two terms: commutativity makes every order agree, bit for bit, including signed zeros.
  for (float p : {-0.0f, 0.0f, 1e-45f, -3.5f, INFINITY})
    for (float q : {-0.0f, 0.0f, 1e-45f, 7.25f, -INFINITY})
      if (!(std::isinf(p) && std::isinf(q))) CHECK(bits(p + q) == bits(q + p));

  for (auto how : {Reduction::engine, Reduction::rank_order}) {
    InProcessGroup g(3);
    std::vector<std::vector<float>> v{{x0, 2.0f}, {x1, 3.0f}, {x2, 4.0f}};
    on_threads(g, [&](int r) {
      FloatPack p;
      p.add(v[r]);
      p.all_reduce_sum(g[r], how);
    });
    for (int r = 0; r < 3; ++r) CHECK(v[r] == std::vector<float>{sequential, 9.0f});
    // rank_order sends through all_gather; the in-process engine's all-reduce is rank order too.
    CHECK(g[0].traffic()[how == Reduction::engine ? CallKind::all_reduce : CallKind::all_gather].calls == 1);
  }
}

TEST_CASE("check_digests_agree names the step, the first differing item and every rank's digest") {
  InProcessGroup g(3);
  const auto err = on_threads(g, [&](int r) {
    Digests d;
    d.names = {"conv1", "layer1.0.conv1", "fc"};
    d.items = {11, r == 2 ? 99u : 22u, 33};
    d.overall = d.items[1];
    check_digests_agree(g[r], 1200, "masks", d);
  });
  for (int r = 0; r < 3; ++r) {
    CHECK_THAT(err[r], Catch::Contains("masks differ across ranks after step 1200"));
    CHECK_THAT(err[r], Catch::Contains("'layer1.0.conv1' (index 1)"));
    CHECK_THAT(err[r],
               Catch::Contains("rank 0 0000000000000016, rank 1 0000000000000016, rank 2 0000000000000063"));
  }
  // Agreement costs one 8-byte all-gather.
  InProcessGroup ok(2);
  const auto none = on_threads(ok, [&](int r) {
    Digests d{7, {"a"}, {7}};
    check_digests_agree(ok[r], 1, "masks", d);
  });
  CHECK((none[0].empty() && none[1].empty()));
  CHECK(ok[0].traffic()[CallKind::all_gather].payload_bytes == 8);
}

TEST_CASE("check_masks_agree: controllers with different seeds disagree at the first layer, on every rank") {
  InProcessGroup g(2);
  std::vector<east_test::ToyModel> models(2, east_test::ToyModel::small());
  DstConfig cfg;
  cfg.density = 0.2;
  const auto err = on_threads(g, [&](int r) {
    auto ctl =
        make_rigl(models[r].params(), cfg, ControllerOptions{static_cast<std::uint64_t>(r == 0 ? 1 : 2)});
    check_masks_agree(g[r], 0, ctl);
  });
  CHECK_THAT(err[0], Catch::Contains("after step 0") && Catch::Contains("'conv1' (index 0)"));
  CHECK(err[0] == err[1]);
}

TEST_CASE("check_settings_agree refuses different settings on every rank, naming them") {
  InProcessGroup g(3);
  SECTION("a different value") {
    const auto err = on_threads(g, [&](int r) {
      check_settings_agree(g[r],
                           {{"method", "rigl"}, {"sparsity", r == 2 ? "0.99" : "0.999"}, {"seed", "1"}});
    });
    for (int r = 0; r < 3; ++r)
      CHECK_THAT(err[r], Catch::Contains("check_settings_agree()") &&
                             Catch::Contains("'sparsity' is rank 0 '0.999', rank 1 '0.999', rank 2 '0.99'"));
  }
  SECTION("a setting only one rank has") {
    const auto err = on_threads(g, [&](int r) {
      Settings s{{"method", "rigl"}};
      if (r == 1) s.emplace_back("resume", "ckpt.east");
      check_settings_agree(g[r], s);
    });
    CHECK_THAT(err[2], Catch::Contains("'resume' is rank 0 (unset), rank 1 'ckpt.east', rank 2 (unset)"));
  }
  SECTION("the same settings pass") {
    const auto err = on_threads(g, [&](int r) {
      check_settings_agree(g[r], {{"method", "rigl"}, {"x", ""}});
    });
    CHECK((err[0].empty() && err[1].empty() && err[2].empty()));
  }
}

// The exactness argument end to end: N ranks, each computing one micro-batch's gradient, reduce
// in rank order and run RigL; one process accumulates the same N micro-batches in order. Every
// mask update agrees across ranks and the final weights and masks equal the single process's.
namespace {

// A deterministic "backward": the gradient depends on the weights and on the micro-batch.
void micro_batch_grad(const east_test::ToyModel& m, std::int64_t step, int micro,
                      std::vector<std::vector<float>>& g) {
  g.resize(m.tensors.size());
  for (std::size_t l = 0; l < m.tensors.size(); ++l) {
    const auto& w = m.tensors[l].w;
    g[l].resize(w.size());
    const RandomStream s = make_stream(static_cast<std::uint64_t>(step)).derive(micro * 131 + l);
    for (std::size_t i = 0; i < w.size(); ++i)
      g[l][i] = 0.1f * w[i] * static_cast<float>(s.uniform(i) - 0.3) +
                static_cast<float>(s.uniform(i + w.size()) - 0.5);
  }
}

struct RunResult {
  std::vector<std::vector<float>> weights;
  std::uint64_t digest = 0;
  int updates = 0;
};

template <class Reduce>
RunResult run_rigl(int micro_batches, int rank, int world, Reduce&& reduce, Communicator* check = nullptr) {
  east_test::ToyModel m = east_test::ToyModel::small();
  DstConfig cfg;
  cfg.density = 0.1;
  cfg.update_interval = 5;
  auto ctl = make_rigl(m.params(), cfg, ControllerOptions{7});
  std::vector<std::vector<float>> g;
  RunResult res;
  for (std::int64_t step = 1; step <= 30; ++step) {
    // This rank's share: micro-batches rank, rank + world, ... accumulated in order.
    bool first = true;
    for (int k = rank; k < micro_batches; k += world) {
      micro_batch_grad(m, step, k, g);
      for (std::size_t l = 0; l < g.size(); ++l)
        for (std::size_t i = 0; i < g[l].size(); ++i)
          m.tensors[l].g[i] = first ? g[l][i] : m.tensors[l].g[i] + g[l][i];
      first = false;
    }
    reduce(m);
    ctl.before_optimizer_step(step);
    m.sgd(0.05f);
    if (ctl.after_optimizer_step(step)) {
      ++res.updates;
      if (check) check_masks_agree(*check, step, ctl);
    }
  }
  for (auto& t : m.tensors) res.weights.push_back(t.w);
  res.digest = ctl.digest();
  return res;
}

}  // namespace

TEST_CASE("N ranks reducing in rank order reproduce one process accumulating N micro-batches, bit for bit") {
  for (int world : {2, 3}) {
    const RunResult single = run_rigl(world, 0, 1, [](east_test::ToyModel&) {});
    REQUIRE(single.updates == 6);
    InProcessGroup g(world);
    std::vector<RunResult> ranks(static_cast<std::size_t>(world));
    const auto err = on_threads(g, [&](int r) {
      ranks[r] = run_rigl(
          world, r, world,
          [&](east_test::ToyModel& m) {
            FloatPack p;
            for (auto& t : m.tensors) p.add(t.g);
            p.all_reduce_sum(g[r], Reduction::rank_order);
          },
          &g[r]);
    });
    for (int r = 0; r < world; ++r) {
      INFO("world " << world << " rank " << r);
      CHECK(err[r].empty());
      CHECK(ranks[r].digest == single.digest);
      CHECK(ranks[r].weights == single.weights);  // float ==, and the masks above: same bits
    }
    CHECK(g[0].traffic()[CallKind::all_gather].calls == 30 + 6);  // 30 packed reductions, 6 digest checks
  }
}

TEST_CASE("Without the reduction, ranks drift apart and check_masks_agree catches it at the first update") {
  InProcessGroup g(2);
  std::vector<std::string> caught(2);
  const auto err = on_threads(g, [&](int r) {
    east_test::ToyModel m = east_test::ToyModel::small();
    DstConfig cfg;
    cfg.density = 0.1;
    cfg.update_interval = 5;
    auto ctl = make_rigl(m.params(), cfg, ControllerOptions{7});
    std::vector<std::vector<float>> grads;
    for (std::int64_t step = 1; step <= 10; ++step) {
      micro_batch_grad(m, step, r, grads);  // local gradient only: no all-reduce
      for (std::size_t l = 0; l < grads.size(); ++l) m.tensors[l].g = grads[l];
      ctl.before_optimizer_step(step);
      m.sgd(0.05f);
      if (ctl.after_optimizer_step(step)) check_masks_agree(g[r], step, ctl);
    }
  });
  CHECK_THAT(err[0], Catch::Contains("masks differ across ranks after step 5"));
  CHECK(err[0] == err[1]);
}

TEST_CASE(
    "Traffic of one RigL window: nonzeros + dense params per step, dense gradients + digest per update") {
  // ToyModel::small: 16·3·3·3 + 32·16·3·3 + 32·32·1·1 + 10·32 = 432 + 4608 + 1024 + 320 = 6384 weights.
  east_test::ToyModel m = east_test::ToyModel::small();
  std::vector<float> dense(100, 0.0f);  // e.g. BN parameters
  DstConfig cfg;
  cfg.density = 0.1;
  cfg.update_interval = 5;
  auto ctl = make_rigl(m.params(), cfg, ControllerOptions{1});
  SingleProcess comm;
  std::vector<std::vector<float>> compact(m.tensors.size());
  for (std::int64_t step = 1; step <= 5; ++step) {
    const bool upd = ctl.is_update_step(step);
    FloatPack p;
    for (std::size_t l = 0; l < m.tensors.size(); ++l) {
      compact[l].assign(ctl.masks()[l].count(), 0.0f);
      if (upd)
        p.add(m.tensors[l].g);
      else
        p.add(compact[l]);
    }
    p.add(dense);
    const Traffic before = comm.traffic();
    p.all_reduce_sum(comm);
    if (ctl.after_optimizer_step(step)) check_masks_agree(comm, step, ctl);
    const auto t = comm.traffic().since(before);
    if (upd) {
      CHECK(step == 5);
      CHECK(t[CallKind::all_reduce].payload_bytes == 4 * (6384 + 100));
      CHECK(t[CallKind::all_gather].payload_bytes == 8);
    } else {
      CHECK(t[CallKind::all_reduce].payload_bytes == 4 * (ctl.nonzeros() + 100));
      CHECK(t[CallKind::all_gather].calls == 0);
    }
    CHECK(t[CallKind::all_reduce].calls == 1);  // one message per step, however many layers
  }
  CHECK(ctl.nonzeros() < 6384 / 5);
}
