#pragma once
// Controller: drives prune/regrow cycles and density changes for any Method. It owns the masks
// and nothing else of the model; it knows nothing of frameworks or instruction sets.
//
// Per optimizer step the user calls
//   before_optimizer_step(step)  — masks gradients, except on update steps (regrowth needs them dense)
//   optimizer.step()
//   after_optimizer_step(step)   — on update steps: drop/grow/move to the scheduled density;
//                                   always: re-masks weights and registered optimizer buffers.
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "../core/parameter_set.hpp"
#include "../core/random.hpp"
#include "../kernels/select.hpp"
#include "../masks/bit_mask.hpp"
#include "../masks/connectivity.hpp"
#include "callbacks.hpp"
#include "method.hpp"
#include "report.hpp"

namespace east {

/// Options that are not policies.
struct ControllerOptions {
  std::uint64_t seed = 0;          ///< every random decision derives from it (counter-based)
  AllocationOptions allocation{};  ///< minimum nonzeros per layer
  /// When set, the initial masks are repaired so every layer use it declares lies on an
  /// input→output path, with the same per-layer counts (east/masks/connectivity.hpp).
  std::shared_ptr<const ConnectivityGraph> connectivity = nullptr;
  bool connect_every_weight = false;  ///< with connectivity: every weight on a path, not only every layer
};

/// Everything needed to resume: what io/checkpoint.hpp saves.
struct ControllerState {
  std::uint64_t seed = 0;
  std::int64_t last_update_step = -1;
  std::uint64_t updates = 0;
  double density = 0;  ///< overall density the masks were last moved to
  std::vector<std::string> names;
  std::vector<std::uint64_t> sizes, uses;
  std::vector<std::uint8_t> roles;
  std::vector<std::string> policy_states;  ///< one per policy of the Method, in declaration order
  std::vector<std::vector<std::uint64_t>> masks, ever_active;
};

template <class MethodT>
class Controller {
  static_assert(detail::method_traits<MethodT>::ok);  // names any missing policy method

 public:
  /// Builds the initial masks: counts from the distribution at density(0), positions chosen
  /// uniformly at random from the seed; zeroes the inactive weights and optimizer buffers.
  Controller(ParameterSet params, MethodT method, ControllerOptions options = {})
      : params_(std::move(params)), method_(std::move(method)), options_(options) {
    constexpr const char* where = "east::Controller()";
    detail::require(!params_.empty(), where, "the parameter set is empty (valid: at least one layer)");
    for (const auto& l : params_) detail::require(l.size() > 0, where, "layer '", l.name, "' is empty");
    density_ = scheduled_density(0, where);
    const auto counts = layer_counts(method_.distribution, params_, density_, options_.allocation);
    const RandomStream init = make_stream(options_.seed).derive(0x1217);
    std::vector<std::uint32_t> keys;
    for (std::size_t l = 0; l < params_.size(); ++l) {
      const auto& layer = params_[l];
      const auto n = layer.size();
      BitMask m(n);
      if (layer.role == LayerRole::excluded || counts[l] == n) {
        m.fill(true);
      } else {
        const auto s = init.derive(l);
        keys.resize(n);
        for (std::size_t i = 0; i < n; ++i) keys[i] = s.bits32(i);
        const auto sel = kernels::select_keys(keys.data(), n, counts[l], kernels::Extreme::largest);
        kernels::mark_selected_keys(keys.data(), n, sel, kernels::Extreme::largest, nullptr,
                                    kernels::Among::all, m.mutable_words());
        m.recount();
      }
      masks_.push_back(m);
      ever_active_.push_back(m);
    }
    if (options_.connectivity) {  // same counts; positions moved onto input→output paths
      if (options_.connect_every_weight)
        connect_every_weight(*options_.connectivity, params_, masks_, init.derive(0xC0111EC7));
      else
        connect_masks(*options_.connectivity, params_, masks_, init.derive(0xC0111EC7));
      ever_active_ = masks_;
    }
    apply_masks();
  }

  // ------------------------------------------------------------------ training-loop hooks

  /// Call after backward, before the optimizer step. Masks gradients except on update steps.
  template <class... Callbacks>
  void before_optimizer_step(std::int64_t step, Callbacks&&...) {
    detail::for_each_policy(method_, [&](auto& policy) {
      if constexpr (detail::has_observe<std::decay_t<decltype(policy)>>::value) policy.observe(step, params_);
    });
    if (is_update_step(step)) return;
    for (std::size_t l = 0; l < params_.size(); ++l)
      if (params_[l].grad && params_[l].role != LayerRole::excluded && per_step_masking(l))
        masks_[l].apply(params_[l].grad);
  }

