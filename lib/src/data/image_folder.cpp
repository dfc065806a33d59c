#include "pconv/data/image_folder.h"

#include "../check_argument.h"

#include "seed_mix.h"

#include "pconv/error.h"
#include "pconv/io/image_file.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <system_error>
#include <utility>

namespace pconv::data {
namespace {

// Grey or RGB, without alpha: (1 or 3, H, W). Grey becomes RGB only after the resize and crop,
// which is cheaper and keeps the three channels exactly equal.
torch::Tensor without_alpha(const torch::Tensor& pixels) {
  return pixels.size(0) == 4 ? pixels.narrow(0, 0, 3) : pixels;
}

// Antialiased bilinear resize of (C, H, W) to (height, width).
torch::Tensor resize(const torch::Tensor& image, int64_t height, int64_t width) {
  if (image.size(1) == height && image.size(2) == width) return image;
  return at::_upsample_bilinear2d_aa(image.unsqueeze(0).contiguous(), {height, width},
                                     /*align_corners=*/false)
      .squeeze(0);
}

}  // namespace

std::vector<std::filesystem::path> list_images(
    const std::filesystem::path& folder, const std::function<void(const std::string&)>& skipped) {
  namespace fs = std::filesystem;
  std::error_code error;
  if (!fs::is_directory(folder, error)) {
    throw InputError(folder.string() + (fs::exists(folder, error) ? ": is a file, not a folder"
                                                                  : ": no such folder"));
  }
  const auto skip = [&](const fs::path& path, const std::string& why) {
    if (skipped) skipped(path.string() + ": " + why + "; skipped");
  };
  std::vector<fs::path> files;
  // Depth first by hand rather than with recursive_directory_iterator, so that a subfolder that
  // cannot be read, or an entry that cannot be looked at (a loop of links), is reported and
  // skipped instead of ending the listing or vanishing without a word.
  std::vector<fs::path> folders{folder};
  while (!folders.empty()) {
    const auto current = folders.back();
    folders.pop_back();
    fs::directory_iterator it(current, error);
    if (error) {
      if (current == folder) {
        throw InputError(folder.string() + ": cannot list the folder: " + error.message());
      }
      skip(current, "cannot list the folder: " + error.message());
      continue;
    }
    for (; it != fs::directory_iterator(); it.increment(error)) {
      const auto& path = it->path();
      if (path.filename().string().front() == '.') continue;  // hidden
      std::error_code entry_error;
      const bool is_link = it->is_symlink(entry_error);
      // The type the listing gave (no stat per file on a large dataset), a link's target's.
      const auto status = is_link ? fs::status(path, entry_error) : it->symlink_status(entry_error);
      if (entry_error) {
        // A link to nowhere matters only where it has an image's name; a loop of links or an
        // entry that cannot be looked at always does.
        if (io::has_image_extension(path) || entry_error != std::errc::no_such_file_or_directory) {
          skip(path, entry_error.message());
        }
        continue;
      }
      if (fs::is_directory(status)) {
        // Subfolders, not links to folders: a link can lead back up and never end.
        if (is_link) {
          skip(path, "a link to a folder, not followed");
        } else {
          folders.push_back(path);
        }
        continue;
      }
      if (fs::is_regular_file(status) && io::has_image_extension(path)) files.push_back(path);
    }
    if (error) {
      if (current == folder) {
        throw InputError(folder.string() + ": cannot list the folder: " + error.message());
      }
      skip(current, "cannot list the whole folder: " + error.message());
    }
  }
  if (files.empty()) {
    throw InputError(folder.string() + ": no images (" + io::image_extensions_text() +
                     ") in the folder");
  }
  std::sort(files.begin(), files.end());
  return files;
}

torch::Tensor crop_example(const std::filesystem::path& path, const CropOptions& options,
                           bool random, uint64_t seed) {
  // A photo larger than any crop asks for is scaled down as it is read, on its 8- or 16-bit
  // samples: a 6000x4000 photo took 0.9 s and 0.6 GB a crop in float (2026-11-25, session xi).
  // Its shorter side stays at least the largest a crop scales to, so crop_image draws the same.
  const auto largest = static_cast<int64_t>(
      std::ceil(std::max(1.0, options.max_scale()) * static_cast<double>(options.size())));
  return crop_image(io::read_image(path, largest).pixels, path, options, random, seed);
}

torch::Tensor crop_image(const torch::Tensor& pixels, const std::filesystem::path& path,
                         const CropOptions& options, bool random, uint64_t seed) {
  const int64_t size = options.size();
  const auto image = without_alpha(pixels);
  const int64_t height = image.size(1);
  const int64_t width = image.size(2);
  const int64_t shorter = std::min(height, width);
  if (static_cast<double>(shorter) < options.min_fraction() * static_cast<double>(size)) {
    throw InputError(path.string() + ": " + std::to_string(width) + "x" + std::to_string(height) +
                     " is too small for " + std::to_string(size) + "x" + std::to_string(size) +
                     " crops");
  }
  std::mt19937_64 rng(seed);
  // The shorter side's length after scaling: random in [size, max_scale * size] but not above
  // the photo's own (photos smaller than the crop are upscaled to exactly the crop).
  auto target = static_cast<double>(size);
  if (random) {
    const double upper = std::max(
        static_cast<double>(size),
        std::min(options.max_scale() * static_cast<double>(size), static_cast<double>(shorter)));
    target = std::uniform_real_distribution<double>(static_cast<double>(size), upper)(rng);
  }
  const double scale = target / static_cast<double>(shorter);
  const int64_t scaled_h =
      std::max(size, static_cast<int64_t>(std::lround(static_cast<double>(height) * scale)));
  const int64_t scaled_w =
      std::max(size, static_cast<int64_t>(std::lround(static_cast<double>(width) * scale)));
  const auto scaled = resize(image, scaled_h, scaled_w);
  int64_t top = (scaled_h - size) / 2;
  int64_t left = (scaled_w - size) / 2;
  bool flip = false;
  if (random) {
    top = std::uniform_int_distribution<int64_t>(0, scaled_h - size)(rng);
    left = std::uniform_int_distribution<int64_t>(0, scaled_w - size)(rng);
    flip = std::bernoulli_distribution(0.5)(rng);
  }
  auto crop = scaled.narrow(1, top, size).narrow(2, left, size);
  if (flip) crop = crop.flip({2});
  if (crop.size(0) == 1) crop = crop.expand({3, size, size});
  return crop.clamp(0.0, 1.0).contiguous();
}

TrainingStream::TrainingStream(std::vector<std::filesystem::path> files, CropOptions crop,
                               MaskSource masks, int64_t batch_size, uint64_t seed, int workers,
                               int64_t first_example, int64_t shard, int64_t shards)
    : files_(std::move(files)),
      crop_(crop),
      masks_(std::move(masks)),
      batch_size_(batch_size),
      shard_(shard),
      shards_(shards),
      first_example_(first_example),
      seed_(seed),
      capacity_(std::max<int64_t>(2 * batch_size, int64_t{4} * std::max(workers, 1))),
      worker_count_(std::max(workers, 0)) {
  PCONV_CHECK_ARGUMENT(!files_.empty(), "TrainingStream: no files");
  PCONV_CHECK_ARGUMENT(batch_size_ > 0, "TrainingStream: batch size must be positive; got ",
                       batch_size_);
  PCONV_CHECK_ARGUMENT(shards_ > 0 && shard_ >= 0 && shard_ < shards_, "TrainingStream: shard ",
                       shard_, " of ", shards_);
  PCONV_CHECK_ARGUMENT(first_example_ >= 0, "TrainingStream: the first example must be >= 0; got ",
                       first_example_);
}

TrainingStream::~TrainingStream() { stop_workers(); }

void TrainingStream::start_workers() {
  // At the first batch, not in the constructor: a warning hook set in between hears of every
  // photo skipped.
  int started = 0;
  try {
    for (; started < worker_count_; ++started) {
      workers_.emplace_back([this] { work(); });
    }
  } catch (...) {
    // A thread that cannot be started: the others are joined, not abandoned, and a later
    // next() decodes on the caller's thread.
    const int asked = worker_count_;
    stop_workers();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = false;
      worker_count_ = 0;
    }
    try {
      throw;
    } catch (const std::system_error& error) {  // the system's reason alone named nothing
      throw Error("cannot start data worker " + std::to_string(started + 1) + " of " +
                  std::to_string(asked) + ": " + error.what() +
                  " (the system's limit on threads or memory; fewer workers would do)");
    }
  }
}

