// The CUDA kernels' own code (lib/src/nn/functional/partial_conv2d_device.h), run on the CPU.
// Each kernel of partial_conv2d_cuda.cu is a thin wrapper around a thread body in that header;
// here the same bodies are called for every (block, thread) of the grid the kernel is launched
// with, block after block, and the block-wide sums the kernels do with cub or shared memory are
// done in plain C++ (their order differs, so sums are compared with a tolerance). The results
// are compared with ATen and with the library's reference path, in every element type and
// index type the kernels are instantiated for, NCHW and channels-last. This runs in CI, where
// there is no GPU; the kernels themselves are compared with the reference path by the *_CUDA
// tests wherever a GPU exists. What only a GPU can check (the launches, cub, the barriers,
// memory races) is left to those.
#include "nn/functional/partial_conv2d_device.h"
#include "nn/functional/partial_conv2d_kernels.h"

#include "fused_kernels.h"

#include <ATen/ATen.h>

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

namespace D = pconv::nn::functional::detail;

int64_t pick(std::mt19937& rng, int64_t low, int64_t high) {
  return std::uniform_int_distribution<int64_t>(low, high)(rng);
}

// ---------------------------------------------------------------------------------------------
// The launches, emulated: every thread of every block, in order.

// A grid-stride kernel over `total` elements on `grid` blocks of kThreads threads.
template <typename Index, typename Body>
void launch_grid_stride(int64_t grid, int64_t total, Body&& body) {
  ASSERT_LE(total, static_cast<int64_t>(std::numeric_limits<Index>::max()));
  const auto step = static_cast<Index>(grid * D::kThreads);
  for (int64_t block = 0; block < grid; ++block) {
    for (int64_t thread = 0; thread < D::kThreads; ++thread) {
      body(static_cast<Index>(block * D::kThreads + thread), step);
    }
  }
}

// The grids a kernel is tried on: the one its launch uses, and small ones that make every
// thread stride over several elements.
std::vector<int64_t> grids_for(int64_t total) {
  const int64_t launched = D::grid_for(total);
  std::vector<int64_t> grids{launched};
  for (const int64_t small : {1, 3}) {
    if (small < launched) grids.push_back(small);
  }
  return grids;
}

// A copy of `values` (same sizes and strides) inside a larger buffer with kGuard sentinels on
// either side, for what the kernels write: the threads run one after another here, so a write
// out of bounds would otherwise go unseen.
struct Guarded {
  static constexpr int64_t kGuard = 64;
  static constexpr double kSentinel = 1024;  // exact in every element type
  at::Tensor buffer, tensor;

  explicit Guarded(const at::Tensor& values)
      : buffer(at::full({values.numel() + 2 * kGuard}, kSentinel, values.options())),
        tensor(
            buffer.narrow(0, kGuard, values.numel()).as_strided(values.sizes(), values.strides())) {
    tensor.copy_(values);
  }
  bool intact() const {
    const int64_t numel = tensor.numel();
    return buffer.narrow(0, 0, kGuard).eq(kSentinel).all().item<bool>() &&
           buffer.narrow(0, kGuard + numel, kGuard).eq(kSentinel).all().item<bool>();
  }
};

// The window kernel's launch: counts x weight (+ second x second_weight where `second` is
// defined), valid also in Mask where `valid_as` is defined.
template <typename Scalar, typename Index, typename Mask>
void window_terms_on_host(const at::Tensor& counts, double weight, const at::Tensor& second,
                          double second_weight, double window, const D::WindowShape& g,
                          const at::Tensor& ratio, const at::Tensor& valid,
                          const at::Tensor& valid_as, int64_t grid) {
  const int64_t total = ratio.numel();
  D::CountPlanes<Scalar> planes;
  planes.first = counts.const_data_ptr<Scalar>();
  planes.first_weight = static_cast<Scalar>(weight);
  if (second.defined()) {
    planes.second = second.const_data_ptr<Scalar>();
    planes.second_weight = static_cast<Scalar>(second_weight);
  }
  Mask* valid_as_data = valid_as.defined() ? valid_as.mutable_data_ptr<Mask>() : nullptr;
  launch_grid_stride<Index>(grid, total, [&](Index first, Index step) {
    D::window_terms_thread<Scalar, Index, Mask>(
        first, step, planes, ratio.mutable_data_ptr<Scalar>(), valid.mutable_data_ptr<Scalar>(),
        valid_as_data, static_cast<Index>(total), static_cast<Index>(counts.size(2)),
        static_cast<Index>(counts.size(3)), static_cast<Index>(ratio.size(2)),
        static_cast<Index>(ratio.size(3)), g, static_cast<Scalar>(window));
  });
}

template <typename Index, bool kChannelsLast>
D::OutputLayout<Index, kChannelsLast> layout_of(const at::Tensor& output, const at::Tensor& ratio) {
  return D::OutputLayout<Index, kChannelsLast>::of(output.size(1), output.size(2) * output.size(3),
                                                   ratio.size(1), ratio.size(0) == 1);
}

