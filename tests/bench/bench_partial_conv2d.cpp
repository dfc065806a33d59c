// Benchmarks PartialConv2d (with its fused kernels and on the plain ATen path) against a plain
// Conv2d of the same shape and against NVIDIA's formulation of the layer, on the shapes of the
// paper's UNet, and prints the ratios.
//
//   bench_partial_conv2d [--threads N] [--device cpu|cuda] [--shape I] [--dtype fp32|bf16|fp16]
//                        [--format nchw|cl] [--batch N] [google benchmark flags]
//
// --shape I runs only the I-th layer shape (0-based); scripts/bench.sh runs each shape in a
// process of its own, which keeps one shape's heap layout from skewing another's timings.
// --batch N times batch N alone instead of batches 1 and 4 (on a GPU, a batch large enough
// that the launches' host time no longer sets the pace).
//
// Without --shape it also times a layer so small that its arithmetic costs next to nothing
// (16->16 k3 @4, batch 1): what it takes then is the host's cost of a call (dispatch,
// autograd, allocations, launches), pconv's against Conv2d's, also with a one-channel mask (the
// UNet's layers: ATen's convolution, then the epilogue). --shape host runs only that.
#include <pconv/nn/functional/partial_conv2d.h>
#include <pconv/nn/partial_conv2d.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/cuda.h>
#include <torch/nn/modules/conv.h>

#include <benchmark/benchmark.h>

#include "bench_setup.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace {

struct Shape {
  const char* name;
  int64_t in_channels, out_channels, kernel, stride, size;
};

// The UNet's encoder layers at 512x512 input and one decoder layer (512 + 256 channels in).
const std::vector<Shape> kShapes = {
    {"3->64 k7 s2 @256", 3, 64, 7, 2, 256},     {"64->128 k5 s2 @128", 64, 128, 5, 2, 128},
    {"128->256 k5 s2 @64", 128, 256, 5, 2, 64}, {"256->512 k3 s2 @32", 256, 512, 3, 2, 32},
    {"512->512 k3 s2 @16", 512, 512, 3, 2, 16}, {"768->256 k3 s1 @64", 768, 256, 3, 1, 64},
};

// The host-bound layer: a handful of multiply-adds per output.
const Shape kHostShape = {"16->16 k3 s1 @4", 16, 16, 3, 1, 4};

// kPartialOneChannel: pconv with a one-channel mask (the host-bound layer only).
enum class Variant { kConv2d, kPartial, kPartialUnfused, kNvidia, kPartialOneChannel };
const char* variant_name(Variant variant) {
  switch (variant) {
    case Variant::kConv2d:
      return "conv2d";
    case Variant::kPartial:
      return "pconv";
    case Variant::kPartialUnfused:
      return "pconv-unfused";
    case Variant::kNvidia:
      return "nvidia";
    case Variant::kPartialOneChannel:
      return "pconv-one-channel-mask";
  }
  return "?";
}

c10::Device g_device(c10::kCPU);
c10::ScalarType g_dtype = c10::kFloat;
at::MemoryFormat g_format = at::MemoryFormat::Contiguous;
std::vector<int64_t> g_batches = {1, 4};

// NVIDIA's PartialConv2d forward (multi-channel), written out: a ones kernel of
// C_out x C_in x k x k over the mask, the ratio with 1e-8, clamps and multiplies.
std::tuple<at::Tensor, at::Tensor> nvidia_forward(const at::Tensor& input, const at::Tensor& mask,
                                                  const at::Tensor& weight, const at::Tensor& bias,
                                                  const at::Tensor& ones_kernel, int64_t stride,
                                                  int64_t padding) {
  at::Tensor update_mask;
  at::Tensor ratio;
  {
    at::NoGradGuard no_grad;
    update_mask = at::conv2d(mask, ones_kernel, {}, stride, padding);
    const auto window =
        static_cast<double>(ones_kernel.size(1) * ones_kernel.size(2) * ones_kernel.size(3));
    ratio = window / (update_mask + 1e-8);
    update_mask = at::clamp(update_mask, 0, 1);
    ratio = at::mul(ratio, update_mask);
  }
  const auto raw = at::conv2d(at::mul(input, mask), weight, bias, stride, padding);
  const auto bias_view = bias.view({1, -1, 1, 1});
  auto output = at::mul(raw - bias_view, ratio) + bias_view;
  output = at::mul(output, update_mask);
  return {output, update_mask};
}

void sync() {
  if (g_device.is_cuda()) torch::cuda::synchronize();
}

