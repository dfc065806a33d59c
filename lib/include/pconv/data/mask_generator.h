// Irregular hole masks for training and evaluation: free-form strokes of random width,
// curvature and length, with optional elliptic blobs, seeded, hitting a hole-ratio range.
#pragma once

#include <torch/arg.h>
#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace pconv::data {

/// Options of MaskGenerator. Ratios are fractions of the image that are hole.
struct MaskGeneratorOptions {
  MaskGeneratorOptions(int64_t height, int64_t width) : height_(height), width_(width) {}

  /// Size of the masks, in pixels.
  TORCH_ARG(int64_t, height);
  TORCH_ARG(int64_t, width);
  /// The hole ratio of every mask lies in [min_ratio, max_ratio]; a target is drawn uniformly
  /// from that range for each mask.
  TORCH_ARG(double, min_ratio) = 0.01;
  TORCH_ARG(double, max_ratio) = 0.6;
  /// Stroke widths, as fractions of the shorter image side.
  TORCH_ARG(double, min_width) = 0.02;
  TORCH_ARG(double, max_width) = 0.10;
  /// Vertices per stroke; each segment turns by a random angle.
  TORCH_ARG(int64_t, max_vertices) = 10;
  /// Probability that a shape added to the mask is an ellipse rather than a stroke.
  TORCH_ARG(double, blob_probability) = 0.15;
  /// Probability that a stroke is a thin one, 1 to 3 pixels wide whatever the mask's size, as
  /// scratches and wires are (min_width and max_width apply to the others). 0 (the default)
  /// draws the same masks as before the option existed.
  TORCH_ARG(double, thin_probability) = 0.0;
};

/// Draws masks deterministically: mask `index` of a generator with seed `seed` is the same on
/// every call and every run (on one standard library), so evaluation bins are reproducible.
class MaskGenerator {
 public:
  explicit MaskGenerator(MaskGeneratorOptions options, uint64_t seed = 0);

  /// Hole map of mask `index`: height x width bytes, 1 = hole, 0 = valid. Throws
  /// pconv::InputError when no mask of this size has a hole ratio in the range (a 1x1 mask).
  std::vector<uint8_t> holes(uint64_t index) const;

  /// Mask `index` as a (1, H, W) float tensor in the network's convention: 1 = valid, 0 = hole.
  torch::Tensor mask(uint64_t index) const;

  /// Mask `index` as an (H, W) bool tensor, true = hole: the hole map infer::Inpainter::inpaint
  /// takes.
  torch::Tensor hole_map(uint64_t index) const;

  /// The fraction of hole pixels in a hole map.
  static double hole_ratio(const std::vector<uint8_t>& holes);

  const MaskGeneratorOptions& options() const { return options_; }
  uint64_t seed() const { return seed_; }

 private:
  MaskGeneratorOptions options_;
  uint64_t seed_;
};

}  // namespace pconv::data
