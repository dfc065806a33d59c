// VGG16's convolutional layers up to pool3, the fixed feature network of the perceptual and
// style loss terms, and a loader for weights saved from torchvision's VGG16.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/pimpl.h>

#include <filesystem>
#include <vector>

namespace pconv::loss {

/// torchvision's `vgg16().features[0:17]`: conv1_1..conv3_3 with ReLU and max pooling. The
/// convolutions are registered under torchvision's indices ("0", "2", "5", ...), so its
/// state dict maps 1:1. Expects RGB images normalised with the ImageNet mean and standard
/// deviation; returns the outputs of pool1, pool2 and pool3.
class Vgg16FeaturesImpl : public torch::nn::Cloneable<Vgg16FeaturesImpl> {
 public:
  Vgg16FeaturesImpl();
  void reset() override;
  std::vector<torch::Tensor> forward(const torch::Tensor& normalized_rgb);

  /// The convolutions in order, with their torchvision index.
  std::vector<std::pair<int64_t, torch::nn::Conv2d>> convolutions;
};
TORCH_MODULE(Vgg16Features);

/// Loads the weights of Vgg16Features from a TorchScript file saved from torchvision, either
/// the `features` part or the whole model:
///   python -c "import torch, torchvision; torch.jit.script(torchvision.models.vgg16(
///     weights='IMAGENET1K_V1').features).save('vgg16_features.pt')"
/// Returns the network in eval mode with gradients off. Throws pconv::ModelError naming the
/// file if it is missing, unreadable, or lacks a weight of the right shape.
Vgg16Features load_vgg16_features(const std::filesystem::path& path);

}  // namespace pconv::loss
