#include "pconv/nn/partial_conv2d.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/util/Exception.h>
#include <torch/nn/init.h>

#include <array>
#include <cmath>
#include <utility>

namespace pconv::nn {
namespace {

// Same object, same view of the same memory, not written since: the only case in which the
// cached terms are provably those of `mask`.
bool same_unchanged_mask(const torch::Tensor& cached, uint32_t cached_version,
                         const torch::Tensor& mask) {
  return cached.defined() && cached.unsafeGetTensorImpl() == mask.unsafeGetTensorImpl() &&
         cached._version() == cached_version && cached.data_ptr() == mask.data_ptr() &&
         cached.sizes() == mask.sizes() && cached.strides() == mask.strides() &&
         cached.scalar_type() == mask.scalar_type();
}

// The version counters of the terms' tensors when they were cached. The layer hands out one of
// them as its updated mask (no copy per call), and a caller may write into that; terms whose
// versions moved are made again.
std::array<uint32_t, 3> term_versions(const functional::PartialConv2dMaskTerms& terms) {
  std::array<uint32_t, 3> versions{};
  const std::array<const torch::Tensor*, 3> tensors{&terms.ratio, &terms.valid,
                                                    &terms.new_mask_values};
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (tensors[i]->defined()) versions[i] = tensors[i]->_version();
  }
  return versions;
}

// The stream work on `device` goes to now (always the same on the CPU): terms made on one CUDA
// stream are not read on another, whose kernels could run before those that write them.
c10::Stream current_stream(const c10::Device& device) {
  return c10::impl::getDeviceGuardImpl(device.type())->getStream(device);
}

}  // namespace

PartialConv2dImpl::PartialConv2dImpl(PartialConv2dOptions options_) : options(options_) {
  PartialConv2dImpl::reset();
}

void PartialConv2dImpl::reset() {
  const int64_t in_channels = options.in_channels();
  const int64_t out_channels = options.out_channels();
  const int64_t groups = options.groups();
  const auto& kernel = *options.kernel_size();
  TORCH_CHECK(in_channels > 0 && out_channels > 0, "PartialConv2d: in_channels (", in_channels,
              ") and out_channels (", out_channels, ") must be positive");
  TORCH_CHECK(groups > 0, "PartialConv2d: groups must be positive; got ", groups);
  TORCH_CHECK(in_channels % groups == 0, "PartialConv2d: in_channels (", in_channels,
              ") must be divisible by groups (", groups, ")");
  TORCH_CHECK(out_channels % groups == 0, "PartialConv2d: out_channels (", out_channels,
              ") must be divisible by groups (", groups, ")");
  TORCH_CHECK(kernel[0] > 0 && kernel[1] > 0, "PartialConv2d: kernel_size must be positive; got ",
              options.kernel_size());
  for (const int64_t step : *options.stride()) {
    TORCH_CHECK(step > 0, "PartialConv2d: stride must be positive; got ", options.stride());
  }
  for (const int64_t pad : *options.padding()) {
    TORCH_CHECK(pad >= 0, "PartialConv2d: padding must be non-negative; got ", options.padding());
  }
  for (const int64_t spacing : *options.dilation()) {
    TORCH_CHECK(spacing > 0, "PartialConv2d: dilation must be positive; got ", options.dilation());
  }

  weight = register_parameter(
      "weight", torch::empty({out_channels, in_channels / groups, kernel[0], kernel[1]}));
  if (options.bias()) {
    bias = register_parameter("bias", torch::empty({out_channels}));
  } else {
    bias = register_parameter("bias", torch::Tensor(), /*requires_grad=*/false);
  }
  reset_parameters();
}

void PartialConv2dImpl::reset_parameters() {
  // torch::nn::Conv2d's initialisation, draw for draw, so equal seeds give equal weights.
  torch::nn::init::kaiming_uniform_(weight, /*a=*/std::sqrt(5.0));
  if (bias.defined()) {
    const auto fan = torch::nn::init::_calculate_fan_in_and_fan_out(weight);
    const double bound = 1.0 / std::sqrt(static_cast<double>(std::get<0>(fan)));
    torch::nn::init::uniform_(bias, -bound, bound);
  }
}

