// Evaluation by hole-ratio bin, as in the paper: centre crops of a folder of photos, generated
// masks in each bin, the same inputs for every method, PSNR / SSIM / L1 of the composite per
// bin and overall; reports as a text table, Markdown and CSV, plus a picture grid of examples.
#pragma once

#include <torch/arg.h>
#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace pconv::eval {

/// A hole-ratio bin (low, high].
struct HoleBin {
  double low = 0;
  double high = 0;
  std::string label() const;  // e.g. "(0.01, 0.1]"
};

/// The paper's six bins: (0.01, 0.1], (0.1, 0.2], ..., (0.5, 0.6].
std::vector<HoleBin> paper_bins();

struct EvalOptions {
  /// Side of the square centre crops.
  TORCH_ARG(int64_t, size) = 512;
  /// Examples per bin; 0: one per photo.
  TORCH_ARG(int64_t, per_bin) = 0;
  /// Seeds the masks (the photos and crops are fixed).
  TORCH_ARG(uint64_t, seed) = 0;
  /// The fraction of the masks' strokes drawn 1 to 3 pixels wide
  /// (MaskGeneratorOptions::thin_probability); 0 gives the masks of earlier versions.
  TORCH_ARG(double, thin_strokes) = 0.0;
  /// Examples per bin kept for the picture grid.
  TORCH_ARG(int64_t, examples_per_bin) = 1;
};

/// A method: fills `holes` ((S, S) bool, true = hole) in `image` ((3, S, S) in [0, 1], the hole
/// pixels zeroed) and returns (3, S, S); the evaluation composites it with the known pixels.
using Method = std::function<torch::Tensor(const torch::Tensor& image, const torch::Tensor& holes)>;

struct Scores {
  double psnr = 0;  // dB, mean over examples
  double ssim = 0;
  double l1 = 0;  // mean absolute error of the whole image, in [0, 1]
  int64_t count = 0;
};

/// One example kept for the picture grid: the input with holes, each method's composite, truth.
struct Example {
  torch::Tensor truth;
  torch::Tensor holes;
  std::vector<torch::Tensor> outputs;  // per method
};

struct EvalReport {
  std::vector<std::string> methods;
  std::vector<HoleBin> bins;
  std::vector<std::vector<Scores>> per_bin;  // [method][bin]
  std::vector<Scores> overall;               // [method]
  std::vector<double> seconds;               // [method], total compute time
  double total_seconds = 0.0;                // the whole evaluation: reading, masks and metrics too
  std::vector<double> mean_hole_ratio;       // [bin]
  std::vector<Example> examples;
  int64_t photos = 0;
  int64_t size = 0;
  uint64_t seed = 0;
  double thin_strokes = 0.0;
  /// The photos evaluated whose shorter side is below `size`, as "PATH (WxH)": they are
  /// upscaled to the crop, which makes them smoother, and their holes easier, than real ones.
  std::vector<std::string> upscaled;
};

/// Runs every method on every example. `on_example` is called after each (for progress).
/// Photos that cannot be read are an error (pconv::InputError naming the file).
EvalReport evaluate(const std::vector<std::filesystem::path>& photos,
                    const std::vector<std::pair<std::string, Method>>& methods,
                    const EvalOptions& options, const std::function<void()>& on_example = {});

/// The report as a fixed-width text table, Markdown and CSV (one row per method and bin, and an
/// "all" row per method). Timings appear in the text and Markdown only, so that the CSV of a
/// seed is the same on every run.
std::string to_text(const EvalReport& report);
std::string to_markdown(const EvalReport& report);
std::string to_csv(const EvalReport& report);

/// `image` (C, H, W) with the pixels of `holes` ((H, W), true = hole) white, as pconv's
/// pictures show holes.
torch::Tensor with_white_holes(const torch::Tensor& image, const torch::Tensor& holes);

/// Pictures of one height, left to right, separated by `gap` white columns.
torch::Tensor side_by_side(const std::vector<torch::Tensor>& pictures, int64_t gap = 4);

/// The picture grid: one row per kept example (the input with holes in white, each method,
/// the truth), columns separated by a thin white gap; (3, H, W) in [0, 1].
torch::Tensor example_grid(const EvalReport& report);

}  // namespace pconv::eval
