// Mixed precision for training: autocast to bfloat16 or float16 around the forward pass and
// the loss, and dynamic loss scaling for float16 (overflowing steps are skipped, the scale
// shrinks on overflow and grows after a run of good steps), on LibTorch's own AMP kernels.
#pragma once

#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>
#include <torch/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace pconv::train {

/// "off", "bf16" or "fp16" -> the autocast type (nullopt: off). Throws pconv::ArgumentError.
std::optional<c10::ScalarType> parse_amp(const std::string& name);

/// Autocast on `device` to `type` while alive (nothing when `type` is nullopt).
class AutocastScope {
 public:
  AutocastScope(c10::DeviceType device, std::optional<c10::ScalarType> type);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  c10::DeviceType device_;
  bool active_ = false;
  bool was_enabled_ = false;
  c10::ScalarType previous_type_ = c10::kFloat;
};

/// Dynamic loss scaling, as for float16 training: backward() on scale(loss), then unscale()
/// the gradients (false: some are inf/NaN, skip the step), then update().
class GradScaler {
 public:
  explicit GradScaler(double initial_scale = 65536.0, double growth_factor = 2.0,
                      double backoff_factor = 0.5, int64_t growth_interval = 2000);

  torch::Tensor scale(const torch::Tensor& loss) const;
  /// Divides the gradients by the scale in place; false when any is not finite.
  bool unscale(const std::vector<torch::Tensor>& grads);
  /// Shrinks the scale after an overflow, grows it after growth_interval good steps in a row.
  void update();

  double scale_value() const;
  /// The state a checkpoint keeps: (scale, good steps in a row).
  std::vector<torch::Tensor> state() const;
  void load_state(const std::vector<torch::Tensor>& state);

 private:
  torch::Tensor scale_;           // (1) float
  torch::Tensor growth_tracker_;  // (1) int
  torch::Tensor found_inf_;       // (1) float
  double growth_factor_;
  double backoff_factor_;
  int64_t growth_interval_;
};

}  // namespace pconv::train
