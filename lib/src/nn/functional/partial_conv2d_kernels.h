// CPU kernels behind pconv::nn::functional::partial_conv2d: the mask terms and the
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

struct WindowTerms {
  at::Tensor ratio;  // window / sum where sum > 0, else 0
  at::Tensor valid;  // 1 where sum > 0, else 0
};

/// From `counts` (N, G, H, W), the valid inputs per pixel summed over each group's channels:
/// the sums over every k x k window (zero padding outside) and from them the ratio and the
/// valid mask, (N, G, H', W') in `terms_dtype`. Never inf or NaN.
WindowTerms window_terms(const at::Tensor& counts, double window, const WindowGeometry& geometry,
                         at::ScalarType terms_dtype);

/// y = raw * ratio + bias * valid for raw (N, C, H', W') and ratio/valid (N or 1, G, H', W'),
/// with output channel c in group c / (C / G). Differentiable in raw and bias; the result may
/// reuse raw's memory (raw is consumed).
at::Tensor renormalize(const at::Tensor& raw, const at::Tensor& bias, const at::Tensor& ratio,
                       const at::Tensor& valid);

}  // namespace pconv::nn::functional::detail
