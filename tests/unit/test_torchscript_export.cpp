// Tests of the TorchScript export: the saved module, loaded back with torch::jit::load, computes
// what PConvUNet::forward computes in eval mode (random, all-valid, all-hole and large-hole
// masks, float and double, several depths and channel counts), keeps the parameter names and the
// metadata, rejects bad shapes, and an unwritable path is an InputError.
#include <pconv/error.h>
#include <pconv/io/torchscript_export.h>

#include <ATen/ATen.h>
#include <torch/csrc/jit/serialization/import.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "temp_dir.h"

#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace {

namespace fs = std::filesystem;
using pconv::nn::PConvUNet;
using pconv::nn::PConvUNetOptions;

class TorchScriptExportTest : public ::testing::Test {
 protected:
  void SetUp() override { torch::manual_seed(7); }

  pconv::testing::TempDir temp_;
  const fs::path& dir_ = temp_.path();
};

// A model whose BatchNorm layers are far from their initial identity: random statistics and
// affine parameters, so that an export that drops or swaps any of them fails the comparison.
PConvUNet random_model(const PConvUNetOptions& options) {
  PConvUNet model(options);
  torch::NoGradGuard no_grad;
  for (auto& bn : model->encoder_bn) {
    bn->running_mean.normal_(0.0, 0.2);
    bn->running_var.uniform_(0.5, 2.0);
    bn->weight.uniform_(0.5, 1.5);
    bn->bias.normal_(0.0, 0.1);
  }
  for (auto& bn : model->decoder_bn) {
    bn->running_mean.normal_(0.0, 0.2);
    bn->running_var.uniform_(0.5, 2.0);
    bn->weight.uniform_(0.5, 1.5);
    bn->bias.normal_(0.0, 0.1);
  }
  model->eval();
  return model;
}

// Masks of every kind the tests compare on: all valid, all hole, random pixels, a large hole
// (most of the image, touching two borders), and one mask shared by the whole batch.
std::vector<std::pair<std::string, at::Tensor>> test_masks(int64_t batch, int64_t height,
                                                           int64_t width, at::ScalarType dtype) {
  const auto options = at::TensorOptions().dtype(dtype);
  auto large_hole = at::ones({batch, 1, height, width}, options);
  large_hole.narrow(2, 0, 3 * height / 4).narrow(3, width / 8, 7 * width / 8).zero_();
  auto one_for_all = at::ones({1, 1, height, width}, options);
  one_for_all.narrow(2, height / 4, height / 2).narrow(3, width / 4, width / 2).zero_();
  return {{"all valid", at::ones({batch, 1, height, width}, options)},
          {"all hole", at::zeros({batch, 1, height, width}, options)},
          {"random pixels", (at::rand({batch, 1, height, width}) > 0.4).to(dtype)},
          {"large hole", large_hole},
          {"one mask for the batch", one_for_all}};
}

