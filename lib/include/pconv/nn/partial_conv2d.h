// PartialConv2d: the partial-convolution layer of Liu et al. (ECCV 2018) as a LibTorch module,
// used like torch::nn::Conv2d and convertible 1:1 from a PyTorch Conv2d / NVIDIA PartialConv2d.
#pragma once

#include <pconv/nn/functional/partial_conv2d.h>

#include <c10/core/Stream.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include <array>
#include <cstdint>
#include <mutex>
#include <ostream>
#include <tuple>
#include <vector>

namespace pconv::nn {

/// Options for PartialConv2d, named and defaulted as torch::nn::Conv2dOptions.
struct PartialConv2dOptions {
  PartialConv2dOptions(int64_t in_channels, int64_t out_channels,
                       torch::ExpandingArray<2> kernel_size)
      : in_channels_(in_channels), out_channels_(out_channels), kernel_size_(kernel_size) {}

  /// Number of input channels.
  TORCH_ARG(int64_t, in_channels);
  /// Number of output channels.
  TORCH_ARG(int64_t, out_channels);
  /// Kernel size, (height, width).
  TORCH_ARG(torch::ExpandingArray<2>, kernel_size);
  /// Step of the sliding window, (height, width).
  TORCH_ARG(torch::ExpandingArray<2>, stride) = 1;
  /// Zero padding on each side, (height, width); padded pixels count as holes.
  TORCH_ARG(torch::ExpandingArray<2>, padding) = 0;
  /// Spacing between kernel taps, (height, width).
  TORCH_ARG(torch::ExpandingArray<2>, dilation) = 1;
  /// Blocked connections from input to output channels, as in torch::nn::Conv2d.
  TORCH_ARG(int64_t, groups) = 1;
  /// Whether the layer adds a learnable bias (only where the window saw a valid input).
  TORCH_ARG(bool, bias) = true;
  /// true: the mask is (N, C_in, H, W) and the updated mask (N, C_out, H', W'); each output
  /// counts the valid inputs of its own group. false: the mask is (N, 1, H, W).
  TORCH_ARG(bool, multi_channel) = false;
  /// Reuse the mask terms when forward() is called again with the very same mask tensor,
  /// unchanged (same tensor object, shape, strides and version counter). The module holds a
  /// reference to the last mask, so its memory cannot be handed to a new mask meanwhile.
  /// Writes through raw data pointers bypass the version counter: keep this off if masks are
  /// changed that way. Padding-mode terms depend only on the image size and are always cached.
  TORCH_ARG(bool, cache_masks) = false;
};

/// A partial convolution:
///   y = W^T (X * M) * sum(1) / sum(M) + b   where sum(M) > 0, else 0;   M' = [sum(M) > 0]
/// with masks 1 = valid, 0 = hole. forward(x) without a mask is partial-convolution padding.
class PartialConv2dImpl : public torch::nn::Cloneable<PartialConv2dImpl> {
 public:
  PartialConv2dImpl(int64_t in_channels, int64_t out_channels, torch::ExpandingArray<2> kernel_size)
      : PartialConv2dImpl(PartialConv2dOptions(in_channels, out_channels, kernel_size)) {}
  explicit PartialConv2dImpl(PartialConv2dOptions options_);

  void reset() override;

  /// Initialises weight and bias exactly as torch::nn::Conv2d does.
  void reset_parameters();

  void pretty_print(std::ostream& stream) const override;

  /// Returns (output, updated mask). `mask` undefined: padding mode (an all-ones mask over the
  /// image, so only the zero padding counts as hole). The updated mask may be a broadcast view,
  /// and where the layer caches terms (padding mode, cache_masks) it is the cached tensor
  /// itself, the same in the next call's result: clone() it before writing into it. (A write
  /// does not corrupt the layer: its terms are made again on the next call.)
  std::tuple<torch::Tensor, torch::Tensor> forward(const torch::Tensor& input,
                                                   const torch::Tensor& mask = {});

  /// The options the module was built with.
  PartialConv2dOptions options;
  /// (C_out, C_in / groups, kH, kW), as torch::nn::Conv2d.
  torch::Tensor weight;
  /// (C_out), or undefined without bias.
  torch::Tensor bias;

 private:
  functional::PartialConv2dFuncOptions functional_options() const;
  functional::PartialConv2dMaskTerms mask_terms(const torch::Tensor& input,
                                                const torch::Tensor& mask);

  // The last mask's terms, and the padding-mode terms of the last image size. Copying a module
  // (clone()) starts with an empty cache.
  struct MaskCache {
    MaskCache() = default;
    MaskCache(const MaskCache& /*other*/) {}
    MaskCache& operator=(const MaskCache& /*other*/) { return *this; }

    // Terms, with the stream they were made on and their tensors' versions then (the updated
    // mask handed out is one of them; a write into it makes them stale).
    struct Entry {
      void store(const functional::PartialConv2dMaskTerms& made, const c10::Stream& made_on);

      functional::PartialConv2dMaskTerms terms;
      std::array<uint32_t, 3> versions{};
      c10::Stream stream = c10::Stream(c10::Stream::DEFAULT, c10::Device(c10::kCPU));
    };

    std::mutex mutex;
    // Everything the terms depend on besides the mask: the layer geometry (which a caller may
    // change through `options` between calls) and the terms' precision.
    std::vector<int64_t> geometry;
    torch::Tensor mask;  // held so that its memory cannot be recycled while it is the key
    uint32_t mask_version = 0;
    Entry masked;
    std::vector<int64_t> padding_geometry;  // geometry + image height and width
    Entry padding;                          // its stream names the device
  };
  MaskCache cache_;
};

/// A ModuleHolder for PartialConv2dImpl (see torch::nn::ModuleHolder for the semantics).
TORCH_MODULE(PartialConv2d);

}  // namespace pconv::nn
