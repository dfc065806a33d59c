// CPU kernels behind pconv::nn::functional::partial_conv2d: the mask's window sums and the
// fused renormalise-and-bias epilogue. Internal to the library; other devices and dtypes take
// the ATen path, which is the reference these kernels are tested against.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>

namespace pconv::nn::functional::detail {

struct WindowGeometry {
  std::array<int64_t, 2> kernel, stride, padding, dilation;
};

/// Sums of `counts` (N, G, H, W) over every k x k window (zero padding outside), as a
/// depthwise convolution with a ones kernel would give: (N, G, H', W').
at::Tensor window_sums(const at::Tensor& counts, const WindowGeometry& geometry);

/// y = raw * ratio + bias * valid for raw (N, C, H', W') and ratio/valid (N or 1, G, H', W'),
/// with output channel c in group c / (C / G). Differentiable in raw and bias; the result may
/// reuse raw's memory (raw is consumed).
at::Tensor renormalize(const at::Tensor& raw, const at::Tensor& bias, const at::Tensor& ratio,
                       const at::Tensor& valid);

}  // namespace pconv::nn::functional::detail