void TrainingStream::stop_workers() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  space_.notify_all();
  ready_.notify_all();
  for (auto& worker : workers_) worker.join();
  workers_.clear();
}

void TrainingStream::set_warning_hook(std::function<void(const std::string&)> hook) {
  std::lock_guard<std::mutex> lock(mutex_);
  warning_hook_ = std::move(hook);
}

std::vector<std::string> TrainingStream::skipped() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return {skipped_.begin(), skipped_.end()};
}

std::shared_ptr<const std::vector<int64_t>> TrainingStream::epoch_order(int64_t epoch) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (const auto found = epoch_orders_.find(epoch); found != epoch_orders_.end()) {
    return found->second;
  }
  auto order = std::make_shared<std::vector<int64_t>>(files_.size());
  std::iota(order->begin(), order->end(), int64_t{0});
  std::shuffle(order->begin(), order->end(),
               std::mt19937_64(detail::mix_seed(seed_, detail::SeedStream::kEpochOrder,
                                                static_cast<uint64_t>(epoch))));
  // Workers are rarely more than one epoch apart; an evicted order is recomputed if needed.
  epoch_orders_.erase(epoch_orders_.begin(), epoch_orders_.lower_bound(epoch - 1));
  epoch_orders_.emplace(epoch, order);
  return order;
}

