// Tests of pconv::infer::Inpainter: hole regions, every strategy, sizes that are not multiples
// of the network's, compositing (known pixels bit-exact), grey and RGBA, the auto choice.
#include <pconv/error.h>
#include <pconv/infer/inpainter.h>
#include <pconv/io/model_file.h>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <torch/cuda.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

using pconv::infer::Box;
using pconv::infer::InferenceOptions;
using pconv::infer::Inpainter;
using pconv::infer::InpaintOptions;
using pconv::infer::NetworkLayout;
using pconv::infer::Strategy;

pconv::nn::PConvUNet small_model() {
  torch::manual_seed(5);
  return pconv::nn::PConvUNet(pconv::nn::PConvUNetOptions().depth(3).base_width(4).max_width(8));
}

at::Tensor holes_of(int64_t height, int64_t width, const std::vector<Box>& boxes) {
  auto holes = at::zeros({height, width}, at::kBool);
  for (const auto& b : boxes)
    holes.narrow(0, b.top, b.height()).narrow(1, b.left, b.width()).fill_(true);
  return holes;
}

TEST(HoleRegions, SplitsFarHolesAndJoinsNearOnes) {
  const auto holes = holes_of(100, 120, {{10, 10, 20, 20}, {70, 90, 80, 100}});
  const auto far = pconv::infer::hole_regions(holes, 5);
  ASSERT_EQ(far.size(), 2U);
  EXPECT_EQ(far[0].top, 5);
  EXPECT_EQ(far[0].left, 5);
  EXPECT_EQ(far[0].bottom, 25);
  EXPECT_EQ(far[0].right, 25);
  EXPECT_EQ(far[1].top, 65);
  EXPECT_EQ(far[1].right, 105);
  // A margin wider than half the gap puts both holes in one box, clipped to the image.
  const auto near = pconv::infer::hole_regions(holes, 40);
  ASSERT_EQ(near.size(), 1U);
  EXPECT_EQ(near[0].top, 0);
  EXPECT_EQ(near[0].left, 0);
  EXPECT_EQ(near[0].bottom, 100);
  EXPECT_EQ(near[0].right, 120);
  EXPECT_TRUE(pconv::infer::hole_regions(at::zeros({8, 8}, at::kBool), 3).empty());
}

TEST(HoleRegions, SeparatesHolesSideBySideInColumns) {
  const auto holes = holes_of(50, 200, {{20, 10, 30, 20}, {20, 150, 30, 160}});
  const auto boxes = pconv::infer::hole_regions(holes, 2);
  ASSERT_EQ(boxes.size(), 2U);
  EXPECT_EQ(boxes[0].left, 8);
  EXPECT_EQ(boxes[1].left, 148);
}

TEST(Inpainter, FullPadsOddSizesAndKeepsKnownPixelsBitExact) {
  Inpainter inpainter(small_model(), c10::kCPU);
  const auto image = at::rand({3, 37, 53});
  const auto holes = holes_of(37, 53, {{5, 7, 20, 30}});
  const auto result = inpainter.inpaint(image, holes, InpaintOptions().strategy(Strategy::kFull));
  EXPECT_EQ(result.strategy, Strategy::kFull);
  ASSERT_EQ(result.pixels.sizes(), image.sizes());
  const auto known = holes.logical_not().unsqueeze(0).expand_as(image);
  EXPECT_TRUE(at::equal(result.pixels.masked_select(known), image.masked_select(known)));
  EXPECT_FALSE(at::equal(result.pixels, image));
  EXPECT_GE(result.pixels.min().item<float>(), 0.0F);
  EXPECT_LE(result.pixels.max().item<float>(), 1.0F);
  const auto raw =
      inpainter.inpaint(image, holes, InpaintOptions().strategy(Strategy::kFull).composite(false));
  EXPECT_FALSE(at::equal(raw.pixels.masked_select(known), image.masked_select(known)));
  // Where the composite took the network's pixels, they are the raw output's.
  EXPECT_TRUE(at::equal(result.pixels.masked_select(known.logical_not()),
                        raw.pixels.masked_select(known.logical_not())));
}

