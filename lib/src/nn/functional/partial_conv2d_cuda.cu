// CUDA kernels behind pconv::nn::functional::partial_conv2d (see partial_conv2d_kernels.h):
// the window terms in one pass over the output (window sums of the valid counts, ratio and
// valid together), and the epilogue y = raw * ratio + bias * valid with its backward
// (grad_raw = grad * ratio and the bias gradient, the sum of grad * valid, in one pass).
// Element types: float, double, half and bfloat16 for the convolution output, with the
// arithmetic in float (double for double); the terms are float (double for double) as the
// reference path makes them. Both NCHW and channels-last outputs are handled in place.
#include "partial_conv2d_device.h"
#include "partial_conv2d_kernels.h"

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

#include <cub/block/block_reduce.cuh>

#include <array>
#include <atomic>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace pconv::nn::functional::detail::cuda {
namespace {

template <typename Index, bool kChannelsLast>
using Layout = OutputLayout<Index, kChannelsLast>;

// The kernels: each thread runs its body from partial_conv2d_device.h, where the unit tests
// run the same bodies on the CPU.

template <typename Scalar, typename Index, typename Mask>
__global__ void window_terms_kernel(CountPlanes<Scalar> counts, Scalar* __restrict__ ratio,
                                    Scalar* __restrict__ valid, Mask* __restrict__ valid_as,
                                    Index total, Index height, Index width, Index out_h,
                                    Index out_w, WindowShape g, Scalar window) {
  window_terms_thread<Scalar, Index, Mask>(
      blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x,
      static_cast<Index>(gridDim.x) * blockDim.x, counts, ratio, valid, valid_as, total, height,
      width, out_h, out_w, g, window);
}

template <typename Scalar, typename Index, bool kChannelsLast, typename Param>
__global__ void renormalize_kernel(Scalar* __restrict__ out,
                                   const term_t<Scalar>* __restrict__ ratio,
                                   const term_t<Scalar>* __restrict__ valid,
                                   const Param* __restrict__ bias, Index total,
                                   Layout<Index, kChannelsLast> layout, PostOp<Param> post) {
  renormalize_thread<Scalar, Index, kChannelsLast, Param>(
      blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x,
      static_cast<Index>(gridDim.x) * blockDim.x, out, ratio, valid, bias, total, layout, post);
}

template <typename Scalar, typename Index, bool kChannelsLast>
__global__ void concat_upsampled_kernel(const Scalar* __restrict__ features,
                                        const Scalar* __restrict__ skip, Scalar* __restrict__ out,
                                        Index total, Index up_channels, Index skip_channels,
                                        Index height, Index width) {
  concat_upsampled_thread<Scalar, Index, kChannelsLast>(
      blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x,
      static_cast<Index>(gridDim.x) * blockDim.x, features, skip, out, total, up_channels,
      skip_channels, height, width);
}

// The prologue: block b takes `pixel_lanes` items (n, g, p), with `channel_lanes` channel lanes
// each; the lanes' shares of each count meet in shared memory and the threads of channel lane
// 0 add them. The lanes along which memory is contiguous are threadIdx.x, so that a warp's
// accesses coalesce: the pixels in NCHW, the channels in channels-last.
template <typename Scalar, typename Index, bool kChannelsLast>
__global__ void mask_and_count_kernel(const Scalar* __restrict__ input,
                                      const Scalar* __restrict__ mask, Scalar* __restrict__ masked,
                                      term_t<Scalar>* __restrict__ counts, Index total,
                                      Index channels, Index groups, Index plane) {
  using Term = term_t<Scalar>;
  __shared__ Term partial[kThreads];
  const Index pixel_lane = kChannelsLast ? threadIdx.y : threadIdx.x;
  const Index channel_lane = kChannelsLast ? threadIdx.x : threadIdx.y;
  const Index pixel_lanes = kChannelsLast ? blockDim.y : blockDim.x;
  const Index channel_lanes = kChannelsLast ? blockDim.x : blockDim.y;
  const Term share = mask_and_count_thread<Scalar, Index, kChannelsLast>(
      blockIdx.x, pixel_lane, channel_lane, pixel_lanes, channel_lanes, input, mask, masked, total,
      channels, groups, plane);
  partial[channel_lane * pixel_lanes + pixel_lane] = share;
  __syncthreads();
  const Index item = blockIdx.x * pixel_lanes + pixel_lane;
  if (channel_lane != 0 || item >= total) return;
  Term count = 0;
  for (Index lane = 0; lane < channel_lanes; ++lane) {
    count += partial[lane * pixel_lanes + pixel_lane];
  }
  counts[item] = count;
}

// The bias gradient: block c adds channel c's partial sums.
template <typename Term, typename Param, typename Index>
__global__ void bias_gradient_kernel(const Term* __restrict__ partial_sums,
                                     Param* __restrict__ grad_bias, Index rows, Index channels) {
  const Index channel = blockIdx.x;
  const Term share =
      bias_gradient_thread<Term, Index>(channel, threadIdx.x, partial_sums, rows, channels);
  using Reduce = cub::BlockReduce<Term, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  const Term total = Reduce(storage).Sum(share);
  if (threadIdx.x == 0) grad_bias[channel] = static_cast<Param>(total);
}

// NCHW backward: block b handles chunk b % chunks of plane b / chunks = (n, c), writing grad_raw
// and, when `partial_sums` is given, the chunk's sum of grad * valid to row n x chunks + chunk,
// column c (summed over the rows afterwards, deterministically).
template <typename Scalar, typename Index, int kBlock>
__global__ void renormalize_backward_planes_kernel(const Scalar* __restrict__ grad,
                                                   Scalar* __restrict__ grad_raw,
                                                   const term_t<Scalar>* __restrict__ ratio,
                                                   const term_t<Scalar>* __restrict__ valid,
                                                   term_t<Scalar>* __restrict__ partial_sums,
                                                   Index chunks, Index chunk_length,
                                                   Layout<Index, false> layout) {
  using Op = at::opmath_type<Scalar>;
  const Index block = blockIdx.x;
  const Op sum = renormalize_backward_plane_thread<Scalar, Index>(
      block, chunks, chunk_length, threadIdx.x, kBlock, grad, grad_raw, ratio, valid, layout);
  if (partial_sums == nullptr) return;  // the same for the whole block
  using Reduce = cub::BlockReduce<Op, kBlock>;
  __shared__ typename Reduce::TempStorage storage;
  const Op total = Reduce(storage).Sum(sum);
  if (threadIdx.x == 0) {
    partial_sums[plane_chunk_sum_index(block, chunks, layout.channels)] =
        static_cast<term_t<Scalar>>(total);
  }
}

// Channels-last backward: block b handles a run of `rows` consecutive rows with
// kChannelLanes x kRowLanes threads, kChannelLanes channels at a time; the row lanes' shares of
// each channel meet in shared memory and go to partial_sums[b][c] (summed over b afterwards,
// deterministically).
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
  const Index block = blockIdx.x;
  for (Index first_channel = 0; first_channel < layout.channels; first_channel += kChannelLanes) {
    const Op sum = renormalize_backward_rows_thread<Scalar, Index>(
        block, first_channel, threadIdx.x, threadIdx.y, grad, grad_raw, ratio, valid, total_rows,
        rows, layout);
    if (partial_sums == nullptr) continue;  // the same for the whole block
    partial[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0) {
      renormalize_backward_rows_combine<Op, Index>(partial, block, first_channel, threadIdx.x,
                                                   layout.channels, partial_sums);
    }
    __syncthreads();
  }
}

