// Tests of pconv::nn::PartialConv2d and its functional form against a naive double-precision
// reference, the invariances of the layer, its gradients, reduced precision and mask caching.
#include <pconv/nn/functional/partial_conv2d.h>
#include <pconv/nn/partial_conv2d.h>
#include <pconv/train/mixed_precision.h>

#include "fused_kernels.h"
#include "nn/functional/partial_conv2d_device.h"
#include "nn/functional/partial_conv2d_kernels.h"

#include <ATen/ATen.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/forward_grad.h>
#include <torch/cuda.h>
#include <torch/nn/modules/conv.h>
#include <torch/serialize.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace {

using pconv::nn::PartialConv2d;
using pconv::nn::PartialConv2dOptions;
using ::testing::HasSubstr;
namespace F = pconv::nn::functional;
namespace D = pconv::nn::functional::detail;

struct Geometry {
  int64_t batch = 1, mask_batch = 1, groups = 1, in_channels = 1, out_channels = 1;
  int64_t height = 8, width = 8;
  int64_t kernel_h = 3, kernel_w = 3, stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0;
  int64_t dilation_h = 1, dilation_w = 1;
  bool bias = true, multi_channel = false;

  int64_t out_h() const { return D::output_size(height, kernel_h, stride_h, pad_h, dilation_h); }
  int64_t out_w() const { return D::output_size(width, kernel_w, stride_w, pad_w, dilation_w); }

  PartialConv2dOptions options() const {
    return PartialConv2dOptions(in_channels, out_channels, {kernel_h, kernel_w})
        .stride({stride_h, stride_w})
        .padding({pad_h, pad_w})
        .dilation({dilation_h, dilation_w})
        .groups(groups)
        .bias(bias)
        .multi_channel(multi_channel);
  }
  std::string str() const {
    std::ostringstream out;
    out << "N=" << batch << " Nm=" << mask_batch << " G=" << groups << " Cin=" << in_channels
        << " Cout=" << out_channels << " HxW=" << height << "x" << width << " k=" << kernel_h << "x"
        << kernel_w << " s=" << stride_h << "x" << stride_w << " p=" << pad_h << "x" << pad_w
        << " d=" << dilation_h << "x" << dilation_w << " bias=" << bias
        << " multi=" << multi_channel;
    return out.str();
  }
};

// The definition, written out with explicit loops over every window, in double precision.
std::tuple<at::Tensor, at::Tensor> reference(const Geometry& g, const at::Tensor& input,
                                             const at::Tensor& mask, const at::Tensor& weight,
                                             const at::Tensor& bias) {
  const auto x = input.to(at::kDouble).contiguous();
  const auto m = mask.to(at::kDouble).contiguous();
  const auto w = weight.to(at::kDouble).contiguous();
  const auto xa = x.accessor<double, 4>();
  const auto ma = m.accessor<double, 4>();
  const auto wa = w.accessor<double, 4>();
  const int64_t group_in = g.in_channels / g.groups;
  const int64_t group_out = g.out_channels / g.groups;
  const double window =
      static_cast<double>((g.multi_channel ? group_in : 1) * g.kernel_h * g.kernel_w);
  const int64_t mask_channels = g.multi_channel ? g.out_channels : 1;
  auto out = at::zeros({g.batch, g.out_channels, g.out_h(), g.out_w()}, at::kDouble);
  auto new_mask = at::zeros({g.mask_batch, mask_channels, g.out_h(), g.out_w()}, at::kDouble);
  auto oa = out.accessor<double, 4>();
  auto na = new_mask.accessor<double, 4>();
  for (int64_t n = 0; n < g.batch; ++n) {
    const int64_t nm = g.mask_batch == 1 ? 0 : n;
    for (int64_t o = 0; o < g.out_channels; ++o) {
      const int64_t group = o / group_out;
      for (int64_t oy = 0; oy < g.out_h(); ++oy) {
        for (int64_t ox = 0; ox < g.out_w(); ++ox) {
          double acc = 0.0;
          double count = 0.0;
          for (int64_t ky = 0; ky < g.kernel_h; ++ky) {
            for (int64_t kx = 0; kx < g.kernel_w; ++kx) {
              const int64_t iy = oy * g.stride_h - g.pad_h + ky * g.dilation_h;
              const int64_t ix = ox * g.stride_w - g.pad_w + kx * g.dilation_w;
              if (iy < 0 || iy >= g.height || ix < 0 || ix >= g.width) continue;
              if (!g.multi_channel) count += ma[nm][0][iy][ix];
              for (int64_t c = 0; c < group_in; ++c) {
                const int64_t ic = group * group_in + c;
                const double mv = ma[nm][g.multi_channel ? ic : 0][iy][ix];
                if (g.multi_channel) count += mv;
                acc += wa[o][c][ky][kx] * xa[n][ic][iy][ix] * mv;
              }
            }
          }
          if (count > 0) {
            oa[n][o][oy][ox] =
                acc * window / count + (bias.defined() ? bias[o].item<double>() : 0.0);
          }
          if (g.multi_channel || o == 0)
            na[nm][g.multi_channel ? o : 0][oy][ox] = count > 0 ? 1.0 : 0.0;
        }
      }
    }
  }
  return {out, new_mask};
}

at::Tensor random_mask(const Geometry& g, double hole_probability,
                       at::ScalarType dtype = at::kFloat) {
  const int64_t channels = g.multi_channel ? g.in_channels : 1;
  return (at::rand({g.mask_batch, channels, g.height, g.width}) >= hole_probability).to(dtype);
}

// A random input, mask (60% holes) and upstream gradient for a layer of geometry `g`.
struct LayerInputs {
  at::Tensor input, mask, upstream;
};

LayerInputs random_inputs(const Geometry& g) {
  LayerInputs inputs;
  inputs.input = at::randn({g.batch, g.in_channels, g.height, g.width});
  inputs.mask = random_mask(g, 0.6);
  inputs.upstream = at::randn({g.batch, g.out_channels, g.out_h(), g.out_w()});
  return inputs;
}

// The autograd node the fused path ends in with a gradient to compute: the convolution and the
// epilogue as one node, after the prologue kernel (a multi-channel mask of the input's shape)
// or ATen's input x mask (other masks).
constexpr const char* kFusedNode = "PartialConvolution";

std::string error_message(const std::function<void()>& call) {
  try {
    call();
  } catch (const c10::Error& error) {
    return error.what_without_backtrace();
  }
  return "(no error)";
}

// A random layer geometry: odd sizes, strides, dilation, groups, both mask kinds, bias or not.
Geometry random_geometry(std::mt19937& rng, int64_t max_size = 40, int64_t max_group_channels = 8) {
  auto pick = [&](int64_t low, int64_t high) {
    return std::uniform_int_distribution<int64_t>(low, high)(rng);
  };
  Geometry g;
  do {
    g.batch = pick(1, 3);
    g.mask_batch = pick(0, 1) ? 1 : g.batch;
    g.groups = pick(1, 3);
    g.in_channels = g.groups * pick(1, max_group_channels);
    g.out_channels = g.groups * pick(1, max_group_channels);
    g.kernel_h = 2 * pick(0, 3) + 1;
    g.kernel_w = pick(0, 1) ? g.kernel_h : 2 * pick(0, 2) + 1;
    g.stride_h = pick(1, 2);
    g.stride_w = pick(1, 2);
    g.pad_h = g.kernel_h / 2;
    g.pad_w = g.kernel_w / 2;
    g.dilation_h = pick(1, 2);
    g.dilation_w = pick(1, 2);
    g.height = pick(5, max_size);
    g.width = pick(5, max_size);
    g.bias = pick(0, 3) != 0;
    g.multi_channel = pick(0, 1) == 1;
  } while (g.out_h() < 1 || g.out_w() < 1);
  return g;
}

using pconv::testing::FusedKernels;
using pconv::testing::graph_has;

// One forward and backward pass of `conv` with a given upstream gradient, and a forward
// without autograd (the layer then skips its autograd functions).
struct LayerRun {
  at::Tensor output, mask, grad_input, grad_weight, grad_bias, output_without_grad;
  std::string grad_fn;
};