// Scaled down, a one-pixel scratch stays (every pixel whose area it crosses is a hole); scaled
// up, each hole pixel covers the pixels under it.
TEST(ScaleHoles, KeepsThinScratchesAndCoversWhatAHoleCovers) {
  auto scratch = at::zeros({80, 80}, at::kBool);
  scratch[21].fill_(true);  // crosses row 5 of 20 (rows 20..23)
  const auto down = pconv::infer::scale_holes(scratch, 20, 20);
  ASSERT_EQ(down.sizes(), (std::vector<int64_t>{20, 20}));
  EXPECT_EQ(down.scalar_type(), at::kBool);
  EXPECT_TRUE(down[5].all().item<bool>());
  EXPECT_EQ(down.sum().item<int64_t>(), 20);
  auto dot = at::zeros({10, 10}, at::kByte);  // any non-zero value is a hole
  dot[3][4] = 255;
  const auto up = pconv::infer::scale_holes(dot, 20, 20);
  EXPECT_EQ(up.sum().item<int64_t>(), 4);
  EXPECT_TRUE(up.narrow(0, 6, 2).narrow(1, 8, 2).all().item<bool>());
}

// What a 5x5 square cannot cover (here a 1-pixel line) is widened by 2 pixels, with a disk; a
// hole that such a square covers (a 6x6 block) stays as it is, and growth 0 changes nothing.
TEST(WidenThinHoles, WidensOnlyWhatASquareCannotCover) {
  auto holes = at::zeros({24, 24}, at::kBool);
  holes.narrow(0, 1, 6).narrow(1, 1, 6).fill_(true);  // rows and columns 1..6
  holes[17].narrow(0, 4, 14).fill_(true);             // row 17, columns 4..17
  const auto widened = pconv::infer::widen_thin_holes(holes, 2);
  EXPECT_TRUE(widened.logical_or(holes).equal(widened));  // nothing taken away
  // The block: no pixel around it added.
  EXPECT_TRUE(widened.narrow(0, 0, 10).equal(holes.narrow(0, 0, 10)));
  // The line: rows 15..19 under its middle, not 14 or 20; and past its ends by 2.
  for (const int64_t row : {15, 16, 17, 18, 19}) EXPECT_TRUE(widened[row][10].item<bool>()) << row;
  EXPECT_FALSE(widened[14][10].item<bool>());
  EXPECT_FALSE(widened[20][10].item<bool>());
  EXPECT_TRUE(widened[17][2].item<bool>());
  EXPECT_FALSE(widened[17][1].item<bool>());
  EXPECT_FALSE(widened[15][2].item<bool>());  // the disk's corner
  EXPECT_TRUE(pconv::infer::widen_thin_holes(holes, 0).equal(holes));
}

// Every hole widened by a disk of the growth's radius; growth 0 changes nothing.
TEST(WidenHoles, WidensEveryHoleByADisk) {
  auto holes = at::zeros({12, 12}, at::kBool);
  holes[5][6] = true;
  const auto widened = pconv::infer::widen_holes(holes, 2);
  EXPECT_EQ(widened.sum().item<int64_t>(), 21);  // 5x5 less its 4 corners
  EXPECT_TRUE(widened.narrow(0, 3, 5).narrow(1, 5, 3).all().item<bool>());
  EXPECT_FALSE(widened[3][4].item<bool>());
  EXPECT_TRUE(pconv::infer::widen_holes(holes, 0).equal(holes));
  EXPECT_EQ(pconv::infer::widen_holes(holes, 1).sum().item<int64_t>(), 9);
}

// Where the widening would take every pixel (a tiny image), the network would see nothing and
// fill black: it sees the holes widened less (here, as they are: growth 1 covers 3x3 too).
TEST(Inpainter, AWideningThatCoversTheImageIsLeftOut) {
  const auto model = pconv::io::load_model(PCONV_DEFAULT_MODEL);
  const auto image = at::full({3, 3, 3}, 0.6);
  auto holes = at::zeros({3, 3}, at::kBool);
  holes[1][1] = true;
  ASSERT_TRUE(pconv::infer::widen_thin_holes(holes, 2).all().item<bool>());
  const auto fill = [&](int64_t growth) {
    const Inpainter inpainter(model, c10::kCPU, InferenceOptions().thin_hole_growth(growth));
    return inpainter.inpaint(image, holes, InpaintOptions().strategy(Strategy::kFull)).pixels;
  };
  const auto widened = fill(2);
  EXPECT_TRUE(at::allclose(widened, fill(0)));
  // Near the grey around it (0.49: a 1-pixel hole seen as it is comes out darker, which is
  // what the widening is for), not the black the network makes of nothing.
  EXPECT_LT((widened.select(1, 1).select(1, 1) - 0.6).abs().max().item<double>(), 0.2) << widened;
}

