// Multi-process tests of the Gloo communicator (adapters/torch/gloo.hpp) on loopback: this
// program starts 2 or 3 east_dist_rank processes per case (directly, or through
// scripts/launch-local) and checks their exit statuses and what they printed. Every wait has a
// deadline, so a hang fails the test instead of blocking ctest. Without Gloo it skips, passing.
#include <catch2/catch.hpp>

#if defined(EAST_TEST_DIST_RANK)

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

using Env = std::vector<std::pair<std::string, std::string>>;

struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/east-dist-test.XXXXXX";
    path = mkdtemp(tmpl);
  }
  ~TempDir() {
    const std::string cmd = "rm -rf '" + path + "'";
    (void)std::system(cmd.c_str());
  }
};

std::string read_file(const std::string& p) {
  std::ifstream f(p);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

pid_t spawn(const std::vector<std::string>& argv, const Env& env, const std::string& log) {
  const pid_t pid = fork();
  if (pid != 0) return pid;
  const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  dup2(fd, 1);
  dup2(fd, 2);
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  for (const char* v :
       {"WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT", "EAST_DIST_INIT", "GLOO_SOCKET_IFNAME"})
    unsetenv(v);
  for (const auto& kv : env) setenv(kv.first.c_str(), kv.second.c_str(), 1);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  execv(args[0], args.data());
  _exit(127);
}

struct Outcome {
  int status = -1;         // raw wait status
  bool timed_out = false;  // still running at the deadline (then killed)
  double seconds = 0;
  std::string log;
  bool exited(int code) const { return !timed_out && WIFEXITED(status) && WEXITSTATUS(status) == code; }
  bool killed_by(int sig) const { return !timed_out && WIFSIGNALED(status) && WTERMSIG(status) == sig; }
};

// Waits for every pid (at most `deadline_s`), then SIGKILLs the rest; pids listed in `victims`
// are not waited for: they are killed once the others have ended.
std::vector<Outcome> wait_all(const std::vector<pid_t>& pids, const std::vector<std::string>& logs,
                              double deadline_s, const std::vector<std::size_t>& victims = {}) {
  std::vector<Outcome> out(pids.size());
  std::vector<bool> done(pids.size(), false);
  const auto t0 = std::chrono::steady_clock::now();
  const auto is_victim = [&](std::size_t i) {
    for (auto v : victims)
      if (v == i) return true;
    return false;
  };
  for (;;) {
    bool others_running = false;
    for (std::size_t i = 0; i < pids.size(); ++i) {
      if (done[i]) continue;
      int st = 0;
      if (waitpid(pids[i], &st, WNOHANG) == pids[i]) {
        done[i] = true;
        out[i].status = st;
        out[i].seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      } else if (!is_victim(i)) {
        others_running = true;
      }
    }
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!others_running || elapsed > deadline_s) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (std::size_t i = 0; i < pids.size(); ++i) {
    if (!done[i]) {
      out[i].timed_out = !is_victim(i);
      kill(pids[i], SIGKILL);
      waitpid(pids[i], &out[i].status, 0);
    }
    out[i].log = read_file(logs[i]);
  }
  return out;
}

// Starts `world` ranks of east_dist_rank SCENARIO ARGS... joined through `init`.
std::vector<Outcome> run_ranks(int world, const std::vector<std::string>& args, const std::string& init,
                               const TempDir& dir, double deadline_s = 120,
                               const std::vector<std::size_t>& victims = {}) {
  std::vector<pid_t> pids;
  std::vector<std::string> logs;
  for (int r = 0; r < world; ++r) {
    std::vector<std::string> argv{EAST_TEST_DIST_RANK};
    argv.insert(argv.end(), args.begin(), args.end());
    logs.push_back(dir.path + "/rank" + std::to_string(r) + ".log");
    pids.push_back(spawn(argv,
                         {{"WORLD_SIZE", std::to_string(world)},
                          {"RANK", std::to_string(r)},
                          {"EAST_DIST_INIT", init},
                          {"GLOO_SOCKET_IFNAME", "lo"}},
                         logs.back()));
  }
  return wait_all(pids, logs, deadline_s, victims);
}

std::string file_store(const TempDir& d) { return "file://" + d.path + "/store"; }

int free_port() {
  const int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  close(s);
  return ntohs(a.sin_port);
}

void require_all_exited_0(const std::vector<Outcome>& o) {
  for (std::size_t r = 0; r < o.size(); ++r) {
    INFO("rank " << r << " log:\n" << o[r].log);
    CHECK(o[r].exited(0));
  }
}

}  // namespace