LayerRun run_layer(PartialConv2d conv, const at::Tensor& input, const at::Tensor& mask,
                   const at::Tensor& upstream) {
  conv->zero_grad();
  const auto x = input.detach().requires_grad_(true);
  auto [output, new_mask] = conv(x, mask);
  LayerRun run;
  run.grad_fn = output.grad_fn() ? output.grad_fn()->name() : "";
  output.backward(upstream);
  run.output = output.detach();
  run.mask = new_mask;
  run.grad_input = x.grad();
  run.grad_weight = conv->weight.grad();
  if (conv->bias.defined()) run.grad_bias = conv->bias.grad();
  const at::NoGradGuard no_grad;
  run.output_without_grad = std::get<0>(conv(input, mask));
  return run;
}

// The same pass with the fused kernels, then on the plain ATen path.
std::pair<LayerRun, LayerRun> run_fused_and_plain(const PartialConv2d& conv,
                                                  const at::Tensor& input, const at::Tensor& mask,
                                                  const at::Tensor& upstream) {
  std::pair<LayerRun, LayerRun> runs;
  {
    const FusedKernels on(true);
    runs.first = run_layer(conv, input, mask, upstream);
  }
  {
    const FusedKernels off(false);
    runs.second = run_layer(conv, input, mask, upstream);
  }
  return runs;
}

// Compares each result of `actual` with `expected` within rtol/atol (relative to the largest
// value of the expected tensor, so that cancellation near zero does not count as an error).
void expect_close(const LayerRun& actual, const LayerRun& expected, double tolerance) {
  const auto close = [&](const at::Tensor& a, const at::Tensor& e, const char* what) {
    ASSERT_EQ(a.defined(), e.defined()) << what;
    if (!a.defined()) return;
    const auto a64 = a.to(at::kCPU, at::kDouble);
    const auto e64 = e.to(at::kCPU, at::kDouble);
    const double scale = std::max(1.0, e64.abs().max().item<double>());
    const double error = (a64 - e64).abs().max().item<double>();
    EXPECT_LE(error, tolerance * scale) << what << ": max error " << error << " at scale " << scale;
  };
  close(actual.output, expected.output, "output");
  EXPECT_TRUE(
      at::equal(actual.mask.to(at::kCPU, at::kFloat), expected.mask.to(at::kCPU, at::kFloat)))
      << "updated mask";
  close(actual.grad_input, expected.grad_input, "input gradient");
  close(actual.grad_weight, expected.grad_weight, "weight gradient");
  close(actual.grad_bias, expected.grad_bias, "bias gradient");
  close(actual.output_without_grad, expected.output, "output without autograd");
}

class PartialConv2dTest : public ::testing::Test {
 protected:
  void SetUp() override { torch::manual_seed(1234); }
};

TEST_F(PartialConv2dTest, MatchesNaiveReferenceOnRandomGeometries) {
  std::mt19937 rng(42);
  auto pick = [&](int64_t low, int64_t high) {
    return std::uniform_int_distribution<int64_t>(low, high)(rng);
  };
  for (int trial = 0; trial < 60; ++trial) {
    Geometry g;
    g.batch = pick(1, 3);
    g.mask_batch = pick(0, 1) ? 1 : g.batch;
    g.groups = pick(1, 3);
    g.in_channels = g.groups * pick(1, 3);
    g.out_channels = g.groups * pick(1, 3);
    g.kernel_h = pick(1, 4);
    g.kernel_w = pick(1, 4);
    g.stride_h = pick(1, 3);
    g.stride_w = pick(1, 3);
    g.pad_h = pick(0, 2);
    g.pad_w = pick(0, 2);
    g.dilation_h = pick(1, 2);
    g.dilation_w = pick(1, 2);
    g.height = pick(5, 11);
    g.width = pick(5, 11);
    g.bias = pick(0, 1) == 1;
    g.multi_channel = pick(0, 1) == 1;
    if (g.out_h() < 1 || g.out_w() < 1) continue;
    SCOPED_TRACE(g.str());

    PartialConv2d conv(g.options());
    conv->to(at::kDouble);
    const auto input = at::randn({g.batch, g.in_channels, g.height, g.width}, at::kDouble);
    // Dense holes so that some windows see none valid, and the rest see various counts.
    const auto mask = random_mask(g, trial % 3 == 0 ? 0.8 : 0.4, at::kDouble);
    const auto [out, new_mask] = conv(input, mask);
    const auto [expected, expected_mask] = reference(g, input, mask, conv->weight, conv->bias);

    ASSERT_EQ(out.sizes(), expected.sizes());
    ASSERT_EQ(new_mask.sizes(), expected_mask.sizes());
    EXPECT_TRUE(at::equal(new_mask.contiguous(), expected_mask));
    EXPECT_TRUE(at::allclose(out, expected, 1e-10, 1e-12)) << (out - expected).abs().max();

    // float32 end to end agrees too.
    PartialConv2d conv32(g.options());
    conv32->weight.data().copy_(conv->weight);
    if (g.bias) conv32->bias.data().copy_(conv->bias);
    const auto out32 = std::get<0>(conv32(input.to(at::kFloat), mask.to(at::kFloat)));
    EXPECT_TRUE(at::allclose(out32.to(at::kDouble), expected, 1e-4, 1e-4));
  }
}

TEST_F(PartialConv2dTest, FusedKernelsEqualTheReferencePath) {
  // The CPU kernels (prologue, window terms, epilogue; the layer as one autograd node) against
  // the plain ATen path, forward and backward; the autograd node shows which path ran.
  std::mt19937 rng(11);
  for (int trial = 0; trial < 25; ++trial) {
    const Geometry g = random_geometry(rng);
    SCOPED_TRACE(g.str());
    PartialConv2d conv(g.options());
    const auto [input, mask, upstream] = random_inputs(g);
    const auto [fused, plain] = run_fused_and_plain(conv, input, mask, upstream);
    EXPECT_NE(fused.grad_fn.find(kFusedNode), std::string::npos) << fused.grad_fn;
    EXPECT_EQ(plain.grad_fn.find("pconv"), std::string::npos) << plain.grad_fn;
    expect_close(fused, plain, 1e-5);
  }
}

TEST_F(PartialConv2dTest, BatchOneMaskBroadcastsOverTheBatch) {
  for (const bool multi : {false, true}) {
    Geometry g;
    g.batch = 3;
    g.in_channels = 4;
    g.out_channels = 5;
    g.pad_h = g.pad_w = 1;
    g.multi_channel = multi;
    PartialConv2d conv(g.options());
    const auto input = at::randn({3, 4, 8, 8});
    const auto mask = random_mask(g, 0.5);
    const auto [broadcast, broadcast_mask] = conv(input, mask);
    const auto [full, full_mask] = conv(input, mask.expand({3, -1, -1, -1}).contiguous());
    EXPECT_TRUE(at::allclose(broadcast, full));
    EXPECT_EQ(broadcast_mask.size(0), 1);
    EXPECT_TRUE(at::equal(broadcast_mask.expand_as(full_mask), full_mask));
  }
}

TEST_F(PartialConv2dTest, ChannelsLastAndContiguousInputsAgree) {
  // A channels-last input gives a strided output, which takes the ATen path instead of the
  // fused CPU epilogue: the two must agree, forward and backward.
  for (const bool multi : {false, true}) {
    PartialConv2d conv(PartialConv2dOptions(4, 6, 3).padding(1).groups(2).multi_channel(multi));
    const auto input = at::randn({2, 4, 9, 7});
    const auto mask = (at::rand({2, multi ? 4 : 1, 9, 7}) > 0.5).to(at::kFloat);
    auto run = [&](const at::Tensor& x) {
      conv->zero_grad();
      const auto leaf = x.detach().requires_grad_(true);
      const auto out = std::get<0>(conv(leaf, mask));
      (out * out).sum().backward();
      return std::make_tuple(out.contiguous(), leaf.grad().contiguous(), conv->bias.grad().clone());
    };
    ASSERT_FALSE(
        std::get<0>(conv(input.contiguous(at::MemoryFormat::ChannelsLast), mask)).is_contiguous());
    const auto [out, grad_x, grad_bias] = run(input);
    const auto [out_cl, grad_x_cl, grad_bias_cl] =
        run(input.contiguous(at::MemoryFormat::ChannelsLast));
    EXPECT_TRUE(at::allclose(out, out_cl, 1e-5, 1e-6));
    EXPECT_TRUE(at::allclose(grad_x, grad_x_cl, 1e-4, 1e-5));
    EXPECT_TRUE(at::allclose(grad_bias, grad_bias_cl, 1e-4, 1e-5));
  }
}

