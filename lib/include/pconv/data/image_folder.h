// Training and validation data from a folder of photos: listing, random scale + crop + flip,
// fixed validation crops, and a stream of batches decoded by worker threads ahead of use.
#pragma once

#include <pconv/data/mask_generator.h>

#include <torch/arg.h>
#include <torch/types.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace pconv::data {

/// Image files under `folder`, recursively, with an extension io::image_extensions() lists;
/// sorted by path so that every run sees the same order. Hidden names (a leading dot: .git,
/// .thumbnails, a command's unfinished files) are passed over. Links to files are followed,
/// links to folders are not (and are reported as skipped). A subfolder that cannot be listed, or an
/// image name that cannot be looked at (a link to nowhere, a loop of links), is left out and, when
/// given, `skipped` is called with "PATH: why; skipped". Throws pconv::InputError naming the folder
/// if it is missing, cannot be listed or holds no image.
std::vector<std::filesystem::path> list_images(
    const std::filesystem::path& folder,
    const std::function<void(const std::string&)>& skipped = {});

/// How training crops are made from a photo.
struct CropOptions {
  /// Side of the square crops, in pixels.
  TORCH_ARG(int64_t, size) = 256;
  /// The shorter side is first scaled to a random length in [size, max_scale * size] (never
  /// above its own length unless the photo is smaller than `size`).
  TORCH_ARG(double, max_scale) = 1.5;
  /// Photos whose shorter side is below this fraction of `size` are skipped as too small;
  /// smaller photos above it are upscaled so that the shorter side is `size`.
  TORCH_ARG(double, min_fraction) = 0.25;
};

/// One training example: an RGB crop (3, S, S) in [0, 1] and its mask (1, S, S), 1 = valid.
struct Example {
  torch::Tensor image;
  torch::Tensor mask;
};

/// A batch: images (B, 3, S, S) and masks (B, 1, S, S).
struct Batch {
  torch::Tensor images;
  torch::Tensor masks;
};

/// Reads `path` and returns an RGB crop: grey is repeated to three channels, alpha dropped,
/// 16-bit scaled to [0, 1]. With `random` the crop is randomly scaled, placed and flipped from
/// `seed`; otherwise it is the centre crop of the photo scaled so its shorter side is `size`.
/// Throws pconv::InputError for unreadable or too small photos.
torch::Tensor crop_example(const std::filesystem::path& path, const CropOptions& options,
                           bool random, uint64_t seed);

/// crop_example's crop of an image already read from `path` (io::read_image's pixels).
torch::Tensor crop_image(const torch::Tensor& pixels, const std::filesystem::path& path,
                         const CropOptions& options, bool random, uint64_t seed);

/// Where a stream's masks come from: mask `index` as (1, S, S), 1 = valid. It must depend only
/// on the index (MaskGenerator::mask and MaskFolder::mask do) and be safe to call from several
/// threads.
using MaskSource = std::function<torch::Tensor(uint64_t index)>;

/// An endless, reproducible stream of training batches. Example `i` (counted from the start of
/// training) uses photo `order[i mod n]` of a per-epoch shuffle of the files, crop randomness
/// from (seed, i) and mask `i` of the mask source, so the stream resumed at any batch continues
/// exactly as it would have, whatever the number of workers. Unreadable photos are skipped (the
/// next photo in the epoch's order takes their place) and reported once each. The stream starts
/// at example `first_example` (a resumed run's count of examples trained on). With `shards`
/// > 1 (data-parallel training) this stream is shard `shard`: its batch k is the part `shard`
/// of global batch k (batch_size * shards examples), i.e. examples first_example +
/// (k * shards + shard) * batch_size onwards, so the shards together see exactly what one
/// stream with batch_size * shards would, and a run resumed with another number of shards goes
/// on with the next example, none skipped or repeated.
class TrainingStream {
 public:
  TrainingStream(std::vector<std::filesystem::path> files, CropOptions crop, MaskSource masks,
                 int64_t batch_size, uint64_t seed, int workers, int64_t first_example = 0,
                 int64_t shard = 0, int64_t shards = 1);
  ~TrainingStream();
  TrainingStream(const TrainingStream&) = delete;
  TrainingStream& operator=(const TrainingStream&) = delete;

  /// The next batch; waits for the workers when they are behind.
  Batch next();

  /// Photos found unreadable so far (each reported once through the warning hook).
  std::vector<std::string> skipped() const;

  /// Called once per unreadable photo with a one-line message; the library never prints. Set
  /// before the first next(), it hears of every photo (the workers start with that call).
  void set_warning_hook(std::function<void(const std::string&)> hook);

 private:
  Example make_example(int64_t index);
  /// The shuffled file order of an epoch, computed once per epoch, not once per example.
  std::shared_ptr<const std::vector<int64_t>> epoch_order(int64_t epoch);
  void work();
  void start_workers();
  void stop_workers();

  std::vector<std::filesystem::path> files_;
  CropOptions crop_;
  MaskSource masks_;
  int64_t batch_size_;
  int64_t shard_;
  int64_t shards_;
  int64_t first_example_;
  uint64_t seed_;
  int64_t capacity_;  // examples decoded ahead at most
  int worker_count_;  // threads decoding ahead, started at the first batch; 0: next() decodes

  mutable std::mutex mutex_;
  std::condition_variable ready_;
  std::condition_variable space_;
  std::map<int64_t, Example> done_;
  std::map<int64_t, std::exception_ptr> failed_;  // example index -> error, for next() to rethrow
  std::set<std::string> skipped_;
  std::map<int64_t, std::shared_ptr<const std::vector<int64_t>>> epoch_orders_;
  std::function<void(const std::string&)> warning_hook_;
  int64_t next_to_claim_ = 0;  // local example indexes, counted from this stream's start
  int64_t next_to_deliver_ = 0;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace pconv::data
