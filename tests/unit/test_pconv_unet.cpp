// Tests of pconv::nn::PConvUNet: shapes for several depths and sizes, the mask pyramid against a
// composition of multi-channel PartialConv2d layers, the inference path (BatchNorm and
// activations in the layers' epilogues) against the training-time forward, encoder BatchNorm
// freezing, bad input.
#include <pconv/nn/functional/partial_conv2d.h>
#include <pconv/nn/pconv_unet.h>

#include "fused_kernels.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <torch/autograd.h>
#include <torch/cuda.h>
#include <torch/optim/adam.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace {

using pconv::nn::PConvUNet;
using pconv::nn::PConvUNetOptions;

class PConvUNetTest : public ::testing::Test {
 protected:
  void SetUp() override { torch::manual_seed(99); }
};

at::Tensor hole_mask(int64_t batch, int64_t size) {
  auto mask = at::ones({batch, 1, size, size});
  mask.narrow(2, size / 4, size / 2).narrow(3, size / 8, size / 2).zero_();
  return mask;
}

TEST_F(PConvUNetTest, OutputShapesForSeveralDepthsAndSizes) {
  for (const int64_t depth : {1, 3, 5, 7, 8}) {
    PConvUNet net(PConvUNetOptions().depth(depth).base_width(4).max_width(16));
    const int64_t multiple = int64_t{1} << depth;
    for (const auto& [height, width] : std::vector<std::pair<int64_t, int64_t>>{
             {multiple, multiple}, {2 * multiple, 3 * multiple}}) {
      SCOPED_TRACE("depth " + std::to_string(depth) + " " + std::to_string(height) + "x" +
                   std::to_string(width));
      const auto image = at::rand({2, 3, height, width});
      auto mask = at::ones({2, 1, height, width});
      mask.narrow(2, 0, height / 2).zero_();
      const auto [output, out_mask] = net(image, mask);
      EXPECT_EQ(output.sizes(), image.sizes());
      EXPECT_EQ(out_mask.sizes(), (at::IntArrayRef{2, 1, height, width}));
      EXPECT_TRUE(output.isfinite().all().item<bool>());
    }
  }
}

TEST_F(PConvUNetTest, LayerWidthsFollowThePaper) {
  PConvUNet net(PConvUNetOptions().depth(8));
  const std::vector<int64_t> encoder_out{64, 128, 256, 512, 512, 512, 512, 512};
  const std::vector<int64_t> encoder_kernel{7, 5, 5, 3, 3, 3, 3, 3};
  for (size_t i = 0; i < 8; ++i) {
    EXPECT_EQ(net->encoder[i]->options.out_channels(), encoder_out[i]);
    EXPECT_EQ((*net->encoder[i]->options.kernel_size())[0], encoder_kernel[i]);
  }
  // Decoder inputs: 512+512 (x4), 512+256, 256+128, 128+64, 64+3.
  const std::vector<int64_t> decoder_in{1024, 1024, 1024, 1024, 768, 384, 192, 67};
  const std::vector<int64_t> decoder_out{512, 512, 512, 512, 256, 128, 64, 3};
  for (size_t i = 0; i < 8; ++i) {
    EXPECT_EQ(net->decoder[i]->options.in_channels(), decoder_in[i]);
    EXPECT_EQ(net->decoder[i]->options.out_channels(), decoder_out[i]);
  }
  EXPECT_EQ(net->encoder_bn.size(), 7U);
  EXPECT_EQ(net->decoder_bn.size(), 7U);
}

// The network's count-based mask pyramid must equal what its PartialConv2d layers compute from
// full multi-channel masks (the concatenated masks of the paper).
TEST_F(PConvUNetTest, MaskPyramidEqualsMultiChannelLayers) {
  const int64_t depth = 3;
  PConvUNet net(PConvUNetOptions().depth(depth).base_width(4).max_width(8));
  net->eval();
  const auto image = at::rand({2, 3, 32, 32}, at::kDouble);
  const auto mask = (at::rand({2, 1, 32, 32}) > 0.6).to(at::kDouble);
  net->to(at::kDouble);
  const auto [output, out_mask] = net(image, mask);

  auto full = [](const at::Tensor& m, int64_t channels) {
    return m.expand({m.size(0), channels, m.size(2), m.size(3)});
  };
  std::vector<at::Tensor> features{image};
  std::vector<at::Tensor> masks{mask};
  for (int64_t level = 1; level <= depth; ++level) {
    auto [x, m] =
        net->encoder[level - 1](features.back(), full(masks.back(), features.back().size(1)));
    if (level >= 2) x = net->encoder_bn[level - 2](x);
    features.push_back(at::relu(x));
    masks.push_back(m.narrow(1, 0, 1));
  }
  at::Tensor x = features.back();
  at::Tensor m = masks.back();
  for (int64_t level = depth; level >= 1; --level) {
    const auto& skip = features[level - 1];
    const auto up = at::upsample_nearest2d(x, {skip.size(2), skip.size(3)});
    const auto up_mask = at::upsample_nearest2d(m, {skip.size(2), skip.size(3)});
    const auto input = at::cat({up, skip}, 1);
    const auto input_mask =
        at::cat({full(up_mask, up.size(1)), full(masks[level - 1], skip.size(1))}, 1);
    auto [y, new_mask] = net->decoder[depth - level](input, input_mask);
    if (level >= 2) y = at::leaky_relu(net->decoder_bn[depth - level](y), 0.2);
    x = y;
    m = new_mask.narrow(1, 0, 1);
  }
  EXPECT_TRUE(at::allclose(output, x, 1e-10, 1e-12)) << (output - x).abs().max();
  EXPECT_TRUE(at::equal(out_mask, m));
}

