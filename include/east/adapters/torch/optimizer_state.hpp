#pragma once
// The per-parameter state of libtorch's optimizers (momentum, Adam's moments, …), read and moved
// generically: a layer on compact weights trains a parameter of nnz values whose state must be
// carried to a new index at every mask update, and moved to or from its dense weight when the
// layer changes form. Supported: SGD, Adam, AdamW, RMSprop, Adagrad.
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "../../core/error.hpp"
#include "state.hpp"

namespace east {
namespace torch_adapter {

enum class OptimizerKind { sgd, adam, adamw, rmsprop, adagrad };

/// The kind of `o`; throws InvalidArgument for other optimizers.
inline OptimizerKind optimizer_kind(const torch::optim::Optimizer& o) {
  if (dynamic_cast<const torch::optim::SGD*>(&o)) return OptimizerKind::sgd;
  if (dynamic_cast<const torch::optim::AdamW*>(&o)) return OptimizerKind::adamw;
  if (dynamic_cast<const torch::optim::Adam*>(&o)) return OptimizerKind::adam;
  if (dynamic_cast<const torch::optim::RMSprop*>(&o)) return OptimizerKind::rmsprop;
  if (dynamic_cast<const torch::optim::Adagrad*>(&o)) return OptimizerKind::adagrad;
  throw InvalidArgument(
      "east::torch_adapter: unsupported optimizer type (valid: torch::optim::SGD, Adam, AdamW, RMSprop, "
      "Adagrad; east moves their per-parameter state when masks change)");
}

namespace detail {

/// The key libtorch's optimizers file a parameter's state under.
inline std::string state_key(const torch::Tensor& p) { return c10::guts::to_string(p.unsafeGetTensorImpl()); }

/// The state tensors shaped like the parameter (defined ones only).
inline std::vector<torch::Tensor*> state_tensors(torch::optim::OptimizerParamState& s) {
  std::vector<torch::Tensor*> out;
  auto add = [&](torch::Tensor& t) {
    if (t.defined()) out.push_back(&t);
  };
  if (auto* p = dynamic_cast<torch::optim::SGDParamState*>(&s)) {
    add(p->momentum_buffer());
  } else if (auto* a = dynamic_cast<torch::optim::AdamParamState*>(&s)) {
    add(a->exp_avg()), add(a->exp_avg_sq()), add(a->max_exp_avg_sq());
  } else if (auto* w = dynamic_cast<torch::optim::AdamWParamState*>(&s)) {
    add(w->exp_avg()), add(w->exp_avg_sq()), add(w->max_exp_avg_sq());
  } else if (auto* r = dynamic_cast<torch::optim::RMSpropParamState*>(&s)) {
    add(r->square_avg()), add(r->momentum_buffer()), add(r->grad_avg());
  } else if (auto* g = dynamic_cast<torch::optim::AdagradParamState*>(&s)) {
    add(g->sum());
  }
  return out;
}

/// A copy of `s` (step counters and tensors, the tensors shallow).
inline std::unique_ptr<torch::optim::OptimizerParamState> clone_state(const torch::optim::OptimizerParamState& s) {
  return s.clone();
}

/// The state libtorch would create on a first step for a parameter of `numel` zeros, for the
/// optimizers that create state eagerly (Adagrad: every parameter must have state).
inline std::unique_ptr<torch::optim::OptimizerParamState> initial_state(OptimizerKind kind, const torch::Tensor& p,
                                                                        const torch::optim::Optimizer& o) {
  if (kind != OptimizerKind::adagrad) return nullptr;
  auto s = std::make_unique<torch::optim::AdagradParamState>();
  double init = 0.0;
  for (const auto& g : o.param_groups())
    for (const auto& q : g.params())
      if (q.unsafeGetTensorImpl() == p.unsafeGetTensorImpl())
        init = static_cast<const torch::optim::AdagradOptions&>(g.options()).initial_accumulator_value();
  s->sum(torch::full_like(p, init));
  s->step(0);
  return s;
}

/// Moves the state of parameter `from` to parameter `to` (possibly the same tensor), mapping
/// every state tensor with `map` (a tensor of from's size to one of to's size); step counters are
/// kept. Without state for `from` nothing happens (optimizers that create state lazily then
/// create it on the next step). The state of `from` is dropped when `to` is another tensor.
inline void move_state(torch::optim::Optimizer& o, OptimizerKind kind, const torch::Tensor& from,
                       const torch::Tensor& to, const std::function<torch::Tensor(const torch::Tensor&)>& map) {
  auto& st = o.state();
  const auto fk = state_key(from), tk = state_key(to);
  const auto it = st.find(fk);
  if (it == st.end() || !it->second) {
    if (fk != tk) {
      st.erase(tk);
      if (auto s = initial_state(kind, to, o)) st[tk] = std::move(s);
    }
    return;
  }
  auto moved = clone_state(*it->second);
  for (torch::Tensor* t : state_tensors(*moved)) *t = map(*t);
  if (fk != tk) st.erase(fk);
  st[tk] = std::move(moved);
}

/// The state tensor slots of an optimizer kind, in a fixed order (absent ones stay undefined).
inline std::vector<torch::Tensor*> state_slots(torch::optim::OptimizerParamState& s) {
  if (auto* p = dynamic_cast<torch::optim::SGDParamState*>(&s)) return {&p->momentum_buffer()};
  if (auto* a = dynamic_cast<torch::optim::AdamParamState*>(&s)) return {&a->exp_avg(), &a->exp_avg_sq(), &a->max_exp_avg_sq()};
  if (auto* w = dynamic_cast<torch::optim::AdamWParamState*>(&s)) return {&w->exp_avg(), &w->exp_avg_sq(), &w->max_exp_avg_sq()};
  if (auto* r = dynamic_cast<torch::optim::RMSpropParamState*>(&s)) return {&r->square_avg(), &r->momentum_buffer(), &r->grad_avg()};
  if (auto* g = dynamic_cast<torch::optim::AdagradParamState*>(&s)) return {&g->sum()};
  return {};
}
inline std::int64_t* state_step(torch::optim::OptimizerParamState& s) {
  if (auto* a = dynamic_cast<torch::optim::AdamParamState*>(&s)) return &a->step();
  if (auto* w = dynamic_cast<torch::optim::AdamWParamState*>(&s)) return &w->step();
  if (auto* r = dynamic_cast<torch::optim::RMSpropParamState*>(&s)) return &r->step();
  if (auto* g = dynamic_cast<torch::optim::AdagradParamState*>(&s)) return &g->step();
  return nullptr;
}
inline std::unique_ptr<torch::optim::OptimizerParamState> empty_state(OptimizerKind k) {
  switch (k) {
    case OptimizerKind::sgd: return std::make_unique<torch::optim::SGDParamState>();
    case OptimizerKind::adam: return std::make_unique<torch::optim::AdamParamState>();
    case OptimizerKind::adamw: return std::make_unique<torch::optim::AdamWParamState>();
    case OptimizerKind::rmsprop: return std::make_unique<torch::optim::RMSpropParamState>();
    case OptimizerKind::adagrad: return std::make_unique<torch::optim::AdagradParamState>();
  }
  return nullptr;
}
}  // namespace detail

/// The optimizer's per-parameter state and every group's learning rate, by parameter position.
/// libtorch's own archive files state under tensor addresses, so the same state saved by two
/// processes gives different bytes; these bytes depend on the values only.
inline std::string save_optimizer_state(torch::optim::Optimizer& o) {
  const auto kind = optimizer_kind(o);
  StateWriter w;
  w.put(static_cast<std::uint32_t>(kind));
  w.put(static_cast<std::uint64_t>(o.param_groups().size()));
  for (auto& g : o.param_groups()) {
    w.put(g.options().get_lr());
    w.put(static_cast<std::uint64_t>(g.params().size()));
    for (const auto& p : g.params()) {
      const auto it = o.state().find(detail::state_key(p));
      const bool has = it != o.state().end() && it->second;
      w.put(static_cast<std::uint8_t>(has));
      if (!has) continue;
      const std::int64_t* step = detail::state_step(*it->second);
      w.put(step ? *step : std::int64_t{0});
      for (torch::Tensor* t : detail::state_slots(*it->second)) {
        w.put(static_cast<std::uint8_t>(t->defined()));
        if (t->defined()) w.put_tensor("state", *t);
      }
    }
  }
  return w.bytes();
}

/// Restores what save_optimizer_state wrote into an optimizer of the same kind and parameter
/// layout; throws CorruptCheckpoint (and changes nothing) when it does not fit.
inline void load_optimizer_state(torch::optim::Optimizer& o, const std::string& bytes) {
  const auto kind = optimizer_kind(o);
  StateReader r(bytes);
  auto fail = [](const std::string& what) {
    throw CorruptCheckpoint("east::torch_adapter::load_optimizer_state(): " + what);
  };
  if (r.get<std::uint32_t>("optimizer kind") != static_cast<std::uint32_t>(kind)) fail("another optimizer type");
  if (r.get<std::uint64_t>("group count") != o.param_groups().size()) fail("another number of parameter groups");
  std::vector<double> lrs;
  std::vector<std::pair<std::string, std::unique_ptr<torch::optim::OptimizerParamState>>> states;
  for (auto& g : o.param_groups()) {
    lrs.push_back(r.get<double>("learning rate"));
    if (r.get<std::uint64_t>("parameter count") != g.params().size()) fail("another number of parameters in a group");
    for (const auto& p : g.params()) {
      if (!r.get<std::uint8_t>("state flag")) {
        states.emplace_back(detail::state_key(p), nullptr);
        continue;
      }
      auto s = detail::empty_state(kind);
      const auto step = r.get<std::int64_t>("step");
      if (std::int64_t* st = detail::state_step(*s)) *st = step;
      for (torch::Tensor* t : detail::state_slots(*s))
        if (r.get<std::uint8_t>("slot flag")) {
          *t = r.get_tensor("state");
          if (t->numel() != p.numel()) fail("a state tensor of another size than its parameter");
        }
      states.emplace_back(detail::state_key(p), std::move(s));
    }
  }
  if (r.left() != 0) fail("trailing bytes");
  std::size_t i = 0;
  for (auto& g : o.param_groups()) g.options().set_lr(lrs[i++]);
  for (auto& [key, s] : states) {
    o.state().erase(key);
    if (s) o.state()[key] = std::move(s);
  }
}
}  // namespace torch_adapter
}  // namespace east
