#include "pconv/data/mask_generator.h"

#include "../check_argument.h"

#include "pconv/error.h"
#include "seed_mix.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <utility>

namespace pconv::data {
namespace {

constexpr double kTwoPi = 6.283185307179586;
constexpr int kAttempts = 64;           // fresh masks tried before giving up on a target
constexpr int kRejectionsPerMask = 48;  // shapes that overshot max_ratio before a restart
constexpr double kShrinkOnReject = 0.7;

// A hole map being drawn, with its hole count kept up to date.
class Canvas {
 public:
  Canvas(int64_t height, int64_t width)
      : height_(height), width_(width), pixels_(static_cast<size_t>(height * width), 0) {}

  double ratio() const { return static_cast<double>(holes_) / static_cast<double>(pixels_.size()); }
  std::vector<uint8_t> take() && { return std::move(pixels_); }

  void disc(double center_x, double center_y, double radius) {
    const int64_t y_begin =
        std::max<int64_t>(0, static_cast<int64_t>(std::ceil(center_y - radius)));
    const int64_t y_end =
        std::min<int64_t>(height_ - 1, static_cast<int64_t>(std::floor(center_y + radius)));
    for (int64_t y = y_begin; y <= y_end; ++y) {
      const double dy = static_cast<double>(y) - center_y;
      const double half = std::sqrt(std::max(0.0, radius * radius - dy * dy));
      span(y, center_x - half, center_x + half);
    }
  }

  // A thick line: discs stamped at most half a radius apart.
  void stroke_segment(double x0, double y0, double x1, double y1, double radius) {
    const double length = std::hypot(x1 - x0, y1 - y0);
    const int64_t steps =
        std::max<int64_t>(1, static_cast<int64_t>(std::ceil(length / std::max(0.5, radius / 2))));
    for (int64_t step = 0; step <= steps; ++step) {
      const double t = static_cast<double>(step) / static_cast<double>(steps);
      disc(x0 + t * (x1 - x0), y0 + t * (y1 - y0), radius);
    }
  }

  void ellipse(double center_x, double center_y, double semi_a, double semi_b, double angle) {
    const double reach = std::max(semi_a, semi_b);
    const double cos_angle = std::cos(angle);
    const double sin_angle = std::sin(angle);
    const int64_t y_begin = std::max<int64_t>(0, static_cast<int64_t>(std::ceil(center_y - reach)));
    const int64_t y_end =
        std::min<int64_t>(height_ - 1, static_cast<int64_t>(std::floor(center_y + reach)));
    const int64_t x_begin = std::max<int64_t>(0, static_cast<int64_t>(std::ceil(center_x - reach)));
    const int64_t x_end =
        std::min<int64_t>(width_ - 1, static_cast<int64_t>(std::floor(center_x + reach)));
    for (int64_t y = y_begin; y <= y_end; ++y) {
      for (int64_t x = x_begin; x <= x_end; ++x) {
        const double dx = static_cast<double>(x) - center_x;
        const double dy = static_cast<double>(y) - center_y;
        const double u = (dx * cos_angle + dy * sin_angle) / semi_a;
        const double v = (-dx * sin_angle + dy * cos_angle) / semi_b;
        if (u * u + v * v <= 1.0) set(y, x);
      }
    }
  }

 private:
  void span(int64_t y, double x_from, double x_to) {
    const int64_t begin = std::max<int64_t>(0, static_cast<int64_t>(std::ceil(x_from)));
    const int64_t end = std::min<int64_t>(width_ - 1, static_cast<int64_t>(std::floor(x_to)));
    for (int64_t x = begin; x <= end; ++x) set(y, x);
  }
  void set(int64_t y, int64_t x) {
    uint8_t& pixel = pixels_[static_cast<size_t>(y * width_ + x)];
    holes_ += pixel == 0 ? 1 : 0;
    pixel = 1;
  }

