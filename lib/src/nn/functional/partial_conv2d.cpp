#include "pconv/nn/functional/partial_conv2d.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string>

#include "partial_conv2d_inference.h"
#include "partial_conv2d_kernels.h"

namespace pconv::nn::functional {
namespace {

int64_t mask_terms_groups(const torch::Tensor& mask, const PartialConv2dFuncOptions& options) {
  // In padding mode every channel is valid, so the per-group ratio equals the one-channel one.
  return mask.defined() && options.multi_channel() ? options.groups() : 1;
}

void check_input(const torch::Tensor& input) {
  TORCH_CHECK(input.defined(), "partial_conv2d: input is undefined");
  TORCH_CHECK(input.dim() == 4, "partial_conv2d: input must be 4-D (N, C_in, H, W); got ",
              input.sizes());
  TORCH_CHECK(input.is_floating_point(), "partial_conv2d: input must be floating point; got ",
              input.scalar_type());
}

void check_mask(const torch::Tensor& mask, const torch::Tensor& input,
                const PartialConv2dFuncOptions& options) {
  if (!mask.defined()) return;
  const int64_t channels = options.multi_channel() ? input.size(1) : 1;
  const bool shape_ok = mask.dim() == 4 && (mask.size(0) == input.size(0) || mask.size(0) == 1) &&
                        mask.size(1) == channels && mask.size(2) == input.size(2) &&
                        mask.size(3) == input.size(3);
  TORCH_CHECK(shape_ok, "partial_conv2d: mask must be (",
              input.size(0) == 1 ? std::string("1") : std::to_string(input.size(0)) + " or 1", ", ",
              channels, ", ", input.size(2), ", ", input.size(3), ") for input ", input.sizes(),
              " with a ", options.multi_channel() ? "multi-channel" : "single-channel",
              " mask; got ", mask.sizes());
  TORCH_CHECK(mask.is_floating_point(), "partial_conv2d: mask must be floating point; got ",
              mask.scalar_type());
  TORCH_CHECK(mask.device() == input.device(), "partial_conv2d: mask is on ", mask.device(),
              " but input is on ", input.device());
}

void check_weight(const torch::Tensor& input, const torch::Tensor& weight,
                  const torch::Tensor& bias, const PartialConv2dFuncOptions& options) {
  const int64_t groups = options.groups();
  TORCH_CHECK(groups >= 1, "partial_conv2d: groups must be >= 1; got ", groups);
  TORCH_CHECK(weight.defined() && weight.dim() == 4,
              "partial_conv2d: weight must be 4-D (C_out, C_in / groups, kH, kW); got ",
              weight.defined() ? weight.sizes() : c10::IntArrayRef{});
  TORCH_CHECK(input.size(1) % groups == 0, "partial_conv2d: input channels (", input.size(1),
              ") of input ", input.sizes(), " are not divisible by groups (", groups, ")");
  TORCH_CHECK(weight.size(0) % groups == 0, "partial_conv2d: output channels of weight ",
              weight.sizes(), " are not divisible by groups (", groups, ")");
  TORCH_CHECK(weight.size(1) * groups == input.size(1), "partial_conv2d: input ", input.sizes(),
              " has ", input.size(1), " channels but weight ", weight.sizes(),
              " with groups=", groups, " expects ", weight.size(1) * groups);
  TORCH_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == weight.size(0)),
              "partial_conv2d: bias must be (", weight.size(0), "); got ", bias.sizes());
  // Outside autocast (which converts both itself) the convolution needs one element type; said
  // here with the remedy rather than by ATen as "expected scalar type ... but found ...". A
  // float32 bias with a float16 or bfloat16 weight is what autocast leaves, and the epilogue
  // takes it as it is (its gradient stays float32).
  if (!at::autocast::is_autocast_enabled(input.device().type())) {
    const bool reduced = weight.scalar_type() == at::kHalf || weight.scalar_type() == at::kBFloat16;
    TORCH_CHECK(input.scalar_type() == weight.scalar_type() &&
                    (!bias.defined() || bias.scalar_type() == weight.scalar_type() ||
                     (reduced && bias.scalar_type() == at::kFloat)),
                "partial_conv2d: the input is ", input.scalar_type(), " but the weight is ",
                weight.scalar_type(), bias.defined() ? " and the bias " : "",
                bias.defined() ? c10::toString(bias.scalar_type()) : "",
                "; convert the input (input.to(weight.dtype())) or the layer (module->to(dtype))");
  }
}

// conv(masked_input, weight) with the terms checked against its output (input and weight
// checked by the caller).
torch::Tensor convolve(const torch::Tensor& masked_input, const torch::Tensor& weight,
                       const torch::Tensor& bias, const PartialConv2dMaskTerms& terms,
                       const PartialConv2dFuncOptions& options) {
  torch::Tensor output = at::conv2d(masked_input, weight, {}, *options.stride(), *options.padding(),
                                    *options.dilation(), options.groups());
  detail::check_terms_fit(output, bias, terms.ratio, terms.valid, options.groups());
  return output;
}