TEST_F(PartialConv2dTest, FunctionalFormEqualsModule) {
  Geometry g;
  g.batch = 2;
  g.in_channels = 6;
  g.out_channels = 4;
  g.groups = 2;
  g.stride_h = 2;
  g.pad_w = 1;
  g.multi_channel = true;
  PartialConv2d conv(g.options());
  const auto input = at::randn({2, 6, 9, 8});
  g.height = 9;
  const auto mask = random_mask(g, 0.5);
  const auto [out, new_mask] = conv(input, mask);
  const auto [f_out, f_mask] = F::partial_conv2d(
      input, mask, conv->weight, conv->bias,
      F::PartialConv2dFuncOptions().stride({2, 1}).padding({0, 1}).groups(2).multi_channel(true));
  EXPECT_TRUE(at::equal(out, f_out));
  EXPECT_TRUE(at::equal(new_mask, f_mask));
}

TEST_F(PartialConv2dTest, ParametersAreLaidOutAndInitialisedAsConv2d) {
  const auto pconv_options = PartialConv2dOptions(6, 4, {3, 5}).groups(2);
  torch::manual_seed(7);
  PartialConv2d pconv(pconv_options);
  torch::manual_seed(7);
  torch::nn::Conv2d conv(torch::nn::Conv2dOptions(6, 4, {3, 5}).groups(2));
  const auto ours = pconv->named_parameters();
  const auto theirs = conv->named_parameters();
  ASSERT_EQ(ours.keys(), theirs.keys());
  for (const auto& key : ours.keys()) {
    EXPECT_TRUE(at::equal(ours[key], theirs[key])) << key;
  }
}

TEST_F(PartialConv2dTest, AllOnesMaskEqualsConv2dInTheInterior) {
  torch::nn::Conv2d conv(torch::nn::Conv2dOptions(5, 7, 3).padding(1));
  PartialConv2d pconv(PartialConv2dOptions(5, 7, 3).padding(1).multi_channel(true));
  pconv->weight.data().copy_(conv->weight);
  pconv->bias.data().copy_(conv->bias);
  const auto input = at::randn({2, 5, 10, 12});
  const auto expected = conv(input);
  const auto [out, new_mask] = pconv(input, at::ones({2, 5, 10, 12}));
  using at::indexing::Slice;
  const auto interior = Slice(1, -1);
  EXPECT_TRUE(at::allclose(out.index({Slice(), Slice(), interior, interior}),
                           expected.index({Slice(), Slice(), interior, interior}), 1e-5, 1e-6));
  // At the border the zero padding is a hole: the output is renormalised, not Conv2d's.
  EXPECT_FALSE(at::allclose(out, expected, 1e-5, 1e-6));
  EXPECT_TRUE(at::equal(new_mask, at::ones_like(new_mask)));
}

TEST_F(PartialConv2dTest, HolePixelValuesDoNotChangeTheOutput) {
  for (const bool multi : {false, true}) {
    Geometry g;
    g.batch = 2;
    g.in_channels = 3;
    g.out_channels = 4;
    g.height = g.width = 12;
    g.kernel_h = g.kernel_w = 5;
    g.stride_h = g.stride_w = 2;
    g.pad_h = g.pad_w = 2;
    g.mask_batch = 2;
    g.multi_channel = multi;
    PartialConv2d conv(g.options());
    const auto mask = random_mask(g, 0.5);
    const auto input = at::randn({2, 3, 12, 12});
    const auto hole = (mask == 0).expand_as(input);
    const auto garbage = at::where(hole, at::randn_like(input) * 1e4, input);
    EXPECT_TRUE(at::equal(std::get<0>(conv(input, mask)), std::get<0>(conv(garbage, mask))));
  }
}

TEST_F(PartialConv2dTest, PaddingModeRenormalisesEdgesAndCorners) {
  const auto input = at::ones({1, 1, 5, 6});
  const auto terms =
      F::partial_conv2d_mask_terms({}, input, 3, F::PartialConv2dFuncOptions().padding(1));
  const auto ratio = terms.ratio[0][0];
  EXPECT_EQ(ratio[2][2].item<float>(), 1.0F);
  EXPECT_EQ(ratio[0][2].item<float>(), 1.5F);
  EXPECT_EQ(ratio[2][0].item<float>(), 1.5F);
  EXPECT_EQ(ratio[4][3].item<float>(), 1.5F);
  EXPECT_EQ(ratio[0][0].item<float>(), 2.25F);
  EXPECT_EQ(ratio[4][5].item<float>(), 2.25F);

  // With an all-ones image and kernel every output is 9: the missing border taps are made up.
  PartialConv2d conv(PartialConv2dOptions(1, 1, 3).padding(1).bias(false));
  conv->weight.data().fill_(1.0);
  const auto [out, new_mask] = conv(input);
  EXPECT_TRUE(at::equal(out, at::full_like(out, 9.0)));
  EXPECT_TRUE(at::equal(new_mask, at::ones({1, 1, 5, 6})));
}

TEST_F(PartialConv2dTest, UnmaskedCallAfterMaskedCallIsPaddingMode) {
  // NVIDIA's layer keeps the last mask and reuses it for a following call without one.
  PartialConv2d conv(PartialConv2dOptions(3, 4, 3).padding(1));
  const auto input = at::randn({1, 3, 8, 8});
  auto fresh = std::dynamic_pointer_cast<pconv::nn::PartialConv2dImpl>(conv->clone());
  const auto expected = std::get<0>(fresh->forward(input));
  const auto mask = (at::rand({1, 1, 8, 8}) > 0.5).to(at::kFloat);
  const auto masked = std::get<0>(conv(input, mask));
  const auto [out, new_mask] = conv(input);
  EXPECT_FALSE(at::allclose(masked, expected));
  EXPECT_TRUE(at::equal(out, expected));
  EXPECT_TRUE(at::equal(new_mask, at::ones_like(new_mask)));
}

TEST_F(PartialConv2dTest, GradientsMatchFiniteDifferences) {
  Geometry g;
  g.batch = 2;
  g.mask_batch = 2;
  g.groups = 2;
  g.in_channels = 4;
  g.out_channels = 4;
  g.height = 7;
  g.width = 6;
  g.stride_h = 2;
  g.pad_h = g.pad_w = 1;
  g.dilation_w = 2;
  g.multi_channel = true;
  PartialConv2d conv(g.options());
  conv->to(at::kDouble);
  const auto input = at::randn({2, 4, 7, 6}, at::kDouble).requires_grad_(true);
  const auto mask = random_mask(g, 0.5, at::kDouble);
  const auto upstream = at::randn({2, 4, g.out_h(), g.out_w()}, at::kDouble);
  auto loss = [&] { return (std::get<0>(conv(input, mask)) * upstream).sum(); };

  loss().backward();
  const std::vector<std::pair<std::string, at::Tensor>> checked{
      {"input", input}, {"weight", conv->weight}, {"bias", conv->bias}};
  torch::NoGradGuard no_grad;
  for (const auto& [name, tensor] : checked) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(tensor.grad().defined());
    const auto analytic = tensor.grad().clone();
    auto flat = tensor.view(-1);
    auto numeric = at::zeros_like(flat);
    constexpr double kStep = 1e-6;
    for (int64_t i = 0; i < flat.numel(); ++i) {
      const double saved = flat[i].item<double>();
      flat[i] = saved + kStep;
      const double plus = loss().item<double>();
      flat[i] = saved - kStep;
      const double minus = loss().item<double>();
      flat[i] = saved;
      numeric[i] = (plus - minus) / (2 * kStep);
    }
    EXPECT_TRUE(at::allclose(analytic.view(-1), numeric, 1e-6, 1e-7))
        << (analytic.view(-1) - numeric).abs().max();
  }
  // Holes get no gradient: their values never reach the output.
  EXPECT_EQ(input.grad().masked_select(mask == 0).abs().max().item<double>(), 0.0);
}

