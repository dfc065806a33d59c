#include "partial_conv2d_kernels.h"

#include "partial_conv2d_device.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace pconv::nn::functional::detail {
namespace {

using torch::autograd::variable_list;

#ifdef PCONV_CUDA_KERNELS
constexpr bool kCudaKernels = true;
#else
constexpr bool kCudaKernels = false;
#endif

std::atomic<bool> g_fused_enabled{true};

// Whether `tensor` is on a GPU the CUDA kernels run on (a build with them, for its architecture).
bool cuda_kernels_run_on(const at::Tensor& tensor) {
  return kCudaKernels && tensor.is_cuda() && cuda::kernels_run_on(tensor.get_device());
}

// The dtype of the mask terms for an output of `dtype`.
at::ScalarType term_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// Rows of work per task: about at::internal::GRAIN_SIZE element operations.
int64_t grain_for(int64_t work_per_row) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, work_per_row));
}

// Whether a tensor carries a forward-mode AD tangent (level 0, the one level forward AD has).
// The fused kernels write through data pointers and their nodes are reverse-mode only, so such
// calls take ATen's path, which propagates tangents.
bool has_tangent(const at::Tensor& tensor) {
  return tensor.defined() && tensor._fw_grad(/*level=*/0).defined();
}

// A bias the CPU kernels read as it is: none, or a contiguous CPU vector of the output's dtype.
bool cpu_bias_fusable(const at::Tensor& bias, at::ScalarType dtype) {
  return !bias.defined() || (bias.is_cpu() && bias.scalar_type() == dtype && bias.is_contiguous());
}

// The terms as the epilogue reads them for an output of this type and device: contiguous, on
// the output's device, in its type on the CPU and in term_dtype() on CUDA.
bool terms_fusable(at::ScalarType dtype, const c10::Device& device, const at::Tensor& ratio,
                   const at::Tensor& valid) {
  const auto terms = device.is_cuda() ? term_dtype(dtype) : dtype;
  return ratio.device() == device && valid.device() == device && ratio.scalar_type() == terms &&
         valid.scalar_type() == terms && ratio.is_contiguous() && valid.is_contiguous();
}

// CPU: float or double, contiguous NCHW, everything in the output's dtype; a bias or none.
bool cpu_fusable(const at::Tensor& raw, const at::Tensor& bias, const at::Tensor& ratio,
                 const at::Tensor& valid) {
  const auto dtype = raw.scalar_type();
  return raw.is_cpu() && (dtype == at::kFloat || dtype == at::kDouble) && raw.is_contiguous() &&
         terms_fusable(dtype, raw.device(), ratio, valid) && cpu_bias_fusable(bias, dtype);
}

// The same where the output is channels-last (and not also NCHW-contiguous): the CPU's kernel for
// that layout, which only the paths without autograd use.
bool cpu_channels_last_fusable(const at::Tensor& raw, const at::Tensor& bias,
                               const at::Tensor& ratio, const at::Tensor& valid) {
  const auto dtype = raw.scalar_type();
  return raw.is_cpu() && (dtype == at::kFloat || dtype == at::kDouble) && !raw.is_contiguous() &&
         raw.is_contiguous(at::MemoryFormat::ChannelsLast) &&
         terms_fusable(dtype, raw.device(), ratio, valid) && cpu_bias_fusable(bias, dtype);
}

// CUDA: any floating output in NCHW or channels-last, terms in term_dtype, any bias or none.
bool cuda_fusable(const at::Tensor& raw, const at::Tensor& bias, const at::Tensor& ratio,
                  const at::Tensor& valid) {
  const auto dtype = raw.scalar_type();
  return cuda_kernels_run_on(raw) &&
         (dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
          dtype == at::kBFloat16) &&
         (raw.is_contiguous() || raw.is_contiguous(at::MemoryFormat::ChannelsLast)) &&
         terms_fusable(dtype, raw.device(), ratio, valid) &&
         (!bias.defined() || bias.device() == raw.device());
}

// The inner loops, compiled for AVX-512, AVX2 + FMA and the x86-64 baseline; the loader picks
// the best one for the machine (GCC function multi-versioning). Other dtypes use the templates.
// The clones are the x86-64 micro-architecture levels (v4: AVX-512, v3: AVX2 + FMA), which the
// loader picks by the CPU's features: "arch=haswell" would be picked only on an Intel Haswell
// by model, never on an AMD CPU with the same instructions (checked on this project's EPYC).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
// (The micro-architecture levels as clones need GCC 12; older compilers build one version.)
#define PCONV_CPU_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PCONV_CPU_CLONES
#endif

template <typename T>
void renormalize_plane(T* __restrict__ out, const T* __restrict__ ratio,
                       const T* __restrict__ valid, T bias, int64_t size) {
  for (int64_t i = 0; i < size; ++i) out[i] = out[i] * ratio[i] + bias * valid[i];
}

template <>
PCONV_CPU_CLONES void renormalize_plane<float>(float* __restrict__ out,
                                               const float* __restrict__ ratio,
                                               const float* __restrict__ valid, float bias,
                                               int64_t size) {
#pragma omp simd
  for (int64_t i = 0; i < size; ++i) out[i] = out[i] * ratio[i] + bias * valid[i];
}

// The inference epilogue on one plane: out = act((out * ratio + bias * valid) * scale + shift),
// act being y < 0 ? y * slope : y for kLeakyRelu, max(y, 0) for kRelu (a loop each, so that
// each vectorises), then with `zero_holes` out * valid (a second loop over the plane, still in
// cache).
template <typename T>
void renormalize_post_plane(T* __restrict__ out, const T* __restrict__ ratio,
                            const T* __restrict__ valid, T bias, T scale, T shift,
                            Activation activation, T slope, bool zero_holes, int64_t size) {
  switch (activation) {
    case Activation::kRelu:
      for (int64_t i = 0; i < size; ++i) {
        const T y = (out[i] * ratio[i] + bias * valid[i]) * scale + shift;
        out[i] = y < T(0) ? T(0) : y;
      }
      break;
    case Activation::kLeakyRelu:
      for (int64_t i = 0; i < size; ++i) {
        const T y = (out[i] * ratio[i] + bias * valid[i]) * scale + shift;
        const T negative = y * slope;
        out[i] = y < T(0) ? negative : y;
      }
      break;
    case Activation::kNone:
      for (int64_t i = 0; i < size; ++i)
        out[i] = (out[i] * ratio[i] + bias * valid[i]) * scale + shift;
      break;
  }
  if (zero_holes) {
    for (int64_t i = 0; i < size; ++i) out[i] *= valid[i];
  }
}

template <>
PCONV_CPU_CLONES void renormalize_post_plane<float>(float* __restrict__ out,
                                                    const float* __restrict__ ratio,
                                                    const float* __restrict__ valid, float bias,
                                                    float scale, float shift, Activation activation,
                                                    float slope, bool zero_holes, int64_t size) {
  switch (activation) {
    case Activation::kRelu:
#pragma omp simd
      for (int64_t i = 0; i < size; ++i) {
        const float y = (out[i] * ratio[i] + bias * valid[i]) * scale + shift;
        out[i] = y < 0.0F ? 0.0F : y;
      }
      break;
    case Activation::kLeakyRelu:
#pragma omp simd
      for (int64_t i = 0; i < size; ++i) {
        // max(y, 0) + slope * min(y, 0): arithmetic that vectorises (GCC makes a branch of the
        // select); the same for every y, NaN, infinities and -0 included.
        const float y = (out[i] * ratio[i] + bias * valid[i]) * scale + shift;
        out[i] = std::max(y, 0.0F) + slope * std::min(y, 0.0F);
      }
      break;
    case Activation::kNone:
#pragma omp simd
      for (int64_t i = 0; i < size; ++i) {
        out[i] = (out[i] * ratio[i] + bias * valid[i]) * scale + shift;
      }
      break;
  }
  if (zero_holes) {
#pragma omp simd
    for (int64_t i = 0; i < size; ++i) out[i] *= valid[i];
  }
}

