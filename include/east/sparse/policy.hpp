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
  /// conv2d forward + backward (stride 1): every 3×3 shape of ResNet-34 (32×32 to 4×4 planes)
  /// runs faster compact than libtorch's dense convolution at every density measured up to 10%
  /// (batch 64; at 10% l4's 512-channel 4×4 layer 1.08× with 2 threads, 1.29× with 1; l1–l3
  /// 2.4–6.5×; docs/sparse.md, 2026-12-01), so 10% keeps every measured shape at or above
  /// break-even. (It was 1.5%, measured at batch 32 under load before the weight gradient's
  /// image chunks; the public step at 1% density ran 2.1–2.5× faster with 10%.)
  double conv = 0.10;
  /// linear forward + backward: measured by benchmarks/sparse/bench_sparse_linear.cpp against an
  /// Eigen GEMM of the same layer (784×1024, 1024×1024, 1024×10, batch 128, 1 thread, CPU time,
  /// docs/sparse.md): feature-major 9.2–18.9%, batch-major (transposed) 6.9–10.4% for the wide
  /// layers; 7% keeps them at or above break-even. A narrow batch-major layer (1024×10) never
  /// beats the GEMM: its transposes cost more than the whole dense product.
  double linear = 0.07;
  /// Strided convolutions (ResNet's downsampling 3×3 and 1×1 shortcut layers), whose compact
  /// form runs as stride-1 layers over phase planes or with row bodies: measured crossovers 4.6%
  /// (l2.0's 3×3), 5.1% (l4.0's 1×1), above 10% (l2.0's 1×1) at batch 64, 2 threads
  /// (docs/sparse.md); 4.5% keeps them at or above break-even. Negative (the default): 4.5%,
  /// except that a `conv` of 0 (every convolution dense) or above 1 (every convolution compact)
  /// holds for strided ones too, so {0, 0} and {2, 2} keep their meaning.
  double conv_strided = -1.0;

  /// The crossover a strided convolution uses (conv_strided, or its default).
  double strided_conv() const {
    constexpr double kStrided = 0.045;
    if (conv_strided >= 0.0) return conv_strided;
    return conv == 0.0 || conv > 1.0 ? conv : kStrided;
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
