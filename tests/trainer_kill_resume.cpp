// kill -9 and --resume of the reference trainer, through its command line only: a run killed
// during an epoch, resumed, killed again in the middle of writing its checkpoint, and resumed
// again must end with the result of an uninterrupted run, bit for bit: result.json (but its
// timing and command line), the controller state in the final checkpoint (masks, ever-active
// masks, counters, policy state) and the model and optimizer state stored with it.
// Built only beside east-trainer (libtorch); EAST_TRAINER is the trainer's path.
#include <catch2/catch.hpp>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
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
const std::string dir = "east_test_kill_resume";

// Starts the trainer on the tiny problem, writing into `out`; its output goes to out/log.
pid_t start(const std::string& out, bool resume) {
  std::vector<std::string> a = {EAST_TRAINER,  "--method",  "east",   "--sparsity", "0.9",    "--data-dir",
                                dir + "/data", "--depth",   "18",     "--width",    "0.0625", "--epochs",
                                "3",           "--batch",   "64",     "--threads",  "1",      "--updates",
                                "4",           "--kernels", "sparse", "--out",      out};
  if (resume) a.push_back("--resume");
  return spawn(a, out + "/log", /*append=*/true);
}

// Fails (killing the trainer) when it has exited or `t0` is more than 300 s ago.
void require_running(pid_t pid, Clock::time_point t0) {
  int status = 0;
  if (::waitpid(pid, &status, WNOHANG) != 0) FAIL("east-trainer exited early (status " << status << ")");
  if (std::chrono::duration<double>(Clock::now() - t0).count() > 300) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    FAIL("east-trainer did not reach the expected point within 300 s");
  }
}

void kill9(pid_t pid) {
  ::kill(pid, SIGKILL);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGKILL);
}

// A checkpoint (docs/checkpoints.md) split into the controller's part of the payload and the
// caller's user data.
struct Checkpoint {
  std::string east, user;
};
Checkpoint split(const std::string& f) {
  auto u64 = [&](std::size_t at) {
    std::uint64_t v = 0;
    REQUIRE(at + 8 <= f.size());
    std::memcpy(&v, &f[at], 8);
    return v;
  };
  REQUIRE(f.size() > 24);
  REQUIRE(f.compare(0, 8, "EASTCKPT") == 0);
  const std::size_t p0 = 20;
  std::size_t pos = p0 + 32;
  const auto layers = u64(pos);
  pos += 8;
  for (std::uint64_t l = 0; l < layers; ++l) {
    std::uint32_t name = 0;
    std::memcpy(&name, &f[pos], 4);
    pos += 4 + name + 17;
    pos += 8 + 16 * u64(pos);
  }
  const auto policies = u64(pos);
  pos += 8;
  for (std::uint64_t k = 0; k < policies; ++k) pos += 8 + u64(pos);
  const auto user = u64(pos);
  REQUIRE(pos + 8 + user + 4 == f.size());
  return {f.substr(p0, pos - p0), f.substr(pos + 8, user)};
}

std::uint64_t fnv1a(const std::string& s) {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
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

}  // namespace