// One step of a layer (forward, or forward+backward); it holds what it needs.
std::function<void()> make_layer_step(const Shape& shape, Variant variant, bool backward,
                                      int64_t batch) {
  torch::manual_seed(0);
  const auto options = at::TensorOptions().device(g_device);
  const int64_t padding = shape.kernel / 2;
  torch::nn::Conv2d conv(
      torch::nn::Conv2dOptions(shape.in_channels, shape.out_channels, shape.kernel)
          .stride(shape.stride)
          .padding(padding));
  pconv::nn::PartialConv2d pconv(
      pconv::nn::PartialConv2dOptions(shape.in_channels, shape.out_channels, shape.kernel)
          .stride(shape.stride)
          .padding(padding)
          .multi_channel(variant != Variant::kPartialOneChannel));
  conv->to(g_device, g_dtype);
  pconv->to(g_device, g_dtype);
  if (g_format == at::MemoryFormat::ChannelsLast) {
    at::NoGradGuard no_grad;
    for (auto* weight : {&conv->weight, &pconv->weight}) {
      weight->set_data(weight->contiguous(g_format));
    }
  }
  const auto ones_kernel = at::ones(
      {shape.out_channels, shape.in_channels, shape.kernel, shape.kernel}, options.dtype(g_dtype));
  // Inside the network every layer's input needs a gradient, except the image at the first.
  const bool input_grad = backward && shape.in_channels != 3;
  const auto input = at::randn({batch, shape.in_channels, shape.size, shape.size}, options)
                         .to(g_dtype)
                         .contiguous(g_format)
                         .requires_grad_(input_grad);
  // A multi-channel mask with a quarter of holes, stored in full as in the decoder (or the
  // one channel).
  const auto mask =
      (at::rand({batch, 1, shape.size, shape.size}, options) > 0.25)
          .to(at::kFloat)
          .expand({batch, variant == Variant::kPartialOneChannel ? 1 : shape.in_channels,
                   shape.size, shape.size})
          .to(g_dtype)
          .contiguous(g_format);

  return [conv, pconv, input, mask, ones_kernel, variant, backward, input_grad, shape,
          padding]() mutable {
    at::Tensor output;
    switch (variant) {
      case Variant::kConv2d:
        output = conv(input);
        break;
      case Variant::kPartial:
      case Variant::kPartialUnfused:
      case Variant::kPartialOneChannel:
        output = std::get<0>(pconv(input, mask));
        break;
      case Variant::kNvidia:
        output = std::get<0>(nvidia_forward(input, mask, pconv->weight, pconv->bias, ones_kernel,
                                            shape.stride, padding));
        break;
    }
    if (backward) {
      output.backward(at::ones_like(output));
      for (auto* parameters : {&conv->weight, &conv->bias, &pconv->weight, &pconv->bias}) {
        parameters->mutable_grad().reset();
      }
      if (input_grad) input.mutable_grad().reset();
    }
    benchmark::DoNotOptimize(output);
  };
}

void run_layer(benchmark::State& state, const Shape& shape, Variant variant, bool backward,
               int64_t batch) {
  pconv::nn::functional::set_fused_kernels_enabled(variant != Variant::kPartialUnfused);
  const auto step = make_layer_step(shape, variant, backward, batch);

  std::unique_ptr<at::NoGradGuard> no_grad;
  if (!backward) no_grad = std::make_unique<at::NoGradGuard>();
  step();  // warm up: allocator, oneDNN primitive caches, cuDNN algorithm choice
  sync();
  for (auto _ : state) {
    step();
    sync();
  }
  state.SetItemsProcessed(state.iterations() * batch);
  pconv::nn::functional::set_fused_kernels_enabled(true);
}

