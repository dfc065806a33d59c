// CUDA kernels behind pconv::nn::functional::partial_conv2d (see partial_conv2d_kernels.h):
// the window terms in one pass over the output (window sums of the valid counts, ratio and
// valid together), and the epilogue y = raw * ratio + bias * valid with its backward
// (grad_raw = grad * ratio and the bias gradient, the sum of grad * valid, in one pass).
// Element types: float, double, half and bfloat16 for the convolution output, with the
// arithmetic in float (double for double); the terms are float (double for double) as the
// reference path makes them. Both NCHW and channels-last outputs are handled in place.
#include "partial_conv2d_index.h"
#include "partial_conv2d_kernels.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

#include <cub/block/block_reduce.cuh>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace pconv::nn::functional::detail::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kChannelLanes = 32;
constexpr int kRowLanes = kThreads / kChannelLanes;

// Enough blocks to fill the GPU several times over; the kernels stride over the rest.
int64_t grid_for(int64_t elements) {
  return std::clamp<int64_t>((elements + kThreads - 1) / kThreads, 1, int64_t{1} << 16);
}

// float for float, half and bfloat16; double for double.
template <typename T>
using term_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename Index, bool kChannelsLast>
using Layout = OutputLayout<Index, kChannelsLast>;

template <typename Scalar, typename Index>
__global__ void window_terms_kernel(const Scalar* __restrict__ counts, Scalar* __restrict__ ratio,
                                    Scalar* __restrict__ valid, Index total, Index height,
                                    Index width, Index out_h, Index out_w, WindowShape g,
                                    Scalar window) {
  for (Index i = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<Index>(gridDim.x) * blockDim.x) {
    const Index out_x = i % out_w;
    const Index out_y = (i / out_w) % out_h;
    const Scalar* plane = counts + (i / (out_w * out_h)) * height * width;
    // Counts are whole numbers: the sum is exact in any order.
    const Scalar sum = window_sum(plane, height, width, out_y, out_x, g);
    const bool seen = sum > 0;
    ratio[i] = seen ? window / sum : Scalar(0);
    valid[i] = seen ? Scalar(1) : Scalar(0);
  }
}

template <typename Scalar, typename Index, bool kChannelsLast>
__global__ void renormalize_kernel(Scalar* __restrict__ out,
                                   const term_t<Scalar>* __restrict__ ratio,
                                   const term_t<Scalar>* __restrict__ valid,
                                   const term_t<Scalar>* __restrict__ bias, Index total,
                                   Layout<Index, kChannelsLast> layout) {
  using Op = at::opmath_type<Scalar>;
  for (Index i = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<Index>(gridDim.x) * blockDim.x) {
    const Index c = layout.channel(i);
    const Index t = layout.term(i, c);
    Op y = static_cast<Op>(out[i]) * static_cast<Op>(ratio[t]);
    if (bias != nullptr) y += static_cast<Op>(bias[c]) * static_cast<Op>(valid[t]);
    out[i] = static_cast<Scalar>(y);
  }
}

// NCHW backward: block b handles plane b = (n, c), writing grad_raw and, when `plane_sums` is
// given, the plane's sum of grad * valid (summed over n afterwards, deterministically).
template <typename Scalar, typename Index, int kBlock>
__global__ void renormalize_backward_planes_kernel(const Scalar* __restrict__ grad,
                                                   Scalar* __restrict__ grad_raw,
                                                   const term_t<Scalar>* __restrict__ ratio,
                                                   const term_t<Scalar>* __restrict__ valid,
                                                   term_t<Scalar>* __restrict__ plane_sums,
                                                   Layout<Index, false> layout) {
  using Op = at::opmath_type<Scalar>;
  const Index plane_index = blockIdx.x;
  const Index first = plane_index * layout.plane;
  const Index c = plane_index % layout.channels;
  const Index term_first = layout.term(first, c);
  Op sum = 0;
  for (Index p = threadIdx.x; p < layout.plane; p += kBlock) {
    const Op g = static_cast<Op>(grad[first + p]);
    grad_raw[first + p] = static_cast<Scalar>(g * static_cast<Op>(ratio[term_first + p]));
    sum += g * static_cast<Op>(valid[term_first + p]);
  }
  if (plane_sums == nullptr) return;
  using Reduce = cub::BlockReduce<Op, kBlock>;
  __shared__ typename Reduce::TempStorage storage;
  const Op total = Reduce(storage).Sum(sum);
  if (threadIdx.x == 0) plane_sums[plane_index] = static_cast<term_t<Scalar>>(total);
}

