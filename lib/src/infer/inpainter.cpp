#include "pconv/infer/inpainter.h"

#include "pconv/error.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/cuda.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace pconv::infer {

std::string to_string(Strategy strategy) {
  switch (strategy) {
    case Strategy::kAuto:
      return "auto";
    case Strategy::kFull:
      return "full";
    case Strategy::kCrop:
      return "crop";
    case Strategy::kResize:
      return "resize";
  }
  return "?";
}

Strategy parse_strategy(const std::string& name) {
  for (auto strategy : {Strategy::kAuto, Strategy::kFull, Strategy::kCrop, Strategy::kResize}) {
    if (to_string(strategy) == name) return strategy;
  }
  throw ArgumentError("unknown strategy '" + name + "' (auto, full, crop or resize)");
}

namespace {

// First and one-past-last index of the true entries of a 1-D bool tensor on the CPU, and the
// first gap longer than `min_gap` (a run of false inside that range); gap_begin == gap_end when
// there is none.
struct Extent {
  int64_t first = 0;
  int64_t last = 0;
  int64_t gap_begin = 0;
  int64_t gap_end = 0;
};

Extent extent_of(const at::Tensor& any, int64_t min_gap) {
  const auto* flags = any.data_ptr<bool>();
  const int64_t n = any.numel();
  Extent extent;
  int64_t first = 0;
  while (first < n && !flags[first]) ++first;
  int64_t last = n;
  while (last > first && !flags[last - 1]) --last;
  extent.first = first;
  extent.last = last;
  for (int64_t i = first; i < last;) {
    if (flags[i]) {
      ++i;
      continue;
    }
    int64_t end = i;
    while (end < last && !flags[end]) ++end;
    if (end - i > min_gap) {
      extent.gap_begin = i;
      extent.gap_end = end;
      break;
    }
    i = end;
  }
  return extent;
}

// Recursive cuts along runs of hole-free rows or columns longer than `min_gap`, on the row and
// column projections of the box: the tight boxes of the hole groups.
void cut(const at::Tensor& holes, Box box, int64_t min_gap, std::vector<Box>& out) {
  const auto window = holes.narrow(0, box.top, box.height()).narrow(1, box.left, box.width());
  const auto rows = extent_of(window.any(1).contiguous(), min_gap);
  if (rows.first >= rows.last) return;  // nothing here
  if (rows.gap_begin < rows.gap_end) {
    cut(holes, {box.top + rows.first, box.left, box.top + rows.gap_begin, box.right}, min_gap, out);
    cut(holes, {box.top + rows.gap_end, box.left, box.top + rows.last, box.right}, min_gap, out);
    return;
  }
  const auto columns = extent_of(window.any(0).contiguous(), min_gap);
  if (columns.gap_begin < columns.gap_end) {
    cut(holes, {box.top, box.left + columns.first, box.bottom, box.left + columns.gap_begin},
        min_gap, out);
    cut(holes, {box.top, box.left + columns.gap_end, box.bottom, box.left + columns.last}, min_gap,
        out);
    return;
  }
  out.push_back({box.top + rows.first, box.left + columns.first, box.top + rows.last,
                 box.left + columns.last});
}

// Grows [begin, end) to at least `length` (centred, kept inside [0, limit)), then rounds it
// up to a multiple of `multiple` where the image allows.
std::pair<int64_t, int64_t> grow(int64_t begin, int64_t end, int64_t multiple, int64_t limit) {
  int64_t length = ((end - begin + multiple - 1) / multiple) * multiple;
  length = std::min(length, limit);
  int64_t start = std::max<int64_t>(0, (begin + end - length) / 2);
  start = std::min(start, limit - length);
  return {start, start + length};
}

std::string sizes_of(const at::Tensor& tensor) {
  std::ostringstream text;
  text << tensor.sizes();
  return text.str();
}

// The hole map of `image` as bool on the CPU, after the checks every caller needs: shapes, an
// image of floats in [0, 1] (8-bit samples as they are would fill the holes with nonsense),
// and at least one known pixel to inpaint from.
at::Tensor check_holes(const at::Tensor& image, const at::Tensor& holes) {
  if (!image.defined() || image.dim() != 3 ||
      (image.size(0) != 1 && image.size(0) != 3 && image.size(0) != 4)) {
    throw ArgumentError("inpaint: the image must be (C, H, W) with C = 1, 3 or 4; got " +
                        (image.defined() ? sizes_of(image) : std::string("none")));
  }
  if (image.size(1) == 0 || image.size(2) == 0) {
    throw ArgumentError("inpaint: the image is empty: " + sizes_of(image));
  }
  if (!image.is_floating_point()) {
    throw ArgumentError(std::string("inpaint: the image must be floating point in [0, 1]; "
                                    "got ") +
                        c10::toString(image.scalar_type()) +
                        " (divide 8-bit samples by 255, 16-bit ones by 65535)");
  }
  const auto [low, high] = at::aminmax(image.to(at::kFloat));
  const auto lowest = low.item<double>();
  const auto highest = high.item<double>();
  if (std::isnan(lowest) || std::isnan(highest)) {  // aminmax gives NaN where one is
    throw ArgumentError("inpaint: the image holds NaN values; they must lie in [0, 1]");
  }
  if (!(lowest >= 0.0 && highest <= 1.0)) {
    std::ostringstream text;
    text << "inpaint: the image's values must lie in [0, 1]; they span [" << lowest << ", "
         << highest << "]";
    throw ArgumentError(text.str());
  }
  if (!holes.defined() || holes.dim() != 2 || holes.size(0) != image.size(1) ||
      holes.size(1) != image.size(2)) {
    throw ArgumentError("inpaint: the hole map must be (H, W) like the image " + sizes_of(image) +
                        "; got " + (holes.defined() ? sizes_of(holes) : std::string("none")));
  }
  // Bool, or 0 and 1 alone: a mask in another form (the network's, 1 = valid, still passes;
  // 0-255 samples, antialiased edges, or -1 do not) would make holes the caller did not mean.
  const auto on_cpu = holes.to(at::kCPU);
  if (on_cpu.scalar_type() != at::kBool &&
      !on_cpu.eq(0).logical_or(on_cpu.eq(1)).all().item<bool>()) {
    throw ArgumentError(std::string("inpaint: the hole map must be bool, or hold 0 and 1 alone "
                                    "(1 = hole); this ") +
                        c10::toString(on_cpu.scalar_type()) +
                        " one holds other values (threshold a grey mask first, as "
                        "io::holes_from_mask does)");
  }
  auto hole_map = on_cpu.ne(0);
  if (hole_map.all().item<bool>()) {
    throw ArgumentError("inpaint: every pixel is a hole: there is nothing to inpaint from");
  }
  return hole_map;
}

}  // namespace

