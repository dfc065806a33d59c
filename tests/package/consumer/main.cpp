// Uses pconv through the installed/exported package as an embedding user would: the layer, and
// (given a model file and a folder) the README's load-a-model-and-inpaint example.
#include <pconv/infer/inpainter.h>
#include <pconv/io/image_file.h>
#include <pconv/io/model_file.h>
#include <pconv/nn/partial_conv2d.h>
#include <pconv/version.h>

#include <ATen/ATen.h>

#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

namespace {

bool layer_works() {
  pconv::nn::PartialConv2d conv(pconv::nn::PartialConv2dOptions(3, 8, 3).padding(1));
  const auto input = at::randn({1, 3, 16, 16});
  auto mask = at::ones({1, 1, 16, 16});
  mask.narrow(2, 4, 8).narrow(3, 4, 8).zero_();
  const auto [output, new_mask] = conv(input, mask);
  return output.sizes() == at::IntArrayRef{1, 8, 16, 16} &&
         new_mask.sum().item<double>() > mask.sum().item<double>();
}

#ifdef PCONV_WITH_OPENCV
constexpr const char* kExtension = ".png";
#else
constexpr const char* kExtension = ".pt";  // a build without OpenCV reads tensor images only
#endif

// The README's example, on a picture and a mask written here: known pixels come back exactly.
bool inpainting_works(const std::filesystem::path& model_file, const std::filesystem::path& dir) {
  const auto photo_file = dir / (std::string("photo") + kExtension);
  const auto mask_file = dir / (std::string("mask") + kExtension);
  const auto result_file = dir / (std::string("photo.inpainted") + kExtension);
  const auto y = at::linspace(0, 1, 64).view({1, 64, 1});
  const auto x = at::linspace(0, 1, 96).view({1, 1, 96});
  pconv::io::write_image(photo_file,
                         at::cat({y * x, y.expand({1, 64, 96}), x.expand({1, 64, 96})}));
  std::vector<uint8_t> hole_bytes(64 * 96, 0);
  for (int row = 20; row < 40; ++row) {
    for (int column = 30; column < 60; ++column) hole_bytes[row * 96 + column] = 1;
  }
  pconv::io::write_mask(mask_file, hole_bytes, 64, 96);

  auto model = pconv::io::load_model(model_file);  // pconv::ModelError if it is not one
  pconv::infer::Inpainter inpainter(model, at::kCPU);
  const auto image = pconv::io::read_image(photo_file);  // (C, H, W) float in [0, 1]
  const auto mask = pconv::io::read_image(mask_file);
  const auto holes = pconv::io::holes_from_mask(mask, pconv::io::MaskConvention::kWhiteIsHole);
  const auto result = inpainter.inpaint(image.pixels, holes);
  pconv::io::write_image(result_file, result.pixels, image.bit_depth);

  const auto known = holes.logical_not().expand_as(image.pixels);
  return holes.sum().item<int64_t>() == 20 * 30 &&
         at::equal(result.pixels.masked_select(known), image.pixels.masked_select(known)) &&
         result.pixels.isfinite().all().item<bool>() &&
         std::filesystem::is_regular_file(result_file);
}

}  // namespace

int main(int argc, char** argv) {
  bool ok = layer_works();
  if (argc == 3) ok = inpainting_works(argv[1], argv[2]) && ok;
  std::cout << "pconv " << pconv::kVersion << " consumer: " << (ok ? "ok" : "FAILED") << '\n';
  return ok ? 0 : 1;
}
