// libtorch baselines (topk / kthvalue on |w|, as rigl-torch-style code does), in their own
// translation unit so the heavy torch headers compile once.
#include <torch/torch.h>

#include "bench_common.hpp"

namespace east::bench {

void register_torch(const Options& o) {
  for (std::size_t n : o.sizes)
    for (double pct : o.ks) {
      const std::size_t k = std::max<std::size_t>(1, k_of(n, pct));
      const std::string c = "N=" + human(n) + ",k=" + kname(pct) + ",t=1";
      add(
          name("select", "torch_topk", c),
          [n, k](benchmark::State& s) {
            at::set_num_threads(1);
            auto& w = const_cast<std::vector<float>&>(weights(n));
            const auto t = torch::from_blob(w.data(), {static_cast<long>(n)}, torch::kFloat32);
            for (auto _ : s) {
              auto r = torch::topk(t.abs(), static_cast<long>(k), 0, /*largest=*/false, /*sorted=*/false);
              benchmark::DoNotOptimize(std::get<0>(r).data_ptr());
            }
          },
          1);
      add(
          name("select", "torch_kthvalue", c),
          [n, k](benchmark::State& s) {
            at::set_num_threads(1);
            auto& w = const_cast<std::vector<float>&>(weights(n));
            const auto t = torch::from_blob(w.data(), {static_cast<long>(n)}, torch::kFloat32);
            for (auto _ : s) {
              auto r = torch::kthvalue(t.abs(), static_cast<long>(k));
              benchmark::DoNotOptimize(std::get<0>(r).data_ptr());
            }
          },
          1);
    }
}

}  // namespace east::bench
