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

}  // namespace detail
}  // namespace torch_adapter
}  // namespace east
