#include "pconv/io/image_file.h"

#include "pconv/error.h"

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>

#include <fstream>
#include <random>
#include <string>
#include <system_error>

namespace pconv::io {
namespace {

std::filesystem::path temporary_sibling(const std::filesystem::path& path) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  return path.parent_path() /
         ("." + path.filename().string() + ".tmp" + std::to_string(rng() % 1000000000));
}

}  // namespace

void write_file_atomically(const std::filesystem::path& path, const std::vector<uint8_t>& data) {
  const auto temporary = temporary_sibling(path);
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data.data()),
              static_cast<std::streamsize>(data.size()));
    out.close();
    if (!out) {
      std::error_code ignored;
      std::filesystem::remove(temporary, ignored);
      throw InputError(path.string() + ": cannot write the file (is the folder writable?)");
    }
  }
  std::error_code error;
  std::filesystem::rename(temporary, path, error);
  if (error) {
    std::error_code ignored;
    std::filesystem::remove(temporary, ignored);
    throw InputError(path.string() + ": cannot write the file: " + error.message());
  }
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
  std::vector<uint8_t> encoded;
  const std::string extension = path.extension().string();
  bool ok = false;
  try {
    ok = cv::imencode(extension.empty() ? ".png" : extension, image, encoded);
  } catch (const cv::Exception&) {
    ok = false;
  }
  if (!ok) {
    throw InputError(path.string() + ": cannot encode a mask as '" + extension +
                     "' (use .png, .bmp or .tif)");
  }
  write_file_atomically(path, encoded);
}

}  // namespace pconv::io
