// Tests of the quality metrics against values computed by hand.
#include <pconv/error.h>
#include <pconv/eval/evaluation.h>
#include <pconv/eval/metrics.h>
#include <pconv/io/image_file.h>

#include <ATen/ATen.h>

#include <gtest/gtest.h>

#include "temp_dir.h"

#include <cmath>
#include <vector>

namespace {

namespace E = pconv::eval;

TEST(MetricsTest, PsnrOfAKnownErrorAndOfIdenticalImages) {
  const auto truth = at::full({2, 3, 8, 8}, 0.5, at::kDouble);
  auto image = truth.clone();
  image[0].add_(0.1);  // MSE 0.01 -> 20 dB
  const auto values = E::psnr(image, truth);
  EXPECT_NEAR(values[0].item<double>(), 20.0, 1e-9);
  EXPECT_TRUE(std::isinf(values[1].item<double>()));
}

// The separable filtering against the 11x11 Gaussian window applied whole (Wang et al.'s
// definition), on random images of several channel counts and odd sizes.
TEST(MetricsTest, SsimEqualsTheWholeWindowDefinition) {
  torch::manual_seed(5);
  for (const int64_t channels : {1, 3}) {
    const auto x = at::rand({2, channels, 23, 17}, at::kDouble);
    const auto y = (x + 0.2 * at::randn_like(x)).clamp(0, 1);
    const auto coords = at::arange(11, at::kDouble) - 5.0;
    auto gauss = at::exp(-coords.pow(2) / (2 * 1.5 * 1.5));
    gauss = gauss / gauss.sum();
    const auto window =
        (gauss.view({-1, 1}) * gauss.view({1, -1})).expand({channels, 1, 11, 11}).contiguous();
    const auto filter = [&](const at::Tensor& t) {
      const std::vector<int64_t> ones{1, 1};
      const std::vector<int64_t> zeros{0, 0};
      return at::conv2d(t, window, at::Tensor(), ones, zeros, ones, channels);
    };
    const auto mu_x = filter(x);
    const auto mu_y = filter(y);
    const auto sxx = filter(x * x) - mu_x * mu_x;
    const auto syy = filter(y * y) - mu_y * mu_y;
    const auto sxy = filter(x * y) - mu_x * mu_y;
    const double c1 = 1e-4;
    const double c2 = 9e-4;
    const auto expected = (((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) /
                           ((mu_x * mu_x + mu_y * mu_y + c1) * (sxx + syy + c2)))
                              .mean({1, 2, 3});
    EXPECT_TRUE(at::allclose(E::ssim(x, y), expected, 0.0, 1e-12)) << channels << " channels";
  }
}

TEST(MetricsTest, SsimOfConstantImagesHasAClosedForm) {
  // Constant images a and b: no variance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1).
  const double a = 0.3;
  const double b = 0.6;
  const double c1 = 0.01 * 0.01;
  const auto value = E::ssim(at::full({1, 1, 16, 16}, a), at::full({1, 1, 16, 16}, b));
  EXPECT_NEAR(value[0].item<double>(), (2 * a * b + c1) / (a * a + b * b + c1), 1e-9);
  const auto noise = at::rand({1, 3, 16, 16});
  EXPECT_NEAR(E::ssim(noise, noise)[0].item<double>(), 1.0, 1e-9);
  EXPECT_LT(E::ssim(noise, at::rand({1, 3, 16, 16}))[0].item<double>(), 0.5);
}

TEST(MetricsTest, L1IsTheMeanAbsoluteDifference) {
  const auto truth = at::zeros({1, 1, 2, 2}, at::kDouble);
  const auto image = torch::tensor({0.1, -0.2, 0.3, 0.0}, at::kDouble).view({1, 1, 2, 2});
  EXPECT_NEAR(E::l1_error(image, truth)[0].item<double>(), 0.6 / 4, 1e-9);
  EXPECT_THROW(E::l1_error(image, at::zeros({1, 1, 2, 3})), pconv::ArgumentError);
}

// The bins are half-open, (low, high], as their labels say: every mask's hole ratio lies in its
// own bin, also on a crop as small as 16x16, where the edge 0.5 is a whole number of pixels.
// (The generator stops at or past a random target ratio, so a mask exactly on a lower edge is
// rare: none in these 1200, nor with 20x20; the bins' lower edges are excluded all the same.)
TEST(Evaluation, MasksFallInsideTheirHalfOpenBins) {
  pconv::testing::TempDir dir;
  const auto photo = dir.path() / "photo.pt";
  pconv::io::write_image(photo, at::rand({3, 16, 16}));
  const pconv::eval::Method zeros = [](const at::Tensor& image, const at::Tensor&) {
    return at::zeros_like(image);
  };
  const int64_t per_bin = 200;
  const auto report = pconv::eval::evaluate(
      {photo}, {{"zeros", zeros}},
      pconv::eval::EvalOptions().size(16).per_bin(per_bin).examples_per_bin(per_bin));
  ASSERT_EQ(report.examples.size(), report.bins.size() * per_bin);
  for (size_t i = 0; i < report.examples.size(); ++i) {
    const auto& bin = report.bins[i / per_bin];
    const double ratio = report.examples[i].holes.to(at::kDouble).mean().item<double>();
    EXPECT_GT(ratio, bin.low) << bin.label() << ", example " << i % per_bin;
    EXPECT_LE(ratio, bin.high) << bin.label() << ", example " << i % per_bin;
  }
}

}  // namespace

namespace {

// The evaluation scores composites against the truth in 8 bits, as a saved file holds it: the
// known pixels count nothing, also where the crop is scaled (between 8-bit levels before the
// rounding, they gave every method up to 0.5/255 of error on each).
TEST(Evaluation, KnownPixelsCountNothing) {
  pconv::testing::TempDir dir;
  const auto photo = dir.path() / "photo.pt";  // a tensor image: every build reads it
  const auto small = at::rand({1, 3, 6, 5});
  pconv::io::write_image(photo, at::upsample_bilinear2d(small, {90, 100}, false).squeeze(0));
  const pconv::eval::Method zeros = [](const at::Tensor& image, const at::Tensor&) {
    return at::zeros_like(image);
  };
  const auto report = pconv::eval::evaluate({photo}, {{"zeros", zeros}},
                                            pconv::eval::EvalOptions().size(64).per_bin(1));
  ASSERT_EQ(report.examples.size(), report.bins.size());
  for (size_t b = 0; b < report.bins.size(); ++b) {
    SCOPED_TRACE(report.bins[b].label());
    const auto& example = report.examples[b];
    const auto levels = example.truth * 255.0;
    EXPECT_TRUE(at::allclose(levels, levels.round(), 0.0, 1e-4));
    const auto composite = example.outputs.at(0);
    const auto known = example.holes.logical_not().unsqueeze(0).expand_as(composite);
    EXPECT_TRUE(at::equal(composite.masked_select(known), example.truth.masked_select(known)));
    const auto hole_error = (composite.to(at::kDouble) - example.truth.to(at::kDouble)).abs();
    EXPECT_NEAR(report.per_bin[0][b].l1, hole_error.mean().item<double>(), 1e-7);
  }
}

}  // namespace
