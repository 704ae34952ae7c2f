#pragma once
// Controller: drives prune/regrow cycles and density changes for any Method. It owns the masks
// and nothing else of the model; it knows nothing of frameworks or instruction sets.
//
// Per optimizer step the user calls
//   before_optimizer_step(step)  — masks gradients, except on update steps (regrowth needs them dense)
//   optimizer.step()
//   after_optimizer_step(step)   — on update steps: drop/grow/move to the scheduled density;
//                                   always: re-masks weights and registered optimizer buffers.
// Layers with a LayerStorage (compact layers) are driven through its hooks by these same calls.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "../core/error.hpp"
#include "../core/parameter_set.hpp"
#include "../core/random.hpp"
#include "../init/fan_in.hpp"
#include "../kernels/select.hpp"
#include "../kernels/update.hpp"
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
  /// Rescaling of the surviving initial weights when the masks are created (init/fan_in.hpp).
  /// fan_in keeps each unit's output variance at what the dense initialiser intended; without
  /// it, networks without normalisation layers stop learning at high sparsity.
  InitScaling init = InitScaling::fan_in;
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

namespace detail {
/// One layer's decisions of an update, kept between deciding (Phase 1) and committing (Phase 2).
struct LayerDecision {
  std::vector<std::uint32_t> drop, grow;  ///< positions, ascending
  kernels::U32Buffer dirty;               ///< mask words with nonzero weights at inactive positions
  bool dirty_known = false;               ///< `dirty` is complete (the fused scan ran)
  bool ever_missing = false;              ///< the mask has bits ever_active lacks
  void clear() {
    drop.clear();
    grow.clear();
    dirty.clear();
    dirty_known = ever_missing = false;
  }
};
}  // namespace detail

