// Kernels behind pconv::nn::functional::partial_conv2d: the mask terms and the fused
// renormalise-and-bias epilogue, on the CPU (float, double) and, in builds with nvcc, on CUDA
// (float, double, half, bfloat16; NCHW and channels-last). Internal to the library; whatever
// they do not cover takes the plain ATen path, the reference they are tested against.
#pragma once

#include "partial_conv2d_device.h"

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <optional>
#include <utility>

namespace pconv::nn::functional::detail {

struct WindowGeometry {
  std::array<int64_t, 2> kernel, stride, padding, dilation;
};

struct WindowTerms {
  at::Tensor ratio;     // window / sum where sum > 0, else 0
  at::Tensor valid;     // 1 where sum > 0, else 0
  at::Tensor valid_as;  // valid in the type asked for, where one was
};

/// The valid inputs per pixel summed over each group's channels, (N, G, H, W): `first` x
/// first_weight, plus `second` x second_weight where `second` is defined (the UNet's decoder
/// counts its upsampled and skip masks times their channel counts). Whole numbers.
struct ValidCounts {
  /// One plane, weight 1.
  explicit ValidCounts(at::Tensor counts) : first(std::move(counts)) {}
  ValidCounts(at::Tensor counts, double weight, at::Tensor second_counts, double second_weight_)
      : first(std::move(counts)),
        first_weight(weight),
        second(std::move(second_counts)),
        second_weight(second_weight_) {}