double max_difference(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

// Exports `model`, loads the file back and compares both outputs on every test mask.
void expect_same_outputs(PConvUNet& model, const fs::path& path, int64_t batch, int64_t height,
                         int64_t width, at::ScalarType dtype, double tolerance) {
  pconv::io::export_torchscript(model, {}, path);
  torch::jit::Module loaded = torch::jit::load(path.string());
  model->eval();
  torch::NoGradGuard no_grad;
  const auto image =
      at::rand({batch, model->options.image_channels(), height, width}, at::TensorOptions(dtype));
  for (const auto& [name, mask] : test_masks(batch, height, width, dtype)) {
    SCOPED_TRACE(name);
    const auto [expected, expected_mask] = model(image, mask);
    const auto result = loaded.forward({image, mask}).toTuple();
    ASSERT_EQ(result->elements().size(), 2U);
    const at::Tensor output = result->elements()[0].toTensor();
    const at::Tensor output_mask = result->elements()[1].toTensor();
    ASSERT_EQ(output.sizes(), expected.sizes());
    ASSERT_EQ(output.scalar_type(), expected.scalar_type());
    EXPECT_LT(max_difference(output, expected), tolerance);
    ASSERT_EQ(output_mask.sizes(), expected_mask.sizes());
    EXPECT_TRUE(at::equal(output_mask, expected_mask));
    // Outputs are far from zero (only an all-hole mask gives zeros), so any mistake would show.
    if (mask.sum().item<double>() > 0) {
      EXPECT_GT(expected.abs().max().item<double>(), 0.1);
    }
  }
}

TEST_F(TorchScriptExportTest, MatchesForwardOnRandomAndLargeHoles) {
  auto model = random_model(PConvUNetOptions().depth(4).base_width(4).max_width(16));
  expect_same_outputs(model, dir_ / "model.ts", 2, 32, 48, at::kFloat, 1e-5);
}

TEST_F(TorchScriptExportTest, MatchesForwardAtTwiceTheSizeMultiple) {
  // 64x64 is 2^depth * 2: the deepest feature maps are 2x2, where every window is mostly
  // padding.
  auto model = random_model(PConvUNetOptions().depth(5).base_width(8).max_width(16));
  expect_same_outputs(model, dir_ / "model.ts", 3, 64, 64, at::kFloat, 1e-5);
}

TEST_F(TorchScriptExportTest, MatchesForwardForGreyImages) {
  auto model =
      random_model(PConvUNetOptions().depth(3).base_width(4).max_width(8).image_channels(1));
  expect_same_outputs(model, dir_ / "model.ts", 2, 16, 24, at::kFloat, 1e-5);
}

TEST_F(TorchScriptExportTest, MatchesForwardInDoublePrecision) {
  auto model = random_model(PConvUNetOptions().depth(3).base_width(4).max_width(16));
  model->to(at::kDouble);
  expect_same_outputs(model, dir_ / "model.ts", 2, 16, 16, at::kDouble, 1e-12);
}

TEST_F(TorchScriptExportTest, ExportsEvalModeWhateverTheModelsMode) {
  auto model = random_model(PConvUNetOptions().depth(3).base_width(4).max_width(8));
  model->train();
  const auto path = dir_ / "model.ts";
  pconv::io::export_torchscript(model, {}, path);
  EXPECT_TRUE(model->is_training());  // export does not change the model
  torch::jit::Module loaded = torch::jit::load(path.string());
  model->eval();
  torch::NoGradGuard no_grad;
  const auto image = at::rand({2, 3, 16, 16});
  const auto mask = (at::rand({2, 1, 16, 16}) > 0.3).to(at::kFloat);
  const auto expected = std::get<0>(model(image, mask));
  const auto output = loaded.forward({image, mask}).toTuple()->elements()[0].toTensor();
  EXPECT_LT(max_difference(output, expected), 1e-5);
}

TEST_F(TorchScriptExportTest, KeepsParameterNamesValuesAndMetadata) {
  auto model = random_model(PConvUNetOptions().depth(3).base_width(4).max_width(8));
  pconv::io::ModelMetadata metadata;
  metadata.training_data = "photos/ (12 images) \"quoted\"";
  metadata.command = "pconv train --data photos";
  metadata.steps = 1234;
  metadata.image_size = 64;
  metadata.metrics["val_psnr"] = 21.5;
  const auto path = dir_ / "model.ts";
  pconv::io::export_torchscript(model, metadata, path);

  torch::jit::ExtraFilesMap extra{{pconv::io::kTorchScriptMetadataFile, ""}};
  torch::jit::Module loaded = torch::jit::load(path.string(), c10::nullopt, extra);
  std::map<std::string, at::Tensor> exported;
  for (const auto& item : loaded.named_parameters()) exported[item.name] = item.value;
  for (const auto& item : loaded.named_buffers()) exported[item.name] = item.value;
  size_t count = 0;
  for (const auto& item : model->named_parameters()) {
    ASSERT_EQ(exported.count(item.key()), 1U) << item.key();
    EXPECT_TRUE(at::equal(exported[item.key()], item.value())) << item.key();
    ++count;
  }
  for (const auto& item : model->named_buffers()) {
    ASSERT_EQ(exported.count(item.key()), 1U) << item.key();
    EXPECT_TRUE(at::equal(exported[item.key()], item.value())) << item.key();
    ++count;
  }
  EXPECT_EQ(exported.size(), count);

  const std::string& json = extra[pconv::io::kTorchScriptMetadataFile];
  EXPECT_THAT(json, ::testing::HasSubstr("\"depth\": 3"));
  EXPECT_THAT(json, ::testing::HasSubstr("\"size_multiple\": 8"));
  EXPECT_THAT(json,
              ::testing::HasSubstr("\"training_data\": \"photos/ (12 images) \\\"quoted\\\"\""));
  EXPECT_THAT(json, ::testing::HasSubstr("\"steps\": 1234"));
  EXPECT_THAT(json, ::testing::HasSubstr("\"val_psnr\": 21.5"));
}

TEST_F(TorchScriptExportTest, ExportedModuleRejectsBadShapes) {
  auto model = random_model(PConvUNetOptions().depth(3).base_width(4).max_width(8));
  const auto path = dir_ / "model.ts";
  pconv::io::export_torchscript(model, {}, path);
  torch::jit::Module loaded = torch::jit::load(path.string());
  const auto mask = at::ones({1, 1, 16, 16});
  EXPECT_THAT(
      [&] {
        loaded.forward({at::rand({1, 3, 12, 16}), at::ones({1, 1, 12, 16})});
      },
      ::testing::ThrowsMessage<std::exception>(::testing::HasSubstr("multiples of 8")));
  EXPECT_THAT(
      [&] {
        loaded.forward({at::rand({1, 4, 16, 16}), mask});
      },
      ::testing::ThrowsMessage<std::exception>(::testing::HasSubstr("image must be (N, 3, H, W)")));
  EXPECT_THAT(
      [&] {
        loaded.forward({at::rand({2, 3, 16, 16}), at::ones({2, 3, 16, 16})});
      },
      ::testing::ThrowsMessage<std::exception>(
          ::testing::HasSubstr("mask must be (N or 1, 1, H, W)")));
}

TEST_F(TorchScriptExportTest, UnwritablePathIsInputErrorAndLeavesNothing) {
  auto model = random_model(PConvUNetOptions().depth(2).base_width(4).max_width(8));
  EXPECT_THROW(pconv::io::export_torchscript(model, {}, dir_ / "no_such_folder" / "model.ts"),
               pconv::InputError);
  // A folder where the file should go: the rename fails and the temporary file is removed.
  fs::create_directories(dir_ / "taken.ts" / "inside");
  EXPECT_THROW(pconv::io::export_torchscript(model, {}, dir_ / "taken.ts"), pconv::InputError);
  std::vector<std::string> left;
  for (const auto& entry : fs::directory_iterator(dir_)) left.push_back(entry.path().filename());
  EXPECT_THAT(left, ::testing::ElementsAre("taken.ts"));
}

}  // namespace
