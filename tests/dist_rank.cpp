// One rank of the multi-process Gloo tests (test_distributed_gloo starts N of these, or
// scripts/launch-local does). Joins the group from the environment (WORLD_SIZE, RANK,
// EAST_DIST_INIT or MASTER_ADDR/MASTER_PORT, GLOO_SOCKET_IFNAME), runs one scenario, prints what
// it saw and exits 0 when the scenario's expectation held.
//   east_dist_rank SCENARIO [--timeout-ms N]
// Scenarios: collectives, exact, digests, settings, kill, hang, fail-rank R, sleep
#include <east/adapters/torch/gloo.hpp>
#include <east/east.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>
#include <unistd.h>
#include <signal.h>

using namespace east;
using namespace east::distributed;

namespace {

int failures = 0;
#define EXPECT(cond)                                                                  \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      std::printf("rank %d: EXPECT failed at line %d: %s\n", rank_, __LINE__, #cond); \
      ++failures;                                                                     \
    }                                                                                 \
  } while (0)

int rank_ = -1;

std::uint32_t bits(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}

void collectives(Communicator& c) {
  const int N = c.world_size(), r = c.rank();
  std::vector<float> f(1000);
  for (std::size_t i = 0; i < f.size(); ++i) f[i] = static_cast<float>(r * 1000 + static_cast<int>(i));
  c.all_reduce_sum(f.data(), f.size());
  for (std::size_t i = 0; i < f.size(); ++i)
    EXPECT(f[i] == static_cast<float>(1000 * N * (N - 1) / 2 + N * static_cast<int>(i)));
  std::vector<double> d{0.25 * r, -1.0};
  c.all_reduce_sum(d.data(), d.size());
  EXPECT(d[0] == 0.25 * N * (N - 1) / 2);
  EXPECT(d[1] == -1.0 * N);
  std::uint64_t u = ~std::uint64_t{0} - static_cast<std::uint64_t>(r);  // wraps modulo 2^64
  c.all_reduce_sum(&u, 1);
  std::uint64_t want = 0;
  for (int q = 0; q < N; ++q) want += ~std::uint64_t{0} - static_cast<std::uint64_t>(q);
  EXPECT(u == want);
  for (int root = 0; root < N; ++root) {
    std::vector<std::uint8_t> b(37, static_cast<std::uint8_t>(r + 1));
    b[5] = static_cast<std::uint8_t>(100 + r);
    c.broadcast(b.data(), b.size(), root);
    EXPECT(b[0] == root + 1);
    EXPECT(b[5] == 100 + root);
  }
  const auto g = c.all_gather(static_cast<std::uint64_t>(1000 + r));
  for (int q = 0; q < N; ++q) EXPECT(g[q] == static_cast<std::uint64_t>(1000 + q));
  const char mine[3] = {'a', static_cast<char>('0' + r), 'z'};
  const auto gb = c.all_gather_bytes(mine, 3);
  for (int q = 0; q < N; ++q) EXPECT(gb[3 * q + 1] == '0' + q);
  c.barrier();
  const auto& t = c.traffic();
  EXPECT(t[CallKind::all_reduce].calls == 3);
  EXPECT(t[CallKind::all_reduce].payload_bytes == 4000 + 16 + 8);
  EXPECT(t[CallKind::broadcast].calls == static_cast<std::uint64_t>(N));
  EXPECT(t[CallKind::all_gather].payload_bytes == 8 + 3);
  EXPECT(t[CallKind::barrier].calls == 1);
  std::printf("rank %d of %d: collectives ok, all_reduce payload %llu wire %llu bytes\n", r, N,
              static_cast<unsigned long long>(t[CallKind::all_reduce].payload_bytes),
              static_cast<unsigned long long>(t[CallKind::all_reduce].wire_bytes));
}