TEST_F(PartialConv2dTest, FusedLayerWithPartOfItsGradients) {
  // The single-node fused layer against the ATen path when only some of input, weight and
  // bias need a gradient, and with a mask made in inference mode (as a data loader may make
  // it): a first layer, whose input has none, must not need to keep the mask.
  Geometry g;
  g.batch = 2;
  g.mask_batch = 2;
  g.in_channels = 6;
  g.out_channels = 5;
  g.height = 9;
  g.width = 8;
  g.pad_h = g.pad_w = 1;
  g.multi_channel = true;
  const auto [input, mask, upstream] = random_inputs(g);
  at::Tensor inference_mask;
  {
    const c10::InferenceMode inference;
    inference_mask = mask.clone();
  }
  struct Case {
    const char* name;
    bool input, weight, bias, inference_mask;
  };
  for (const Case& c : {Case{"first layer", false, true, true, true},
                        Case{"frozen weight", true, false, true, false},
                        Case{"bias only", false, false, true, true},
                        Case{"input only", true, false, false, false}}) {
    SCOPED_TRACE(c.name);
    const auto run = [&](bool fused) {
      const FusedKernels kernels(fused);
      torch::manual_seed(3);
      PartialConv2d conv(g.options());
      conv->weight.requires_grad_(c.weight);
      conv->bias.requires_grad_(c.bias);
      const auto x = input.detach().requires_grad_(c.input);
      const auto output = std::get<0>(conv(x, c.inference_mask ? inference_mask : mask));
      const std::string node = output.grad_fn() ? output.grad_fn()->name() : "";
      EXPECT_EQ(node.find("PartialConvolution") != std::string::npos, fused) << node;
      output.backward(upstream);
      return std::vector<at::Tensor>{output.detach(), x.grad(), conv->weight.grad(),
                                     conv->bias.grad()};
    };
    const auto fused = run(true);
    const auto plain = run(false);
    for (size_t i = 0; i < fused.size(); ++i) {
      SCOPED_TRACE(i);
      ASSERT_EQ(fused[i].defined(), plain[i].defined());
      if (fused[i].defined()) {
        EXPECT_TRUE(at::allclose(fused[i], plain[i], 1e-5, 1e-6));
      }
    }
  }
}

TEST_F(PartialConv2dTest, FusedBackwardRefusesToBeDifferentiatedAgain) {
  // The fused kernels' backward is invisible to autograd: a second derivative through it
  // (create_graph) must be an error, not a silently wrong number; the ATen path gives one.
  // A multi-channel mask of the input's shape takes the prologue kernel, a one-channel mask
  // ATen's input x mask, both then the single node (the epilogue's own node is tested below).
  for (const bool multi_channel : {true, false}) {
    SCOPED_TRACE(multi_channel ? "prologue kernel" : "masked input");
    PartialConv2d conv(PartialConv2dOptions(4, 4, 3).padding(1).multi_channel(multi_channel));
    conv->to(at::kDouble);
    const auto input = at::randn({1, 4, 6, 6}, at::kDouble).requires_grad_(true);
    const auto mask = (at::rand({1, multi_channel ? 4 : 1, 6, 6}) > 0.3).to(at::kDouble);
    const auto penalty = [&] {
      const auto output = std::get<0>(conv(input, mask));
      const auto grads = torch::autograd::grad({output.pow(2).sum()}, {input}, {},
                                               /*retain_graph=*/true, /*create_graph=*/true);
      return grads[0].pow(2).sum();
    };
    {
      const FusedKernels fused(true);
      EXPECT_THAT(error_message([&] { penalty().backward(); }),
                  HasSubstr("cannot be differentiated again"));
    }
    const FusedKernels plain(false);
    conv->zero_grad();
    penalty().backward();
    EXPECT_GT(conv->weight.grad().abs().sum().item<double>(), 0.0);
  }
}

TEST_F(PartialConv2dTest, FusedNodeKeepsAutogradsRulesForSavedTensors) {
  // The single-node layer's backward is a hand-written autograd node: it must keep what
  // autograd promises for ATen's own nodes. A graph is freed by its backward unless retained;
  // a retained one gives the same gradients again; a saved tensor changed in place after the
  // forward makes the backward an error, not a gradient for the wrong values.
  const FusedKernels fused(true);
  PartialConv2d conv(PartialConv2dOptions(4, 3, 3).padding(1).multi_channel(true));
  const auto input = at::randn({2, 4, 7, 6}).requires_grad_(true);
  const auto mask = (at::rand({2, 4, 7, 6}) > 0.4).to(at::kFloat);
  const auto forward = [&] {
    const auto output = std::get<0>(conv(input, mask));
    EXPECT_THAT(output.grad_fn()->name(), HasSubstr("PartialConvolution"));
    return output.sum();  // (SumBackward saves no tensor: the errors below are the layer's)
  };

  auto loss = forward();
  loss.backward({}, /*retain_graph=*/true);
  const auto once = std::vector<at::Tensor>{input.grad().clone(), conv->weight.grad().clone(),
                                            conv->bias.grad().clone()};
  loss.backward();  // the retained graph, freed this time
  const auto twice = std::vector<at::Tensor>{input.grad(), conv->weight.grad(), conv->bias.grad()};
  for (size_t i = 0; i < once.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_GT(once[i].abs().sum().item<double>(), 0.0);
    EXPECT_TRUE(at::allclose(twice[i], 2 * once[i]));
  }
  EXPECT_THAT(error_message([&] { loss.backward(); }), HasSubstr("second time"));

  // Only the weight's gradient asked for (the node's edges in their order).
  const auto weight_only = torch::autograd::grad({forward()}, {conv->weight});
  EXPECT_TRUE(at::allclose(weight_only[0], once[1], 1e-5, 1e-6));

  loss = forward();
  {
    const at::NoGradGuard no_grad;
    conv->weight.mul_(2);
  }
  EXPECT_THAT(error_message([&] { loss.backward(); }), HasSubstr("modified by an inplace"));
  loss = forward();
  mask.mul_(1);  // the mask is saved for the input's gradient
  EXPECT_THAT(error_message([&] { loss.backward(); }), HasSubstr("modified by an inplace"));
}