std::vector<Box> hole_regions(const torch::Tensor& holes, int64_t margin) {
  if (!holes.defined() || holes.dim() != 2) {
    throw ArgumentError("hole_regions: the hole map must be (H, W); got " +
                        (holes.defined() ? sizes_of(holes) : std::string("none")));
  }
  if (margin < 0) {
    throw ArgumentError("the crop margin must not be negative; got " + std::to_string(margin));
  }
  const auto map = holes.to(at::kCPU).ne(0).contiguous();
  const int64_t height = map.size(0);
  const int64_t width = map.size(1);
  // Holes whose margins would touch or overlap (gap <= 2 * margin) stay in one box.
  std::vector<Box> tight;
  cut(map, {0, 0, height, width}, 2 * margin, tight);
  std::vector<Box> boxes;
  boxes.reserve(tight.size());
  for (const auto& box : tight) {
    boxes.push_back({std::max<int64_t>(0, box.top - margin),
                     std::max<int64_t>(0, box.left - margin), std::min(height, box.bottom + margin),
                     std::min(width, box.right + margin)});
  }
  return boxes;
}

c10::ScalarType parse_precision(const std::string& name) {
  if (name == "fp32" || name == "float32") return at::kFloat;
  if (name == "fp16" || name == "float16") return at::kHalf;
  if (name == "bf16" || name == "bfloat16") return at::kBFloat16;
  throw ArgumentError("unknown precision '" + name + "' (fp32, fp16 or bf16)");
}