// Channels-last: one pixel's channels of one group, which share the pixel's ratio and valid;
// bias, scale and shift per channel. With `post` the inference epilogue's arithmetic (as
// renormalize_post_plane's), else exactly renormalize_plane's. The body is inlined into each
// CPU clone of the float version below.
template <typename T>
__attribute__((always_inline)) inline void renormalize_row_body(
    T* __restrict__ out, T ratio, T valid, const T* __restrict__ bias, const T* __restrict__ scale,
    const T* __restrict__ shift, bool post, Activation activation, T slope, bool zero_holes,
    int64_t size) {
  if (!post) {
#pragma omp simd
    for (int64_t c = 0; c < size; ++c) out[c] = out[c] * ratio + bias[c] * valid;
    return;
  }
  // The three branches differ; clang-tidy 14 calls them clones in this template.
  switch (activation) {
    case Activation::kRelu:  // NOLINT(bugprone-branch-clone)
#pragma omp simd
      for (int64_t c = 0; c < size; ++c) {
        const T y = (out[c] * ratio + bias[c] * valid) * scale[c] + shift[c];
        out[c] = std::max(y, T(0));
      }
      break;
    case Activation::kLeakyRelu:
#pragma omp simd
      for (int64_t c = 0; c < size; ++c) {
        const T y = (out[c] * ratio + bias[c] * valid) * scale[c] + shift[c];
        out[c] = std::max(y, T(0)) + slope * std::min(y, T(0));
      }
      break;
    case Activation::kNone:
#pragma omp simd
      for (int64_t c = 0; c < size; ++c) {
        out[c] = (out[c] * ratio + bias[c] * valid) * scale[c] + shift[c];
      }
      break;
  }
  if (zero_holes) {
#pragma omp simd
    for (int64_t c = 0; c < size; ++c) out[c] *= valid;
  }
}

template <typename T>
void renormalize_row(T* __restrict__ out, T ratio, T valid, const T* __restrict__ bias,
                     const T* __restrict__ scale, const T* __restrict__ shift, bool post,
                     Activation activation, T slope, bool zero_holes, int64_t size) {
  renormalize_row_body<T>(out, ratio, valid, bias, scale, shift, post, activation, slope,
                          zero_holes, size);
}

template <>
PCONV_CPU_CLONES void renormalize_row<float>(float* __restrict__ out, float ratio, float valid,
                                             const float* __restrict__ bias,
                                             const float* __restrict__ scale,
                                             const float* __restrict__ shift, bool post,
                                             Activation activation, float slope, bool zero_holes,
                                             int64_t size) {
  renormalize_row_body<float>(out, ratio, valid, bias, scale, shift, post, activation, slope,
                              zero_holes, size);
}

// BatchNorm at inference as at::batch_norm in eval mode does it, x * scale + shift with
// scale = weight / sqrt(var + eps) and shift = bias - mean * scale, for channel c (CPU vectors
// of T); scale 1 and shift 0 without BatchNorm.
template <typename T>
std::pair<T, T> batch_norm_scale_shift(const InferencePost& post, int64_t c) {
  if (!post.bn_weight.defined()) return {T(1), T(0)};
  const T scale = post.bn_weight.const_data_ptr<T>()[c] /
                  std::sqrt(post.bn_var.const_data_ptr<T>()[c] + static_cast<T>(post.eps));
  return {scale, post.bn_bias.const_data_ptr<T>()[c] - post.bn_mean.const_data_ptr<T>()[c] * scale};
}

// The epilogue (with `post`, the inference epilogue) in place on a channels-last CPU output
// (N, C, H', W'), the terms (N or 1, G, H', W') contiguous, for cpu_channels_last_fusable()
// outputs: one pass over the output, a pixel's channels at a time.
void renormalize_channels_last_cpu(const at::Tensor& raw, const at::Tensor& bias,
                                   const at::Tensor& ratio, const at::Tensor& valid,
                                   const InferencePost* post) {
  const int64_t channels = raw.size(1);
  const int64_t plane = raw.size(2) * raw.size(3);
  const int64_t groups = ratio.size(1);
  const int64_t group_channels = channels / groups;
  const bool term_batch_one = ratio.size(0) == 1;
  AT_DISPATCH_FLOATING_TYPES(raw.scalar_type(), "pconv_renormalize_channels_last", [&] {
    using T = scalar_t;
    // Per channel: the bias and BatchNorm's scale and shift.
    std::vector<T> bias_values(channels, T(0));
    std::vector<T> scale(channels, T(1));
    std::vector<T> shift(channels, T(0));
    if (bias.defined() && bias.numel() > 0) {
      std::copy_n(bias.const_data_ptr<T>(), channels, bias_values.begin());
    }
    if (post != nullptr) {
      for (int64_t c = 0; c < channels; ++c) {
        std::tie(scale[c], shift[c]) = batch_norm_scale_shift<T>(*post, c);
      }
    }
    const Activation activation = post != nullptr ? post->activation : Activation::kNone;
    const auto slope = static_cast<T>(post != nullptr ? post->slope : 0.0);
    const bool zero_holes = post != nullptr && post->zero_holes;
    auto* out = raw.mutable_data_ptr<T>();
    const auto* ratio_data = ratio.const_data_ptr<T>();
    const auto* valid_data = valid.const_data_ptr<T>();
    at::parallel_for(0, raw.size(0) * plane, grain_for(channels), [&](int64_t begin, int64_t end) {
      for (int64_t pixel = begin; pixel < end; ++pixel) {
        const int64_t n = pixel / plane;
        const int64_t term = (term_batch_one ? 0 : n) * groups * plane + pixel % plane;
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t first = g * group_channels;
          T* row = out + pixel * channels + first;
          const T r = ratio_data[term + g * plane];
          const T v = valid_data[term + g * plane];
          renormalize_row<T>(row, r, v, bias_values.data() + first, scale.data() + first,
                             shift.data() + first, post != nullptr, activation, slope, zero_holes,
                             group_channels);
        }
      }
    });
  });
}

// grad_raw = grad * ratio; returns the plane's sum of grad * valid.
template <typename T>
T renormalize_backward_plane(const T* __restrict__ grad, T* __restrict__ grad_raw,
                             const T* __restrict__ ratio, const T* __restrict__ valid,
                             int64_t size) {
  T sum = 0;
  for (int64_t i = 0; i < size; ++i) {
    grad_raw[i] = grad[i] * ratio[i];
    sum += grad[i] * valid[i];
  }
  return sum;
}

template <>
PCONV_CPU_CLONES float renormalize_backward_plane<float>(const float* __restrict__ grad,
                                                         float* __restrict__ grad_raw,
                                                         const float* __restrict__ ratio,
                                                         const float* __restrict__ valid,
                                                         int64_t size) {
  float sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < size; ++i) {
    grad_raw[i] = grad[i] * ratio[i];
    sum += grad[i] * valid[i];
  }
  return sum;
}