TEST_F(PartialConv2dTest, FusedEpilogueNodeKeepsAutogradsRules) {
  // The epilogue's own node after a convolution of ATen's (where the layer cannot be one node:
  // under autocast on a GPU), hand-written as the single node is. Only the bias has a
  // gradient, so that every error below is the node's own: a backward frees its saved tensors
  // unless retained, a retained one gives the same gradient again.
  const FusedKernels fused(true);
  const auto ratio = at::rand({2, 1, 6, 7});
  const auto valid = (ratio > 0.5).to(at::kFloat);
  const auto bias = at::randn({4});
  const auto with_gradient = bias.detach().requires_grad_(true);
  const auto raw = at::conv2d(at::randn({2, 3, 6, 7}), at::randn({4, 3, 3, 3}), {}, 1, 1);
  auto output = pconv::nn::functional::detail::renormalize(raw, with_gradient, ratio, valid);
  EXPECT_THAT(output.grad_fn()->name(), HasSubstr("Renormalize"));
  auto loss = output.sum();
  loss.backward({}, /*retain_graph=*/true);
  const auto once = with_gradient.grad().clone();
  EXPECT_TRUE(at::allclose(once, (valid.sum({0, 2, 3}) * at::ones({4})).to(at::kFloat)));
  loss.backward();
  EXPECT_TRUE(at::allclose(with_gradient.grad(), 2 * once));
  EXPECT_THAT(error_message([&] { loss.backward(); }), HasSubstr("second time"));

  // With the convolution's input and weight differentiable too: its output's version goes
  // up, the gradients are the ATen path's, and a second derivative is refused.
  const auto x0 = at::randn({2, 3, 6, 7}, at::kDouble);
  const auto w0 = at::randn({4, 3, 3, 3}, at::kDouble);
  const auto gradients = [&](bool fused_kernels, bool twice) {
    const FusedKernels kernels(fused_kernels);
    const auto x = x0.detach().requires_grad_(true);
    const auto w = w0.detach().requires_grad_(true);
    const auto b = bias.to(at::kDouble).requires_grad_(true);
    const auto conv_out = at::conv2d(x, w, {}, 1, 1);
    const auto version = conv_out._version();
    const auto out = pconv::nn::functional::detail::renormalize(conv_out, b, ratio.to(at::kDouble),
                                                                valid.to(at::kDouble));
    EXPECT_GT(out._version(), version);
    EXPECT_EQ(out.grad_fn()->name().find("Renormalize") != std::string::npos, fused_kernels);
    auto grads = torch::autograd::grad({out.pow(2).sum()}, {x, w, b}, {}, std::nullopt,
                                       /*create_graph=*/twice);
    if (twice) grads[0].sum().backward();
    return grads;
  };
  const auto fused_grads = gradients(true, false);
  const auto plain_grads = gradients(false, false);
  for (size_t i = 0; i < fused_grads.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_TRUE(at::allclose(fused_grads[i], plain_grads[i]));
  }
  EXPECT_THAT(error_message([&] { gradients(true, true); }),
              HasSubstr("cannot be differentiated again"));
  // A tensor whose node saved it as its output, renormalised in place: its backward refuses.
  const auto leaf_input = at::randn({2, 4, 6, 7}).requires_grad_(true);
  const auto saved_output = leaf_input.exp();
  const auto renormalized =
      pconv::nn::functional::detail::renormalize(saved_output, bias, ratio, valid);
  EXPECT_THAT(renormalized.grad_fn()->name(), HasSubstr("Renormalize"));
  EXPECT_THAT(error_message([&] { renormalized.sum().backward(); }),
              HasSubstr("modified by an inplace"));

  // Called on a tensor autograd treats differently in place (a leaf with a gradient, a view),
  // the epilogue does what ATen's in-place ops do: refuse the leaf, rebase the view's base.
  const auto leaf = at::randn({2, 4, 6, 7}).requires_grad_(true);
  EXPECT_THAT(
      error_message([&] { pconv::nn::functional::detail::renormalize(leaf, bias, ratio, valid); }),
      HasSubstr("leaf Variable that requires grad"));
  const auto through_view = [&](bool fused_kernels) {
    const FusedKernels kernels(fused_kernels);
    const auto x = leaf.detach().requires_grad_(true);
    const auto base = x * 2;
    const auto view = base.narrow(0, 1, 1);
    pconv::nn::functional::detail::renormalize(view, bias, ratio.narrow(0, 1, 1),
                                               valid.narrow(0, 1, 1));
    (base * base).sum().backward();
    return std::pair{base.detach(), x.grad()};
  };
  const auto [fused_base, fused_grad] = through_view(true);
  const auto [plain_base, plain_grad] = through_view(false);
  EXPECT_TRUE(at::allclose(fused_base, plain_base));
  EXPECT_TRUE(at::allclose(fused_grad, plain_grad));
}

TEST_F(PartialConv2dTest, FusedPrologueNodeUnderAutocast) {
  // Under autocast the layer is not one node: the fused prologue's masked input carries the
  // input's gradient in its own node (grad x mask), the convolution autocast's.
  PartialConv2d conv(PartialConv2dOptions(4, 5, 3).padding(1).multi_channel(true));
  const auto input = at::randn({2, 4, 7, 6});
  const auto mask = (at::rand({2, 4, 7, 6}) > 0.4).to(at::kFloat);
  const auto upstream = at::randn({2, 5, 7, 6});
  const auto run = [&](bool fused) {
    const FusedKernels kernels(fused);
    const pconv::train::AutocastScope autocast(c10::kCPU, c10::kBFloat16);
    conv->zero_grad();
    const auto x = input.detach().requires_grad_(true);
    const auto output = std::get<0>(conv(x, mask));
    EXPECT_EQ(output.scalar_type(), c10::kBFloat16);
    EXPECT_EQ(graph_has(output.grad_fn(), "MaskInputBackward"), fused);
    output.backward(upstream.to(output.scalar_type()));
    return std::vector<at::Tensor>{output.detach().to(at::kFloat), x.grad(), conv->weight.grad()};
  };
  const auto fused = run(true);
  const auto plain = run(false);
  for (size_t i = 0; i < fused.size(); ++i) {
    SCOPED_TRACE(i);
    ASSERT_TRUE(fused[i].defined());
    EXPECT_TRUE(at::allclose(fused[i], plain[i], 1e-2, 1e-2));
  }
  // Holes get no gradient.
  EXPECT_EQ(fused[1].masked_select(mask == 0).abs().max().item<double>(), 0.0);
}

TEST_F(PartialConv2dTest, ForwardModeTangentsTakeTheAtenPath) {
  // The fused kernels propagate no forward-mode AD tangent: a layer whose input or weight
  // carries one takes ATen's path, so that its output's tangent is the directional derivative
  // (checked by central differences in float64), with the fused kernels on as off.
  const uint64_t level = torch::autograd::ForwardADLevel::get_next_idx();
  for (const bool multi_channel : {true, false}) {
    SCOPED_TRACE(multi_channel ? "multi-channel mask" : "one-channel mask");
    PartialConv2d conv(PartialConv2dOptions(3, 4, 3).padding(1).multi_channel(multi_channel));
    conv->to(at::kDouble);
    const auto input = at::randn({2, 3, 6, 5}, at::kDouble);
    const auto tangent = at::randn_like(input);
    const auto mask = (at::rand({2, multi_channel ? 3 : 1, 6, 5}) > 0.4).to(at::kDouble);
    const double step = 1e-6;
    const at::NoGradGuard no_grad;
    const auto expected = (std::get<0>(conv(input + step * tangent, mask)) -
                           std::get<0>(conv(input - step * tangent, mask))) /
                          (2 * step);
    for (const bool fused : {true, false}) {
      SCOPED_TRACE(fused ? "fused" : "ATen");
      const FusedKernels kernels(fused);
      const auto dual = at::_make_dual(input, tangent, static_cast<int64_t>(level));
      const auto output_tangent =
          std::get<1>(at::_unpack_dual(std::get<0>(conv(dual, mask)), level));
      ASSERT_TRUE(output_tangent.defined());
      EXPECT_TRUE(at::allclose(output_tangent, expected, 1e-6, 1e-8))
          << (output_tangent - expected).abs().max();
    }
    // With autograd on as well, the same tangent.
    const at::AutoGradMode grad(true);
    const FusedKernels kernels(true);
    const auto dual = at::_make_dual(input, tangent, static_cast<int64_t>(level));
    const auto output_tangent = std::get<1>(at::_unpack_dual(std::get<0>(conv(dual, mask)), level));
    ASSERT_TRUE(output_tangent.defined());
    EXPECT_TRUE(at::allclose(output_tangent, expected, 1e-6, 1e-8));
  }
  torch::autograd::ForwardADLevel::release_idx(level);
}

TEST_F(PartialConv2dTest, ReducedPrecisionStaysFiniteAndClose) {
  Geometry g;
  g.batch = 2;
  g.mask_batch = 2;
  g.in_channels = 8;
  g.out_channels = 8;
  g.height = g.width = 16;
  g.kernel_h = g.kernel_w = 3;
  g.pad_h = g.pad_w = 1;
  for (const bool multi : {false, true}) {
    g.multi_channel = multi;
    PartialConv2d conv(g.options());
    const auto input = at::randn({2, 8, 16, 16});
    // A large hole: windows inside it see no valid pixel, where NVIDIA's 1 / (0 + 1e-8)
    // overflows in half precision.
    auto mask = random_mask(g, 0.5);
    mask.narrow(2, 4, 8).narrow(3, 2, 10).zero_();
    const auto [expected, expected_mask] = conv(input, mask);
    ASSERT_TRUE((expected_mask == 0).any().item<bool>());
    for (const auto dtype : {at::kHalf, at::kBFloat16}) {
      SCOPED_TRACE(std::string(c10::toString(dtype)) + (multi ? " multi" : " single"));
      auto reduced = std::dynamic_pointer_cast<pconv::nn::PartialConv2dImpl>(conv->clone());
      reduced->to(dtype);
      const auto [out, new_mask] = reduced->forward(input.to(dtype), mask.to(dtype));
      EXPECT_EQ(out.scalar_type(), dtype);
      EXPECT_TRUE(out.isfinite().all().item<bool>());
      EXPECT_TRUE(at::equal(new_mask.to(at::kFloat), expected_mask));
      // Against float32 on the same rounded inputs and weights, so that only the arithmetic's
      // rounding is left: an error in the ratio (9/8 for 8/9) is far outside these bounds.
      auto rounded = std::dynamic_pointer_cast<pconv::nn::PartialConv2dImpl>(reduced->clone());
      rounded->to(at::kFloat);
      const auto reference = std::get<0>(rounded->forward(input.to(dtype).to(at::kFloat), mask));
      const double tolerance = dtype == at::kHalf ? 5e-3 : 3e-2;
      EXPECT_TRUE(at::allclose(out.to(at::kFloat), reference, tolerance, tolerance))
          << (out.to(at::kFloat) - reference).abs().max();
      // And against float32 on the original inputs, at the bounds this test always had.
      const double unrounded = dtype == at::kHalf ? 2e-2 : 1e-1;
      EXPECT_TRUE(at::allclose(out.to(at::kFloat), expected, unrounded, unrounded))
          << (out.to(at::kFloat) - expected).abs().max();

      // And the backward pass stays finite too.
      auto x = input.to(dtype).requires_grad_(true);
      std::get<0>(reduced->forward(x, mask.to(dtype))).sum().backward();
      EXPECT_TRUE(x.grad().isfinite().all().item<bool>());
      EXPECT_TRUE(reduced->weight.grad().isfinite().all().item<bool>());
    }
  }
}