// Channels-last backward: the output is a (rows = N x P, C) matrix. Block b handles a run of
// `rows` consecutive rows with 32 x 8 threads: x walks 32 channels at a time (coalesced), y
// strides over the rows; the 8 partial sums of each channel are added in shared memory and
// written to partial_sums[b][c] (summed over b afterwards, deterministically).
template <typename Scalar, typename Index>
__global__ void renormalize_backward_rows_kernel(const Scalar* __restrict__ grad,
                                                 Scalar* __restrict__ grad_raw,
                                                 const term_t<Scalar>* __restrict__ ratio,
                                                 const term_t<Scalar>* __restrict__ valid,
                                                 term_t<Scalar>* __restrict__ partial_sums,
                                                 Index total_rows, Index rows,
                                                 Layout<Index, true> layout) {
  using Op = at::opmath_type<Scalar>;
  __shared__ Op partial[kRowLanes][kChannelLanes + 1];
  const Index first_row = blockIdx.x * rows;
  const Index last_row = first_row + rows < total_rows ? first_row + rows : total_rows;
  for (Index first_channel = 0; first_channel < layout.channels; first_channel += kChannelLanes) {
    const Index c = first_channel + threadIdx.x;
    Op sum = 0;
    if (c < layout.channels) {
      for (Index row = first_row + threadIdx.y; row < last_row; row += kRowLanes) {
        const Index i = row * layout.channels + c;
        const Index t = layout.term(i, c);
        const Op g = static_cast<Op>(grad[i]);
        grad_raw[i] = static_cast<Scalar>(g * static_cast<Op>(ratio[t]));
        sum += g * static_cast<Op>(valid[t]);
      }
    }
    if (partial_sums == nullptr) continue;
    partial[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && c < layout.channels) {
      Op total = 0;
      for (int lane = 0; lane < kRowLanes; ++lane) total += partial[lane][threadIdx.x];
      partial_sums[static_cast<int64_t>(blockIdx.x) * layout.channels + c] =
          static_cast<term_t<Scalar>>(total);
    }
    __syncthreads();
  }
}

template <typename Index, bool kChannelsLast>
Layout<Index, kChannelsLast> layout_of(const at::TensorBase& output, const at::TensorBase& ratio) {
  const int64_t channels = output.size(1);
  const int64_t groups = ratio.size(1);
  return {static_cast<Index>(channels), static_cast<Index>(output.size(2) * output.size(3)),
          static_cast<Index>(channels / groups), static_cast<Index>(groups), ratio.size(0) == 1};
}

bool fits_32_bit(const at::TensorBase& tensor) {
  return tensor.numel() < std::numeric_limits<int32_t>::max();
}

// Calls f with a value of the index type: uint32_t where the tensor is small enough, else int64_t.
template <typename F>
void with_index_type(const at::TensorBase& tensor, F&& f) {
  if (fits_32_bit(tensor)) {
    f(uint32_t{});
  } else {
    f(int64_t{});
  }
}

}  // namespace