template <typename Index, bool kChannelsLast>
Layout<Index, kChannelsLast> layout_of(const at::TensorBase& output, const at::TensorBase& ratio) {
  return Layout<Index, kChannelsLast>::of(output.size(1), output.size(2) * output.size(3),
                                          ratio.size(1), ratio.size(0) == 1);
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

void window_terms(const at::TensorBase& counts, double weight, const at::TensorBase& second,
                  double second_weight, double window, const WindowGeometry& geometry,
                  const at::TensorBase& ratio, const at::TensorBase& valid,
                  const at::TensorBase& valid_as) {
  const c10::cuda::CUDAGuard guard(counts.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t total = ratio.numel();
  if (total == 0) return;
  const WindowShape window_geometry{geometry.kernel[0],   geometry.kernel[1],  geometry.stride[0],
                                    geometry.stride[1],   geometry.padding[0], geometry.padding[1],
                                    geometry.dilation[0], geometry.dilation[1]};
  AT_DISPATCH_FLOATING_TYPES(counts.scalar_type(), "pconv_window_terms_cuda", [&] {
    using Counts = scalar_t;
    CountPlanes<Counts> planes;
    planes.first = counts.const_data_ptr<Counts>();
    planes.first_weight = static_cast<Counts>(weight);
    if (second.defined()) {
      planes.second = second.const_data_ptr<Counts>();
      planes.second_weight = static_cast<Counts>(second_weight);
    }
    // valid_as's type: none (the terms' type stands in, with a null pointer), or any floating.
    const auto mask_type = valid_as.defined() ? valid_as.scalar_type() : counts.scalar_type();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, mask_type, "pconv_window_terms_cuda", [&] {
          using Mask = scalar_t;
          Mask* valid_as_data = valid_as.defined() ? valid_as.mutable_data_ptr<Mask>() : nullptr;
          with_index_type(counts.numel() > total ? counts : ratio, [&](auto index) {
            using Index = decltype(index);
            window_terms_kernel<Counts, Index, Mask><<<grid_for(total), kThreads, 0, stream>>>(
                planes, ratio.mutable_data_ptr<Counts>(), valid.mutable_data_ptr<Counts>(),
                valid_as_data, static_cast<Index>(total), static_cast<Index>(counts.size(2)),
                static_cast<Index>(counts.size(3)), static_cast<Index>(ratio.size(2)),
                static_cast<Index>(ratio.size(3)), window_geometry, static_cast<Counts>(window));
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          });
        });
  });
}

namespace {

template <typename Param>
const Param* data_or_null(const at::TensorBase& tensor) {
  return tensor.defined() ? tensor.const_data_ptr<Param>() : nullptr;
}

// The epilogue's launch with the bias and post's vectors in Param.
template <typename Scalar, typename Param>
void launch_renormalize(const at::TensorBase& raw, const at::TensorBase& bias,
                        const at::TensorBase& ratio, const at::TensorBase& valid,
                        bool channels_last, const InferencePost& post, cudaStream_t stream) {
  using Term = term_t<Scalar>;
  const int64_t total = raw.numel();
  const PostOp<Param> post_op = post_op_of<Param>(post);
  with_index_type(raw, [&](auto index) {
    using Index = decltype(index);
    if (channels_last) {
      renormalize_kernel<Scalar, Index, true, Param><<<grid_for(total), kThreads, 0, stream>>>(
          raw.mutable_data_ptr<Scalar>(), ratio.const_data_ptr<Term>(),
          valid.const_data_ptr<Term>(), data_or_null<Param>(bias), static_cast<Index>(total),
          layout_of<Index, true>(raw, ratio), post_op);
    } else {
      renormalize_kernel<Scalar, Index, false, Param><<<grid_for(total), kThreads, 0, stream>>>(
          raw.mutable_data_ptr<Scalar>(), ratio.const_data_ptr<Term>(),
          valid.const_data_ptr<Term>(), data_or_null<Param>(bias), static_cast<Index>(total),
          layout_of<Index, false>(raw, ratio), post_op);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

void renormalize(const at::TensorBase& raw, const at::TensorBase& bias, const at::TensorBase& ratio,
                 const at::TensorBase& valid, bool channels_last, const InferencePost& post) {
  const c10::cuda::CUDAGuard guard(raw.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (raw.numel() == 0) return;
  const auto param_type = bias.defined() ? bias.scalar_type()
                                         : (post.bn_weight.defined() ? post.bn_weight.scalar_type()
                                                                     : ratio.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, raw.scalar_type(), "pconv_renormalize_cuda", [&] {
        using Term = term_t<scalar_t>;
        if (param_type == raw.scalar_type()) {
          launch_renormalize<scalar_t, scalar_t>(raw, bias, ratio, valid, channels_last, post,
                                                 stream);
        } else {
          TORCH_CHECK(param_type == ratio.scalar_type(), "partial_conv2d: bias of type ",
                      param_type, " for a ", raw.scalar_type(), " output");
          launch_renormalize<scalar_t, Term>(raw, bias, ratio, valid, channels_last, post, stream);
        }
      });
}

void mask_and_count(const at::TensorBase& input, const at::TensorBase& mask, int64_t groups,
                    bool channels_last, const at::TensorBase& masked,
                    const at::TensorBase& counts) {
  const c10::cuda::CUDAGuard guard(input.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t total = counts.numel();
  if (total == 0) return;
  if (input.numel() == 0) {  // no channel: every count is 0, as on the CPU
    C10_CUDA_CHECK(cudaMemsetAsync(counts.mutable_data_ptr(), 0, counts.nbytes(), stream));
    return;
  }
  const int64_t channels = input.size(1);
  const int64_t plane = input.size(2) * input.size(3);
  const int64_t channel_lanes = prologue_channel_lanes(channels / groups);
  const int64_t pixel_lanes = kThreads / channel_lanes;
  const int64_t blocks = (total + pixel_lanes - 1) / pixel_lanes;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(),
              "partial_conv2d: too many pixels for one launch: ", total);
  const auto pixels = static_cast<unsigned>(pixel_lanes);
  const auto lanes = static_cast<unsigned>(channel_lanes);
  const dim3 block = channels_last ? dim3(lanes, pixels) : dim3(pixels, lanes);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "pconv_mask_and_count_cuda", [&] {
        using Term = term_t<scalar_t>;
        with_index_type(input, [&](auto index) {
          using Index = decltype(index);
          // The layout as a template argument (std::bool_constant), one launch for both.
          const auto launch = [&](auto layout) {
            mask_and_count_kernel<scalar_t, Index, decltype(layout)::value>
                <<<blocks, block, 0, stream>>>(
                    input.const_data_ptr<scalar_t>(), mask.const_data_ptr<scalar_t>(),
                    masked.mutable_data_ptr<scalar_t>(), counts.mutable_data_ptr<Term>(),
                    static_cast<Index>(total), static_cast<Index>(channels),
                    static_cast<Index>(groups), static_cast<Index>(plane));
          };
          if (channels_last) {
            launch(std::true_type{});
          } else {
            launch(std::false_type{});
          }
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
}

void concat_upsampled(const at::TensorBase& features, const at::TensorBase& skip,
                      bool channels_last, const at::TensorBase& out) {
  const c10::cuda::CUDAGuard guard(out.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t total = out.numel();
  if (total == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, out.scalar_type(), "pconv_concat_upsampled_cuda", [&] {
        with_index_type(out, [&](auto index) {
          using Index = decltype(index);
          const auto launch = [&](auto layout) {
            concat_upsampled_kernel<scalar_t, Index, decltype(layout)::value>
                <<<grid_for(total), kThreads, 0, stream>>>(
                    features.const_data_ptr<scalar_t>(), skip.const_data_ptr<scalar_t>(),
                    out.mutable_data_ptr<scalar_t>(), static_cast<Index>(total),
                    static_cast<Index>(features.size(1)), static_cast<Index>(skip.size(1)),
                    static_cast<Index>(out.size(2)), static_cast<Index>(out.size(3)));
          };
          if (channels_last) {
            launch(std::true_type{});
          } else {
            launch(std::false_type{});
          }
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
}

void bias_gradient(const at::TensorBase& bias_sums, const at::TensorBase& grad_bias) {
  const c10::cuda::CUDAGuard guard(bias_sums.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t channels = grad_bias.numel();
  if (channels == 0) return;
  TORCH_CHECK(bias_sums.numel() <= std::numeric_limits<int32_t>::max(),
              "partial_conv2d: too many partial bias sums: ", bias_sums.numel());
  const auto rows = static_cast<uint32_t>(bias_sums.size(0));
  AT_DISPATCH_FLOATING_TYPES(bias_sums.scalar_type(), "pconv_bias_gradient_cuda", [&] {
    using Term = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, grad_bias.scalar_type(), "pconv_bias_gradient_cuda", [&] {
          bias_gradient_kernel<Term, scalar_t, uint32_t>
              <<<static_cast<unsigned>(channels), kThreads, 0, stream>>>(
                  bias_sums.const_data_ptr<Term>(), grad_bias.mutable_data_ptr<scalar_t>(), rows,
                  static_cast<uint32_t>(channels));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  });
}

void renormalize_backward(const at::TensorBase& grad, const at::TensorBase& ratio,
                          const at::TensorBase& valid, bool channels_last,
                          const at::TensorBase& grad_raw, const at::TensorBase& bias_sums) {
  const c10::cuda::CUDAGuard guard(grad.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (grad.numel() == 0) {
    // No element to add: sums of nothing (bias_gradient adds whatever rows there are).
    if (bias_sums.defined() && bias_sums.numel() > 0) {
      C10_CUDA_CHECK(cudaMemsetAsync(bias_sums.mutable_data_ptr(), 0, bias_sums.nbytes(), stream));
    }
    return;
  }
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
            const int64_t chunks = plane_chunks(layout.plane);
            const int64_t chunk_length = plane_chunk_length(layout.plane);
            const int64_t blocks = grad.size(0) * grad.size(1) * chunks;
            TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(),
                        "partial_conv2d: too many blocks for one launch: ", blocks);
            const auto launch = [&](auto threads) {
              renormalize_backward_planes_kernel<scalar_t, Index, decltype(threads)::value>
                  <<<blocks, decltype(threads)::value, 0, stream>>>(
                      grad.const_data_ptr<scalar_t>(), grad_raw.mutable_data_ptr<scalar_t>(),
                      ratio.const_data_ptr<Term>(), valid.const_data_ptr<Term>(), sums,
                      static_cast<Index>(chunks), static_cast<Index>(chunk_length), layout);
            };
            if (planes_block(chunk_length) == 64) {
              launch(std::integral_constant<int, 64>{});
            } else {
              launch(std::integral_constant<int, kThreads>{});
            }
          }
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
}

bool kernels_run_on(c10::DeviceIndex device) {
  // Per device: 0 not yet asked, 1 runs, 2 does not (a GPU the build has no code for).
  static std::array<std::atomic<uint8_t>, C10_COMPILE_TIME_MAX_GPUS> known{};
  // "cuda" without an index: the current device, as LibTorch places such tensors.
  if (device < 0 && c10::cuda::device_count() > 0) device = c10::cuda::current_device();
  if (device < 0 || static_cast<size_t>(device) >= known.size()) return false;
  auto& state = known[static_cast<size_t>(device)];
  uint8_t value = state.load(std::memory_order_acquire);
  if (value == 0) {
    // Loading one kernel's code for the device answers for all of them: they are compiled for
    // the same architectures, and a GPU that has neither a binary nor PTX it can take for them
    // fails here with cudaErrorInvalidDeviceFunction (or cudaErrorNoKernelImageForDevice).
    cudaError_t error = cudaErrorInvalidDevice;  // no such GPU, or none at all
    if (device < c10::cuda::device_count()) {
      const c10::cuda::CUDAGuard guard(device);
      cudaFuncAttributes attributes{};
      error = cudaFuncGetAttributes(&attributes, bias_gradient_kernel<float, float, uint32_t>);
      if (error != cudaSuccess) (void)cudaGetLastError();  // not left for LibTorch's next check
    }
    // Only the answers about the GPU's code are kept: another failure (out of memory while its
    // context was made) passes, and this call alone takes the ATen path.
    if (error != cudaSuccess && error != cudaErrorInvalidDeviceFunction &&
        error != cudaErrorNoKernelImageForDevice && error != cudaErrorInvalidDevice) {
      return false;
    }
    value = error == cudaSuccess ? 1 : 2;
    state.store(value, std::memory_order_release);
  }
  return value == 1;
}

}  // namespace pconv::nn::functional::detail::cuda
