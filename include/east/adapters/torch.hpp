#pragma once
// east's libtorch adapter (optional; needs libtorch, e.g. Debian's libtorch-dev). See
// docs/torch-sparsifier.md and docs/torch-adapter.md. Everything lives in east::torch_adapter:
//   Sparsifier                   sparse training of any model in a standard loop (one object)
//   Conv2d, Linear (east::nn::)  drop-ins for torch::nn's that train on compact weights
//   make_parameter_set(module)   views of a module's Conv/Linear weights and gradients
//   Sgd, seed_sgd_momentum       for loops that drive a Controller themselves
//   DyReLUB                      DyReLU-B with phasing (torch ops or east's kernels)
//   SharedConv2d, ResidualBlock, ResNet   CIFAR ResNets with residual weight sharing
//   resnet_connectivity(net)     a ResNet's channel graph for east::check_connectivity / connect_masks
//   tensor/state helpers for checkpoints (state.hpp)
//   use_caching_allocator()      page-aligned reuse of large CPU tensors (allocator.hpp)
#include "../east.hpp"
#include "torch/allocator.hpp"
#include "torch/dyrelu.hpp"
#include "torch/registration.hpp"
#include "torch/resnet.hpp"
#include "torch/resnet_graph.hpp"
#include "torch/sgd.hpp"
#include "torch/sparsifier.hpp"
#include "torch/state.hpp"
