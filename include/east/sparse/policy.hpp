#pragma once
// Per-layer choice between the sparse kernels and the dense (framework) ones. The sparse kernels
// do density × the dense multiply-adds but at a lower rate than a tuned dense GEMM, so below a
// crossover density they win. The defaults are the crossovers measured by
// benchmarks/sparse/bench_sparse_conv.cpp on this project's 2-vCPU AVX-512 machine (docs/sparse.md);
// measure again on other machines.
#include "../core/error.hpp"

namespace east::sparse {

/// Which implementation a layer runs.
enum class Backend { dense, sparse };

/// Crossover densities: a layer whose density is below its kind's crossover uses sparse kernels.
struct Crossover {
  double conv = 0.05;    ///< conv2d forward + backward (docs/sparse.md)
  double linear = 0.05;  ///< linear forward + backward

  /// Backend for a convolution of the given density (in [0, 1]).
  Backend for_conv(double density) const { return pick(density, conv, "east::sparse::Crossover::for_conv()"); }
  /// Backend for a linear layer of the given density (in [0, 1]).
  Backend for_linear(double density) const {
    return pick(density, linear, "east::sparse::Crossover::for_linear()");
  }

 private:
  static Backend pick(double density, double crossover, const char* where) {
    ::east::detail::require(density >= 0.0 && density <= 1.0, where, "density ", density, " (valid: [0, 1])");
    return density < crossover ? Backend::sparse : Backend::dense;
  }
};

}  // namespace east::sparse
