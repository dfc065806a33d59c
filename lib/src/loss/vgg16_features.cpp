#include "pconv/loss/vgg16_features.h"

#include "../io/file_problem.h"

#include "pconv/error.h"

#include <ATen/ATen.h>
#include <torch/csrc/jit/serialization/import.h>

#include <map>
#include <sstream>
#include <string>

namespace pconv::loss {
namespace {

struct ConvSpec {
  int64_t index, in_channels, out_channels;
};
// torchvision's VGG16 features, up to pool3 (index 16): convolutions; ReLU after each; max
// pooling at 4, 9 and 16.
constexpr ConvSpec kConvolutions[] = {{0, 3, 64},     {2, 64, 64},    {5, 64, 128},  {7, 128, 128},
                                      {10, 128, 256}, {12, 256, 256}, {14, 256, 256}};
constexpr int64_t kPoolAfter[] = {2, 7, 14};  // pool1, pool2, pool3 follow these convolutions

std::string shape_text(at::IntArrayRef sizes) {
  std::ostringstream out;
  out << sizes;
  return out.str();
}

}  // namespace

Vgg16FeaturesImpl::Vgg16FeaturesImpl() { Vgg16FeaturesImpl::reset(); }

void Vgg16FeaturesImpl::reset() {
  convolutions.clear();
  for (const auto& spec : kConvolutions) {
    convolutions.emplace_back(
        spec.index,
        register_module(
            std::to_string(spec.index),
            torch::nn::Conv2d(
                torch::nn::Conv2dOptions(spec.in_channels, spec.out_channels, 3).padding(1))));
  }
}

std::vector<torch::Tensor> Vgg16FeaturesImpl::forward(const torch::Tensor& normalized_rgb) {
  TORCH_CHECK(normalized_rgb.dim() == 4 && normalized_rgb.size(1) == 3,
              "Vgg16Features: input must be (N, 3, H, W); got ", normalized_rgb.sizes());
  std::vector<torch::Tensor> pools;
  torch::Tensor x = normalized_rgb;
  for (auto& [index, conv] : convolutions) {
    x = at::relu(conv->forward(x));
    for (const int64_t pool_index : kPoolAfter) {
      if (index == pool_index) {
        x = at::max_pool2d(x, 2, 2);
        pools.push_back(x);
      }
    }
  }
  return pools;
}

Vgg16Features load_vgg16_features(const std::filesystem::path& path) {
  const std::string name = path.string();
  if (const auto problem = io::file_problem(path, "VGG16 weight file"); !problem.empty()) {
    throw ModelError(name + ": " + problem);
  }
  std::map<std::string, at::Tensor> weights;
  try {
    const auto module = torch::jit::load(name, at::kCPU);
    for (const auto& parameter : module.named_parameters(/*recurse=*/true)) {
      std::string key = parameter.name;
      // A whole torchvision VGG16 names them features.N.weight.
      if (key.rfind("features.", 0) == 0) key = key.substr(9);
      weights[key] = parameter.value;
    }
  } catch (const std::exception& error) {
    throw ModelError(name + ": not a TorchScript file saved from torchvision's VGG16 (" +
                     brief(error) + ")");
  }

  Vgg16Features network;
  torch::NoGradGuard no_grad;
  for (auto& parameter : network->named_parameters(/*recurse=*/true)) {
    const auto found = weights.find(parameter.key());
    if (found == weights.end()) {
      throw ModelError(name + ": has no '" + parameter.key() +
                       "' (expected torchvision's VGG16 features or model)");
    }
    if (found->second.sizes() != parameter.value().sizes()) {
      throw ModelError(name + ": '" + parameter.key() + "' is " +
                       shape_text(found->second.sizes()) + ", expected " +
                       shape_text(parameter.value().sizes()));
    }
    parameter.value().copy_(found->second);
  }
  network->eval();
  for (auto& parameter : network->parameters()) parameter.requires_grad_(false);
  return network;
}

}  // namespace pconv::loss
