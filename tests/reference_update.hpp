#pragma once
// The multi-pass Controller::update() as it was before the fused update (kernels/update.hpp),
// kept verbatim as the oracle for tests/test_controller_update.cpp: count_nonfinite over every
// weight, the criterion's Scores over the whole layer, select + mark for drop and grow, commit
// through dense BitMasks, then apply_masks() over every layer.
#include <east/east.hpp>

#include <cmath>
#include <vector>

namespace east_test {

namespace ref_detail {
inline void select_into(const east::Scores& s, const east::LayerView& layer, const east::BitMask& mask,
                        std::size_t k, east::kernels::Extreme extreme, east::kernels::Among among,
                        east::BitMask& out) {
  namespace kernels = east::kernels;
  const auto n = layer.size();
  if (s.magnitudes) {
    std::size_t first = 0;
    const auto bad = s.magnitudes == layer.weight ? 0 : kernels::count_nonfinite(s.magnitudes, n, &first);
    east::detail::require(bad == 0, "east::Controller::update()", "layer '", layer.name, "' has ", bad,
                          " non-finite score(s), first at index ", first, " = ", s.magnitudes[first],
                          " (valid: finite weights and gradients)");
    const auto sel = kernels::select_abs(s.magnitudes, n, k, extreme, mask.words(), among);
    kernels::mark_selected_abs(s.magnitudes, n, sel, extreme, mask.words(), among, out.mutable_words());
  } else {
    east::detail::require(s.keys != nullptr, "east::Controller::update()",
                          "criterion returned no scores for layer '", layer.name, "'");
    const auto sel = kernels::select_keys(s.keys, n, k, extreme, mask.words(), among);
    kernels::mark_selected_keys(s.keys, n, sel, extreme, mask.words(), among, out.mutable_words());
  }
  out.recount();
}
}  // namespace ref_detail

/// State the reference update works on: a copy of a Controller's masks and policies.
template <class MethodT>
struct ReferenceState {
  east::ParameterSet params;
  MethodT method;
  east::ControllerOptions options;
  std::vector<east::BitMask> masks, ever_active;
  std::vector<std::uint32_t> scratch;
};

/// The pre-fusion update (drop/grow/move to density(step)), on `st`. Returns its report.
template <class MethodT>
east::UpdateReport reference_update(ReferenceState<MethodT>& st, std::int64_t step) {
  using namespace east;
  constexpr const char* where = "east::Controller::update()";
  auto& params_ = st.params;
  auto& method_ = st.method;
  auto& masks_ = st.masks;
  auto& ever_active_ = st.ever_active;
  auto& scratch_ = st.scratch;
  const double d = method_.density.density(step);
  detail::require(d > 0.0 && d <= 1.0, where, "scheduled density ", d, " at step ", step,
                  " is outside (0, 1]");
  const double f = method_.drop.drop_fraction(step);
  detail::require(std::isfinite(f) && f >= 0.0 && f <= 1.0, where, "drop fraction ", f, " at step ", step,
                  " (valid: [0, 1])");
  const auto counts = layer_counts(method_.distribution, params_, d, st.options.allocation);
  const RandomStream stream = make_stream(st.options.seed).derive(static_cast<std::uint64_t>(step));

  const std::size_t L = params_.size();
  std::vector<BitMask> dropped(L), grown(L);
  UpdateReport report;
  report.step = step;
  report.density = d;
  report.drop_fraction = f;
  for (std::size_t l = 0; l < L; ++l) {
    const auto& layer = params_[l];
    const auto& mask = masks_[l];
    const std::size_t n = layer.size(), c = mask.count(), t = counts[l];
    dropped[l] = BitMask(n);
    grown[l] = BitMask(n);
    if (layer.role == LayerRole::sparse) {
      std::size_t first = 0;
      const auto bad = kernels::count_nonfinite(layer.weight, n, &first);
      detail::require(bad == 0, where, "layer '", layer.name, "' has ", bad,
                      " non-finite weight(s), first at index ", first, " = ", layer.weight[first],
                      " (valid: finite values)");
      std::size_t k = static_cast<std::size_t>(std::ceil(f * static_cast<double>(std::min(c, t)) - 1e-9));
      k = std::min(k, n - std::max(c, t));
      const std::size_t n_drop = (c > t ? c - t : 0) + k, n_grow = (t > c ? t - c : 0) + k;
      LayerContext prune_ctx{layer, l, mask, stream.derive(l).derive(1), scratch_};
      if (n_drop > 0)
        ref_detail::select_into(method_.prune.prune_scores(prune_ctx), layer, mask, n_drop,
                                kernels::Extreme::smallest, kernels::Among::active, dropped[l]);
      LayerContext grow_ctx{layer, l, mask, stream.derive(l).derive(2), scratch_};
      if (n_grow > 0)
        ref_detail::select_into(method_.regrow.regrow_scores(grow_ctx), layer, mask, n_grow,
                                kernels::Extreme::largest, kernels::Among::inactive, grown[l]);
    }
    report.layers.push_back(
        LayerReport{layer.name, n, layer.uses, t, dropped[l].count(), grown[l].count(), 0});
  }

  for (std::size_t l = 0; l < L; ++l) {
    if (params_[l].role != LayerRole::sparse) continue;
    auto& m = masks_[l];
    auto* w = m.mutable_words();
    const auto* dw = dropped[l].words();
    const auto* gw = grown[l].words();
    auto* ew = ever_active_[l].mutable_words();
    for (std::size_t i = 0; i < m.word_count(); ++i) {
      w[i] = (w[i] & ~dw[i]) | gw[i];
      ew[i] |= w[i];
    }
    m.recount();
    ever_active_[l].recount();
    const auto& layer = params_[l];
    if (grown[l].count() > 0) {
      method_.grow_init.initialize(layer, gw);
      for (float* s : layer.state) kernels::fill_where(s, gw, layer.size(), 0.0f);
    }
  }
  for (std::size_t l = 0; l < L; ++l) {
    report.layers[l].nnz = masks_[l].count();
    report.layers[l].ever_active_fraction = ever_active_[l].density();
  }
  for (std::size_t l = 0; l < L; ++l) {  // apply_masks()
    if (params_[l].role == LayerRole::excluded) continue;
    masks_[l].apply(params_[l].weight);
    for (float* s : params_[l].state) masks_[l].apply(s);
  }
  return report;
}

}  // namespace east_test