PartialConv2dMaskTerms mask_terms_from_counts(const torch::Tensor& channel_counts, int64_t window,
                                              torch::ExpandingArray<2> kernel_size,
                                              const PartialConv2dFuncOptions& options,
                                              torch::ScalarType terms_dtype,
                                              std::optional<torch::ScalarType> new_mask_dtype) {
  TORCH_CHECK(channel_counts.defined() && channel_counts.dim() == 4,
              "partial_conv2d: channel_counts must be 4-D (N, G, H, W); got ",
              channel_counts.defined() ? channel_counts.sizes() : c10::IntArrayRef{});
  TORCH_CHECK(terms_dtype == torch::kFloat || terms_dtype == torch::kDouble,
              "partial_conv2d: mask terms are float32 or float64; asked for ", terms_dtype);
  TORCH_CHECK(window > 0, "partial_conv2d: window must be positive; got ", window);
  torch::NoGradGuard no_grad;
  // Window sums of 0/1 values must be exact integers: the kernels sum whole numbers, and the
  // reference path takes care of cuDNN's rounding algorithms.
  const torch::Tensor counts =
      channel_counts.requires_grad() ? channel_counts.detach() : channel_counts;
  return detail::mask_terms_of(detail::window_terms(
      detail::ValidCounts{counts.to(terms_dtype)}, static_cast<double>(window),
      detail::window_geometry(kernel_size, options), terms_dtype, new_mask_dtype));
}

// The updated mask in `dtype` for `output`: a broadcast view where possible (clone() it before
// writing into it).
torch::Tensor updated_mask(const PartialConv2dMaskTerms& terms, torch::ScalarType dtype,
                           const torch::Tensor& output, const PartialConv2dFuncOptions& options) {
  torch::Tensor new_mask = terms.new_mask_values.defined() &&
                                   terms.new_mask_values.scalar_type() == dtype &&
                                   terms.new_mask_values.sizes() == terms.valid.sizes()
                               ? terms.new_mask_values
                               : terms.valid.to(dtype);
  if (!options.multi_channel()) return new_mask;
  const int64_t term_groups = terms.valid.size(1);
  const int64_t term_batch = terms.valid.size(0);
  const int64_t out_channels = output.size(1);
  const int64_t out_h = output.size(2);
  const int64_t out_w = output.size(3);
  return term_groups == 1
             ? new_mask.expand({term_batch, out_channels, out_h, out_w})
             : new_mask.unsqueeze(2)
                   .expand({term_batch, term_groups, out_channels / term_groups, out_h, out_w})
                   .reshape({term_batch, out_channels, out_h, out_w});
}

}  // namespace

PartialConv2dMaskTerms partial_conv2d_mask_terms(const torch::Tensor& mask,
                                                 const torch::Tensor& input,
                                                 torch::ExpandingArray<2> kernel_size,
                                                 const PartialConv2dFuncOptions& options) {
  check_input(input);
  check_mask(mask, input, options);
  const int64_t in_channels = input.size(1);
  TORCH_CHECK(in_channels % options.groups() == 0, "partial_conv2d: input channels (", in_channels,
              ") of input ", input.sizes(), " are not divisible by groups (", options.groups(),
              ")");
  const int64_t kernel_h = (*kernel_size)[0];
  const int64_t kernel_w = (*kernel_size)[1];
  const int64_t groups = mask_terms_groups(mask, options);
  const auto terms_dtype = input.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;

  torch::NoGradGuard no_grad;
  // Valid counts summed over the channels of each group first, so that the window sum is one
  // cheap depthwise k x k box filter instead of a C_out x C_in convolution of ones.
  torch::Tensor channel_counts;
  int64_t window = kernel_h * kernel_w;
  if (!mask.defined()) {
    channel_counts = at::ones({1, 1, input.size(2), input.size(3)},
                              input.options().dtype(terms_dtype).requires_grad(false));
  } else if (options.multi_channel()) {
    const int64_t group_channels = in_channels / groups;
    window *= group_channels;
    // Summed straight into terms_dtype: one pass over the mask, no converted copy of it (the
    // sums of 0/1 values are whole numbers, exact in float32).
    const torch::Tensor values = mask.detach();
    channel_counts = groups == 1 ? at::sum(values, {1}, /*keepdim=*/true, terms_dtype)
                                 : at::sum(values.reshape({mask.size(0), groups, group_channels,
                                                           mask.size(2), mask.size(3)}),
                                           {2}, /*keepdim=*/false, terms_dtype);
  } else {
    channel_counts = mask.detach().to(terms_dtype);
  }
  // The updated mask's values in its type, made by the same kernel.
  return mask_terms_from_counts(channel_counts, window, kernel_size, options, terms_dtype,
                                mask.defined() ? mask.scalar_type() : input.scalar_type());
}

PartialConv2dMaskTerms partial_conv2d_mask_terms_from_counts(
    const torch::Tensor& channel_counts, int64_t window, torch::ExpandingArray<2> kernel_size,
    const PartialConv2dFuncOptions& options, torch::ScalarType terms_dtype) {
  return mask_terms_from_counts(channel_counts, window, kernel_size, options, terms_dtype,
                                std::nullopt);
}

