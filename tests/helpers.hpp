#pragma once
// Small fixtures shared by the core tests: a toy model whose buffers the test owns.
#include <east/east.hpp>

#include <random>
#include <string>
#include <vector>

namespace east_test {

struct Tensor {
  std::string name;
  east::Shape shape;
  std::vector<float> w, g, m;
};

/// A few layers of different shapes with random weights and gradients (seeded).
struct ToyModel {
  std::vector<Tensor> tensors;
  explicit ToyModel(std::vector<std::pair<std::string, east::Shape>> shapes, unsigned seed = 1) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (auto& [name, shape] : shapes) {
      Tensor t{name, shape, {}, {}, {}};
      const auto n = east::shape_size(shape);
      t.w.resize(n);
      t.g.resize(n);
      t.m.assign(n, 0.5f);
      for (auto& x : t.w) x = nd(rng);
      for (auto& x : t.g) x = nd(rng);
      tensors.push_back(std::move(t));
    }
  }
  static ToyModel small() {
    return ToyModel(
        {{"conv1", {16, 3, 3, 3}}, {"conv2", {32, 16, 3, 3}}, {"conv3", {32, 32, 1, 1}}, {"fc", {10, 32}}});
  }
  east::ParameterSet params(bool with_state = false) {
    east::ParameterSet p;
    for (auto& t : tensors) {
      p.add(t.name, t.w.data(), t.shape, t.g.data());
      if (with_state) p.add_state(t.name, t.m.data());
    }
    return p;
  }
  void randomize_grads(unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (auto& t : tensors)
      for (auto& x : t.g) x = nd(rng);
  }
  /// A stand-in for an optimizer step: w -= lr * g.
  void sgd(float lr) {
    for (auto& t : tensors)
      for (std::size_t i = 0; i < t.w.size(); ++i) t.w[i] -= lr * t.g[i];
  }
};

inline std::size_t count_nonzero(const std::vector<float>& v) {
  std::size_t n = 0;
  for (float x : v) n += x != 0.0f;
  return n;
}

}  // namespace east_test