  at::Tensor first;
  double first_weight = 1;
  at::Tensor second;
  double second_weight = 0;
};

/// From the counts, the sums over every k x k window (zero padding outside) and from them the
/// ratio and the valid mask, (N, G, H', W') in `terms_dtype`, and valid again in `valid_as`
/// where given (CUDA: from the same kernel, no conversion; `valid` itself where that is the
/// terms' type). Never inf or NaN.
WindowTerms window_terms(const ValidCounts& counts, double window, const WindowGeometry& geometry,
                         at::ScalarType terms_dtype,
                         std::optional<at::ScalarType> valid_as = std::nullopt);

/// The same for one plane of counts.
WindowTerms window_terms(const at::Tensor& counts, double window, const WindowGeometry& geometry,
                         at::ScalarType terms_dtype);

/// y = raw * ratio + bias * valid for raw (N, C, H', W') and ratio/valid (N or 1, G, H', W'),
/// with output channel c in group c / (C / G). Differentiable in raw and bias; the result may
/// reuse raw's memory (raw is consumed). (A channels-last CPU output is fused only where
/// nothing needs a gradient.)
at::Tensor renormalize(const at::Tensor& raw, const at::Tensor& bias, const at::Tensor& ratio,
                       const at::Tensor& valid);

/// What follows the renormalisation at inference (see PostOp in partial_conv2d_device.h):
/// BatchNorm with running statistics where `bn_weight` is defined, then `activation`, then
/// with `zero_holes` the output times the valid mask.
struct InferencePost {
  at::Tensor bn_weight, bn_bias, bn_mean, bn_var;
  double eps = 0;
  Activation activation = Activation::kNone;
  double slope = 0;
  bool zero_holes = false;
};

/// `post` as the kernels read it, its vectors' data in Param.
template <typename Param>
PostOp<Param> post_op_of(const InferencePost& post) {
  PostOp<Param> op;
  if (post.bn_weight.defined()) {
    op.bn_weight = post.bn_weight.const_data_ptr<Param>();
    op.bn_bias = post.bn_bias.const_data_ptr<Param>();
    op.bn_mean = post.bn_mean.const_data_ptr<Param>();
    op.bn_var = post.bn_var.const_data_ptr<Param>();
    op.eps = post.eps;
  }
  op.activation = post.activation;
  op.slope = post.slope;
  op.zero_holes = post.zero_holes;
  return op;
}

/// At inference only (no autograd): activation(batch_norm(raw * ratio + bias * valid)), in one
/// pass over the output with the fused kernels (CPU: float and double, NCHW or channels-last;
/// CUDA: every case renormalize() fuses), else with ATen. May reuse raw's memory.
at::Tensor renormalize_for_inference(const at::Tensor& raw, const at::Tensor& bias,
                                     const at::Tensor& ratio, const at::Tensor& valid,
                                     const InferencePost& post);

/// Whether mask_and_count() runs a fused kernel for this input and multi-channel mask: one shape,
/// type and layout (CPU: float or double, NCHW; CUDA: any floating type, NCHW or channels-last).
bool mask_and_count_fusable(const at::Tensor& input, const at::Tensor& mask);

/// The prologue of a partial convolution with a multi-channel mask, in one pass over input and
/// mask where mask_and_count_fusable(): masked = input x mask, with `differentiable`
/// differentiable in the input (its gradient is grad x mask), and counts (N, G, H, W) in the
/// terms' type, the mask summed over each of the `groups` groups' channels.
std::pair<at::Tensor, at::Tensor> mask_and_count(const at::Tensor& input, const at::Tensor& mask,
                                                 int64_t groups, bool differentiable = true);

/// Whether partial_convolution() takes a layer with this input, weight and bias: fused kernels
/// on, a gradient to compute, no autocast on the input's device, no forward-mode tangent, a
/// weight of the input's type and device (CPU: NCHW), and a bias the epilogue reads as it is
/// (CPU: float or double, the input's type; CUDA: any floating type).
bool partial_convolution_usable(const at::Tensor& input, const at::Tensor& weight,
                                const at::Tensor& bias);

/// Whether partial_convolution() takes these mask terms for a convolution of `input` (the
/// terms' type, device and layout, and the input's layout; their shape it checks itself).
bool epilogue_terms_fusable(const at::Tensor& input, const at::Tensor& ratio,
                            const at::Tensor& valid);

/// Checks that mask terms ratio/valid fit a convolution's output (N or 1, 1 or `groups`,
/// H', W') on its device, with the bias there too; a one-line error if not.
void check_terms_fit(const at::Tensor& output, const at::Tensor& bias, const at::Tensor& ratio,
                     const at::Tensor& valid, int64_t groups);

/// The layer from its prologue's results as one autograd node: conv(masked, weight) * ratio +
/// bias * valid, masked = input x mask from mask_and_count(..., differentiable=false);
/// differentiable in input, weight and bias (the input's gradient is the convolution's
/// times the mask). With no mask, `masked` is `input` itself, an input whose holes are zeroed
/// already (and whose gradient's mask is its own node's). Only for layers
/// partial_convolution_usable() and epilogue_terms_fusable() accept: the caller asks.
at::Tensor partial_convolution(const at::Tensor& input, const at::Tensor& masked,
                               const at::Tensor& mask, const at::Tensor& weight,
                               const at::Tensor& bias, const at::Tensor& ratio,
                               const at::Tensor& valid, const WindowGeometry& geometry,
                               int64_t groups);

/// The UNet decoder's input at inference, cat({upsample_nearest2d(features, 2x), skip}, 1), in
/// one pass over the output where the fused kernels apply (features of half the skip's height
/// and width, one type and device, both NCHW or both channels-last; CPU and CUDA), else an
/// undefined tensor (the caller uses ATen). No autograd.
at::Tensor concat_upsampled(const at::Tensor& features, const at::Tensor& skip);

/// Whether the fused kernels are switched on (pconv::nn::functional::set_fused_kernels_enabled).
bool fused_enabled();

// The CUDA kernels (partial_conv2d_cuda.cu), present when PCONV_CUDA_KERNELS is defined. Every
// tensor is on one CUDA device, contiguous (the output and its gradient: NCHW or, with
// `channels_last`, channels-last), and allocated by the caller; the terms are float (double
// for double outputs).
namespace cuda {

/// ratio and valid (N, G, H', W') from counts x weight (+ second x second_weight where `second`
/// is defined, of the same shape), one dtype (float or double); valid again in valid_as's
/// type where it is defined.
void window_terms(const at::TensorBase& counts, double weight, const at::TensorBase& second,
                  double second_weight, double window, const WindowGeometry& geometry,
                  const at::TensorBase& ratio, const at::TensorBase& valid,
                  const at::TensorBase& valid_as);

/// raw = raw * ratio + bias * valid in place, then `post` (its tensors undefined: nothing);
/// `bias` (C) undefined or in the output's dtype or the terms', and post's vectors in the
/// bias's dtype (the terms' where there is no bias).
void renormalize(const at::TensorBase& raw, const at::TensorBase& bias, const at::TensorBase& ratio,
                 const at::TensorBase& valid, bool channels_last, const InferencePost& post);

/// grad_raw = grad * ratio; with `bias_sums` defined, the partial sums of grad * valid per
/// output channel: (N x plane_chunks(H' x W'), C) for NCHW, (row_blocks(N x H' x W'), C) for
/// channels-last (see
/// partial_conv2d_device.h), in the terms' dtype; their sum over the first dimension is the
/// bias gradient.
void renormalize_backward(const at::TensorBase& grad, const at::TensorBase& ratio,
                          const at::TensorBase& valid, bool channels_last,
                          const at::TensorBase& grad_raw, const at::TensorBase& bias_sums);

/// masked = input x mask and counts (N, G, H, W), the mask summed over each group's channels,
/// for input, mask and masked of one shape, type and layout (NCHW or, with `channels_last`,
/// channels-last), counts in the terms' type.
void mask_and_count(const at::TensorBase& input, const at::TensorBase& mask, int64_t groups,
                    bool channels_last, const at::TensorBase& masked, const at::TensorBase& counts);

/// out (N, C1 + C2, H, W) = cat({upsample_nearest2d(features, 2x), skip}, 1) for features
/// (N, C1, H/2, W/2) and skip (N, C2, H, W) of one type, the three NCHW or, with
/// `channels_last`, channels-last.
void concat_upsampled(const at::TensorBase& features, const at::TensorBase& skip,
                      bool channels_last, const at::TensorBase& out);

/// grad_bias (C, any floating dtype) = the sum of `bias_sums` (rows, C) over the rows, in a
/// fixed order.
void bias_gradient(const at::TensorBase& bias_sums, const at::TensorBase& grad_bias);

/// Whether the kernels have code the GPU `device` runs (this build's architectures, or PTX it
/// can compile); asked of the driver once per device. Where not, CUDA takes the ATen path.
/// A negative index is the current device.
bool kernels_run_on(c10::DeviceIndex device);

}  // namespace cuda
}  // namespace pconv::nn::functional::detail