// BatchNorm statistics and affine vectors far from their initial 0 and 1.
void randomize_batch_norms(PConvUNet& net) {
  const at::NoGradGuard no_grad;
  for (auto* layers : {&net->encoder_bn, &net->decoder_bn}) {
    for (auto& bn : *layers) {
      bn->weight.copy_(at::randn_like(bn->weight));
      bn->bias.copy_(at::randn_like(bn->bias));
      bn->running_mean.copy_(at::randn_like(bn->running_mean));
      bn->running_var.copy_(at::rand_like(bn->running_var) + 0.5);
    }
  }
}

// Scattered holes, and one large enough to leave holes in the deeper levels too (where the
// epilogues zero them for the next layer).
at::Tensor holes_at_every_level(int64_t batch, int64_t size) {
  auto mask = (at::rand({batch, 1, size, size}) > 0.5).to(at::kFloat);
  mask.narrow(2, size / 8, size * 3 / 4).narrow(3, size / 8, size * 3 / 4).zero_();
  return mask;
}

// At inference (grad mode off) each layer's BatchNorm and activation run inside its epilogue,
// and the decoder's upsampling and concatenation are one pass (NCHW and channels-last, any
// batch; at 8x8 the deepest level is 1x1, where both layouts hold); the result must equal the
// forward with autograd on, which runs them as separate ATen ops.
TEST_F(PConvUNetTest, InferenceEpilogueEqualsTheTrainingTimeForward) {
  for (const auto dtype : {at::kFloat, at::kDouble}) {
    for (const bool fused : {true, false}) {
      for (const bool channels_last : {false, true}) {
        for (const auto& [batch, size] : {std::pair<int64_t, int64_t>{1, 32}, {2, 32}, {2, 8}}) {
          SCOPED_TRACE(::testing::Message() << dtype << (fused ? " fused" : " unfused")
                                            << (channels_last ? " channels-last" : " NCHW")
                                            << " batch " << batch << " size " << size);
          const pconv::testing::FusedKernels kernels(fused);
          PConvUNet net(PConvUNetOptions().depth(3).base_width(4).max_width(8));
          net->to(dtype);
          randomize_batch_norms(net);
          net->eval();
          if (channels_last) pconv::nn::to_channels_last(*net);
          const auto format =
              channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
          const auto image = at::randn({batch, 3, size, size}, dtype).contiguous(format);
          const auto mask = holes_at_every_level(batch, size).to(dtype);
          const auto [expected, expected_mask] = net(image, mask);
          ASSERT_TRUE(expected.requires_grad());  // the training-time path ran
          const double tolerance = dtype == at::kDouble ? 1e-10 : 1e-4;
          {
            const at::NoGradGuard no_grad;
            const auto [output, out_mask] = net(image, mask);
            EXPECT_TRUE(at::allclose(output, expected, tolerance, tolerance))
                << (output - expected).abs().max();
            EXPECT_TRUE(at::equal(out_mask, expected_mask));
          }
          {
            const c10::InferenceMode inference;
            const auto [output, out_mask] = net(image, mask);
            EXPECT_TRUE(at::allclose(output, expected, tolerance, tolerance))
                << (output - expected).abs().max();
            EXPECT_TRUE(at::equal(out_mask, expected_mask));
            // The fused paths ran: no ATen BatchNorm, activation, renormalisation or
            // concatenation; the reference path calls them (and both the convolutions).
            const auto names = pconv::testing::operators_called([&] { net(image, mask); });
            EXPECT_GT(names.count("aten::convolution"), 0U);
            for (const char* unfused : {"aten::batch_norm", "aten::relu", "aten::leaky_relu",
                                        "aten::addcmul_", "aten::cat"}) {
              EXPECT_EQ(names.count(unfused) == 0, fused) << unfused;
            }
          }
        }
      }
    }
  }
}