TEST_CASE(
    "east-trainer killed with SIGKILL during an epoch and during a checkpoint write resumes bit-identically",
    "[trainer][resume][kill]") {
  REQUIRE(std::system(("rm -rf " + dir + " && mkdir -p " + dir + "/data " + dir + "/full " + dir + "/killed")
                          .c_str()) == 0);
  east_test::write_idx_dataset(dir + "/data", 600, 200, 28, true);
  const std::string full = dir + "/full", killed = dir + "/killed";
  const std::string ckpt = killed + "/checkpoint.east", tmp = ckpt + ".tmp";

  // The uninterrupted run.
  {
    const int status = wait_for(start(full, false), 300, "east-trainer");
    INFO(read_file(full + "/log"));
    REQUIRE(WIFEXITED(status));
    REQUIRE(WEXITSTATUS(status) == 0);
  }

  // 1. Killed during the second epoch: right after the first epoch's checkpoint appears.
  std::string epoch1;
  {
    const pid_t pid = start(killed, false);
    const auto t0 = Clock::now();
    while (!exists(ckpt)) {
      require_running(pid, t0);
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    epoch1 = read_file(ckpt);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    kill9(pid);
    INFO(read_file(killed + "/log"));
    CHECK(read_file(ckpt) == epoch1);  // the kill came before the second epoch's checkpoint
    CHECK_FALSE(exists(killed + "/result.json"));
  }

  // 2. Resumed, and killed while writing the second epoch's checkpoint: a FIFO stands in for the
  // temporary file, so the write blocks once the pipe is full and the kill lands in its middle.
  // Then the FIFO is replaced by what a real kill leaves: the bytes written so far.
  {
    REQUIRE(::mkfifo(tmp.c_str(), 0644) == 0);
    const int fd = ::open(tmp.c_str(), O_RDONLY | O_NONBLOCK);
    REQUIRE(fd >= 0);
    const pid_t pid = start(killed, true);
    std::string partial;
    const auto t0 = Clock::now();
    const int pipe_size = ::fcntl(fd, F_GETPIPE_SZ);
    REQUIRE(pipe_size > 0);
    for (;;) {  // the first bytes, then wait until the writer is stuck on a full pipe
      require_running(pid, t0);
      int queued = 0;
      if (::ioctl(fd, FIONREAD, &queued) != 0) FAIL("ioctl(FIONREAD) failed");
      if (partial.empty() && queued > 0) {
        char buf[4096];
        const auto n = ::read(fd, buf, sizeof buf);
        if (n <= 0) FAIL("read from the FIFO failed");
        partial.append(buf, static_cast<std::size_t>(n));
      } else if (!partial.empty() && queued >= pipe_size) {
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    kill9(pid);
    for (;;) {
      char buf[65536];
      const auto n = ::read(fd, buf, sizeof buf);
      if (n <= 0) break;
      partial.append(buf, static_cast<std::size_t>(n));
    }
    ::close(fd);
    INFO(read_file(killed + "/log"));
    CHECK(partial.compare(0, 8, "EASTCKPT") == 0);
    CHECK(partial.size() < epoch1.size());  // the write was cut short
    CHECK(read_file(ckpt) == epoch1);       // the last complete checkpoint is untouched
    REQUIRE(::unlink(tmp.c_str()) == 0);
    std::ofstream(tmp, std::ios::binary).write(partial.data(), static_cast<std::streamsize>(partial.size()));
  }

  // 3. Resumed to the end.
  {
    const int status = wait_for(start(killed, true), 300, "east-trainer");
    INFO(read_file(killed + "/log"));
    REQUIRE(WIFEXITED(status));
    REQUIRE(WEXITSTATUS(status) == 0);
  }

  const auto a = read_file(full + "/result.json"), b = read_file(killed + "/result.json");
  REQUIRE_FALSE(a.empty());
  CHECK(a.find("\"finished\": true") != std::string::npos);
  CHECK(comparable_result(a) == comparable_result(b));
  const auto ca = split(read_file(full + "/checkpoint.east")),
             cb = split(read_file(killed + "/checkpoint.east"));
  INFO("controller state digest " << fnv1a(ca.east) << " vs " << fnv1a(cb.east));
  CHECK(ca.east == cb.east);
  // The user data holds the model and optimizer state and the elapsed seconds (one double).
  REQUIRE(ca.user.size() == cb.user.size());
  std::size_t first = ca.user.size(), last = 0;
  for (std::size_t i = 0; i < ca.user.size(); ++i)
    if (ca.user[i] != cb.user[i]) first = std::min(first, i), last = i;
  INFO("user data differs in bytes " << first << ".." << last);
  CHECK((first == ca.user.size() || last - first < 8));
}
