#pragma once
// east — extreme sparse training. The one public header; adapters (Eigen, xtensor, libtorch)
// are included separately because they need their frameworks.
#include "config.hpp"
#include "core/error.hpp"
#include "core/parameter_set.hpp"
#include "core/random.hpp"
#include "masks/bit_mask.hpp"
#include "kernels/select.hpp"
#include "distributions/allocate.hpp"
#include "distributions/distributions.hpp"
#include "criteria/criteria.hpp"
#include "schedules/schedules.hpp"
#include "controller/controller.hpp"
#include "controller/presets.hpp"
#include "io/checkpoint.hpp"