TEST_CASE("Gloo: all-reduce, broadcast, all-gather and barrier on 2 and 3 processes (file store)") {
  for (int world : {2, 3}) {
    TempDir d;
    const auto o = run_ranks(world, {"collectives"}, file_store(d), d);
    require_all_exited_0(o);
    CHECK_THAT(o[0].log, Catch::Contains("rank 0 of " + std::to_string(world) + ": collectives ok"));
  }
}

TEST_CASE("Gloo: collectives over a TCP store (tcp://127.0.0.1:PORT, rank 0 serves it)") {
  TempDir d;
  const auto o = run_ranks(2, {"collectives"}, "tcp://127.0.0.1:" + std::to_string(free_port()), d);
  require_all_exited_0(o);
}

TEST_CASE(
    "Gloo: packed all-reduce is bit-identical to sequential accumulation (ring at N=2, rank order at any "
    "N)") {
  for (int world : {2, 3}) {
    TempDir d;
    const auto o = run_ranks(world, {"exact", "--timeout-ms", "120000"}, file_store(d), d, 300);
    require_all_exited_0(o);
    CHECK_THAT(o[0].log, Catch::Contains("rank_order: 0 of 1048583 elements differ"));
    if (world == 2) CHECK_THAT(o[0].log, Catch::Contains("engine (Gloo ring): 0 of 1048583 elements differ"));
    // N = 3: the ring's order differs from (x0 + x1) + x2 (reported, and every rank agrees).
    if (world == 3) CHECK_THAT(o[1].log, Catch::Contains("engine (Gloo ring):"));
  }
}

TEST_CASE("Gloo: a mask digest mismatch is reported on every rank, naming the step and the layer") {
  TempDir d;
  const auto o = run_ranks(3, {"digests"}, file_store(d), d);
  require_all_exited_0(o);
  for (const auto& x : o)
    CHECK_THAT(x.log, Catch::Contains(
                          "masks differ across ranks after step 7: first differing is 'conv2' (index 1)"));
}

TEST_CASE("Gloo: mismatched settings are refused at start-up on every rank") {
  TempDir d;
  const auto o = run_ranks(3, {"settings"}, file_store(d), d);
  require_all_exited_0(o);
  for (const auto& x : o)
    CHECK_THAT(x.log, Catch::Contains("'sparsity' is rank 0 '0.999', rank 1 '0.99', rank 2 '0.999'"));
}

TEST_CASE("Gloo: a killed peer makes the others fail with a clear error, without a hang") {
  for (int world : {2, 3}) {
    TempDir d;
    const auto o = run_ranks(world, {"kill", "--timeout-ms", "10000"}, file_store(d), d, 90);
    INFO("victim log:\n" << o.back().log);
    CHECK(o.back().killed_by(SIGKILL));
    for (int r = 0; r + 1 < world; ++r) {
      INFO("rank " << r << " log:\n" << o[r].log);
      CHECK(o[r].exited(0));
      CHECK_THAT(o[r].log, Catch::Contains("all_reduce_sum on rank " + std::to_string(r) + " of " +
                                           std::to_string(world) + " failed"));
    }
  }
}

TEST_CASE("Gloo: a peer that stops answering makes the others fail after the timeout") {
  TempDir d;
  const auto o = run_ranks(3, {"hang", "--timeout-ms", "2000"}, file_store(d), d, 90, {2});
  for (int r = 0; r < 2; ++r) {
    INFO("rank " << r << " log:\n" << o[r].log);
    CHECK(o[r].exited(0));
    CHECK_THAT(o[r].log, Catch::Contains("timeout of 2000 ms") && Catch::Contains("Timed out"));
  }
}