  /// Call after the optimizer step. Returns true when the masks were updated at this step.
  template <class... Callbacks>
  bool after_optimizer_step(std::int64_t step, Callbacks&&... callbacks) {
    const bool upd = is_update_step(step);
    if (upd) {
      update(step, callbacks...);
    } else {
      for (std::size_t l = 0; l < params_.size(); ++l)
        if (per_step_masking(l)) apply_mask(l);
    }
    return upd;
  }

  /// Whether layer `l`'s gradient, weight and optimizer state are re-masked on every step (the
  /// default). Turn it off for a layer whose tensors are updated elsewhere between mask updates
  /// (e.g. torch_adapter::SparseCompute's compact copies): masking their stale dense tensors is
  /// wasted passes. Mask updates and apply_masks() still mask every layer.
  void set_per_step_masking(std::size_t l, bool on) {
    detail::require(l < params_.size(), "east::Controller::set_per_step_masking()", "layer ", l,
                    " (valid: < ", params_.size(), ")");
    skip_per_step_.resize(params_.size(), false);
    skip_per_step_[l] = !on;
  }
  bool per_step_masking(std::size_t l) const { return l >= skip_per_step_.size() || !skip_per_step_[l]; }

  /// Whether `step` is a mask-update step (the update schedule, or a forced density boundary).
  bool is_update_step(std::int64_t step) const {
    if constexpr (detail::has_forces_update<decltype(MethodT::density)>::value)
      if (method_.density.forces_update(step)) return true;
    return method_.update.is_update_step(step);
  }

  /// Performs one mask update now: every sparse layer moves to its share of density(step),
  /// dropping ⌈f·nnz⌉ more by the prune criterion and growing as many by the regrow criterion.
  /// Either every mask changes or (on an exception) none does.
  template <class... Callbacks>
  UpdateReport update(std::int64_t step, Callbacks&&... callbacks) {
    constexpr const char* where = "east::Controller::update()";
    const double d = scheduled_density(step, where);
    const double f = method_.drop.drop_fraction(step);
    detail::require(std::isfinite(f) && f >= 0.0 && f <= 1.0, where, "drop fraction ", f, " at step ", step,
                    " (valid: [0, 1])");
    const auto counts = layer_counts(method_.distribution, params_, d, options_.allocation);
    const RandomStream stream = make_stream(options_.seed).derive(static_cast<std::uint64_t>(step));

    // Phase 1: decide every layer's drop and grow sets without touching any state.
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
        // k swaps on top of the move to t; grow candidates are positions inactive before
        // this update, so a just-dropped weight is not regrown in the same update.
        std::size_t k = static_cast<std::size_t>(std::ceil(f * static_cast<double>(std::min(c, t)) - 1e-9));
        k = std::min(k, n - std::max(c, t));
        const std::size_t n_drop = (c > t ? c - t : 0) + k, n_grow = (t > c ? t - c : 0) + k;
        LayerContext prune_ctx{layer, l, mask, stream.derive(l).derive(1), scratch_};
        if (n_drop > 0)
          select_into(method_.prune.prune_scores(prune_ctx), layer, mask, n_drop, kernels::Extreme::smallest,
                      kernels::Among::active, dropped[l]);
        LayerContext grow_ctx{layer, l, mask, stream.derive(l).derive(2), scratch_};
        if (n_grow > 0)
          select_into(method_.regrow.regrow_scores(grow_ctx), layer, mask, n_grow, kernels::Extreme::largest,
                      kernels::Among::inactive, grown[l]);
      }
      report.layers.push_back(
          LayerReport{layer.name, n, layer.uses, t, dropped[l].count(), grown[l].count(), 0});
    }