TEST_F(PartialConv2dTest, CachedMaskModifiedInPlaceGivesTheNewResult) {
  auto options = PartialConv2dOptions(3, 4, 3).padding(1).multi_channel(true);
  PartialConv2d cached(options.cache_masks(true));
  PartialConv2d uncached(options.cache_masks(false));
  uncached->weight.data().copy_(cached->weight);
  uncached->bias.data().copy_(cached->bias);
  const auto input = at::randn({2, 3, 8, 8});
  auto mask = (at::rand({2, 3, 8, 8}) > 0.3).to(at::kFloat);

  const auto [first, first_mask] = cached(input, mask);
  const auto [again, again_mask] = cached(input, mask);
  // The same unchanged mask hits the cache: the updated mask comes from the same storage.
  EXPECT_EQ(first_mask.data_ptr(), again_mask.data_ptr());
  EXPECT_TRUE(at::equal(first, again));

  mask.narrow(2, 0, 5).zero_();  // in place, through a view of the mask
  const auto [changed, changed_mask] = cached(input, mask);
  const auto [expected, expected_mask] = uncached(input, mask);
  EXPECT_NE(changed_mask.data_ptr(), first_mask.data_ptr());
  EXPECT_TRUE(at::equal(changed, expected));
  EXPECT_TRUE(at::equal(changed_mask, expected_mask));
  EXPECT_FALSE(at::equal(changed, first));

  // A view of a mask modified through its base.
  auto base = (at::rand({2, 3, 8, 10}) > 0.3).to(at::kFloat);
  const auto view = base.narrow(3, 1, 8);
  cached(input, view);
  base.fill_(0.0);
  EXPECT_TRUE(at::equal(std::get<0>(cached(input, view)), std::get<0>(uncached(input, view))));
}

TEST_F(PartialConv2dTest, CachedLayerGivesTheNewResultForANewMaskOfTheSameShape) {
  PartialConv2d cached(PartialConv2dOptions(3, 4, 3).padding(1).cache_masks(true));
  PartialConv2d uncached(PartialConv2dOptions(3, 4, 3).padding(1));
  uncached->weight.data().copy_(cached->weight);
  uncached->bias.data().copy_(cached->bias);
  const auto input = at::randn({1, 3, 8, 8});
  for (int i = 0; i < 20; ++i) {
    // Each mask is dropped after use; without the reference the cache holds, the allocator
    // would be free to hand the same address to the next one.
    const auto mask = (at::rand({1, 1, 8, 8}) > 0.5).to(at::kFloat);
    const auto [out, new_mask] = cached(input, mask);
    const auto [expected, expected_mask] = uncached(input, mask);
    ASSERT_TRUE(at::equal(out, expected)) << "iteration " << i;
    ASSERT_TRUE(at::equal(new_mask, expected_mask)) << "iteration " << i;
  }
  // Padding-mode terms follow the image size.
  for (const int64_t size : {8, 9, 8}) {
    const auto x = at::randn({1, 3, size, size});
    EXPECT_TRUE(at::equal(std::get<0>(cached(x)), std::get<0>(uncached(x))));
  }
}

// The updated mask a cached layer returns is its cached terms' own tensor (no copy per call): a
// caller that writes into it must not change the layer's later results. Padding mode caches
// always; a mask is cached with cache_masks. Under InferenceMode padding-mode terms are
// not kept (an inference tensor has no version counter to show a write).
TEST_F(PartialConv2dTest, WritingIntoTheReturnedMaskLeavesTheCacheCorrect) {
  for (const bool multi_channel : {false, true}) {
    SCOPED_TRACE(multi_channel ? "multi-channel" : "single-channel");
    auto options = PartialConv2dOptions(3, 1, 3).padding(1).multi_channel(multi_channel);
    PartialConv2d cached(options.cache_masks(true));
    PartialConv2d uncached(options.cache_masks(false));
    uncached->weight.data().copy_(cached->weight);
    uncached->bias.data().copy_(cached->bias);
    const auto input = at::randn({2, 3, 8, 8});
    const auto mask = (at::rand({2, multi_channel ? 3 : 1, 8, 8}) > 0.3).to(at::kFloat);
    for (const bool padding_mode : {true, false}) {
      SCOPED_TRACE(padding_mode ? "padding mode" : "mask");
      const auto call = [&](PartialConv2d& layer) {
        return padding_mode ? layer(input) : layer(input, mask);
      };
      const auto expected = std::get<0>(call(uncached));
      std::get<1>(call(cached)).zero_();
      const auto [out, new_mask] = call(cached);
      EXPECT_TRUE(at::equal(out, expected));
      EXPECT_TRUE(at::equal(new_mask, std::get<1>(call(uncached))));
      {
        c10::InferenceMode inference;
        std::get<1>(call(cached)).fill_(0.5);
        EXPECT_TRUE(at::equal(std::get<0>(call(cached)), expected));
      }
      EXPECT_TRUE(at::equal(std::get<0>(call(cached)), expected));
    }
  }
}

TEST_F(PartialConv2dTest, CachedLayerFollowsGeometryChanges) {
  PartialConv2d conv(PartialConv2dOptions(2, 2, 3).padding(1).cache_masks(true));
  const auto input = at::randn({1, 2, 8, 8});
  const auto mask = (at::rand({1, 1, 8, 8}) > 0.5).to(at::kFloat);
  conv(input, mask);
  conv(input);
  conv->options.padding(0);
  const auto [out, new_mask] = conv(input, mask);
  EXPECT_EQ(out.size(2), 6);
  const auto unmasked = std::get<0>(conv(input));
  EXPECT_EQ(unmasked.size(2), 6);
  // The values too: those of a layer that never cached anything, with the new geometry.
  PartialConv2d fresh(PartialConv2dOptions(2, 2, 3).padding(0));
  fresh->weight.data().copy_(conv->weight);
  fresh->bias.data().copy_(conv->bias);
  const auto [expected, expected_mask] = fresh(input, mask);
  EXPECT_TRUE(at::allclose(out, expected, 1e-6, 1e-6));
  EXPECT_TRUE(at::equal(new_mask, expected_mask));
  EXPECT_TRUE(at::allclose(unmasked, std::get<0>(fresh(input)), 1e-6, 1e-6));
}

TEST_F(PartialConv2dTest, StateDictSaveLoadAndCloneRoundTrip) {
  PartialConv2d conv(
      PartialConv2dOptions(4, 6, {3, 2}).stride(2).padding(1).groups(2).multi_channel(true));
  const auto input = at::randn({2, 4, 9, 9});
  const auto mask = (at::rand({2, 4, 9, 9}) > 0.4).to(at::kFloat);
  const auto expected = std::get<0>(conv(input, mask));

  std::stringstream stream;
  torch::save(conv, stream);
  PartialConv2d loaded(
      PartialConv2dOptions(4, 6, {3, 2}).stride(2).padding(1).groups(2).multi_channel(true));
  EXPECT_FALSE(at::equal(std::get<0>(loaded(input, mask)), expected));
  torch::load(loaded, stream);
  EXPECT_TRUE(at::equal(std::get<0>(loaded(input, mask)), expected));

  auto copy = std::dynamic_pointer_cast<pconv::nn::PartialConv2dImpl>(conv->clone());
  ASSERT_NE(copy, nullptr);
  EXPECT_TRUE(at::equal(std::get<0>(copy->forward(input, mask)), expected));
  copy->weight.data().add_(1.0);  // the clone owns its parameters
  EXPECT_TRUE(at::equal(std::get<0>(conv(input, mask)), expected));
}

