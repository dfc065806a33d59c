#include "pconv/io/image_file.h"

#include "../check_argument.h"

#include "file_problem.h"
#include "stderr_capture.h"
#include "stored_tensor.h"

#include "pconv/error.h"

#ifdef PCONV_WITH_OPENCV
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#endif
#ifdef PCONV_WITH_PNG
#include <png.h>
#endif
#ifdef PCONV_WITH_JPEG
#include <cstdio>  // jpeglib.h needs FILE and size_t first

#include <jpeglib.h>
#endif
#if defined(PCONV_WITH_PNG) || defined(PCONV_WITH_JPEG)
#include <csetjmp>
#endif

#include <ATen/ATen.h>
#include <torch/csrc/jit/serialization/pickle.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pconv::io {
namespace {

std::string lower_extension(const std::filesystem::path& path) {
  std::string extension = path.extension().string();
  std::transform(extension.begin(), extension.end(), extension.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return extension;
}

// The most pixels an image may have: OpenCV's own default limit, unless set_max_image_pixels
// lowered it.
std::atomic<int64_t> g_max_image_pixels{int64_t{1} << 30};

// What is said of an image past the limit.
std::string too_many_pixels(const std::string& name, const std::string& size) {
  return name + ": " + size + "more pixels than the " + std::to_string(g_max_image_pixels.load()) +
         " pconv reads (OPENCV_IO_MAX_IMAGE_PIXELS sets the limit)";
}

// A tensor image: one uint8 (8-bit) or uint16 or int32 (16-bit) tensor (H, W) or (H, W, C),
// C = 1, 3 or 4, RGB order, as torch::pickle_save writes it in C++ or torch.save in Python.
// (Python's torch.save writes uint16 in a form LibTorch cannot read: there int32 stands in.)
Image read_tensor_image(const std::filesystem::path& path) {
  const std::string name = path.string();
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(name + ": cannot open the file");
  // torch.save and pickle_save write a zip archive: anything else is refused before it is read
  // whole (a large file that is not one would only cost time and memory).
  std::array<char, 4> magic{};
  if (!in.read(magic.data(), magic.size()) || std::memcmp(magic.data(), "PK\x03\x04", 4) != 0) {
    throw InputError(name + ": not a tensor image (a .pt file from torch.save is a zip archive; " +
                     "this one is not)");
  }
  in.close();
  const std::vector<char> bytes = read_archive(name);
  if (bytes.empty()) throw InputError(name + ": cannot read the file");
  // LibTorch's reader does not check the zip's checksums: changed samples would be read as if
  // they were the picture (a PNG's own checksums catch the same damage).
  if (const auto damaged = first_damaged_record(bytes); !damaged.empty()) {
    throw InputError(name + ": is damaged (the bytes of its record " + damaged +
                     " do not match their checksum)");
  }
  c10::IValue value;
  try {
    value = torch::jit::pickle_load(bytes);
  } catch (const std::exception&) {
    throw InputError(name + ": cannot read the tensor image (corrupt, not a torch.save file, or " +
                     "Python's uint16: save int32 instead)");
  }
  if (!value.isTensor()) throw InputError(name + ": holds no tensor; expected an image tensor");
  auto hwc = value.toTensor();
  const auto stored_sizes = hwc.sizes().vec();
  if (hwc.dim() == 2) hwc = hwc.unsqueeze(2);
  const auto type = hwc.scalar_type();
  if (hwc.dim() != 3 || (type != at::kByte && type != at::kUInt16 && type != at::kInt) ||
      (hwc.size(2) != 1 && hwc.size(2) != 3 && hwc.size(2) != 4) || hwc.numel() == 0) {
    throw InputError(name + ": expected a uint8, uint16 or int32 tensor (H, W[, 1|3|4]); got " +
                     std::string(c10::toString(type)) + " " + c10::str(stored_sizes));
  }
  // A data record cut short still gives a storage of the size the pickle claims, its end
  // outside the record: compare the records' sizes before any sample is read.
  bool complete = false;
  try {
    complete = has_all_its_bytes(hwc) && single_record_fills(bytes, hwc);
  } catch (const c10::Error&) {
  }
  if (!complete) throw InputError(name + ": the tensor image is truncated");
  // A file of a few bytes can describe a huge picture with zero strides: the file must hold
  // every sample, so that what is read is about as large as the file.
  if (hwc.storage().nbytes() / hwc.element_size() < static_cast<size_t>(hwc.numel())) {
    throw InputError(name + ": the tensor image repeats its samples (zero strides); save a " +
                     "contiguous tensor");
  }
  if (hwc.size(0) > g_max_image_pixels.load() / hwc.size(1)) {
    throw InputError(too_many_pixels(
        name, std::to_string(hwc.size(1)) + "x" + std::to_string(hwc.size(0)) + " is "));
  }
  Image image;
  image.bit_depth = type == at::kByte ? 8 : 16;
  try {
    // uint16 has few kernels; int32 holds every value exactly.
    const auto samples = type == at::kUInt16 ? hwc.view(at::kShort).to(at::kInt).bitwise_and(0xFFFF)
                                             : hwc.to(at::kInt);
    if (type == at::kInt && (samples.min().item<int>() < 0 || samples.max().item<int>() > 65535)) {
      throw InputError(name + ": an int32 tensor image holds 16-bit samples, 0 to 65535");
    }
    const double scale = image.bit_depth == 16 ? 65535.0 : 255.0;
    image.pixels =
        (samples.to(at::kFloat) / scale).permute({2, 0, 1}).clone(at::MemoryFormat::Contiguous);
  } catch (const c10::Error& error) {
    throw InputError(name + ": cannot convert the tensor image (" + brief(error) + ")");
  }
  return image;
}

void write_tensor_image(const std::filesystem::path& path, const at::Tensor& hwc_samples,
                        int bit_depth) {
  // 16-bit samples as int32, which Python's torch.load reads too (it has no uint16 storage).
  auto samples = hwc_samples.to(at::kInt);
  if (bit_depth != 16) samples = samples.to(at::kByte);
  // Grey as (H, W), the shape a grey picture has in torch and numpy (and read back the same).
  if (samples.size(2) == 1) samples = samples.squeeze(2);
  const auto bytes = torch::jit::pickle_save(samples.contiguous());
  write_file_atomically(path, std::string(bytes.begin(), bytes.end()));
}

// (H, W, C) integer samples in RGB order, written in the format the extension names.
void encode_and_write(const std::filesystem::path& path, const at::Tensor& hwc_samples,
                      int bit_depth) {
  if (is_tensor_image(path)) {
    write_tensor_image(path, hwc_samples, bit_depth);
    return;
  }
#ifdef PCONV_WITH_OPENCV
  // A format without transparency gets the colour channels (OpenCV drops alpha itself for JPEG
  // and BMP, but refuses it for Netpbm); .ppm holds RGB only, so grey is written as RGB.
  at::Tensor colour = hwc_samples;
  if (colour.size(2) == 4 && !keeps_alpha(path)) colour = colour.narrow(2, 0, 3);
  if (colour.size(2) == 1 && lower_extension(path) == ".ppm") colour = colour.expand({-1, -1, 3});
  const auto samples_int = colour.to(at::kInt).contiguous();
  const int height = static_cast<int>(samples_int.size(0));
  const int width = static_cast<int>(samples_int.size(1));
  const int channels = static_cast<int>(samples_int.size(2));
  cv::Mat as_int(height, width, CV_32SC(channels), samples_int.data_ptr<int32_t>());
  cv::Mat samples;
  as_int.convertTo(samples, bit_depth == 16 ? CV_16U : CV_8U);
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
  std::vector<uint8_t> encoded;
  const std::string extension = path.extension().string();
  bool ok = false;
  try {
    ok = cv::imencode(extension.empty() ? ".png" : extension, bgr, encoded);
  } catch (const cv::Exception&) {
    ok = false;
  }
  if (!ok) {
    throw InputError(path.string() + ": cannot encode the image as '" + extension +
                     "' (use one of " + image_extensions_text() + ")");
  }
  write_file_atomically(path, encoded);
#else
  throw InputError(path.string() + ": this pconv was built without OpenCV and writes only " +
                   kTensorImageExtension + " tensor images");
#endif
}

// set_decoder_warning_handler's handler.
struct DecoderWarnings {
  std::mutex mutex;
  std::function<void(const std::string&)> handler;
};

DecoderWarnings& decoder_warnings() {
  static DecoderWarnings state;
  return state;
}

#ifdef PCONV_WITH_OPENCV
// Whether a decoder's line is libpng's remark about a colour-space chunk (iCCP, sRGB, cHRM,
// gAMA), such as "iCCP: known incorrect sRGB profile", which many photos' profiles draw. pconv
// takes the samples as stored and does no colour management, so none of them is about what it
// reads.
bool is_colour_chunk_remark(std::string_view line) {
  constexpr std::string_view kPrefix = "libpng warning: ";
  if (line.substr(0, kPrefix.size()) != kPrefix) return false;
  const auto chunk = line.substr(kPrefix.size(), 6);
  return chunk == "iCCP: " || chunk == "sRGB: " || chunk == "cHRM: " || chunk == "gAMA: ";
}

void warn_about_decode(const std::string& name, const std::string& decoder_text) {
  std::string text;
  std::istringstream lines(decoder_text);
  for (std::string line; std::getline(lines, line);) {
    if (!is_colour_chunk_remark(line)) text += line + "\n";
  }
  if (text.empty()) return;
  std::function<void(const std::string&)> handler;
  {
    const std::lock_guard<std::mutex> lock(decoder_warnings().mutex);
    handler = decoder_warnings().handler;
  }
  if (handler) {
    handler(name + ": " + one_line(text));
  } else {
    std::fputs(text.c_str(), stderr);
  }
}
#endif

#ifdef PCONV_WITH_PNG
// libpng's messages about a file OpenCV has already decoded: none is pconv's to print.
void ignore_png_warning(png_structp /*png*/, png_const_charp /*message*/) {}
[[noreturn]] void leave_png_reader(png_structp png, png_const_charp /*message*/) {
  png_longjmp(png, 1);
}

// The colour key of a grey PNG (its tRNS chunk: the pixels of that one value are transparent)
// as OpenCV decodes the samples (1, 2 and 4 bits stretched to 8; 8 and 16 bits as stored), or
// -1 where the file has none or is no grey PNG. OpenCV applies a tRNS chunk to palette and RGB
// images, which it reads with alpha, but reads a grey one opaque; PNG optimisers (optipng,
// oxipng) write one for a grey image with alpha whose transparent pixels share one value.
int grey_png_colour_key(const std::string& file_name, int decoded_depth) {
  std::FILE* file = std::fopen(file_name.c_str(), "rb");
  if (file == nullptr) return -1;
  png_structp png =
      png_create_read_struct(PNG_LIBPNG_VER_STRING, nullptr, leave_png_reader, ignore_png_warning);
  png_infop info = png != nullptr ? png_create_info_struct(png) : nullptr;
  volatile int key = -1;  // set after setjmp, read after a longjmp
  // Only what libpng allocates lives past setjmp: png_destroy_read_struct frees it either way.
  if (info != nullptr && setjmp(png_jmpbuf(png)) == 0) {  // NOLINT(cert-err52-cpp): libpng's API
    png_init_io(png, file);
    png_read_info(png, info);
    png_color_16p colour = nullptr;
    const int depth = png_get_bit_depth(png, info);
    if (png_get_color_type(png, info) == PNG_COLOR_TYPE_GRAY &&
        png_get_tRNS(png, info, nullptr, nullptr, &colour) != 0 && colour != nullptr &&
        (depth == 16) == (decoded_depth == CV_16U)) {
      key = depth < 8 ? colour->gray * (255 / ((1 << depth) - 1)) : colour->gray;
    }
  }
  png_destroy_read_struct(&png, &info, nullptr);
  std::fclose(file);
  return key;
}
#endif

#ifdef PCONV_WITH_JPEG
// What a JPEG's header says: its stored size (before any EXIF turn, which keeps the shorter
// side) and colour components.
struct JpegHeader {
  int64_t height = 0;
  int64_t width = 0;
  int components = 0;
};

struct JpegErrors {
  jpeg_error_mgr manager;
  std::jmp_buf leave;
};

[[noreturn]] void leave_jpeg_reader(j_common_ptr info) {
  // NOLINTNEXTLINE(cert-err52-cpp): libjpeg's way out; only libjpeg's own memory lives there
  std::longjmp(reinterpret_cast<JpegErrors*>(info->err)->leave, 1);
}
// A warning about a header that still reads: the decode that follows reports what matters.
void ignore_jpeg_message(j_common_ptr /*info*/, int /*level*/) {}

// The header of a JPEG file, read without decoding a pixel; nullopt where libjpeg cannot read
// one (the decode then says why).
std::optional<JpegHeader> read_jpeg_header(const std::string& file_name) {
  std::FILE* file = std::fopen(file_name.c_str(), "rb");
  if (file == nullptr) return std::nullopt;
  jpeg_decompress_struct info{};
  JpegErrors errors{};
  info.err = jpeg_std_error(&errors.manager);
  errors.manager.error_exit = leave_jpeg_reader;
  errors.manager.emit_message = ignore_jpeg_message;
  volatile bool read = false;  // set after setjmp, read after a longjmp
  JpegHeader header;
  if (setjmp(errors.leave) == 0) {  // NOLINT(cert-err52-cpp): libjpeg's API
    jpeg_create_decompress(&info);
    jpeg_stdio_src(&info, file);
    if (jpeg_read_header(&info, TRUE) == JPEG_HEADER_OK) {
      header.height = info.image_height;
      header.width = info.image_width;
      header.components = info.num_components;
      read = true;
    }
  }
  jpeg_destroy_decompress(&info);
  std::fclose(file);
  if (!read) return std::nullopt;
  return header;
}

// The flags for OpenCV to decode a JPEG at 1/2, 1/4 or 1/8 of its size in libjpeg's DCT (its
// shorter side still at least `shrink_to`), which skips most of the decoding and of the scaling
// down after it; 0 where no such step fits. Only a factor that divides both sides: libjpeg
// rounds a scaled side up, and the last row and column, made partly of the encoder's padding,
// would stretch the picture by up to 7 pixels at its far edges (or its near ones, after an EXIF
// turn, which OpenCV applies without saying which). Camera photos (6000x4000, 4032x3024) divide
// by 8. Grey stays grey.
int reduced_jpeg_flags(const JpegHeader& header, int64_t shrink_to) {
  const int64_t shorter = std::min(header.height, header.width);
  for (const int factor : {8, 4, 2}) {
    if (header.height % factor != 0 || header.width % factor != 0 || shorter / factor < shrink_to) {
      continue;
    }
    const bool grey = header.components == 1;
    switch (factor) {
      case 8:
        return grey ? cv::IMREAD_REDUCED_GRAYSCALE_8 : cv::IMREAD_REDUCED_COLOR_8;
      case 4:
        return grey ? cv::IMREAD_REDUCED_GRAYSCALE_4 : cv::IMREAD_REDUCED_COLOR_4;
      default:
        return grey ? cv::IMREAD_REDUCED_GRAYSCALE_2 : cv::IMREAD_REDUCED_COLOR_2;
    }
  }
  return 0;
}
#endif

}  // namespace

void set_decoder_warning_handler(std::function<void(const std::string&)> handler) {
  const std::lock_guard<std::mutex> lock(decoder_warnings().mutex);
  decoder_warnings().handler = std::move(handler);
}

const std::vector<std::string>& image_extensions() {
  static const std::vector<std::string> extensions{
#ifdef PCONV_WITH_OPENCV
      ".png",
      ".jpg",
      ".jpeg",
      ".webp",
      ".bmp",
      ".tif",
      ".tiff",
      ".ppm",  // Netpbm, which OpenCV reads and writes whatever its build (RGB or grey)
      ".pnm",
#endif
      kTensorImageExtension};
  return extensions;
}

std::string image_extensions_text() { return c10::Join(" ", image_extensions()); }

void set_max_image_pixels(int64_t pixels) {
  g_max_image_pixels = std::clamp<int64_t>(pixels, 1, int64_t{1} << 30);
}

int64_t max_image_pixels() { return g_max_image_pixels; }

bool is_tensor_image(const std::filesystem::path& path) {
  return lower_extension(path) == kTensorImageExtension;
}

#ifdef PCONV_WITH_OPENCV
// A decode: the image (empty where it failed), OpenCV's exception text and what the decoder
// printed on stderr (libpng and libjpeg print their reason for a failed decode there, and
// remarks about a decode that worked, such as "Premature end of JPEG file").
struct Decoded {
  cv::Mat image;
  std::string exception;
  std::string messages;
  bool mixed = false;  // with another decode's (StderrCapture::mixed)
};

Decoded decode_once(const std::string& name, int flags) {
  Decoded result;
  StderrCapture capture;
  try {
    result.image = cv::imread(name, flags);
  } catch (const cv::Exception& error) {
    result.image = cv::Mat();
    result.exception = error.err;
  }
  result.messages = capture.take();
  result.mixed = capture.mixed();
  return result;
}

// Held shared by every decode, and alone by one whose messages got mixed with another's. A
// decode passes the gate first, which the one waiting to be alone holds: glibc's read-write
// lock prefers readers, and a steady stream of decodes on many workers would starve it.
struct DecoderOutput {
  std::mutex gate;
  std::shared_mutex decoding;
};

DecoderOutput& decoder_output() {
  static DecoderOutput state;
  return state;
}

Decoded decode(const std::string& name, int flags) {
  auto& output = decoder_output();
  {
    std::shared_lock<std::shared_mutex> shared(output.decoding, std::defer_lock);
    {
      const std::lock_guard<std::mutex> pass(output.gate);
      shared.lock();
    }
    auto result = decode_once(name, flags);
    if (!result.mixed) return result;
  }
  // Another thread's decoder printed while this one ran (the data workers decode in parallel),
  // so whose text is whose is not known: decoded again with no other decode running, which
  // gives this file's own. Only files a decoder printed about, or read beside one, come here.
  const std::lock_guard<std::mutex> closed(output.gate);
  const std::unique_lock<std::shared_mutex> alone(output.decoding);
  return decode_once(name, flags);
}
#endif

bool has_image_extension(const std::filesystem::path& path) {
  const auto& known = image_extensions();
  return std::find(known.begin(), known.end(), lower_extension(path)) != known.end();
}

namespace {
// The (height, width) that read_image's `shrink_to` scales an image of height x width to: its
// shorter side shrink_to, the aspect kept; nullopt where it is not larger than that already.
std::optional<std::pair<int64_t, int64_t>> shrunk_size(int64_t height, int64_t width,
                                                       int64_t shrink_to) {
  const int64_t shorter = std::min(height, width);
  if (shrink_to <= 0 || shorter <= shrink_to) return std::nullopt;
  const double scale = static_cast<double>(shrink_to) / static_cast<double>(shorter);
  const auto side = [&](int64_t length) {
    return std::max(shrink_to,
                    static_cast<int64_t>(std::lround(static_cast<double>(length) * scale)));
  };
  return std::pair{side(height), side(width)};
}
}  // namespace

Image read_image(const std::filesystem::path& path, int64_t shrink_to) {
  const std::string name = path.string();
  if (const auto problem = file_problem(path, "image file"); !problem.empty()) {
    throw InputError(name + ": " + problem);
  }
  if (is_tensor_image(path)) {
    auto image = read_tensor_image(path);
    if (const auto size = shrunk_size(image.pixels.size(1), image.pixels.size(2), shrink_to)) {
      image.pixels =
          at::_upsample_bilinear2d_aa(image.pixels.unsqueeze(0), {size->first, size->second}, false)
              .squeeze(0)
              .clamp(0.0, 1.0)
              .contiguous();
    }
    return image;
  }
#ifdef PCONV_WITH_OPENCV
  // A JPEG's EXIF orientation is applied, as every viewer (and so every mask drawn on one)
  // does; IMREAD_UNCHANGED would skip it, and a JPEG has no alpha for it to keep.
  const auto extension = lower_extension(path);
  const bool jpeg = extension == ".jpg" || extension == ".jpeg";
  int flags = jpeg ? cv::IMREAD_ANYDEPTH | cv::IMREAD_ANYCOLOR : cv::IMREAD_UNCHANGED;
#ifdef PCONV_WITH_JPEG
  // A JPEG wanted much smaller is decoded smaller: a 6000x4000 photo for a 256 training crop
  // at an eighth of its size, where OpenCV reads no header alone.
  if (jpeg && shrink_to > 0) {
    if (const auto header = read_jpeg_header(name)) {
      if (header->height * header->width > g_max_image_pixels.load()) {
        throw InputError(too_many_pixels(
            name, std::to_string(header->width) + "x" + std::to_string(header->height) + " is "));
      }
      if (const int reduced = reduced_jpeg_flags(*header, shrink_to); reduced != 0) {
        flags = reduced;
      }
    }
  }
#endif
  auto decode_result = decode(name, flags);
  cv::Mat decoded = std::move(decode_result.image);
  const std::string& exception = decode_result.exception;
  const std::string& messages = decode_result.messages;
  if (decoded.empty()) {
    // OpenCV's own header check against OPENCV_IO_MAX_IMAGE_PIXELS throws.
    if (exception.find("CV_IO_MAX_IMAGE_PIXELS") != std::string::npos) {
      throw InputError(too_many_pixels(name, "has "));
    }
    if (exception.find("Failed to allocate") != std::string::npos) {
      throw InputError(name + ": cannot read the image: out of memory (" + one_line(exception) +
                       ")");
    }
    std::string reason = one_line(messages);
    if (reason.empty()) reason = one_line(exception);
    if (!has_image_extension(path)) {
      throw InputError(name + ": cannot read the image: not a format pconv reads (" +
                       image_extensions_text() + ")");
    }
    throw InputError(name + ": cannot read the image (corrupt or not an image" +
                     (reason.empty() ? "" : ": " + reason) + ")");
  }
  warn_about_decode(name, messages);
  // Checked once decoded (OpenCV 4.6 reads no header alone): the 8 or 16 bits per sample are
  // a fraction of what the float copies and the network take next.
  if (static_cast<int64_t>(decoded.total()) > g_max_image_pixels.load()) {
    throw InputError(too_many_pixels(
        name, std::to_string(decoded.cols) + "x" + std::to_string(decoded.rows) + " is "));
  }
  if (decoded.depth() != CV_8U && decoded.depth() != CV_16U) {
    throw InputError(name + ": unsupported sample type (only 8- and 16-bit images)");
  }
#ifdef PCONV_WITH_PNG
  // A grey PNG whose transparency is a colour key gets its alpha channel, as OpenCV gives the
  // other PNGs theirs: four channels, grey in each colour one.
  if (decoded.channels() == 1) {
    if (const int key = grey_png_colour_key(name, decoded.depth()); key >= 0) {
      cv::Mat alpha;
      cv::compare(decoded, cv::Scalar(key), alpha, cv::CMP_NE);  // 255 where opaque
      if (decoded.depth() == CV_16U) alpha.convertTo(alpha, CV_16U, 257.0);
      cv::Mat with_alpha;
      cv::merge(std::vector<cv::Mat>{decoded, decoded, decoded, alpha}, with_alpha);
      decoded = with_alpha;
    }
  }
#endif
  if (const auto size = shrunk_size(decoded.rows, decoded.cols, shrink_to)) {
    cv::Mat smaller;
    cv::resize(decoded, smaller,
               cv::Size(static_cast<int>(size->second), static_cast<int>(size->first)), 0, 0,
               cv::INTER_AREA);
    decoded = smaller;
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
#else
  throw InputError(name + ": this pconv was built without OpenCV and reads only " +
                   kTensorImageExtension + " tensor images");
#endif
}

void write_image(const std::filesystem::path& path, const torch::Tensor& pixels, int bit_depth) {
  PCONV_CHECK_ARGUMENT(
      pixels.dim() == 3 && (pixels.size(0) == 1 || pixels.size(0) == 3 || pixels.size(0) == 4),
      "write_image: pixels must be (C, H, W) with C = 1, 3 or 4; got ", pixels.sizes());
  PCONV_CHECK_ARGUMENT(bit_depth == 8 || bit_depth == 16, "write_image: bit depth 8 or 16; got ",
                       bit_depth);
  const double scale = bit_depth == 16 ? 65535.0 : 255.0;
  const auto hwc = (pixels.detach().to(at::kCPU, at::kFloat).clamp(0.0, 1.0) * scale)
                       .round()
                       .to(at::kInt)
                       .permute({1, 2, 0});
  encode_and_write(path, hwc, bit_depth);
}

void write_mask(const std::filesystem::path& path, const std::vector<uint8_t>& holes,
                int64_t height, int64_t width) {
  if (height < 0 || width < 0 || static_cast<int64_t>(holes.size()) != height * width) {
    throw ArgumentError("write_mask: " + path.string() + ": a hole map of " +
                        std::to_string(holes.size()) + " bytes for " + std::to_string(width) + "x" +
                        std::to_string(height) + " pixels");
  }
  auto samples = at::from_blob(const_cast<uint8_t*>(holes.data()), {height, width, 1}, at::kByte)
                     .ne(0)
                     .to(at::kInt)
                     .mul(kMaskHoleValue);
  encode_and_write(path, samples, 8);
}

torch::Tensor holes_from_mask(const Image& mask, MaskConvention convention) {
  const auto& pixels = mask.pixels;
  if (!pixels.defined() || pixels.dim() != 3 || pixels.size(0) < 1 || pixels.size(0) > 4) {
    std::ostringstream shape;
    if (pixels.defined()) shape << pixels.sizes();
    throw ArgumentError(
        "holes_from_mask: the mask's pixels must be (C, H, W) with C = 1 to 4; "
        "got " +
        (pixels.defined() ? shape.str() : std::string("none")));
  }
  const int64_t channels = pixels.size(0);
  const int64_t colour = channels == 2 || channels == 4 ? channels - 1 : channels;
  auto white = std::get<0>(pixels.narrow(0, 0, colour).max(0)).ge(0.5);
  if (colour != channels) white = white.logical_and(pixels[channels - 1].ge(0.5));
  return convention == MaskConvention::kWhiteIsHole ? white : white.logical_not();
}

torch::Tensor holes_from_alpha(const Image& image) {
  if (image.pixels.size(0) != 4) {
    throw ArgumentError("holes_from_alpha: the image has no alpha channel");
  }
  return image.pixels[3].lt(0.5);
}

bool keeps_alpha(const std::filesystem::path& path) {
  const auto extension = lower_extension(path);
  // A name without an extension is written as PNG.
  return extension.empty() || extension == ".png" || extension == ".tif" || extension == ".tiff" ||
         extension == ".webp" || extension == kTensorImageExtension;
}

bool keeps_16_bit(const std::filesystem::path& path) {
  const auto extension = lower_extension(path);
  return extension == ".png" || extension == ".tif" || extension == ".tiff" ||
         extension == kTensorImageExtension;
}

}  // namespace pconv::io