// The same on CUDA, in each precision and layout pconv inpaint runs in: the fused inference
// epilogue's kernels (the bias and BatchNorm vectors in the model's type, activations, hole
// zeroing) against the training-time forward on the plain ATen path.
TEST_F(PConvUNetTest, InferenceEpilogueEqualsTheTrainingTimeForward_CUDA) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU";
  // Else both sides would be the ATen path.
  ASSERT_TRUE(pconv::nn::functional::cuda_kernels_run_on(c10::Device(c10::kCUDA, 0)))
      << "this build has no fused kernels for this GPU";
  at::globalContext().setAllowTF32CuDNN(false);
  for (const auto dtype : {at::kFloat, at::kHalf, at::kBFloat16}) {
    for (const bool channels_last : {false, true}) {
      // One image in NCHW, two in channels-last.
      const int64_t batch = channels_last ? 2 : 1;
      SCOPED_TRACE(::testing::Message() << dtype << (channels_last ? " channels-last" : " NCHW"));
      PConvUNet net(PConvUNetOptions().depth(3).base_width(8).max_width(16));
      randomize_batch_norms(net);
      net->to(at::kCUDA, dtype);
      if (channels_last) pconv::nn::to_channels_last(*net);
      net->eval();
      const auto format =
          channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
      const auto image = at::randn({batch, 3, 64, 64}).to(at::kCUDA, dtype).contiguous(format);
      const auto mask = holes_at_every_level(batch, 64).to(at::kCUDA, dtype).contiguous(format);
      at::Tensor expected;
      at::Tensor expected_mask;
      {
        const pconv::testing::FusedKernels reference(false);
        std::tie(expected, expected_mask) = net(image, mask);
      }
      ASSERT_TRUE(expected.requires_grad());  // the training-time path ran
      const c10::InferenceMode inference;
      const auto [output, out_mask] = net(image, mask);
      const double tolerance = dtype == at::kFloat ? 1e-4 : (dtype == at::kHalf ? 2e-2 : 1e-1);
      const auto expected64 = expected.detach().to(at::kCPU, at::kDouble);
      const double scale = std::max(1.0, expected64.abs().max().item<double>());
      const double error =
          (output.to(at::kCPU, at::kDouble) - expected64).abs().max().item<double>();
      EXPECT_LE(error, tolerance * scale) << "at scale " << scale;
      EXPECT_TRUE(output.isfinite().all().item<bool>());
      EXPECT_TRUE(at::equal(out_mask.to(at::kCPU), expected_mask.to(at::kCPU)));
      // The fused epilogue ran (the profiler sees the ATen calls made for CUDA tensors too).
      const auto names = pconv::testing::operators_called([&] { net(image, mask); });
      EXPECT_GT(names.count("aten::convolution"), 0U);
      for (const char* unfused :
           {"aten::batch_norm", "aten::relu", "aten::leaky_relu", "aten::addcmul_", "aten::cat"}) {
        EXPECT_EQ(names.count(unfused), 0U) << unfused;
      }
    }
  }
}

TEST_F(PConvUNetTest, HolesFillAndGradientsFlow) {
  PConvUNet net(PConvUNetOptions().depth(4).base_width(8).max_width(32));
  const auto image = at::rand({2, 3, 64, 64});
  const auto mask = hole_mask(1, 64);  // one mask for the batch
  const auto [output, out_mask] = net(image, mask);
  EXPECT_EQ(out_mask.min().item<float>(), 1.0F);  // a 32x32 hole is gone after 4 levels
  (output * output).mean().backward();
  for (const auto& parameter : net->parameters()) {
    ASSERT_TRUE(parameter.grad().defined());
    EXPECT_TRUE(parameter.grad().isfinite().all().item<bool>());
  }
  EXPECT_GT(net->encoder[0]->weight.grad().abs().sum().item<double>(), 0.0);
}