void window_terms(const at::TensorBase& counts, double window, const WindowGeometry& geometry,
                  const at::TensorBase& ratio, const at::TensorBase& valid) {
  const c10::cuda::CUDAGuard guard(counts.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t total = ratio.numel();
  if (total == 0) return;
  const WindowShape window_geometry{geometry.kernel[0],   geometry.kernel[1],  geometry.stride[0],
                                    geometry.stride[1],   geometry.padding[0], geometry.padding[1],
                                    geometry.dilation[0], geometry.dilation[1]};
  AT_DISPATCH_FLOATING_TYPES(counts.scalar_type(), "pconv_window_terms_cuda", [&] {
    with_index_type(counts.numel() > total ? counts : ratio, [&](auto index) {
      using Index = decltype(index);
      window_terms_kernel<scalar_t, Index><<<grid_for(total), kThreads, 0, stream>>>(
          counts.const_data_ptr<scalar_t>(), ratio.mutable_data_ptr<scalar_t>(),
          valid.mutable_data_ptr<scalar_t>(), static_cast<Index>(total),
          static_cast<Index>(counts.size(2)), static_cast<Index>(counts.size(3)),
          static_cast<Index>(ratio.size(2)), static_cast<Index>(ratio.size(3)), window_geometry,
          static_cast<scalar_t>(window));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void renormalize(const at::TensorBase& raw, const at::TensorBase& bias, const at::TensorBase& ratio,
                 const at::TensorBase& valid, bool channels_last) {
  const c10::cuda::CUDAGuard guard(raw.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t total = raw.numel();
  if (total == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, raw.scalar_type(), "pconv_renormalize_cuda", [&] {
        using Term = term_t<scalar_t>;
        const Term* bias_data = bias.defined() ? bias.const_data_ptr<Term>() : nullptr;
        with_index_type(raw, [&](auto index) {
          using Index = decltype(index);
          if (channels_last) {
            renormalize_kernel<scalar_t, Index, true><<<grid_for(total), kThreads, 0, stream>>>(
                raw.mutable_data_ptr<scalar_t>(), ratio.const_data_ptr<Term>(),
                valid.const_data_ptr<Term>(), bias_data, static_cast<Index>(total),
                layout_of<Index, true>(raw, ratio));
          } else {
            renormalize_kernel<scalar_t, Index, false><<<grid_for(total), kThreads, 0, stream>>>(
                raw.mutable_data_ptr<scalar_t>(), ratio.const_data_ptr<Term>(),
                valid.const_data_ptr<Term>(), bias_data, static_cast<Index>(total),
                layout_of<Index, false>(raw, ratio));
          }
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
}

void renormalize_backward(const at::TensorBase& grad, const at::TensorBase& ratio,
                          const at::TensorBase& valid, bool channels_last,
                          const at::TensorBase& grad_raw, const at::TensorBase& bias_sums) {
  const c10::cuda::CUDAGuard guard(grad.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (grad.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad.scalar_type(), "pconv_renormalize_backward_cuda", [&] {
        using Term = term_t<scalar_t>;
        Term* sums = bias_sums.defined() ? bias_sums.mutable_data_ptr<Term>() : nullptr;
        with_index_type(grad, [&](auto index) {
          using Index = decltype(index);
          if (channels_last) {
            const auto layout = layout_of<Index, true>(grad, ratio);
            const int64_t total_rows = grad.size(0) * grad.size(2) * grad.size(3);
            const int64_t blocks = row_blocks(total_rows);
            const int64_t rows = rows_per_block(total_rows);
            renormalize_backward_rows_kernel<scalar_t, Index>
                <<<blocks, dim3(kChannelLanes, kRowLanes), 0, stream>>>(
                    grad.const_data_ptr<scalar_t>(), grad_raw.mutable_data_ptr<scalar_t>(),
                    ratio.const_data_ptr<Term>(), valid.const_data_ptr<Term>(), sums,
                    static_cast<Index>(total_rows), static_cast<Index>(rows), layout);
          } else {
            const auto layout = layout_of<Index, false>(grad, ratio);
            const int64_t planes = grad.size(0) * grad.size(1);
        TORCH_CHECK(planes <= std::numeric_limits<int32_t>::max(),
                    "partial_conv2d: too many output planes for one launch: ", planes);
            // Small planes (the deep layers) get small blocks, so that few threads sit idle.
            if (layout.plane <= 64) {
              renormalize_backward_planes_kernel<scalar_t, Index, 64><<<planes, 64, 0, stream>>>(
                  grad.const_data_ptr<scalar_t>(), grad_raw.mutable_data_ptr<scalar_t>(),
                  ratio.const_data_ptr<Term>(), valid.const_data_ptr<Term>(), sums, layout);
            } else {
              renormalize_backward_planes_kernel<scalar_t, Index, kThreads>
                  <<<planes, kThreads, 0, stream>>>(
                      grad.const_data_ptr<scalar_t>(), grad_raw.mutable_data_ptr<scalar_t>(),
                      ratio.const_data_ptr<Term>(), valid.const_data_ptr<Term>(), sums, layout);
            }
          }
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
}

}  // namespace pconv::nn::functional::detail::cuda
