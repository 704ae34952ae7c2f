#pragma once
// Reusable harness for timing one full mask update (drop + grow for every layer) of a model:
// give it layer shapes and a preset factory, get the time of ControllerT::update() and the
// streaming-read floor for the same weights. Used by bench_model.cpp (Google Benchmark) and
// mask_update_harness.cpp (a command-line tool reading shapes from a text file).
#include <east/east.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace east::bench {

struct Layer {
  std::string name;
  Shape shape;
};

/// A model's dense weights and gradients, filled with deterministic N(0, 0.05) / N(0, 1e-3).
struct ModelBuffers {
  std::vector<Layer> layers;
  std::vector<std::vector<float>> weights, grads;

  explicit ModelBuffers(std::vector<Layer> ls) : layers(std::move(ls)) {
    std::mt19937_64 rng(42);
    std::normal_distribution<float> w(0.0f, 0.05f), g(0.0f, 1e-3f);
    for (const auto& l : layers) {
      weights.emplace_back(shape_size(l.shape));
      grads.emplace_back(shape_size(l.shape));
      for (auto& v : weights.back()) v = w(rng);
      for (auto& v : grads.back()) v = g(rng);
    }
  }
  ParameterSet parameter_set() {
    ParameterSet p;
    for (std::size_t i = 0; i < layers.size(); ++i)
      p.add(layers[i].name, weights[i].data(), layers[i].shape, grads[i].data());
    return p;
  }
  std::size_t size() const {
    std::size_t n = 0;
    for (const auto& w : weights) n += w.size();
    return n;
  }
};

/// torchvision ResNet-34 (basic blocks) / ResNet-50 (bottlenecks) conv and fc weight shapes.
inline std::vector<Layer> resnet_shapes(int depth) {
  std::vector<Layer> out{{"conv1", {64, 3, 7, 7}}};
  const int blocks[] = {3, 4, 6, 3};
  const bool bottleneck = depth >= 50;
  std::int64_t in = 64;
  for (int s = 0; s < 4; ++s) {
    const std::int64_t w = 64 << s, outc = bottleneck ? 4 * w : w;
    for (int b = 0; b < blocks[s]; ++b) {
      const std::string p = "layer" + std::to_string(s + 1) + "." + std::to_string(b) + ".";
      if (bottleneck) {
        out.push_back({p + "conv1", {w, in, 1, 1}});
        out.push_back({p + "conv2", {w, w, 3, 3}});
        out.push_back({p + "conv3", {outc, w, 1, 1}});
      } else {
        out.push_back({p + "conv1", {w, in, 3, 3}});
        out.push_back({p + "conv2", {w, w, 3, 3}});
      }
      if (b == 0 && in != outc) out.push_back({p + "downsample", {outc, in, 1, 1}});
      in = outc;
    }
  }
  out.push_back({"fc", {1000, in}});
  return out;
}

/// Reads "name d0 d1 ..." per line ('#' starts a comment).
inline std::vector<Layer> read_shapes(const std::string& path) {
  std::ifstream f(path);
  detail::require(static_cast<bool>(f), "east mask_update_harness", "cannot open shape file '", path, "'");
  std::vector<Layer> out;
  for (std::string line; std::getline(f, line);) {
    if (auto h = line.find('#'); h != std::string::npos) line.resize(h);
    std::istringstream is(line);
    Layer l;
    if (!(is >> l.name)) continue;
    for (std::int64_t d; is >> d;) l.shape.push_back(d);
    detail::require(!l.shape.empty(), "east mask_update_harness", "layer '", l.name, "' has no dimensions");
    out.push_back(std::move(l));
  }
  return out;
}

/// The presets the harness knows: RigL and EAST's cyclic schedule (RigL drop/grow) at `density`.
inline DstConfig harness_config(double density) {
  DstConfig c;
  c.density = density;
  c.update_interval = 100;
  return c;
}

/// Median seconds of `reps` full mask updates made by `ctl` (steps 100, 200, ...).
template <class ControllerT>
double time_updates(ControllerT& ctl, int reps) {
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const auto a = std::chrono::steady_clock::now();
    ctl.update(100 * (r + 1));
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

/// Median seconds of one streaming read of every weight (and, with `grads`, every gradient too):
/// the floor of a mask update by |w| (and by |w| and |g|: RigL, EAST's cyclic preset).
inline double time_stream(const ModelBuffers& m, int reps, bool grads = false) {
  std::vector<double> t;
  std::uint32_t acc = 0;
  auto sum = [&acc](const std::vector<std::vector<float>>& arrays) {
    for (const auto& w : arrays) {
      std::uint32_t s = 0;
      const auto* u = reinterpret_cast<const std::uint32_t*>(w.data());
      for (std::size_t i = 0; i < w.size(); ++i) s += u[i];
      acc += s;
    }
  };
  for (int r = 0; r < reps; ++r) {
    const auto a = std::chrono::steady_clock::now();
    sum(m.weights);
    if (grads) sum(m.grads);
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count());
  }
  volatile std::uint32_t sink = acc;
  (void)sink;
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace east::bench