template <typename T>
void accumulate_row(T* __restrict__ sums, const T* __restrict__ row, int64_t size) {
  for (int64_t i = 0; i < size; ++i) sums[i] += row[i];
}

template <>
PCONV_CPU_CLONES void accumulate_row<float>(float* __restrict__ sums, const float* __restrict__ row,
                                            int64_t size) {
#pragma omp simd
  for (int64_t i = 0; i < size; ++i) sums[i] += row[i];
}

// One channel of the prologue: masked = input x mask, counts += mask, over a plane.
template <typename T>
void mask_and_count_plane(const T* __restrict__ input, const T* __restrict__ mask,
                          T* __restrict__ masked, T* __restrict__ counts, int64_t size) {
  for (int64_t i = 0; i < size; ++i) {
    masked[i] = input[i] * mask[i];
    counts[i] += mask[i];
  }
}

template <>
PCONV_CPU_CLONES void mask_and_count_plane<float>(const float* __restrict__ input,
                                                  const float* __restrict__ mask,
                                                  float* __restrict__ masked,
                                                  float* __restrict__ counts, int64_t size) {
#pragma omp simd
  for (int64_t i = 0; i < size; ++i) {
    masked[i] = input[i] * mask[i];
    counts[i] += mask[i];
  }
}

// The prologue's outputs, allocated and filled by its kernel: masked (the input's layout) and
// the counts.
std::pair<at::Tensor, at::Tensor> run_mask_and_count(const at::Tensor& input,
                                                     const at::Tensor& mask, int64_t groups) {
  at::Tensor masked = at::empty_like(input);
  at::Tensor counts = at::empty({input.size(0), groups, input.size(2), input.size(3)},
                                input.options().dtype(term_dtype(input.scalar_type())));
  if (input.is_cuda()) {
    cuda::mask_and_count(input, mask, groups, !input.is_contiguous(), masked, counts);
    return {masked, counts};
  }
  const int64_t channels = input.size(1);
  const int64_t group_channels = channels / groups;
  const int64_t plane = input.size(2) * input.size(3);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pconv_mask_and_count", [&] {
    const auto* in = input.const_data_ptr<scalar_t>();
    const auto* m = mask.const_data_ptr<scalar_t>();
    auto* out = masked.mutable_data_ptr<scalar_t>();
    auto* sums = counts.mutable_data_ptr<scalar_t>();
    // One task per (n, group): its channels one after another into the group's count plane.
    at::parallel_for(0, input.size(0) * groups, grain_for(group_channels * plane),
                     [&](int64_t begin, int64_t end) {
                       for (int64_t block = begin; block < end; ++block) {
                         scalar_t* count = sums + block * plane;
                         std::fill(count, count + plane, scalar_t(0));
                         for (int64_t k = 0; k < group_channels; ++k) {
                           const int64_t offset = (block * group_channels + k) * plane;
                           mask_and_count_plane<scalar_t>(in + offset, m + offset, out + offset,
                                                          count, plane);
                         }
                       }
                     });
  });
  return {masked, counts};
}

// The gradient of masked = input x mask (the mask carries none): grad x mask, in ATen ops, so
// that a second derivative through it is autograd's own. A hand-written node, as the
// single-node layer's below is (that comment says why).
class MaskInputBackward final : public torch::autograd::Node {
 public:
  std::string name() const override { return "pconv::MaskInputBackward"; }

  void release_variables() override {
    const std::lock_guard<std::mutex> lock(mutex_);
    mask_.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    const std::lock_guard<std::mutex> lock(mutex_);
    if (!grads[0].defined()) return variable_list(1);
    return {grads[0] * mask_.unpack()};
  }

  torch::autograd::SavedVariable mask_;
};

// Where plane (n, c) of the output finds its ratio and valid planes.
struct PlaneIndex {
  int64_t channels, groups, term_batch, plane_size;
  int64_t term_offset(int64_t plane) const {
    const int64_t n = plane / channels;
    const int64_t group = (plane % channels) / (channels / groups);
    return ((term_batch == 1 ? 0 : n) * groups + group) * plane_size;
  }
};

PlaneIndex plane_index(const at::Tensor& raw, const at::Tensor& ratio) {
  return {raw.size(1), ratio.size(1), ratio.size(0), raw.size(2) * raw.size(3)};
}

// The bias as the CUDA epilogue reads it: in its own dtype where that is the output's or the
// terms' (no conversion, no launch), else converted to the terms'.
at::Tensor cuda_bias(const at::Tensor& bias, const at::Tensor& raw, const at::Tensor& ratio) {
  const auto dtype = bias.scalar_type();
  const bool native = dtype == raw.scalar_type() || dtype == ratio.scalar_type();
  return (native ? bias : bias.to(ratio.scalar_type())).contiguous();
}

// raw * ratio + bias * valid, in place, in one pass over the output, outside autograd (an
// empty or undefined bias is none); on the CPU in NCHW or, for renormalize() without a
// gradient, channels-last.
void renormalize_in_place(const at::Tensor& raw, const at::Tensor& bias, const at::Tensor& ratio,
                          const at::Tensor& valid) {
  if (raw.is_cuda()) {
    // Contiguous NCHW wins where both layouts hold (one channel or a 1 x 1 output).
    cuda::renormalize(raw, bias.numel() > 0 ? cuda_bias(bias, raw, ratio) : at::Tensor(), ratio,
                      valid, !raw.is_contiguous(), InferencePost{});
    return;
  }
  if (!raw.is_contiguous()) {  // channels-last (cpu_channels_last_fusable)
    renormalize_channels_last_cpu(raw, bias, ratio, valid, nullptr);
    return;
  }
  const PlaneIndex index = plane_index(raw, ratio);
  const int64_t planes = raw.size(0) * index.channels;
  AT_DISPATCH_FLOATING_TYPES(raw.scalar_type(), "pconv_renormalize", [&] {
    auto* out = raw.mutable_data_ptr<scalar_t>();
    const auto* ratio_data = ratio.const_data_ptr<scalar_t>();
    const auto* valid_data = valid.const_data_ptr<scalar_t>();
    const scalar_t* bias_data = bias.numel() > 0 ? bias.const_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, planes, grain_for(index.plane_size), [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        scalar_t* __restrict__ o = out + plane * index.plane_size;
        const scalar_t* __restrict__ r = ratio_data + index.term_offset(plane);
        const scalar_t* __restrict__ v = valid_data + index.term_offset(plane);
        renormalize_plane<scalar_t>(
            o, r, v, bias_data != nullptr ? bias_data[plane % index.channels] : scalar_t(0),
            index.plane_size);
      }
    });
  });
}

// What the epilogue's backward needs besides ratio and valid: the layout of the output and the
// bias's dtype (-1: no bias, undefined or empty).
std::array<int64_t, 2> epilogue_state(const at::Tensor& raw, const at::Tensor& bias) {
  return {raw.is_cuda() && !raw.is_contiguous() ? 1 : 0,
          bias.numel() > 0 ? static_cast<int64_t>(bias.scalar_type()) : int64_t{-1}};
}

