#include "pconv/data/mask_folder.h"

#include "seed_mix.h"

#include "pconv/data/image_folder.h"
#include "pconv/error.h"
#include "pconv/io/image_file.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <random>

namespace pconv::data {
namespace {

constexpr double kPi = 3.14159265358979323846;
// A mask's shorter side is scaled to 1 to this many times the crop's side.
constexpr double kMostScaleOverCrop = 1.25;
// Random places tried for a crop with both holes and valid pixels.
constexpr int kCropAttempts = 8;

}  // namespace

MaskFolder::MaskFolder(const std::filesystem::path& folder, MaskFolderOptions options,
                       uint64_t seed)
    : folder_(folder), files_(list_images(folder)), options_(options), seed_(seed) {}

void MaskFolder::set_warning_hook(std::function<void(const std::string&)> hook) {
  std::lock_guard<std::mutex> lock(unreadable_->mutex);
  unreadable_->hook = std::move(hook);
}

torch::Tensor MaskFolder::mask(uint64_t index) const {
  std::mt19937_64 rng(detail::mix_seed(seed_, detail::SeedStream::kMaskFolder, index));
  const size_t chosen = std::uniform_int_distribution<size_t>(0, files_.size() - 1)(rng);
  torch::Tensor pixels;
  for (size_t step = 0; step < files_.size() && !pixels.defined(); ++step) {
    const auto& path = files_[(chosen + step) % files_.size()];
    {
      std::lock_guard<std::mutex> lock(unreadable_->mutex);
      if (unreadable_->files.count(path.string()) != 0) continue;
    }
    try {
      pixels = io::read_image(path).pixels;
    } catch (const InputError& error) {
      std::function<void(const std::string&)> hook;
      {
        std::lock_guard<std::mutex> lock(unreadable_->mutex);
        if (unreadable_->files.insert(path.string()).second) hook = unreadable_->hook;
      }
      if (hook) hook(std::string(error.what()) + " (skipped)");
    }
  }
  if (!pixels.defined()) {
    throw InputError(folder_.string() + ": none of its " + std::to_string(files_.size()) +
                     " mask images can be read");
  }
  // (1, 1, H, W), 1 = hole; thresholded as pconv inpaint reads a mask.
  auto holes = io::holes_from_mask(io::Image{pixels, 8}, options_.convention())
                   .to(at::kFloat)
                   .unsqueeze(0)
                   .unsqueeze(0);

  if (std::bernoulli_distribution(0.5)(rng)) holes = holes.flip({3});
  if (std::bernoulli_distribution(0.5)(rng)) holes = holes.flip({2});
  const double angle = std::uniform_real_distribution<double>(-options_.max_rotation(),
                                                              options_.max_rotation())(rng) *
                       kPi / 180.0;
  if (angle != 0.0) {
    // Rotation about the centre; what comes in from outside the picture is valid. The grid's
    // coordinates run over [-1, 1] on both sides, so a W x H mask's rotation has the aspect
    // ratio in it (without, a non-square mask would be sheared).
    const double aspect = static_cast<double>(holes.size(3)) / static_cast<double>(holes.size(2));
    const auto theta = torch::tensor({std::cos(angle), -std::sin(angle) / aspect, 0.0,
                                      std::sin(angle) * aspect, std::cos(angle), 0.0})
                           .view({1, 2, 3})
                           .to(at::kFloat);
    const auto grid = at::affine_grid_generator(theta, holes.sizes(), /*align_corners=*/false);
    holes = at::grid_sampler(holes, grid, /*interpolation nearest*/ 1, /*padding zeros*/ 0,
                             /*align_corners=*/false);
  }
  const int64_t dilation =
      std::uniform_int_distribution<int64_t>(0, std::max<int64_t>(0, options_.max_dilation()))(rng);

  // Scaled so that the shorter side is 1 to 1.25 x S: up by nearest neighbour; down with a
  // pixel a hole where any part of it is one, so that a 1-pixel scratch survives (a wide hole
  // grows by up to a pixel at its edges).
  const int64_t size = options_.size();
  const int64_t height = holes.size(2);
  const int64_t width = holes.size(3);
  const double shorter = static_cast<double>(size) *
                         std::uniform_real_distribution<double>(1.0, kMostScaleOverCrop)(rng);
  const double scale = shorter / static_cast<double>(std::min(height, width));
  const int64_t scaled_h =
      std::max(size, static_cast<int64_t>(std::lround(static_cast<double>(height) * scale)));
  const int64_t scaled_w =
      std::max(size, static_cast<int64_t>(std::lround(static_cast<double>(width) * scale)));
  if (scaled_h > height || scaled_w > width) {
    holes = at::upsample_nearest2d(holes, {scaled_h, scaled_w});
  } else if (scaled_h < height || scaled_w < width) {
    holes = std::get<0>(at::adaptive_max_pool2d(holes, {scaled_h, scaled_w}));
  }
  // Dilated at the crop's scale: max_dilation is in the crop's pixels.
  if (dilation > 0) holes = at::max_pool2d(holes, 2 * dilation + 1, 1, dilation);
  // A crop with a hole and something known, where one of a few places has it.
  at::Tensor crop;
  for (int attempt = 0; attempt < kCropAttempts; ++attempt) {
    const int64_t top = std::uniform_int_distribution<int64_t>(0, holes.size(2) - size)(rng);
    const int64_t left = std::uniform_int_distribution<int64_t>(0, holes.size(3) - size)(rng);
    crop = holes.narrow(2, top, size).narrow(3, left, size);
    const auto ratio = crop.mean().item<double>();
    if (ratio > 0.0 && ratio < 1.0) break;
  }
  return 1.0 - crop.squeeze(0).contiguous();
}

MaskSurvey MaskFolder::survey(size_t most) const {
  MaskSurvey survey;
  const size_t count = std::min(most, files_.size());
  for (size_t i = 0; i < count; ++i) {
    const auto& path = files_[i * files_.size() / count];
    at::Tensor holes;
    try {
      holes = io::holes_from_mask(io::read_image(path), options_.convention());
    } catch (const InputError&) {
      continue;  // mask() reports it, once
    }
    const auto ratio = holes.to(at::kDouble).mean().item<double>();
    ++survey.files_read;
    survey.mean_hole_ratio += ratio;
    if (ratio == 0.0) ++survey.without_holes;
    if (ratio == 1.0) ++survey.all_hole;
  }
  if (survey.files_read > 0) survey.mean_hole_ratio /= static_cast<double>(survey.files_read);
  return survey;
}

}  // namespace pconv::data