// Collects each run's time, then prints the ratio table in Markdown.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  // Plain text: the output goes to logs (a reporter of one's own does not get the
  // --benchmark_color flag's setting).
  RatioReporter() : ConsoleReporter(OO_None) {}

  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const auto& run : runs) {
      if (run.error_occurred) continue;
      // In the run's time unit (ms): one entry per repetition or, where only the aggregates are
      // reported (--benchmark_report_aggregates_only), the median of the repetitions.
      if (run.run_type == Run::RT_Iteration) {
        times_[run.run_name.function_name].push_back(run.GetAdjustedRealTime());
      } else if (run.aggregate_name == "median") {
        medians_[run.run_name.function_name] = run.GetAdjustedRealTime();
      }
    }
  }

  void PrintRatios() const {
    std::printf("\nMedian times over the repetitions.\n");
    bool header = false;
    std::map<std::string, std::pair<double, int>> log_sums;  // geometric means per pass
    for (const char* pass : {"forward", "forward+backward"}) {
      for (const auto& shape : kShapes) {
        for (const int64_t batch : g_batches) {
          const auto time = [&](Variant variant) { return Time(shape, variant, pass, batch); };
          const double conv = time(Variant::kConv2d);
          const double partial = time(Variant::kPartial);
          const double unfused = time(Variant::kPartialUnfused);
          const double nvidia = time(Variant::kNvidia);
          if (std::isnan(conv) || std::isnan(partial) || std::isnan(unfused) ||
              std::isnan(nvidia)) {
            continue;
          }
          if (!header) {
            std::printf(
                "\n| layer | pass | batch | conv2d ms | pconv ms | pconv unfused ms | nvidia ms | "
                "pconv / conv2d | unfused / pconv | nvidia / pconv |\n"
                "|---|---|---|---|---|---|---|---|---|---|\n");
            header = true;
          }
          std::printf("| %s | %s | %lld | %.3f | %.3f | %.3f | %.3f | %.3f | %.2f | %.2f |\n",
                      shape.name, pass, static_cast<long long>(batch), conv, partial, unfused,
                      nvidia, partial / conv, unfused / partial, nvidia / partial);
          for (const auto& key :
               {std::string(pass), std::string(pass) + " b" + std::to_string(batch)}) {
            log_sums[key + " vs conv2d"].first += std::log(partial / conv);
            log_sums[key + " vs conv2d"].second += 1;
            log_sums[key + " nvidia speed-up"].first += std::log(nvidia / partial);
            log_sums[key + " nvidia speed-up"].second += 1;
            log_sums[key + " fused speed-up"].first += std::log(unfused / partial);
            log_sums[key + " fused speed-up"].second += 1;
          }
        }
      }
    }
    PrintHostCost();
    if (log_sums.empty()) return;
    std::printf(
        "\nGeometric means (pconv / conv2d: target <= 1.15 on the CPU, <= 1.2 in bf16 "
        "forward+backward on a GPU; nvidia / pconv: target >= 1.5):\n");
    for (const auto& [key, sum] : log_sums) {
      std::printf("  %-36s %.3f  (%d runs)\n", key.c_str(), std::exp(sum.first / sum.second),
                  sum.second);
    }
  }

  // The host-bound layer's times, in microseconds, where they were run.
  void PrintHostCost() const {
    bool header = false;
    for (const char* pass : {"forward", "forward+backward"}) {
      const auto time = [&](Variant variant) { return Time(kHostShape, variant, pass, 1) * 1000; };
      const double conv = time(Variant::kConv2d);
      const double partial = time(Variant::kPartial);
      const double unfused = time(Variant::kPartialUnfused);
      const double one_channel = time(Variant::kPartialOneChannel);
      if (std::isnan(conv) || std::isnan(partial) || std::isnan(unfused) ||
          std::isnan(one_channel)) {
        continue;
      }
      if (!header) {
        std::printf(
            "\nHost cost of a call (%s, batch 1: the arithmetic is negligible), microseconds:\n\n"
            "| pass | conv2d | pconv | pconv unfused | pconv - conv2d | pconv / conv2d | "
            "pconv one-channel mask | that - conv2d |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|\n",
            kHostShape.name);
        header = true;
      }
      std::printf("| %s | %.1f | %.1f | %.1f | %.1f | %.2f | %.1f | %.1f |\n", pass, conv, partial,
                  unfused, partial - conv, partial / conv, one_channel, one_channel - conv);
    }
  }

  // A run's median time in milliseconds, NaN where it did not run.
  double Time(const Shape& shape, Variant variant, const char* pass, int64_t batch) const {
    const std::string name = Name(shape, variant, pass, batch);
    const auto found = times_.find(name);
    if (found != times_.end()) return Median(found->second);
    const auto median = medians_.find(name);
    return median == medians_.end() ? NAN : median->second;
  }

  static double Median(std::vector<double> values) {
    std::sort(values.begin(), values.end());
    const size_t middle = values.size() / 2;
    return values.size() % 2 == 1 ? values[middle] : (values[middle - 1] + values[middle]) / 2;
  }

  static std::string Name(const Shape& shape, Variant variant, const char* pass, int64_t batch) {
    return std::string("layer/") + pass + "/" + shape.name + "/b" + std::to_string(batch) + "/" +
           variant_name(variant);
  }

 private:
  std::map<std::string, std::vector<double>> times_;
  std::map<std::string, double> medians_;
};

}  // namespace