// The epilogue's backward: grad_raw = grad * ratio and, with `bias_grad`, the bias's gradient
// sum(grad * valid) in the bias's dtype (state from epilogue_state()).
std::pair<at::Tensor, at::Tensor> epilogue_backward(const at::Tensor& grad_output,
                                                    const at::Tensor& ratio,
                                                    const at::Tensor& valid,
                                                    c10::ArrayRef<int64_t> state, bool bias_grad) {
  const bool channels_last = state[0] != 0;
  const int64_t bias_dtype = state[1];
  bias_grad = bias_grad && bias_dtype >= 0;
  if (ratio.is_cuda()) {
    const at::Tensor grad = grad_output.contiguous(channels_last ? at::MemoryFormat::ChannelsLast
                                                                 : at::MemoryFormat::Contiguous);
    at::Tensor grad_raw = at::empty_like(grad);
    const int64_t channels = grad.size(1);
    at::Tensor bias_sums;
    at::Tensor grad_bias;
    if (bias_grad) {
      const int64_t rows = bias_sum_rows(grad.size(0), grad.size(2) * grad.size(3), channels_last);
      // Not zeroed: the kernel writes every partial sum.
      bias_sums = at::empty({rows, channels}, ratio.options());
      grad_bias = at::empty(
          {channels},
          ratio.options().dtype(static_cast<at::ScalarType>(static_cast<int8_t>(bias_dtype))));
    }
    cuda::renormalize_backward(grad, ratio, valid, channels_last, grad_raw, bias_sums);
    if (grad_bias.defined()) cuda::bias_gradient(bias_sums, grad_bias);
    return {grad_raw, grad_bias};
  }

  const at::Tensor grad = grad_output.contiguous();
  const PlaneIndex index = plane_index(grad, ratio);
  const int64_t planes = grad.size(0) * index.channels;
  // grad_raw = grad * ratio, and each plane's sum of grad * valid for the bias, in one pass;
  // then the bias gradient as those sums over the batch, in double, in plain loops (ATen's
  // sum and cast would cost more host time than the arithmetic on small layers). The CPU
  // kernels take a bias of the output's dtype.
  at::Tensor grad_raw = at::empty_like(grad);
  at::Tensor grad_bias;
  if (bias_grad) grad_bias = at::empty({index.channels}, grad.options());
  std::vector<double> plane_sums(static_cast<size_t>(planes));
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "pconv_renormalize_backward", [&] {
    const auto* grad_data = grad.const_data_ptr<scalar_t>();
    auto* grad_raw_data = grad_raw.mutable_data_ptr<scalar_t>();
    const auto* ratio_data = ratio.const_data_ptr<scalar_t>();
    const auto* valid_data = valid.const_data_ptr<scalar_t>();
    double* sums = plane_sums.data();
    at::parallel_for(0, planes, grain_for(index.plane_size), [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const scalar_t* __restrict__ g = grad_data + plane * index.plane_size;
        scalar_t* __restrict__ gr = grad_raw_data + plane * index.plane_size;
        const scalar_t* __restrict__ r = ratio_data + index.term_offset(plane);
        const scalar_t* __restrict__ v = valid_data + index.term_offset(plane);
        sums[plane] = static_cast<double>(
            renormalize_backward_plane<scalar_t>(g, gr, r, v, index.plane_size));
      }
    });
    if (!grad_bias.defined()) return;
    auto* bias_data = grad_bias.mutable_data_ptr<scalar_t>();
    for (int64_t c = 0; c < index.channels; ++c) {
      double sum = 0;
      for (int64_t n = 0; n < grad.size(0); ++n) sum += sums[n * index.channels + c];
      bias_data[c] = static_cast<scalar_t>(sum);
    }
  });
  return {grad_raw, grad_bias};
}

// The gradients a backward made with kernels autograd cannot see returns. Under create_graph
// (grad mode on in the backward) they would carry no graph, and a second derivative through
// them would come out silently wrong; as PyTorch's once_differentiable does, they then get a
// node that raises an error if anything differentiates them again.
variable_list once_differentiable(variable_list grads) {
  if (!at::GradMode::is_enabled()) return grads;
  for (auto& grad : grads) {
    if (grad.defined()) grad = grad.detach().requires_grad_(true);
  }
  return torch::autograd::DelayedError(
             "partial_conv2d: the fused kernels' backward cannot be differentiated again; for "
             "higher-order gradients switch them off (set_fused_kernels_enabled(false))",
             static_cast<int64_t>(grads.size()))
      .apply(std::move(grads));
}

// The epilogue's backward, differentiable in raw and bias: a hand-written node, as the
// single-node layer's below is (that comment says why).
class RenormalizeBackward final : public torch::autograd::Node {
 public:
  enum Edge : size_t { kRaw = 0, kBias = 1 };

  std::string name() const override { return "pconv::RenormalizeBackward"; }

  void release_variables() override {
    const std::lock_guard<std::mutex> lock(mutex_);
    ratio_.reset_data();
    valid_.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    const std::lock_guard<std::mutex> lock(mutex_);
    const bool raw_grad = task_should_compute_output(kRaw);
    const bool bias_grad = task_should_compute_output(kBias);
    if (!grads[0].defined()) return variable_list(2);
    auto [grad_raw, grad_bias] =
        epilogue_backward(grads[0], ratio_.unpack(), valid_.unpack(), state_, bias_grad);
    if (!raw_grad) grad_raw = at::Tensor();
    return once_differentiable({std::move(grad_raw), std::move(grad_bias)});
  }

  torch::autograd::SavedVariable ratio_;
  torch::autograd::SavedVariable valid_;
  std::array<int64_t, 2> state_{};  // epilogue_state()
};

// The whole layer with its prologue's results as one autograd node: conv(masked, weight) *
// ratio + bias * valid, where masked = input x mask came from the prologue outside autograd.
// One node instead of three (the prologue's, the convolution's, the epilogue's) saves the host
// the autograd engine's work for two nodes and the in-place bookkeeping of the epilogue; the
// backward is the epilogue's, ATen's convolution_backward, and grad x mask for the input.
//
// Written as ATen's generated nodes are (a Node with its saved variables as members, edges to
// input, weight and bias only), not as a torch::autograd::Function: that one's apply() keeps
// metadata for every tensor argument, packs the non-tensor state into a map of IValues and
// demangles the node's name on every backward, host time a small layer pays on each call.
// Not differentiable twice (see once_differentiable).
class PartialConvolutionBackward final : public torch::autograd::Node {
 public:
  // The gradients, in the order of the node's edges.
  enum Edge : size_t { kInput = 0, kWeight = 1, kBias = 2 };

  std::string name() const override { return "pconv::PartialConvolutionBackward"; }

  void release_variables() override {
    const std::lock_guard<std::mutex> lock(mutex_);
    for (auto* saved : {&mask_, &masked_, &weight_, &ratio_, &valid_}) saved->reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    const std::lock_guard<std::mutex> lock(mutex_);
    const bool input_grad = task_should_compute_output(kInput);
    const bool weight_grad = task_should_compute_output(kWeight);
    const bool bias_grad = task_should_compute_output(kBias);
    // An undefined gradient stands for zeros: so are the ones it gives.
    if (!grads[0].defined()) return variable_list(3);
    const at::Tensor ratio = ratio_.unpack();
    const at::Tensor valid = valid_.unpack();
    auto [grad_raw, grad_bias] = epilogue_backward(grads[0], ratio, valid, state_, bias_grad);
    at::Tensor grad_input;
    at::Tensor grad_weight;
    if (input_grad || weight_grad) {
      const c10::ArrayRef<int64_t> values(state_);
      auto gradients = at::convolution_backward(
          grad_raw, masked_.unpack(), weight_.unpack(), std::nullopt, values.slice(2, 2),
          values.slice(4, 2), values.slice(6, 2), /*transposed=*/false, {0, 0}, values[8],
          {input_grad, weight_grad, false});
      grad_input = std::move(std::get<0>(gradients));
      // (No mask: the input is the masked input, whose own node has the mask's part.)
      if (const at::Tensor mask = mask_.unpack(); input_grad && mask.defined())
        grad_input.mul_(mask);
      grad_weight = std::move(std::get<1>(gradients));
    }
    return once_differentiable(
        {std::move(grad_input), std::move(grad_weight), std::move(grad_bias)});
  }