std::string to_string(NetworkLayout layout) {
  switch (layout) {
    case NetworkLayout::kAuto:
      return "auto";
    case NetworkLayout::kNchw:
      return "nchw";
    case NetworkLayout::kChannelsLast:
      return "channels-last";
  }
  return "?";
}

std::string precision_name(c10::ScalarType dtype) {
  if (dtype == at::kFloat) return "fp32";
  if (dtype == at::kHalf) return "fp16";
  if (dtype == at::kBFloat16) return "bf16";
  return c10::toString(dtype);
}

Inpainter::Inpainter(const nn::PConvUNet& model, c10::Device device, InferenceOptions options)
    : model_(nullptr), device_(device), options_(options) {
  if (model.is_empty()) throw ArgumentError("Inpainter: no model (an empty module holder)");
  if (device_.is_cuda()) {
    const int64_t count = static_cast<unsigned char>(torch::cuda::device_count());
    if (count == 0) {
      throw ArgumentError("Inpainter: " + device_.str() +
                          " was asked for, but no CUDA GPU is usable here");
    }
    if (device_.has_index() && device_.index() >= count) {
      throw ArgumentError("Inpainter: " + device_.str() + " was asked for, but this machine has " +
                          std::to_string(count) + " CUDA GPU" + (count == 1 ? "" : "s"));
    }
    // "cuda" is the GPU current now: the model and every later input go there, whichever GPU is
    // current when inpaint runs.
    if (!device_.has_index()) device_ = c10::impl::getDeviceGuardImpl(c10::kCUDA)->getDevice();
  } else if (!device_.is_cpu()) {
    throw ArgumentError("Inpainter: runs on a CPU or a CUDA GPU, not " + device_.str());
  }
  if (options_.thin_hole_growth() < 0) {
    throw ArgumentError("Inpainter: thin_hole_growth must not be negative; got " +
                        std::to_string(options_.thin_hole_growth()));
  }
  const auto dtype = options_.dtype();
  if (dtype != at::kFloat && dtype != at::kHalf && dtype != at::kBFloat16) {
    throw ArgumentError(std::string("inference runs in float32, float16 or bfloat16, not ") +
                        c10::toString(dtype));
  }
  if (dtype == at::kHalf && !device_.is_cuda()) {
    throw ArgumentError("float16 inference needs a CUDA device");
  }
  if (options_.layout() == NetworkLayout::kAuto) {
    options_.layout(device_.is_cpu() ? NetworkLayout::kChannelsLast : NetworkLayout::kNchw);
  }
  // A copy of its own: converting the caller's module in place would change it under them, and
  // under every other Inpainter made from it.
  model_ = nn::PConvUNet(std::dynamic_pointer_cast<nn::PConvUNetImpl>(model->clone()));
  model_->eval();
  model_->to(device_, dtype);
  if (channels_last()) nn::to_channels_last(*model_);
}

int64_t Inpainter::estimate_bytes(int64_t height, int64_t width) const {
  if (height < 0 || width < 0) {
    throw ArgumentError("estimate_bytes: a size must not be negative; got " +
                        std::to_string(height) + "x" + std::to_string(width));
  }
  const auto& o = model_->options;
  const int64_t multiple = model_->size_multiple();
  const int64_t h = (height + multiple - 1) / multiple * multiple;
  const int64_t w = (width + multiple - 1) / multiple * multiple;
  // The last decoder layer dominates: its input (upsampled features + skip + masks), the masked
  // copy and the output at full resolution, plus every encoder output kept for the skips.
  // (Calibrated against the peak RSS of a 4000x3000 full pass with the default model.)
  double per_pixel = 3.5 * static_cast<double>(model_->encoder_width(1) + o.image_channels()) + 8;
  for (int64_t level = 1; level <= o.depth(); ++level) {
    per_pixel += 2.0 * static_cast<double>(model_->encoder_width(level)) /
                 static_cast<double>(int64_t{1} << (2 * level));
  }
  // Channels-last on a CPU needs less (oneDNN works in it without reordering to a layout of its
  // own and back): measured at 0.48-0.64 of this estimate at 2048x1536, 3000x2000 and 4000x3000,
  // against 0.84-1.05 in NCHW (peak RSS less the process's own 0.77 GB, 2026-11-24).
  if (channels_last() && device_.is_cpu()) per_pixel *= 0.7;
  const double bytes_per_value = options_.dtype() == at::kFloat ? 4.0 : 2.0;
  return static_cast<int64_t>(per_pixel * bytes_per_value * static_cast<double>(h * w));
}

