// Image and mask files: the only place pconv touches OpenCV. Reads images of any common
// format and depth into float tensors and writes masks, always atomically.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <vector>

namespace pconv::io {

/// The pixel value a mask file uses for a hole in pconv's files (white = hole), as in OpenCV's
/// cv::inpaint, LaMa and IOPaint.
inline constexpr uint8_t kMaskHoleValue = 255;

/// Writes a hole map (height x width bytes, non-zero = hole) as an 8-bit grey image, white
/// where the hole is. The format follows the extension (.png recommended). The file appears
/// whole or not at all: it is written under a temporary name and renamed. Throws
/// pconv::InputError naming the file if it cannot be written.
void write_mask(const std::filesystem::path& path, const std::vector<uint8_t>& holes,
                int64_t height, int64_t width);

/// Writes `data` to `path` through a temporary file in the same folder and a rename, so a
/// reader never sees a partial file. Throws pconv::InputError naming the file on failure.
void write_file_atomically(const std::filesystem::path& path, const std::vector<uint8_t>& data);

}  // namespace pconv::io