  // Only what the backward will read (an undefined one unpacks as undefined).
  torch::autograd::SavedVariable mask_;    // for the input's gradient, where there is a mask
  torch::autograd::SavedVariable masked_;  // the convolution's input, for its backward
  torch::autograd::SavedVariable weight_;
  torch::autograd::SavedVariable ratio_;
  torch::autograd::SavedVariable valid_;
  // epilogue_state(), then stride, padding, dilation (2 each) and groups.
  std::array<int64_t, 9> state_{};
};

}  // namespace

WindowTerms window_terms(const at::Tensor& counts, double window, const WindowGeometry& geometry,
                         at::ScalarType terms_dtype) {
  return window_terms(ValidCounts{counts}, window, geometry, terms_dtype);
}

WindowTerms window_terms(const ValidCounts& counts, double window, const WindowGeometry& geometry,
                         at::ScalarType terms_dtype, std::optional<at::ScalarType> valid_as) {
  // Plain variables, not structured bindings: C++17 lambdas cannot capture those.
  const int64_t kernel_h = geometry.kernel[0];
  const int64_t kernel_w = geometry.kernel[1];
  const int64_t stride_h = geometry.stride[0];
  const int64_t stride_w = geometry.stride[1];
  const int64_t pad_h = geometry.padding[0];
  const int64_t pad_w = geometry.padding[1];
  const int64_t dilation_h = geometry.dilation[0];
  const int64_t dilation_w = geometry.dilation[1];
  const at::Tensor& first = counts.first;
  const at::Tensor& second = counts.second;
  const auto dtype = first.scalar_type();
  const bool kernel_dtype = dtype == terms_dtype && (dtype == at::kFloat || dtype == at::kDouble);
  const bool fused =
      fused_enabled() && kernel_dtype && (first.is_cpu() || cuda_kernels_run_on(first));
  // The CUDA kernel weighs and adds two planes of one shape itself; elsewhere ATen does first.
  const bool kernel_adds =
      fused && first.is_cuda() &&
      (!second.defined() || (second.sizes() == first.sizes() && second.scalar_type() == dtype &&
                             second.device() == first.device()));
  at::Tensor combined = first;
  if (!kernel_adds) {
    if (counts.first_weight != 1) combined = first * counts.first_weight;
    // In the first plane's type (a second plane of another type would promote the sum).
    if (second.defined()) combined = at::add(combined, second, counts.second_weight).to(dtype);
  }
  if (!fused) {
    // The reference path: a depthwise convolution with a ones kernel, then the ratio selected
    // (never multiplied) so that a zero count gives exactly 0. The window sums of 0/1 values
    // must be exact integers; cuDNN may pick Winograd or FFT, which round, so CUDA counts in
    // float64 (the tensor has at most `groups` channels).
    const at::Tensor box_input = combined.is_cuda() ? combined.to(at::kDouble) : combined;
    const at::Tensor box = at::ones({combined.size(1), 1, kernel_h, kernel_w}, box_input.options());
    const at::Tensor sums = at::conv2d(box_input, box, {}, geometry.stride, geometry.padding,
                                       geometry.dilation, combined.size(1))
                                .to(terms_dtype);
    const at::Tensor valid = sums > 0;
    WindowTerms terms{
        at::where(valid, sums.reciprocal().mul_(window), 0.0), valid.to(terms_dtype), {}};
    if (valid_as) terms.valid_as = *valid_as == terms_dtype ? terms.valid : valid.to(*valid_as);
    return terms;
  }

  // Separable on the CPU: sum the k_h taps of each column, then the k_w taps of each row, and
  // write ratio and valid straight from the sums. The counts are whole numbers, so every order
  // of summation gives the exact result.
  const at::Tensor input = combined.contiguous();
  const int64_t planes = input.size(0) * input.size(1);
  const int64_t height = input.size(2);
  const int64_t width = input.size(3);
  const int64_t out_h = output_size(height, kernel_h, stride_h, pad_h, dilation_h);
  const int64_t out_w = output_size(width, kernel_w, stride_w, pad_w, dilation_w);
  TORCH_CHECK(out_h > 0 && out_w > 0, "partial_conv2d: a ", kernel_h, "x", kernel_w,
              " kernel (dilation ", dilation_h, "x", dilation_w, ") does not fit the padded ",
              height, "x", width, " input");
  const std::array<int64_t, 4> sizes{input.size(0), input.size(1), out_h, out_w};
  WindowTerms terms{at::empty(sizes, input.options()), at::empty(sizes, input.options()), {}};
  if (input.is_cuda()) {
    // valid in a second type straight from the kernel (in the terms' type it is valid itself).
    const bool typed = valid_as && *valid_as != dtype;
    if (typed) terms.valid_as = at::empty(sizes, input.options().dtype(*valid_as));
    const bool two = kernel_adds && second.defined();
    cuda::window_terms(input, kernel_adds ? counts.first_weight : 1.0,
                       two ? second.contiguous() : at::Tensor(), two ? counts.second_weight : 0.0,
                       window, geometry, terms.ratio, terms.valid, terms.valid_as);
    if (valid_as && !typed) terms.valid_as = terms.valid;
    return terms;
  }
  AT_DISPATCH_FLOATING_TYPES(dtype, "pconv_window_terms", [&] {
    const auto* in = input.const_data_ptr<scalar_t>();
    auto* ratio = terms.ratio.mutable_data_ptr<scalar_t>();
    auto* valid = terms.valid.mutable_data_ptr<scalar_t>();
    const auto window_size = static_cast<scalar_t>(window);
    const int64_t work_per_row = kernel_h * width + kernel_w * out_w;
    at::parallel_for(0, planes * out_h, grain_for(work_per_row), [&](int64_t begin, int64_t end) {
      // Column sums of one output row, with pad_w zeros on either side so that the horizontal
      // pass needs no bounds checks.
      std::vector<scalar_t> padded(width + 2 * pad_w);
      std::vector<scalar_t> sums(out_w);
      scalar_t* column_sums = padded.data() + pad_w;
      for (int64_t row = begin; row < end; ++row) {
        const int64_t plane = row / out_h;
        const int64_t out_y = row % out_h;
        std::fill(padded.begin(), padded.end(), scalar_t(0));
        for (int64_t ky = 0; ky < kernel_h; ++ky) {
          const int64_t in_y = out_y * stride_h - pad_h + ky * dilation_h;
          if (in_y < 0 || in_y >= height) continue;
          accumulate_row<scalar_t>(column_sums, in + (plane * height + in_y) * width, width);
        }
        std::fill(sums.begin(), sums.end(), scalar_t(0));
        for (int64_t kx = 0; kx < kernel_w; ++kx) {
          const scalar_t* __restrict__ taps = padded.data() + kx * dilation_w;
          for (int64_t out_x = 0; out_x < out_w; ++out_x) sums[out_x] += taps[out_x * stride_w];
        }
        scalar_t* __restrict__ ratio_row = ratio + row * out_w;
        scalar_t* __restrict__ valid_row = valid + row * out_w;
        for (int64_t out_x = 0; out_x < out_w; ++out_x) {
          const bool seen = sums[out_x] > 0;
          ratio_row[out_x] = seen ? window_size / sums[out_x] : scalar_t(0);
          valid_row[out_x] = seen ? scalar_t(1) : scalar_t(0);
        }
      }
    });
  });
  if (valid_as) terms.valid_as = *valid_as == dtype ? terms.valid : terms.valid.to(*valid_as);
  return terms;
}