// The epilogue's launch, with the bias and the BatchNorm vectors of `post` in Param.
template <typename Scalar, typename Index, bool kChannelsLast, typename Param>
void renormalize_on_host(const at::Tensor& out, const at::Tensor& ratio, const at::Tensor& valid,
                         const at::Tensor& bias, const D::InferencePost& post, int64_t grid) {
  using Term = D::term_t<Scalar>;
  const auto layout = layout_of<Index, kChannelsLast>(out, ratio);
  const int64_t total = out.numel();
  const D::PostOp<Param> post_op = D::post_op_of<Param>(post);
  launch_grid_stride<Index>(grid, total, [&](Index first, Index step) {
    D::renormalize_thread<Scalar, Index, kChannelsLast, Param>(
        first, step, out.mutable_data_ptr<Scalar>(), ratio.const_data_ptr<Term>(),
        valid.const_data_ptr<Term>(), bias.defined() ? bias.const_data_ptr<Param>() : nullptr,
        static_cast<Index>(total), layout, post_op);
  });
}

// The bias gradient's launch: one block of kThreads threads per channel; the block's sum of
// the threads' shares (cub's order differs: compared with a tolerance).
template <typename Term, typename Param>
void bias_gradient_on_host(const at::Tensor& partial_sums, const at::Tensor& grad_bias) {
  const auto channels = static_cast<uint32_t>(grad_bias.numel());
  for (uint32_t channel = 0; channel < channels; ++channel) {
    Term total = 0;
    for (uint32_t thread = 0; thread < static_cast<uint32_t>(D::kThreads); ++thread) {
      total += D::bias_gradient_thread<Term, uint32_t>(
          channel, thread, partial_sums.const_data_ptr<Term>(),
          static_cast<uint32_t>(partial_sums.size(0)), channels);
    }
    grad_bias.mutable_data_ptr<Param>()[channel] = static_cast<Param>(total);
  }
}

// NCHW backward: one block of planes_block(chunk length) threads per chunk of each plane; the
// block's sum.
template <typename Scalar, typename Index>
void backward_planes_on_host(const at::Tensor& grad, const at::Tensor& ratio,
                             const at::Tensor& valid, const at::Tensor& grad_raw,
                             const at::Tensor& partial_sums) {
  using Op = at::opmath_type<Scalar>;
  using Term = D::term_t<Scalar>;
  const auto layout = layout_of<Index, false>(grad, ratio);
  const int64_t chunks = D::plane_chunks(layout.plane);
  const int64_t chunk_length = D::plane_chunk_length(layout.plane);
  const int64_t blocks = grad.size(0) * grad.size(1) * chunks;
  const int threads = D::planes_block(chunk_length);
  for (int64_t block = 0; block < blocks; ++block) {
    Op sum = 0;
    for (int thread = 0; thread < threads; ++thread) {
      sum += D::renormalize_backward_plane_thread<Scalar, Index>(
          static_cast<Index>(block), static_cast<Index>(chunks), static_cast<Index>(chunk_length),
          static_cast<Index>(thread), static_cast<Index>(threads), grad.const_data_ptr<Scalar>(),
          grad_raw.mutable_data_ptr<Scalar>(), ratio.const_data_ptr<Term>(),
          valid.const_data_ptr<Term>(), layout);
    }
    if (partial_sums.defined()) {
      partial_sums
          .mutable_data_ptr<Term>()[D::plane_chunk_sum_index(block, chunks, layout.channels)] =
          static_cast<Term>(sum);
    }
  }
}

