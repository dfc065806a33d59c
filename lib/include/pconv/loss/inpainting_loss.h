// The inpainting loss of Liu et al. (ECCV 2018) as separate, weighted terms: valid and hole
// L1, perceptual and style on VGG16 pool1..pool3 features, and total variation on the holes.
#pragma once

#include <pconv/loss/vgg16_features.h>

#include <torch/arg.h>
#include <torch/types.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace pconv::loss {

/// The weight of each term; the defaults are the paper's.
struct InpaintingLossOptions {
  TORCH_ARG(double, valid) = 1.0;
  TORCH_ARG(double, hole) = 6.0;
  TORCH_ARG(double, perceptual) = 0.05;
  /// Applied to the style terms of the output and of the composite alike.
  TORCH_ARG(double, style) = 120.0;
  TORCH_ARG(double, tv) = 0.1;
};

/// Every term, unweighted, and the weighted total; scalar tensors. Perceptual and style terms
/// are undefined when the loss has no feature network.
struct LossTerms {
  torch::Tensor valid, hole, perceptual, style_out, style_comp, tv, total;

  /// (name, value) of every defined term, in a fixed order, for logs.
  std::vector<std::pair<std::string, double>> values() const;
};

/// Gram matrices of features (N, C, H, W): F F^T / (C H W), (N, C, C), computed in float32
/// (float64 for float64 input) so that they neither overflow nor underflow in half.
torch::Tensor gram_matrix(const torch::Tensor& features);

/// The composite: the output in the holes, the truth elsewhere.
torch::Tensor composite(const torch::Tensor& output, const torch::Tensor& truth,
                        const torch::Tensor& mask);

/// Mean absolute horizontal and vertical differences of `image` over the pairs of pixels that
/// both lie in the holes dilated by one pixel, divided by the number of image elements.
torch::Tensor total_variation(const torch::Tensor& image, const torch::Tensor& mask);

/// The loss. Images are RGB in [0, 1], (N, 3, H, W); the mask is (N or 1, 1, H, W), 1 = valid,
/// 0 = hole. Without a feature network only the pixel terms are computed.
class InpaintingLoss {
 public:
  explicit InpaintingLoss(InpaintingLossOptions options = {},
                          std::optional<Vgg16Features> features = std::nullopt);

  LossTerms operator()(const torch::Tensor& output, const torch::Tensor& truth,
                       const torch::Tensor& mask) const;

  bool has_features() const { return features_.has_value(); }
  const InpaintingLossOptions& options() const { return options_; }
  /// Moves the feature network (if any) to `device`.
  void to(const torch::Device& device);

 private:
  std::vector<torch::Tensor> features_of(const torch::Tensor& rgb) const;

  InpaintingLossOptions options_;
  std::optional<Vgg16Features> features_;
};

}  // namespace pconv::loss
