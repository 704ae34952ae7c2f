#pragma once
// Compact layers: a linear or 2-D convolution layer that trains on its nonzeros only. It owns
// its compact weight (CsrWeight: index + values), the gradient at the active positions and its
// optimizer state (nnz floats per slot), and it is the LayerStorage of its registered layer, so
// the controller drives it through the ordinary before/after_optimizer_step calls:
//
//   east::ParameterSet params;
//   params.add("fc1", W1.data(), {1024, 784});             // the dense view: the checkpoint home
//   east::sparse::CompactLinear fc1(params, "fc1");        // + 1 line per layer
//   auto ctl = east::make_rigl(params, cfg);               // builds fc1 from W1 under its mask
//   per step:
//     fc1.forward(x, batch, h1);                            // instead of h1 = W1 x
//     fc1.backward(x, dh1, batch, dx);                      // instead of dW1 = …, dx = W1ᵀ dh1
//     ctl.before_optimizer_step(step);
//     fc1.sgd_step(params_of_sgd);                          // instead of the dense SGD on W1
//     ctl.after_optimizer_step(step);                       // mask updates reach fc1 by itself
//
// Between mask updates the dense view W1 is stale (sync_dense_views() brings it up to date). At
// a mask update the controller asks for the dense gradient, which the layer computes from
// copies of the inputs and output gradients it keeps only on update steps (prepare_step), one
// layer at a time. docs/compact-layers.md has the recipe and its rules.
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "../core/layer_storage.hpp"
#include "../core/parameter_set.hpp"
#include "../kernels/types.hpp"
#include "../masks/bit_mask.hpp"
#include "conv.hpp"
#include "csr.hpp"
#include "linear.hpp"
#include "sgd.hpp"

namespace east::sparse {

/// The part shared by every compact layer kind: storage, gradient, optimizer state, the
/// controller's hooks. Not copyable or movable: the controller holds its address.
class CompactLayer : public LayerStorage {
 public:
  CompactLayer(const CompactLayer&) = delete;
  CompactLayer& operator=(const CompactLayer&) = delete;

  // ------------------------------------------------------------ what training touches
  std::size_t nnz() const { return weight_.nnz(); }
  /// The nnz weights, in increasing dense index (CSR order); yours to update in place.
  float* values() { return weight_.values(); }
  const float* values() const { return weight_.values(); }
  /// ∂L/∂values, nnz floats, written (or accumulated) by backward().
  float* grad() { return grad_.data(); }
  const float* grad() const { return grad_.data(); }
  void zero_grad() { std::fill(grad_.begin(), grad_.end(), 0.0f); }
  /// Optimizer state slot k (nnz floats, created zero): carried through mask changes like a
  /// masked dense buffer (kept where the position stays active, zero where it is new).
  std::vector<float>& state(std::size_t k) {
    if (k >= state_.size()) state_.resize(k + 1, std::vector<float>(nnz(), 0.0f));
    return state_[k];
  }
  std::size_t state_slots() const { return state_.size(); }

  /// One SGD step (PyTorch's semantics, kernels::SgdParams) on the values from grad(), momentum
  /// in state slot 0. Same arithmetic as kernels::masked_sgd on the dense view, so a compact run
  /// equals the masked dense one bit for bit.
  void sgd_step(const kernels::SgdParams& p) {
    require_attached("east::sparse::CompactLayer::sgd_step()");
    if (nnz() == 0) return;
    sgd_step_compact(values(), grad(), p.momentum != 0.0f ? state(0).data() : nullptr, nnz(), p);
  }

  const CsrWeight& weight() const { return weight_; }
  const std::string& name() const { return name_; }
  const Shape& shape() const { return shape_; }
  std::size_t size() const { return rows_ * cols_; }
  double density() const { return weight_.density(); }
  /// Bytes held: index, values, gradient and optimizer state.
  std::size_t bytes() const {
    std::size_t b = weight_.bytes() + grad_.size() * sizeof(float);
    for (const auto& s : state_) b += s.size() * sizeof(float);
    return b;
  }

