#pragma once
// A one-line progress display with rate and ETA, for examples and tools that run long.
#include <chrono>
#include <cstdio>
#include <string>

namespace east {

class Progress {
 public:
  Progress(std::string label, std::size_t total, std::string unit = "it")
      : label_(std::move(label)), unit_(std::move(unit)), total_(total), start_(clock::now()) {}

  /// Redraws the line at most ~5 times per second (and always at the end).
  void update(std::size_t done, const std::string& extra = {}) {
    const auto now = clock::now();
    if (done < total_ && std::chrono::duration<double>(now - last_).count() < 0.2) return;
    last_ = now;
    const double secs = std::chrono::duration<double>(now - start_).count();
    const double rate = secs > 0 ? static_cast<double>(done) / secs : 0.0;
    const double eta = rate > 0 ? static_cast<double>(total_ - done) / rate : 0.0;
    std::fprintf(stderr, "\r%s %zu/%zu %s (%.0f%%) %.1f %s/s ETA %s %s   ", label_.c_str(), done, total_,
                 unit_.c_str(),
                 total_ ? 100.0 * static_cast<double>(done) / static_cast<double>(total_) : 100.0, rate,
                 unit_.c_str(), format_time(eta).c_str(), extra.c_str());
    if (done >= total_) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  }
  double elapsed() const { return std::chrono::duration<double>(clock::now() - start_).count(); }

  static std::string format_time(double s) {
    char buf[32];
    const long t = static_cast<long>(s + 0.5);
    if (t >= 3600)
      std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t / 60) % 60);
    else
      std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
    return buf;
  }

 private:
  using clock = std::chrono::steady_clock;
  std::string label_, unit_;
  std::size_t total_;
  clock::time_point start_, last_{};
};

}  // namespace east
