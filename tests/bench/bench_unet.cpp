// Benchmarks the whole UNet: inference at 512x512 (batch 1 and 16) and training steps at
// 256x256 (batch 16), for the shipped default model's widths and the paper's, in float32 and
// the reduced precisions, NCHW and channels-last, with the fused kernels and without. Reports
// images per second.
//
//   bench_unet [--threads N] [--device cpu|cuda] [google benchmark flags]
//
// Names: unet_infer/<model>/<fp32|bf16|fp16>/<nchw|cl>/<fused|unfused>/b<batch>
//        unet_infer/<model>/<fp32|bf16|fp16>/nchw/graph/b<batch>   (CUDA only)
//        unet_train/<model>/<amp: off|bf16|fp16>/<nchw|cl>/b<batch>
// "graph" replays one forward captured as a CUDA graph (fused kernels): what inference costs
// once the host's launches no longer set the pace (the same input each time, as a server
// answering requests of one size would copy them in).
// Inference converts the weights to the element type (as pconv inpaint --precision does);
// training keeps float32 weights under autocast, with loss scaling for fp16 (as pconv train
// --amp does), the pixel loss terms and Adam.
#include <pconv/data/mask_generator.h>
#include <pconv/loss/inpainting_loss.h>
#include <pconv/nn/functional/partial_conv2d.h>
#include <pconv/nn/pconv_unet.h>
#include <pconv/train/mixed_precision.h>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <torch/cuda.h>
#include <torch/optim/adam.h>

#include <benchmark/benchmark.h>

#ifdef PCONV_BENCH_CUDA_GRAPHS
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "bench_setup.h"

#include <optional>
#include <string>
#include <vector>

namespace {

c10::Device g_device(c10::kCPU);

struct Model {
  const char* name;
  int64_t base_width, max_width;
};
// The shipped default model and the paper's network, both 8 levels deep (512x512 inputs).
const std::vector<Model> kModels = {{"default(32-256)", 32, 256}, {"paper(64-512)", 64, 512}};

struct Precision {
  const char* name;
  std::optional<c10::ScalarType> type;  // nullopt: float32 (training: autocast off)
};
const std::vector<Precision> kPrecisions = {
    {"fp32", std::nullopt}, {"bf16", c10::kBFloat16}, {"fp16", c10::kHalf}};

void sync() {
  if (g_device.is_cuda()) torch::cuda::synchronize();
}

pconv::nn::PConvUNet make_model(const Model& spec, bool channels_last) {
  torch::manual_seed(0);
  pconv::nn::PConvUNet model(
      pconv::nn::PConvUNetOptions().depth(8).base_width(spec.base_width).max_width(spec.max_width));
  model->to(g_device);
  if (channels_last) pconv::nn::to_channels_last(*model);
  return model;
}

// Images in [0, 1] and irregular masks from the project's generator, on the device.
std::pair<at::Tensor, at::Tensor> make_batch(int64_t batch, int64_t size, bool channels_last) {
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const pconv::data::MaskGenerator generator(pconv::data::MaskGeneratorOptions(size, size), 1);
  std::vector<at::Tensor> masks;
  for (int64_t i = 0; i < batch; ++i) masks.push_back(generator.mask(i));
  const auto mask = at::stack(masks).to(g_device).contiguous(format);
  const auto image = at::rand({batch, 3, size, size}).to(g_device).contiguous(format);
  return {image * mask, mask};
}

void report(benchmark::State& state, int64_t batch) {
  state.SetItemsProcessed(state.iterations() * batch);
  state.counters["images/s"] = benchmark::Counter(static_cast<double>(state.iterations() * batch),
                                                  benchmark::Counter::kIsRate);
}

// A model in eval mode and a 512x512 batch, both in `type`, for inference.
struct InferenceInputs {
  pconv::nn::PConvUNet model;
  at::Tensor image, mask;
};

InferenceInputs make_inference(const Model& spec, c10::ScalarType type, int64_t batch,
                               bool channels_last) {
  auto model = make_model(spec, channels_last);
  model->eval();
  model->to(type);
  const auto [image, mask] = make_batch(batch, 512, channels_last);
  return {model, image.to(type), mask.to(type)};
}

void infer(benchmark::State& state, const Model& spec, const Precision& precision,
           bool channels_last, bool fused, int64_t batch) {
  if (precision.type == c10::kHalf && !g_device.is_cuda()) {
    state.SkipWithError("fp16 inference needs a CUDA device");
    return;
  }
  pconv::nn::functional::set_fused_kernels_enabled(fused);
  auto inputs = make_inference(spec, precision.type.value_or(c10::kFloat), batch, channels_last);
  const c10::InferenceMode guard;
  auto step = [&] {
    benchmark::DoNotOptimize(std::get<0>(inputs.model->forward(inputs.image, inputs.mask)));
    sync();
  };
  step();  // warm up: allocator, cuDNN algorithm choice
  for (auto _ : state) step();
  report(state, batch);
  pconv::nn::functional::set_fused_kernels_enabled(true);
}

// Inference replaying a CUDA graph of one forward pass.
void infer_graph(benchmark::State& state, const Model& spec, const Precision& precision,
                 int64_t batch) {
#ifdef PCONV_BENCH_CUDA_GRAPHS
  if (!g_device.is_cuda()) {
    state.SkipWithError("CUDA graphs need a CUDA device");
    return;
  }
  auto inputs = make_inference(spec, precision.type.value_or(c10::kFloat), batch,
                               /*channels_last=*/false);
  const c10::InferenceMode guard;
  at::Tensor output;
  at::cuda::CUDAGraph graph;
  sync();
  try {
    // Captured on a stream of its own, after warm-up passes there (cuDNN's algorithm choice,
    // the allocator).
    const c10::cuda::CUDAStreamGuard stream(c10::cuda::getStreamFromPool());
    for (int i = 0; i < 3; ++i)
      output = std::get<0>(inputs.model->forward(inputs.image, inputs.mask));
    sync();
    graph.capture_begin();
    output = std::get<0>(inputs.model->forward(inputs.image, inputs.mask));
    graph.capture_end();
  } catch (const std::exception& error) {
    // Reported, and the other benchmarks still run.
    state.SkipWithError((std::string("capture failed: ") + error.what()).c_str());
    return;
  }
  sync();
  auto step = [&] {
    graph.replay();
    sync();
  };
  step();
  for (auto _ : state) step();
  benchmark::DoNotOptimize(output);
  report(state, batch);
#else
  (void)spec;
  (void)precision;
  (void)batch;
  state.SkipWithError("this LibTorch has no CUDA");
#endif
}

void train(benchmark::State& state, const Model& spec, const Precision& amp, bool channels_last,
           int64_t batch) {
  auto model = make_model(spec, channels_last);
  model->train();
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(2e-4));
  pconv::loss::InpaintingLoss loss;
  loss.to(g_device);
  const auto [input, mask] = make_batch(batch, 256, channels_last);
  const auto truth = at::rand_like(input);
  pconv::train::GradScaler scaler;
  std::vector<at::Tensor> grads;
  auto step = [&] {
    optimizer.zero_grad();
    pconv::loss::LossTerms terms;
    {
      const pconv::train::AutocastScope autocast(g_device.type(), amp.type);
      const auto output = std::get<0>(model->forward(input, mask));
      terms = loss(output.to(at::kFloat), truth, mask);
    }
    if (amp.type == c10::kHalf) {
      scaler.scale(terms.total).backward();
      grads.clear();
      for (const auto& parameter : model->parameters()) grads.push_back(parameter.grad());
      if (scaler.unscale(grads)) optimizer.step();
      scaler.update();
    } else {
      terms.total.backward();
      optimizer.step();
    }
    sync();
  };
  step();  // warm up
  for (auto _ : state) step();
  report(state, batch);
}

}  // namespace