    // Phase 2: commit.
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
    apply_masks();
    const double before = density_;
    density_ = d;
    last_update_step_ = step;
    ++updates_;
    for (std::size_t l = 0; l < L; ++l)
      if (grown[l].count() > 0) detail::notify_grown(params_[l], grown[l], callbacks...);
    if (before != d) detail::notify_density_change(step, before, d, callbacks...);
    detail::notify_update(report, callbacks...);
    last_report_ = report;
    return report;
  }

  /// Zeroes inactive weights and registered optimizer buffers (e.g. after a user's own change).
  void apply_masks() {
    for (std::size_t l = 0; l < params_.size(); ++l) apply_mask(l);
  }
  /// The same for one layer.
  void apply_mask(std::size_t l) {
    if (params_[l].role == LayerRole::excluded) return;
    masks_[l].apply(params_[l].weight);
    for (float* s : params_[l].state) masks_[l].apply(s);
  }

  // ------------------------------------------------------------------ observers

  const std::vector<BitMask>& masks() const { return masks_; }
  const BitMask& mask(const std::string& name) const { return masks_[index_of(name)]; }
  const std::vector<BitMask>& ever_active() const { return ever_active_; }
  const ParameterSet& params() const { return params_; }
  /// Mutable views, e.g. to re-point gradient buffers (set_grad) between steps.
  ParameterSet& params() { return params_; }
  const MethodT& method() const { return method_; }
  MethodT& method() { return method_; }
  const ControllerOptions& options() const { return options_; }
  const UpdateReport& last_report() const { return last_report_; }
  std::uint64_t updates() const { return updates_; }

  /// Active stored weights of non-excluded layers.
  std::size_t nonzeros() const {
    std::size_t n = 0;
    for (std::size_t l = 0; l < masks_.size(); ++l)
      if (params_[l].role != LayerRole::excluded) n += masks_[l].count();
    return n;
  }
  /// East's one density: stored nonzeros ÷ logical size (every use of a shared tensor counted),
  /// so a shared and an unshared network at the same density hold the same nonzeros.
  double density() const {
    return static_cast<double>(nonzeros()) / static_cast<double>(params_.logical_size());
  }
  /// Stored nonzeros ÷ stored weights (what the memory holds).
  double stored_density() const {
    return static_cast<double>(nonzeros()) / static_cast<double>(params_.stored_size());
  }
  /// Overall density the masks were last moved to.
  double target_density() const { return density_; }

  /// A 64-bit digest of every mask: data-parallel ranks compare it to check they agree.
  std::uint64_t digest() const {
    std::uint64_t h = mix64(masks_.size());
    for (const auto& m : masks_) h = mix64(h ^ m.digest());
    return h;
  }

  /// Names of non-excluded layers with no active weight (their output is constant: a cut path).
  std::vector<std::string> empty_layers() const {
    std::vector<std::string> out;
    for (std::size_t l = 0; l < masks_.size(); ++l)
      if (params_[l].role != LayerRole::excluded && masks_[l].count() == 0) out.push_back(params_[l].name);
    return out;
  }

  // ------------------------------------------------------------------ resume

  ControllerState state() const {
    ControllerState s;
    s.seed = options_.seed;
    s.last_update_step = last_update_step_;
    s.updates = updates_;
    s.density = density_;
    for (std::size_t l = 0; l < masks_.size(); ++l) {
      s.names.push_back(params_[l].name);
      s.sizes.push_back(params_[l].size());
      s.uses.push_back(params_[l].uses);
      s.roles.push_back(static_cast<std::uint8_t>(params_[l].role));
      s.masks.emplace_back(masks_[l].words(), masks_[l].words() + masks_[l].word_count());
      s.ever_active.emplace_back(ever_active_[l].words(),
                                 ever_active_[l].words() + ever_active_[l].word_count());
    }
    detail::for_each_policy(method_, [&](const auto& policy) {
      if constexpr (detail::has_saved_state<std::decay_t<decltype(policy)>>::value)
        s.policy_states.push_back(policy.save_state());
      else
        s.policy_states.emplace_back();
    });
    return s;
  }

  /// Restores masks and counters; validates everything first, so a mismatch changes nothing.
  /// Re-applies the masks to weights and optimizer buffers.
  void restore(const ControllerState& s) {
    constexpr const char* where = "east::Controller::restore()";
    detail::require(s.names.size() == params_.size(), where, "state has ", s.names.size(),
                    " layers, the parameter set ", params_.size());
    detail::require(s.sizes.size() == s.names.size() && s.masks.size() == s.names.size() &&
                        s.ever_active.size() == s.names.size() && s.uses.size() == s.names.size() &&
                        s.roles.size() == s.names.size() && s.policy_states.size() == 7,
                    where, "inconsistent layer or policy tables");
    for (std::size_t l = 0; l < params_.size(); ++l) {
      detail::require(s.names[l] == params_[l].name, where, "layer ", l, " is '", s.names[l], "', expected '",
                      params_[l].name, "'");
      detail::require(s.sizes[l] == params_[l].size(), where, "layer '", s.names[l], "' has size ",
                      s.sizes[l], ", expected ", params_[l].size());
      detail::require(
          s.uses[l] == params_[l].uses && s.roles[l] == static_cast<std::uint8_t>(params_[l].role), where,
          "layer '", s.names[l], "' was saved with ", s.uses[l], " uses and role ", int(s.roles[l]),
          ", the model has ", params_[l].uses, " and ", int(params_[l].role));
      const auto words = kernels::words_for(params_[l].size());
      detail::require(s.masks[l].size() == words && s.ever_active[l].size() == words, where, "layer '",
                      s.names[l], "' has ", s.masks[l].size(), " mask words, expected ", words);
    }
    // Policy state goes into a copy first, so a bad blob leaves this controller untouched.
    MethodT method = method_;
    std::size_t k = 0;
    detail::for_each_policy(method, [&](auto& policy) {
      const std::string& blob = s.policy_states[k++];
      if constexpr (detail::has_saved_state<std::decay_t<decltype(policy)>>::value)
        policy.load_state(blob);
      else
        detail::require(blob.empty(), where, "policy ", k - 1, " has saved state but takes none");
    });
    method_ = std::move(method);
    for (std::size_t l = 0; l < params_.size(); ++l) {
      masks_[l].assign_words(s.masks[l].data());
      ever_active_[l].assign_words(s.ever_active[l].data());
    }
    options_.seed = s.seed;
    last_update_step_ = s.last_update_step;
    updates_ = s.updates;
    density_ = s.density;
    apply_masks();
  }

 private:
  double scheduled_density(std::int64_t step, const char* where) const {
    const double d = method_.density.density(step);
    detail::require(d > 0.0 && d <= 1.0, where, "scheduled density ", d, " at step ", step,
                    " is outside (0, 1]");
    return d;
  }

  std::size_t index_of(const std::string& name) const {
    const auto i = params_.find(name);
    detail::require(i != ParameterSet::npos, "east::Controller", "unknown layer name '", name, "'");
    return i;
  }

  // Rejects non-finite scores (documented rule: NaN/Inf in weights or gradients at an update is
  // an error, raised before any mask changes), then selects exactly k candidates.
  static void select_into(const Scores& s, const LayerView& layer, const BitMask& mask, std::size_t k,
                          kernels::Extreme extreme, kernels::Among among, BitMask& out) {
    const auto n = layer.size();
    if (s.magnitudes) {
      std::size_t first = 0;
      const auto bad = s.magnitudes == layer.weight ? 0 : kernels::count_nonfinite(s.magnitudes, n, &first);
      detail::require(bad == 0, "east::Controller::update()", "layer '", layer.name, "' has ", bad,
                      " non-finite score(s), first at index ", first, " = ", s.magnitudes[first],
                      " (valid: finite weights and gradients)");
      const auto sel = kernels::select_abs(s.magnitudes, n, k, extreme, mask.words(), among);
      kernels::mark_selected_abs(s.magnitudes, n, sel, extreme, mask.words(), among, out.mutable_words());
    } else {
      detail::require(s.keys != nullptr, "east::Controller::update()",
                      "criterion returned no scores for layer '", layer.name, "'");
      const auto sel = kernels::select_keys(s.keys, n, k, extreme, mask.words(), among);
      kernels::mark_selected_keys(s.keys, n, sel, extreme, mask.words(), among, out.mutable_words());
    }
    out.recount();
  }

  ParameterSet params_;
  MethodT method_;
  ControllerOptions options_;
  std::vector<bool> skip_per_step_;  // layers set_per_step_masking turned off
  std::vector<BitMask> masks_, ever_active_;
  std::vector<std::uint32_t> scratch_;
  double density_ = 1.0;
  std::int64_t last_update_step_ = -1;
  std::uint64_t updates_ = 0;
  UpdateReport last_report_;
};

template <class M>
Controller(ParameterSet, M) -> Controller<M>;
template <class M>
Controller(ParameterSet, M, ControllerOptions) -> Controller<M>;

}  // namespace east
