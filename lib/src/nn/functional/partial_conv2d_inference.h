// Internal helpers of the functional partial convolution for the library's own networks
// (PConvUNet), not part of the public API: the window geometry of a layer, and the layer at
// inference with what follows it fused into its epilogue.
#pragma once

#include "partial_conv2d_kernels.h"

#include <pconv/nn/functional/partial_conv2d.h>

#include <utility>

namespace pconv::nn::functional::detail {

/// The window of a kernel of `kernel_size` with `options`' stride, padding and dilation.
inline WindowGeometry window_geometry(torch::ExpandingArray<2> kernel_size,
                                      const PartialConv2dFuncOptions& options) {
  return {{(*kernel_size)[0], (*kernel_size)[1]},
          {(*options.stride())[0], (*options.stride())[1]},
          {(*options.padding())[0], (*options.padding())[1]},
          {(*options.dilation())[0], (*options.dilation())[1]}};
}

/// The window kernel's terms as the layer takes them (`valid_as`, where made, as the updated
/// mask's values).
inline PartialConv2dMaskTerms mask_terms_of(WindowTerms window) {
  PartialConv2dMaskTerms terms;
  terms.ratio = std::move(window.ratio);
  terms.valid = std::move(window.valid);
  terms.new_mask_values = std::move(window.valid_as);
  return terms;
}

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
