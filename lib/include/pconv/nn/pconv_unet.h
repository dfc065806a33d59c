// PConvUNet: the partial-convolution UNet of Liu et al. (ECCV 2018), with depth and widths as
// options so that a small model trains on a CPU and the paper's model on a GPU.
#pragma once

#include <pconv/nn/partial_conv2d.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <functional>
#include <ostream>
#include <tuple>
#include <vector>

namespace pconv::nn {

/// Options for PConvUNet. The paper's model: depth 8 at 512x512 (7 at 256x256), base width
/// 64, maximum width 512.
struct PConvUNetOptions {
  /// Number of stride-2 partial convolutions in the encoder (and of decoder layers).
  TORCH_ARG(int64_t, depth) = 7;
  /// Channels of the first encoder layer; each further layer doubles them up to max_width.
  TORCH_ARG(int64_t, base_width) = 64;
  /// Upper bound on the channels of any layer.
  TORCH_ARG(int64_t, max_width) = 512;
  /// Channels of the image in and of the image out.
  TORCH_ARG(int64_t, image_channels) = 3;
  /// Fine-tuning stage: encoder BatchNorm layers use and keep their running statistics and
  /// their affine parameters are not trained.
  TORCH_ARG(bool, freeze_encoder_bn) = false;
};

/// Encoder: depth partial convolutions with stride 2 (kernels 7, 5, 5, then 3), BatchNorm from
/// the second layer on, ReLU. Decoder: nearest 2x upsampling, concatenation with the encoder
/// features of the same size (the image itself at the last layer) and with their masks, a
/// 3x3 partial convolution, BatchNorm and LeakyReLU(0.2) except at the last layer.
///
/// forward(image, mask) takes the image (N, C, H, W) with H and W multiples of 2^depth and the
/// mask (N or 1, 1, H, W), 1 = valid, 0 = hole, and returns the network output (N, C, H, W)
/// and the final mask. The mask pyramid is computed once per forward, as per-pixel valid
/// counts, never as a full multi-channel mask.
class PConvUNetImpl : public torch::nn::Cloneable<PConvUNetImpl> {
 public:
  explicit PConvUNetImpl(PConvUNetOptions options_ = {});

  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  /// Keeps the encoder BatchNorm layers in eval mode while freeze_encoder_bn is set.
  void train(bool on = true) override;

  std::tuple<torch::Tensor, torch::Tensor> forward(const torch::Tensor& image,
                                                   const torch::Tensor& mask);

  /// Applies options.freeze_encoder_bn(freeze) to the live module (parameters and mode).
  void set_freeze_encoder_bn(bool freeze);

  /// Replaces the BatchNorm layers' computation while they are in training mode (e.g. with
  /// statistics synchronised over data-parallel processes); empty: LibTorch's BatchNorm2d.
  using BatchNormHook =
      std::function<torch::Tensor(torch::nn::BatchNorm2dImpl& layer, const torch::Tensor& input)>;
  void set_batch_norm_hook(BatchNormHook hook) { batch_norm_hook_ = std::move(hook); }

  /// Channels of encoder layer `level` (1..depth); level 0 is the image.
  int64_t encoder_width(int64_t level) const;
  /// H and W of the input must be multiples of this.
  int64_t size_multiple() const { return int64_t{1} << options.depth(); }

  PConvUNetOptions options;
  std::vector<PartialConv2d> encoder;
  std::vector<PartialConv2d> decoder;  // decoder[0] is the deepest, decoder.back() the last
  std::vector<torch::nn::BatchNorm2d> encoder_bn;  // for encoder levels 2..depth
  std::vector<torch::nn::BatchNorm2d> decoder_bn;  // for every decoder layer but the last

 private:
  torch::Tensor batch_norm(torch::nn::BatchNorm2d& layer, const torch::Tensor& input);
  BatchNormHook batch_norm_hook_;
};

/// A ModuleHolder for PConvUNetImpl.
TORCH_MODULE(PConvUNet);

/// Stores every 4-D parameter of `module` (and of its children) in channels-last (NHWC) memory
/// format, the layout cuDNN's tensor-core kernels work in; feed it channels-last inputs too.
/// Gradients and optimiser state follow the parameters' layout; moving the module between
/// devices keeps it.
void to_channels_last(torch::nn::Module& module);

}  // namespace pconv::nn
