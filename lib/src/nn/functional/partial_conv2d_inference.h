// The partial convolution at inference with what follows it fused into its epilogue: for the
// library's own networks (PConvUNet), not part of the public API.
#pragma once

#include "partial_conv2d_kernels.h"

#include <pconv/nn/functional/partial_conv2d.h>

namespace pconv::nn::functional::detail {

/// partial_conv2d_masked_input followed by `post` (BatchNorm with running statistics, an
/// activation), at inference only (grad mode off): the convolution, then
/// renormalize_for_inference, one pass over the output where the fused kernels apply.
torch::Tensor partial_conv2d_masked_input_for_inference(const torch::Tensor& masked_input,
                                                        const torch::Tensor& weight,
                                                        const torch::Tensor& bias,
                                                        const PartialConv2dMaskTerms& terms,
                                                        const PartialConv2dFuncOptions& options,
                                                        const InferencePost& post);

}  // namespace pconv::nn::functional::detail