bool mask_and_count_fusable(const at::Tensor& input, const at::Tensor& mask) {
  if (!fused_enabled() || !input.defined() || !mask.defined() || input.dim() != 4 ||
      mask.sizes() != input.sizes() || mask.scalar_type() != input.scalar_type() ||
      mask.device() != input.device() || has_tangent(input)) {
    return false;
  }
  const auto dtype = input.scalar_type();
  const bool nchw = input.is_contiguous() && mask.is_contiguous();
  if (input.is_cpu()) return nchw && (dtype == at::kFloat || dtype == at::kDouble);
  const auto channels_last = at::MemoryFormat::ChannelsLast;
  return cuda_kernels_run_on(input) &&
         (dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
          dtype == at::kBFloat16) &&
         (nchw || (input.is_contiguous(channels_last) && mask.is_contiguous(channels_last)));
}

std::pair<at::Tensor, at::Tensor> mask_and_count(const at::Tensor& input, const at::Tensor& mask,
                                                 int64_t groups, bool differentiable) {
  TORCH_CHECK(mask_and_count_fusable(input, mask) && groups >= 1 && input.size(1) % groups == 0,
              "partial_conv2d: no fused prologue for input ", input.sizes(), " and mask ",
              mask.sizes());
  // (A detach is an operator call: only where there is a gradient to cut.)
  const at::Tensor values = mask.requires_grad() ? mask.detach() : mask;
  auto [masked, counts] = run_mask_and_count(input, values, groups);
  if (differentiable && at::GradMode::is_enabled() && input.requires_grad()) {
    // The counts stay outside autograd: they have no gradient.
    std::shared_ptr<MaskInputBackward> node(new MaskInputBackward(), torch::autograd::deleteNode);
    node->set_next_edges(torch::autograd::collect_next_edges(input));
    node->mask_ = torch::autograd::SavedVariable(values, false);
    torch::autograd::set_history(masked, node);
  }
  return {std::move(masked), std::move(counts)};
}

bool partial_convolution_usable(const at::Tensor& input, const at::Tensor& weight,
                                const at::Tensor& bias) {
  const bool needs_gradient =
      input.requires_grad() || weight.requires_grad() || (bias.defined() && bias.requires_grad());
  if (!fused_enabled() || !at::GradMode::is_enabled() || !needs_gradient ||
      at::autocast::is_autocast_enabled(input.device().type()) ||
      weight.scalar_type() != input.scalar_type() || weight.device() != input.device() ||
      has_tangent(input) || has_tangent(weight) || has_tangent(bias)) {
    return false;
  }
  const auto dtype = input.scalar_type();
  if (input.is_cpu()) {
    // An NCHW output (a channels-last weight makes the CPU's convolution channels-last, which
    // the node would turn back into NCHW; the layer's ATen path keeps it).
    return (dtype == at::kFloat || dtype == at::kDouble) && weight.is_contiguous() &&
           cpu_bias_fusable(bias, dtype);
  }
  return cuda_kernels_run_on(input) &&
         (dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
          dtype == at::kBFloat16) &&
         (!bias.defined() || bias.device() == input.device());
}

void check_terms_fit(const at::Tensor& output, const at::Tensor& bias, const at::Tensor& ratio,
                     const at::Tensor& valid, int64_t groups) {
  const bool four_dims = ratio.defined() && ratio.dim() == 4;
  const int64_t term_groups = four_dims ? ratio.size(1) : 0;
  const int64_t term_batch = four_dims ? ratio.size(0) : 0;
  TORCH_CHECK(four_dims && valid.defined() && valid.sizes() == ratio.sizes() &&
                  (term_groups == 1 || term_groups == groups) && ratio.size(2) == output.size(2) &&
                  ratio.size(3) == output.size(3) &&
                  (term_batch == 1 || term_batch == output.size(0)),
              "partial_conv2d: mask terms ", ratio.defined() ? ratio.sizes() : c10::IntArrayRef{},
              " do not fit output ", output.sizes(), " with groups=", groups);
  TORCH_CHECK(ratio.device() == output.device() && valid.device() == output.device() &&
                  (!bias.defined() || bias.device() == output.device()),
              "partial_conv2d: mask terms on ", ratio.device(), " and bias on ",
              bias.defined() ? bias.device() : output.device(), " but the input is on ",
              output.device());
}

bool epilogue_terms_fusable(const at::Tensor& input, const at::Tensor& ratio,
                            const at::Tensor& valid) {
  // On the CPU the convolution's output is NCHW only for an NCHW input (and weight: see
  // partial_convolution_usable); the single node would make any other contiguous, changing
  // the layout the caller chose.
  return ratio.defined() && valid.defined() &&
         terms_fusable(input.scalar_type(), input.device(), ratio, valid) &&
         (input.is_cuda() || input.is_contiguous());
}

at::Tensor partial_convolution(const at::Tensor& input, const at::Tensor& masked,
                               const at::Tensor& mask, const at::Tensor& weight,
                               const at::Tensor& bias, const at::Tensor& ratio,
                               const at::Tensor& valid, const WindowGeometry& geometry,
                               int64_t groups) {
  // The caller has asked partial_convolution_usable(); what it cannot see is checked here.
  TORCH_CHECK(
      mask.defined() ? !masked.requires_grad() && !mask.requires_grad() : masked.is_same(input),
      "partial_conv2d: the single-node layer takes the prologue's results, which carry no "
      "gradient, or the masked input alone");
  at::Tensor raw;
  {
    // Below autograd, as a generated node's forward runs: the convolution records nothing.
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    raw = at::convolution(masked, weight, std::nullopt, geometry.stride, geometry.padding,
                          geometry.dilation, /*transposed=*/false, {0, 0}, groups);
    // The epilogue reads NCHW (CUDA: or channels-last), which a convolution gives unless its
    // weight's layout says otherwise.
    if (!raw.is_contiguous() &&
        !(raw.is_cuda() && raw.is_contiguous(at::MemoryFormat::ChannelsLast))) {
      raw = raw.contiguous();
    }
    check_terms_fit(raw, bias, ratio, valid, groups);
    renormalize_in_place(raw, bias, ratio, valid);  // an undefined bias has no elements
  }
  if (!torch::autograd::compute_requires_grad(input, weight, bias)) return raw;
  std::shared_ptr<PartialConvolutionBackward> node(new PartialConvolutionBackward(),
                                                   torch::autograd::deleteNode);
  node->set_next_edges(torch::autograd::collect_next_edges(input, weight, bias));
  // An inference-mode mask cannot be saved, and need not be for a first layer whose input has
  // no gradient; the masked input is kept as Conv2d's own node keeps its input.
  const bool convolution_grad = input.requires_grad() || weight.requires_grad();
  node->mask_ = torch::autograd::SavedVariable(input.requires_grad() ? mask : at::Tensor(), false);
  node->masked_ = torch::autograd::SavedVariable(convolution_grad ? masked : at::Tensor(), false);
  node->weight_ = torch::autograd::SavedVariable(weight, false);
  node->ratio_ = torch::autograd::SavedVariable(ratio, false);
  node->valid_ = torch::autograd::SavedVariable(valid, false);
  const auto epilogue = epilogue_state(raw, bias);
  node->state_ = {epilogue[0],          epilogue[1],          geometry.stride[0],
                  geometry.stride[1],   geometry.padding[0],  geometry.padding[1],
                  geometry.dilation[0], geometry.dilation[1], groups};
  torch::autograd::set_history(raw, node);
  return raw;
}