  /// Optimizer state for a checkpoint (the weights go through the dense view: sync_dense_views).
  std::string save_state() const {
    std::string s;
    const std::uint64_t head[3] = {weight_.nnz(), state_.size(), index_digest()};
    s.append(reinterpret_cast<const char*>(head), sizeof head);
    for (const auto& v : state_) s.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
    return s;
  }
  /// Loads what save_state wrote, after the controller restored the masks it was saved under.
  void load_state(const std::string& s) {
    constexpr const char* where = "east::sparse::CompactLayer::load_state()";
    std::uint64_t head[3] = {0, 0, 0};
    ::east::detail::require(s.size() >= sizeof head, where, "layer '", name_, "': state of ", s.size(),
                            " bytes is truncated");
    std::memcpy(head, s.data(), sizeof head);
    ::east::detail::require(head[0] == weight_.nnz() && head[2] == index_digest(), where, "layer '", name_,
                            "': state saved for ", head[0], " nonzeros under another mask (now ",
                            weight_.nnz(), "); restore the controller's checkpoint first");
    ::east::detail::require(head[1] <= 64 && s.size() == sizeof head + head[1] * head[0] * sizeof(float), where,
                            "layer '", name_, "': state of ", s.size(), " bytes does not hold ", head[1],
                            " slots of ", head[0], " floats");
    std::vector<std::vector<float>> st(head[1], std::vector<float>(weight_.nnz()));
    for (std::size_t k = 0; k < st.size(); ++k)
      if (!st[k].empty())
        std::memcpy(st[k].data(), s.data() + sizeof head + k * st[k].size() * sizeof(float),
                    st[k].size() * sizeof(float));
    state_ = std::move(st);
  }

  // ------------------------------------------------------------ LayerStorage
  bool detached() const override { return attached_; }
  void sync_to_dense() override {
    if (attached_) weight_.scatter(dense_);
  }
  float* dense_gradient(float* scratch) override {
    ::east::detail::require(!captures_.empty(), "east::sparse::CompactLayer::dense_gradient()", "layer '",
                            name_,
                            "' ran no backward since the controller announced this update step (call "
                            "backward() between forward and after_optimizer_step)");
    std::fill(scratch, scratch + size(), 0.0f);
    add_dense_gradient(scratch);
    return scratch;
  }
  void on_mask_changed(const BitMask& mask) override {
    constexpr const char* where = "east::sparse::CompactLayer::on_mask_changed()";
    ::east::detail::require(mask.size() == size(), where, "layer '", name_, "': mask of ", mask.size(),
                            " positions for ", size(), " weights");
    if (!attached_) {
      weight_ = CsrWeight(nullptr, mask, rows_, cols_, group_);
      for (auto& s : state_) s.assign(weight_.nnz(), 0.0f);
    } else {
      std::vector<std::vector<float>*> carry;
      for (auto& s : state_) carry.push_back(&s);
      weight_ = weight_.remap(mask, carry);
    }
    weight_.gather(dense_);  // kept weights as synced, grown ones as the controller set them
    grad_.assign(weight_.nnz(), 0.0f);
    attached_ = true;
  }
  void prepare_step(bool capture) override {
    capture_ = capture;
    captures_.clear();
  }
  /// Whether the current step keeps what dense_gradient() needs.
  bool capturing() const { return capture_; }

 protected:
  /// Checks `name` of `params`; the derived constructor calls bind() once its own checks passed,
  /// so a rejected layer leaves the parameter set untouched.
  /// @param dims the shape's dimensions (2: linear, 4: conv2d)
  CompactLayer(ParameterSet& params, const std::string& name, std::size_t dims, const char* where)
      : name_(name) {
    LayerView& v = params.at(name);
    ::east::detail::require(v.shape.size() == dims, where, "layer '", name, "' has ", v.shape.size(),
                            " dimensions (valid: ", dims, dims == 2 ? ", {out, in})" : ", {c_out, c_in, kh, kw})");
    ::east::detail::require(!v.column_major, where, "layer '", name,
                            "' is stored column-major (an Eigen matrix with default storage); compact layers "
                            "read {out, in} row-major: declare it Eigen::Matrix<float, Eigen::Dynamic, "
                            "Eigen::Dynamic, Eigen::RowMajor>");
    ::east::detail::require(v.storage == nullptr, where, "layer '", name, "' already has a storage");
    ::east::detail::require(v.role != LayerRole::excluded, where, "layer '", name,
                            "' is excluded from sparse training; a compact layer needs its mask");
    shape_ = v.shape;
    dense_ = v.weight;
    rows_ = static_cast<std::size_t>(v.shape[0]);
    cols_ = v.size() / rows_;
    group_ = dims == 4 ? static_cast<std::size_t>(v.shape[2] * v.shape[3]) : 1;
    view_ = &v;
  }
  /// Becomes the layer's storage (the last step of a derived constructor).
  void bind() { view_->storage = this; }
  ~CompactLayer() override = default;