torch::Tensor Inpainter::run(const torch::Tensor& rgb, const torch::Tensor& valid) const {
  c10::InferenceMode guard;
  const int64_t multiple = model_->size_multiple();
  const int64_t height = rgb.size(1);
  const int64_t width = rgb.size(2);
  const int64_t pad_h = (multiple - height % multiple) % multiple;
  const int64_t pad_w = (multiple - width % multiple) % multiple;
  const auto type = options_.dtype();
  const auto format =
      channels_last() ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  // Padding is missing data to the network, as the image border is in training.
  auto image = at::constant_pad_nd(rgb.to(device_, type).unsqueeze(0), {0, pad_w, 0, pad_h}, 0);
  auto mask = at::constant_pad_nd(valid.to(device_, type).unsqueeze(0), {0, pad_w, 0, pad_h}, 0);
  image = (image * mask).contiguous(format);
  mask = mask.contiguous(format);
  auto output = std::get<0>(model_->forward(image, mask));
  return output.squeeze(0)
      .narrow(1, 0, height)
      .narrow(2, 0, width)
      .to(at::kCPU, at::kFloat)
      .clamp(0.0, 1.0)
      .contiguous();
}

torch::Tensor scale_holes(const torch::Tensor& holes, int64_t height, int64_t width) {
  const auto covered = std::get<0>(at::adaptive_max_pool2d(
      holes.ne(0).to(at::kFloat).unsqueeze(0).unsqueeze(0), {height, width}));
  return covered.squeeze(0).squeeze(0).gt(0);
}

namespace {
void check_growth(const char* function, int64_t growth) {
  if (growth < 0) {
    throw ArgumentError(std::string(function) + ": the growth must not be negative; got " +
                        std::to_string(growth));
  }
}
}  // namespace

torch::Tensor widen_thin_holes(const torch::Tensor& holes, int64_t growth) {
  check_growth("widen_thin_holes", growth);
  if (growth == 0) return holes;
  const int64_t side = 2 * growth + 1;
  const auto hole = holes.to(at::kFloat).unsqueeze(0).unsqueeze(0);
  const auto pool = [&](const at::Tensor& t) {
    return at::max_pool2d(t, {side, side}, {1, 1}, {growth, growth});
  };
  // An opening (erosion, then dilation) with a side x side square keeps what such a square
  // covers; the rest of the hole is thin. (max_pool2d pads with -inf: the image border neither
  // erodes a hole nor widens one.)
  const auto opened = pool(1.0 - pool(1.0 - hole));
  const auto thin = hole * (1.0 - opened);
  return holes.logical_or(widen_holes(thin.squeeze(0).squeeze(0).gt(0.5), growth));
}

torch::Tensor widen_holes(const torch::Tensor& holes, int64_t growth) {
  check_growth("widen_holes", growth);
  if (growth == 0) return holes;
  const int64_t side = 2 * growth + 1;
  // Widened with a disk: the offsets (x, y) with x^2 + y^2 <= growth^2 + growth (for growth 2, a
  // 5x5 square less its corners).
  const auto offsets = at::arange(-growth, growth + 1, at::kFloat);
  const auto disk = (offsets.view({-1, 1}).square() + offsets.view({1, -1}).square())
                        .le(static_cast<double>(growth * growth + growth))
                        .to(at::kFloat)
                        .view({1, 1, side, side});
  const auto hole = holes.to(at::kFloat).unsqueeze(0).unsqueeze(0);
  const auto widened = at::conv2d(hole, disk, {}, {1, 1}, {growth, growth}).gt(0.5);
  return holes.to(at::kBool).logical_or(widened.squeeze(0).squeeze(0));
}

