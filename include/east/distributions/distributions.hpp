#pragma once
// Built-in distributions. A Distribution is any type with
//   std::vector<double> relative_densities(const ParameterSet&) const;
// giving each layer's density up to a common factor; allocate_counts() turns that into exact
// counts for any overall density. See docs/distributions.md.
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "allocate.hpp"

namespace east {

/// Every sparse layer gets the same density.
struct Uniform {
  std::vector<double> relative_densities(const ParameterSet& params) const {
    return std::vector<double>(params.size(), 1.0);
  }
};

/// Erdős–Rényi: (n_in + n_out) / (n_in · n_out) from the first two dims (kernel dims ignored).
struct ErdosRenyi {
  std::vector<double> relative_densities(const ParameterSet& params) const {
    std::vector<double> r;
    for (const auto& l : params) {
      const double out = static_cast<double>(l.shape[0]);
      const double in = l.shape.size() > 1 ? static_cast<double>(l.shape[1]) : 1.0;
      r.push_back((in + out) / (in * out));
    }
    return r;
  }
};

/// Erdős–Rényi-Kernel: (Σ dims / Π dims)^power, as in RigL (power 1 by default).
struct ErdosRenyiKernel {
  double power = 1.0;
  std::vector<double> relative_densities(const ParameterSet& params) const {
    detail::require(std::isfinite(power) && power >= 0, "east::ErdosRenyiKernel", "power ", power,
                    " (valid: finite and >= 0)");
    std::vector<double> r;
    for (const auto& l : params) {
      double sum = 0, prod = 1;
      for (auto d : l.shape) {
        sum += static_cast<double>(d);
        prod *= static_cast<double>(d);
      }
      r.push_back(std::pow(sum / prod, power));
    }
    return r;
  }
};

/// A density per layer name, taken as given at the overall density those densities imply
/// (overall_density()) and scaled proportionally at other overall densities.
struct CustomDensities {
  std::map<std::string, double> density;
  std::vector<double> relative_densities(const ParameterSet& params) const {
    std::vector<double> r;
    for (const auto& l : params) {
      if (l.role != LayerRole::sparse) {
        r.push_back(1.0);
        continue;
      }
      const auto it = density.find(l.name);
      detail::require(it != density.end(), "east::CustomDensities", "no density given for layer '", l.name,
                      "'");
      detail::require_density(it->second, "east::CustomDensities",
                              ("density of layer '" + l.name + "'").c_str());
      r.push_back(it->second);
    }
    for (const auto& kv : density)
      detail::require(params.find(kv.first) != ParameterSet::npos, "east::CustomDensities",
                      "unknown layer name '", kv.first, "'");
    return r;
  }
  /// The overall density (counting every use) at which each layer gets exactly its given density.
  double overall_density(const ParameterSet& params) const {
    const auto rel = relative_densities(params);
    double nnz = 0;
    for (std::size_t l = 0; l < params.size(); ++l) {
      if (params[l].role == LayerRole::excluded) continue;
      nnz += (params[l].role == LayerRole::dense ? 1.0 : rel[l]) * static_cast<double>(params[l].size());
    }
    return nnz / static_cast<double>(params.logical_size());
  }
};

/// Exact counts of `dist` at overall density d.
template <class Distribution>
std::vector<std::size_t> layer_counts(const Distribution& dist, const ParameterSet& params, double density,
                                      const AllocationOptions& opt = {}) {
  return allocate_counts(params, dist.relative_densities(params), nonzero_budget(params, density), opt);
}

}  // namespace east
