// The CUDA kernels' index arithmetic (lib/src/nn/functional/partial_conv2d_index.h), run on
// the CPU: the kernels' loops are replayed serially over raw memory, in NCHW and channels-last
// order, and compared with the same maths done by ATen on shaped tensors. This runs in CI,
// where there is no GPU; the kernels themselves are compared with the ATen path by the
// *_CUDA tests wherever a GPU exists.
#include "nn/functional/partial_conv2d_index.h"

#include <ATen/ATen.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

namespace D = pconv::nn::functional::detail;

struct Case {
  int64_t batch, channels, groups, height, width;
  bool term_batch_one, channels_last;
  std::string str() const {
    std::ostringstream out;
    out << "N=" << batch << " C=" << channels << " G=" << groups << " " << height << "x" << width
        << (term_batch_one ? " terms batch 1" : "") << (channels_last ? " channels-last" : "");
    return out.str();
  }
};

Case random_case(std::mt19937& rng) {
  auto pick = [&](int64_t low, int64_t high) {
    return std::uniform_int_distribution<int64_t>(low, high)(rng);
  };
  Case c{};
  c.batch = pick(1, 3);
  c.groups = pick(1, 3);
  c.channels = c.groups * pick(1, 40);
  c.height = pick(1, 23);
  c.width = pick(1, 23);
  c.term_batch_one = pick(0, 1) == 1;
  c.channels_last = pick(0, 1) == 1;
  return c;
}

// What the kernels compute, written with ATen on shaped tensors (the reference path's maths).
at::Tensor per_group(const at::Tensor& terms, const Case& c) {
  return terms.unsqueeze(2)
      .expand({terms.size(0), c.groups, c.channels / c.groups, c.height, c.width})
      .reshape({terms.size(0), c.channels, c.height, c.width});
}

template <typename Index, bool kChannelsLast>
D::OutputLayout<Index, kChannelsLast> layout_of(const Case& c) {
  return {static_cast<Index>(c.channels), static_cast<Index>(c.height * c.width),
          static_cast<Index>(c.channels / c.groups), static_cast<Index>(c.groups),
          c.term_batch_one};
}

// The forward kernel's loop body over raw memory: out[i] = out[i] * ratio[t] + bias[c] * valid[t].
template <bool kChannelsLast>
void renormalize_like_the_kernel(at::Tensor& out, const at::Tensor& ratio, const at::Tensor& valid,
                                 const at::Tensor& bias, const Case& c) {
  const auto layout = layout_of<uint32_t, kChannelsLast>(c);
  float* data = out.data_ptr<float>();
  const float* r = ratio.data_ptr<float>();
  const float* v = valid.data_ptr<float>();
  const float* b = bias.data_ptr<float>();
  for (uint32_t i = 0; i < static_cast<uint32_t>(out.numel()); ++i) {
    const uint32_t channel = layout.channel(i);
    const uint32_t t = layout.term(i, channel);
    data[i] = data[i] * r[t] + b[channel] * v[t];
  }
}

// The NCHW backward: one block per plane (n, c).
at::Tensor bias_sums_like_the_planes_kernel(const at::Tensor& grad, const at::Tensor& valid,
                                            const Case& c) {
  const auto layout = layout_of<uint32_t, false>(c);
  const float* g = grad.data_ptr<float>();
  const float* v = valid.data_ptr<float>();
  at::Tensor sums = at::zeros({c.batch, c.channels}, at::kDouble);
  for (uint32_t plane = 0; plane < static_cast<uint32_t>(c.batch * c.channels); ++plane) {
    const uint32_t first = plane * layout.plane;
    const uint32_t term_first = layout.term(first, plane % layout.channels);
    double sum = 0;
    for (uint32_t p = 0; p < layout.plane; ++p) sum += g[first + p] * v[term_first + p];
    sums.view({-1})[plane] = sum;
  }
  return sums.sum(0);
}