#ifndef PCONV_CUDA_KERNELS
// Never called (kCudaKernels is false): definitions for the linker in builds without nvcc.
namespace cuda {
void mask_and_count(const at::TensorBase&, const at::TensorBase&, int64_t, bool,
                    const at::TensorBase&, const at::TensorBase&) {
  TORCH_CHECK(false, "pconv was built without its CUDA kernels");
}
void window_terms(const at::TensorBase&, double, const at::TensorBase&, double, double,
                  const WindowGeometry&, const at::TensorBase&, const at::TensorBase&,
                  const at::TensorBase&) {
  TORCH_CHECK(false, "pconv was built without its CUDA kernels");
}
void renormalize(const at::TensorBase&, const at::TensorBase&, const at::TensorBase&,
                 const at::TensorBase&, bool, const InferencePost&) {
  TORCH_CHECK(false, "pconv was built without its CUDA kernels");
}
void bias_gradient(const at::TensorBase&, const at::TensorBase&) {
  TORCH_CHECK(false, "pconv was built without its CUDA kernels");
}
void concat_upsampled(const at::TensorBase&, const at::TensorBase&, bool, const at::TensorBase&) {
  TORCH_CHECK(false, "pconv was built without its CUDA kernels");
}
bool kernels_run_on(c10::DeviceIndex /*device*/) { return false; }
void renormalize_backward(const at::TensorBase&, const at::TensorBase&, const at::TensorBase&, bool,
                          const at::TensorBase&, const at::TensorBase&) {
  TORCH_CHECK(false, "pconv was built without its CUDA kernels");
}
}  // namespace cuda
#endif

bool fused_enabled() { return g_fused_enabled.load(std::memory_order_relaxed); }

at::Tensor concat_upsampled(const at::Tensor& features, const at::Tensor& skip) {
  const auto dtype = features.scalar_type();
  if (!fused_enabled() || features.dim() != 4 || skip.dim() != 4 ||
      !(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
        dtype == at::kBFloat16) ||
      (at::GradMode::is_enabled() && (features.requires_grad() || skip.requires_grad())) ||
      features.device() != skip.device() || features.scalar_type() != skip.scalar_type() ||
      features.size(0) != skip.size(0) || features.size(2) * 2 != skip.size(2) ||
      features.size(3) * 2 != skip.size(3) ||
      (features.is_cuda() && !cuda_kernels_run_on(features)) ||
      !(features.is_cpu() || features.is_cuda()) || has_tangent(features) || has_tangent(skip)) {
    return {};
  }
  // NCHW where both tensors are (also where channels-last holds too), else channels-last.
  const bool nchw = features.is_contiguous() && skip.is_contiguous();
  if (!nchw && !(features.is_contiguous(at::MemoryFormat::ChannelsLast) &&
                 skip.is_contiguous(at::MemoryFormat::ChannelsLast))) {
    return {};
  }
  const int64_t batch = skip.size(0);
  const int64_t up_channels = features.size(1);
  const int64_t skip_channels = skip.size(1);
  const int64_t channels = up_channels + skip_channels;
  const int64_t height = skip.size(2);
  const int64_t width = skip.size(3);
  at::Tensor out = at::empty({batch, channels, height, width},
                             skip.options().memory_format(nchw ? at::MemoryFormat::Contiguous
                                                               : at::MemoryFormat::ChannelsLast));
  if (out.is_cuda()) {
    cuda::concat_upsampled(features, skip, !nchw, out);
    return out;
  }
  // The CPU: whole rows at a time. NCHW: row (n, c, y) of the output is row y/2 of the
  // features' plane (n, c) with each value twice, or row y of the skip's plane (n, c - C1).
  // Channels-last: pixel (n, y, x) is the features' pixel (n, y/2, x/2), then the skip's.
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, out.scalar_type(), "pconv_concat_upsampled", [&] {
        using T = scalar_t;
        const T* up = features.const_data_ptr<T>();
        const T* from_skip = skip.const_data_ptr<T>();
        T* dst = out.mutable_data_ptr<T>();
        const int64_t half_h = height / 2;
        const int64_t half_w = width / 2;
        if (nchw) {
          at::parallel_for(
              0, batch * channels * height, grain_for(width), [&](int64_t begin, int64_t end) {
                for (int64_t row = begin; row < end; ++row) {
                  const int64_t y = row % height;
                  const int64_t plane = row / height;  // n x channels + c
                  const int64_t n = plane / channels;
                  const int64_t c = plane % channels;
                  T* out_row = dst + row * width;
                  if (c < up_channels) {
                    const T* in = up + ((n * up_channels + c) * half_h + y / 2) * half_w;
                    for (int64_t x = 0; x < width; ++x) out_row[x] = in[x / 2];
                  } else {
                    std::copy_n(
                        from_skip + ((n * skip_channels + c - up_channels) * height + y) * width,
                        width, out_row);
                  }
                }
              });
        } else {
          at::parallel_for(
              0, batch * height, grain_for(width * channels), [&](int64_t begin, int64_t end) {
                for (int64_t row = begin; row < end; ++row) {  // n x height + y
                  const T* up_row =
                      up + ((row / height) * half_h + (row % height) / 2) * half_w * up_channels;
                  const T* skip_row = from_skip + row * width * skip_channels;
                  T* out_row = dst + row * width * channels;
                  for (int64_t x = 0; x < width; ++x) {
                    std::copy_n(up_row + (x / 2) * up_channels, up_channels,
                                out_row + x * channels);
                    std::copy_n(skip_row + x * skip_channels, skip_channels,
                                out_row + x * channels + up_channels);
                  }
                }
              });
        }
      });
  return out;
}