torch::Tensor partial_conv2d_masked_input(const torch::Tensor& masked_input,
                                          const torch::Tensor& weight, const torch::Tensor& bias,
                                          const PartialConv2dMaskTerms& terms,
                                          const PartialConv2dFuncOptions& options) {
  // y = conv(x * m) * ratio + bias * valid, in place. The ratio is 0 where no input was valid,
  // so those outputs are exactly 0. With a gradient to compute, the convolution and the
  // epilogue are one autograd node where they can be (the UNet's layers in training).
  check_input(masked_input);
  check_weight(masked_input, weight, bias, options);
  if (detail::partial_convolution_usable(masked_input, weight, bias) &&
      detail::epilogue_terms_fusable(masked_input, terms.ratio, terms.valid)) {
    const torch::ExpandingArray<2> kernel({weight.size(2), weight.size(3)});
    return detail::partial_convolution(masked_input, masked_input, torch::Tensor(), weight, bias,
                                       terms.ratio, terms.valid,
                                       detail::window_geometry(kernel, options), options.groups());
  }
  return detail::renormalize(convolve(masked_input, weight, bias, terms, options), bias,
                             terms.ratio, terms.valid);
}

namespace detail {

torch::Tensor partial_conv2d_masked_input_for_inference(const torch::Tensor& masked_input,
                                                        const torch::Tensor& weight,
                                                        const torch::Tensor& bias,
                                                        const PartialConv2dMaskTerms& terms,
                                                        const PartialConv2dFuncOptions& options,
                                                        const InferencePost& post) {
  check_input(masked_input);
  check_weight(masked_input, weight, bias, options);
  return renormalize_for_inference(convolve(masked_input, weight, bias, terms, options), bias,
                                   terms.ratio, terms.valid, post);
}

}  // namespace detail

std::tuple<torch::Tensor, torch::Tensor> partial_conv2d_with_terms(
    const torch::Tensor& input, const torch::Tensor& mask, const torch::Tensor& weight,
    const torch::Tensor& bias, const PartialConv2dMaskTerms& terms,
    const PartialConv2dFuncOptions& options) {
  check_input(input);
  check_mask(mask, input, options);

  // Hole pixels are zeroed by the multiply, so their values never reach the output.
  const torch::Tensor masked_input =
      mask.defined() ? input * mask.detach().to(input.scalar_type()) : input;
  const int64_t term_groups = mask_terms_groups(mask, options);
  TORCH_CHECK(terms.ratio.defined() && terms.ratio.dim() == 4 && terms.ratio.size(1) == term_groups,
              "partial_conv2d: mask terms ",
              terms.ratio.defined() ? terms.ratio.sizes() : c10::IntArrayRef{}, " have ",
              terms.ratio.defined() ? terms.ratio.size(1) : 0, " groups; this mask needs ",
              term_groups);
  const torch::Tensor output =
      partial_conv2d_masked_input(masked_input, weight, bias, terms, options);
  return {output, updated_mask(terms, mask.defined() ? mask.scalar_type() : input.scalar_type(),
                               output, options)};
}

std::tuple<torch::Tensor, torch::Tensor> partial_conv2d(const torch::Tensor& input,
                                                        const torch::Tensor& mask,
                                                        const torch::Tensor& weight,
                                                        const torch::Tensor& bias,
                                                        const PartialConv2dFuncOptions& options) {
  check_input(input);
  check_weight(input, weight, bias, options);
  const torch::ExpandingArray<2> kernel({weight.size(2), weight.size(3)});
  if (mask.defined() && options.multi_channel()) {
    check_mask(mask, input, options);
    if (detail::mask_and_count_fusable(input, mask)) {
      // One pass over input and mask for both the masked input and the valid counts; with a
      // gradient to compute, the layer then is one autograd node where it can be.
      const int64_t groups = options.groups();
      const bool one_node = detail::partial_convolution_usable(input, weight, bias);
      // (A detach is an operator call: only where there is a gradient to cut.)
      const torch::Tensor mask_values = mask.requires_grad() ? mask.detach() : mask;
      auto [masked_input, counts] =
          detail::mask_and_count(input, mask_values, groups, /*differentiable=*/!one_node);
      const int64_t window = weight.size(2) * weight.size(3) * (input.size(1) / groups);
      auto terms = mask_terms_from_counts(counts, window, kernel, options, counts.scalar_type(),
                                          mask.scalar_type());
      torch::Tensor output =
          one_node ? detail::partial_convolution(input, masked_input, mask_values, weight, bias,
                                                 terms.ratio, terms.valid,
                                                 detail::window_geometry(kernel, options), groups)
                   : partial_conv2d_masked_input(masked_input, weight, bias, terms, options);
      torch::Tensor new_mask = updated_mask(terms, mask.scalar_type(), output, options);
      return {std::move(output), std::move(new_mask)};
    }
  }
  const auto terms = partial_conv2d_mask_terms(mask, input, kernel, options);
  return partial_conv2d_with_terms(input, mask, weight, bias, terms, options);
}

}  // namespace pconv::nn::functional
