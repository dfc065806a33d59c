// Tests of pconv::data::MaskGenerator: hole ratios land in the asked bin, masks are
// reproducible for a seed and index, and the tensor form follows the network's convention.
#include <pconv/data/mask_generator.h>
#include <pconv/error.h>

#include <ATen/ATen.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

namespace {

using pconv::data::MaskGenerator;
using pconv::data::MaskGeneratorOptions;

// The paper's evaluation bins.
const std::vector<std::pair<double, double>> kBins = {{0.01, 0.1}, {0.1, 0.2}, {0.2, 0.3},
                                                      {0.3, 0.4},  {0.4, 0.5}, {0.5, 0.6}};

TEST(MaskGeneratorTest, RatiosLandInTheAskedBin) {
  for (const auto& [low, high] : kBins) {
    for (const auto& [height, width] :
         std::vector<std::pair<int64_t, int64_t>>{{128, 128}, {96, 160}}) {
      SCOPED_TRACE(std::to_string(low) + "-" + std::to_string(high) + " " + std::to_string(width) +
                   "x" + std::to_string(height));
      const MaskGenerator generator(
          MaskGeneratorOptions(height, width).min_ratio(low).max_ratio(high), 7);
      for (uint64_t index = 0; index < 12; ++index) {
        const auto holes = generator.holes(index);
        ASSERT_EQ(holes.size(), static_cast<size_t>(height * width));
        const double ratio = MaskGenerator::hole_ratio(holes);
        EXPECT_GE(ratio, low) << "mask " << index;
        EXPECT_LE(ratio, high) << "mask " << index;
      }
    }
  }
}

// The share of a hole map's pixels that a 5x5 square inside the holes can cover (an opening):
// none of a hole at most 4 pixels wide, nearly all of a wide one.
double wide_share(const at::Tensor& hole_map) {
  const auto hole = hole_map.to(at::kFloat).unsqueeze(0).unsqueeze(0);
  const auto pool = [](const at::Tensor& t) { return at::max_pool2d(t, {5, 5}, {1, 1}, {2, 2}); };
  const auto opened = pool(1.0 - pool(1.0 - hole));
  return opened.sum().item<double>() / hole.sum().item<double>();
}

// Thin strokes (thin_probability) are 1 to 3 pixels wide whatever the mask's size, and keep the
// hole ratio in its range; the others are min_width..max_width of the side (5 pixels and more
// at 256).
TEST(MaskGeneratorTest, ThinStrokesAreOneToThreePixelsWide) {
  const auto options =
      MaskGeneratorOptions(256, 256).min_ratio(0.01).max_ratio(0.05).blob_probability(0.0);
  const MaskGenerator thin(MaskGeneratorOptions(options).thin_probability(1.0), 4);
  const MaskGenerator wide(options, 4);
  double thin_share = 0.0;
  double wide_share_sum = 0.0;
  for (uint64_t index = 0; index < 8; ++index) {
    const auto thin_map = thin.hole_map(index);
    const double ratio = thin_map.to(at::kDouble).mean().item<double>();
    EXPECT_GE(ratio, 0.01) << "mask " << index;
    EXPECT_LE(ratio, 0.05) << "mask " << index;
    thin_share += wide_share(thin_map) / 8;
    wide_share_sum += wide_share(wide.hole_map(index)) / 8;
  }
  // Where thin strokes cross or run side by side a 5x5 square may fit: a few percent at most.
  EXPECT_LT(thin_share, 0.05);
  EXPECT_GT(wide_share_sum, 0.5);
  // Some strokes thin: masks differ from the ones without (which the default, 0, draws).
  const MaskGenerator some(MaskGeneratorOptions(options).thin_probability(0.5), 4);
  int differ = 0;
  for (uint64_t index = 0; index < 8; ++index) {
    differ += at::equal(some.hole_map(index), wide.hole_map(index)) ? 0 : 1;
  }
  EXPECT_GT(differ, 0);
}

TEST(MaskGeneratorTest, ReproducibleForSeedAndIndex) {
  const auto options = MaskGeneratorOptions(64, 80).min_ratio(0.1).max_ratio(0.4);
  const MaskGenerator first(options, 3);
  const MaskGenerator again(options, 3);
  const MaskGenerator other_seed(options, 4);
  EXPECT_EQ(first.holes(5), again.holes(5));
  EXPECT_NE(first.holes(5), first.holes(6));
  EXPECT_NE(first.holes(5), other_seed.holes(5));
}

TEST(MaskGeneratorTest, TensorIsOneWhereValid) {
  const MaskGenerator generator(MaskGeneratorOptions(32, 48).min_ratio(0.2).max_ratio(0.3), 1);
  const auto holes = generator.holes(0);
  const auto mask = generator.mask(0);
  EXPECT_EQ(mask.sizes(), (at::IntArrayRef{1, 32, 48}));
  EXPECT_EQ(mask.scalar_type(), at::kFloat);
  const auto hole_bytes = at::from_blob(const_cast<uint8_t*>(holes.data()), {1, 32, 48}, at::kByte);
  EXPECT_TRUE(at::equal(mask, 1.0 - hole_bytes.to(at::kFloat)));
  EXPECT_NEAR(1.0 - mask.mean().item<double>(), MaskGenerator::hole_ratio(holes), 1e-6);
}

TEST(MaskGeneratorTest, HoleMapIsTheHolesAsATensor) {
  const MaskGenerator generator(MaskGeneratorOptions(24, 16), 3);
  const auto map = generator.hole_map(5);
  ASSERT_EQ(map.sizes(), (std::vector<int64_t>{24, 16}));
  EXPECT_EQ(map.scalar_type(), at::kBool);
  auto bytes = generator.holes(5);
  EXPECT_TRUE(at::equal(map, at::from_blob(bytes.data(), {24, 16}, at::kByte).ne(0)));
  EXPECT_TRUE(at::equal(map, generator.mask(5).squeeze(0).eq(0)));
}

TEST(MaskGeneratorTest, RejectsImpossibleOptions) {
  EXPECT_THROW(MaskGenerator(MaskGeneratorOptions(0, 10)), pconv::ArgumentError);
  EXPECT_THROW(MaskGenerator(MaskGeneratorOptions(10, 10).min_ratio(0.5).max_ratio(0.2)),
               pconv::ArgumentError);
  EXPECT_THROW(MaskGenerator(MaskGeneratorOptions(10, 10).min_width(0.0)), pconv::ArgumentError);
  // Valid options that no mask of the size fits: an input error naming the size and range.
  EXPECT_THAT([] { MaskGenerator(MaskGeneratorOptions(1, 1)).holes(0); },
              ::testing::ThrowsMessage<pconv::InputError>(
                  ::testing::HasSubstr("no 1x1 mask with a hole ratio in [0.01, 0.6]")));
}

}  // namespace