TEST_F(PartialConv2dTest, BadArgumentsNameTheArgumentAndTheShape) {
  PartialConv2d conv(PartialConv2dOptions(3, 4, 3).padding(1));
  const auto input = at::randn({2, 3, 8, 8});
  EXPECT_THAT(error_message([&] {
                conv(input, at::ones({2, 3, 8, 8}));
              }),
              ::testing::AllOf(HasSubstr("mask"), HasSubstr("[2, 3, 8, 8]")));
  EXPECT_THAT(error_message([&] {
                conv(input, at::ones({2, 1, 8, 7}));
              }),
              ::testing::AllOf(HasSubstr("mask"), HasSubstr("[2, 1, 8, 7]")));
  EXPECT_THAT(error_message([&] {
                conv(input, at::ones({3, 1, 8, 8}));
              }),
              ::testing::AllOf(HasSubstr("mask"), HasSubstr("[3, 1, 8, 8]")));
  EXPECT_THAT(error_message([&] {
                conv(at::randn({3, 8, 8}));
              }),
              ::testing::AllOf(HasSubstr("input"), HasSubstr("4-D"), HasSubstr("[3, 8, 8]")));
  EXPECT_THAT(error_message([&] {
                conv(at::randn({2, 5, 8, 8}));
              }),
              ::testing::AllOf(HasSubstr("input"), HasSubstr("[2, 5, 8, 8]")));
  EXPECT_THAT(error_message([] { PartialConv2d(PartialConv2dOptions(5, 4, 3).groups(2)); }),
              ::testing::AllOf(HasSubstr("in_channels (5)"), HasSubstr("groups (2)")));
  EXPECT_THAT(error_message([] { PartialConv2d(PartialConv2dOptions(4, 5, 3).groups(2)); }),
              ::testing::AllOf(HasSubstr("out_channels (5)"), HasSubstr("groups (2)")));
  EXPECT_THAT(error_message([&] {
                F::partial_conv2d(at::randn({1, 5, 8, 8}), {}, at::randn({4, 2, 3, 3}), {},
                                  F::PartialConv2dFuncOptions().groups(2));
              }),
              ::testing::AllOf(HasSubstr("groups"), HasSubstr("[1, 5, 8, 8]")));
  // An input of another element type than the layer's, outside autocast: which is which, and
  // the remedy, on both paths.
  for (const bool fused : {true, false}) {
    const FusedKernels kernels(fused);
    EXPECT_THAT(error_message([&] {
                  conv(input.to(at::kDouble), at::ones({2, 1, 8, 8}));
                }),
                ::testing::AllOf(HasSubstr("the input is Double but the weight is Float"),
                                 HasSubstr("convert the input")))
        << (fused ? "fused" : "reference");
  }
  // A float32 bias is taken with a bfloat16 weight (autocast leaves the bias so), not with a
  // float32 weight of another type: the output and its gradients are those of the layer with
  // its bias in bfloat16, within bfloat16's rounding, and the bias gradient stays float32.
  {
    PartialConv2d reduced(PartialConv2dOptions(3, 4, 3).padding(1));
    reduced->to(at::kBFloat16);
    PartialConv2d mixed(PartialConv2dOptions(3, 4, 3).padding(1));
    mixed->weight.set_data(reduced->weight.detach().clone());
    mixed->bias.set_data(reduced->bias.detach().to(at::kFloat));
    const auto x = input.to(at::kBFloat16);
    const auto m = (at::rand({2, 1, 8, 8}) > 0.4).to(at::kBFloat16);
    for (const bool fused : {true, false}) {
      SCOPED_TRACE(fused ? "fused" : "reference");
      const FusedKernels kernels(fused);
      for (auto* layer : {&reduced, &mixed}) (*layer)->zero_grad();
      const auto expected = std::get<0>(reduced(x, m)).to(at::kFloat);
      const auto actual = std::get<0>(mixed(x, m));
      EXPECT_EQ(actual.scalar_type(), at::kBFloat16);
      EXPECT_TRUE(at::allclose(actual.to(at::kFloat), expected, 2e-2, 2e-2));
      expected.sum().backward();
      actual.to(at::kFloat).sum().backward();
      EXPECT_EQ(mixed->bias.grad().scalar_type(), at::kFloat);
      EXPECT_TRUE(
          at::allclose(mixed->bias.grad(), reduced->bias.grad().to(at::kFloat), 2e-2, 2e-2));
    }
    PartialConv2d doubled(PartialConv2dOptions(3, 4, 3).padding(1));
    doubled->bias.set_data(doubled->bias.detach().to(at::kDouble));
    EXPECT_THAT(error_message([&] {
                  doubled(input, at::ones({2, 1, 8, 8}));
                }),
                HasSubstr("the input is Float but the weight is Float and the bias Double"));
  }
  // Terms on another device than the input: an error, never a kernel reading foreign memory.
  F::PartialConv2dMaskTerms elsewhere;
  elsewhere.ratio = at::ones({1, 1, 8, 8}, at::device(at::kMeta));
  elsewhere.valid = at::ones({1, 1, 8, 8}, at::device(at::kMeta));
  EXPECT_THAT(error_message([&] {
                F::partial_conv2d_masked_input(at::randn({1, 3, 8, 8}), at::randn({4, 3, 3, 3}),
                                               at::randn({4}), elsewhere,
                                               F::PartialConv2dFuncOptions().padding(1));
              }),
              ::testing::AllOf(HasSubstr("mask terms on meta"), HasSubstr("input is on cpu")));
  // A dilated kernel one pixel wider than the padded input, at stride 2: no output pixel, on
  // the fused path as on the reference path (truncating division once made it one).
  for (const bool fused : {true, false}) {
    const FusedKernels kernels(fused);
    EXPECT_THAT(error_message([&] {
                  F::partial_conv2d_mask_terms_from_counts(
                      at::ones({1, 1, 8, 6}), 15, {5, 3},
                      F::PartialConv2dFuncOptions().stride(2).dilation({1, 3}));
                }),
                ::testing::AnyOf(HasSubstr("does not fit"), HasSubstr("can't be greater")))
        << (fused ? "fused" : "reference");
  }
}

// Whether the CUDA kernels run on a device: never on the CPU, never on a GPU that is not there
// (asked without one, the answer is false, not an error).
TEST_F(PartialConv2dTest, CudaKernelsRunOnlyOnGpusThatExist) {
  EXPECT_FALSE(F::cuda_kernels_run_on(c10::Device(c10::kCPU)));
  const auto gpus = static_cast<int>(torch::cuda::device_count());
  EXPECT_FALSE(
      F::cuda_kernels_run_on(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(gpus))));
  if (gpus == 0 || !F::cuda_kernels_built()) {
    EXPECT_FALSE(F::cuda_kernels_run_on(c10::Device(c10::kCUDA)));
  }
}

// CUDA: the same results as the CPU. Skipped where no GPU is present.
class PartialConv2dCudaTest : public PartialConv2dTest {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU";
    PartialConv2dTest::SetUp();
    at::globalContext().setAllowTF32CuDNN(false);
  }
};

TEST_F(PartialConv2dCudaTest, CpuEqualsCuda_CUDA) {
  std::mt19937 rng(3);
  for (int trial = 0; trial < 20; ++trial) {
    const Geometry g = random_geometry(rng);
    SCOPED_TRACE(g.str());
    PartialConv2d conv(g.options());
    const auto [input, mask, upstream] = random_inputs(g);
    const LayerRun cpu = run_layer(conv, input, mask, upstream);
    conv->to(at::kCUDA);
    const LayerRun gpu = run_layer(conv, input.cuda(), mask.cuda(), upstream.cuda());
    expect_close(gpu, cpu, 1e-4);
  }
}

