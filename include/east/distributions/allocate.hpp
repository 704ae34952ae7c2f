#pragma once
// The one mechanism behind every distribution: turn per-layer relative densities into exact
// integer nonzero counts that sum to the budget. Layers whose share would exceed density 1 are
// made dense and the rest re-solved (RigL's ERK rule); layers below the per-layer minimum are
// pinned at it and the rest re-solved; fractional parts go to the largest remainders.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "../core/error.hpp"
#include "../core/parameter_set.hpp"

namespace east {

/// Options shared by all distributions.
struct AllocationOptions {
  /// No sparse layer gets fewer nonzeros than this (capped at its size): avoids layer collapse.
  std::size_t min_nonzeros_per_layer = 1;
};

/// Nonzero budget for overall density d: ⌊d · N⌋, N counting every use of shared tensors, capped
/// at the stored weights (a shared network is fully dense from d = stored/logical on).
inline std::size_t nonzero_budget(const ParameterSet& params, double density) {
  detail::require_density(density, "east::nonzero_budget()");
  const auto n = params.logical_size();
  // The epsilon keeps d = 0.001 of 1000 weights at 1, not 0, under binary rounding.
  const auto b = static_cast<std::size_t>(std::floor(density * static_cast<double>(n) + 1e-9));
  return std::min(b, params.stored_size());
}

/// Exact per-layer counts. `relative[l]` is layer l's density up to a common factor ε (ignored
/// for dense and excluded layers). The result sums to `budget` over non-excluded layers.
inline std::vector<std::size_t> allocate_counts(const ParameterSet& params,
                                                const std::vector<double>& relative, std::size_t budget,
                                                const AllocationOptions& opt = {}) {
  constexpr const char* where = "east::allocate_counts()";
  const std::size_t L = params.size();
  detail::require(L > 0, where, "the parameter set is empty (valid: at least one layer)");
  detail::require(relative.size() == L, where, "got ", relative.size(), " relative densities for ", L,
                  " layers");
  std::vector<std::size_t> count(L, 0);
  std::vector<char> fixed(L, 0);
  std::size_t fixed_total = 0, sparse_layers = 0;
  for (std::size_t l = 0; l < L; ++l) {
    const auto& layer = params[l];
    if (layer.role == LayerRole::excluded) {
      fixed[l] = 1;
      continue;
    }
    if (layer.role == LayerRole::dense) {
      fixed[l] = 1;
      count[l] = layer.size();
      fixed_total += layer.size();
      continue;
    }
    detail::require(std::isfinite(relative[l]) && relative[l] > 0, where, "relative density ", relative[l],
                    " of layer '", layer.name, "' (valid: finite and > 0)");
    ++sparse_layers;
  }
  std::size_t min_total = 0;
  for (std::size_t l = 0; l < L; ++l)
    if (!fixed[l]) min_total += std::min(opt.min_nonzeros_per_layer, params[l].size());
  detail::require(budget >= fixed_total + min_total, where, "nonzero budget ", budget,
                  " is smaller than the ", fixed_total, " weights of dense layers plus the minimum of ",
                  opt.min_nonzeros_per_layer, " per sparse layer (", min_total, " over ", sparse_layers,
                  " layers); valid: budget >= ", fixed_total + min_total);
  std::size_t total_size = fixed_total;
  for (std::size_t l = 0; l < L; ++l)
    if (!fixed[l]) total_size += params[l].size();
  detail::require(budget <= total_size, where, "nonzero budget ", budget, " exceeds the ", total_size,
                  " weights available");

  // Re-solve until no free layer is above density 1 or below the minimum.
  std::vector<double> target(L, 0.0);
  for (;;) {
    double remaining = static_cast<double>(budget - fixed_total), mass = 0;
    for (std::size_t l = 0; l < L; ++l)
      if (!fixed[l]) mass += relative[l] * static_cast<double>(params[l].size());
    if (mass == 0) break;
    const double eps = remaining / mass;
    // Densest free layer above 1 becomes dense first (one at a time, as RigL does).
    std::size_t worst = ParameterSet::npos;
    for (std::size_t l = 0; l < L; ++l)
      if (!fixed[l] && eps * relative[l] > 1.0 &&
          (worst == ParameterSet::npos || relative[l] > relative[worst]))
        worst = l;
    if (worst != ParameterSet::npos) {
      fixed[worst] = 1;
      count[worst] = params[worst].size();
      fixed_total += count[worst];
      continue;
    }
    bool pinned = false;
    for (std::size_t l = 0; l < L; ++l) {
      const auto mn = std::min(opt.min_nonzeros_per_layer, params[l].size());
      if (!fixed[l] && eps * relative[l] * static_cast<double>(params[l].size()) < static_cast<double>(mn)) {
        fixed[l] = 1;
        count[l] = mn;
        fixed_total += mn;
        pinned = true;
      }
    }
    if (pinned) continue;
    for (std::size_t l = 0; l < L; ++l)
      if (!fixed[l]) target[l] = eps * relative[l] * static_cast<double>(params[l].size());
    break;
  }
  // Largest remainders (ties by layer index) make the integer counts sum to the budget exactly.
  std::size_t assigned = fixed_total;
  std::vector<std::pair<double, std::size_t>> frac;
  for (std::size_t l = 0; l < L; ++l) {
    if (fixed[l]) continue;
    const auto fl = std::min<std::size_t>(params[l].size(), static_cast<std::size_t>(std::floor(target[l])));
    count[l] = fl;
    assigned += fl;
    if (fl < params[l].size()) frac.emplace_back(target[l] - std::floor(target[l]), l);
  }
  std::stable_sort(frac.begin(), frac.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  for (std::size_t j = 0; assigned < budget && j < frac.size(); ++j, ++assigned) ++count[frac[j].second];
  detail::require(assigned == budget, where, "internal: could not place ", budget - assigned, " nonzeros");
  return count;
}

/// Densities (count / size) of an allocation, for reports and tests.
inline std::vector<double> densities_of(const ParameterSet& params, const std::vector<std::size_t>& counts) {
  std::vector<double> d(counts.size());
  for (std::size_t l = 0; l < counts.size(); ++l) d[l] = static_cast<double>(counts[l]) / params[l].size();
  return d;
}

}  // namespace east
