// Data-parallel east-trainer through its command line (docs/distributed.md): ranks on loopback
// (a file store) against one process accumulating the same micro-batches.
//   [exact2]   2 ranks (scripts/launch-local) == 1 process --accumulate 2, bit for bit: the masks
//              after every update, the step losses, the final masks, weights and buffers, result.json
//   [exact3]   3 ranks --dist-reduce rank-order == 1 process --accumulate 3 bit for bit; 3 ranks
//              with Gloo's ring within the stated tolerance
//   [kill]     a rank killed (SIGKILL) or stopped (SIGSTOP) mid-run: the other exits with a clear
//              error within the timeout; --resume from the last checkpoint (2 ranks, or 1 process
//              --accumulate 2) ends with the uninterrupted result
//   [settings] ranks started with different settings or data are refused at start-up
// Built only beside east-trainer with Gloo; EAST_TRAINER and EAST_LAUNCH_LOCAL are paths.
#include <catch2/catch.hpp>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "idx_files.hpp"
#include "processes.hpp"

namespace {

using east_test::exists;
using east_test::read_file;
using east_test::spawn;
using east_test::wait_for;
using Clock = std::chrono::steady_clock;
using Args = std::vector<std::string>;

std::string absolute(const std::string& p) {
  char buf[4096];
  REQUIRE(::getcwd(buf, sizeof buf) != nullptr);
  return std::string(buf) + "/" + p;
}
void fresh_dir(const std::string& d) {
  REQUIRE(std::system(("rm -rf " + d + " && mkdir -p " + d).c_str()) == 0);
}

// The tiny problem: generated 12x12 images, ResNet-18 (or 34: weight sharing) at width 0.125, 3
// epochs of 12 steps, EAST at 90% (DyReLU, cyclic density). --kernels auto keeps every layer in
// dense form at this density (libtorch's convolutions, masked gradients); sparse puts the
// convolutions on compact weights (east's kernels); the classifier is dense-form either way.
Args trainer_args(const std::string& data, const std::string& out, int depth = 18,
                  const std::string& kernels = "auto") {
  return {EAST_TRAINER,
          "--method",
          "east",
          "--sparsity",
          "0.9",
          "--data-dir",
          data,
          "--depth",
          std::to_string(depth),
          "--width",
          "0.125",
          "--epochs",
          "3",
          "--batch",
          "24",
          "--threads",
          "1",
          "--updates",
          "4",
          "--kernels",
          kernels,
          "--log-every",
          "1000",
          "--out",
          out};
}
Args operator+(Args a, const Args& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Starts `argv` with its output in `log` (the environment's rank variables removed, so only flags count).
pid_t start(const Args& a, const std::string& log) { return spawn(a, log); }
int exit_code(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }

// Runs `a` to the end (at most `seconds`); returns its exit code, its output in `log`.
int run(const Args& a, const std::string& log, double seconds = 120) {
  return exit_code(wait_for(start(a, log), seconds));
}

// N ranks started with --world-size/--rank/--dist-init (a fresh file store in `dir`); each rank's
// output in dir/rank<r>.log. `extra(r)` adds rank-specific arguments.
template <class Extra>
std::vector<pid_t> start_ranks(int n, const Args& a, const std::string& dir, Extra extra) {
  const std::string store = absolute(dir) + "/store";
  ::unlink(store.c_str());
  std::vector<pid_t> pids;
  for (int r = 0; r < n; ++r)
    pids.push_back(start(a +
                             Args{"--world-size", std::to_string(n), "--rank", std::to_string(r),
                                  "--dist-init", "file://" + store} +
                             extra(r),
                         dir + "/rank" + std::to_string(r) + ".log"));
  return pids;
}
std::vector<pid_t> start_ranks(int n, const Args& a, const std::string& dir) {
  return start_ranks(n, a, dir, [](int) { return Args{}; });
}

// Lines containing `what`; with `prefix`, only lines starting with it, without it.
std::vector<std::string> lines_with(const std::string& text, const std::string& what,
                                    const std::string& prefix = "") {
  std::istringstream in(text);
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);) {
    if (!prefix.empty()) {
      if (line.rfind(prefix, 0) != 0) continue;
      line = line.substr(prefix.size());
    }
    if (line.find(what) != std::string::npos) out.push_back(line);
  }
  return out;
}

// result.json without the lines that differ between processes by design.
std::string comparable_result(const std::string& json) {
  std::istringstream in(json);
  std::string line, out;
  while (std::getline(in, line))
    if (line.find("\"seconds\"") == std::string::npos && line.find("\"command\"") == std::string::npos)
      out += line + "\n";
  return out;
}

double json_number(const std::string& json, const std::string& key) {
  const auto at = json.find("\"" + key + "\": ");
  REQUIRE(at != std::string::npos);
  return std::stod(json.substr(at + key.size() + 4));
}

// The per-update lines of the log without the rank count ("masks agree on N rank(s)").
std::vector<std::string> update_digests(const std::string& log, const std::string& strip = "") {
  std::vector<std::string> out;
  for (auto& l : lines_with(log, ": mask update; masks agree on ", strip))
    out.push_back(l.substr(0, l.find(';')) + l.substr(l.find(", digest")));
  return out;
}

void make_data(const std::string& dir) {
  fresh_dir(dir);
  east_test::write_idx_dataset(dir, 320, 80, 12, false);
}

}  // namespace

