#pragma once
// Per-layer choice between the sparse kernels and the dense (framework) ones. The sparse kernels
// do density × the dense multiply-adds but at a lower rate than a tuned dense GEMM, so below a
// crossover density they win. The defaults are the crossovers measured by
// benchmarks/sparse/bench_sparse_conv.cpp and bench_sparse_linear.cpp on this project's 2-vCPU
// AVX-512 machine (docs/sparse.md); measure again on other machines.
#include "../core/error.hpp"

namespace east::sparse {

/// Which implementation a layer runs.
enum class Backend { dense, sparse };

/// Crossover densities: a layer whose density is below its kind's crossover uses sparse kernels.
struct Crossover {
  /// conv2d forward + backward: measured crossovers of ResNet-34's 3×3 layers were 1.6–2.5%
  /// (batch 32, 2 threads, docs/sparse.md); 1.5% keeps them at or above break-even (the 1×1
  /// stride-2 layer with 4×4 outputs crosses at 0.8%).
  double conv = 0.015;
  /// linear forward + backward: measured by benchmarks/sparse/bench_sparse_linear.cpp against an
  /// Eigen GEMM of the same layer (784×1024, 1024×1024, 1024×10, batch 128, 1 thread, CPU time,
  /// docs/sparse.md): feature-major 9.2–18.9%, batch-major (transposed) 6.9–10.4% for the wide
  /// layers; 7% keeps them at or above break-even. A narrow batch-major layer (1024×10) never
  /// beats the GEMM: its transposes cost more than the whole dense product.
  double linear = 0.07;
  /// Strided convolutions (ResNet's downsampling 3×3 and 1×1 shortcut layers), whose compact
  /// form runs as stride-1 layers over phase planes or with row bodies: measured crossovers 4.6%
  /// (l2.0's 3×3), 5.1% (l4.0's 1×1), above 10% (l2.0's 1×1) at batch 64, 2 threads
  /// (docs/sparse.md); 4.5% keeps them at or above break-even. Negative (the default): the larger
  /// of `conv` and 4.5% — 0 when `conv` is 0 — so {2, 2} still runs every layer compact and {0, 0}
  /// none.
  double conv_strided = -1.0;

  /// The crossover a strided convolution uses (conv_strided, or its default).
  double strided_conv() const {
    constexpr double kStrided = 0.045;
    if (conv_strided >= 0.0) return conv_strided;
    return conv > 0.0 ? (conv > kStrided ? conv : kStrided) : 0.0;
  }
  /// Backend for a convolution of the given density (in [0, 1]); `strided`: stride above 1.
  Backend for_conv(double density, bool strided = false) const {
    return pick(density, strided ? strided_conv() : conv, "east::sparse::Crossover::for_conv()");
  }
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
