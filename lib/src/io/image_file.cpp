#include "pconv/io/image_file.h"

#include "pconv/error.h"

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <ATen/ATen.h>

#include <string>

namespace pconv::io {
const std::vector<std::string>& image_extensions() {
  static const std::vector<std::string> extensions{".png", ".jpg", ".jpeg", ".webp",
                                                   ".bmp", ".tif", ".tiff"};
  return extensions;
}

Image read_image(const std::filesystem::path& path) {
  const std::string name = path.string();
  if (!std::filesystem::is_regular_file(path)) throw InputError(name + ": no such file");
  cv::Mat decoded;
  try {
    decoded = cv::imread(name, cv::IMREAD_UNCHANGED);
  } catch (const cv::Exception&) {
    decoded = cv::Mat();
  }
  if (decoded.empty()) throw InputError(name + ": cannot read the image (corrupt or not an image)");
  if (decoded.depth() != CV_8U && decoded.depth() != CV_16U) {
    throw InputError(name + ": unsupported sample type (only 8- and 16-bit images)");
  }
  const int channels = decoded.channels();
  cv::Mat rgb;
  switch (channels) {
    case 1:
      rgb = decoded;
      break;
    case 3:
      cv::cvtColor(decoded, rgb, cv::COLOR_BGR2RGB);
      break;
    case 4:
      cv::cvtColor(decoded, rgb, cv::COLOR_BGRA2RGBA);
      break;
    default:
      throw InputError(name + ": " + std::to_string(channels) +
                       " channels; only grey, RGB and RGBA images");
  }
  Image image;
  image.bit_depth = decoded.depth() == CV_16U ? 16 : 8;
  cv::Mat as_float;
  rgb.convertTo(as_float, CV_32F, image.bit_depth == 16 ? 1.0 / 65535.0 : 1.0 / 255.0);
  const auto hwc =
      at::from_blob(as_float.data, {as_float.rows, as_float.cols, channels}, at::kFloat);
  // clone(), not contiguous(): for one channel the permuted view already counts as contiguous
  // and would keep pointing into the cv::Mat, which is freed on return.
  image.pixels = hwc.permute({2, 0, 1}).clone(at::MemoryFormat::Contiguous);
  return image;
}

namespace {

void encode_and_write(const std::filesystem::path& path, const cv::Mat& image) {
  std::vector<uint8_t> encoded;
  const std::string extension = path.extension().string();
  bool ok = false;
  try {
    ok = cv::imencode(extension.empty() ? ".png" : extension, image, encoded);
  } catch (const cv::Exception&) {
    ok = false;
  }
  if (!ok) {
    throw InputError(path.string() + ": cannot encode the image as '" + extension +
                     "' (use .png, .jpg, .webp, .bmp or .tif)");
  }
  write_file_atomically(path, encoded);
}

}  // namespace

void write_image(const std::filesystem::path& path, const torch::Tensor& pixels, int bit_depth) {
  TORCH_CHECK(
      pixels.dim() == 3 && (pixels.size(0) == 1 || pixels.size(0) == 3 || pixels.size(0) == 4),
      "write_image: pixels must be (1, 3 or 4, H, W); got ", pixels.sizes());
  TORCH_CHECK(bit_depth == 8 || bit_depth == 16, "write_image: bit depth 8 or 16; got ", bit_depth);
  const double scale = bit_depth == 16 ? 65535.0 : 255.0;
  const auto hwc = (pixels.detach().to(at::kCPU, at::kFloat).clamp(0.0, 1.0) * scale)
                       .round()
                       .permute({1, 2, 0})
                       .contiguous();
  const int channels = static_cast<int>(pixels.size(0));
  const int height = static_cast<int>(pixels.size(1));
  const int width = static_cast<int>(pixels.size(2));
  cv::Mat as_float(height, width, CV_32FC(channels), hwc.data_ptr<float>());
  cv::Mat samples;
  as_float.convertTo(samples, bit_depth == 16 ? CV_16U : CV_8U);
  cv::Mat bgr;
  switch (channels) {
    case 3:
      cv::cvtColor(samples, bgr, cv::COLOR_RGB2BGR);
      break;
    case 4:
      cv::cvtColor(samples, bgr, cv::COLOR_RGBA2BGRA);
      break;
    default:
      bgr = samples;
  }
  encode_and_write(path, bgr);
}

void write_mask(const std::filesystem::path& path, const std::vector<uint8_t>& holes,
                int64_t height, int64_t width) {
  if (static_cast<int64_t>(holes.size()) != height * width) {
    throw InputError(path.string() + ": hole map of " + std::to_string(holes.size()) +
                     " bytes does not match " + std::to_string(width) + "x" +
                     std::to_string(height));
  }
  cv::Mat image(static_cast<int>(height), static_cast<int>(width), CV_8UC1);
  for (int64_t i = 0; i < height * width; ++i) {
    image.data[i] = holes[static_cast<size_t>(i)] != 0 ? kMaskHoleValue : 0;
  }
  encode_and_write(path, image);
}

}  // namespace pconv::io
