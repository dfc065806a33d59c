// Image and mask files: the only place pconv touches OpenCV. Reads images of any common
// format and depth into float tensors and writes images and masks, always atomically. Tensor
// images (.pt: one uint8 or uint16 tensor (H, W[, C]) in RGB order, from Python's torch.save)
// work in every build, so that a build without OpenCV (a GPU machine) can still train.
#pragma once

#include <pconv/io/atomic_file.h>

#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace pconv::io {

/// The pixel value a mask file uses for a hole in pconv's files (white = hole), as in OpenCV's
/// cv::inpaint, LaMa and IOPaint.
inline constexpr uint8_t kMaskHoleValue = 255;

/// The extension of tensor images, which need no OpenCV.
inline constexpr const char* kTensorImageExtension = ".pt";

/// An image read from a file, with what is needed to write a result back in the same form.
struct Image {
  /// (C, H, W) float32 in [0, 1]; C is 1 (grey), 3 (RGB) or 4 (RGBA), channels in RGB order.
  torch::Tensor pixels;
  /// 8 or 16: the bit depth of the file's samples.
  int bit_depth = 8;
};

/// Reads an image file (png, jpg, webp, bmp, tiff, ...; grey, RGB or RGBA; 8 or 16 bit), or
/// a tensor image. Without OpenCV only tensor images can be read. A JPEG's EXIF orientation is
/// applied (the pixels come upright, as a viewer shows them, and as a mask drawn on one is).
/// Throws pconv::InputError naming the file if it is missing, unreadable or not an image.
/// With `shrink_to` > 0, an image whose shorter side is longer than that is scaled down so that
/// its shorter side is `shrink_to` pixels: for the files OpenCV reads by area averaging on the
/// file's own samples, before the conversion to float, so that a large photo of which only a
/// small crop is wanted costs a fraction of the memory and time (training crops of camera
/// photos); a JPEG whose sides divide by 2, 4 or 8 is first decoded at that fraction by libjpeg
/// where that still leaves `shrink_to` (and the pixel limit applies to its stored size); a
/// tensor image is scaled after it (antialiased bilinear).
Image read_image(const std::filesystem::path& path, int64_t shrink_to = 0);

/// What read_image does with what an image decoder printed about an image it did decode, such
/// as libjpeg's "Premature end of JPEG file" (the rest of the picture is grey): calls `handler`
/// with "FILE: TEXT" in one line. Without a handler (the default, or an empty one) the text goes
/// to stderr as the decoder printed it. For a decode that failed the text is part of the
/// InputError instead. libpng's remarks about colour-space chunks (iCCP, sRGB, cHRM, gAMA, such
/// as "known incorrect sRGB profile") are left out: pconv reads the samples as stored, with no
/// colour management. The handler may be called from any thread that reads images.
void set_decoder_warning_handler(std::function<void(const std::string&)> handler);

/// Sets the most pixels read_image takes (default and upper bound: OpenCV's own limit, 2^30,
/// which OPENCV_IO_MAX_IMAGE_PIXELS lowers); a larger image is an InputError naming its size,
/// found once it is decoded, before the copies that would exhaust the memory.
void set_max_image_pixels(int64_t pixels);
int64_t max_image_pixels();

/// The file extensions read_image handles, lower case with the dot.
const std::vector<std::string>& image_extensions();
/// image_extensions() in one line, separated by spaces, for messages.
std::string image_extensions_text();

/// Whether `path`'s extension, in any case, is one of image_extensions(): a name read_image
/// and write_image take.
bool has_image_extension(const std::filesystem::path& path);

/// Whether `path` names a tensor image (.pt, in any case): LibTorch's own file of a tensor.
bool is_tensor_image(const std::filesystem::path& path);

/// Writes `pixels` ((C, H, W), C = 1, 3 or 4, RGB order, values in [0, 1], clamped) as an
/// image with `bit_depth` 8 or 16 bits per sample, in the format the extension names,
/// atomically (alpha only where keeps_alpha; grey as RGB in .ppm). Throws pconv::InputError
/// naming the file on failure.
void write_image(const std::filesystem::path& path, const torch::Tensor& pixels, int bit_depth = 8);

/// Writes a hole map (height x width bytes, non-zero = hole) as an 8-bit grey image, white
/// where the hole is. The format follows the extension (.png recommended). The file appears
/// whole or not at all: it is written under a temporary name and renamed. Throws
/// pconv::ArgumentError if `holes` does not hold height x width bytes, pconv::InputError
/// naming the file if it cannot be written.
void write_mask(const std::filesystem::path& path, const std::vector<uint8_t>& holes,
                int64_t height, int64_t width);

/// How a mask image marks the holes.
enum class MaskConvention {
  kWhiteIsHole,   // pconv's default, as OpenCV's cv::inpaint, LaMa and IOPaint
  kWhiteIsValid,  // white where pixels are known (as the paper's mask M is 1 there)
};

/// The threshold rule for masks that are not pure black and white: a pixel is white when its
/// brightest colour channel is at least half the full scale (128 of 255, 32768 of 65535) and,
/// if the mask has an alpha channel, its alpha is at least half too (transparent is black).
/// Returns the hole map (H, W) bool, true = hole, of a mask read by read_image. Throws
/// pconv::ArgumentError if `mask.pixels` is not (C, H, W) with C = 1 to 4.
torch::Tensor holes_from_mask(const Image& mask, MaskConvention convention);

/// For an RGBA image without a mask: the hole map (H, W) bool, true where alpha is below half.
/// Throws pconv::ArgumentError if the image has no alpha channel.
torch::Tensor holes_from_alpha(const Image& image);

/// Whether write_image can store 16-bit samples in the format `path` names (png, tiff, .pt).
bool keeps_16_bit(const std::filesystem::path& path);

/// Whether write_image keeps an alpha channel in the format `path` names (png, also for a
/// name without an extension, tiff, webp, .pt); the others get the colour channels alone.
bool keeps_alpha(const std::filesystem::path& path);

}  // namespace pconv::io