// The default model never saw holes under 5 pixels wide in training: a 1-pixel scratch came
// out nearly black. Seen widened, it is filled with the colours around it.
TEST(Inpainter, ThinScratchesAreNotFilledDark) {
  const auto model = pconv::io::load_model(PCONV_DEFAULT_MODEL);
  // A smooth picture of mid-grey colours.
  const auto ramp = at::linspace(0.3, 0.7, 96);
  const auto image = at::stack({ramp.view({1, -1}).expand({96, 96}),
                                ramp.view({-1, 1}).expand({96, 96}), at::full({96, 96}, 0.5)});
  auto holes = at::zeros({96, 96}, at::kBool);
  for (int64_t i = 10; i < 86; ++i) holes[i][i] = true;  // a diagonal, one pixel wide
  const auto error = [&](int64_t growth) {
    const Inpainter inpainter(model, c10::kCPU, InferenceOptions().thin_hole_growth(growth));
    const auto filled = inpainter.inpaint(image, holes, InpaintOptions()).pixels;
    return (filled - image)
        .masked_select(holes.unsqueeze(0).expand({3, -1, -1}))
        .mean()
        .item<double>();
  };
  const double plain = error(0);
  const double widened = error(2);
  EXPECT_LT(plain, -0.1) << "the dark fill the widening is for";
  EXPECT_LT(std::abs(widened), 0.05) << "as seen: " << plain;
}

TEST(Inpainter, FullIsTheNetworkOnThePaddedImage) {
  auto model = small_model();
  Inpainter inpainter(model, c10::kCPU, InferenceOptions().layout(NetworkLayout::kNchw));
  model->eval();  // as the inpainter's copy
  const int64_t multiple = model->size_multiple();
  // A size the network takes as it is, and an odd one that is padded (with missing data).
  for (const auto& [height, width] : {std::pair<int64_t, int64_t>{16, 24}, {19, 27}}) {
    SCOPED_TRACE(std::to_string(height) + "x" + std::to_string(width));
    const auto image = at::rand({3, height, width});
    const auto holes = holes_of(height, width, {{2, 3, 9, 12}});
    const auto result = inpainter.inpaint(image, holes, InpaintOptions().composite(false));
    c10::InferenceMode guard;
    const std::vector<int64_t> pad{0, (multiple - width % multiple) % multiple, 0,
                                   (multiple - height % multiple) % multiple};
    const auto valid =
        at::constant_pad_nd(holes.logical_not().to(at::kFloat).unsqueeze(0).unsqueeze(0), pad, 0);
    const auto padded = at::constant_pad_nd(image.unsqueeze(0), pad, 0);
    const auto expected = std::get<0>(model->forward(padded * valid, valid))
                              .narrow(2, 0, height)
                              .narrow(3, 0, width)
                              .clamp(0, 1);
    EXPECT_TRUE(at::allclose(result.pixels, expected.squeeze(0), 1e-6, 1e-6));
  }
}

TEST(Inpainter, CropWithWholeImageContextEqualsFull) {
  Inpainter inpainter(small_model(), c10::kCPU);
  const auto image = at::rand({3, 40, 48});
  const auto holes = holes_of(40, 48, {{10, 10, 16, 20}});
  const auto full = inpainter.inpaint(image, holes, InpaintOptions().strategy(Strategy::kFull));
  const auto crop =
      inpainter.inpaint(image, holes, InpaintOptions().strategy(Strategy::kCrop).crop_margin(100));
  EXPECT_EQ(crop.strategy, Strategy::kCrop);
  EXPECT_EQ(crop.passes, 1);
  EXPECT_TRUE(at::allclose(crop.pixels, full.pixels, 1e-6, 1e-6));
}

TEST(Inpainter, CropFillsEachRegionAndLeavesTheRestAlone) {
  Inpainter inpainter(small_model(), c10::kCPU);
  const auto image = at::rand({3, 120, 200});
  const auto holes = holes_of(120, 200, {{10, 10, 20, 25}, {90, 160, 110, 190}});
  const auto crop =
      inpainter.inpaint(image, holes, InpaintOptions().strategy(Strategy::kCrop).crop_margin(6));
  EXPECT_EQ(crop.passes, 2);
  const auto known = holes.logical_not().unsqueeze(0).expand_as(image);
  EXPECT_TRUE(at::equal(crop.pixels.masked_select(known), image.masked_select(known)));
  // Each region is filled, by a pass of its own: as it is when it is the only hole.
  for (const Box box : {Box{10, 10, 20, 25}, Box{90, 160, 110, 190}}) {
    const auto region = holes_of(120, 200, {box});
    const auto alone =
        inpainter.inpaint(image, region, InpaintOptions().strategy(Strategy::kCrop).crop_margin(6));
    const auto inside = region.unsqueeze(0).expand_as(image);
    EXPECT_FALSE(at::equal(crop.pixels.masked_select(inside), image.masked_select(inside)));
    EXPECT_TRUE(at::allclose(crop.pixels.masked_select(inside), alone.pixels.masked_select(inside),
                             1e-6, 1e-6));
  }
}

