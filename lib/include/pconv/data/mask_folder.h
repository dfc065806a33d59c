// Hole masks from a folder of mask images (white = hole, or white = valid), augmented per example
// by flips, rotation, dilation, scaling and a random crop, reproducibly from a seed and an index.
#pragma once

#include <pconv/io/image_file.h>

#include <torch/arg.h>
#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

namespace pconv::data {

struct MaskFolderOptions {
  /// Side of the square masks produced.
  TORCH_ARG(int64_t, size) = 256;
  /// Largest dilation of the holes, in pixels of the produced mask (a random 0..max is applied,
  /// after the scaling).
  TORCH_ARG(int64_t, max_dilation) = 4;
  /// Largest rotation, in degrees (a random angle in [-max, max]).
  TORCH_ARG(double, max_rotation) = 45.0;
  /// Which pixels of the files are holes, thresholded as io::holes_from_mask does (as pconv
  /// inpaint reads its masks).
  TORCH_ARG(io::MaskConvention, convention) = io::MaskConvention::kWhiteIsHole;
};

/// What a look at a mask folder's files found (MaskFolder::survey).
struct MaskSurvey {
  size_t files_read = 0;
  double mean_hole_ratio = 0.0;  // over the files read
  size_t without_holes = 0;      // files read with no hole at all
  size_t all_hole = 0;           // files read that are hole everywhere
};

/// Reads the mask images of a folder (any format io::read_image takes) and makes training masks
/// from them.
class MaskFolder {
 public:
  /// Throws pconv::InputError naming the folder if it holds no image.
  MaskFolder(const std::filesystem::path& folder, MaskFolderOptions options, uint64_t seed);

  /// Mask `index` as a (1, S, S) float tensor, 1 = valid, 0 = hole: the file chosen by the
  /// index, randomly flipped, rotated, scaled so that its shorter side is 1 to 1.25 x S (a
  /// larger mask is scaled down, a pixel a hole where any part of it is, so that a crop sees
  /// about the whole mask as drawn for its picture and thin strokes survive), dilated and
  /// cropped where the crop has a hole and some valid pixels, if one of 8 random
  /// places has. A file that cannot be read is passed over for the next one in the folder (the
  /// same for every index and run, so training stays reproducible); throws pconv::InputError
  /// naming the folder only when no file can be read.
  torch::Tensor mask(uint64_t index) const;

  /// Reads up to `most` of the files (spread over the folder) and says what holes they hold,
  /// to warn of a folder in the other convention or without holes. Unreadable files are left
  /// out.
  MaskSurvey survey(size_t most) const;

  /// Called once for each mask file that cannot be read, with "FILE: why (skipped)". Copies of
  /// this MaskFolder share the hook and the files found unreadable.
  void set_warning_hook(std::function<void(const std::string&)> hook);

  size_t size() const { return files_.size(); }

 private:
  struct Unreadable {
    std::mutex mutex;
    std::set<std::string> files;
    std::function<void(const std::string&)> hook;
  };

  std::filesystem::path folder_;
  std::vector<std::filesystem::path> files_;
  MaskFolderOptions options_;
  uint64_t seed_;
  std::shared_ptr<Unreadable> unreadable_ = std::make_shared<Unreadable>();
};

}  // namespace pconv::data
