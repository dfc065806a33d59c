#include "pconv/nn/pconv_unet.h"

#include "functional/partial_conv2d_inference.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <optional>
#include <string>
#include <utility>

namespace pconv::nn {
namespace {

namespace F = functional;

constexpr int64_t kDecoderKernel = 3;
constexpr double kDecoderSlope = 0.2;

// The paper's encoder kernels: 7, 5, 5, then 3.
int64_t encoder_kernel(int64_t level) { return level == 1 ? 7 : (level <= 3 ? 5 : 3); }

F::PartialConv2dFuncOptions encoder_geometry(int64_t level) {
  return F::PartialConv2dFuncOptions().stride(2).padding(encoder_kernel(level) / 2);
}

F::PartialConv2dFuncOptions decoder_geometry() {
  return F::PartialConv2dFuncOptions().stride(1).padding(kDecoderKernel / 2);
}

// At inference, what follows a layer (its BatchNorm, if any, then the activation, then the
// zeroing of its output's holes that the next layer would do) for the layer's epilogue to do in
// the same pass; nothing where the BatchNorm uses batch statistics (training mode) or lacks its
// affine vectors or running statistics.
std::optional<F::detail::InferencePost> inference_post(const torch::nn::BatchNorm2d* bn,
                                                       F::detail::Activation activation,
                                                       double slope) {
  F::detail::InferencePost post;
  post.activation = activation;
  post.slope = slope;
  post.zero_holes = true;
  if (bn != nullptr) {
    const auto& layer = **bn;
    if (layer.is_training() || !layer.weight.defined() || !layer.bias.defined() ||
        !layer.running_mean.defined() || !layer.running_var.defined()) {
      return std::nullopt;
    }
    post.bn_weight = layer.weight;
    post.bn_bias = layer.bias;
    post.bn_mean = layer.running_mean;
    post.bn_var = layer.running_var;
    post.eps = layer.options.eps();
  }
  return post;
}

}  // namespace

PConvUNetImpl::PConvUNetImpl(PConvUNetOptions options_) : options(options_) {
  PConvUNetImpl::reset();
}

int64_t PConvUNetImpl::encoder_width(int64_t level) const {
  if (level == 0) return options.image_channels();
  return std::min(options.base_width() << std::min<int64_t>(level - 1, 20), options.max_width());
}

void PConvUNetImpl::reset() {
  const int64_t depth = options.depth();
  TORCH_CHECK(depth >= 1 && depth <= 10, "PConvUNet: depth must be in 1..10; got ", depth);
  TORCH_CHECK(options.base_width() > 0, "PConvUNet: base_width must be positive; got ",
              options.base_width());
  TORCH_CHECK(options.max_width() >= options.base_width(), "PConvUNet: max_width (",
              options.max_width(), ") must be at least base_width (", options.base_width(), ")");
  TORCH_CHECK(options.image_channels() > 0, "PConvUNet: image_channels must be positive; got ",
              options.image_channels());
  encoder.clear();
  decoder.clear();
  encoder_bn.clear();
  decoder_bn.clear();

  // A bias only where no BatchNorm follows: BatchNorm's own shift takes its place. (Not exactly
  // the same: a partial convolution adds its bias only where a window sees a known pixel, so
  // with windows that see none the two differ there; a small difference, kept.)
  for (int64_t level = 1; level <= depth; ++level) {
    const int64_t kernel = encoder_kernel(level);
    const auto geometry = encoder_geometry(level);
    encoder.emplace_back(register_module(
        "encoder" + std::to_string(level),
        PartialConv2d(PartialConv2dOptions(encoder_width(level - 1), encoder_width(level), kernel)
                          .stride(geometry.stride())
                          .padding(geometry.padding())
                          .bias(level == 1)
                          .multi_channel(true))));
    if (level >= 2) {
      encoder_bn.emplace_back(register_module("encoder_bn" + std::to_string(level),
                                              torch::nn::BatchNorm2d(encoder_width(level))));
    }
  }
  for (int64_t level = depth; level >= 1; --level) {
    const int64_t up_channels = level == depth ? encoder_width(depth) : encoder_width(level);
    const int64_t in_channels = up_channels + encoder_width(level - 1);
    const int64_t out_channels = level == 1 ? options.image_channels() : encoder_width(level - 1);
    decoder.emplace_back(register_module(
        "decoder" + std::to_string(level),
        PartialConv2d(PartialConv2dOptions(in_channels, out_channels, kDecoderKernel)
                          .padding(kDecoderKernel / 2)
                          .bias(level == 1)
                          .multi_channel(true))));
    if (level >= 2) {
      decoder_bn.emplace_back(register_module("decoder_bn" + std::to_string(level),
                                              torch::nn::BatchNorm2d(out_channels)));
    }
  }
  set_freeze_encoder_bn(options.freeze_encoder_bn());
}

void PConvUNetImpl::pretty_print(std::ostream& stream) const {
  stream << "pconv::nn::PConvUNet(depth=" << options.depth()
         << ", base_width=" << options.base_width() << ", max_width=" << options.max_width()
         << ", image_channels=" << options.image_channels()
         << (options.freeze_encoder_bn() ? ", freeze_encoder_bn=true" : "") << ')';
}

torch::Tensor PConvUNetImpl::batch_norm(torch::nn::BatchNorm2d& layer, const torch::Tensor& input) {
  if (batch_norm_hook_ && layer->is_training()) return batch_norm_hook_(*layer, input);
  return layer(input);
}

void PConvUNetImpl::set_freeze_encoder_bn(bool freeze) {
  options.freeze_encoder_bn(freeze);
  for (auto& bn : encoder_bn) {
    bn->weight.requires_grad_(!freeze);
    bn->bias.requires_grad_(!freeze);
    bn->train(is_training() && !freeze);
  }
}

void PConvUNetImpl::train(bool on) {
  torch::nn::Module::train(on);
  if (options.freeze_encoder_bn()) {
    for (auto& bn : encoder_bn) bn->eval();
  }
}

std::tuple<torch::Tensor, torch::Tensor> PConvUNetImpl::forward(const torch::Tensor& image,
                                                                const torch::Tensor& mask) {
  TORCH_CHECK(image.defined() && image.dim() == 4 && image.size(1) == options.image_channels(),
              "PConvUNet: image must be (N, ", options.image_channels(), ", H, W); got ",
              image.defined() ? c10::str(image.sizes()) : std::string("none"));
  const int64_t multiple = size_multiple();
  TORCH_CHECK(image.size(2) % multiple == 0 && image.size(3) % multiple == 0,
              "PConvUNet: image height and width must be multiples of ", multiple,
              " (2^depth, depth ", options.depth(), "); got ", image.size(2), "x", image.size(3),
              " (pad the image, e.g. as pconv inpaint does)");
  TORCH_CHECK(mask.defined() && mask.dim() == 4 && mask.size(1) == 1 &&
                  (mask.size(0) == 1 || mask.size(0) == image.size(0)) &&
                  mask.size(2) == image.size(2) && mask.size(3) == image.size(3),
              "PConvUNet: mask must be (",
              image.size(0) == 1 ? std::string("1") : std::to_string(image.size(0)) + " or 1",
              ", 1, ", image.size(2), ", ", image.size(3), "); got ",
              mask.defined() ? c10::str(mask.sizes()) : std::string("none"));
  TORCH_CHECK(mask.is_floating_point(), "PConvUNet: mask must be floating point; got ",
              mask.scalar_type());

  const int64_t depth = options.depth();
  const auto terms_dtype = image.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  // Every mask in the network is one channel shared by the channels of one tensor, so a
  // layer's valid counts are (channels x mask) summed over its input blocks: no full
  // multi-channel mask is ever built or summed.
  std::vector<torch::Tensor> masks{mask.detach().to(terms_dtype)};
  // The current encoder mask in the type of the features it zeroes: the window kernel writes it
  // with the terms (on CUDA, in the type of the level's input), so most levels convert nothing.
  torch::Tensor feature_mask =
      mask.scalar_type() == image.scalar_type() ? mask.detach() : masks.back();
  std::vector<torch::Tensor> masked_features;  // encoder outputs with their holes zeroed
  masked_features.reserve(depth + 1);
  // At inference each layer's BatchNorm, activation and hole zeroing run in its epilogue's
  // pass: `holes_zeroed` says that `features` is already times its mask.
  const bool inference = !at::GradMode::is_enabled();
  bool holes_zeroed = false;
  torch::Tensor features = image;
  for (int64_t level = 1; level <= depth; ++level) {
    const torch::Tensor& level_mask = masks.back();
    const auto feature_dtype = features.scalar_type();
    masked_features.push_back(holes_zeroed ? features
                                           : features * (feature_mask.scalar_type() == feature_dtype
                                                             ? feature_mask
                                                             : feature_mask.to(feature_dtype)));
    const int64_t kernel = encoder_kernel(level);
    const auto geometry = encoder_geometry(level);
    const auto& conv = encoder[level - 1];
    const auto post = inference ? inference_post(level >= 2 ? &encoder_bn[level - 2] : nullptr,
                                                 F::detail::Activation::kRelu, 0.0)
                                : std::nullopt;
    // The count is channels x mask and the window channels x k x k: the channels cancel. The
    // next level zeroes its input's holes itself unless this layer's epilogue does.
    const auto terms = F::detail::mask_terms_of(F::detail::window_terms(
        F::detail::ValidCounts{level_mask}, static_cast<double>(kernel * kernel),
        F::detail::window_geometry(kernel, geometry), terms_dtype,
        post ? std::nullopt : std::optional(feature_dtype)));
    holes_zeroed = post.has_value();
    if (post) {
      features = F::detail::partial_conv2d_masked_input_for_inference(
          masked_features.back(), conv->weight, conv->bias, terms, geometry, *post);
    } else {
      features = F::partial_conv2d_masked_input(masked_features.back(), conv->weight, conv->bias,
                                                terms, geometry);
      if (level >= 2) features = batch_norm(encoder_bn[level - 2], features);
      features = at::relu(features);
    }
    masks.push_back(terms.valid);
    feature_mask = terms.new_mask_values.defined() ? terms.new_mask_values : terms.valid;
  }

  torch::Tensor current_mask = masks.back();
  for (int64_t level = depth; level >= 1; --level) {
    const torch::Tensor& skip = masked_features[level - 1];
    const auto size = skip.sizes();
    const torch::Tensor up_mask = at::upsample_nearest2d(current_mask, {size[2], size[3]});
    const torch::Tensor& skip_mask = masks[level - 1];
    const int64_t up_channels = features.size(1);
    const int64_t skip_channels = size[1];
    // At inference (the features' holes already zeroed) the upsampling and the concatenation
    // are one pass over the output where the fused kernels apply: no upsampled tensor written
    // and then copied again by cat, and one launch for two on a GPU.
    torch::Tensor masked_input =
        holes_zeroed ? F::detail::concat_upsampled(features, skip) : torch::Tensor();
    if (!masked_input.defined()) {
      const torch::Tensor up = at::upsample_nearest2d(features, {size[2], size[3]});
      masked_input = at::cat({holes_zeroed ? up : up * up_mask.to(up.scalar_type()), skip}, 1);
    }
    const auto geometry = decoder_geometry();
    // Counts up_mask x up_channels + skip_mask x skip_channels, weighed and added by the window
    // kernel itself on CUDA (by ATen elsewhere).
    const auto terms = F::detail::mask_terms_of(F::detail::window_terms(
        F::detail::ValidCounts{up_mask, static_cast<double>(up_channels), skip_mask,
                               static_cast<double>(skip_channels)},
        static_cast<double>((up_channels + skip_channels) * kDecoderKernel * kDecoderKernel),
        F::detail::window_geometry(kDecoderKernel, geometry), terms_dtype));
    const auto& conv = decoder[depth - level];
    // The last layer (level 1) has neither: its epilogue is the plain one.
    const auto post = inference && level >= 2
                          ? inference_post(&decoder_bn[depth - level],
                                           F::detail::Activation::kLeakyRelu, kDecoderSlope)
                          : std::nullopt;
    holes_zeroed = post.has_value();
    if (post) {
      features = F::detail::partial_conv2d_masked_input_for_inference(
          masked_input, conv->weight, conv->bias, terms, geometry, *post);
    } else {
      features =
          F::partial_conv2d_masked_input(masked_input, conv->weight, conv->bias, terms, geometry);
      if (level >= 2) {
        features = batch_norm(decoder_bn[depth - level], features);
        features = at::leaky_relu(features, kDecoderSlope);
      }
    }
    current_mask = terms.valid;
  }
  return {features, current_mask.to(mask.scalar_type())};
}

void to_channels_last(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto& parameter : module.parameters()) {
    if (parameter.dim() == 4) {
      parameter.set_data(parameter.contiguous(at::MemoryFormat::ChannelsLast));
    }
  }
}

}  // namespace pconv::nn
