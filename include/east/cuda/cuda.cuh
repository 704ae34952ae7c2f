#pragma once
// east's optional CUDA backend, all of it: include from a .cu file compiled by nvcc and link
// east::cuda. See docs/cuda.md.
#include "common.cuh"
#include "dyrelu.cuh"
#include "mask.cuh"
#include "mask_update.cuh"
#include "select.cuh"
#include "sharing.cuh"
