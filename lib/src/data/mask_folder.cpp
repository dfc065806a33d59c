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
  // Hole where the first channel is above half the range; (1, 1, H, W), 1 = hole.
  auto holes = (pixels.narrow(0, 0, 1) > 0.5).to(at::kFloat).unsqueeze(0);

  if (std::bernoulli_distribution(0.5)(rng)) holes = holes.flip({3});
  if (std::bernoulli_distribution(0.5)(rng)) holes = holes.flip({2});
  const double angle = std::uniform_real_distribution<double>(-options_.max_rotation(),
                                                              options_.max_rotation())(rng) *
                       kPi / 180.0;
  if (angle != 0.0) {
    // Rotation about the centre; what comes in from outside the picture is valid.
    const auto theta = torch::tensor({std::cos(angle), -std::sin(angle), 0.0, std::sin(angle),
                                      std::cos(angle), 0.0})
                           .view({1, 2, 3})
                           .to(at::kFloat);
    const auto grid = at::affine_grid_generator(theta, holes.sizes(), /*align_corners=*/false);
    holes = at::grid_sampler(holes, grid, /*interpolation nearest*/ 1, /*padding zeros*/ 0,
                             /*align_corners=*/false);
  }
  const int64_t dilation =
      std::uniform_int_distribution<int64_t>(0, std::max<int64_t>(0, options_.max_dilation()))(rng);
  if (dilation > 0) holes = at::max_pool2d(holes, 2 * dilation + 1, 1, dilation);

  const int64_t size = options_.size();
  const int64_t height = holes.size(2);
  const int64_t width = holes.size(3);
  const double scale =
      std::max(1.0, static_cast<double>(size) / static_cast<double>(std::min(height, width)));
  if (scale > 1.0) {
    holes = at::upsample_nearest2d(
        holes,
        {std::max(size, static_cast<int64_t>(std::ceil(static_cast<double>(height) * scale))),
         std::max(size, static_cast<int64_t>(std::ceil(static_cast<double>(width) * scale)))});
  }
  const int64_t top = std::uniform_int_distribution<int64_t>(0, holes.size(2) - size)(rng);
  const int64_t left = std::uniform_int_distribution<int64_t>(0, holes.size(3) - size)(rng);
  return 1.0 - holes.narrow(2, top, size).narrow(3, left, size).squeeze(0).contiguous();
}

}  // namespace pconv::data
