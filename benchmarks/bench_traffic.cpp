// Bytes per step and per mask update that data-parallel training sends, counted by the
// Communicator (docs/distributed.md):
//   DDP   one dense all-reduce of every parameter's gradient per step (prunable weights and the
//         dense BN parameters), whatever the sparsity;
//   east  per step one packed all-reduce of the nonzero gradients (the compact layers' values)
//         plus the dense parameters; on a mask-update step instead the dense gradient of every
//         prunable layer (RigL's regrowth reads it) plus the dense parameters, then the mask
//         digest check (one 8-byte all-gather).
// For full-width CIFAR ResNet-34 / ResNet-50 (torch_adapter::ResNet's shapes: 3×3 stem,
// BN after every conv, Linear without bias, 10 classes), RigL with ERK masks from east's
// controller, ΔT = 100: each configuration runs steps 1..100 (the update at step 100) through a
// real communicator and reports what it counted.
//   east_bench_traffic                          one process (SingleProcess: payload per rank)
//   scripts/launch-local 2 east_bench_traffic   Gloo ranks (when built with Gloo)
#include <east/distributed.hpp>
#include <east/east.hpp>

#if defined(EAST_HAS_GLOO)
#include <east/adapters/torch/gloo.hpp>
#endif

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

using namespace east;
using namespace east::distributed;

namespace {

struct Model {
  std::string name;
  std::vector<std::pair<std::string, Shape>> prunable;  // convs and the classifier
  std::size_t dense = 0;                                // BN weights and biases
};

// Mirrors torch_adapter::ResNetImpl (width 1, no sharing, no DyReLU).
Model cifar_resnet(int depth, std::int64_t classes = 10) {
  Model m{"ResNet-" + std::to_string(depth), {}, 0};
  const bool bottleneck = depth >= 50;
  const int blocks[] = {3, 4, 6, 3};
  auto conv = [&](const std::string& n, std::int64_t in, std::int64_t out, std::int64_t k) {
    m.prunable.push_back({n, {out, in, k, k}});
    m.dense += 2 * static_cast<std::size_t>(out);  // its BatchNorm's weight and bias
  };
  conv("conv1", 3, 64, 3);
  std::int64_t in = 64;
  for (int s = 0; s < 4; ++s) {
    const std::int64_t planes = 64 << s, out = bottleneck ? 4 * planes : planes;
    for (int b = 0; b < blocks[s]; ++b) {
      const std::string p = "layer" + std::to_string(s + 1) + "." + std::to_string(b) + ".";
      if (bottleneck) {
        conv(p + "conv1", in, planes, 1);
        conv(p + "conv2", planes, planes, 3);
        conv(p + "conv3", planes, out, 1);
      } else {
        conv(p + "conv1", in, planes, 3);
        conv(p + "conv2", planes, out, 3);
      }
      if (b == 0 && (s > 0 || in != out)) conv(p + "shortcut", in, out, 1);
      in = out;
    }
  }
  m.prunable.push_back({"fc", {classes, in}});
  return m;
}

struct Row {
  std::string model;
  double density = 0;
  std::size_t prunable = 0, nonzeros = 0, dense = 0;
  std::uint64_t ddp_step = 0, east_step = 0, east_update = 0, east_window = 0;
};

Row measure(Communicator& comm, const Model& m, double density) {
  const std::int64_t interval = 100;
  std::vector<std::vector<float>> w, g;
  ParameterSet params;
  for (std::size_t l = 0; l < m.prunable.size(); ++l) {
    const auto n = shape_size(m.prunable[l].second);
    const RandomStream s = make_stream(11).derive(l);
    w.emplace_back(n);
    g.emplace_back(n);
    for (std::size_t i = 0; i < n; ++i) {
      w[l][i] = static_cast<float>(s.uniform(i) - 0.5);
      g[l][i] = static_cast<float>(s.uniform(i + n) - 0.5) * 1e-3f;
    }
    params.add(m.prunable[l].first, w[l].data(), m.prunable[l].second, g[l].data());
  }
  std::vector<float> dense_grad(m.dense, 1e-3f);
  DstConfig cfg;
  cfg.density = density;
  cfg.update_interval = interval;
  auto ctl = make_rigl(params, cfg, ControllerOptions{1});  // ERK

  Row row{m.name, density, params.stored_size(), ctl.nonzeros(), m.dense, 0, 0, 0, 0};

  // DDP: every gradient, dense, every step.
  FloatPack ddp;
  for (auto& x : g) ddp.add(x);
  ddp.add(dense_grad);
  Traffic t0 = comm.traffic();
  ddp.all_reduce_sum(comm);
  row.ddp_step = comm.traffic().since(t0).total().payload_bytes;

  // east: the compact layers' nonzero gradients (one value per active weight) + dense params.
  std::vector<std::vector<float>> compact(m.prunable.size());
  const Traffic window = comm.traffic();
  for (std::int64_t step = 1; step <= interval; ++step) {
    const bool upd = ctl.is_update_step(step);
    FloatPack pack;
    if (upd) {
      for (auto& x : g) pack.add(x);  // RigL scores every inactive weight by |gradient|
    } else {
      for (std::size_t l = 0; l < compact.size(); ++l) {
        compact[l].assign(ctl.masks()[l].count(), 1e-3f);
        pack.add(compact[l]);
      }
    }
    pack.add(dense_grad);
    t0 = comm.traffic();
    pack.all_reduce_sum(comm);
    ctl.before_optimizer_step(step);
    if (ctl.after_optimizer_step(step)) check_masks_agree(comm, step, ctl);
    const auto bytes = comm.traffic().since(t0).total().payload_bytes;
    if (upd)
      row.east_update = bytes;
    else
      row.east_step = bytes;
  }
  row.east_window = comm.traffic().since(window).total().payload_bytes;
  return row;
}

std::string mb(std::uint64_t bytes) {
  char buf[32];
  if (bytes >= 1000000)
    std::snprintf(buf, sizeof buf, "%.2f MB", bytes / 1e6);
  else
    std::snprintf(buf, sizeof buf, "%.1f kB", bytes / 1e3);
  return buf;
}

}  // namespace

