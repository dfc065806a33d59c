#include "pconv/loss/inpainting_loss.h"

#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/Exception.h>

#include <string>

namespace pconv::loss {
namespace {

// ImageNet statistics, which torchvision's VGG16 weights expect.
constexpr double kMean[] = {0.485, 0.456, 0.406};
constexpr double kStd[] = {0.229, 0.224, 0.225};

torch::Tensor mean_abs(const torch::Tensor& difference) { return difference.abs().mean(); }

}  // namespace

std::vector<std::pair<std::string, double>> LossTerms::values() const {
  std::vector<std::pair<std::string, double>> result;
  const std::pair<const char*, const torch::Tensor*> named[] = {{"valid", &valid},
                                                                {"hole", &hole},
                                                                {"perceptual", &perceptual},
                                                                {"style_out", &style_out},
                                                                {"style_comp", &style_comp},
                                                                {"tv", &tv},
                                                                {"total", &total}};
  for (const auto& [name, tensor] : named) {
    if (tensor->defined()) result.emplace_back(name, tensor->item<double>());
  }
  return result;
}

torch::Tensor gram_matrix(const torch::Tensor& features) {
  TORCH_CHECK(features.dim() == 4, "gram_matrix: features must be (N, C, H, W); got ",
              features.sizes());
  const int64_t batch = features.size(0);
  const int64_t channels = features.size(1);
  const int64_t positions = features.size(2) * features.size(3);
  // At least float32: half would overflow for large activations (sums of H*W products). Also
  // under autocast, which would cast bmm's float32 inputs back to its type: with --amp fp16 a
  // 256 crop's pool1 Gram matrix (16384 products a sum) overflowed to inf.
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const auto dtype = features.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  const auto flat = features.to(dtype).reshape({batch, channels, positions});
  return at::bmm(flat, flat.transpose(1, 2)) / static_cast<double>(channels * positions);
}

torch::Tensor composite(const torch::Tensor& output, const torch::Tensor& truth,
                        const torch::Tensor& mask) {
  return mask * truth + (1.0 - mask) * output;
}

torch::Tensor total_variation(const torch::Tensor& image, const torch::Tensor& mask) {
  const int64_t height = image.size(2);
  const int64_t width = image.size(3);
  // 1 in the holes dilated by one pixel (a 3x3 max of the hole map).
  const auto region = at::max_pool2d(1.0 - mask, 3, 1, 1);
  // Pairs of neighbours that both lie in the region, and the differences across them.
  const auto horizontal = region.narrow(3, 1, width - 1) * region.narrow(3, 0, width - 1);
  const auto vertical = region.narrow(2, 1, height - 1) * region.narrow(2, 0, height - 1);
  const auto dx = (image.narrow(3, 1, width - 1) - image.narrow(3, 0, width - 1)).abs();
  const auto dy = (image.narrow(2, 1, height - 1) - image.narrow(2, 0, height - 1)).abs();
  return ((dx * horizontal).sum() + (dy * vertical).sum()) / static_cast<double>(image.numel());
}

InpaintingLoss::InpaintingLoss(InpaintingLossOptions options, std::optional<Vgg16Features> features)
    : options_(options), features_(std::move(features)) {}

void InpaintingLoss::to(const torch::Device& device) {
  if (features_) (*features_)->to(device);
}

std::vector<torch::Tensor> InpaintingLoss::features_of(const torch::Tensor& rgb) const {
  const auto options = rgb.options();
  const auto mean = torch::tensor({kMean[0], kMean[1], kMean[2]}, options).view({1, 3, 1, 1});
  const auto std = torch::tensor({kStd[0], kStd[1], kStd[2]}, options).view({1, 3, 1, 1});
  Vgg16Features network = *features_;  // a holder shares the module
  return network->forward((rgb - mean) / std);
}

LossTerms InpaintingLoss::operator()(const torch::Tensor& output, const torch::Tensor& truth,
                                     const torch::Tensor& mask) const {
  TORCH_CHECK(output.dim() == 4 && output.sizes() == truth.sizes(), "InpaintingLoss: output ",
              output.sizes(), " and truth ", truth.sizes(), " must be the same (N, C, H, W)");
  TORCH_CHECK(mask.dim() == 4 && mask.size(1) == 1 &&
                  (mask.size(0) == 1 || mask.size(0) == output.size(0)) &&
                  mask.size(2) == output.size(2) && mask.size(3) == output.size(3),
              "InpaintingLoss: mask must be (",
              output.size(0) == 1 ? std::string("1") : std::to_string(output.size(0)) + " or 1",
              ", 1, ", output.size(2), ", ", output.size(3), "); got ", mask.sizes());
  const auto m = mask.to(output.scalar_type());
  const auto difference = output - truth;
  LossTerms terms;
  // Means over all N*C*H*W elements, as in the paper (normalised by the size of I_gt).
  terms.valid = mean_abs(m * difference);
  terms.hole = mean_abs((1.0 - m) * difference);
  const auto comp = composite(output, truth, m);
  terms.tv = total_variation(comp, m);
  terms.total =
      options_.valid() * terms.valid + options_.hole() * terms.hole + options_.tv() * terms.tv;

  if (features_) {
    TORCH_CHECK(output.size(1) == 3, "InpaintingLoss: perceptual and style terms need RGB; got ",
                output.size(1), " channels");
    const auto out_features = features_of(output);
    const auto comp_features = features_of(comp);
    std::vector<torch::Tensor> truth_features;
    {
      torch::NoGradGuard no_grad;  // the truth is a constant
      truth_features = features_of(truth);
    }
    terms.perceptual = torch::zeros({}, output.options().dtype(torch::kFloat));
    terms.style_out = torch::zeros({}, output.options().dtype(torch::kFloat));
    terms.style_comp = torch::zeros({}, output.options().dtype(torch::kFloat));
    for (size_t layer = 0; layer < truth_features.size(); ++layer) {
      const auto& truth_layer = truth_features[layer];
      terms.perceptual = terms.perceptual +
                         mean_abs(out_features[layer] - truth_layer).to(torch::kFloat) +
                         mean_abs(comp_features[layer] - truth_layer).to(torch::kFloat);
      const auto truth_gram = gram_matrix(truth_layer);
      terms.style_out = terms.style_out + mean_abs(gram_matrix(out_features[layer]) - truth_gram);
      terms.style_comp =
          terms.style_comp + mean_abs(gram_matrix(comp_features[layer]) - truth_gram);
    }
    terms.total = terms.total + options_.perceptual() * terms.perceptual +
                  options_.style() * (terms.style_out + terms.style_comp);
  }
  return terms;
}

}  // namespace pconv::loss
