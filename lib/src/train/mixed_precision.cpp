#include "pconv/train/mixed_precision.h"

#include "pconv/error.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>

#include <stdexcept>

namespace pconv::train {

std::optional<c10::ScalarType> parse_amp(const std::string& name) {
  if (name == "off") return std::nullopt;
  if (name == "bf16") return c10::kBFloat16;
  if (name == "fp16") return c10::kHalf;
  throw ArgumentError("unknown mixed precision '" + name + "' (off, bf16 or fp16)");
}

AutocastScope::AutocastScope(c10::DeviceType device, std::optional<c10::ScalarType> type)
    : device_(device) {
  if (!type) return;
  active_ = true;
  was_enabled_ = at::autocast::is_autocast_enabled(device_);
  previous_type_ = at::autocast::get_autocast_dtype(device_);
  at::autocast::set_autocast_enabled(device_, true);
  at::autocast::set_autocast_dtype(device_, *type);
  at::autocast::increment_nesting();
}

AutocastScope::~AutocastScope() {
  if (!active_) return;
  // The cast weights are cached for the scope only (they change at every optimiser step).
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  at::autocast::set_autocast_enabled(device_, was_enabled_);
  at::autocast::set_autocast_dtype(device_, previous_type_);
}

GradScaler::GradScaler(double initial_scale, double growth_factor, double backoff_factor,
                       int64_t growth_interval)
    : scale_(at::full({1}, initial_scale, at::kFloat)),
      growth_tracker_(at::zeros({1}, at::kInt)),
      found_inf_(at::zeros({1}, at::kFloat)),
      growth_factor_(growth_factor),
      backoff_factor_(backoff_factor),
      growth_interval_(growth_interval) {}

torch::Tensor GradScaler::scale(const torch::Tensor& loss) const {
  return loss * scale_.to(loss.device()).to(loss.scalar_type());
}

bool GradScaler::unscale(const std::vector<torch::Tensor>& grads) {
  found_inf_.zero_();
  std::vector<at::Tensor> present;
  for (const auto& grad : grads) {
    if (grad.defined()) present.push_back(grad);
  }
  if (present.empty()) return true;
  const auto device = present.front().device();
  auto found = found_inf_.to(device);
  const auto inverse = scale_.to(device).reciprocal();
  // The kernel wants the tensors of one call on one device.
  at::_amp_foreach_non_finite_check_and_unscale_(present, found, inverse);
  found_inf_.copy_(found.to(at::kCPU));
  return found_inf_.item<float>() == 0.0F;
}

void GradScaler::update() {
  at::_amp_update_scale_(scale_, growth_tracker_, found_inf_, growth_factor_, backoff_factor_,
                         growth_interval_);
}

double GradScaler::scale_value() const { return scale_.item<double>(); }

std::vector<torch::Tensor> GradScaler::state() const {
  return {scale_.clone(), growth_tracker_.clone()};
}

void GradScaler::load_state(const std::vector<torch::Tensor>& state) {
  TORCH_CHECK(state.size() == 2, "GradScaler: the state holds two tensors");
  scale_.copy_(state[0]);
  growth_tracker_.copy_(state[1]);
}

}  // namespace pconv::train