  void require_attached(const char* where) const {
    ::east::detail::require(attached_, where, "layer '", name_,
                            "' has no mask yet (build the controller over its ParameterSet first)");
  }
  /// One backward's input and output gradient, kept on capture steps for dense_gradient().
  struct Capture {
    std::vector<float> x, dy;
    std::size_t batch = 0, h = 0, w = 0;
  };
  /// Records a backward on capture steps: a new step's gradient (accumulate = false) replaces
  /// the earlier captures, a micro-batch's adds one.
  void capture(const float* x, std::size_t x_floats, const float* dy, std::size_t dy_floats, std::size_t batch,
               bool accumulate, std::size_t h = 0, std::size_t w = 0) {
    if (!capture_) return;
    if (!accumulate) captures_.clear();
    captures_.push_back(Capture{{x, x + x_floats}, {dy, dy + dy_floats}, batch, h, w});
  }
  /// Adds the dense weight gradient of every capture into out.
  virtual void add_dense_gradient(float* out) const = 0;
  /// grad_ = g, or grad_ += g for a micro-batch.
  static void store_gradient(std::vector<float>& grad, const std::vector<float>& g, bool accumulate) {
    if (!accumulate) return void(std::copy(g.begin(), g.end(), grad.begin()));
    for (std::size_t j = 0; j < g.size(); ++j) grad[j] += g[j];
  }

  // Plain SGD over compact arrays (sparse/sgd.hpp), named apart from the member.
  static void sgd_step_compact(float* w, const float* g, float* buf, std::size_t n, const kernels::SgdParams& p) {
    ::east::sparse::sgd_step(w, g, buf, n, p);
  }

  std::uint64_t index_digest() const {
    std::uint64_t h = mix64(weight_.rows() ^ (std::uint64_t{weight_.cols()} << 32));
    for (std::size_t r = 0; r <= weight_.rows(); ++r) h = mix64(h ^ weight_.row_ptr()[r]);
    for (std::size_t j = 0; j < weight_.nnz(); ++j) h = mix64(h ^ weight_.col()[j]);
    return h;
  }

  std::string name_;
  Shape shape_;
  float* dense_ = nullptr;      // the registered dense weight view
  LayerView* view_ = nullptr;  // in the user's ParameterSet, until bind()
  std::size_t rows_ = 0, cols_ = 0, group_ = 1;
  CsrWeight weight_;
  std::vector<float> grad_;
  std::vector<std::vector<float>> state_;
  bool attached_ = false, capture_ = false;
  std::vector<Capture> captures_;  // this step's backwards, on capture steps only
  std::vector<float> scratch_;     // a gradient before it is stored or added
};

/// A linear layer y = x Wᵀ (+ bias) on compact weights; W is the registered {out, in} layer.
class CompactLinear : public CompactLayer {
 public:
  /// Becomes the storage of `name` in `params` (registered, row-major {out, in}); build the
  /// controller over `params` afterwards. @param layout of the activations (sparse/linear.hpp):
  /// feature_major ({features, batch}) needs no transposes.
  CompactLinear(ParameterSet& params, const std::string& name, Layout layout = Layout::batch_major)
      : CompactLayer(params, name, 2, "east::sparse::CompactLinear()"), layout_(layout) {
    bind();
  }
  std::size_t in_features() const { return cols_; }
  std::size_t out_features() const { return rows_; }
  Layout layout() const { return layout_; }