at::Tensor renormalize(const at::Tensor& raw, const at::Tensor& bias, const at::Tensor& ratio,
                       const at::Tensor& valid) {
  const bool differentiable = at::GradMode::is_enabled() &&
                              (raw.requires_grad() || (bias.defined() && bias.requires_grad()));
  // A channels-last CPU output has a kernel but no fused backward; a raw output that is a view,
  // or a leaf with a gradient, is left to ATen's in-place ops, which know what to do with it.
  if (fused_enabled() &&
      (cpu_fusable(raw, bias, ratio, valid) || cuda_fusable(raw, bias, ratio, valid) ||
       (!differentiable && cpu_channels_last_fusable(raw, bias, ratio, valid))) &&
      !(differentiable && (raw.is_view() || (raw.is_leaf() && raw.requires_grad()))) &&
      !has_tangent(raw) && !has_tangent(bias)) {
    if (!differentiable) {
      // Nothing to differentiate: the kernel alone, without an autograd node's costs.
      renormalize_in_place(raw, bias, ratio, valid);
      return raw;
    }
    // In place under autograd's rules, as ATen's in-place ops are: the node's edges are raw's
    // history before and the bias, raw's version goes up (a node that saved it sees the
    // change) and its history becomes the node.
    std::shared_ptr<RenormalizeBackward> node(new RenormalizeBackward(),
                                              torch::autograd::deleteNode);
    node->set_next_edges(torch::autograd::collect_next_edges(raw, bias));
    node->ratio_ = torch::autograd::SavedVariable(ratio, false);
    node->valid_ = torch::autograd::SavedVariable(valid, false);
    node->state_ = epilogue_state(raw, bias);
    {
      // (A bias converted for the CUDA kernel records no node of its own.)
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      renormalize_in_place(raw, bias, ratio, valid);  // an undefined bias has no elements
    }
    torch::autograd::impl::bump_version(raw);
    node->add_input_metadata(raw);
    torch::autograd::impl::rebase_history(raw, {std::move(node), 0});
    return raw;
  }

  // The reference path (what the fused kernels do not cover): in-place ATen ops.
  const int64_t batch = raw.size(0);
  const int64_t channels = raw.size(1);
  const int64_t groups = ratio.size(1);
  at::Tensor output = raw;
  at::Tensor view = groups == 1
                        ? output
                        : output.view({batch, groups, channels / groups, raw.size(2), raw.size(3)});
  const auto term = [&](const at::Tensor& t) { return groups == 1 ? t : t.unsqueeze(2); };
  view.mul_(term(ratio));
  if (bias.defined()) {
    const auto bias_shape = groups == 1 ? std::vector<int64_t>{1, channels, 1, 1}
                                        : std::vector<int64_t>{1, groups, channels / groups, 1, 1};
    view.addcmul_(bias.view(bias_shape), term(valid.to(raw.scalar_type())));
  }
  return output;
}

at::Tensor renormalize_for_inference(const at::Tensor& raw, const at::Tensor& bias,
                                     const at::Tensor& ratio, const at::Tensor& valid,
                                     const InferencePost& post) {
  TORCH_CHECK(!at::GradMode::is_enabled(),
              "partial_conv2d: the fused inference epilogue records no gradient; call it with "
              "grad mode off");
  const bool has_bn = post.bn_weight.defined();
  const std::array<const at::Tensor*, 4> bn{&post.bn_weight, &post.bn_bias, &post.bn_mean,
                                            &post.bn_var};
  if (has_bn) {
    for (const at::Tensor* vector : bn) {
      TORCH_CHECK(vector->defined() && vector->dim() == 1 && vector->size(0) == raw.size(1) &&
                      vector->device() == raw.device(),
                  "partial_conv2d: BatchNorm vectors must be (", raw.size(1), ") on ",
                  raw.device());
    }
  }
  const bool fused = fused_enabled() && !has_tangent(raw) && !has_tangent(bias);
  const auto bn_fusable = [&](at::ScalarType dtype, bool cpu) {
    return std::all_of(bn.begin(), bn.end(), [&](const at::Tensor* vector) {
      return !has_bn || (vector->scalar_type() == dtype && vector->is_contiguous() &&
                         vector->device() == raw.device() && (!cpu || vector->is_cpu()));
    });
  };

  if (fused && cpu_fusable(raw, bias, ratio, valid) && bn_fusable(raw.scalar_type(), true)) {
    const PlaneIndex index = plane_index(raw, ratio);
    const int64_t planes = raw.size(0) * index.channels;
    AT_DISPATCH_FLOATING_TYPES(raw.scalar_type(), "pconv_renormalize_inference", [&] {
      auto* out = raw.mutable_data_ptr<scalar_t>();
      const auto* ratio_data = ratio.const_data_ptr<scalar_t>();
      const auto* valid_data = valid.const_data_ptr<scalar_t>();
      const scalar_t* bias_data = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
      const auto slope = static_cast<scalar_t>(post.slope);
      at::parallel_for(0, planes, grain_for(index.plane_size), [&](int64_t begin, int64_t end) {
        for (int64_t plane = begin; plane < end; ++plane) {
          const int64_t c = plane % index.channels;
          const auto [scale, shift] = batch_norm_scale_shift<scalar_t>(post, c);
          renormalize_post_plane<scalar_t>(
              out + plane * index.plane_size, ratio_data + index.term_offset(plane),
              valid_data + index.term_offset(plane),
              bias_data != nullptr ? bias_data[c] : scalar_t(0), scale, shift, post.activation,
              slope, post.zero_holes, index.plane_size);
        }
      });
    });
    return raw;
  }
  if (fused && cpu_channels_last_fusable(raw, bias, ratio, valid) &&
      bn_fusable(raw.scalar_type(), true)) {
    renormalize_channels_last_cpu(raw, bias, ratio, valid, &post);
    return raw;
  }

  if (fused && cuda_fusable(raw, bias, ratio, valid)) {
    // The bias and the BatchNorm vectors in one dtype the kernel reads: the output's or the
    // terms' (a model cast to bf16 has all of them in bf16: nothing to convert).
    const auto term = ratio.scalar_type();
    auto param =
        bias.defined() ? bias.scalar_type() : (has_bn ? post.bn_weight.scalar_type() : term);
    // Never down to the output's type for BatchNorm vectors that are wider: a running variance
    // over 65504 would become inf in float16.
    const bool bn_wider = has_bn && std::any_of(bn.begin(), bn.end(), [&](const at::Tensor* v) {
                            return v->scalar_type() != param;
                          });
    if (param != raw.scalar_type() || bn_wider) param = term;
    if (bn_fusable(param, false) &&
        (!bias.defined() || (bias.scalar_type() == param && bias.is_contiguous()))) {
      cuda::renormalize(raw, bias, ratio, valid, !raw.is_contiguous(), post);
    } else {
      InferencePost converted = post;
      for (at::Tensor* vector :
           {&converted.bn_weight, &converted.bn_bias, &converted.bn_mean, &converted.bn_var}) {
        if (vector->defined()) *vector = vector->to(param).contiguous();
      }
      cuda::renormalize(raw, bias.defined() ? bias.to(param).contiguous() : at::Tensor(), ratio,
                        valid, !raw.is_contiguous(), converted);
    }
    return raw;
  }

  // The reference path: the epilogue, then ATen's batch norm and activation.
  at::Tensor output = renormalize(raw, bias, ratio, valid);
  if (has_bn) {
    output = at::batch_norm(output, post.bn_weight, post.bn_bias, post.bn_mean, post.bn_var,
                            /*training=*/false, /*momentum=*/0.0, post.eps,
                            /*cudnn_enabled=*/true);
  }
  if (post.activation == Activation::kRelu) output = at::relu(output);
  if (post.activation == Activation::kLeakyRelu) output = at::leaky_relu(output, post.slope);
  if (post.zero_holes) {
    const int64_t groups = ratio.size(1);
    const auto mask = valid.to(output.scalar_type());
    output = groups == 1 ? output * mask
                         : (output.reshape({output.size(0), groups, output.size(1) / groups,
                                            output.size(2), output.size(3)}) *
                            mask.unsqueeze(2))
                               .reshape(output.sizes());
  }
  return output;
}

}  // namespace pconv::nn::functional::detail

namespace pconv::nn::functional {

void set_fused_kernels_enabled(bool enabled) {
  detail::g_fused_enabled.store(enabled, std::memory_order_relaxed);
}

bool fused_kernels_enabled() { return detail::fused_enabled(); }

bool cuda_kernels_built() { return detail::kCudaKernels; }

bool cuda_kernels_run_on(const c10::Device& device) {
  return detail::kCudaKernels && device.is_cuda() &&
         detail::cuda::kernels_run_on(device.has_index() ? device.index() : c10::DeviceIndex{-1});
}

}  // namespace pconv::nn::functional