TEST_CASE("2 ranks equal 1 process accumulating 2 micro-batches, bit for bit", "[exact2]") {
  const std::string root = "east_test_trainer_dist_exact2", data = root + "/data";
  make_data(data);
  fresh_dir(root + "/one");
  fresh_dir(root + "/two");
  const auto one = trainer_args(data, root + "/one", 34, "sparse") + Args{"--accumulate", "2"};
  REQUIRE(run(one, root + "/one/log") == 0);
  // Two ranks through scripts/launch-local (WORLD_SIZE, RANK, EAST_DIST_INIT).
  const auto two = Args{EAST_LAUNCH_LOCAL, "2"} + trainer_args(data, root + "/two", 34, "sparse");
  const int rc = run(two, root + "/two/log");
  const auto log1 = read_file(root + "/one/log"), log2 = read_file(root + "/two/log");
  INFO(log2);
  REQUIRE(rc == 0);

  // Every mask update: the same digest on both ranks (checked in the trainer, which stops
  // otherwise) and the same as the single process's.
  const auto u1 = update_digests(log1), u2 = update_digests(log2, "[rank 0] ");
  CHECK(u1.size() >= 3);
  CHECK(u1 == u2);
  CHECK(lines_with(log2, "masks agree on 2 rank(s)").size() == u1.size());
  CHECK(lines_with(log2, "layers on east's sparse kernels: 21 of 21 (sparse").size() == 1);
  // Final masks, weights and buffers, and every step's loss.
  const auto d1 = lines_with(log1, "mask digest "), d2 = lines_with(log2, "mask digest ", "[rank 0] ");
  REQUIRE(d1.size() == 1);
  REQUIRE(d2.size() == 1);
  CHECK(d1[0] == d2[0]);
  const auto rank1 = lines_with(log2, "east-trainer rank 1 of 2 done: mask digest ", "[rank 1] ");
  REQUIRE(rank1.size() == 1);
  CHECK(rank1[0].substr(rank1[0].size() - 16) == d1[0].substr(12, 16));
  CHECK(d1[0].find("(36 steps in this process)") != std::string::npos);
  // result.json: accuracy, losses, masks, weights digest.
  const auto j1 = read_file(root + "/one/result.json"), j2 = read_file(root + "/two/result.json");
  REQUIRE_FALSE(j1.empty());
  CHECK(comparable_result(j1) == comparable_result(j2));
  CHECK(json_number(j1, "test_accuracy") > 0.2);  // it learned something (10 classes)
  // Only rank 0 writes results.
  CHECK(lines_with(log2, "== summary", "[rank 1] ").empty());
  CHECK(lines_with(log2, "epoch ", "[rank 1] ").empty());
}