torch::Tensor Inpainter::full(const torch::Tensor& rgb, const torch::Tensor& holes) const {
  auto seen = widen_thin_holes(holes, options_.thin_hole_growth());
  // Widened over every pixel (a tiny image), the network would see nothing and fill black:
  // then widened less, or not at all.
  for (int64_t growth = options_.thin_hole_growth() - 1; growth >= 0 && seen.all().item<bool>();
       --growth) {
    seen = widen_thin_holes(holes, growth);
  }
  return run(rgb, seen.logical_not().to(at::kFloat).unsqueeze(0));
}

torch::Tensor Inpainter::crop(const torch::Tensor& rgb, const torch::Tensor& holes,
                              const std::vector<Box>& regions) const {
  auto output = rgb.clone();
  const int64_t multiple = model_->size_multiple();
  for (const auto& region : regions) {
    const auto [top, bottom] = grow(region.top, region.bottom, multiple, rgb.size(1));
    const auto [left, right] = grow(region.left, region.right, multiple, rgb.size(2));
    const auto patch = rgb.narrow(1, top, bottom - top).narrow(2, left, right - left);
    const auto patch_holes = holes.narrow(0, top, bottom - top).narrow(1, left, right - left);
    const auto filled = full(patch, patch_holes);
    // Only the region's own box is written: regions do not overlap, so every hole pixel is
    // written once, by the pass that had it nearest the centre of its context.
    const auto inner = [&](const at::Tensor& t, int64_t row, int64_t column) {
      return t.narrow(-2, row, region.height()).narrow(-1, column, region.width());
    };
    inner(output, region.top, region.left)
        .copy_(inner(filled, region.top - top, region.left - left));
  }
  return output;
}

torch::Tensor Inpainter::resize(const torch::Tensor& rgb, const torch::Tensor& holes, int64_t side,
                                int64_t memory_budget) const {
  const int64_t height = rgb.size(1);
  const int64_t width = rgb.size(2);
  const int64_t longer = std::max(height, width);
  const int64_t shorter = std::min(height, width);
  const auto scaled = [](int64_t length, double scale) {
    return std::max<int64_t>(1, std::lround(static_cast<double>(length) * scale));
  };
  // The shorter side stays at least kResizeShortest pixels (or its own): a 4000x50 picture
  // scaled to a longer side of 1024 was 13 pixels high, too little to fill anything from.
  // Where that pass would not fit the memory budget (a 200000x64 strip), as close to it as
  // fits, down to the scale asked for.
  const double asked = static_cast<double>(std::min(side, longer)) / static_cast<double>(longer);
  double least_scale =
      std::min(1.0, static_cast<double>(kResizeShortest) / static_cast<double>(shorter));
  while (least_scale > asked &&
         estimate_bytes(scaled(height, least_scale), scaled(width, least_scale)) > memory_budget) {
    least_scale = std::max(asked, least_scale * 0.8);
  }
  // Holes finer than the scaling (a mesh, a fence) may cover the whole small picture, which
  // the network would fill black: then the side grows, up to the full size.
  int64_t small_h = height;
  int64_t small_w = width;
  at::Tensor small_holes;
  for (int64_t target = std::min(side, longer);; target = std::min(longer, target * 3 / 2 + 1)) {
    const double scale =
        std::max(least_scale, static_cast<double>(target) / static_cast<double>(longer));
    small_h = scaled(height, scale);
    small_w = scaled(width, scale);
    small_holes = scale_holes(holes, small_h, small_w);
    if (target == longer || scale == 1.0 || !small_holes.all().item<bool>()) break;
  }
  // Scaled from the known pixels alone (what lies under a hole, such as the object to take
  // away, must not reach the small picture's known pixels through the filter's reach).
  const auto known = holes.logical_not().to(at::kFloat).unsqueeze(0).unsqueeze(0);
  const auto down = [&](const at::Tensor& t) {
    return at::_upsample_bilinear2d_aa(t, {small_h, small_w}, false);
  };
  const auto weight = down(known);
  const auto small = (down(rgb.unsqueeze(0) * known) / weight.clamp_min(1e-6))
                         .masked_fill(weight.le(1e-6), 0.0)
                         .squeeze(0)
                         .clamp(0.0, 1.0);
  const auto filled = full(small, small_holes);
  return at::upsample_bilinear2d(filled.unsqueeze(0), {height, width}, false)
      .squeeze(0)
      .clamp(0.0, 1.0);
}