// The channels-last backward: row blocks of rows_per_block rows, channels in lanes of 32.
at::Tensor bias_sums_like_the_rows_kernel(const at::Tensor& grad, const at::Tensor& valid,
                                          const Case& c) {
  const auto layout = layout_of<uint32_t, true>(c);
  const int64_t total_rows = c.batch * c.height * c.width;
  const int64_t blocks = D::row_blocks(total_rows);
  const int64_t rows = D::rows_per_block(total_rows);
  EXPECT_GE(blocks * rows, total_rows);
  EXPECT_LT((blocks - 1) * rows, total_rows) << "an empty block";
  const float* g = grad.data_ptr<float>();
  const float* v = valid.data_ptr<float>();
  at::Tensor partial = at::zeros({blocks, c.channels}, at::kDouble);
  std::vector<int> visits(static_cast<size_t>(grad.numel()), 0);
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t first_row = block * rows;
    const int64_t last_row = std::min(first_row + rows, total_rows);
    for (int64_t channel = 0; channel < c.channels; ++channel) {
      double sum = 0;
      for (int64_t row = first_row; row < last_row; ++row) {
        const auto i = static_cast<uint32_t>(row * c.channels + channel);
        ++visits[i];
        sum += g[i] * v[layout.term(i, static_cast<uint32_t>(channel))];
      }
      partial[block][channel] = sum;
    }
  }
  for (const int count : visits) EXPECT_EQ(count, 1) << "every element exactly once";
  return partial.sum(0);
}

TEST(PartialConv2dIndex, EpilogueAndBiasSumsMatchAtenInBothLayouts) {
  std::mt19937 rng(21);
  for (int trial = 0; trial < 60; ++trial) {
    const Case c = random_case(rng);
    SCOPED_TRACE(c.str());
    const auto format =
        c.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
    const int64_t term_batch = c.term_batch_one ? 1 : c.batch;
    const auto raw = at::randn({c.batch, c.channels, c.height, c.width}).contiguous(format);
    const auto ratio = at::rand({term_batch, c.groups, c.height, c.width}) * 3;
    const auto valid = (at::rand({term_batch, c.groups, c.height, c.width}) > 0.3).to(at::kFloat);
    const auto bias = at::randn({c.channels});
    const auto expected =
        raw * per_group(ratio, c) + bias.view({1, -1, 1, 1}) * per_group(valid, c);

    at::Tensor out = raw.clone();  // keeps the memory format
    ASSERT_EQ(out.is_contiguous(format), true);
    if (c.channels_last && !out.is_contiguous()) {
      renormalize_like_the_kernel<true>(out, ratio, valid, bias, c);
    } else {
      renormalize_like_the_kernel<false>(out, ratio, valid, bias, c);
    }
    EXPECT_TRUE(at::allclose(out, expected, 1e-6, 1e-6));

    const auto grad = at::randn({c.batch, c.channels, c.height, c.width}).contiguous(format);
    const auto expected_bias = (grad * per_group(valid, c)).sum({0, 2, 3}).to(at::kDouble);
    const auto sums = c.channels_last && !grad.is_contiguous()
                          ? bias_sums_like_the_rows_kernel(grad, valid, c)
                          : bias_sums_like_the_planes_kernel(grad.contiguous(), valid, c);
    EXPECT_TRUE(at::allclose(sums, expected_bias, 1e-5, 1e-5));
  }
}

TEST(PartialConv2dIndex, RowBlocksCoverEveryRowOnce) {
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

TEST(PartialConv2dIndex, WindowSumsMatchABoxConvolution) {
  std::mt19937 rng(5);
  auto pick = [&](int64_t low, int64_t high) {
    return std::uniform_int_distribution<int64_t>(low, high)(rng);
  };
  for (int trial = 0; trial < 40; ++trial) {
    const D::WindowShape g{2 * pick(0, 3) + 1, 2 * pick(0, 3) + 1, pick(1, 3), pick(1, 3),
                           pick(0, 3),         pick(0, 3),         pick(1, 3), pick(1, 3)};
    const int64_t height = pick(1, 30);
    const int64_t width = pick(1, 30);
    const int64_t out_h =
        (height + 2 * g.pad_h - g.dilation_h * (g.kernel_h - 1) - 1) / g.stride_h + 1;
    const int64_t out_w =
        (width + 2 * g.pad_w - g.dilation_w * (g.kernel_w - 1) - 1) / g.stride_w + 1;
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

}  // namespace