TEST_CASE("3 ranks: bit-identical with rank-order reduction, within tolerance with Gloo's ring", "[exact3]") {
  const std::string root = "east_test_trainer_dist_exact3", data = root + "/data";
  make_data(data);
  for (const char* d : {"/one", "/ordered", "/ring"}) fresh_dir(root + d);
  REQUIRE(run(trainer_args(data, root + "/one") + Args{"--accumulate", "3"}, root + "/one/log") == 0);
  const auto j1 = read_file(root + "/one/result.json");

  for (const std::string how : {"rank-order", "ring"}) {
    const std::string dir = root + (how == "ring" ? "/ring" : "/ordered");
    const auto pids = start_ranks(3, trainer_args(data, dir) + Args{"--dist-reduce", how}, dir);
    for (int r = 0; r < 3; ++r) {
      const int rc = exit_code(wait_for(pids[static_cast<std::size_t>(r)], 120));
      INFO(how << " rank " << r << ": " << read_file(dir + "/rank" + std::to_string(r) + ".log"));
      CHECK(rc == 0);
    }
    const auto j3 = read_file(dir + "/result.json");
    REQUIRE_FALSE(j3.empty());
    if (how == "rank-order") {
      CHECK(comparable_result(j1) == comparable_result(j3));
      CHECK(lines_with(read_file(root + "/one/log"), "mask digest ") ==
            lines_with(read_file(dir + "/rank0.log"), "mask digest "));
    } else {
      // Gloo's ring sums each chunk starting at another rank: the last bits of the gradients
      // differ from one process's (g0 + g1) + g2, the ranks still agree with each other (the
      // run checks the masks after every update). Training amplifies the rounding once a mask
      // decision flips (here from the second update on). Stated tolerance: the first epoch's
      // train loss within 1e-3 relative; final losses within 5% relative, test accuracy within
      // 10 points (80 test images); the same nonzero budget.
      const auto log1 = read_file(root + "/one/log"), log3 = read_file(dir + "/rank0.log");
      INFO("one process: " << log1 << "\n3 ranks, ring: " << log3);
      const auto epoch1 = [](const std::string& log) {
        const auto l = lines_with(log, "epoch 1 done: train loss ");
        REQUIRE(l.size() == 1);
        return std::stod(l[0].substr(l[0].find("train loss ") + 11));
      };
      CHECK(std::abs(epoch1(log3) - epoch1(log1)) <= 1e-3 * epoch1(log1));
      for (const char* key : {"test_loss", "train_loss"})
        CHECK(std::abs(json_number(j3, key) - json_number(j1, key)) <= 0.05 * std::abs(json_number(j1, key)));
      CHECK(std::abs(json_number(j3, "test_accuracy") - json_number(j1, "test_accuracy")) <= 0.1);
      CHECK(json_number(j3, "nonzeros") == json_number(j1, "nonzeros"));
      CHECK(update_digests(log1).size() == update_digests(log3).size());
    }
  }
}

