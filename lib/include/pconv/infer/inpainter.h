// Inpainter: fills the holes of an image of any size with a PConvUNet. Pads to the network's
// multiple (the padding counts as missing, like the image border in training), works on the
// whole image, on crops around the holes, or on a downscaled copy, and composites the result
// so that every known pixel is kept exactly.
#pragma once

#include <pconv/nn/pconv_unet.h>

#include <torch/arg.h>
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace pconv::infer {

/// How an image is processed.
enum class Strategy {
  kAuto,    // full when it fits the memory budget, else crop when the holes are local, else resize
  kFull,    // the whole image at full resolution
  kCrop,    // only boxes around the holes (with context), each at full resolution
  kResize,  // the whole image scaled down to resize_side, the result scaled back up
};

/// "auto", "full", "crop" or "resize".
std::string to_string(Strategy strategy);
/// Parses a strategy name; throws pconv::ArgumentError otherwise.
Strategy parse_strategy(const std::string& name);

/// The least shorter side the resize strategy scales a picture to (where it has as many).
constexpr int64_t kResizeShortest = 64;

struct InpaintOptions {
  TORCH_ARG(Strategy, strategy) = Strategy::kAuto;
  /// Keep the known pixels of the input exactly (composite); false: the raw network output.
  TORCH_ARG(bool, composite) = true;
  /// Context kept around the holes in the crop strategy, in pixels (at least; a box also grows
  /// to the network's multiple).
  TORCH_ARG(int64_t, crop_margin) = 96;
  /// The resize strategy scales the longer side down to this (pixels, at least 1), but not the
  /// shorter side below kResizeShortest pixels (a very wide or tall picture is scaled less), or
  /// as near to that as memory_budget allows.
  TORCH_ARG(int64_t, resize_side) = 1024;
  /// Auto uses the full image when a full pass is estimated to need at most this many bytes
  /// (bytes, where the command's --max-memory is in MB).
  TORCH_ARG(int64_t, memory_budget) = int64_t{3} << 30;
};

/// The memory format of the network's weights and activations.
enum class NetworkLayout {
  /// Channels-last on a CPU, where oneDNN's convolutions are faster in it (and its NCHW bfloat16
  /// ones about 50x slower than its channels-last ones without bf16 instructions); NCHW on a GPU,
  /// where channels-last did not pay on an H100. Both measured in the README.
  kAuto,
  kNchw,
  /// NHWC, also the layout cuDNN's tensor-core kernels work in.
  kChannelsLast,
};

/// "auto", "nchw" or "channels-last".
std::string to_string(NetworkLayout layout);

/// How the network runs.
struct InferenceOptions {
  /// The network's element type: float32, float16 (CUDA only) or bfloat16. The mask terms stay
  /// float32; images come back as float32 either way.
  TORCH_ARG(c10::ScalarType, dtype) = c10::kFloat;
  /// The memory format of weights and activations; kAuto picks the one measured faster on the
  /// device (see NetworkLayout).
  TORCH_ARG(NetworkLayout, layout) = NetworkLayout::kAuto;
  /// Parts of a hole thinner than 2 x growth + 1 pixels (what a square of that side cannot
  /// cover: scratches, wires, dust) are widened by `growth` pixels for the network; the
  /// composite still keeps every known pixel. The default model, trained on strokes at least 5
  /// pixels wide, fills 1- and 2-pixel holes nearly black otherwise (measured in the model
  /// card). 0: the network sees the holes as they are.
  TORCH_ARG(int64_t, thin_hole_growth) = 2;
};

/// `holes` ((H, W), true = hole) with its parts thinner than 2 x growth + 1 pixels widened by
/// `growth` pixels (InferenceOptions::thin_hole_growth); the rest as it is. Throws
/// pconv::ArgumentError for a negative growth.
torch::Tensor widen_thin_holes(const torch::Tensor& holes, int64_t growth);

/// `holes` ((H, W), true = hole) widened by `growth` pixels, with a disk (widen_thin_holes's
/// widening; widening every hole for the network costs the default model 0.5-1.4 dB per bin,
/// tests/bench/results/cpu-2026-11-25-hole-growth). Throws pconv::ArgumentError for a negative
/// growth.
torch::Tensor widen_holes(const torch::Tensor& holes, int64_t growth);

/// `holes` ((H, W), non-zero = hole) scaled to height x width, as bool: a pixel is a hole where
/// any pixel of `holes` under its area is one, so that a thin scratch survives scaling down
/// (nearest-neighbour scaling would cut it into dashes or drop it).
torch::Tensor scale_holes(const torch::Tensor& holes, int64_t height, int64_t width);

/// "fp32", "fp16" or "bf16" (also "float32", "float16", "bfloat16") to the element type;
/// throws pconv::ArgumentError otherwise.
c10::ScalarType parse_precision(const std::string& name);
/// The short name parse_precision reads: "fp32", "fp16" or "bf16" (else c10's name).
std::string precision_name(c10::ScalarType dtype);

/// A box in pixel coordinates: rows [top, bottom), columns [left, right).
struct Box {
  int64_t top = 0;
  int64_t left = 0;
  int64_t bottom = 0;
  int64_t right = 0;
  int64_t height() const { return bottom - top; }
  int64_t width() const { return right - left; }
};

/// Boxes that together cover every hole of `holes` ((H, W), non-zero = hole) with `margin`
/// pixels of context, split where the holes are more than 2 * margin apart (recursive cuts
/// along empty rows and columns). Deterministic; empty when there is no hole.
std::vector<Box> hole_regions(const torch::Tensor& holes, int64_t margin);

struct InpaintResult {
  /// (C, H, W) float32 in [0, 1] on the CPU, whatever the image's device and type; the
  /// channels of the input.
  torch::Tensor pixels;
  /// The strategy used (never kAuto).
  Strategy strategy = Strategy::kFull;
  /// Network passes made (crop: one per box; 0 when there was no hole to fill).
  int64_t passes = 0;
};

class Inpainter {
 public:
  /// A copy of `model` for inference on `device` (eval mode, element type and layout of
  /// `options`); `model` itself is left as it is. Throws pconv::ArgumentError for an empty
  /// model, a device that is not here (a CUDA GPU on a machine without one), float16 on a CPU,
  /// an element type that is not floating point, or a negative thin_hole_growth.
  Inpainter(const nn::PConvUNet& model, c10::Device device, InferenceOptions options = {});

  /// Fills `holes` in `image`, on any device; the work is done on this inpainter's device.
  /// - `image`: (C, H, W) floating point in [0, 1], channels in RGB(A) order (OpenCV's own
  ///   images are BGR: io::read_image gives RGB). C = 1, 3 or 4: grey goes through the network
  ///   as RGB and comes back as the channel mean, alpha is passed through. An RGB image whose
  ///   known pixels have three equal channels is taken as grey and gets a grey fill.
  /// - `holes`: (H, W), bool (true = hole) or 0 and 1 alone (1 = hole), as io::holes_from_mask
  ///   and data::MaskGenerator::hole_map give it; other values (a grey mask's levels) are
  ///   refused. Without a hole (and with composite) the image comes back unchanged, no pass.
  /// Throws pconv::ArgumentError for bad shapes, an empty image, an image that is not floating
  /// point or has values outside [0, 1] (NaN included), a hole map of other values or that is
  /// all hole, and options out of their range (a negative crop_margin; a resize_side or
  /// memory_budget below 1). Safe to call from several threads at once.
  InpaintResult inpaint(const torch::Tensor& image, const torch::Tensor& holes,
                        const InpaintOptions& options = {}) const;

  /// Estimated peak memory of one network pass over height x width pixels, in bytes. Throws
  /// pconv::ArgumentError for a negative size.
  int64_t estimate_bytes(int64_t height, int64_t width) const;

  /// The inpainter's own model, to read (its options, its size multiple); a const reference to
  /// the module itself, not a handle: a copied handle would share, and could change, the model
  /// the inpainter runs.
  const nn::PConvUNetImpl& model() const { return *model_; }
  /// Where the network runs; "cuda" without an index is the GPU that was current when the
  /// Inpainter was made.
  c10::Device device() const { return device_; }
  /// How the network runs, its layout decided (never NetworkLayout::kAuto).
  const InferenceOptions& options() const { return options_; }
  bool channels_last() const { return options_.layout() == NetworkLayout::kChannelsLast; }

 private:
  /// The network on `rgb` (3, h, w) with `valid` (1, h, w), padded to the multiple and
  /// cropped back: the raw output (3, h, w) on the CPU in float32.
  torch::Tensor run(const torch::Tensor& rgb, const torch::Tensor& valid) const;
  torch::Tensor full(const torch::Tensor& rgb, const torch::Tensor& holes) const;
  torch::Tensor crop(const torch::Tensor& rgb, const torch::Tensor& holes,
                     const std::vector<Box>& regions) const;
  torch::Tensor resize(const torch::Tensor& rgb, const torch::Tensor& holes, int64_t side,
                       int64_t memory_budget) const;

  // Not changed by inference (eval mode), but LibTorch's forward is not const.
  mutable nn::PConvUNet model_;
  c10::Device device_;
  InferenceOptions options_;
};

}  // namespace pconv::infer
