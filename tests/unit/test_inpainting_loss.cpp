// Tests of the inpainting loss: each pixel term against hand-computed values, Gram matrices in
// half precision, the VGG16 weight loader on a TorchScript file the test builds itself, and
// the perceptual and style terms against their definitions.
#include <pconv/error.h>
#include <pconv/loss/inpainting_loss.h>
#include <pconv/loss/vgg16_features.h>

#include <ATen/ATen.h>
#include <torch/csrc/jit/api/module.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "temp_dir.h"

#include <filesystem>
#include <fstream>
#include <string>

namespace {

namespace L = pconv::loss;

class InpaintingLossTest : public ::testing::Test {
 protected:
  void SetUp() override { torch::manual_seed(5); }
  pconv::testing::TempDir temp_;
  const std::filesystem::path& dir_ = temp_.path();
};

TEST_F(InpaintingLossTest, PixelTermsMatchHandComputedValues) {
  // One 2x2 grey image: truth 0, output 1,2,3,4; the right column is hole.
  const auto output = torch::tensor({1.0, 2.0, 3.0, 4.0}).view({1, 1, 2, 2});
  const auto truth = torch::zeros({1, 1, 2, 2});
  const auto mask = torch::tensor({1.0, 0.0, 1.0, 0.0}).view({1, 1, 2, 2});
  const L::InpaintingLoss loss(L::InpaintingLossOptions().valid(1).hole(6).tv(0.1));
  const auto terms = loss(output, truth, mask);
  EXPECT_DOUBLE_EQ(terms.valid.item<double>(), (1.0 + 3.0) / 4);
  EXPECT_DOUBLE_EQ(terms.hole.item<double>(), (2.0 + 4.0) / 4);
  // The composite is 0,2,0,4; the dilated hole covers all four pixels: horizontal |2-0|+|4-0|,
  // vertical |0-0|+|4-2|, over 4 elements.
  EXPECT_DOUBLE_EQ(terms.tv.item<double>(), (2.0 + 4.0 + 0.0 + 2.0) / 4);
  EXPECT_FALSE(terms.perceptual.defined());
  EXPECT_NEAR(terms.total.item<double>(), 1.0 + 6 * 1.5 + 0.1 * 2.0, 1e-6);
}

TEST_F(InpaintingLossTest, TotalVariationStaysInTheDilatedHole) {
  // 1x5 row, hole at index 2: the dilated region is 1..3, pairs (1,2) and (2,3) count.
  const auto image = torch::tensor({10.0, 1.0, 3.0, 6.0, 100.0}).view({1, 1, 1, 5});
  auto mask = torch::ones({1, 1, 1, 5});
  mask[0][0][0][2] = 0.0;
  EXPECT_DOUBLE_EQ(L::total_variation(image, mask).item<double>(), (2.0 + 3.0) / 5);
}

TEST_F(InpaintingLossTest, GramMatrixMatchesHandComputedValueAndSurvivesHalf) {
  // Features 1x2x1x2: channel a = (1, 2), channel b = (3, 4); F F^T = [[5, 11], [11, 25]] / 4.
  const auto features = torch::tensor({1.0, 2.0, 3.0, 4.0}).view({1, 2, 1, 2});
  const auto gram = L::gram_matrix(features);
  EXPECT_TRUE(at::allclose(gram, torch::tensor({5.0, 11.0, 11.0, 25.0}).view({1, 2, 2}) / 4.0));

  // Activations of a few hundred over 64x64 positions: F F^T reaches ~1e9, far beyond half's
  // 65504, but the Gram matrix is computed in float32 and normalised.
  const auto large = (at::rand({1, 8, 64, 64}) * 400.0).to(at::kHalf);
  const auto half_gram = L::gram_matrix(large);
  EXPECT_TRUE(half_gram.isfinite().all().item<bool>());
  const auto reference = L::gram_matrix(large.to(at::kDouble));
  EXPECT_TRUE(at::allclose(half_gram.to(at::kDouble), reference, 1e-4, 1e-3));
}

// A TorchScript module shaped like torchvision's scripted vgg16().features: submodules named by
// index, each convolution holding `weight` and `bias`.
void save_torchvision_like(const L::Vgg16Features& network, const std::filesystem::path& path,
                           const std::string& prefix_module = "") {
  torch::jit::Module features("__torch__.torchvision.Sequential");
  for (const auto& [index, conv] : network->convolutions) {
    torch::jit::Module layer("__torch__.torch.nn.Conv2d");
    layer.register_parameter("weight", conv->weight.detach().clone(), false);
    layer.register_parameter("bias", conv->bias.detach().clone(), false);
    features.register_module(std::to_string(index), layer);
  }
  if (prefix_module.empty()) {
    features.save(path.string());
    return;
  }
  torch::jit::Module whole("__torch__.torchvision.VGG");
  whole.register_module(prefix_module, features);
  whole.save(path.string());
}

TEST_F(InpaintingLossTest, LoadsVggWeightsFromTorchScript) {
  L::Vgg16Features random_network;
  for (const auto* prefix : {"", "features"}) {
    const auto path = dir_ / (std::string("vgg") + prefix + ".pt");
    save_torchvision_like(random_network, path, prefix);
    const auto loaded = L::load_vgg16_features(path);
    const auto ours = random_network->named_parameters();
    const auto theirs = loaded->named_parameters();
    ASSERT_EQ(ours.size(), 14U);
    for (const auto& item : ours) {
      EXPECT_TRUE(at::equal(item.value(), theirs[item.key()])) << item.key();
      EXPECT_FALSE(theirs[item.key()].requires_grad());
    }
    EXPECT_FALSE(loaded->is_training());
  }
}

TEST_F(InpaintingLossTest, BadVggFilesAreModelErrorsNamingTheFile) {
  const auto missing = dir_ / "missing.pt";
  EXPECT_THAT([&] { L::load_vgg16_features(missing); },
              ::testing::ThrowsMessage<pconv::ModelError>(::testing::HasSubstr("missing.pt")));
  const auto garbage = dir_ / "garbage.pt";
  std::ofstream(garbage) << "not a model";
  EXPECT_THAT([&] { L::load_vgg16_features(garbage); },
              ::testing::ThrowsMessage<pconv::ModelError>(::testing::HasSubstr("garbage.pt")));
  // A TorchScript file with a weight of the wrong shape.
  L::Vgg16Features network;
  network->convolutions[0].second->weight.set_data(torch::zeros({64, 1, 3, 3}));
  const auto wrong = dir_ / "wrong.pt";
  save_torchvision_like(network, wrong);
  EXPECT_THAT([&] { L::load_vgg16_features(wrong); },
              ::testing::ThrowsMessage<pconv::ModelError>(::testing::AllOf(
                  ::testing::HasSubstr("wrong.pt"), ::testing::HasSubstr("0.weight"))));
}

TEST_F(InpaintingLossTest, PerceptualAndStyleTermsFollowTheirDefinitions) {
  L::Vgg16Features network;
  network->eval();
  const auto output = at::rand({2, 3, 32, 32});
  const auto truth = at::rand({2, 3, 32, 32});
  auto mask = at::ones({2, 1, 32, 32});
  mask.narrow(2, 8, 16).narrow(3, 4, 20).zero_();
  const L::InpaintingLoss loss({}, network);
  const auto terms = loss(output, truth, mask);

  auto features = [&](const at::Tensor& rgb) {
    const auto mean = torch::tensor({0.485, 0.456, 0.406}).view({1, 3, 1, 1});
    const auto std = torch::tensor({0.229, 0.224, 0.225}).view({1, 3, 1, 1});
    return network->forward((rgb - mean) / std);
  };
  const auto comp = mask * truth + (1 - mask) * output;
  const auto f_out = features(output);
  const auto f_comp = features(comp);
  const auto f_truth = features(truth);
  ASSERT_EQ(f_truth.size(), 3U);
  EXPECT_EQ(f_truth[0].size(1), 64);
  EXPECT_EQ(f_truth[2].size(2), 4);  // pool3 of 32x32
  double perceptual = 0, style_out = 0, style_comp = 0;
  for (size_t i = 0; i < 3; ++i) {
    perceptual += (f_out[i] - f_truth[i]).abs().mean().item<double>() +
                  (f_comp[i] - f_truth[i]).abs().mean().item<double>();
    style_out +=
        (L::gram_matrix(f_out[i]) - L::gram_matrix(f_truth[i])).abs().mean().item<double>();
    style_comp +=
        (L::gram_matrix(f_comp[i]) - L::gram_matrix(f_truth[i])).abs().mean().item<double>();
  }
  EXPECT_NEAR(terms.perceptual.item<double>(), perceptual, 1e-5 * perceptual);
  EXPECT_NEAR(terms.style_out.item<double>(), style_out, 1e-5 * style_out);
  EXPECT_NEAR(terms.style_comp.item<double>(), style_comp, 1e-5 * style_comp);
  const double expected_total = terms.valid.item<double>() + 6 * terms.hole.item<double>() +
                                0.05 * perceptual + 120 * (style_out + style_comp) +
                                0.1 * terms.tv.item<double>();
  EXPECT_NEAR(terms.total.item<double>(), expected_total, 1e-5 * expected_total);
  EXPECT_EQ(terms.values().size(), 7U);
}

}  // namespace