TEST_CASE("a rank killed or stopped mid-run: the others fail fast, --resume finishes the run", "[kill]") {
  const std::string root = "east_test_trainer_dist_kill", data = root + "/data";
  make_data(data);
  for (const char* d : {"/reference", "/killed", "/stopped"}) fresh_dir(root + d);
  // The uninterrupted result (one process accumulating the 2 ranks' micro-batches).
  REQUIRE(run(trainer_args(data, root + "/reference") + Args{"--accumulate", "2"}, root + "/reference/log") ==
          0);
  const auto reference = comparable_result(read_file(root + "/reference/result.json"));
  REQUIRE_FALSE(reference.empty());

  // Waits until `dir`'s first checkpoint exists (or a rank ended), then hurts rank 1 with `sig`;
  // rank 0 must stop with a CommunicationError (exit status 4) within `limit` seconds.
  const auto interrupt = [&](const std::string& dir, int sig, double timeout, double limit) {
    const auto pids =
        start_ranks(2, trainer_args(data, dir) + Args{"--dist-timeout", std::to_string(timeout)}, dir);
    const auto t0 = Clock::now();
    while (!exists(dir + "/checkpoint.east")) {
      for (pid_t p : pids) {
        int st = 0;
        if (::waitpid(p, &st, WNOHANG) == p)
          FAIL("a rank ended before the first checkpoint: " << read_file(dir + "/rank0.log"));
      }
      if (std::chrono::duration<double>(Clock::now() - t0).count() > 120) {
        for (pid_t p : pids) ::kill(p, SIGKILL), ::waitpid(p, nullptr, 0);
        FAIL("no checkpoint within 120 s");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    const auto hurt = Clock::now();
    ::kill(pids[1], sig);
    const int rc0 = exit_code(wait_for(pids[0], limit));
    const double took = std::chrono::duration<double>(Clock::now() - hurt).count();
    ::kill(pids[1], SIGKILL);
    ::kill(pids[1], SIGCONT);
    ::waitpid(pids[1], nullptr, 0);
    const auto log0 = read_file(dir + "/rank0.log");
    INFO(log0);
    CHECK(rc0 == 4);
    CHECK(log0.find("east-trainer: east::torch_adapter::GlooCommunicator: ") != std::string::npos);
    CHECK(log0.find(" on rank 0 of 2 failed (a peer died or did not answer within the timeout of " +
                    std::to_string(static_cast<int>(timeout * 1000)) + " ms)") != std::string::npos);
    CHECK_FALSE(exists(dir + "/result.json"));
    return took;
  };

  // SIGKILL: the peer's sockets close, rank 0's next collective fails at once.
  const double killed = interrupt(root + "/killed", SIGKILL, 30, 30);
  CHECK(killed < 10);
  // SIGSTOP: the peer is silent; rank 0 fails after the 3 s timeout, not before, never later than 2x.
  const double stopped = interrupt(root + "/stopped", SIGSTOP, 3, 30);
  CHECK(stopped < 6 + 3);
  INFO("failed after " << killed << " s (killed peer), " << stopped << " s (stopped peer)");

  // Resumed with 2 ranks from the last checkpoint: the uninterrupted result, bit for bit.
  {
    const std::string dir = root + "/killed";
    const auto pids = start_ranks(2, trainer_args(data, dir) + Args{"--resume"}, dir);
    for (int r = 0; r < 2; ++r) {
      const int rc = exit_code(wait_for(pids[static_cast<std::size_t>(r)], 120));
      INFO(read_file(dir + "/rank" + std::to_string(r) + ".log"));
      CHECK(rc == 0);
    }
    CHECK(read_file(dir + "/rank0.log").find("resumed from") != std::string::npos);
    CHECK(comparable_result(read_file(dir + "/result.json")) == reference);
  }
  // --resume works for any N: the 2-rank checkpoint continued by one process accumulating 2.
  {
    const std::string dir = root + "/stopped";
    const int rc = run(trainer_args(data, dir) + Args{"--resume", "--accumulate", "2"}, dir + "/resume.log");
    INFO(read_file(dir + "/resume.log"));
    CHECK(rc == 0);
    CHECK(comparable_result(read_file(dir + "/result.json")) == reference);
  }
}

TEST_CASE("ranks with different settings or data are refused at start-up", "[settings]") {
  const std::string root = "east_test_trainer_dist_settings", data = root + "/data", other = root + "/other";
  make_data(data);
  fresh_dir(other);
  east_test::write_idx_dataset(other, 320, 80, 12, false);
  {  // one pixel of every image differs
    auto b = read_file(other + "/train-images-idx3-ubyte");
    for (std::size_t i = 0; i < 320; ++i) b[16 + i * 144 + 7] ^= 1;
    std::ofstream(other + "/train-images-idx3-ubyte", std::ios::binary)
        .write(b.data(), static_cast<std::streamsize>(b.size()));
  }
  struct Case {
    Args rank1;
    int status;  // 2: InvalidArgument, 5: RankDisagreement
    std::string expect;
  };
  const std::vector<Case> cases = {
      {{"--sparsity", "0.8"},
       2,
       "check_settings_agree(): ranks were started with different settings: '--sparsity' is rank 0 '0.9', "
       "rank 1 "
       "'0.8' (valid: the same value on every rank)"},
      {{"--accumulate", "2", "--batch", "48"}, 2, "'--batch' is rank 0 '24', rank 1 '48'"},
      {{"--data-dir", other},
       5,
       "the data (same files and --data-dir contents on every rank?) differ across ranks after step 0: first "
       "differing is 'train images'"},
  };
  for (std::size_t k = 0; k < cases.size(); ++k) {
    const std::string dir = root + "/case" + std::to_string(k);
    fresh_dir(dir);
    const auto& cs = cases[k];
    const auto t0 = Clock::now();
    const auto pids =
        start_ranks(2, trainer_args(data, dir), dir, [&](int r) { return r == 1 ? cs.rank1 : Args{}; });
    for (int r = 0; r < 2; ++r) {
      const int rc = exit_code(wait_for(pids[static_cast<std::size_t>(r)], 60));
      const auto log = read_file(dir + "/rank" + std::to_string(r) + ".log");
      INFO("case " << k << " rank " << r << ": " << log);
      CHECK(rc == cs.status);
      CHECK(log.find(cs.expect) != std::string::npos);
    }
    CHECK(std::chrono::duration<double>(Clock::now() - t0).count() < 30);
    CHECK_FALSE(exists(dir + "/checkpoint.east"));
  }
}