template <class MethodT>
class Controller {
  static_assert(detail::method_traits<MethodT>::ok);  // names any missing policy method
  using RegrowT = std::decay_t<decltype(std::declval<MethodT&>().regrow)>;

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
    for (std::size_t l = 0; l < params_.size(); ++l) {
      const auto& layer = params_[l];
      if (layer.role == LayerRole::excluded) continue;
      masks_[l].apply(layer.weight);
      for (float* s : layer.state) masks_[l].apply(s);
      if (options_.init == InitScaling::fan_in && layer.role == LayerRole::sparse)
        scale_to_active_fan_in(layer, masks_[l]);
    }
    sync_storage();
    prepare_storage(0);
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
    prepare_storage(step + 1);
    return upd;
  }

  /// Whether layer `l`'s gradient, weight and optimizer state are re-masked on every step (the
  /// default). Turn it off for a layer whose tensors are updated elsewhere between mask updates
  /// (e.g. torch_adapter::SparseCompute's compact copies): masking their stale dense tensors is
  /// wasted passes. Mask updates and apply_masks() still mask every layer.
  /// Layers with a detached LayerStorage are skipped automatically.
  void set_per_step_masking(std::size_t l, bool on) {
    detail::require(l < params_.size(), "east::Controller::set_per_step_masking()", "layer ", l,
                    " (valid: < ", params_.size(), ")");
    skip_per_step_.resize(params_.size(), false);
    skip_per_step_[l] = !on;
  }
  void set_per_step_masking(const std::string& name, bool on) { set_per_step_masking(index_of(name), on); }
  bool per_step_masking(std::size_t l) const {
    if (params_[l].storage && params_[l].storage->detached()) return false;
    return l >= skip_per_step_.size() || !skip_per_step_[l];
  }
  bool per_step_masking(const std::string& name) const { return per_step_masking(index_of(name)); }

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
    for (auto& layer : params_)
      if (layer.storage && layer.storage->detached()) layer.storage->sync_to_dense();

    // Phase 1: decide every layer's drop and grow sets without touching any state.
    const std::size_t L = params_.size();
    decisions_.resize(L);
    UpdateReport report;
    report.step = step;
    report.density = d;
    report.drop_fraction = f;
    for (std::size_t l = 0; l < L; ++l) {
      const auto& layer = params_[l];
      const auto& mask = masks_[l];
      const std::size_t n = layer.size(), c = mask.count(), t = counts[l];
      auto& dec = decisions_[l];
      dec.clear();
      if (layer.role == LayerRole::sparse) {
        // k swaps on top of the move to t; grow candidates are positions inactive before
        // this update, so a just-dropped weight is not regrown in the same update.
        std::size_t k = static_cast<std::size_t>(std::ceil(f * static_cast<double>(std::min(c, t)) - 1e-9));
        k = std::min(k, n - std::max(c, t));
        const std::size_t n_drop = (c > t ? c - t : 0) + k, n_grow = (t > c ? t - c : 0) + k;
        decide_layer(l, n_drop, n_grow, stream.derive(l), dec);
      }
      report.layers.push_back(LayerReport{layer.name, n, layer.uses, t, dec.drop.size(), dec.grow.size(), 0});
    }

    // Phase 2: commit (sparse layers touch only changed mask words and the weights the scan
    // found nonzero at inactive positions; other layers are re-masked as apply_masks() does).
    for (std::size_t l = 0; l < L; ++l) {
      if (params_[l].role == LayerRole::sparse) commit_layer(l, decisions_[l], stream.derive(l).derive(3));
    }
    for (std::size_t l = 0; l < L; ++l) {
      report.layers[l].nnz = masks_[l].count();
      report.layers[l].ever_active_fraction = ever_active_[l].density();
    }
    for (std::size_t l = 0; l < L; ++l)
      if (params_[l].role == LayerRole::dense) apply_mask(l);
    sync_storage();
    grad_scratch_ = std::vector<float>();
    const double before = density_;
    density_ = d;
    last_update_step_ = step;
    ++updates_;
    if constexpr ((detail::has_on_grown<std::remove_reference_t<Callbacks>>::value || ...)) {
      for (std::size_t l = 0; l < L; ++l) {
        if (decisions_[l].grow.empty()) continue;
        BitMask grown(params_[l].size());
        for (const auto i : decisions_[l].grow) grown.set(i);
        detail::notify_grown(params_[l], grown, callbacks...);
      }
    }
    if (before != d) detail::notify_density_change(step, before, d, callbacks...);
    detail::notify_update(report, callbacks...);
    last_report_ = report;
    return report;
  }

  /// Zeroes inactive weights and registered optimizer buffers (e.g. after a user's own change).
  void apply_masks() {
    for (std::size_t l = 0; l < params_.size(); ++l) apply_mask(l);
  }

  /// Brings the dense weight views of layers on their own storage (compact layers) up to date:
  /// call before reading or saving those weights, e.g. for a checkpoint.
  void sync_dense_views() const {
    for (const auto& l : params_)
      if (l.storage && l.storage->detached()) l.storage->sync_to_dense();
  }
  /// The reverse: after writing into the dense weight views (loading a checkpoint's weights),
  /// rebuilds every LayerStorage from them under the current masks.
  void refresh_from_dense() {
    apply_masks();
    sync_storage();
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
  const BitMask& mask(std::size_t l) const {
    detail::require(l < masks_.size(), "east::Controller::mask()", "layer ", l, " (valid: < ", masks_.size(),
                    ")");
    return masks_[l];
  }
  /// Position of a layer in the parameter set (the index the masks and reports use).
  std::size_t index_of(const std::string& name) const {
    const auto i = params_.find(name);
    detail::require(i != ParameterSet::npos, "east::Controller", "unknown layer name '", name, "'");
    return i;
  }
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

  /// Restores masks and counters; validates everything first (against the model, and the state's
  /// own consistency: see validated_method), so a rejected state changes nothing. Re-applies the
  /// masks to weights and optimizer buffers and rebuilds every LayerStorage under the restored
  /// masks; after loading weights into the dense views, call refresh_from_dense().
  void restore(const ControllerState& s) {
    MethodT method = validated_method(s);
    method_ = std::move(method);
    sync_dense_views();  // compact values survive the mask change where both masks keep them
    for (std::size_t l = 0; l < params_.size(); ++l) {
      masks_[l].assign_words(s.masks[l].data());
      ever_active_[l].assign_words(s.ever_active[l].data());
    }
    options_.seed = s.seed;
    last_update_step_ = s.last_update_step;
    updates_ = s.updates;
    density_ = s.density;
    apply_masks();
    sync_storage();
    // The step the run resumes at is not known here: let compact layers keep what a mask update
    // needs on the first step (a cheap copy of one step's activations if it is not one).
    for (auto& l : params_)
      if (l.storage) l.storage->prepare_step(detail::regrow_reads_gradient<RegrowT>::value);
  }

 private:
  // Checks `s` against the model and against what update() and the constructor can produce, and
  // returns a copy of the method holding the saved policy state; throws InvalidArgument naming
  // the field and value otherwise. Changes nothing.
  MethodT validated_method(const ControllerState& s) const {
    constexpr const char* where = "east::Controller::restore()";
    detail::require(s.names.size() == params_.size(), where, "state has ", s.names.size(),
                    " layers, the parameter set ", params_.size());
    detail::require(s.sizes.size() == s.names.size() && s.masks.size() == s.names.size() &&
                        s.ever_active.size() == s.names.size() && s.uses.size() == s.names.size() &&
                        s.roles.size() == s.names.size() && s.policy_states.size() == 7,
                    where, "inconsistent layer or policy tables");
    detail::require(std::isfinite(s.density) && s.density > 0.0 && s.density <= 1.0, where, "density ",
                    s.density, " (valid: finite, in (0, 1])");
    detail::require(s.last_update_step >= -1, where, "last_update_step ", s.last_update_step,
                    " (valid: >= -1; -1 before the first update)");
    detail::require((s.updates == 0) == (s.last_update_step == -1), where, "updates ", s.updates,
                    " with last_update_step ", s.last_update_step,
                    " (valid: 0 updates exactly when last_update_step is -1)");
    auto popcount = [](const std::vector<std::uint64_t>& w) {
      std::size_t c = 0;
      for (auto x : w) c += static_cast<std::size_t>(__builtin_popcountll(x));
      return c;
    };
    for (std::size_t l = 0; l < params_.size(); ++l) {
      const auto& name = s.names[l];
      detail::require(name == params_[l].name, where, "layer ", l, " is '", name, "', expected '",
                      params_[l].name, "'");
      const std::size_t n = params_[l].size();
      detail::require(s.sizes[l] == n, where, "layer '", name, "' has size ", s.sizes[l], ", expected ", n);
      detail::require(
          s.uses[l] == params_[l].uses && s.roles[l] == static_cast<std::uint8_t>(params_[l].role), where,
          "layer '", name, "' was saved with ", s.uses[l], " uses and role ", int(s.roles[l]),
          ", the model has ", params_[l].uses, " and ", int(params_[l].role));
      const auto words = kernels::words_for(n);
      const auto& m = s.masks[l];
      const auto& e = s.ever_active[l];
      detail::require(m.size() == words && e.size() == words, where, "layer '", name, "' has ", m.size(),
                      " mask words, expected ", words);
      if (n % 64) {
        const std::uint64_t tail = ~((std::uint64_t{1} << (n % 64)) - 1);
        detail::require((m.back() & tail) == 0, where, "layer '", name, "': mask has bits set beyond its ", n,
                        " weights (valid: zero tail bits)");
        detail::require((e.back() & tail) == 0, where, "layer '", name,
                        "': ever_active has bits set beyond its ", n, " weights (valid: zero tail bits)");
      }
      // The constructor gives dense and excluded layers all-ones masks and update() never moves them.
      if (params_[l].role != LayerRole::sparse) {
        const char* role = params_[l].role == LayerRole::dense ? "dense" : "excluded";
        const auto cm = popcount(m), ce = popcount(e);
        detail::require(cm == n, where, "layer '", name, "' is ", role, " but its mask has ", cm, " of ", n,
                        " positions active (valid: all ", n, ")");
        detail::require(ce == n, where, "layer '", name, "' is ", role, " but its ever_active has ", ce,
                        " of ", n, " positions (valid: all ", n, ")");
      }
      for (std::size_t i = 0; i < words; ++i)
        if (const std::uint64_t outside = m[i] & ~e[i])
          detail::require(false, where, "layer '", name, "' has active position ",
                          i * 64 + static_cast<std::size_t>(__builtin_ctzll(outside)),
                          " that is not in ever_active (valid: masks are subsets of ever_active)");
    }
    // Policy state goes into a copy, so a bad blob leaves this controller untouched.
    MethodT method = method_;
    std::size_t k = 0;
    detail::for_each_policy(method, [&](auto& policy) {
      const std::string& blob = s.policy_states[k++];
      if constexpr (detail::has_saved_state<std::decay_t<decltype(policy)>>::value)
        policy.load_state(blob);
      else
        detail::require(blob.empty(), where, "policy ", k - 1, " has saved state but takes none");
    });
    // Every update moves each sparse layer to exactly the distribution's count at its density
    // (so does the constructor), so the saved density fixes every sparse layer's popcount.
    std::vector<std::size_t> counts;
    try {
      counts = layer_counts(method.distribution, params_, s.density, options_.allocation);
    } catch (const InvalidArgument& err) {
      throw InvalidArgument(
          detail::concat(where, ": density ", s.density, " has no allocation: ", err.what()));
    }
    for (std::size_t l = 0; l < params_.size(); ++l) {
      if (params_[l].role != LayerRole::sparse) continue;
      const auto c = popcount(s.masks[l]);
      detail::require(c == counts[l], where, "layer '", s.names[l], "' has ", c,
                      " active weights, the distribution gives ", counts[l], " at density ", s.density,
                      " (valid: that count)");
    }
    return method;
  }

  double scheduled_density(std::int64_t step, const char* where) const {
    const double d = method_.density.density(step);
    detail::require(d > 0.0 && d <= 1.0, where, "scheduled density ", d, " at step ", step,
                    " is outside (0, 1]");
    return d;
  }

  // Every LayerStorage rebuilds from its dense views under the current masks.
  void sync_storage() {
    for (std::size_t l = 0; l < params_.size(); ++l) {
      auto& layer = params_[l];
      if (!layer.storage) continue;
      layer.storage->on_mask_changed(masks_[l]);
      detail::require(!layer.storage->detached() || !has_observer(), "east::Controller", "layer '", layer.name,
                      "' trains on its own storage, but a policy of this method observes the dense "
                      "gradient of every layer every step (e.g. SNFS's MomentumRegrow); keep it on dense "
                      "views");
    }
  }
  // Tells every LayerStorage whether `next` will be an update step that reads gradients.
  void prepare_storage(std::int64_t next) {
    bool any = false;
    for (const auto& l : params_) any |= l.storage != nullptr;
    if (!any) return;
    // Observers (SNFS) read every step's dense gradient; regrowth only an update step's.
    const bool capture = has_observer() || (detail::regrow_reads_gradient<RegrowT>::value && is_update_step(next));
    for (auto& l : params_)
      if (l.storage) l.storage->prepare_step(capture);
  }
  bool has_observer() const {
    bool any = false;
    detail::for_each_policy(const_cast<MethodT&>(method_), [&](auto& policy) {
      any |= detail::has_observe<std::decay_t<decltype(policy)>>::value;
    });
    return any;
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

  // Phase 1 for one sparse layer: one fused scan (kernels::update_scan) checks the weights, lists
  // the active positions (the prune candidates) and the mask words that need re-masking, and
  // keeps the best regrow candidates; built-in criteria decide from that, others from their
  // Scores as before. Same decisions, same errors in the same order as select_into on Scores.
  void decide_layer(std::size_t l, std::size_t n_drop, std::size_t n_grow, const RandomStream& layer_stream,
                    detail::LayerDecision& dec) {
    constexpr const char* where = "east::Controller::update()";
    const auto& layer = params_[l];
    const auto& mask = masks_[l];
    const std::size_t n = layer.size();
    const LayerContext prune_ctx{layer, l, mask, layer_stream.derive(1), scratch_};
    // A detached layer's dense gradient exists only now, one layer at a time.
    LayerView grow_view = layer;
    if (n_grow > 0 && layer.storage && layer.storage->detached() && detail::regrow_reads_gradient<RegrowT>::value) {
      grad_scratch_.resize(n);
      grow_view.grad = layer.storage->dense_gradient(grad_scratch_.data());
    }
    const LayerContext grow_ctx{grow_view, l, mask, layer_stream.derive(2), scratch_};
    const bool fits = n < (std::size_t{1} << 32);
    const detail::ScorePlan grow_plan =
        n_grow > 0 ? detail::regrow_plan(method_.regrow, grow_ctx) : detail::ScorePlan{};
    // A streaming top-k pays when k is a small share of the candidates (always at high sparsity).
    const bool collect =
        fits && grow_plan.kind != detail::ScorePlan::general && n_grow * 16 <= n - mask.count();
    kernels::ScanPlan plan;
    if (collect) {
      plan.regrow = grow_plan.kind == detail::ScorePlan::magnitude ? kernels::RegrowKeys::magnitude
                                                                   : kernels::RegrowKeys::random;
      plan.x = grow_plan.x;
      plan.stream = grow_ctx.stream;
      plan.k = n_grow;
    }
    plan.active = mask.count();
    if (fits) {
      kernels::update_scan(layer.weight, mask.words(), ever_active_[l].words(), n, plan, scan_);
    } else {  // > 2^32 weights in one tensor: the separate passes
      scan_.weight_bad = {};
      scan_.weight_bad.count = kernels::count_nonfinite(layer.weight, n, &scan_.weight_bad.first);
      scan_.dirty_words.clear();
    }
    const auto bad = scan_.weight_bad.count;
    const auto first = scan_.weight_bad.first;
    detail::require(bad == 0, where, "layer '", layer.name, "' has ", bad,
                    " non-finite weight(s), first at index ", first, " = ", layer.weight[first],
                    " (valid: finite values)");
    dec.ever_missing = !fits || scan_.ever_missing;
    dec.dirty_known = fits;
    dec.dirty.swap(scan_.dirty_words);

    if (n_drop > 0) {
      const detail::ScorePlan drop_plan = detail::prune_plan(method_.prune, prune_ctx);
      if (fits && (drop_plan.kind == detail::ScorePlan::random ||
                   (drop_plan.kind == detail::ScorePlan::magnitude && drop_plan.x == layer.weight))) {
        // The keys prune_scores would give, at the active positions only (the candidates).
        const auto& idx = scan_.active_index;
        const auto& bits = scan_.active_bits;
        keys_.resize(idx.size());
        const RandomStream& s = prune_ctx.stream;
        if (drop_plan.kind == detail::ScorePlan::random) {
          for (std::size_t j = 0; j < idx.size(); ++j) keys_[j] = s.bits32(idx[j]);
        } else if (drop_plan.random_zero_ties) {
          // As magnitudes_random_zero_ties: nonzero |w| above every zero, zeros in seeded order.
          // Without an active zero this orders exactly as |w| does, so one rule serves both cases.
          for (std::size_t j = 0; j < idx.size(); ++j) {
            const std::uint32_t a = bits[j] & 0x7FFFFFFFu;
            keys_[j] = a != 0 ? (0x80000000u | a) : (s.bits32(idx[j]) >> 1);
          }
        } else {
          for (std::size_t j = 0; j < idx.size(); ++j) keys_[j] = bits[j] & 0x7FFFFFFFu;
        }
        kernels::select_smallest(idx.data(), keys_.data(), idx.size(), n_drop, dec.drop);
      } else {
        BitMask out(n);
        select_into(method_.prune.prune_scores(prune_ctx), layer, mask, n_drop, kernels::Extreme::smallest,
                    kernels::Among::active, out);
        out.for_each_active([&](std::size_t i) { dec.drop.push_back(static_cast<std::uint32_t>(i)); });
      }
    }

    if (n_grow > 0) {
      bool done = false;
      if (collect && plan.regrow == kernels::RegrowKeys::magnitude && scan_.x_bad.count > 0) {
        // The error the criterion's Scores would raise: from its zero-tie keys when an inactive
        // zero made it build them, else from select_into's check of the magnitudes.
        const auto xf = scan_.x_bad.first;
        if (grow_plan.random_zero_ties && scan_.x_zero_candidate)
          detail::require(false, grow_plan.who, "layer '", layer.name, "' has a non-finite score at index ",
                          xf, " = ", grow_plan.x[xf], " (valid: finite weights and gradients)");
        detail::require(false, where, "layer '", layer.name, "' has ", scan_.x_bad.count,
                        " non-finite score(s), first at index ", xf, " = ", grow_plan.x[xf],
                        " (valid: finite weights and gradients)");
      }
      if (collect && !scan_.incomplete) {
        const std::uint32_t thr = kernels::select_smallest(scan_.top_index.data(), scan_.top_key.data(),
                                                           scan_.top_count, n_grow, dec.grow);
        // Threshold at |x| = 0: zeros are grown, in the criterion's seeded order (below).
        done = !(plan.regrow == kernels::RegrowKeys::magnitude && grow_plan.random_zero_ties && thr == ~0u);
        if (!done) dec.grow.clear();
      }
      if (!done) {
        BitMask out(n);
        select_into(method_.regrow.regrow_scores(grow_ctx), grow_view, mask, n_grow, kernels::Extreme::largest,
                    kernels::Among::inactive, out);
        out.for_each_active([&](std::size_t i) { dec.grow.push_back(static_cast<std::uint32_t>(i)); });
      }
    }
  }

  // Phase 2 for one sparse layer: flips the changed mask bits, initialises grown weights, zeroes
  // their optimizer state, and re-masks: with a built-in GrowInit only dropped positions and the
  // words the scan found holding nonzero inactive weights are touched (the result equals
  // apply_mask over the whole layer); other GrowInits may write anywhere, so the whole layer.
  void commit_layer(std::size_t l, const detail::LayerDecision& dec, RandomStream init_stream) {
    auto& m = masks_[l];
    auto& e = ever_active_[l];
    const auto& layer = params_[l];
    const std::size_t n = layer.size();
    for (const auto i : dec.drop) m.reset(i);
    for (const auto i : dec.grow) {
      m.set(i);
      e.set(i);
    }
    if (dec.ever_missing) {  // only after restoring a state whose masks are not inside ever_active
      auto* ew = e.mutable_words();
      const auto* mw = m.words();
      for (std::size_t i = 0; i < m.word_count(); ++i) ew[i] |= mw[i];
      e.recount();
    }
    float* w = layer.weight;
    constexpr bool constant_init = detail::is_constant_grow_init<decltype(method_.grow_init)>::value;
    if (!dec.grow.empty()) {
      if constexpr (constant_init) {
        const float v = detail::grow_value(method_.grow_init);
        std::uint32_t vb;
        std::memcpy(&vb, &v, 4);
        for (const auto i : dec.grow)
          if (kernels::detail::load_bits(w, i) != vb) w[i] = v;
      } else {
        BitMask grown(n);
        for (const auto i : dec.grow) grown.set(i);
        if constexpr (detail::takes_mask_and_stream<decltype(method_.grow_init)>::value)
          method_.grow_init.initialize(layer, grown.words(), m, init_stream);
        else
          method_.grow_init.initialize(layer, grown.words());
      }
      for (float* s : layer.state)
        for (const auto i : dec.grow)
          if (kernels::detail::load_bits(s, i) != 0) s[i] = 0.0f;
    }
    if (constant_init && dec.dirty_known) {
      for (const auto i : dec.drop)
        if (kernels::detail::load_bits(w, i) != 0) w[i] = 0.0f;
      const auto* mw = m.words();
      for (const auto wi : dec.dirty) {
        const std::size_t b = static_cast<std::size_t>(wi) * 64;
        for (std::uint64_t off = ~mw[wi] & kernels::detail::valid_word(b, n); off; off &= off - 1) {
          const std::size_t i = b + static_cast<std::size_t>(__builtin_ctzll(off));
          if (kernels::detail::load_bits(w, i) != 0) w[i] = 0.0f;
        }
      }
    } else {
      m.apply(w);
    }
    for (float* s : layer.state) m.apply(s);
  }

  ParameterSet params_;
  MethodT method_;
  ControllerOptions options_;
  std::vector<bool> skip_per_step_;  // layers set_per_step_masking turned off
  std::vector<BitMask> masks_, ever_active_;
  std::vector<std::uint32_t> scratch_;
  std::vector<float> grad_scratch_;  // a detached layer's dense gradient during an update
  std::vector<detail::LayerDecision> decisions_;  // update(): per layer, between Phase 1 and 2
  kernels::ScanResult scan_;                      // update(): one layer's scan (buffers reused)
  std::vector<std::uint32_t> keys_;               // update(): prune keys of the active positions
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
