// The functional form of the partial convolution (Liu et al., ECCV 2018): the same maths as
// pconv::nn::PartialConv2d, with the weight and bias passed in by the caller.
#pragma once

#include <torch/arg.h>
#include <torch/expanding_array.h>
#include <torch/types.h>

#include <cstdint>
#include <tuple>

namespace pconv::nn::functional {

/// Geometry of a partial convolution; the kernel size comes from the weight.
struct PartialConv2dFuncOptions {
  /// Step of the sliding window, (height, width).
  TORCH_ARG(torch::ExpandingArray<2>, stride) = 1;
  /// Zero padding added on each side, (height, width). Padded pixels count as holes.
  TORCH_ARG(torch::ExpandingArray<2>, padding) = 0;
  /// Spacing between kernel taps, (height, width).
  TORCH_ARG(torch::ExpandingArray<2>, dilation) = 1;
  /// Number of blocked connections from input to output channels, as in torch::nn::Conv2d.
  TORCH_ARG(int64_t, groups) = 1;
  /// true: the mask has one channel per input channel, (N, C_in, H, W), and each output
  /// channel's window counts the valid inputs of its own group. false: one mask channel,
  /// (N, 1, H, W), shared by every input channel.
  TORCH_ARG(bool, multi_channel) = false;
};

/// What the convolution needs from a mask: computed without gradient, once per mask.
struct PartialConv2dMaskTerms {
  /// window size / valid count where the count is > 0, else 0; float32 (float64 for float64
  /// inputs), (N_mask, G, H', W')
  /// with G the number of groups for multi-channel masks and 1 otherwise.
  torch::Tensor ratio;
  /// 1 where the window saw at least one valid input, else 0; dtype and shape of `ratio`.
  torch::Tensor valid;
  /// Optional: `valid` in the type of the layer's updated mask (the mask's; the input's in
  /// padding mode) where that is not the terms' type, made with the terms so that the layer
  /// need not convert it on every call. partial_conv2d_mask_terms fills it; where it is
  /// undefined or of another type, the layer converts `valid`.
  torch::Tensor new_mask_values;
};

/// Computes the renormalisation ratio and the updated mask for `mask` (undefined: padding mode,
/// an all-ones mask over the input's image) as seen by a convolution of `input` with the given
/// kernel size and options. Only the input's shape, dtype and device are used. Never produces
/// inf or NaN; carries no gradient.
PartialConv2dMaskTerms partial_conv2d_mask_terms(const torch::Tensor& mask,
                                                 const torch::Tensor& input,
                                                 torch::ExpandingArray<2> kernel_size,
                                                 const PartialConv2dFuncOptions& options = {});

/// The mask terms from valid counts already summed over the channels of each group:
/// `channel_counts` (N, G, H, W) holds, per pixel, the number of valid input channels of each
/// of the G groups (G = 1 for single-channel masks and ungrouped convolutions), and `window`
/// is the number of inputs a full window sees (channels per group x kH x kW). A network whose
/// masks are blocks of identical channels (the UNet's concatenated skips) computes its counts
/// this way in one cheap pass instead of summing a full multi-channel mask. `terms_dtype` is
/// float32 or float64.
PartialConv2dMaskTerms partial_conv2d_mask_terms_from_counts(
    const torch::Tensor& channel_counts, int64_t window, torch::ExpandingArray<2> kernel_size,
    const PartialConv2dFuncOptions& options = {}, torch::ScalarType terms_dtype = torch::kFloat);

/// The convolution half of a partial convolution, for an input whose holes are already zero
/// (x * mask): y = conv(masked_input, weight) * ratio + bias * valid. Returns y only.
torch::Tensor partial_conv2d_masked_input(const torch::Tensor& masked_input,
                                          const torch::Tensor& weight, const torch::Tensor& bias,
                                          const PartialConv2dMaskTerms& terms,
                                          const PartialConv2dFuncOptions& options = {});

/// Applies a partial convolution with precomputed mask terms:
///   y = conv(x * mask, weight) * ratio + bias * valid
/// `mask` may be undefined (padding mode). Returns the output and the updated mask
/// ((N_mask, C_out, H', W') if multi-channel, else (N_mask, 1, H', W')).
std::tuple<torch::Tensor, torch::Tensor> partial_conv2d_with_terms(
    const torch::Tensor& input, const torch::Tensor& mask, const torch::Tensor& weight,
    const torch::Tensor& bias, const PartialConv2dMaskTerms& terms,
    const PartialConv2dFuncOptions& options = {});

/// Partial convolution of `input` (N, C_in, H, W) with `mask` (1 = valid, 0 = hole; shapes as
/// described for `multi_channel`; batch 1 broadcasts over N; undefined means padding mode),
/// `weight` (C_out, C_in / groups, kH, kW) and optional `bias` (C_out). Returns the output and
/// the updated mask. Differentiable in input, weight and bias; the mask carries no gradient.
std::tuple<torch::Tensor, torch::Tensor> partial_conv2d(
    const torch::Tensor& input, const torch::Tensor& mask, const torch::Tensor& weight,
    const torch::Tensor& bias = {}, const PartialConv2dFuncOptions& options = {});

/// The fused kernels (on the CPU for float32/float64 outputs; on CUDA for float32, float64,
/// float16 and bfloat16 outputs, NCHW or channels-last, in builds with cuda_kernels_built())
/// compute the mask terms and the renormalise-and-bias epilogue in one pass each. Switched off,
/// every call takes the plain ATen path, the reference the kernels are tested against (and
/// benchmarked with). Process-wide; on by default.
void set_fused_kernels_enabled(bool enabled);
bool fused_kernels_enabled();

/// Whether this build carries the CUDA kernels (compiled with nvcc against a CUDA LibTorch).
/// Without them, CUDA tensors take the ATen path.
bool cuda_kernels_built();

/// Whether the CUDA kernels run on the GPU `device` (cuda without an index: cuda:0): a build
/// with them, compiled for its architecture or with PTX it can take (TORCH_CUDA_ARCH_LIST at
/// configure time). Where they do not, its tensors take the ATen path. Asks the driver once per
/// device; false for any other device type.
bool cuda_kernels_run_on(const c10::Device& device);

}  // namespace pconv::nn::functional