int main() {
  std::unique_ptr<Communicator> comm;
#if defined(EAST_HAS_GLOO)
  const char* ws = std::getenv("WORLD_SIZE");
  if (ws && std::atoi(ws) > 1) comm = std::make_unique<torch_adapter::GlooCommunicator>();
#endif
  if (!comm) comm = std::make_unique<SingleProcess>();
  std::vector<Row> rows;
  for (int depth : {34, 50})
    for (double d : {0.01, 0.001, 0.0001}) rows.push_back(measure(*comm, cifar_resnet(depth), d));
  if (comm->rank() != 0) return 0;
  std::printf(
      "east_bench_traffic: %s communicator, %d rank(s); payload bytes per rank (one rank's "
      "buffer per call); RigL, ERK, update every 100 steps\n\n",
      comm->backend().c_str(), comm->world_size());
  std::printf(
      "| model | sparsity | prunable weights | nonzeros | dense params | DDP per step | east per step | "
      "DDP / east per step | east per mask update | east per 100 steps | DDP per 100 steps | DDP / east per "
      "100 "
      "steps |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const auto& r : rows)
    std::printf("| %s | %.2f%% | %zu | %zu | %zu | %s | %s | %.0f× | %s | %s | %s | %.0f× |\n",
                r.model.c_str(), 100 * (1 - r.density), r.prunable, r.nonzeros, r.dense,
                mb(r.ddp_step).c_str(), mb(r.east_step).c_str(),
                static_cast<double>(r.ddp_step) / static_cast<double>(r.east_step), mb(r.east_update).c_str(),
                mb(r.east_window).c_str(), mb(100 * r.ddp_step).c_str(),
                100.0 * static_cast<double>(r.ddp_step) / static_cast<double>(r.east_window));
  const auto& t = comm->traffic();
  std::printf(
      "\ncounted in all: %llu all-reduce calls, %llu all-gather calls, %llu payload bytes, %llu wire bytes "
      "(estimate for %d ranks)\n",
      static_cast<unsigned long long>(t[CallKind::all_reduce].calls),
      static_cast<unsigned long long>(t[CallKind::all_gather].calls),
      static_cast<unsigned long long>(t.total().payload_bytes),
      static_cast<unsigned long long>(t.total().wire_bytes), comm->world_size());
  return 0;
}
