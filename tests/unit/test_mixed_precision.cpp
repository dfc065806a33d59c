// Mixed precision: the autocast scope, dynamic loss scaling (skip on overflow, shrink, grow),
// and the network and loss staying finite under bfloat16 and float16 autocast.
#include <pconv/error.h>
#include <pconv/loss/inpainting_loss.h>
#include <pconv/nn/pconv_unet.h>
#include <pconv/train/mixed_precision.h>

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>

#include <gtest/gtest.h>

#include <limits>
#include <stdexcept>

namespace {

using pconv::train::AutocastScope;
using pconv::train::GradScaler;

TEST(MixedPrecision, ParsesTheModes) {
  EXPECT_FALSE(pconv::train::parse_amp("off").has_value());
  EXPECT_EQ(pconv::train::parse_amp("bf16"), c10::kBFloat16);
  EXPECT_EQ(pconv::train::parse_amp("fp16"), c10::kHalf);
  EXPECT_THROW(pconv::train::parse_amp("fp8"), pconv::ArgumentError);
}

TEST(MixedPrecision, AutocastScopeCastsInsideAndRestoresAfter) {
  const auto a = at::rand({4, 4});
  const auto b = at::rand({4, 4});
  {
    AutocastScope scope(c10::kCPU, c10::kBFloat16);
    EXPECT_TRUE(at::autocast::is_autocast_enabled(c10::kCPU));
    EXPECT_EQ(at::mm(a, b).scalar_type(), c10::kBFloat16);
  }
  EXPECT_FALSE(at::autocast::is_autocast_enabled(c10::kCPU));
  EXPECT_EQ(at::mm(a, b).scalar_type(), c10::kFloat);
  {
    AutocastScope off(c10::kCPU, std::nullopt);
    EXPECT_FALSE(at::autocast::is_autocast_enabled(c10::kCPU));
  }
}

TEST(MixedPrecision, ScalerUnscalesGrowsAndBacksOff) {
  GradScaler scaler(/*initial_scale=*/4.0, /*growth_factor=*/2.0, /*backoff_factor=*/0.5,
                    /*growth_interval=*/2);
  EXPECT_EQ(scaler.scale(at::full({1}, 3.0)).item<float>(), 12.0F);
  auto grad = at::tensor({4.0F, 8.0F});
  EXPECT_TRUE(scaler.unscale({grad, at::Tensor()}));
  EXPECT_TRUE(at::equal(grad, at::tensor({1.0F, 2.0F})));
  scaler.update();
  EXPECT_EQ(scaler.scale_value(), 4.0);  // one good step: not yet
  EXPECT_TRUE(scaler.unscale({at::ones({2})}));
  scaler.update();
  EXPECT_EQ(scaler.scale_value(), 8.0);  // two in a row: grows
  const auto saved = scaler.state();
  auto overflow = at::tensor({1.0F, std::numeric_limits<float>::infinity()});
  EXPECT_FALSE(scaler.unscale({at::ones({3}), overflow}));
  scaler.update();
  EXPECT_EQ(scaler.scale_value(), 4.0);  // overflow: backs off
  auto nan = at::tensor({std::numeric_limits<float>::quiet_NaN()});
  EXPECT_FALSE(scaler.unscale({nan}));
  scaler.load_state(saved);
  EXPECT_EQ(scaler.scale_value(), 8.0);
}

// The style loss's Gram matrices stay float32 under autocast (bmm is on its lower-precision
// list): in float16, activations of a few units over 128x128 positions overflowed to inf.
TEST(MixedPrecision, GramMatricesStayFloat32UnderAutocast) {
  const auto features = at::rand({1, 4, 128, 128}) * 10.0;
  const auto reference = pconv::loss::gram_matrix(features.to(at::kDouble));
  for (const auto type : {c10::kBFloat16, c10::kHalf}) {
    SCOPED_TRACE(c10::toString(type));
    const AutocastScope scope(c10::kCPU, type);
    const auto flat = features.view({4, -1});
    ASSERT_EQ(at::mm(flat, flat.t()).scalar_type(), type);  // autocast is on
    const auto gram = pconv::loss::gram_matrix(features);
    EXPECT_EQ(gram.scalar_type(), c10::kFloat);
    EXPECT_TRUE(at::allclose(gram.to(at::kDouble), reference, 1e-5, 1e-4));
  }
}

TEST(MixedPrecision, NetworkAndLossStayFiniteUnderAutocast) {
  for (const auto type : {c10::kBFloat16, c10::kHalf}) {
    SCOPED_TRACE(c10::toString(type));
    torch::manual_seed(3);
    pconv::nn::PConvUNet model(pconv::nn::PConvUNetOptions().depth(3).base_width(8).max_width(16));
    pconv::loss::InpaintingLoss loss;
    const auto images = at::rand({2, 3, 32, 32});
    auto masks = at::ones({2, 1, 32, 32});
    masks.narrow(2, 4, 20).narrow(3, 2, 24).zero_();
    pconv::loss::LossTerms terms;
    {
      AutocastScope scope(c10::kCPU, type);
      const auto output = std::get<0>(model(images * masks, masks));
      EXPECT_EQ(output.scalar_type(), type);
      EXPECT_TRUE(at::isfinite(output).all().item<bool>());
      terms = loss(output.to(at::kFloat), images, masks);
    }
    ASSERT_TRUE(std::isfinite(terms.total.item<double>()));
    GradScaler scaler;
    scaler.scale(terms.total).backward();
    std::vector<at::Tensor> grads;
    for (const auto& parameter : model->parameters()) grads.push_back(parameter.grad());
    EXPECT_TRUE(scaler.unscale(grads));
    // Every parameter takes part in the forward: an undefined gradient is a graph cut by
    // autocast, not a parameter to skip.
    for (size_t i = 0; i < grads.size(); ++i) {
      ASSERT_TRUE(grads[i].defined()) << "parameter " << i;
      EXPECT_TRUE(at::isfinite(grads[i]).all().item<bool>()) << "parameter " << i;
    }
  }
}

}  // namespace