TEST(Inpainter, ResizeAtFullSizeEqualsFullAndSmallerStillComposites) {
  Inpainter inpainter(small_model(), c10::kCPU);
  const auto image = at::rand({3, 96, 128});
  const auto holes = holes_of(96, 128, {{20, 20, 60, 80}});
  const auto full = inpainter.inpaint(image, holes, InpaintOptions().strategy(Strategy::kFull));
  const auto same = inpainter.inpaint(
      image, holes, InpaintOptions().strategy(Strategy::kResize).resize_side(128));
  EXPECT_TRUE(at::allclose(same.pixels, full.pixels, 1e-5, 1e-5));
  const auto small =
      inpainter.inpaint(image, holes, InpaintOptions().strategy(Strategy::kResize).resize_side(24));
  EXPECT_EQ(small.strategy, Strategy::kResize);
  EXPECT_FALSE(at::allclose(small.pixels, full.pixels, 1e-3, 1e-3));  // scaled (to 64x85)
  ASSERT_EQ(small.pixels.sizes(), image.sizes());
  const auto known = holes.logical_not().unsqueeze(0).expand_as(image);
  EXPECT_TRUE(at::equal(small.pixels.masked_select(known), image.masked_select(known)));
  // A picture whose shorter side is 64 pixels or less is not scaled at all: a 40x640 one was
  // scaled to 4x64 and filled from almost nothing.
  const auto wide = at::rand({3, 40, 640});
  const auto wide_holes = holes_of(40, 640, {{10, 100, 30, 140}});
  const auto wide_full =
      inpainter.inpaint(wide, wide_holes, InpaintOptions().strategy(Strategy::kFull)).pixels;
  const auto as_asked = InpaintOptions().strategy(Strategy::kResize).resize_side(64);
  EXPECT_TRUE(
      at::allclose(inpainter.inpaint(wide, wide_holes, as_asked).pixels, wide_full, 1e-5, 1e-5));
  // Unless that pass would not fit the memory budget: then scaled as asked.
  const auto tight = InpaintOptions(as_asked).memory_budget(inpainter.estimate_bytes(16, 64));
  EXPECT_FALSE(
      at::allclose(inpainter.inpaint(wide, wide_holes, tight).pixels, wide_full, 1e-3, 1e-3));
}

// Scaled down, what lies under a hole (the object to take away) does not reach the known
// pixels of the small picture through the filter: the fill is the same whatever is there. Holes
// finer than the scaling (every other column) do not cover the small picture and come out
// black: the side grows until the network sees something.
TEST(Inpainter, ResizeSeesOnlyTheKnownPixels) {
  const Inpainter inpainter(pconv::io::load_model(PCONV_DEFAULT_MODEL), c10::kCPU);
  const auto ramp = at::linspace(0.2, 0.8, 120);
  const auto background =
      at::stack({ramp.view({1, -1}).expand({120, 120}), ramp.view({-1, 1}).expand({120, 120}),
                 at::full({120, 120}, 0.4)});
  const auto holes = holes_of(120, 120, {{45, 45, 75, 75}});
  auto object = background.clone();
  object.narrow(1, 45, 30).narrow(2, 45, 30).select(0, 0).fill_(1.0);  // red under the hole
  object.narrow(1, 45, 30).narrow(2, 45, 30).narrow(0, 1, 2).fill_(0.0);
  const auto options = InpaintOptions().strategy(Strategy::kResize).resize_side(64);
  const auto plain = inpainter.inpaint(background, holes, options).pixels;
  const auto removed = inpainter.inpaint(object, holes, options).pixels;
  EXPECT_LT((plain - removed).abs().max().item<double>(), 1e-5);

  auto mesh = at::zeros({120, 120}, at::kBool);
  mesh.slice(1, 0, 120, 2).fill_(true);  // every other column
  const auto flat = at::full({3, 120, 120}, 0.5);
  const auto filled = inpainter.inpaint(flat, mesh, options).pixels;
  const auto hole_values = filled.masked_select(mesh.unsqueeze(0).expand({3, -1, -1}));
  // Black is 0.5 off; the model fills a mesh of 1-pixel holes with no room to widen them dark
  // (0.24 off, as the full strategy does), which the thin-hole widening cannot help here.
  EXPECT_LT((hole_values - 0.5).abs().mean().item<double>(), 0.35) << "black";
}