// Rank q's buffer: random values over many magnitudes plus ±0, subnormals, ±inf (never both
// infinities at one index, which would make NaNs whose payload depends on the order).
std::vector<float> exact_data(int q, std::size_t n) {
  const RandomStream s = make_stream(99).derive(static_cast<std::uint64_t>(q));
  std::vector<float> v(n);
  const float special[] = {0.0f, -0.0f, 1e-45f, -1e-45f, 1e-40f, 3.4e38f, -3.4e38f, 1.0f, -1.0f};
  for (std::size_t i = 0; i < n; ++i) {
    const double u = s.uniform(i);
    if (i < 81)
      v[i] = special[(i / (q == 0 ? 1 : 9)) % 9];  // every pair of specials appears
    else if (i == 81)
      v[i] = q == 0 ? INFINITY : 2.0f;
    else if (i == 82)
      v[i] = q == 1 ? -INFINITY : -0.0f;
    else
      v[i] = static_cast<float>((u - 0.5) * std::pow(10.0, static_cast<double>(s.bits32(i + n) % 16) - 8));
  }
  return v;
}

void exact(Communicator& c) {
  const int N = c.world_size(), r = c.rank();
  const std::size_t n = (1u << 20) + 7;  // several of Gloo's ring segments, odd length
  // Each of two views: what one process accumulating micro-batches 0, 1, ... computes.
  std::vector<float> reference = exact_data(0, n);
  for (int q = 1; q < N; ++q) {
    const auto x = exact_data(q, n);
    for (std::size_t i = 0; i < n; ++i) reference[i] = reference[i] + x[i];
  }
  for (auto how : {Reduction::engine, Reduction::rank_order}) {
    const auto mine = exact_data(r, n);
    std::vector<float> a(mine.begin(), mine.begin() + 1000), b(mine.begin() + 1000, mine.end());
    FloatPack p;
    p.add(a).add(b);
    p.all_reduce_sum(c, how);
    std::size_t differ = 0;
    for (std::size_t i = 0; i < n; ++i) differ += bits(i < 1000 ? a[i] : b[i - 1000]) != bits(reference[i]);
    // Every rank must hold the same bytes, whatever the order.
    Digests d{digest_bytes(a.data(), a.size() * 4) ^ digest_bytes(b.data(), b.size() * 4),
              {"a", "b"},
              {digest_bytes(a.data(), a.size() * 4), digest_bytes(b.data(), b.size() * 4)}};
    check_digests_agree(c, 0, "reduced gradients", d);
    const char* name = how == Reduction::engine ? "engine (Gloo ring)" : "rank_order";
    std::printf("rank %d of %d: %s: %zu of %zu elements differ from sequential accumulation\n", r, N, name,
                differ, n);
    if (how == Reduction::rank_order || N <= 2) EXPECT(differ == 0);
  }
}

// Identical controllers; the last rank sees a different gradient in layer "conv2" only, so after
// the update at step 7 its masks differ there and nowhere else.
void digests(Communicator& c) {
  const std::vector<std::pair<std::string, Shape>> shapes{
      {"conv1", {8, 3, 3, 3}}, {"conv2", {16, 8, 3, 3}}, {"fc", {10, 16}}};
  std::vector<std::vector<float>> w, g;
  ParameterSet p;
  for (std::size_t l = 0; l < shapes.size(); ++l) {
    const auto n = shape_size(shapes[l].second);
    const RandomStream s = make_stream(5).derive(l);
    w.emplace_back(n);
    g.emplace_back(n);
    for (std::size_t i = 0; i < n; ++i) {
      w[l][i] = static_cast<float>(s.uniform(i) - 0.5);
      g[l][i] = static_cast<float>(s.uniform(i + n) - 0.5);
      if (l == 1 && c.rank() == c.world_size() - 1) g[l][i] = -g[l][i] * 3 + 0.1f;
    }
    p.add(shapes[l].first, w[l].data(), shapes[l].second, g[l].data());
  }
  DstConfig cfg;
  cfg.density = 0.2;
  auto ctl = make_rigl(p, cfg, ControllerOptions{3});
  check_masks_agree(c, 0, ctl);  // masks from the seed agree without being sent
  ctl.update(7);
  try {
    check_masks_agree(c, 7, ctl);
    std::printf("rank %d: no disagreement detected\n", c.rank());
    ++failures;
  } catch (const RankDisagreement& e) {
    std::printf("rank %d: caught: %s\n", c.rank(), e.what());
    EXPECT(std::strstr(e.what(), "after step 7") != nullptr);
    EXPECT(std::strstr(e.what(), "'conv2' (index 1)") != nullptr);
  }
}

