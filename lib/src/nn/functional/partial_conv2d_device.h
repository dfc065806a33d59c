// The CUDA kernels' own code (partial_conv2d_cuda.cu): their launch shapes, their index
// arithmetic and what each thread does, in a header that a host compiler reads too. The
// __global__ kernels are thin wrappers that pass blockIdx and threadIdx to the thread bodies
// here and do the block-wide reductions (cub, shared memory). The unit tests run these same
// bodies on the CPU, thread by thread over the launch grid the kernels use, and compare them
// with ATen (tests/unit/test_partial_conv2d_device.cpp), so that the kernels' arithmetic is
// checked where no GPU exists.
#pragma once

#include <ATen/OpMathType.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#if defined(__CUDACC__)
#define PCONV_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define PCONV_HOST_DEVICE inline
#endif

namespace pconv::nn::functional::detail {

// ---------------------------------------------------------------------------------------------
// Launch shapes

/// Threads per block of the elementwise kernels and of the NCHW backward on large planes.
constexpr int kThreads = 256;
/// The channels-last backward's block: 32 channel lanes (coalesced) x 8 row lanes.
constexpr int kChannelLanes = 32;
constexpr int kRowLanes = kThreads / kChannelLanes;

/// Blocks for a grid-stride kernel over `elements`: enough to fill a GPU several times over,
/// at most 65536; the kernels stride over the rest.
inline int64_t grid_for(int64_t elements) {
  const int64_t blocks = (elements + kThreads - 1) / kThreads;
  return blocks < 1 ? 1 : (blocks > (int64_t{1} << 16) ? int64_t{1} << 16 : blocks);
}

/// The NCHW backward gives each block one chunk of an output plane, of at most this many
/// elements: a few large planes (the UNet's last layer, 3 channels at full size) are then many
/// blocks, not a few that leave most of a GPU idle.
constexpr int64_t kPlaneChunk = 4096;

/// Chunks of the NCHW backward per output plane of `plane` elements (1 for an empty plane).
PCONV_HOST_DEVICE int64_t plane_chunks(int64_t plane) {
  return plane <= kPlaneChunk ? 1 : (plane + kPlaneChunk - 1) / kPlaneChunk;
}

/// Elements per chunk (the last one may be shorter): the plane split evenly.
PCONV_HOST_DEVICE int64_t plane_chunk_length(int64_t plane) {
  const int64_t chunks = plane_chunks(plane);
  return (plane + chunks - 1) / chunks;
}

/// Threads per block of the NCHW backward: small chunks (the deep layers' planes) get small
/// blocks, so that few threads sit idle.
inline int planes_block(int64_t chunk_length) { return chunk_length <= 64 ? 64 : kThreads; }

/// Where the NCHW backward's block `block` (chunk block % chunks of plane block / chunks = (n, c)
/// of an output with `channels` channels) writes its partial bias sum: row n x chunks + chunk,
/// column c of the (N x chunks, C) partial sums.
PCONV_HOST_DEVICE int64_t plane_chunk_sum_index(int64_t block, int64_t chunks, int64_t channels) {
  const int64_t plane_index = block / chunks;
  const int64_t n = plane_index / channels;
  return (n * chunks + block % chunks) * channels + plane_index % channels;
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

/// Rows of the backward's partial bias sums (rows, C) for an output of `batch` x `plane` pixels:
/// one per (n, chunk) in NCHW, one per row block in channels-last.
inline int64_t bias_sum_rows(int64_t batch, int64_t plane, bool channels_last) {
  return channels_last ? row_blocks(batch * plane) : batch * plane_chunks(plane);
}

// ---------------------------------------------------------------------------------------------
// Index arithmetic

/// Where element i of an (N, C, P) output (P = H' x W'), stored NCHW (channel-major) or
/// channels-last (channel-minor), finds its channel and its ratio/valid term in terms of shape
/// (N or 1, G, P), output channel c being in group c / (C / G). Index is uint32_t when every
/// offset fits, else int64_t.
template <typename Index, bool kChannelsLast>
struct OutputLayout {
  Index channels, plane, group_channels, groups;
  bool term_batch_one;

  /// For an output of `channels` channels of `plane` pixels each and terms with `groups`
  /// groups and a batch of 1 (`term_batch_one`) or N.
  static OutputLayout of(int64_t channels, int64_t plane, int64_t groups, bool term_batch_one) {
    return {static_cast<Index>(channels), static_cast<Index>(plane),
            static_cast<Index>(channels / groups), static_cast<Index>(groups), term_batch_one};
  }

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

/// The output size of a convolution along one dimension of `size` inputs, or 0 where the
/// dilated kernel does not fit the padded input (C++ division truncates towards zero, so the
/// usual formula alone would give 1 for a span of -1 and a stride of 2).
PCONV_HOST_DEVICE int64_t output_size(int64_t size, int64_t kernel, int64_t stride, int64_t pad,
                                      int64_t dilation) {
  const int64_t span = size + 2 * pad - dilation * (kernel - 1) - 1;
  return span < 0 ? 0 : span / stride + 1;
}

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

// ---------------------------------------------------------------------------------------------
// What follows the renormalisation at inference

/// The activation applied after the epilogue's optional BatchNorm.
enum class Activation : int { kNone = 0, kRelu = 1, kLeakyRelu = 2 };

/// At inference (no autograd), what the epilogue does after y = raw * ratio + bias * valid, per
/// output channel c: BatchNorm with running statistics, y = (y - mean[c]) * weight[c] /
/// sqrt(var[c] + eps) + bias[c] (none where `bn_weight` is null), then the activation, as
/// at::batch_norm in eval mode and at::relu / at::leaky_relu do it, then with `zero_holes`
/// y x valid (the holes of the updated mask zeroed, as the next layer would zero them). `Param`
/// is the element type of the layer's bias and these four vectors.
template <typename Param>
struct PostOp {
  const Param* bn_weight = nullptr;
  const Param* bn_bias = nullptr;
  const Param* bn_mean = nullptr;
  const Param* bn_var = nullptr;
  double eps = 0;
  Activation activation = Activation::kNone;
  double slope = 0;  // of kLeakyRelu
  bool zero_holes = false;
};

/// 1 / sqrt(value), the CUDA intrinsic on the device.
template <typename Op>
PCONV_HOST_DEVICE Op reciprocal_sqrt(Op value) {
#if defined(__CUDA_ARCH__)
  return rsqrt(value);
#else
  return Op(1) / std::sqrt(value);
#endif
}

/// y after `post`, for output channel c; y unchanged where `post` is empty.
template <typename Op, typename Param, typename Index>
PCONV_HOST_DEVICE Op apply_post(Op y, Index c, const PostOp<Param>& post) {
  if (post.bn_weight != nullptr) {
    const Op scale = static_cast<Op>(post.bn_weight[c]) *
                     reciprocal_sqrt(static_cast<Op>(post.bn_var[c]) + static_cast<Op>(post.eps));
    y = (y - static_cast<Op>(post.bn_mean[c])) * scale + static_cast<Op>(post.bn_bias[c]);
  }
  // Comparisons false for NaN, so NaN passes through both activations as it does in ATen.
  if (post.activation == Activation::kRelu) {
    y = y < Op(0) ? Op(0) : y;
  } else if (post.activation == Activation::kLeakyRelu) {
    y = y < Op(0) ? y * static_cast<Op>(post.slope) : y;
  }
  return y;
}

// ---------------------------------------------------------------------------------------------
// What each thread does

/// The terms' element type: float for float, half and bfloat16 outputs; double for double.
template <typename T>
using term_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

/// The valid counts a window sums: `first` x first_weight, plus `second` x second_weight where
/// `second` is not null (the UNet's decoder: its upsampled and skip masks times their channel
/// counts), each (N, G, H, W). Whole numbers, so every sum is exact.
template <typename Scalar>
struct CountPlanes {
  const Scalar* first = nullptr;
  Scalar first_weight = 1;
  const Scalar* second = nullptr;
  Scalar second_weight = 0;
};

/// Window terms, one thread of a grid-stride loop (`first` = the thread's global index, `step`
/// = the grid's thread count): ratio and valid (N, G, H', W') from the counts, and valid again
/// in `Mask` (the mask's or the features' type) where `valid_as` is not null.
template <typename Scalar, typename Index, typename Mask>
PCONV_HOST_DEVICE void window_terms_thread(Index first, Index step,
                                           const CountPlanes<Scalar>& counts,
                                           Scalar* __restrict__ ratio, Scalar* __restrict__ valid,
                                           Mask* __restrict__ valid_as, Index total, Index height,
                                           Index width, Index out_h, Index out_w,
                                           const WindowShape& g, Scalar window) {
  for (Index i = first; i < total; i += step) {
    const Index out_x = i % out_w;
    const Index out_y = (i / out_w) % out_h;
    const Index plane = (i / (out_w * out_h)) * height * width;
    // Counts are whole numbers: the sum is exact in any order.
    Scalar sum =
        counts.first_weight * window_sum(counts.first + plane, height, width, out_y, out_x, g);
    if (counts.second != nullptr) {
      sum +=
          counts.second_weight * window_sum(counts.second + plane, height, width, out_y, out_x, g);
    }
    const bool seen = sum > 0;
    ratio[i] = seen ? window / sum : Scalar(0);
    valid[i] = seen ? Scalar(1) : Scalar(0);
    if (valid_as != nullptr) valid_as[i] = static_cast<Mask>(seen ? 1.0F : 0.0F);
  }
}

/// The prologue's block: `pixel_lanes` x `channel_lanes` threads (kThreads in all), with as many
/// channel lanes as a group has channels, rounded up to a power of two, at most 32: every
/// thread then walks few channels, however many the layer has.
PCONV_HOST_DEVICE int64_t prologue_channel_lanes(int64_t group_channels) {
  int64_t lanes = 1;
  while (lanes < group_channels && lanes < 32) lanes *= 2;
  return lanes;
}

/// The prologue for a multi-channel mask of the input's shape and layout, (N, C, P) with P =
/// H x W pixels stored NCHW or channels-last: masked = input x mask, and per pixel and group
/// the valid count, the mask summed over the group's channels (counts (N, G, P)), in one pass
/// over input and mask. Block `block` takes `pixel_lanes` consecutive items (n, g, p) of the
/// N x G x P; thread (lane_x, lane_y) takes item block x pixel_lanes + lane_x and its group's
/// channels lane_y, lane_y + channel_lanes, ...: it writes their masked values and returns its
/// share of the item's count (0 past the last item); the block adds the shares. The product is
/// in float (double for double), as ATen's mul does it.
template <typename Scalar, typename Index, bool kChannelsLast>
PCONV_HOST_DEVICE term_t<Scalar> mask_and_count_thread(Index block, Index lane_x, Index lane_y,
                                                       Index pixel_lanes, Index channel_lanes,
                                                       const Scalar* __restrict__ input,
                                                       const Scalar* __restrict__ mask,
                                                       Scalar* __restrict__ masked, Index total,
                                                       Index channels, Index groups, Index plane) {
  using Op = at::opmath_type<Scalar>;
  term_t<Scalar> count = 0;
  const Index item = block * pixel_lanes + lane_x;
  if (item >= total) return count;
  const Index group_channels = channels / groups;
  const Index p = item % plane;
  const Index g = (item / plane) % groups;
  const Index n = item / (plane * groups);
  for (Index k = lane_y; k < group_channels; k += channel_lanes) {
    const Index c = g * group_channels + k;
    const Index j = kChannelsLast ? (n * plane + p) * channels + c : (n * channels + c) * plane + p;
    const Scalar m = mask[j];
    masked[j] = static_cast<Scalar>(static_cast<Op>(input[j]) * static_cast<Op>(m));
    count += static_cast<term_t<Scalar>>(m);
  }
  return count;
}

/// The epilogue out = out * ratio + bias * valid in place (bias may be null), then `post`, one
/// thread of a grid-stride loop; the bias (and post's vectors) in `Param`, the output's type or
/// the terms'; the arithmetic is in float (double for double).
template <typename Scalar, typename Index, bool kChannelsLast, typename Param>
PCONV_HOST_DEVICE void renormalize_thread(Index first, Index step, Scalar* __restrict__ out,
                                          const term_t<Scalar>* __restrict__ ratio,
                                          const term_t<Scalar>* __restrict__ valid,
                                          const Param* __restrict__ bias, Index total,
                                          const OutputLayout<Index, kChannelsLast>& layout,
                                          const PostOp<Param>& post) {
  using Op = at::opmath_type<Scalar>;
  for (Index i = first; i < total; i += step) {
    const Index c = layout.channel(i);
    const Index t = layout.term(i, c);
    Op y = static_cast<Op>(out[i]) * static_cast<Op>(ratio[t]);
    if (bias != nullptr) y += static_cast<Op>(bias[c]) * static_cast<Op>(valid[t]);
    y = apply_post(y, c, post);
    // Rounded to Scalar first, as the separate multiply did it (a half overflowing to inf in a
    // hole gives NaN there, as before).
    if (post.zero_holes) y = static_cast<Op>(static_cast<Scalar>(y)) * static_cast<Op>(valid[t]);
    out[i] = static_cast<Scalar>(y);
  }
}

/// The UNet decoder's input at inference, cat({upsample_nearest2d(features, 2x), skip}, 1),
/// one thread of a grid-stride loop over the output (N, C1 + C2, H, W): element (n, c, y, x) is
/// features (N, C1, H/2, W/2) at (n, c, y/2, x/2) for c < C1, else skip (N, C2, H, W) at
/// (n, c - C1, y, x); the three all NCHW or all channels-last.
template <typename Scalar, typename Index, bool kChannelsLast>
PCONV_HOST_DEVICE void concat_upsampled_thread(Index first, Index step,
                                               const Scalar* __restrict__ features,
                                               const Scalar* __restrict__ skip,
                                               Scalar* __restrict__ out, Index total,
                                               Index up_channels, Index skip_channels, Index height,
                                               Index width) {
  const Index channels = up_channels + skip_channels;
  const Index half_h = height / 2;
  const Index half_w = width / 2;
  for (Index i = first; i < total; i += step) {
    Index c;
    Index pixel;  // (n x H + y) x W + x
    if (kChannelsLast) {
      c = i % channels;
      pixel = i / channels;
    } else {
      const Index plane = height * width;
      c = (i / plane) % channels;
      pixel = i / plane / channels * plane + i % plane;
    }
    const Index x = pixel % width;
    const Index y = (pixel / width) % height;
    const Index n = pixel / width / height;
    if (c < up_channels) {
      const Index source = (n * half_h + y / 2) * half_w + x / 2;  // (n, y/2, x/2)
      out[i] = kChannelsLast
                   ? features[source * up_channels + c]
                   : features[(n * up_channels + c) * half_h * half_w + (y / 2) * half_w + x / 2];
    } else {
      const Index s = c - up_channels;
      out[i] = kChannelsLast ? skip[pixel * skip_channels + s]
                             : skip[(n * skip_channels + s) * height * width + y * width + x];
    }
  }
}

/// NCHW backward, thread `thread` of the `threads` in block `block`, which has chunk
/// block % chunks (of `chunk_length` elements; the last may be shorter) of output plane
/// block / chunks = (n, c): writes grad_raw = grad * ratio over its share of the chunk and
/// returns its share of the chunk's sum of grad * valid (the block adds the shares).
template <typename Scalar, typename Index>
PCONV_HOST_DEVICE at::opmath_type<Scalar> renormalize_backward_plane_thread(
    Index block, Index chunks, Index chunk_length, Index thread, Index threads,
    const Scalar* __restrict__ grad, Scalar* __restrict__ grad_raw,
    const term_t<Scalar>* __restrict__ ratio, const term_t<Scalar>* __restrict__ valid,
    const OutputLayout<Index, false>& layout) {
  using Op = at::opmath_type<Scalar>;
  const Index plane_index = block / chunks;
  const Index begin = (block % chunks) * chunk_length;
  const Index end = begin + chunk_length < layout.plane ? begin + chunk_length : layout.plane;
  const Index first = plane_index * layout.plane;
  const Index term_first = layout.term(first, plane_index % layout.channels);
  Op sum = 0;
  for (Index p = begin + thread; p < end; p += threads) {
    const Op g = static_cast<Op>(grad[first + p]);
    grad_raw[first + p] = static_cast<Scalar>(g * static_cast<Op>(ratio[term_first + p]));
    sum += g * static_cast<Op>(valid[term_first + p]);
  }
  return sum;
}

/// Channels-last backward: the output is a (rows = N x P, C) matrix and block `block` handles
/// rows [block x rows, (block + 1) x rows). For the channels from `first_channel` on, thread
/// (lane_x, lane_y) takes channel first_channel + lane_x (coalesced) and every kRowLanes-th row
/// from lane_y: it writes grad_raw = grad * ratio and returns its share of the channel's sum
/// of grad * valid (0 past the last channel).
template <typename Scalar, typename Index>
PCONV_HOST_DEVICE at::opmath_type<Scalar> renormalize_backward_rows_thread(
    Index block, Index first_channel, Index lane_x, Index lane_y, const Scalar* __restrict__ grad,
    Scalar* __restrict__ grad_raw, const term_t<Scalar>* __restrict__ ratio,
    const term_t<Scalar>* __restrict__ valid, Index total_rows, Index rows,
    const OutputLayout<Index, true>& layout) {
  using Op = at::opmath_type<Scalar>;
  const Index c = first_channel + lane_x;
  Op sum = 0;
  if (c >= layout.channels) return sum;
  const Index first_row = block * rows;
  const Index last_row = first_row + rows < total_rows ? first_row + rows : total_rows;
  for (Index row = first_row + lane_y; row < last_row; row += kRowLanes) {
    const Index i = row * layout.channels + c;
    const Index t = layout.term(i, c);
    const Op g = static_cast<Op>(grad[i]);
    grad_raw[i] = static_cast<Scalar>(g * static_cast<Op>(ratio[t]));
    sum += g * static_cast<Op>(valid[t]);
  }
  return sum;
}

/// The bias gradient from the backward's partial sums (rows, channels), one block of kThreads
/// threads per channel: thread `thread` adds rows thread, thread + kThreads, ... of the
/// channel's column and returns its share; the block adds the shares (cub, a fixed order:
/// deterministic) and writes the total in the bias's own type.
template <typename Term, typename Index>
PCONV_HOST_DEVICE Term bias_gradient_thread(Index channel, Index thread,
                                            const Term* __restrict__ partial_sums, Index rows,
                                            Index channels) {
  Term share = 0;
  for (Index row = thread; row < rows; row += kThreads) {
    share += partial_sums[row * channels + channel];
  }
  return share;
}

/// The block's row-lane shares of channel first_channel + lane_x added in a fixed order and
/// written to partial_sums[block][c] (summed over the blocks afterwards, deterministically).
/// Run by the threads with lane_y = 0, after every share is in `partial`.
template <typename Op, typename Index>
PCONV_HOST_DEVICE void renormalize_backward_rows_combine(
    const Op (&partial)[kRowLanes][kChannelLanes + 1], Index block, Index first_channel,
    Index lane_x, Index channels, term_t<Op>* __restrict__ partial_sums) {
  const Index c = first_channel + lane_x;
  if (c >= channels) return;
  Op total = 0;
  for (const auto& lanes : partial) total += lanes[lane_x];  // row lane 0 first: a fixed order
  partial_sums[static_cast<int64_t>(block) * channels + c] = static_cast<term_t<Op>>(total);
}

}  // namespace pconv::nn::functional::detail
