// The index arithmetic of the CUDA kernels (partial_conv2d_cuda.cu), in a header that a host
// compiler reads too, so that the unit tests check it on the CPU against ATen where no GPU
// exists (tests/unit/test_partial_conv2d_index.cpp).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define PCONV_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define PCONV_HOST_DEVICE inline
#endif

namespace pconv::nn::functional::detail {

/// Where element i of an (N, C, P) output (P = H' x W'), stored NCHW (channel-major) or
/// channels-last (channel-minor), finds its channel and its ratio/valid term in terms of shape
/// (N or 1, G, P), output channel c being in group c / (C / G). Index is uint32_t when every
/// offset fits, else int64_t.
template <typename Index, bool kChannelsLast>
struct OutputLayout {
  Index channels, plane, group_channels, groups;
  bool term_batch_one;

  PCONV_HOST_DEVICE Index channel(Index i) const {
    return kChannelsLast ? i % channels : (i / plane) % channels;
  }
  PCONV_HOST_DEVICE Index term(Index i, Index c) const {
    const Index n = term_batch_one ? Index{0} : i / (plane * channels);
    const Index p = kChannelsLast ? (i / channels) % plane : i % plane;
    return (n * groups + c / group_channels) * plane + p;
  }
};

/// A window's geometry as plain numbers.
struct WindowShape {
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
};

/// The sum of `plane` (height x width, row-major) over the window of output pixel
/// (out_y, out_x), zero outside. Exact for whole numbers in any order.
template <typename Scalar>
PCONV_HOST_DEVICE Scalar window_sum(const Scalar* plane, int64_t height, int64_t width,
                                    int64_t out_y, int64_t out_x, const WindowShape& g) {
  Scalar sum = 0;
  for (int64_t ky = 0; ky < g.kernel_h; ++ky) {
    const int64_t y = out_y * g.stride_h - g.pad_h + ky * g.dilation_h;
    if (y < 0 || y >= height) continue;
    for (int64_t kx = 0; kx < g.kernel_w; ++kx) {
      const int64_t x = out_x * g.stride_w - g.pad_w + kx * g.dilation_w;
      if (x >= 0 && x < width) sum += plane[y * width + x];
    }
  }
  return sum;
}

/// The channels-last backward splits the N x P rows into blocks of this many rows (the last
/// one shorter): about 64 rows per block, at most 2048 blocks.
PCONV_HOST_DEVICE int64_t rows_per_block(int64_t rows) {
  const int64_t blocks_wanted = (rows + 63) / 64;
  const int64_t blocks = blocks_wanted < 1 ? 1 : (blocks_wanted > 2048 ? 2048 : blocks_wanted);
  return (rows + blocks - 1) / blocks;
}

/// How many blocks that makes (the first dimension of the partial bias sums).
PCONV_HOST_DEVICE int64_t row_blocks(int64_t rows) {
  const int64_t per_block = rows_per_block(rows);
  return per_block == 0 ? 1 : (rows + per_block - 1) / per_block;
}

}  // namespace pconv::nn::functional::detail
