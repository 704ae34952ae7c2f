#pragma once
// east::sparse — training whose cost scales with the nonzeros (docs/sparse.md):
//   CsrWeight               compact masked weight (CSR by output channel), rebuilt at mask updates
//   conv2d_* / linear_*     forward, input gradient, weight gradient at active positions only
//   top_inactive_gradient   regrowth scores (top-k |dW| at inactive positions), block by block
//   sgd_step                SGD with momentum over the compact values
//   Crossover               per-layer sparse/dense switch at the measured crossover density
//   batchnorm_forward/backward  BatchNorm (+ residual add) + ReLU fused, two passes per channel
//   CompactLinear / CompactConv2d  layers on compact weights driven by the controller
//                           (docs/compact-layers.md)
#include "batchnorm.hpp"
#include "compact_layer.hpp"
#include "conv.hpp"
#include "csr.hpp"
#include "linear.hpp"
#include "policy.hpp"
#include "regrow.hpp"
#include "sgd.hpp"