  int64_t height_;
  int64_t width_;
  std::vector<uint8_t> pixels_;
  int64_t holes_ = 0;
};

}  // namespace

MaskGenerator::MaskGenerator(MaskGeneratorOptions options, uint64_t seed)
    : options_(options), seed_(seed) {
  PCONV_CHECK_ARGUMENT(options_.height() > 0 && options_.width() > 0,
                       "MaskGenerator: size must be positive; got ", options_.width(), "x",
                       options_.height());
  PCONV_CHECK_ARGUMENT(options_.min_ratio() >= 0.0 &&
                           options_.min_ratio() <= options_.max_ratio() &&
                           options_.max_ratio() <= 1.0,
                       "MaskGenerator: need 0 <= min_ratio <= max_ratio <= 1; got ",
                       options_.min_ratio(), " and ", options_.max_ratio());
  PCONV_CHECK_ARGUMENT(options_.thin_probability() >= 0.0 && options_.thin_probability() <= 1.0,
                       "MaskGenerator: need 0 <= thin_probability <= 1; got ",
                       options_.thin_probability());
  PCONV_CHECK_ARGUMENT(options_.min_width() > 0.0 && options_.min_width() <= options_.max_width(),
                       "MaskGenerator: need 0 < min_width <= max_width; got ", options_.min_width(),
                       " and ", options_.max_width());
  PCONV_CHECK_ARGUMENT(options_.max_vertices() >= 1,
                       "MaskGenerator: max_vertices must be >= 1; got ", options_.max_vertices());
}

double MaskGenerator::hole_ratio(const std::vector<uint8_t>& holes) {
  if (holes.empty()) return 0.0;
  const auto count = std::accumulate(holes.begin(), holes.end(), int64_t{0});
  return static_cast<double>(count) / static_cast<double>(holes.size());
}

std::vector<uint8_t> MaskGenerator::holes(uint64_t index) const {
  const auto& o = options_;
  std::mt19937_64 rng(detail::mix_seed(seed_, detail::SeedStream::kGeneratedMask, index));
  auto uniform = [&](double low, double high) {
    return std::uniform_real_distribution<double>(low, high)(rng);
  };
  const auto height = static_cast<double>(o.height());
  const auto width = static_cast<double>(o.width());
  const double side = std::min(height, width);

  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    const double target = uniform(o.min_ratio(), o.max_ratio());
    Canvas canvas(o.height(), o.width());
    double scale = 1.0;
    int rejections = 0;
    while (canvas.ratio() < target && rejections < kRejectionsPerMask) {
      Canvas trial = canvas;
      if (uniform(0.0, 1.0) < o.blob_probability()) {
        trial.ellipse(uniform(0, width), uniform(0, height), uniform(0.03, 0.15) * side * scale,
                      uniform(0.03, 0.15) * side * scale, uniform(0, kTwoPi));
      } else {
        // Drawn only where thin strokes are asked for, so that masks without them stay the same.
        const bool thin = o.thin_probability() > 0.0 && uniform(0.0, 1.0) < o.thin_probability();
        const double radius =
            thin ? uniform(0.5, 1.5)
                 : std::max(0.5, uniform(o.min_width(), o.max_width()) * side * scale / 2);
        const int64_t vertices = std::uniform_int_distribution<int64_t>(1, o.max_vertices())(rng);
        double x = uniform(0, width);
        double y = uniform(0, height);
        double angle = uniform(0, kTwoPi);
        for (int64_t vertex = 0; vertex < vertices; ++vertex) {
          angle += uniform(-1.2, 1.2);  // curvature
          const double length = uniform(0.05, 0.3) * side * scale;
          const double next_x = std::clamp(x + length * std::cos(angle), 0.0, width - 1);
          const double next_y = std::clamp(y + length * std::sin(angle), 0.0, height - 1);
          trial.stroke_segment(x, y, next_x, next_y, radius);
          x = next_x;
          y = next_y;
        }
      }
      if (trial.ratio() <= o.max_ratio()) {
        canvas = std::move(trial);
      } else {
        ++rejections;
        scale *= kShrinkOnReject;  // the next shape is smaller
      }
    }
    if (canvas.ratio() >= o.min_ratio() && canvas.ratio() <= o.max_ratio()) {
      return std::move(canvas).take();
    }
  }
  // The options are valid, but no mask of this size fits them: the caller's input, not a bug.
  throw InputError(c10::str("MaskGenerator: no ", o.width(), "x", o.height(),
                            " mask with a hole ratio in [", o.min_ratio(), ", ", o.max_ratio(),
                            "] after ", kAttempts,
                            " attempts; widen the range or enlarge the mask"));
}

torch::Tensor MaskGenerator::mask(uint64_t index) const {
  return 1.0 - hole_map(index).unsqueeze(0).to(at::kFloat);
}

torch::Tensor MaskGenerator::hole_map(uint64_t index) const {
  auto bytes = holes(index);
  return at::from_blob(bytes.data(), {options_.height(), options_.width()}, at::kByte).ne(0);
}

}  // namespace pconv::data
