#pragma once
// east's framework-free data-parallel pieces (docs/distributed.md):
//   distributed::Communicator     the seam: all-reduce-sum, broadcast, all-gather, barrier,
//                                 counted per call kind (Traffic); SingleProcess default
//   distributed::InProcessGroup   N ranks as threads (tests; sums in rank order)
//   distributed::InitOptions      world size, rank, tcp:// or file:// address, timeout, from
//                                 arguments or torchrun's environment
//   distributed::FloatPack        many buffers, one collective; Reduction::engine / rank_order
//   distributed::check_masks_agree, check_settings_agree   agreement checks across ranks
// The Gloo engine is adapters/torch/gloo.hpp (needs libtorch with c10d and libgloo-dev).
#include "distributed/communicator.hpp"
#include "distributed/exact.hpp"
#include "distributed/in_process.hpp"
#include "distributed/init.hpp"