// Channels-last backward: row_blocks blocks of kChannelLanes x kRowLanes threads; per run of
// kChannelLanes channels, every thread's share first (the kernel's first barrier), then the
// combine by the threads of row lane 0.
template <typename Scalar, typename Index>
void backward_rows_on_host(const at::Tensor& grad, const at::Tensor& ratio, const at::Tensor& valid,
                           const at::Tensor& grad_raw, const at::Tensor& partial_sums) {
  using Op = at::opmath_type<Scalar>;
  using Term = D::term_t<Scalar>;
  const auto layout = layout_of<Index, true>(grad, ratio);
  const int64_t total_rows = grad.size(0) * grad.size(2) * grad.size(3);
  const int64_t blocks = D::row_blocks(total_rows);
  const int64_t rows = D::rows_per_block(total_rows);
  for (int64_t block = 0; block < blocks; ++block) {
    for (Index first = 0; first < layout.channels; first += D::kChannelLanes) {
      Op partial[D::kRowLanes][D::kChannelLanes + 1] = {};
      for (int y = 0; y < D::kRowLanes; ++y) {
        for (int x = 0; x < D::kChannelLanes; ++x) {
          partial[y][x] = D::renormalize_backward_rows_thread<Scalar, Index>(
              static_cast<Index>(block), first, static_cast<Index>(x), static_cast<Index>(y),
              grad.const_data_ptr<Scalar>(), grad_raw.mutable_data_ptr<Scalar>(),
              ratio.const_data_ptr<Term>(), valid.const_data_ptr<Term>(),
              static_cast<Index>(total_rows), static_cast<Index>(rows), layout);
        }
      }
      if (!partial_sums.defined()) continue;
      for (int x = 0; x < D::kChannelLanes; ++x) {
        D::renormalize_backward_rows_combine<Op, Index>(partial, static_cast<Index>(block), first,
                                                        static_cast<Index>(x), layout.channels,
                                                        partial_sums.mutable_data_ptr<Term>());
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The epilogue and its backward, in each output type

struct Case {
  int64_t batch, channels, groups, height, width;
  bool term_batch_one, channels_last, bias;
  // The bias (and BatchNorm vectors) in the output's type rather than the terms'; the inference
  // post-op: BatchNorm, activation (0 none, 1 ReLU, 2 leaky ReLU).
  bool native_bias = false, batch_norm = false, zero_holes = false;
  int activation = 0;
  std::string str() const {
    std::ostringstream out;
    out << "N=" << batch << " C=" << channels << " G=" << groups << " " << height << "x" << width
        << (term_batch_one ? " terms batch 1" : "") << (channels_last ? " channels-last" : "")
        << (bias ? " bias" : " no bias") << (native_bias ? " in the output's type" : "")
        << (batch_norm ? " + batch norm" : "") << " activation " << activation
        << (zero_holes ? " + holes zeroed" : "");
    return out.str();
  }
};

Case random_case(std::mt19937& rng) {
  Case c{};
  c.batch = pick(rng, 1, 3);
  c.groups = pick(rng, 1, 3);
  c.channels = c.groups * pick(rng, 1, 40);
  // Planes of 1 to 30 x 30 pixels: both the 64- and the 256-thread blocks of the NCHW backward.
  c.height = pick(rng, 1, 30);
  c.width = pick(rng, 1, 30);
  c.term_batch_one = pick(rng, 0, 1) == 1;
  c.channels_last = pick(rng, 0, 1) == 1;
  c.bias = pick(rng, 0, 3) > 0;
  c.native_bias = pick(rng, 0, 1) == 1;
  c.batch_norm = pick(rng, 0, 1) == 1;
  c.activation = static_cast<int>(pick(rng, 0, 2));
  c.zero_holes = pick(rng, 0, 1) == 1;
  return c;
}

// Each term broadcast over its group's channels: (N or 1, G, H, W) to (N or 1, C, H, W).
at::Tensor per_channel(const at::Tensor& terms, int64_t channels) {
  const int64_t groups = terms.size(1);
  return terms.unsqueeze(2)
      .expand({terms.size(0), groups, channels / groups, terms.size(2), terms.size(3)})
      .reshape({terms.size(0), channels, terms.size(2), terms.size(3)});
}

// The relative error allowed for one rounding to Scalar after arithmetic in float (double).
template <typename Scalar>
double tolerance() {
  if constexpr (std::is_same_v<Scalar, double>) return 1e-12;
  if constexpr (std::is_same_v<Scalar, float>) return 1e-6;
  // One rounding to half (11-bit significand) or bfloat16 (8-bit), plus float's error.
  return std::is_same_v<Scalar, c10::Half> ? 1e-3 : 8e-3;
}

double largest(const at::Tensor& values) { return values.max().item<double>(); }

// The largest error of `actual` against the exact `expected` (double), relative to `scale`,
// the sum of the magnitudes of the terms that made it (+ a little, for half's subnormals).
double relative_error(const at::Tensor& actual, const at::Tensor& expected,
                      const at::Tensor& scale) {
  return largest((actual.to(at::kDouble) - expected).abs() / (scale + 1e-4));
}

template <typename Scalar>
class PartialConv2dDevice : public ::testing::Test {};

using OutputTypes = ::testing::Types<float, double, c10::Half, c10::BFloat16>;
TYPED_TEST_SUITE(PartialConv2dDevice, OutputTypes);

template <typename Scalar, typename Index, typename Param>
void check_epilogue_and_backward(const Case& c, int64_t seed) {
  using Term = D::term_t<Scalar>;
  const auto scalar_type = c10::CppTypeToScalarType<Scalar>::value;
  const auto term_type = c10::CppTypeToScalarType<Term>::value;
  const auto param_type = c10::CppTypeToScalarType<Param>::value;
  const auto format =
      c.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::manual_seed(static_cast<uint64_t>(seed));
  const int64_t term_batch = c.term_batch_one ? 1 : c.batch;
  const auto raw = at::randn({c.batch, c.channels, c.height, c.width}).to(scalar_type);
  const auto ratio = at::rand({term_batch, c.groups, c.height, c.width}, term_type) * 3;
  const auto valid = (at::rand({term_batch, c.groups, c.height, c.width}) > 0.3).to(term_type);
  const auto bias = c.bias ? at::randn({c.channels}).to(param_type) : at::Tensor();
  const auto grad = at::randn({c.batch, c.channels, c.height, c.width}).to(scalar_type);
  D::InferencePost post;
  if (c.batch_norm) {
    post.bn_weight = at::randn({c.channels}).to(param_type);
    post.bn_bias = at::randn({c.channels}).to(param_type);
    post.bn_mean = at::randn({c.channels}).to(param_type);
    post.bn_var = (at::rand({c.channels}) + 0.1).to(param_type);
    post.eps = 1e-5;
  }
  post.activation = static_cast<D::Activation>(c.activation);
  post.slope = 0.2;
  post.zero_holes = c.zero_holes;
  // The dispatch of partial_conv2d_kernels.cpp: channels-last unless contiguous NCHW holds too.
  const bool channels_last = !raw.contiguous(format).is_contiguous();
  const auto kernel_format = channels_last ? at::MemoryFormat::ChannelsLast : format;

  // Forward: out = raw * ratio + bias * valid, in place; exact maths in double.
  const auto product = raw.to(at::kDouble) * per_channel(ratio, c.channels).to(at::kDouble);
  at::Tensor expected = product;
  at::Tensor scale = product.abs();
  if (c.bias) {
    const auto bias_term =
        bias.to(at::kDouble).view({1, -1, 1, 1}) * per_channel(valid, c.channels).to(at::kDouble);
    expected = expected + bias_term;
    scale = scale + bias_term.abs();
  }
  // Without the post-op: the training epilogue. Then with it, against ATen's batch norm and
  // activations in double (the error scaled by the BatchNorm's factor).
  for (const bool with_post : {false, true}) {
    at::Tensor want = expected;
    at::Tensor want_scale = scale;
    if (with_post) {
      if (c.batch_norm) {
        const auto factor =
            post.bn_weight.to(at::kDouble) / (post.bn_var.to(at::kDouble) + post.eps).sqrt();
        want = at::batch_norm(want, post.bn_weight.to(at::kDouble), post.bn_bias.to(at::kDouble),
                              post.bn_mean.to(at::kDouble), post.bn_var.to(at::kDouble), false, 0.0,
                              post.eps, false);
        want_scale = (want_scale + post.bn_mean.to(at::kDouble).abs().view({1, -1, 1, 1})) *
                         factor.abs().view({1, -1, 1, 1}) +
                     post.bn_bias.to(at::kDouble).abs().view({1, -1, 1, 1});
      }
      if (c.activation == 1) want = at::relu(want);
      if (c.activation == 2) want = at::leaky_relu(want, post.slope);
      if (c.zero_holes) want = want * per_channel(valid, c.channels).to(at::kDouble);
    }
    const D::InferencePost none;
    for (const int64_t grid : grids_for(raw.numel())) {
      SCOPED_TRACE("grid " + std::to_string(grid) + (with_post ? " with post-op" : ""));
      const Guarded out(raw.contiguous(kernel_format));
      if (channels_last) {
        renormalize_on_host<Scalar, Index, true, Param>(out.tensor, ratio, valid, bias,
                                                        with_post ? post : none, grid);
      } else {
        renormalize_on_host<Scalar, Index, false, Param>(out.tensor, ratio, valid, bias,
                                                         with_post ? post : none, grid);
      }
      // An element done twice is renormalised twice and fails here.
      EXPECT_LT(relative_error(out.tensor, want, want_scale), tolerance<Scalar>());
      EXPECT_TRUE(out.intact());
    }
    if constexpr ((std::is_same_v<Scalar, float> ||
                   std::is_same_v<Scalar, double>)&&std::is_same_v<Param, Scalar>) {
      // The CPU's own kernels (partial_conv2d_kernels.cpp) on the same case, in its layout:
      // NCHW, or channels-last at inference.
      SCOPED_TRACE(with_post ? "CPU kernel with post-op" : "CPU kernel");
      const at::NoGradGuard no_grad;
      const Guarded out(raw.contiguous(kernel_format));
      at::Tensor result;
      const auto names = pconv::testing::operators_called([&] {
        result = with_post ? D::renormalize_for_inference(out.tensor, bias, ratio, valid, post)
                           : D::renormalize(out.tensor, bias, ratio, valid);
      });
      for (const char* reference : {"aten::mul_", "aten::addcmul_", "aten::mul", "aten::batch_norm",
                                    "aten::relu", "aten::leaky_relu"}) {
        EXPECT_EQ(names.count(reference), 0U) << reference << ": the reference path ran";
      }
      EXPECT_EQ(result.data_ptr(), out.tensor.data_ptr()) << "in place";
      EXPECT_LT(relative_error(result, want, want_scale), tolerance<Scalar>());
      EXPECT_TRUE(out.intact());
    }
  }

  // Backward: grad_raw = grad * ratio and the bias sums, partial over the first dimension.
  const at::Tensor g = grad.contiguous(kernel_format);
  const Guarded grad_raw(at::full_like(g, std::numeric_limits<double>::quiet_NaN()));
  std::optional<Guarded> sums;
  if (c.bias) {
    const int64_t rows = D::bias_sum_rows(c.batch, c.height * c.width, channels_last);
    sums.emplace(at::full({rows, c.channels}, std::numeric_limits<double>::quiet_NaN(), term_type));
  }
  const at::Tensor sums_tensor = sums ? sums->tensor : at::Tensor();
  if (channels_last) {
    backward_rows_on_host<Scalar, Index>(g, ratio, valid, grad_raw.tensor, sums_tensor);
  } else {
    backward_planes_on_host<Scalar, Index>(g, ratio, valid, grad_raw.tensor, sums_tensor);
  }
  const auto expected_grad = g.to(at::kDouble) * per_channel(ratio, c.channels).to(at::kDouble);
  // NaN left anywhere (an element no thread wrote) fails here.
  EXPECT_LT(relative_error(grad_raw.tensor, expected_grad, expected_grad.abs()),
            tolerance<Scalar>());
  EXPECT_TRUE(grad_raw.intact());
  if (c.bias) {
    const auto products = g.to(at::kDouble) * per_channel(valid, c.channels).to(at::kDouble);
    const auto expected_bias = products.sum({0, 2, 3});
    // Sums of up to N x H' x W' products in float: allow float's error on the sum of |terms|.
    // An element counted twice (or never) fails here.
    const auto magnitude = products.abs().sum({0, 2, 3}) + 1;
    const double sum_tolerance = std::is_same_v<Scalar, double> ? 1e-12 : 1e-5;
    const auto error = (sums_tensor.to(at::kDouble).sum(0) - expected_bias).abs() / magnitude;
    EXPECT_LT(largest(error), sum_tolerance);  // NaN fails too
    EXPECT_TRUE(sums->intact());

    // The bias gradient from those sums, in the bias's own type: their sum over the rows, each
    // channel once (NaN where a channel is missed, a sentinel overwritten where one is too many).
    {
      SCOPED_TRACE("bias gradient");
      const Guarded grad_bias(
          at::full({c.channels}, std::numeric_limits<double>::quiet_NaN(), param_type));
      bias_gradient_on_host<Term, Param>(sums_tensor, grad_bias.tensor);
      const auto rounding = std::is_same_v<Param, Term> ? 0.0 : tolerance<Param>();
      const auto bias_error = (grad_bias.tensor.to(at::kDouble) - expected_bias).abs() / magnitude;
      EXPECT_LT(largest(bias_error), sum_tolerance + rounding);
      EXPECT_TRUE(grad_bias.intact());
    }
  }
}

TYPED_TEST(PartialConv2dDevice, EpilogueAndBackwardMatchAtenInBothLayouts) {
  std::mt19937 rng(21);
  for (int trial = 0; trial < 24; ++trial) {
    const Case c = random_case(rng);
    SCOPED_TRACE(c.str());
    // The bias in the output's type or the terms' (the same for float and double).
    using Term = D::term_t<TypeParam>;
    const auto check = [&](auto param) {
      using Param = decltype(param);
      {
        SCOPED_TRACE("32-bit index");
        check_epilogue_and_backward<TypeParam, uint32_t, Param>(c, trial);
      }
      {
        SCOPED_TRACE("64-bit index");
        check_epilogue_and_backward<TypeParam, int64_t, Param>(c, trial);
      }
    };
    if (c.native_bias) {
      check(TypeParam{});
    } else {
      check(Term{});
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The UNet decoder's upsampling and concatenation in one pass

// What the decoder computes without the fused kernels.
at::Tensor concat_upsampled_by_aten(const at::Tensor& features, const at::Tensor& skip) {
  return at::cat({at::upsample_nearest2d(features, {skip.size(2), skip.size(3)}), skip}, 1);
}

// The concatenation kernel's launch: a grid-stride loop over the output.
template <typename Scalar, typename Index>
void concat_upsampled_on_host(const at::Tensor& features, const at::Tensor& skip,
                              const at::Tensor& out, bool channels_last, int64_t grid) {
  const int64_t total = out.numel();
  launch_grid_stride<Index>(grid, total, [&](Index first, Index step) {
    const auto args = std::make_tuple(
        first, step, features.const_data_ptr<Scalar>(), skip.const_data_ptr<Scalar>(),
        out.mutable_data_ptr<Scalar>(), static_cast<Index>(total),
        static_cast<Index>(features.size(1)), static_cast<Index>(skip.size(1)),
        static_cast<Index>(out.size(2)), static_cast<Index>(out.size(3)));
    if (channels_last) {
      std::apply(D::concat_upsampled_thread<Scalar, Index, true>, args);
    } else {
      std::apply(D::concat_upsampled_thread<Scalar, Index, false>, args);
    }
  });
}

// The CUDA kernel's thread body over its launch grid (and smaller ones), and the CPU's own
// function, against ATen: copies, so exactly equal.
TYPED_TEST(PartialConv2dDevice, ConcatUpsampledEqualsUpsampleAndCat) {
  using Scalar = TypeParam;
  const auto type = c10::CppTypeToScalarType<Scalar>::value;
  std::mt19937 rng(31);
  for (int trial = 0; trial < 12; ++trial) {
    const int64_t batch = pick(rng, 1, 3);
    const int64_t up_channels = pick(rng, 1, 40);
    const int64_t skip_channels = pick(rng, 1, 9);
    const int64_t half_h = pick(rng, 1, 9);
    const int64_t half_w = pick(rng, 1, 9);
    const bool channels_last = pick(rng, 0, 1) == 1;
    SCOPED_TRACE(::testing::Message()
                 << batch << " x (" << up_channels << " + " << skip_channels << ") x " << 2 * half_h
                 << " x " << 2 * half_w << (channels_last ? " channels-last" : " NCHW"));
    const auto format =
        channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
    const auto features =
        at::randn({batch, up_channels, half_h, half_w}).to(type).contiguous(format);
    const auto skip =
        at::randn({batch, skip_channels, 2 * half_h, 2 * half_w}).to(type).contiguous(format);
    const auto expected = concat_upsampled_by_aten(features, skip);
    const int64_t total = expected.numel();
    const auto run = [&](auto index, int64_t grid) {
      using Index = decltype(index);
      const Guarded out(
          at::full_like(expected, std::numeric_limits<double>::quiet_NaN()).contiguous(format));
      concat_upsampled_on_host<Scalar, Index>(features, skip, out.tensor, channels_last, grid);
      EXPECT_TRUE(at::equal(out.tensor, expected));  // a NaN left (never written) fails too
      EXPECT_TRUE(out.intact());
    };
    for (const int64_t grid : grids_for(total)) {
      run(uint32_t{}, grid);
      run(int64_t{}, grid);
    }
    const auto on_cpu = D::concat_upsampled(features, skip);
    ASSERT_TRUE(on_cpu.defined());
    // (NCHW where both inputs are NCHW too, which a channels-last tensor of one channel or one
    // pixel is.)
    EXPECT_TRUE(on_cpu.is_contiguous(format) || (features.is_contiguous() && skip.is_contiguous()));
    EXPECT_TRUE(at::equal(on_cpu, expected));
  }
}

TEST(PartialConv2dDeviceLaunch, ConcatUpsampledLeavesWhatItDoesNotFuseToAten) {
  const auto features = at::randn({1, 4, 3, 3});
  const auto skip = at::randn({1, 2, 6, 6});
  EXPECT_TRUE(D::concat_upsampled(features, skip).defined());
  // Not twice the size, another type, one layout each, another batch.
  EXPECT_FALSE(D::concat_upsampled(features, at::randn({1, 2, 7, 6})).defined());
  EXPECT_FALSE(D::concat_upsampled(features, skip.to(at::kDouble)).defined());
  EXPECT_FALSE(
      D::concat_upsampled(features, skip.contiguous(at::MemoryFormat::ChannelsLast)).defined());
  EXPECT_FALSE(D::concat_upsampled(features, at::randn({2, 2, 6, 6})).defined());
  // The reference path leaves it to ATen.
  const pconv::testing::FusedKernels off(false);
  EXPECT_FALSE(D::concat_upsampled(features, skip).defined());
}

// ---------------------------------------------------------------------------------------------
// The prologue: masked input and valid counts in one pass

// The prologue's launch: blocks of pixel_lanes x channel_lanes threads, every thread's share
// first (the kernel's barrier), then the lane-0 threads add the shares of their item.
template <typename Scalar, typename Index, bool kChannelsLast>
void mask_and_count_on_host(const at::Tensor& input, const at::Tensor& mask,
                            const at::Tensor& masked, const at::Tensor& counts, int64_t groups) {
  using Term = D::term_t<Scalar>;
  const int64_t total = counts.numel();
  const int64_t channel_lanes = D::prologue_channel_lanes(input.size(1) / groups);
  const int64_t pixel_lanes = D::kThreads / channel_lanes;
  ASSERT_EQ(pixel_lanes * channel_lanes, D::kThreads);
  const int64_t blocks = (total + pixel_lanes - 1) / pixel_lanes;
  std::vector<Term> partial(D::kThreads);
  for (int64_t block = 0; block < blocks; ++block) {
    for (int64_t y = 0; y < channel_lanes; ++y) {
      for (int64_t x = 0; x < pixel_lanes; ++x) {
        partial[y * pixel_lanes + x] = D::mask_and_count_thread<Scalar, Index, kChannelsLast>(
            static_cast<Index>(block), static_cast<Index>(x), static_cast<Index>(y),
            static_cast<Index>(pixel_lanes), static_cast<Index>(channel_lanes),
            input.const_data_ptr<Scalar>(), mask.const_data_ptr<Scalar>(),
            masked.mutable_data_ptr<Scalar>(), static_cast<Index>(total),
            static_cast<Index>(input.size(1)), static_cast<Index>(groups),
            static_cast<Index>(input.size(2) * input.size(3)));
      }
    }
    for (int64_t x = 0; x < pixel_lanes; ++x) {
      const int64_t item = block * pixel_lanes + x;
      if (item >= total) continue;
      Term count = 0;
      for (int64_t y = 0; y < channel_lanes; ++y) count += partial[y * pixel_lanes + x];
      counts.mutable_data_ptr<Term>()[item] = count;
    }
  }
}

template <typename Scalar, typename Index>
void check_mask_and_count(std::mt19937& rng) {
  using Term = D::term_t<Scalar>;
  const auto scalar_type = c10::CppTypeToScalarType<Scalar>::value;
  const auto term_type = c10::CppTypeToScalarType<Term>::value;
  for (int trial = 0; trial < 16; ++trial) {
    const int64_t batch = pick(rng, 1, 3);
    const int64_t groups = pick(rng, 1, 3);
    // Up to 80 channels per group: one to all 32 channel lanes, and lanes that walk several.
    const int64_t channels = groups * pick(rng, 1, 80);
    const int64_t height = pick(rng, 1, 20);
    const int64_t width = pick(rng, 1, 20);
    const bool channels_last = pick(rng, 0, 1) == 1;
    SCOPED_TRACE(::testing::Message()
                 << "N=" << batch << " C=" << channels << " G=" << groups << " " << height << "x"
                 << width << (channels_last ? " channels-last" : " NCHW"));
    const auto format =
        channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
    const auto input =
        at::randn({batch, channels, height, width}).to(scalar_type).contiguous(format);
    const auto mask =
        (at::rand({batch, channels, height, width}) > 0.4).to(scalar_type).contiguous(format);
    // The dispatch of partial_conv2d_kernels.cpp: NCHW wherever that holds too.
    const bool kernel_channels_last = !input.is_contiguous();
    const auto expected_masked = input.to(at::kDouble) * mask.to(at::kDouble);
    const auto expected_counts =
        mask.to(at::kDouble).reshape({batch, groups, channels / groups, height, width}).sum(2);
    const Guarded masked(at::full_like(input, std::numeric_limits<double>::quiet_NaN()));
    const Guarded counts(at::full({batch, groups, height, width},
                                  std::numeric_limits<double>::quiet_NaN(), term_type));
    if (kernel_channels_last) {
      mask_and_count_on_host<Scalar, Index, true>(input, mask, masked.tensor, counts.tensor,
                                                  groups);
    } else {
      mask_and_count_on_host<Scalar, Index, false>(input, mask, masked.tensor, counts.tensor,
                                                   groups);
    }
    // Products with 0 and 1 and sums of whole numbers: exact (NaN left anywhere fails).
    EXPECT_EQ(largest((masked.tensor.to(at::kDouble) - expected_masked).abs()), 0.0);
    EXPECT_EQ(largest((counts.tensor.to(at::kDouble) - expected_counts).abs()), 0.0);
    EXPECT_TRUE(masked.intact() && counts.intact());
  }
}

TYPED_TEST(PartialConv2dDevice, MaskAndCountMatchAtenInBothLayouts) {
  std::mt19937 rng(13);
  check_mask_and_count<TypeParam, uint32_t>(rng);
  check_mask_and_count<TypeParam, int64_t>(rng);
}

// ---------------------------------------------------------------------------------------------
// The window terms against the library's reference path (a depthwise convolution in ATen)

template <typename Scalar, typename Index, typename Mask>
void check_window_terms(std::mt19937& rng) {
  const auto scalar_type = c10::CppTypeToScalarType<Scalar>::value;
  const auto mask_type = c10::CppTypeToScalarType<Mask>::value;
  for (int trial = 0; trial < 40; ++trial) {
    const D::WindowGeometry geometry{{2 * pick(rng, 0, 3) + 1, 2 * pick(rng, 0, 3) + 1},
                                     {pick(rng, 1, 3), pick(rng, 1, 3)},
                                     {pick(rng, 0, 3), pick(rng, 0, 3)},
                                     {pick(rng, 1, 3), pick(rng, 1, 3)}};
    const D::WindowShape g{geometry.kernel[0],   geometry.kernel[1],  geometry.stride[0],
                           geometry.stride[1],   geometry.padding[0], geometry.padding[1],
                           geometry.dilation[0], geometry.dilation[1]};
    const int64_t height = pick(rng, 1, 30);
    const int64_t width = pick(rng, 1, 30);
    const int64_t out_h = D::output_size(height, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h);
    const int64_t out_w = D::output_size(width, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w);
    if (out_h < 1 || out_w < 1) continue;
    const int64_t batch = pick(rng, 1, 3);
    const int64_t groups = pick(rng, 1, 3);
    const int64_t group_channels = pick(rng, 1, 4);
    SCOPED_TRACE(::testing::Message()
                 << "N=" << batch << " G=" << groups << " " << height << "x" << width << " kernel "
                 << g.kernel_h << "x" << g.kernel_w << " stride " << g.stride_h << "x" << g.stride_w
                 << " padding " << g.pad_h << "x" << g.pad_w << " dilation " << g.dilation_h << "x"
                 << g.dilation_w);
    // Valid inputs per pixel, summed over a group's channels: whole numbers from 0 to its size,
    // often 0 so that empty windows occur.
    const auto random_counts = [&] {
      return at::clamp_min(at::randint(-group_channels, group_channels + 1,
                                       {batch, groups, height, width}, scalar_type),
                           0);
    };
    const auto counts = random_counts();
    // Half the trials weigh and add a second plane, as the UNet's decoder does (its upsampled
    // and skip masks times their channel counts); the weights are whole numbers.
    const bool two = trial % 2 == 1;
    const at::Tensor second = two ? random_counts() : at::Tensor();
    const double weight = two ? static_cast<double>(pick(rng, 1, 5)) : 1.0;
    const double second_weight = two ? static_cast<double>(pick(rng, 1, 5)) : 0.0;
    const double window = static_cast<double>(g.kernel_h * g.kernel_w * group_channels) *
                          (two ? weight + second_weight : 1.0);
    D::WindowTerms reference;
    {
      const pconv::testing::FusedKernels off(false);
      const at::Tensor combined = two ? counts * weight + second * second_weight : counts;
      reference = D::window_terms(combined, window, geometry, scalar_type);
    }
    ASSERT_EQ(reference.ratio.sizes(), (at::IntArrayRef{batch, groups, out_h, out_w}));
    for (const int64_t grid : grids_for(reference.ratio.numel())) {
      SCOPED_TRACE(::testing::Message() << "grid " << grid << (two ? " two planes" : "")
                                        << " valid also in " << mask_type);
      const Guarded ratio(at::full_like(reference.ratio, -1));
      const Guarded valid(at::full_like(reference.valid, -1));
      const Guarded valid_as(at::full_like(reference.valid, -1, mask_type));
      window_terms_on_host<Scalar, Index, Mask>(counts, weight, second, second_weight, window, g,
                                                ratio.tensor, valid.tensor, valid_as.tensor, grid);
      EXPECT_TRUE(at::equal(valid.tensor, reference.valid));
      EXPECT_TRUE(at::equal(valid_as.tensor, reference.valid.to(mask_type)));
      EXPECT_TRUE(at::allclose(ratio.tensor, reference.ratio, tolerance<Scalar>(), 0));
      EXPECT_TRUE(ratio.intact() && valid.intact() && valid_as.intact());
    }
    // Without the second output (a null pointer), the same terms.
    const Guarded ratio(at::full_like(reference.ratio, -1));
    const Guarded valid(at::full_like(reference.valid, -1));
    window_terms_on_host<Scalar, Index, Mask>(counts, weight, second, second_weight, window, g,
                                              ratio.tensor, valid.tensor, at::Tensor(),
                                              D::grid_for(reference.ratio.numel()));
    EXPECT_TRUE(at::equal(valid.tensor, reference.valid));
  }
}

TEST(PartialConv2dDeviceWindowTerms, MatchTheReferencePath) {
  std::mt19937 rng(5);
  // valid's second copy in each type the kernel is built for.
  check_window_terms<float, uint32_t, c10::BFloat16>(rng);
  check_window_terms<float, int64_t, c10::Half>(rng);
  check_window_terms<float, uint32_t, float>(rng);
  check_window_terms<double, uint32_t, double>(rng);
  check_window_terms<double, int64_t, c10::BFloat16>(rng);
}

TEST(PartialConv2dDeviceWindowTerms, WindowSumsMatchABoxConvolution) {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 40; ++trial) {
    const D::WindowShape g{2 * pick(rng, 0, 3) + 1, 2 * pick(rng, 0, 3) + 1, pick(rng, 1, 3),
                           pick(rng, 1, 3),         pick(rng, 0, 3),         pick(rng, 0, 3),
                           pick(rng, 1, 3),         pick(rng, 1, 3)};
    const int64_t height = pick(rng, 1, 30);
    const int64_t width = pick(rng, 1, 30);
    const int64_t out_h = D::output_size(height, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h);
    const int64_t out_w = D::output_size(width, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w);
    if (out_h < 1 || out_w < 1) continue;
    const auto counts = at::randint(0, 5, {1, 1, height, width}, at::kFloat);
    const auto expected =
        at::conv2d(counts, at::ones({1, 1, g.kernel_h, g.kernel_w}), {}, {g.stride_h, g.stride_w},
                   {g.pad_h, g.pad_w}, {g.dilation_h, g.dilation_w});
    ASSERT_EQ(expected.size(2), out_h);
    ASSERT_EQ(expected.size(3), out_w);
    const auto ex = expected.accessor<float, 4>();
    for (int64_t y = 0; y < out_h; ++y) {
      for (int64_t x = 0; x < out_w; ++x) {
        EXPECT_EQ(D::window_sum(counts.data_ptr<float>(), height, width, y, x, g), ex[0][0][y][x])
            << "at " << y << "," << x;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Launch shapes

TEST(PartialConv2dDeviceLaunch, RowBlocksCoverEveryRowOnce) {
  for (const int64_t rows : {int64_t{1}, int64_t{63}, int64_t{64}, int64_t{65}, int64_t{4096},
                             int64_t{131071}, int64_t{131073}, int64_t{16} * 256 * 256}) {
    const int64_t blocks = D::row_blocks(rows);
    const int64_t per_block = D::rows_per_block(rows);
    EXPECT_GE(blocks, 1);
    EXPECT_LE(blocks, 2048);
    EXPECT_GE(blocks * per_block, rows) << rows;
    EXPECT_LT((blocks - 1) * per_block, rows) << rows;
  }
}

// The channels-last backward at its cap of 2048 blocks (rows_per_block then grows past 64).
TEST(PartialConv2dDeviceLaunch, ChannelsLastBackwardAtTheBlockCap) {
  const Case c{1, 2, 1, 400, 400, false, true, true};
  const int64_t rows = c.batch * c.height * c.width;
  ASSERT_GT(D::rows_per_block(rows), 64);  // the cap applies (2026 blocks of 79 rows)
  ASSERT_LE(D::row_blocks(rows), 2048);
  check_epilogue_and_backward<float, uint32_t, float>(c, 0);
}

// The NCHW backward on planes larger than a chunk: several blocks per plane, the last chunk
// shorter, partial sums per (n, chunk).
TEST(PartialConv2dDeviceLaunch, NchwBackwardSplitsLargePlanesIntoChunks) {
  EXPECT_EQ(D::plane_chunks(0), 1);
  EXPECT_EQ(D::plane_chunks(D::kPlaneChunk), 1);
  EXPECT_EQ(D::plane_chunks(D::kPlaneChunk + 1), 2);
  EXPECT_EQ(D::plane_chunks(512 * 512), 64);
  for (const int64_t plane : {int64_t{1}, int64_t{64}, D::kPlaneChunk + 1, int64_t{67} * 71,
                              int64_t{512} * 512, int64_t{1000} * 999}) {
    const int64_t chunks = D::plane_chunks(plane);
    const int64_t length = D::plane_chunk_length(plane);
    EXPECT_LE(length, D::kPlaneChunk) << plane;
    EXPECT_GE(chunks * length, plane) << plane;        // every element in a chunk
    EXPECT_LT((chunks - 1) * length, plane) << plane;  // no chunk empty
  }
  // 67 x 71 = 4757: two chunks of 2379 and 2378; batch 2 with per-sample terms, and terms of
  // batch 1, in float and bfloat16.
  for (const bool term_batch_one : {false, true}) {
    const Case c{2, 3, 1, 67, 71, term_batch_one, false, true};
    SCOPED_TRACE(c.str());
    check_epilogue_and_backward<float, uint32_t, float>(c, 1);
    check_epilogue_and_backward<c10::BFloat16, int64_t, float>(c, 2);
  }
}

TEST(PartialConv2dDeviceLaunch, GridStrideGridsStayWithinCudaLimits) {
  for (const int64_t elements :
       {int64_t{0}, int64_t{1}, int64_t{256}, int64_t{257}, int64_t{1} << 24, int64_t{1} << 31}) {
    const int64_t grid = D::grid_for(elements);
    EXPECT_GE(grid, 1);
    EXPECT_LE(grid, int64_t{1} << 16);
    if (elements <= (int64_t{1} << 24)) {
      EXPECT_GE(grid * D::kThreads, elements) << elements;
    }
  }
  EXPECT_EQ(D::planes_block(64), 64);
  EXPECT_EQ(D::planes_block(65), D::kThreads);
}

}  // namespace