void PartialConv2dImpl::pretty_print(std::ostream& stream) const {
  stream << "pconv::nn::PartialConv2d(" << options.in_channels() << ", " << options.out_channels()
         << ", kernel_size=" << options.kernel_size() << ", stride=" << options.stride();
  if (*options.padding() != *torch::ExpandingArray<2>(0)) {
    stream << ", padding=" << options.padding();
  }
  if (*options.dilation() != *torch::ExpandingArray<2>(1)) {
    stream << ", dilation=" << options.dilation();
  }
  if (options.groups() != 1) stream << ", groups=" << options.groups();
  if (!options.bias()) stream << ", bias=false";
  if (options.multi_channel()) stream << ", multi_channel=true";
  stream << ')';
}

functional::PartialConv2dFuncOptions PartialConv2dImpl::functional_options() const {
  return functional::PartialConv2dFuncOptions()
      .stride(options.stride())
      .padding(options.padding())
      .dilation(options.dilation())
      .groups(options.groups())
      .multi_channel(options.multi_channel());
}

functional::PartialConv2dMaskTerms PartialConv2dImpl::mask_terms(const torch::Tensor& input,
                                                                 const torch::Tensor& mask) {
  const auto func_options = functional_options();
  const auto& kernel = *options.kernel_size();
  // The terms are float64 for float64 inputs, float32 otherwise.
  std::vector<int64_t> geometry{kernel[0], kernel[1], options.groups(),
                                options.multi_channel() ? 1 : 0,
                                input.scalar_type() == torch::kDouble ? 1 : 0};
  for (const auto* values : {&options.stride(), &options.padding(), &options.dilation()}) {
    geometry.insert(geometry.end(), (*values)->begin(), (*values)->end());
  }

  // Terms made under InferenceMode are inference tensors, which have no version counter: nothing
  // would show a write into the updated mask handed out, so they are not kept.
  const bool keep = !c10::InferenceMode::is_enabled();
  const c10::Stream stream = current_stream(input.device());
  std::lock_guard<std::mutex> lock(cache_.mutex);
  if (!mask.defined()) {
    // Padding mode: the terms depend on nothing but the geometry, image size and device.
    geometry.push_back(input.size(2));
    geometry.push_back(input.size(3));
    auto& entry = cache_.padding;
    if (entry.terms.ratio.defined() && geometry == cache_.padding_geometry &&
        entry.stream == stream && term_versions(entry.terms) == entry.versions) {
      return entry.terms;
    }
    auto terms =
        functional::partial_conv2d_mask_terms(mask, input, options.kernel_size(), func_options);
    if (keep) {
      entry.store(terms, stream);
      cache_.padding_geometry = std::move(geometry);
    }
    return terms;
  }

  // An inference mask has no version counter, so nothing proves it unchanged: no caching.
  if (!options.cache_masks() || mask.is_inference()) {
    return functional::partial_conv2d_mask_terms(mask, input, options.kernel_size(), func_options);
  }
  auto& entry = cache_.masked;
  if (entry.terms.ratio.defined() && geometry == cache_.geometry && entry.stream == stream &&
      same_unchanged_mask(cache_.mask, cache_.mask_version, mask) &&
      term_versions(entry.terms) == entry.versions) {
    return entry.terms;
  }
  auto terms =
      functional::partial_conv2d_mask_terms(mask, input, options.kernel_size(), func_options);
  if (keep) {
    entry.store(terms, stream);
    cache_.mask = mask;
    cache_.mask_version = mask._version();
    cache_.geometry = std::move(geometry);
  }
  return terms;
}

void PartialConv2dImpl::MaskCache::Entry::store(const functional::PartialConv2dMaskTerms& made,
                                                const c10::Stream& made_on) {
  terms = made;
  versions = term_versions(made);
  stream = made_on;
}

std::tuple<torch::Tensor, torch::Tensor> PartialConv2dImpl::forward(const torch::Tensor& input,
                                                                    const torch::Tensor& mask) {
  TORCH_CHECK(input.defined() && input.dim() == 4,
              "PartialConv2d: input must be 4-D (N, C_in, H, W); got ",
              input.defined() ? input.sizes() : c10::IntArrayRef{});
  TORCH_CHECK(input.size(1) == options.in_channels(), "PartialConv2d: input ", input.sizes(),
              " has ", input.size(1), " channels; the layer expects ", options.in_channels());
  // Terms made afresh on every call: the functional form, which masks the input and counts
  // the mask in one pass where it can.
  if (mask.defined() && (!options.cache_masks() || mask.is_inference())) {
    return functional::partial_conv2d(input, mask, weight, bias, functional_options());
  }
  const auto terms = mask_terms(input, mask);
  return functional::partial_conv2d_with_terms(input, mask, weight, bias, terms,
                                               functional_options());
}

}  // namespace pconv::nn