TEST_CASE("Gloo: bad options and a missing peer fail clearly") {
  TempDir d;
  SECTION("rank outside the world") {
    std::vector<pid_t> p{spawn({EAST_TEST_DIST_RANK, "collectives"},
                               {{"WORLD_SIZE", "2"}, {"RANK", "2"}, {"EAST_DIST_INIT", file_store(d)}},
                               d.path + "/a.log")};
    const auto o = wait_all(p, {d.path + "/a.log"}, 60);
    CHECK(o[0].exited(4));
    CHECK_THAT(o[0].log, Catch::Contains("resolve_init_options(): rank 2 (valid: [0, 2)"));
  }
  SECTION("bad address") {
    std::vector<pid_t> p{spawn({EAST_TEST_DIST_RANK, "collectives"},
                               {{"WORLD_SIZE", "2"}, {"RANK", "0"}, {"EAST_DIST_INIT", "tcp://localhost"}},
                               d.path + "/a.log")};
    const auto o = wait_all(p, {d.path + "/a.log"}, 60);
    CHECK(o[0].exited(4));
    CHECK_THAT(o[0].log, Catch::Contains("'tcp://localhost' has no :PORT"));
  }
  SECTION("a peer that never joins") {
    std::vector<pid_t> p{spawn(
        {EAST_TEST_DIST_RANK, "collectives", "--timeout-ms", "2000"},
        {{"WORLD_SIZE", "2"}, {"RANK", "0"}, {"EAST_DIST_INIT", file_store(d)}, {"GLOO_SOCKET_IFNAME", "lo"}},
        d.path + "/a.log")};
    const auto o = wait_all(p, {d.path + "/a.log"}, 60);
    CHECK(o[0].exited(4));
    CHECK_THAT(o[0].log, Catch::Contains("rank 0 of 2 could not join the group") &&
                             Catch::Contains("(timeout 2000 ms)"));
    CHECK(o[0].seconds < 30);
  }
}

TEST_CASE("launch-local: starts N ranks, reports a failing rank, forwards Ctrl-C to its ranks only") {
  TempDir d;
  const std::string launch = EAST_TEST_LAUNCH_LOCAL;
  SECTION("3 ranks succeed") {
    std::vector<pid_t> p{spawn({launch, "3", EAST_TEST_DIST_RANK, "collectives"}, {}, d.path + "/l.log")};
    const auto o = wait_all(p, {d.path + "/l.log"}, 120);
    INFO(o[0].log);
    CHECK(o[0].exited(0));
    CHECK_THAT(o[0].log, Catch::Contains("[rank 2] rank 2 of 3: collectives ok"));
  }
  SECTION("a failing rank makes launch-local fail") {
    std::vector<pid_t> p{spawn({launch, "2", EAST_TEST_DIST_RANK, "fail-rank", "1"}, {}, d.path + "/l.log")};
    const auto o = wait_all(p, {d.path + "/l.log"}, 120);
    INFO(o[0].log);
    CHECK(o[0].exited(4));  // rank 0's status (its barrier failed), the first failing rank
    CHECK_THAT(o[0].log, Catch::Contains("rank 1 (pid") && Catch::Contains("exited with status 3"));
  }
  SECTION("SIGINT reaches the ranks it started") {
    std::vector<pid_t> p{spawn({launch, "2", EAST_TEST_DIST_RANK, "sleep"}, {{"EAST_TEST_PID_DIR", d.path}},
                               d.path + "/l.log")};
    std::vector<int> rank_pids;
    for (int i = 0; i < 1500 && rank_pids.size() < 2; ++i) {  // up to 30 s for both to join
      rank_pids.clear();
      for (int r = 0; r < 2; ++r) {
        const auto s = read_file(d.path + "/rank" + std::to_string(r) + ".pid");
        if (!s.empty() && s.back() == '\n') rank_pids.push_back(std::atoi(s.c_str()));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    REQUIRE(rank_pids.size() == 2);
    kill(p[0], SIGINT);
    const auto o = wait_all(p, {d.path + "/l.log"}, 30);
    INFO(o[0].log);
    CHECK(o[0].exited(130));
    for (int pid : rank_pids) CHECK(kill(pid, 0) == -1);  // gone (and reaped by launch-local)
  }
}

#else

TEST_CASE("Gloo tests skipped") {
  WARN("test_distributed_gloo: east was configured without Gloo (libgloo-dev and libtorch's c10d); skipping");
  SUCCEED();
}

#endif