InpaintResult Inpainter::inpaint(const torch::Tensor& image, const torch::Tensor& holes,
                                 const InpaintOptions& options) const {
  if (options.crop_margin() < 0) {
    throw ArgumentError("inpaint: crop_margin must not be negative; got " +
                        std::to_string(options.crop_margin()));
  }
  if (options.resize_side() < 1) {
    throw ArgumentError("inpaint: resize_side must be at least 1; got " +
                        std::to_string(options.resize_side()));
  }
  if (options.memory_budget() < 1) {
    throw ArgumentError("inpaint: memory_budget must be at least 1 byte; got " +
                        std::to_string(options.memory_budget()));
  }
  const auto hole_map = check_holes(image, holes);
  const auto pixels = image.to(at::kCPU, at::kFloat);
  // Nothing to fill: the image as it is, without a pass (the raw output still needs one).
  if (options.composite() && !hole_map.any().item<bool>()) {
    return {pixels.clone(at::MemoryFormat::Contiguous), Strategy::kFull, 0};
  }
  const int64_t channels = pixels.size(0);
  auto rgb = channels == 1 ? pixels.expand({3, -1, -1}).contiguous() : pixels.narrow(0, 0, 3);
  // A grey picture gets a grey fill: one channel, or colour channels that are all equal (as
  // OpenCV reads a grey PNG with alpha, or a grey photo saved as colour).
  // Judged by the known pixels: what lies under a hole (a coloured mark) does not count.
  const auto known_of = [&](const at::Tensor& channel) {
    return channel.masked_select(hole_map.logical_not());
  };
  const bool grey = channels == 1 || (at::equal(known_of(rgb[0]), known_of(rgb[1])) &&
                                      at::equal(known_of(rgb[1]), known_of(rgb[2])));
  const int64_t height = pixels.size(1);
  const int64_t width = pixels.size(2);

  InpaintResult result;
  result.strategy = options.strategy();
  std::vector<Box> regions;
  if (result.strategy == Strategy::kAuto) {
    result.strategy = Strategy::kFull;
    if (estimate_bytes(height, width) > options.memory_budget()) {
      regions = hole_regions(hole_map, options.crop_margin());
      int64_t area = 0;
      bool fits = true;
      for (const auto& box : regions) {
        area += box.height() * box.width();
        fits = fits && estimate_bytes(box.height(), box.width()) <= options.memory_budget();
      }
      result.strategy = fits && 2 * area <= height * width ? Strategy::kCrop : Strategy::kResize;
    }
  } else if (result.strategy == Strategy::kCrop) {
    regions = hole_regions(hole_map, options.crop_margin());
  }

  at::Tensor filled;
  switch (result.strategy) {
    case Strategy::kCrop:
      filled = crop(rgb, hole_map, regions);
      result.passes = static_cast<int64_t>(regions.size());
      break;
    case Strategy::kResize:
      filled = resize(rgb, hole_map, options.resize_side(), options.memory_budget());
      result.passes = 1;
      break;
    default:
      filled = full(rgb, hole_map);
      result.passes = 1;
  }
  if (grey) {
    filled = filled.mean(0, /*keepdim=*/true);
    if (channels != 1) filled = filled.expand({3, -1, -1});
  }
  if (channels == 4) filled = at::cat({filled, pixels.narrow(0, 3, 1)}, 0);
  result.pixels =
      options.composite() ? at::where(hole_map.unsqueeze(0), filled, pixels) : filled.contiguous();
  return result;
}

}  // namespace pconv::infer