TEST(Inpainter, AutoChoosesByMemoryAndHoleLayout) {
  Inpainter inpainter(small_model(), c10::kCPU);
  const auto image = at::rand({3, 64, 256});
  const auto local = holes_of(64, 256, {{20, 20, 28, 30}});
  EXPECT_EQ(inpainter.inpaint(image, local).strategy, Strategy::kFull);
  // A budget of a 16x16 pass: the whole image is too big, a box around one hole is not.
  const int64_t budget = inpainter.estimate_bytes(32, 32);
  EXPECT_EQ(inpainter.inpaint(image, local, InpaintOptions().memory_budget(budget).crop_margin(4))
                .strategy,
            Strategy::kCrop);
  const auto spread = holes_of(64, 256, {{0, 0, 64, 8}, {0, 40, 64, 256}});
  EXPECT_EQ(inpainter.inpaint(image, spread, InpaintOptions().memory_budget(budget)).strategy,
            Strategy::kResize);
  EXPECT_GT(inpainter.estimate_bytes(1000, 1000), 4 * inpainter.estimate_bytes(400, 400));
}

TEST(Inpainter, GreyStaysGreyAndAlphaPassesThrough) {
  Inpainter inpainter(small_model(), c10::kCPU);
  const auto holes = holes_of(16, 16, {{4, 4, 9, 9}});
  const auto grey = at::rand({1, 16, 16});
  const auto grey_out = inpainter.inpaint(grey, holes);
  EXPECT_EQ(grey_out.pixels.sizes(), grey.sizes());
  const auto rgba = at::rand({4, 16, 16});
  const auto rgba_out = inpainter.inpaint(rgba, holes);
  ASSERT_EQ(rgba_out.pixels.sizes(), rgba.sizes());
  EXPECT_TRUE(at::equal(rgba_out.pixels[3], rgba[3]));
  // Colour channels that are all equal (a grey PNG with alpha, as OpenCV reads it) are a grey
  // picture: the fill is grey too. A colour picture's fill is not.
  const auto grey_rgba = at::cat({grey.expand({3, -1, -1}), at::rand({1, 16, 16})}, 0);
  const auto grey_rgba_out = inpainter.inpaint(grey_rgba, holes).pixels;
  EXPECT_TRUE(at::equal(grey_rgba_out[0], grey_rgba_out[1]));
  EXPECT_TRUE(at::equal(grey_rgba_out[1], grey_rgba_out[2]));
  EXPECT_TRUE(at::equal(grey_rgba_out[3], grey_rgba[3]));
  EXPECT_FALSE(at::equal(rgba_out.pixels[0], rgba_out.pixels[1]));
  // Grey where the pixels are known, whatever colour lies under the hole.
  auto marked = grey.expand({3, -1, -1}).clone();
  marked.narrow(1, 4, 5).narrow(2, 4, 5)[0].fill_(1.0);
  const auto marked_out = inpainter.inpaint(marked, holes).pixels;
  EXPECT_TRUE(at::equal(marked_out[0], marked_out[1]));
  EXPECT_TRUE(at::equal(marked_out[1], marked_out[2]));
}

// The inpainter works on a copy: the caller's model keeps its mode, element type and layout, and
// a second inpainter of another type made from it leaves the first working.
TEST(Inpainter, LeavesTheCallersModelAsItIs) {
  auto model = small_model();
  model->train();
  const auto before = model->parameters()[0].detach().clone();
  const Inpainter first(model, c10::kCPU);  // channels-last on a CPU
  EXPECT_TRUE(model->is_training());
  EXPECT_EQ(model->parameters()[0].scalar_type(), at::kFloat);
  EXPECT_TRUE(model->parameters()[0].is_contiguous());
  EXPECT_TRUE(at::equal(model->parameters()[0], before));
  const auto image = at::rand({3, 16, 16});
  const auto holes = holes_of(16, 16, {{2, 3, 9, 12}});
  const auto expected = first.inpaint(image, holes).pixels;
  const Inpainter second(model, c10::kCPU,
                         InferenceOptions().dtype(at::kBFloat16).layout(NetworkLayout::kNchw));
  EXPECT_TRUE(at::equal(first.inpaint(image, holes).pixels, expected));
  EXPECT_EQ(second.inpaint(image, holes).pixels.sizes(), image.sizes());
}