  /// y = x Wᵀ (+ bias). @param x batch × in  @param y batch × out (overwritten), in layout().
  void forward(const float* x, std::size_t batch, float* y, const float* bias = nullptr) const {
    require_attached("east::sparse::CompactLinear::forward()");
    linear_forward(x, batch, weight_, y, bias, layout_);
  }
  /// The gradient at the active positions into grad() (overwritten, or added with accumulate =
  /// true for micro-batches) and, when dx is not null, dx = dy W (overwritten).
  void backward(const float* x, const float* dy, std::size_t batch, float* dx, bool accumulate = false) {
    require_attached("east::sparse::CompactLinear::backward()");
    if (dx) linear_grad_input(dy, batch, weight_, dx, layout_);
    scratch_.resize(nnz());
    linear_grad_weight(x, dy, batch, weight_, scratch_.data(), layout_);
    store_gradient(grad_, scratch_, accumulate);
    capture(x, batch * cols_, dy, batch * rows_, batch, accumulate);
  }

 private:
  void add_dense_gradient(float* out) const override {
    std::vector<float> part(size());
    for (const auto& c : captures_) {
      linear_grad_weight_rows(c.x.data(), c.dy.data(), c.batch, cols_, rows_, 0, rows_, part.data(), layout_);
      for (std::size_t i = 0; i < part.size(); ++i) out[i] += part[i];
    }
  }
  Layout layout_;
};

/// A 2-D convolution (NCHW, dilation 1, groups 1, zero padding) on compact weights; W is the
/// registered {c_out, c_in, kh, kw} layer.
class CompactConv2d : public CompactLayer {
 public:
  CompactConv2d(ParameterSet& params, const std::string& name, std::size_t stride = 1, std::size_t pad = 0)
      : CompactConv2d(params, name, stride, stride, pad, pad) {}
  CompactConv2d(ParameterSet& params, const std::string& name, std::size_t stride_h, std::size_t stride_w,
                std::size_t pad_h, std::size_t pad_w)
      : CompactLayer(params, name, 4, "east::sparse::CompactConv2d()"),
        stride_h_(stride_h),
        stride_w_(stride_w),
        pad_h_(pad_h),
        pad_w_(pad_w) {
    ::east::detail::require(stride_h >= 1 && stride_w >= 1, "east::sparse::CompactConv2d()", "layer '", name,
                            "': stride ", stride_h, "x", stride_w, " (valid: >= 1)");
    bind();
  }

  /// The geometry of a call on a batch of h × w images.
  Conv2dGeometry geometry(std::size_t batch, std::size_t h, std::size_t w) const {
    return {batch,  static_cast<std::size_t>(shape_[1]), h, w, rows_, static_cast<std::size_t>(shape_[2]),
            static_cast<std::size_t>(shape_[3]), stride_h_, stride_w_, pad_h_, pad_w_};
  }
  /// y = conv2d(x, W) (+ bias). @param x {batch, c_in, h, w}  @param y {batch, c_out, out_h, out_w}
  void forward(const float* x, std::size_t batch, std::size_t h, std::size_t w, float* y,
               const float* bias = nullptr) const {
    require_attached("east::sparse::CompactConv2d::forward()");
    conv2d_forward(geometry(batch, h, w), x, weight_, y, bias);
  }
  /// As CompactLinear::backward; dx {batch, c_in, h, w} may be null.
  void backward(const float* x, const float* dy, std::size_t batch, std::size_t h, std::size_t w, float* dx,
                bool accumulate = false) {
    require_attached("east::sparse::CompactConv2d::backward()");
    const auto g = geometry(batch, h, w);
    if (dx) conv2d_grad_input(g, dy, weight_, dx);
    scratch_.resize(nnz());
    conv2d_grad_weight(g, x, dy, weight_, scratch_.data());
    store_gradient(grad_, scratch_, accumulate);
    capture(x, g.input_size(), dy, g.output_size(), batch, accumulate, h, w);
  }

 private:
  // The weight-gradient kernel over an all-active index: every position's sum is formed exactly
  // as the active positions' are in backward(), so regrowth ranks the same numbers a masked
  // dense run with these kernels would (dense-gradient FLOPs, at update steps only).
  void add_dense_gradient(float* out) const override {
    const CsrWeight all(nullptr, BitMask(size(), true), rows_, cols_, group_);
    std::vector<float> part(size());
    for (const auto& c : captures_) {
      conv2d_grad_weight(geometry(c.batch, c.h, c.w), c.x.data(), c.dy.data(), all, part.data());
      for (std::size_t i = 0; i < part.size(); ++i) out[i] += part[i];
    }
  }
  std::size_t stride_h_, stride_w_, pad_h_, pad_w_;
};

}  // namespace east::sparse