int main(int argc, char** argv) {
  pconv::bench::BenchSetup setup;
  if (!pconv::bench::setup(argc, argv, {}, setup)) return 2;
  g_device = setup.device;
  std::printf("device %s, fused CUDA kernels in this build: %s\n", g_device.str().c_str(),
              pconv::nn::functional::cuda_kernels_built() ? "yes" : "no");
  {
    // What one inference pass of the default model dispatches (bf16 on CUDA, fp32 on the
    // CPU), fused kernels and not: on CUDA the launches, the host's share at batch 1.
    auto inputs = make_inference(kModels[0], g_device.is_cuda() ? c10::kBFloat16 : c10::kFloat, 1,
                                 /*channels_last=*/false);
    const c10::InferenceMode guard;
    for (const bool fused : {true, false}) {
      pconv::nn::functional::set_fused_kernels_enabled(fused);
      auto pass = [&] {
        benchmark::DoNotOptimize(std::get<0>(inputs.model->forward(inputs.image, inputs.mask)));
        sync();
      };
      pass();  // warm up
      std::printf("profiled events on %s per %s inference pass, default model, %s, batch 1: %lld\n",
                  g_device.str().c_str(), fused ? "fused" : "unfused",
                  g_device.is_cuda() ? "bf16" : "fp32",
                  static_cast<long long>(pconv::bench::profiled_events(g_device, pass)));
    }
    pconv::nn::functional::set_fused_kernels_enabled(true);
  }

  for (const auto& model : kModels) {
    for (const auto& precision : kPrecisions) {
      for (const bool channels_last : {false, true}) {
        for (const bool fused : {true, false}) {
          for (const int64_t batch : {1, 16}) {
            const std::string name = std::string("unet_infer/") + model.name + "/" +
                                     precision.name + "/" + (channels_last ? "cl" : "nchw") + "/" +
                                     (fused ? "fused" : "unfused") + "/b" + std::to_string(batch);
            pconv::bench::register_timed(name, [=](benchmark::State& state) {
              infer(state, model, precision, channels_last, fused, batch);
            });
          }
        }
      }
    }
  }
  if (g_device.is_cuda()) {
    for (const auto& model : kModels) {
      for (const auto& precision : kPrecisions) {
        for (const int64_t batch : {1, 16}) {
          const std::string name = std::string("unet_infer/") + model.name + "/" + precision.name +
                                   "/nchw/graph/b" + std::to_string(batch);
          pconv::bench::register_timed(
              name, [=](benchmark::State& state) { infer_graph(state, model, precision, batch); });
        }
      }
    }
  }
  for (const auto& model : kModels) {
    for (const auto& amp : kPrecisions) {
      for (const bool channels_last : {false, true}) {
        const int64_t batch = 16;
        const std::string name = std::string("unet_train/") + model.name + "/" +
                                 (amp.type ? amp.name : "off") + "/" +
                                 (channels_last ? "cl" : "nchw") + "/b" + std::to_string(batch);
        pconv::bench::register_timed(
            name, [=](benchmark::State& state) { train(state, model, amp, channels_last, batch); });
      }
    }
  }
  return pconv::bench::run_benchmarks(setup);
}