// One inpainter serves several threads at once: each gets what it would get alone (the layers'
// mask caches are shared and guarded).
TEST(Inpainter, OneInpainterServesSeveralThreads) {
  const Inpainter inpainter(small_model(), c10::kCPU);
  constexpr int kThreads = 4;
  std::vector<at::Tensor> images;
  std::vector<at::Tensor> holes;
  std::vector<at::Tensor> alone;
  for (int i = 0; i < kThreads; ++i) {
    images.push_back(at::rand({3, 16 + 8 * (i % 2), 24}));
    holes.push_back(holes_of(images.back().size(1), 24, {{i, 2 * i, 8 + i, 12 + i}}));
    alone.push_back(inpainter.inpaint(images.back(), holes.back()).pixels);
  }
  std::vector<int> mismatches(kThreads, 0);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      for (int round = 0; round < 20; ++round) {
        if (!at::equal(inpainter.inpaint(images[i], holes[i]).pixels, alone[i])) ++mismatches[i];
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (int i = 0; i < kThreads; ++i) EXPECT_EQ(mismatches[i], 0) << "thread " << i;
}

// An image without a hole comes back as it is, in float32 on the CPU, without a network pass;
// the raw output (composite off) still takes one.
TEST(Inpainter, NoHoleMeansNoPass) {
  const Inpainter inpainter(small_model(), c10::kCPU);
  const auto image = at::rand({4, 12, 20}, at::kDouble);
  const auto none = inpainter.inpaint(image, at::zeros({12, 20}, at::kBool));
  EXPECT_EQ(none.passes, 0);
  EXPECT_EQ(none.pixels.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::equal(none.pixels, image.to(at::kFloat)));
  const auto raw = inpainter.inpaint(image, at::zeros({12, 20}), InpaintOptions().composite(false));
  EXPECT_EQ(raw.passes, 1);
  EXPECT_FALSE(at::equal(raw.pixels, image.to(at::kFloat)));
}

// What the constructor and the options cannot use is a pconv::ArgumentError saying so.
TEST(Inpainter, RejectsDevicesAndOptionsItCannotUse) {
  const auto message = [](const std::function<void()>& call) {
    try {
      call();
    } catch (const pconv::ArgumentError& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  };
  // One past the last GPU (cuda:0 where there is none).
  const auto gpus = static_cast<c10::DeviceIndex>(torch::cuda::device_count());
  EXPECT_THAT(message([&] { Inpainter(small_model(), c10::Device(c10::kCUDA, gpus)); }),
              ::testing::HasSubstr(gpus == 0 ? std::string("no CUDA GPU is usable here")
                                             : "but this machine has " + std::to_string(gpus) +
                                                   " CUDA GPU"));
  EXPECT_THAT(message([] { Inpainter(pconv::nn::PConvUNet(nullptr), c10::kCPU); }),
              ::testing::HasSubstr("no model"));
  EXPECT_THAT(
      message([] { Inpainter(small_model(), c10::kCPU, InferenceOptions().thin_hole_growth(-1)); }),
      ::testing::HasSubstr("thin_hole_growth must not be negative"));
  const Inpainter inpainter(small_model(), c10::kCPU);
  const auto image = at::rand({3, 16, 16});
  const auto holes = holes_of(16, 16, {{2, 3, 9, 12}});
  EXPECT_THAT(message([&] { inpainter.inpaint(image, holes, InpaintOptions().crop_margin(-5)); }),
              ::testing::HasSubstr("crop_margin must not be negative; got -5"));
  EXPECT_THAT(message([&] {
                inpainter.inpaint(image, holes,
                                  InpaintOptions().strategy(Strategy::kResize).resize_side(0));
              }),
              ::testing::HasSubstr("resize_side must be at least 1; got 0"));
  EXPECT_THAT(message([&] { inpainter.inpaint(image, holes, InpaintOptions().memory_budget(0)); }),
              ::testing::HasSubstr("memory_budget must be at least 1 byte"));
  EXPECT_THAT(message([] {
                pconv::infer::hole_regions(at::zeros({2, 3, 4}), 1);
              }),
              ::testing::HasSubstr("the hole map must be (H, W)"));
  EXPECT_THAT(message([&] { pconv::infer::widen_thin_holes(holes, -1); }),
              ::testing::HasSubstr("the growth must not be negative; got -1"));
  EXPECT_THAT(message([&] { pconv::infer::widen_holes(holes, -2); }),
              ::testing::HasSubstr("the growth must not be negative; got -2"));
  EXPECT_THAT(message([&] { inpainter.estimate_bytes(-5, 10); }),
              ::testing::HasSubstr("a size must not be negative; got -5x10"));
}

TEST(Inpainter, RejectsBadShapesAndHalfOnTheCpu) {
  Inpainter inpainter(small_model(), c10::kCPU);
  EXPECT_THROW(inpainter.inpaint(at::rand({2, 8, 8}), at::zeros({8, 8})), pconv::ArgumentError);
  EXPECT_THROW(inpainter.inpaint(at::rand({3, 8, 8}), at::zeros({8, 9})), pconv::ArgumentError);
  // Each refusal says what is wrong: never a LibTorch error or a silently wrong fill.
  const auto message = [&](const at::Tensor& image, const at::Tensor& holes) {
    try {
      inpainter.inpaint(image, holes);
    } catch (const pconv::ArgumentError& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  };
  const auto some_holes = at::zeros({8, 8}).index_put_({0, 0}, 1);
  const auto has = [](const std::string& text, const std::string& part) {
    return text.find(part) != std::string::npos;
  };
  EXPECT_TRUE(has(message(at::rand({1, 3, 8, 8}), some_holes), "(C, H, W) with C = 1, 3 or 4"));
  EXPECT_TRUE(has(message(at::rand({3, 0, 0}), at::zeros({0, 0})), "empty"));
  EXPECT_TRUE(has(message(at::randint(0, 256, {3, 8, 8}, at::kByte), some_holes),
                  "floating point in [0, 1]; got Byte"));
  EXPECT_TRUE(has(message(at::rand({3, 8, 8}) * 255, some_holes), "must lie in [0, 1]"));
  EXPECT_TRUE(has(message(at::full({3, 8, 8}, NAN), some_holes), "holds NaN values"));
  EXPECT_TRUE(has(message(at::rand({3, 8, 8}).index_put_({1, 2, 3}, NAN), some_holes), "NaN"));
  // A hole map of other values than 0 and 1 (a grey mask's levels, an antialiased edge, -1).
  for (const auto& odd :
       {at::full({8, 8}, 0.4), at::full({8, 8}, -1, at::kLong), at::full({8, 8}, 255, at::kByte)}) {
    EXPECT_TRUE(has(message(at::rand({3, 8, 8}), odd), "must be bool, or hold 0 and 1 alone"))
        << odd.scalar_type();
  }
  EXPECT_EQ(message(at::rand({3, 8, 8}), some_holes.to(at::kInt)), "no error");
  EXPECT_EQ(message(at::rand({3, 8, 8}), some_holes.to(at::kBool)), "no error");
  EXPECT_TRUE(has(message(at::rand({3, 8, 8}), at::ones({8, 8})), "every pixel is a hole"));
  EXPECT_EQ(message(at::rand({3, 8, 8}, at::kDouble), some_holes), "no error");
  EXPECT_THROW(Inpainter(small_model(), c10::kCPU, InferenceOptions().dtype(at::kHalf)),
               pconv::ArgumentError);
  EXPECT_THROW(Inpainter(small_model(), c10::kCPU, InferenceOptions().dtype(at::kLong)),
               pconv::ArgumentError);
  EXPECT_EQ(pconv::infer::parse_precision("bf16"), at::kBFloat16);
  EXPECT_EQ(pconv::infer::parse_precision("float16"), at::kHalf);
  EXPECT_THROW(pconv::infer::parse_precision("fp8"), pconv::ArgumentError);
  for (const char* name : {"fp32", "fp16", "bf16"}) {
    EXPECT_EQ(pconv::infer::precision_name(pconv::infer::parse_precision(name)), name);
  }
  EXPECT_EQ(pconv::infer::parse_strategy("crop"), Strategy::kCrop);
  EXPECT_THROW(pconv::infer::parse_strategy("tile"), pconv::ArgumentError);
}

// The largest absolute difference between two results' pixels.
double max_difference(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kCPU, at::kDouble) - b.to(at::kCPU, at::kDouble)).abs().max().item<double>();
}

TEST(Inpainter, ChannelsLastEqualsContiguous) {
  const Inpainter plain(small_model(), c10::kCPU, InferenceOptions().layout(NetworkLayout::kNchw));
  const Inpainter nhwc(small_model(), c10::kCPU,
                       InferenceOptions().layout(NetworkLayout::kChannelsLast));
  ASSERT_FALSE(plain.channels_last());
  ASSERT_TRUE(nhwc.channels_last());
  // Left to the Inpainter, a CPU runs channels-last (faster there), in every precision.
  for (const auto dtype : {at::kFloat, at::kBFloat16}) {
    const Inpainter automatic(small_model(), c10::kCPU, InferenceOptions().dtype(dtype));
    EXPECT_EQ(automatic.options().layout(), NetworkLayout::kChannelsLast) << dtype;
    EXPECT_TRUE(automatic.model().parameters()[0].is_contiguous(at::MemoryFormat::ChannelsLast))
        << dtype;
  }
  torch::manual_seed(2);
  const auto image = at::rand({3, 37, 45});
  const auto holes = holes_of(37, 45, {{5, 7, 20, 30}});
  const auto options = InpaintOptions().strategy(Strategy::kFull).composite(false);
  EXPECT_LT(max_difference(nhwc.inpaint(image, holes, options).pixels,
                           plain.inpaint(image, holes, options).pixels),
            1e-5);
}

TEST(Inpainter, Bfloat16IsCloseToFloat32AndKeepsKnownPixels) {
  const Inpainter fp32(small_model(), c10::kCPU);
  const Inpainter bf16(small_model(), c10::kCPU, InferenceOptions().dtype(at::kBFloat16));
  torch::manual_seed(3);
  const auto image = at::rand({3, 40, 48});
  const auto holes = holes_of(40, 48, {{6, 8, 24, 30}});
  const auto options = InpaintOptions().strategy(Strategy::kFull);
  const auto result = bf16.inpaint(image, holes, options).pixels;
  ASSERT_EQ(result.scalar_type(), at::kFloat);
  EXPECT_TRUE(bf16.channels_last()) << "bf16 on a CPU runs channels-last";
  // bfloat16 keeps 8 bits of mantissa: a few parts in a thousand per layer. Compared in 8-bit
  // levels on the network's output without the composite (which copies the known pixels), where
  // float32's output is not clamped to 0 or 1 (clamping would hide differences).
  const auto raw_options = InpaintOptions().strategy(Strategy::kFull).composite(false);
  const auto raw_fp32 = fp32.inpaint(image, holes, raw_options).pixels;
  const auto raw_bf16 = bf16.inpaint(image, holes, raw_options).pixels;
  const auto unclamped = (raw_fp32 > 0) & (raw_fp32 < 1);
  ASSERT_GT(unclamped.to(at::kDouble).mean().item<double>(), 0.25);  // measured: 0.38
  const auto levels = ((raw_bf16 - raw_fp32).abs() * 255).masked_select(unclamped);
  // Measured: max 0.68, mean 0.11 levels.
  EXPECT_LT(levels.max().item<double>(), 2.0);
  EXPECT_LT(levels.mean().item<double>(), 0.3);
  const auto known = holes.logical_not().expand({3, 40, 48});
  EXPECT_TRUE(at::equal(result.masked_select(known), image.masked_select(known)));
  // Half the bytes per value in the memory estimate.
  EXPECT_EQ(bf16.estimate_bytes(512, 512) * 2, fp32.estimate_bytes(512, 512));
  // Channels-last on a CPU (measured: at most 0.64 of the NCHW-calibrated figure) counts 0.7.
  const Inpainter nchw(small_model(), c10::kCPU, InferenceOptions().layout(NetworkLayout::kNchw));
  EXPECT_NEAR(static_cast<double>(fp32.estimate_bytes(512, 512)),
              0.7 * static_cast<double>(nchw.estimate_bytes(512, 512)), 8.0);
}

// CUDA: the same results as the CPU, in every precision and layout. Skipped without a GPU.
TEST(Inpainter, CudaEqualsCpu_CUDA) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU";
  at::globalContext().setAllowTF32CuDNN(false);
  const Inpainter cpu(small_model(), c10::kCPU);
  torch::manual_seed(4);
  const auto image = at::rand({3, 61, 75});
  const auto holes = holes_of(61, 75, {{5, 7, 30, 40}, {40, 50, 55, 70}});
  const auto options = InpaintOptions().strategy(Strategy::kFull).composite(false);
  const auto expected = cpu.inpaint(image, holes, options).pixels;
  EXPECT_FALSE(Inpainter(small_model(), c10::Device(c10::kCUDA)).channels_last())
      << "NCHW on a GPU unless asked";
  for (const auto dtype : {at::kFloat, at::kHalf, at::kBFloat16}) {
    for (const bool channels_last : {false, true}) {
      SCOPED_TRACE(std::string(c10::toString(dtype)) + (channels_last ? " channels-last" : ""));
      const Inpainter gpu(small_model(), c10::Device(c10::kCUDA),
                          InferenceOptions().dtype(dtype).layout(
                              channels_last ? NetworkLayout::kChannelsLast : NetworkLayout::kNchw));
      const double tolerance = dtype == at::kFloat ? 1e-4 : dtype == at::kHalf ? 1e-2 : 5e-2;
      EXPECT_LT(max_difference(gpu.inpaint(image, holes, options).pixels, expected), tolerance);
    }
  }
}

}  // namespace