Example TrainingStream::make_example(int64_t local_index) {
  // Batch k of shard s holds part s of global batch k (counted from the first example).
  const int64_t index = first_example_ +
                        ((local_index / batch_size_) * shards_ + shard_) * batch_size_ +
                        local_index % batch_size_;
  const auto count = static_cast<int64_t>(files_.size());
  const auto order = epoch_order(index / count);
  const uint64_t example_seed =
      detail::mix_seed(seed_, detail::SeedStream::kCrop, static_cast<uint64_t>(index));
  for (int64_t attempt = 0; attempt < count; ++attempt) {
    const auto& path =
        files_[static_cast<size_t>((*order)[static_cast<size_t>((index + attempt) % count)])];
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (skipped_.count(path.string()) != 0) continue;
    }
    Example example;
    try {
      example.image = crop_example(path, crop_, /*random=*/true, example_seed);
    } catch (const InputError& error) {
      std::function<void(const std::string&)> hook;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!skipped_.insert(path.string()).second) continue;
        hook = warning_hook_;
      }
      if (hook) hook(std::string(error.what()) + " (skipped)");
      continue;
    }
    // The mask source's failures are its own (no mask can be read at all), not the photo's.
    example.mask = masks_(static_cast<uint64_t>(index));
    PCONV_CHECK_ARGUMENT(example.mask.dim() == 3 && example.mask.size(0) == 1 &&
                             example.mask.size(1) == crop_.size() &&
                             example.mask.size(2) == crop_.size(),
                         "TrainingStream: mask ", index, " is ", example.mask.sizes(),
                         "; expected (1, ", crop_.size(), ", ", crop_.size(), ")");
    return example;
  }
  throw InputError("no usable photo left among the " + std::to_string(count) + " files (" +
                   files_.front().string() + (count > 1 ? ", ..." : "") +
                   "): each is unreadable or too small for the crop (see the warnings above)");
}

void TrainingStream::work() {
  while (true) {
    int64_t index = 0;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      space_.wait(lock, [&] { return stopping_ || next_to_claim_ < next_to_deliver_ + capacity_; });
      if (stopping_) return;
      index = next_to_claim_++;
    }
    Example example;
    std::exception_ptr failure;
    try {
      example = make_example(index);
    } catch (...) {
      failure = std::current_exception();  // rethrown as it is: out of memory stays that
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!failure) {
        done_.emplace(index, std::move(example));
      } else {
        failed_.emplace(index, failure);
      }
    }
    ready_.notify_all();
  }
}

Batch TrainingStream::next() {
  std::vector<torch::Tensor> images;
  std::vector<torch::Tensor> masks;
  if (worker_count_ > 0 && workers_.empty()) start_workers();
  for (int64_t item = 0; item < batch_size_; ++item) {
    Example example;
    if (worker_count_ == 0) {
      example = make_example(next_to_deliver_++);
    } else {
      std::unique_lock<std::mutex> lock(mutex_);
      const int64_t index = next_to_deliver_;
      ready_.wait(lock, [&] { return done_.count(index) != 0 || failed_.count(index) != 0; });
      if (const auto failed = failed_.find(index); failed != failed_.end()) {
        std::rethrow_exception(failed->second);
      }
      example = std::move(done_.at(index));
      done_.erase(index);
      ++next_to_deliver_;
      lock.unlock();
      space_.notify_all();
    }
    images.push_back(example.image);
    masks.push_back(example.mask);
  }
  return {at::stack(images), at::stack(masks)};
}

}  // namespace pconv::data
