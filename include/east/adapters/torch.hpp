#pragma once
// east's libtorch adapter (optional; needs libtorch, e.g. Debian's libtorch-dev). See
// docs/torch-adapter.md. Everything lives in east::torch_adapter:
//   make_parameter_set(module)   views of a module's Conv/Linear weights and gradients
//   Sgd                          SGD with fixed momentum buffers east can mask in place
//   seed_sgd_momentum(...)       the same for an existing torch::optim::SGD
//   DyReLUB                      DyReLU-B with phasing (torch ops or east's kernels)
//   SharedConv2d, ResidualBlock, ResNet   CIFAR ResNets with residual weight sharing
//   resnet_connectivity(net)     a ResNet's channel graph for east::check_connectivity / connect_masks
//   SparseCompute                a model's convolutions on east's sparse kernels (compact weights)
//   tensor/state helpers for checkpoints (state.hpp)
#include "../east.hpp"
#include "torch/dyrelu.hpp"
#include "torch/registration.hpp"
#include "torch/resnet.hpp"
#include "torch/resnet_graph.hpp"
#include "torch/sgd.hpp"
#include "torch/sparse_compute.hpp"
#include "torch/state.hpp"