int main(int argc, char** argv) {
  pconv::bench::BenchSetup setup;
  if (!pconv::bench::setup(argc, argv, {"--shape", "--dtype", "--format", "--batch"}, setup)) {
    return 2;
  }
  g_device = setup.device;
  const std::string dtype = setup.extra.count("--dtype") != 0 ? setup.extra["--dtype"] : "fp32";
  const std::string format = setup.extra.count("--format") != 0 ? setup.extra["--format"] : "nchw";
  if ((dtype != "fp32" && dtype != "bf16" && dtype != "fp16") ||
      (format != "nchw" && format != "cl")) {
    std::fprintf(stderr, "%s: --dtype is fp32, bf16 or fp16; --format is nchw or cl\n", argv[0]);
    return 2;
  }
  if (setup.extra.count("--batch") != 0) {
    const int64_t batch = std::atoll(setup.extra["--batch"].c_str());
    if (batch < 1) {
      std::fprintf(stderr, "%s: --batch takes a positive whole number\n", argv[0]);
      return 2;
    }
    g_batches = {batch};
  }
  g_dtype = dtype == "bf16" ? c10::kBFloat16 : dtype == "fp16" ? c10::kHalf : c10::kFloat;
  g_format = format == "cl" ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  std::printf("device %s, %s, %s; fused CUDA kernels in this build: %s\n", g_device.str().c_str(),
              dtype.c_str(), format.c_str(),
              pconv::nn::functional::cuda_kernels_built() ? "yes" : "no");
  // -1: every shape and the host-bound layer; -2: the host-bound layer alone.
  const std::string shape_flag = setup.extra.count("--shape") != 0 ? setup.extra["--shape"] : "";
  const int only_shape = shape_flag.empty()     ? -1
                         : shape_flag == "host" ? -2
                                                : std::atoi(shape_flag.c_str());
  const auto shape_runs = [&](size_t index) {
    return only_shape == -1 || only_shape == static_cast<int>(index);
  };

  // What one forward+backward dispatches at batch 1, counted by LibTorch's profiler: on CUDA
  // the launches (what sets the pace at these sizes), on the CPU the operator calls.
  std::printf("\nProfiled events per forward+backward, batch 1 (%s):\n\n",
              g_device.is_cuda() ? "CUDA kernels, memsets and copies" : "CPU operator calls");
  std::printf("| layer | conv2d | pconv | pconv unfused |\n|---|---:|---:|---:|\n");
  for (size_t index = 0; index < kShapes.size(); ++index) {
    if (!shape_runs(index)) continue;
    std::printf("| %s |", kShapes[index].name);
    std::fflush(stdout);  // before the profiler's own messages, if any
    for (const Variant variant : {Variant::kConv2d, Variant::kPartial, Variant::kPartialUnfused}) {
      pconv::nn::functional::set_fused_kernels_enabled(variant != Variant::kPartialUnfused);
      const auto layer_step = make_layer_step(kShapes[index], variant, /*backward=*/true, 1);
      const auto step = [&] {
        layer_step();
        sync();
      };
      step();  // warm up
      std::printf(" %lld |", static_cast<long long>(pconv::bench::profiled_events(g_device, step)));
    }
    std::printf("\n");
  }
  pconv::nn::functional::set_fused_kernels_enabled(true);
  std::printf("\n");

  for (const char* pass : {"forward", "forward+backward"}) {
    const bool backward = std::strcmp(pass, "forward") != 0;
    for (size_t index = 0; index < kShapes.size(); ++index) {
      if (!shape_runs(index)) continue;
      const Shape& shape = kShapes[index];
      for (const int64_t batch : g_batches) {
        for (const Variant variant :
             {Variant::kConv2d, Variant::kPartial, Variant::kPartialUnfused, Variant::kNvidia}) {
          pconv::bench::register_timed(
              RatioReporter::Name(shape, variant, pass, batch),
              [=](benchmark::State& state) { run_layer(state, shape, variant, backward, batch); });
        }
      }
    }
    if (only_shape < 0) {
      for (const Variant variant : {Variant::kConv2d, Variant::kPartial, Variant::kPartialUnfused,
                                    Variant::kPartialOneChannel}) {
        pconv::bench::register_timed(
            RatioReporter::Name(kHostShape, variant, pass, 1),
            [=](benchmark::State& state) { run_layer(state, kHostShape, variant, backward, 1); });
      }
    }
  }

  RatioReporter reporter;
  const int status = pconv::bench::run_benchmarks(setup, &reporter);
  if (status == 0) reporter.PrintRatios();
  return status;
}