TEST_F(PartialConv2dCudaTest, FusedKernelsEqualTheReferencePath_CUDA) {
  ASSERT_TRUE(F::cuda_kernels_built()) << "this build has no CUDA kernels";
  // The fused CUDA kernels against the plain ATen path on random geometries (planes above and
  // below the small-block threshold, channel counts above the 32-channel lanes), in float32,
  // float16 and bfloat16, NCHW and channels-last, forward and backward.
  std::mt19937 rng(7);
  for (int trial = 0; trial < 30; ++trial) {
    const Geometry g = random_geometry(rng, /*max_size=*/70, /*max_group_channels=*/40);
    for (const auto dtype : {at::kFloat, at::kHalf, at::kBFloat16}) {
      for (const bool channels_last : {false, true}) {
        // In half and bfloat16 every other trial keeps the bias in float32, as autocast leaves
        // it: the epilogue then reads it in the terms' type, and its gradient is float32.
        const bool float_bias = dtype != at::kFloat && trial % 2 == 1 && g.bias;
        // Every third NCHW trial has a channels-last weight, with which cuDNN may answer in
        // channels-last.
        const bool channels_last_weight = !channels_last && trial % 3 == 2;
        SCOPED_TRACE(g.str() + " dtype=" + c10::toString(dtype) +
                     (channels_last ? " channels-last" : " NCHW") +
                     (float_bias ? " float32 bias" : "") +
                     (channels_last_weight ? " channels-last weight" : ""));
        PartialConv2d conv(g.options());
        conv->to(at::kCUDA, dtype);
        if (float_bias) {
          const at::NoGradGuard no_grad;
          conv->bias.set_data(conv->bias.to(at::kFloat));
        }
        if (channels_last_weight) {
          const at::NoGradGuard no_grad;
          conv->weight.set_data(conv->weight.contiguous(at::MemoryFormat::ChannelsLast));
        }
        const auto format =
            channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
        const auto cpu = random_inputs(g);
        const auto on_gpu = [&](const at::Tensor& t) {
          return t.to(at::kCUDA, dtype).contiguous(format);
        };
        const auto input = on_gpu(cpu.input);
        const auto mask = on_gpu(cpu.mask);
        const auto upstream = on_gpu(cpu.upstream);
        const auto [fused, plain] = run_fused_and_plain(conv, input, mask, upstream);
        EXPECT_NE(fused.grad_fn.find(kFusedNode), std::string::npos) << fused.grad_fn;
        EXPECT_EQ(plain.grad_fn.find("pconv"), std::string::npos) << plain.grad_fn;
        // One rounding to the element type (fused) against two (reference), and gradients
        // that sum many such terms.
        const double tolerance = dtype == at::kFloat ? 1e-5 : dtype == at::kHalf ? 4e-3 : 3e-2;
        expect_close(fused, plain, tolerance);
        EXPECT_TRUE(fused.output.isfinite().all().item<bool>());
      }
    }
  }
}

// What only a GPU shows: the kernels have code for this GPU (without it every CUDA test here
// would compare ATen with itself, or fail on the first launch); they give the same results on a
// side stream, where the cached terms of the default stream are not read but made again; an
// empty batch launches nothing; 1x1 images in channels-last (also NCHW-contiguous) are read
// right.
TEST_F(PartialConv2dCudaTest, KernelsRunOnThisGpuOnAnyStreamAndOnEdgeShapes_CUDA) {
  ASSERT_TRUE(F::cuda_kernels_built()) << "this build has no CUDA kernels";
  const c10::Device gpu(c10::kCUDA, 0);
  ASSERT_TRUE(F::cuda_kernels_run_on(gpu))
      << "this build has no code for this GPU's architecture (TORCH_CUDA_ARCH_LIST)";
  const FusedKernels on(true);
  PartialConv2d conv(PartialConv2dOptions(4, 6, 3).padding(1).cache_masks(true));
  conv->to(gpu);
  const auto input = at::randn({2, 4, 33, 35}, gpu);
  const auto mask = (at::rand({2, 1, 33, 35}, gpu) > 0.3).to(at::kFloat);
  const auto upstream = at::randn({2, 6, 33, 35}, gpu);
  const LayerRun masked = run_layer(conv, input, mask, upstream);
  const LayerRun padded = run_layer(conv, input, at::Tensor(), upstream);
  EXPECT_NE(masked.grad_fn.find(kFusedNode), std::string::npos) << masked.grad_fn;
  torch::cuda::synchronize();  // the side stream reads what the default one wrote
  {
    const c10::StreamGuard side(c10::impl::getDeviceGuardImpl(c10::kCUDA)->getNewStream(gpu));
    const LayerRun masked_side = run_layer(conv, input, mask, upstream);
    const LayerRun padded_side = run_layer(conv, input, at::Tensor(), upstream);
    torch::cuda::synchronize();
    expect_close(masked_side, masked, 1e-5);
    expect_close(padded_side, padded, 1e-5);
  }

  conv->zero_grad();
  const auto empty = at::randn({0, 4, 9, 9}, gpu).requires_grad_(true);
  auto [out, new_mask] = conv(empty, at::ones({0, 1, 9, 9}, gpu));
  EXPECT_EQ(out.sizes(), (at::IntArrayRef{0, 6, 9, 9}));
  EXPECT_EQ(new_mask.size(0), 0);
  out.sum().backward();
  torch::cuda::synchronize();
  EXPECT_EQ(empty.grad().sizes(), empty.sizes());
  EXPECT_TRUE(at::equal(conv->bias.grad().cpu(), at::zeros({6})));

  for (const bool channels_last : {false, true}) {
    SCOPED_TRACE(channels_last ? "channels-last 1x1" : "NCHW 1x1");
    PartialConv2d one(PartialConv2dOptions(4, 6, 1));
    one->to(gpu);
    // .contiguous(ChannelsLast) keeps a 1x1 tensor's NCHW strides (it is both already): the
    // strides a channels-last network gives it are made here.
    const auto strided = [&](const at::Tensor& t) {
      if (!channels_last) return t;
      const int64_t c = t.size(1);
      return at::empty_strided(t.sizes(), {c, 1, c, c}, t.options()).copy_(t);
    };
    const auto x = strided(at::randn({3, 4, 1, 1}, gpu));
    const auto m = strided((at::rand({3, 1, 1, 1}, gpu) > 0.5).to(at::kFloat));
    const auto [fused, plain] = run_fused_and_plain(one, x, m, at::randn({3, 6, 1, 1}, gpu));
    expect_close(fused, plain, 1e-5);
  }
}

TEST_F(PartialConv2dCudaTest, ReducedPrecisionIsFinite_CUDA) {
  PartialConv2d conv(PartialConv2dOptions(16, 16, 3).padding(1).multi_channel(true));
  conv->to(at::kCUDA);
  const auto input = at::randn({2, 16, 32, 32}, at::kCUDA);
  const auto mask = (at::rand({2, 16, 32, 32}, at::kCUDA) > 0.9).to(at::kFloat);
  const auto expected = std::get<0>(conv(input, mask));
  for (const auto dtype : {at::kHalf, at::kBFloat16}) {
    auto reduced = std::dynamic_pointer_cast<pconv::nn::PartialConv2dImpl>(conv->clone());
    reduced->to(dtype);
    const auto out = std::get<0>(reduced->forward(input.to(dtype), mask.to(dtype)));
    EXPECT_TRUE(out.isfinite().all().item<bool>());
    // Against float32 on the same rounded inputs and weights, relative to the output's scale
    // (sparse masks make large ratios): a ratio off by 9/8 is a 12% error.
    auto rounded = std::dynamic_pointer_cast<pconv::nn::PartialConv2dImpl>(reduced->clone());
    rounded->to(at::kFloat);
    const auto reference = std::get<0>(rounded->forward(input.to(dtype).to(at::kFloat), mask));
    const double error = (out.to(at::kFloat) - reference).abs().max().item<double>() /
                         reference.abs().max().item<double>();
    EXPECT_LT(error, dtype == at::kHalf ? 5e-3 : 3e-2) << c10::toString(dtype);
    EXPECT_TRUE(at::allclose(out.to(at::kFloat), expected, 1e-1, 1e-1));
  }
}

}  // namespace
