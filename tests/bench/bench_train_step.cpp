// Benchmarks one training step (forward, loss, backward, Adam) of the UNet at 256x256, batch 4,
// for a small model that trains on a CPU and for the paper's widths, with the pixel loss terms
// only and with the VGG16 perceptual and style terms. Reports images per second.
//
//   bench_train_step [--threads N] [--device cpu|cuda] [google benchmark flags]
#include <pconv/data/mask_generator.h>
#include <pconv/loss/inpainting_loss.h>
#include <pconv/nn/pconv_unet.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <torch/optim/adam.h>

#include <benchmark/benchmark.h>

#include "bench_setup.h"

#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

namespace {

constexpr int64_t kSize = 256;
constexpr int64_t kBatch = 4;
c10::Device g_device(c10::kCPU);

void train_step(benchmark::State& state, int64_t width, int64_t max_width, bool with_vgg) {
  torch::manual_seed(0);
  pconv::nn::PConvUNet model(
      pconv::nn::PConvUNetOptions().depth(7).base_width(width).max_width(max_width));
  model->to(g_device);
  model->train();
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(2e-4));
  std::optional<pconv::loss::Vgg16Features> features;
  if (with_vgg) {
    pconv::loss::Vgg16Features network;  // random weights cost the same as trained ones
    network->eval();
    for (auto& parameter : network->parameters()) parameter.requires_grad_(false);
    features = network;
  }
  pconv::loss::InpaintingLoss loss({}, features);
  loss.to(g_device);
  const auto images = at::rand({kBatch, 3, kSize, kSize}).to(g_device);
  const pconv::data::MaskGenerator generator(pconv::data::MaskGeneratorOptions(kSize, kSize), 1);
  std::vector<at::Tensor> mask_list;
  for (int64_t i = 0; i < kBatch; ++i) mask_list.push_back(generator.mask(i));
  const auto masks = at::stack(mask_list).to(g_device);

  auto step = [&] {
    optimizer.zero_grad();
    const auto output = std::get<0>(model(images * masks, masks));
    loss(output, images, masks).total.backward();
    optimizer.step();
    if (g_device.is_cuda()) torch::cuda::synchronize();
  };
  step();  // warm up
  for (auto _ : state) step();
  state.SetItemsProcessed(state.iterations() * kBatch);
  state.counters["images/s"] = benchmark::Counter(static_cast<double>(state.iterations() * kBatch),
                                                  benchmark::Counter::kIsRate);
}

}  // namespace

int main(int argc, char** argv) {
  pconv::bench::BenchSetup setup;
  if (!pconv::bench::setup(argc, argv, {}, setup)) return 2;
  g_device = setup.device;
  std::printf("%lldx%lld, batch %lld\n", static_cast<long long>(kSize),
              static_cast<long long>(kSize), static_cast<long long>(kBatch));
  struct Variant {
    const char* name;
    int64_t width, max_width;
    bool vgg;
  };
  for (const auto& v :
       {Variant{"small(16-128)/pixel", 16, 128, false}, Variant{"small(16-128)/vgg", 16, 128, true},
        Variant{"paper(64-512)/pixel", 64, 512, false},
        Variant{"paper(64-512)/vgg", 64, 512, true}}) {
    pconv::bench::register_timed(std::string("train_step/") + v.name, [v](benchmark::State& state) {
      train_step(state, v.width, v.max_width, v.vgg);
    });
  }
  return pconv::bench::run_benchmarks(setup);
}
