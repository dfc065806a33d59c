#include "demo.h"

#include <pconv/nn/partial_conv2d.h>

#include <ATen/ATen.h>
#include <torch/utils.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <vector>

namespace pconv::app {
namespace {

constexpr double kPi = 3.14159265358979323846;

// The kernel sizes of the paper's UNet encoder: 7, 5, 5, then 3.
int64_t encoder_kernel(int64_t layer) { return layer == 0 ? 7 : (layer < 3 ? 5 : 3); }

// The fraction of a unit square that a disc of radius `r` at its centre covers: the disc's area
// less the four segments past the sides once r > 1/2.
double covered_fraction(double r) {
  if (r <= 0.5) return kPi * r * r;
  if (r >= std::sqrt(0.5)) return 1.0;
  const double segment = r * r * std::acos(0.5 / r) - 0.5 * std::sqrt(r * r - 0.25);
  return kPi * r * r - 4.0 * segment;
}

// A disc-shaped hole in the middle of the image covering `hole_ratio` of it (mask 0 = hole);
// past pi/4 (0.785) the disc is wider than the image, and its radius is the one whose part
// inside the image has that area.
torch::Tensor disc_mask(int64_t size, double hole_ratio, c10::Device device) {
  double low = 0.0;
  double high = std::sqrt(0.5);
  for (int i = 0; i < 60; ++i) {  // covered_fraction grows with r
    const double middle = 0.5 * (low + high);
    (covered_fraction(middle) < hole_ratio ? low : high) = middle;
  }
  const double radius = 0.5 * (low + high) * static_cast<double>(size);
  const auto coords = at::arange(size, at::TensorOptions(at::kFloat).device(device)) -
                      static_cast<double>(size - 1) / 2.0;
  const auto distance2 = coords.view({-1, 1}).pow(2) + coords.view({1, -1}).pow(2);
  return (distance2 > radius * radius).to(at::kFloat).view({1, 1, size, size});
}

}  // namespace

void setup_demo(CLI::App& app) {
  auto options = std::make_shared<DemoOptions>();
  auto* command = app.add_subcommand(
      "demo",
      "Run a stack of stride-2 partial convolutions (the paper's encoder) over a random image "
      "with a round hole and print how the hole shrinks layer by layer");
  command->add_option("--size", options->size, "Image height and width in pixels")
      ->transform(whole_number(8, 8192))
      ->capture_default_str();
  command
      ->add_option(
          "--hole-ratio", options->hole_ratio,
          "Fraction of the image that is hole (a disc; above 0.785 it reaches past the edges)")
      ->check(number_in(0.0, 0.95))
      ->capture_default_str();
  command->add_option("--layers", options->layers, "Number of stride-2 layers")
      ->transform(whole_number(1, 10))
      ->capture_default_str();
  command
      ->add_option("--width", options->width,
                   "Channels of the first layer (doubled per layer, "
                   "at most 8x)")
      ->transform(whole_number(1, 512))
      ->capture_default_str();
  command->add_option("--seed", options->seed, "Random seed")
      ->transform(seed_number())
      ->capture_default_str();
  add_common_options(*command, options->common);
  command->callback([options] { run_demo(*options); });
}

void run_demo(const DemoOptions& options) {
  const c10::Device device = resolve_device(options.common);
  torch::manual_seed(options.seed);
  torch::NoGradGuard no_grad;

  auto image = at::rand({1, 3, options.size, options.size}, at::TensorOptions().device(device));
  auto mask = disc_mask(options.size, options.hole_ratio, device);
  spdlog::info("{}x{} image, {:.1f}% hole, {} layer{} on {}", options.size, options.size,
               100.0 * (1.0 - mask.mean().item<double>()), options.layers,
               options.layers == 1 ? "" : "s", device.str());

  fmt::print("{:>5}  {:>6}  {:>18}  {:>8}  {:>9}\n", "layer", "kernel", "output", "hole %",
             "time ms");
  int64_t channels = 3;
  for (int64_t layer = 0; layer < options.layers; ++layer) {
    const int64_t kernel = encoder_kernel(layer);
    const int64_t out_channels = options.width * std::min<int64_t>(int64_t{1} << layer, 8);
    pconv::nn::PartialConv2d conv(pconv::nn::PartialConv2dOptions(channels, out_channels, kernel)
                                      .stride(2)
                                      .padding(kernel / 2));
    conv->to(device);
    const auto start = std::chrono::steady_clock::now();
    std::tie(image, mask) = conv(image, mask);
    if (device.is_cuda()) image.cpu();  // wait for the GPU before reading the clock
    const double elapsed_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    const double hole_percent = 100.0 * (1.0 - mask.mean().item<double>());
    fmt::print("{:>5}  {:>6}  {:>18}  {:>8.2f}  {:>9.2f}\n", layer + 1,
               fmt::format("{}x{}", kernel, kernel),
               fmt::format("{}x{}x{}", out_channels, image.size(2), image.size(3)), hole_percent,
               elapsed_ms);
    channels = out_channels;
  }
  const bool finite = image.isfinite().all().item<bool>();
  fmt::print("output finite: {}\n", finite ? "yes" : "NO");
  if (!finite) throw std::runtime_error("demo: the output has non-finite values");
}

}  // namespace pconv::app