TEST_F(PConvUNetTest, TrainingGradientsEqualTheReferencePath) {
  // In training each layer's convolution and epilogue are one autograd node where the fused
  // kernels apply; its output and every parameter's gradient must be the ATen path's. NCHW,
  // and channels-last (on the CPU the reference path then, the layout kept).
  const at::Tensor image = at::rand({2, 3, 32, 32}, at::kDouble);
  const at::Tensor mask = holes_at_every_level(2, 32).to(at::kDouble);
  for (const bool channels_last : {false, true}) {
    SCOPED_TRACE(channels_last ? "channels-last" : "NCHW");
    const auto run = [&](bool fused) {
      const pconv::testing::FusedKernels kernels(fused);
      torch::manual_seed(5);
      PConvUNet net(PConvUNetOptions().depth(3).base_width(4).max_width(8));
      net->to(at::kDouble);
      at::Tensor input = image;
      if (channels_last) {
        pconv::nn::to_channels_last(*net);
        input = image.contiguous(at::MemoryFormat::ChannelsLast);
      }
      const auto output = std::get<0>(net(input, mask));
      EXPECT_EQ(pconv::testing::graph_has(output.grad_fn(), "PartialConvolution"),
                fused && !channels_last);
      EXPECT_EQ(output.is_contiguous(at::MemoryFormat::ChannelsLast), channels_last);
      (output * output).mean().backward();
      std::vector<at::Tensor> results{output.detach()};
      for (const auto& parameter : net->parameters()) results.push_back(parameter.grad());
      return results;
    };
    const auto fused = run(true);
    const auto plain = run(false);
    ASSERT_EQ(fused.size(), plain.size());
    for (size_t i = 0; i < fused.size(); ++i) {
      SCOPED_TRACE(i);
      ASSERT_TRUE(fused[i].defined());
      EXPECT_TRUE(at::allclose(fused[i], plain[i], 1e-9, 1e-12))
          << (fused[i] - plain[i]).abs().max();
    }
  }
}

TEST_F(PConvUNetTest, FreezingEncoderBatchNormFreezesIt) {
  PConvUNet net(PConvUNetOptions().depth(3).base_width(4).max_width(8));
  net->train();
  const auto image = at::rand({4, 3, 32, 32});
  const auto mask = hole_mask(4, 32);
  // A step without freezing moves the statistics, so the frozen check below can fail.
  const auto stats_before = net->encoder_bn[0]->running_mean.clone();
  net(image, mask);
  ASSERT_FALSE(at::equal(stats_before, net->encoder_bn[0]->running_mean));

  net->set_freeze_encoder_bn(true);
  net->train();
  torch::optim::Adam optimizer(net->parameters(), torch::optim::AdamOptions(1e-2));
  std::vector<at::Tensor> encoder_state;
  for (const auto& bn : net->encoder_bn) {
    EXPECT_FALSE(bn->is_training());
    for (const auto& tensor : {bn->running_mean, bn->running_var, bn->weight, bn->bias}) {
      encoder_state.push_back(tensor.clone());
    }
  }
  const auto decoder_weight = net->decoder_bn[0]->weight.clone();
  for (int step = 0; step < 2; ++step) {
    optimizer.zero_grad();
    const auto [output, out_mask] = net(image, mask);
    ((output - image).abs().mean() + 0.1 * output.mean()).backward();
    optimizer.step();
  }
  size_t index = 0;
  for (const auto& bn : net->encoder_bn) {
    for (const auto& tensor : {bn->running_mean, bn->running_var, bn->weight, bn->bias}) {
      EXPECT_TRUE(at::equal(tensor, encoder_state[index++]));
    }
  }
  EXPECT_FALSE(at::equal(decoder_weight, net->decoder_bn[0]->weight));
  EXPECT_TRUE(net->decoder_bn[0]->is_training());

  net->set_freeze_encoder_bn(false);
  EXPECT_TRUE(net->encoder_bn[0]->is_training());
  EXPECT_TRUE(net->encoder_bn[0]->weight.requires_grad());
}

TEST_F(PConvUNetTest, BadInputNamesTheProblem) {
  PConvUNet net(PConvUNetOptions().depth(3).base_width(4).max_width(8));
  auto message = [&](const at::Tensor& image, const at::Tensor& mask) -> std::string {
    try {
      net(image, mask);
    } catch (const c10::Error& error) {
      return error.what_without_backtrace();
    }
    return "(no error)";
  };
  EXPECT_THAT(
      message(at::rand({1, 3, 30, 32}), at::ones({1, 1, 30, 32})),
      ::testing::AllOf(::testing::HasSubstr("multiples of 8"), ::testing::HasSubstr("30x32")));
  EXPECT_THAT(message(at::rand({1, 4, 32, 32}), at::ones({1, 1, 32, 32})),
              ::testing::HasSubstr("[1, 4, 32, 32]"));
  EXPECT_THAT(message(at::rand({1, 3, 32, 32}), at::ones({1, 3, 32, 32})),
              ::testing::HasSubstr("mask must be (1, 1, 32, 32); got [1, 3, 32, 32]"));
  EXPECT_THAT(message(at::rand({2, 3, 32, 32}), at::Tensor()),
              ::testing::HasSubstr("mask must be (2 or 1, 1, 32, 32); got none"));
  EXPECT_THROW(PConvUNet(PConvUNetOptions().base_width(64).max_width(32)), c10::Error);
}

}  // namespace