void settings(Communicator& c) {
  const Settings s{{"method", "rigl"}, {"sparsity", c.rank() == 1 ? "0.99" : "0.999"}, {"batch", "128"}};
  try {
    check_settings_agree(c, s);
    ++failures;
  } catch (const InvalidArgument& e) {
    std::printf("rank %d: caught: %s\n", c.rank(), e.what());
    EXPECT(std::strstr(e.what(), "'sparsity' is rank 0 '0.999', rank 1 '0.99'") != nullptr);
  }
  check_settings_agree(c, {{"method", "rigl"}});  // the group still works after a refusal
}

// The last rank dies (kill) or stops answering (hang) after 3 all-reduces; the others must fail
// with a CommunicationError (at once, or within the timeout), never hang.
void peer_loss(Communicator& c, bool kill) {
  const bool victim = c.rank() == c.world_size() - 1;
  std::vector<float> x(4096, 1.0f);
  const auto t0 = std::chrono::steady_clock::now();
  try {
    for (int i = 0; i < 1000000; ++i) {
      if (victim && i == 3) {
        if (kill) raise(SIGKILL);
        std::this_thread::sleep_for(c.timeout() * 4);
        std::printf("rank %d: woke up\n", c.rank());
        std::exit(0);
      }
      c.all_reduce_sum(x.data(), x.size());
      if (i >= 3) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    std::printf("rank %d: never failed\n", c.rank());
    ++failures;
  } catch (const CommunicationError& e) {
    const auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
    std::printf("rank %d: failed after %lld ms: %s\n", c.rank(), static_cast<long long>(ms), e.what());
    EXPECT(std::strstr(e.what(), "all_reduce_sum on rank") != nullptr);
    EXPECT(ms < c.timeout().count() * 3 + 5000);
    // The broken group refuses further calls immediately.
    try {
      c.barrier();
      ++failures;
    } catch (const CommunicationError& e2) {
      EXPECT(std::strstr(e2.what(), "refused") != nullptr);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: east_dist_rank SCENARIO [ARG] [--timeout-ms N]\n");
    return 2;
  }
  const std::string scenario = argv[1];
  InitOptions o;
  int fail_rank = -1;
  for (int i = 2; i < argc; ++i) {
    if (std::string(argv[i]) == "--timeout-ms" && i + 1 < argc)
      o.timeout = std::chrono::milliseconds(std::atol(argv[++i]));
    else
      fail_rank = std::atoi(argv[i]);
  }
  try {
    torch_adapter::GlooCommunicator c(o);
    rank_ = c.rank();
    if (scenario == "collectives")
      collectives(c);
    else if (scenario == "exact")
      exact(c);
    else if (scenario == "digests")
      digests(c);
    else if (scenario == "settings")
      settings(c);
    else if (scenario == "kill")
      peer_loss(c, true);
    else if (scenario == "hang")
      peer_loss(c, false);
    else if (scenario == "fail-rank") {
      c.barrier();
      if (c.rank() == fail_rank) {
        std::printf("rank %d: exiting with 3 as asked\n", c.rank());
        return 3;
      }
      c.barrier();  // fails: the peer is gone
    } else if (scenario == "sleep") {
      if (const char* dir = std::getenv("EAST_TEST_PID_DIR"))
        std::ofstream(std::string(dir) + "/rank" + std::to_string(c.rank()) + ".pid") << getpid() << "\n";
      c.barrier();
      std::this_thread::sleep_for(std::chrono::seconds(60));
    } else {
      std::fprintf(stderr, "unknown scenario '%s'\n", scenario.c_str());
      return 2;
    }
  } catch (const std::exception& e) {
    std::printf("rank %d: error: %s\n", rank_, e.what());
    return 4;
  }
  std::fflush(stdout);
  return failures == 0 ? 0 : 1;
}
