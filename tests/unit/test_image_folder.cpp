// Tests of the image io and the training data: every listed format, grey/RGBA/16-bit, corrupt
// and too-small files, crops, and a stream that is the same for any number of workers and
// when resumed.
#include <pconv/data/image_folder.h>
#include <pconv/data/mask_folder.h>
#include <pconv/error.h>
#include <pconv/io/image_file.h>

#include <ATen/ATen.h>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#ifdef PCONV_WITH_PNG
#include <png.h>

#include <csetjmp>
#include <cstdio>
#endif

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "temp_dir.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

namespace D = pconv::data;
namespace fs = std::filesystem;

class ImageFolderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::manual_seed(11);
    fs::create_directories(dir_ / "sub");
  }

  // A smooth colour gradient, BGR as OpenCV stores it.
  static cv::Mat gradient(int height, int width, int type) {
    cv::Mat image(height, width, type);
    const double scale = CV_MAT_DEPTH(type) == CV_16U ? 65535.0 : 255.0;
    for (int y = 0; y < height; ++y) {
      for (int x = 0; x < width; ++x) {
        for (int c = 0; c < image.channels(); ++c) {
          const double value = scale * (0.2 + 0.6 * ((x + 2 * y + 31 * c) % 97) / 97.0);
          if (CV_MAT_DEPTH(type) == CV_16U) {
            image.ptr<uint16_t>(y)[x * image.channels() + c] = static_cast<uint16_t>(value);
          } else {
            image.ptr<uint8_t>(y)[x * image.channels() + c] = static_cast<uint8_t>(value);
          }
        }
      }
    }
    return image;
  }

  pconv::testing::TempDir temp_;
  const fs::path& dir_ = temp_.path();
};

TEST_F(ImageFolderTest, ReadsEveryFormatDepthAndChannelCount) {
  struct Case {
    std::string name;
    int type;
    int64_t channels;
    int bit_depth;
  };
  const std::vector<Case> cases = {
      {"rgb.png", CV_8UC3, 3, 8},    {"grey.png", CV_8UC1, 1, 8},   {"rgba.png", CV_8UC4, 4, 8},
      {"deep.png", CV_16UC3, 3, 16}, {"photo.jpg", CV_8UC3, 3, 8},  {"photo.webp", CV_8UC3, 3, 8},
      {"photo.bmp", CV_8UC3, 3, 8},  {"photo.tiff", CV_8UC3, 3, 8}, {"deep.tif", CV_16UC1, 1, 16},
      {"photo.ppm", CV_8UC3, 3, 8},  {"deep.pnm", CV_16UC3, 3, 16}};
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const cv::Mat written = gradient(20, 30, c.type);
    ASSERT_TRUE(cv::imwrite((dir_ / c.name).string(), written));
    const auto image = pconv::io::read_image(dir_ / c.name);
    EXPECT_EQ(image.pixels.sizes(), (at::IntArrayRef{c.channels, 20, 30}));
    EXPECT_EQ(image.bit_depth, c.bit_depth);
    EXPECT_GE(image.pixels.min().item<float>(), 0.0F);
    EXPECT_LE(image.pixels.max().item<float>(), 1.0F);
    if (c.name.find(".png") != std::string::npos || c.name.find(".tif") != std::string::npos ||
        c.name.find(".bmp") != std::string::npos || c.name.find(".ppm") != std::string::npos ||
        c.name.find(".pnm") != std::string::npos) {
      // Lossless: the first pixel comes back exactly, in RGB order.
      const double scale = c.bit_depth == 16 ? 65535.0 : 255.0;
      const int bgr_channel = c.channels >= 3 ? 2 : 0;
      const double stored = c.bit_depth == 16 ? written.ptr<uint16_t>(0)[bgr_channel]
                                              : written.ptr<uint8_t>(0)[bgr_channel];
      EXPECT_NEAR(image.pixels[0][0][0].item<double>(), stored / scale, 1e-6);
    }
  }
}

TEST_F(ImageFolderTest, CorruptAndMissingFilesAreInputErrorsNamingTheFile) {
  std::ofstream(dir_ / "broken.jpg") << "this is not a jpeg";
  EXPECT_THAT([&] { pconv::io::read_image(dir_ / "broken.jpg"); },
              ::testing::ThrowsMessage<pconv::InputError>(::testing::HasSubstr("broken.jpg")));
  EXPECT_THAT([&] { pconv::io::read_image(dir_ / "absent.png"); },
              ::testing::ThrowsMessage<pconv::InputError>(::testing::HasSubstr("absent.png")));
}

// What libpng and libjpeg print goes into pconv's messages, never straight to stderr: the
// reason for a failed decode into the error, a warning about a decode that worked (a truncated
// JPEG decodes with its lower part grey) to the warning handler, with the file's name.
TEST_F(ImageFolderTest, DecoderMessagesGoIntoTheErrorOrTheWarningHandler) {
  ASSERT_TRUE(cv::imwrite((dir_ / "whole.png").string(), gradient(40, 50, CV_8UC3)));
  ASSERT_TRUE(cv::imwrite((dir_ / "whole.jpg").string(), gradient(40, 50, CV_8UC3)));
  for (const auto* name : {"whole.png", "whole.jpg"}) {
    std::ifstream in(dir_ / name, std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    bytes.resize(bytes.size() / 2);
    std::ofstream out(dir_ / ("half_" + std::string(name)), std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  std::vector<std::string> warnings;
  pconv::io::set_decoder_warning_handler(
      [&warnings](const std::string& warning) { warnings.push_back(warning); });
  ::testing::internal::CaptureStderr();
  std::string error;
  try {
    pconv::io::read_image(dir_ / "half_whole.png");
  } catch (const pconv::InputError& thrown) {
    error = thrown.what();
  }
  const auto jpeg = pconv::io::read_image(dir_ / "half_whole.jpg");
  pconv::io::read_image(dir_ / "whole.png");
  pconv::io::set_decoder_warning_handler(nullptr);
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
  EXPECT_THAT(error, ::testing::HasSubstr("half_whole.png: cannot read the image"));
  EXPECT_THAT(error, ::testing::HasSubstr("libpng error"));
  EXPECT_EQ(error.find('\n'), std::string::npos);
  EXPECT_EQ(jpeg.pixels.sizes(), (at::IntArrayRef{3, 40, 50}));
  EXPECT_THAT(warnings, ::testing::ElementsAre(
                            ::testing::AllOf(::testing::HasSubstr("half_whole.jpg: "),
                                             ::testing::HasSubstr("Premature end of JPEG file"))));
}

// Read on several threads at once (as the data workers read), a decoder's remark still names
// its own file, once per read: the text is not claimed by a read of another file.
TEST_F(ImageFolderTest, DecoderWarningsNameTheirFileWhenReadInParallel) {
  ASSERT_TRUE(cv::imwrite((dir_ / "whole.jpg").string(), gradient(120, 160, CV_8UC3)));
  std::ifstream in(dir_ / "whole.jpg", std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  bytes.resize(bytes.size() / 2);
  std::vector<fs::path> files;
  for (int i = 0; i < 8; ++i) {
    const auto name = dir_ / ((i % 4 == 0 ? "half" : "clean") + std::to_string(i) + ".jpg");
    if (i % 4 == 0) {
      std::ofstream(name, std::ios::binary)
          .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    } else {
      fs::copy_file(dir_ / "whole.jpg", name);
    }
    files.push_back(name);
  }
  std::mutex mutex;
  std::vector<std::string> warnings;
  pconv::io::set_decoder_warning_handler([&](const std::string& warning) {
    const std::lock_guard<std::mutex> lock(mutex);
    warnings.push_back(warning);
  });
  constexpr int kThreads = 4;
  constexpr int kRounds = 10;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&files, t] {
      for (int round = 0; round < kRounds; ++round) {
        for (std::size_t i = 0; i < files.size(); ++i) {
          pconv::io::read_image(files[(i + static_cast<std::size_t>(t)) % files.size()]);
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  pconv::io::set_decoder_warning_handler(nullptr);
  // Two truncated files, each read kThreads x kRounds times: one warning a read, naming it.
  EXPECT_EQ(warnings.size(), 2U * kThreads * kRounds);
  for (const auto& warning : warnings) {
    EXPECT_THAT(warning, ::testing::MatchesRegex(".*/half[04][.]jpg: Premature end of JPEG file"));
  }
}

TEST_F(ImageFolderTest, ListsImagesRecursivelyInOrder) {
  for (const auto* name : {"b.png", "a.JPG", "sub/c.webp", "notes.txt"}) {
    if (std::string(name).find(".txt") != std::string::npos) {
      std::ofstream(dir_ / name) << "text";
    } else {
      cv::imwrite((dir_ / name).string(), gradient(8, 8, CV_8UC3));
    }
  }
  const auto files = D::list_images(dir_);
  ASSERT_EQ(files.size(), 3U);
  EXPECT_EQ(files[0].filename(), "a.JPG");
  EXPECT_EQ(files[1].filename(), "b.png");
  EXPECT_EQ(files[2].filename(), "c.webp");
  EXPECT_THROW(D::list_images(dir_ / "nothing-here"), pconv::InputError);
  fs::create_directories(dir_ / "empty");
  EXPECT_THAT([&] { D::list_images(dir_ / "empty"); },
              ::testing::ThrowsMessage<pconv::InputError>(::testing::HasSubstr("no images")));
}

// An image past the pixel limit is an input error naming its size, for decoded images and
// tensor images alike (the limit keeps a small file with a huge picture from exhausting the
// memory).
TEST_F(ImageFolderTest, ImagesPastThePixelLimitAreInputErrors) {
  cv::imwrite((dir_ / "big.png").string(), gradient(16, 20, CV_8UC3));
  pconv::io::write_image(dir_ / "big.pt", at::zeros({3, 16, 20}));
  const auto before = pconv::io::max_image_pixels();
  pconv::io::set_max_image_pixels(319);
  for (const auto* name : {"big.png", "big.pt"}) {
    EXPECT_THAT([&] { pconv::io::read_image(dir_ / name); },
                ::testing::ThrowsMessage<pconv::InputError>(::testing::HasSubstr(
                    std::string(name) + ": 20x16 is more pixels than the 319 pconv reads")));
  }
  pconv::io::set_max_image_pixels(320);
  EXPECT_EQ(pconv::io::read_image(dir_ / "big.png").pixels.size(2), 20);
  EXPECT_EQ(pconv::io::read_image(dir_ / "big.pt").pixels.size(2), 20);
  pconv::io::set_max_image_pixels(before);
}

#ifdef PCONV_WITH_PNG
// Writes a PNG of `bytes` (rows of width x channels samples, big-endian at 16 bits) with
// libpng, calling `before_info` before the header is written and `after_info` after it (for
// chunks and transformations); whether it was written.
bool write_png(const fs::path& path, int width, int height, int depth, int colour_type,
               std::vector<png_byte>& bytes,
               const std::function<void(png_structp, png_infop)>& before_info,
               const std::function<void(png_structp, png_infop)>& after_info) {
  std::FILE* file = std::fopen(path.string().c_str(), "wb");
  if (file == nullptr) return false;
  std::vector<png_bytep> rows;
  const auto row_bytes = bytes.size() / static_cast<size_t>(height);
  for (int y = 0; y < height; ++y) rows.push_back(bytes.data() + y * row_bytes);
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png != nullptr ? png_create_info_struct(png) : nullptr;
  volatile bool written = false;
  if (info != nullptr && setjmp(png_jmpbuf(png)) == 0) {  // NOLINT(cert-err52-cpp): libpng's API
    png_init_io(png, file);
    png_set_IHDR(png, info, static_cast<png_uint_32>(width), static_cast<png_uint_32>(height),
                 depth, colour_type, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    before_info(png, info);
    png_write_info(png, info);
    after_info(png, info);
    png_write_image(png, rows.data());
    png_write_end(png, nullptr);
    written = true;
  }
  png_destroy_write_struct(&png, &info);
  return std::fclose(file) == 0 && written;
}

// A grey PNG of `samples` (row-major, `depth` bits each) whose tRNS chunk makes the value `key`
// transparent, as PNG optimisers write a grey image with alpha. Whether it was written.
bool write_keyed_grey_png(const fs::path& path, int width, int height, int depth,
                          const std::vector<uint16_t>& samples, uint16_t key) {
  // One byte per sample below 16 bits (png_set_packing packs them), two big-endian ones at 16.
  std::vector<png_byte> bytes;
  for (const auto sample : samples) {
    if (depth == 16) bytes.push_back(static_cast<png_byte>(sample >> 8));
    bytes.push_back(static_cast<png_byte>(sample & 0xFF));
  }
  return write_png(
      path, width, height, depth, PNG_COLOR_TYPE_GRAY, bytes,
      [key](png_structp png, png_infop info) {
        png_color_16 colour{};
        colour.gray = key;
        png_set_tRNS(png, info, nullptr, 0, &colour);
      },
      [depth](png_structp png, png_infop /*info*/) {
        if (depth < 8) png_set_packing(png);
      });
}

// OpenCV reads a grey PNG's colour key as opaque; pconv gives it the alpha channel the key
// stands for (grey in the colour channels), at every bit depth, so that an image's transparent
// pixels are its holes and a mask's are not white.
TEST_F(ImageFolderTest, GreyPngColourKeyBecomesAlpha) {
  constexpr int kWidth = 5;
  constexpr int kHeight = 3;
  for (const int depth : {1, 2, 4, 8, 16}) {
    SCOPED_TRACE("bit depth " + std::to_string(depth));
    const int top = (1 << depth) - 1;
    std::vector<uint16_t> samples;
    for (int i = 0; i < kWidth * kHeight; ++i)
      samples.push_back(static_cast<uint16_t>(i % 3 == 0 ? top : (i * 7) % top));
    const auto key = static_cast<uint16_t>(top);  // white is transparent
    const auto path = dir_ / ("keyed" + std::to_string(depth) + ".png");
    ASSERT_TRUE(write_keyed_grey_png(path, kWidth, kHeight, depth, samples, key));
    const auto image = pconv::io::read_image(path);
    ASSERT_EQ(image.pixels.sizes(), (at::IntArrayRef{4, kHeight, kWidth}));
    EXPECT_EQ(image.bit_depth, depth == 16 ? 16 : 8);
    const auto expected_grey = at::tensor(std::vector<float>(samples.begin(), samples.end()))
                                   .div(top)
                                   .view({kHeight, kWidth});
    const auto transparent = at::tensor(std::vector<int>(samples.begin(), samples.end()))
                                 .eq(key)
                                 .view({kHeight, kWidth});
    for (int c = 0; c < 3; ++c) {
      EXPECT_TRUE(at::allclose(image.pixels[c], expected_grey, 0.0, 1e-6)) << "channel " << c;
    }
    EXPECT_TRUE(at::equal(image.pixels[3], transparent.logical_not().to(at::kFloat)));
    EXPECT_TRUE(at::equal(pconv::io::holes_from_alpha(image), transparent));
    // As a mask: the transparent white pixels are not holes, the opaque white ones are.
    const auto white = at::tensor(std::vector<int>(samples.begin(), samples.end()))
                           .ge((top + 1) / 2)
                           .view({kHeight, kWidth});
    EXPECT_TRUE(
        at::equal(pconv::io::holes_from_mask(image, pconv::io::MaskConvention::kWhiteIsHole),
                  white.logical_and(transparent.logical_not())));
  }
  // Without the chunk the same picture stays one grey channel.
  ASSERT_TRUE(cv::imwrite((dir_ / "plain.png").string(), gradient(3, 5, CV_8UC1)));
  EXPECT_EQ(pconv::io::read_image(dir_ / "plain.png").pixels.size(0), 1);
}

// An 8x8 RGB PNG with the given ancillary chunks (type, data) before its pixels; whether it was
// written.
bool write_png_with_chunks(const fs::path& path,
                           const std::vector<std::pair<std::string, std::string>>& chunks) {
  std::vector<png_byte> bytes(8 * 8 * 3, 128);
  return write_png(
      path, 8, 8, 8, PNG_COLOR_TYPE_RGB, bytes, [](png_structp, png_infop) {},
      [&chunks](png_structp png, png_infop /*info*/) {
        for (const auto& [type, data] : chunks) {
          png_write_chunk(png, reinterpret_cast<png_const_bytep>(type.c_str()),
                          reinterpret_cast<png_const_bytep>(data.data()), data.size());
        }
      });
}

// libpng's remarks about colour-space chunks ("iCCP: known incorrect sRGB profile" is common
// in photos) are not passed on: pconv does no colour management, so they say nothing about
// what it reads. Its other warnings about the same file still are.
TEST_F(ImageFolderTest, ColourProfileRemarksAreNotWarnings) {
  const std::string broken_profile("x\0\0junk", 7);  // name, method, no zlib stream
  ASSERT_TRUE(write_png_with_chunks(dir_ / "profile.png", {{"iCCP", broken_profile}}));
  ASSERT_TRUE(
      write_png_with_chunks(dir_ / "profile_and_text.png",
                            {{"iCCP", broken_profile}, {"tEXt", std::string("key\0v", 5)}}));
  {  // the tEXt chunk's checksum made wrong: libpng warns and skips the chunk
    std::fstream file(dir_ / "profile_and_text.png",
                      std::ios::in | std::ios::out | std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    const auto text = bytes.find("tEXt");
    ASSERT_NE(text, std::string::npos);
    file.clear();
    file.seekp(static_cast<std::streamoff>(text + 4 + 5 + 3));
    file.put(static_cast<char>(bytes[text + 4 + 5 + 3] ^ 1));
  }
  std::vector<std::string> warnings;
  pconv::io::set_decoder_warning_handler(
      [&warnings](const std::string& warning) { warnings.push_back(warning); });
  ::testing::internal::CaptureStderr();
  const auto quiet = pconv::io::read_image(dir_ / "profile.png");
  pconv::io::read_image(dir_ / "profile_and_text.png");
  pconv::io::set_decoder_warning_handler(nullptr);
  pconv::io::read_image(dir_ / "profile.png");  // without a handler: nothing on stderr either
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
  EXPECT_EQ(quiet.pixels.sizes(), (at::IntArrayRef{3, 8, 8}));
  EXPECT_THAT(warnings, ::testing::ElementsAre(::testing::EndsWith(
                            "profile_and_text.png: libpng warning: tEXt: CRC error")));
}
#endif

// Writes `image` as a JPEG at `path` marked to be shown turned a quarter clockwise (EXIF
// orientation 6); returns the file's bytes.
std::vector<uint8_t> write_turned_jpeg(const fs::path& path, const cv::Mat& image) {
  std::vector<uint8_t> jpeg;
  cv::imencode(".jpg", image, jpeg);
  // An APP1 segment right after the start marker: "Exif", a little-endian TIFF header and one
  // IFD entry, orientation (0x0112, SHORT) = 6: rotate 90 degrees clockwise to show.
  const std::vector<uint8_t> exif = {0xFF, 0xE1, 0x00, 0x22, 'E',  'x',  'i',  'f',  0x00,
                                     0x00, 'I',  'I',  0x2A, 0x00, 0x08, 0x00, 0x00, 0x00,
                                     0x01, 0x00, 0x12, 0x01, 0x03, 0x00, 0x01, 0x00, 0x00,
                                     0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};
  jpeg.insert(jpeg.begin() + 2, exif.begin(), exif.end());
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(jpeg.data()), static_cast<std::streamsize>(jpeg.size()));
  return jpeg;
}

// A JPEG's EXIF orientation is applied, as viewers do: a mask drawn on the picture as it is
// shown fits it.
TEST_F(ImageFolderTest, JpegExifOrientationIsApplied) {
  const auto jpeg = write_turned_jpeg(dir_ / "turned.jpg", gradient(40, 48, CV_8UC3));
  const auto turned = pconv::io::read_image(dir_ / "turned.jpg");
  ASSERT_EQ(turned.pixels.sizes(), (at::IntArrayRef{3, 48, 40}));  // was 40 rows, 48 columns
  // The pixels too: the stored picture turned clockwise (not anticlockwise, not transposed).
  cv::Mat stored = cv::imdecode(jpeg, cv::IMREAD_COLOR | cv::IMREAD_IGNORE_ORIENTATION);
  cv::Mat clockwise;
  cv::rotate(stored, clockwise, cv::ROTATE_90_CLOCKWISE);
  cv::cvtColor(clockwise, clockwise, cv::COLOR_BGR2RGB);
  const auto expected = at::from_blob(clockwise.data, {48, 40, 3}, at::kByte)
                            .permute({2, 0, 1})
                            .to(at::kFloat)
                            .div(255.0);
  EXPECT_LT((turned.pixels.to(at::kFloat) - expected).abs().max().item<double>(), 1.5 / 255.0);
  cv::imwrite((dir_ / "plain.jpg").string(), gradient(40, 48, CV_8UC1));
  EXPECT_EQ(pconv::io::read_image(dir_ / "plain.jpg").pixels.sizes(),
            (at::IntArrayRef{1, 40, 48}));  // grey stays grey
}

// What cannot be looked at is reported, not dropped without a word, and never ends the
// listing; a link to a folder is not followed (it could lead back up forever), and says so.
TEST_F(ImageFolderTest, ListingReportsWhatItSkips) {
  fs::create_directories(dir_ / "sub");
  cv::imwrite((dir_ / "a.png").string(), gradient(8, 8, CV_8UC3));
  cv::imwrite((dir_ / "sub" / "b.png").string(), gradient(8, 8, CV_8UC3));
  fs::create_symlink("loop_b", dir_ / "loop_a");
  fs::create_symlink("loop_a", dir_ / "loop_b");
  fs::create_symlink("nowhere.png", dir_ / "gone.png");
  fs::create_symlink("nowhere", dir_ / "gone");  // no image's name: not worth a word
  fs::create_symlink("..", dir_ / "sub" / "up");
  fs::create_symlink(fs::path("..") / "a.png", dir_ / "sub" / "linked.png");
  // Hidden names are passed over without a word.
  fs::create_directories(dir_ / ".thumbnails");
  cv::imwrite((dir_ / ".thumbnails" / "c.png").string(), gradient(8, 8, CV_8UC3));
  cv::imwrite((dir_ / ".d.png").string(), gradient(8, 8, CV_8UC3));
  std::vector<std::string> skipped;
  const auto files =
      D::list_images(dir_, [&](const std::string& message) { skipped.push_back(message); });
  ASSERT_EQ(files.size(), 3U);
  EXPECT_EQ(files[0], dir_ / "a.png");
  EXPECT_EQ(files[1], dir_ / "sub" / "b.png");
  EXPECT_EQ(files[2], dir_ / "sub" / "linked.png");
  std::sort(skipped.begin(), skipped.end());
  ASSERT_EQ(skipped.size(), 4U) << ::testing::PrintToString(skipped);
  EXPECT_THAT(skipped[0], ::testing::StartsWith((dir_ / "gone.png").string() + ": "));
  EXPECT_THAT(skipped[1], ::testing::StartsWith((dir_ / "loop_a").string() + ": "));
  EXPECT_THAT(skipped[2], ::testing::StartsWith((dir_ / "loop_b").string() + ": "));
  EXPECT_EQ(skipped[3],
            (dir_ / "sub" / "up").string() + ": a link to a folder, not followed; skipped");
  for (const auto& message : skipped) EXPECT_THAT(message, ::testing::EndsWith("; skipped"));
  // Without a callback the same files, silently.
  EXPECT_EQ(D::list_images(dir_), files);
}

TEST_F(ImageFolderTest, CropsAreSquareRgbReproducibleAndFollowTheSizeRule) {
  cv::imwrite((dir_ / "wide.png").string(), gradient(60, 90, CV_8UC3));
  cv::imwrite((dir_ / "grey.png").string(), gradient(50, 40, CV_8UC1));
  cv::imwrite((dir_ / "tiny.png").string(), gradient(6, 6, CV_8UC3));
  const auto options = D::CropOptions().size(32);
  const auto first = D::crop_example(dir_ / "wide.png", options, true, 5);
  EXPECT_EQ(first.sizes(), (at::IntArrayRef{3, 32, 32}));
  EXPECT_TRUE(at::equal(first, D::crop_example(dir_ / "wide.png", options, true, 5)));
  EXPECT_FALSE(at::equal(first, D::crop_example(dir_ / "wide.png", options, true, 6)));
  const auto grey = D::crop_example(dir_ / "grey.png", options, false, 0);
  EXPECT_TRUE(at::equal(grey[0], grey[2]));  // grey repeated to RGB
  // 6 px is below a quarter of 32: skipped as too small. 10 px would be upscaled.
  EXPECT_THAT([&] { D::crop_example(dir_ / "tiny.png", options, true, 0); },
              ::testing::ThrowsMessage<pconv::InputError>(::testing::HasSubstr("too small")));
  cv::imwrite((dir_ / "small.png").string(), gradient(10, 12, CV_8UC3));
  EXPECT_EQ(D::crop_example(dir_ / "small.png", options, true, 1).sizes(),
            (at::IntArrayRef{3, 32, 32}));
}

TEST_F(ImageFolderTest, StreamIsTheSameForAnyWorkerCountAndWhenResumed) {
  for (int i = 0; i < 5; ++i) {
    cv::imwrite((dir_ / ("photo" + std::to_string(i) + ".png")).string(),
                gradient(40 + 3 * i, 48, CV_8UC3));
  }
  std::ofstream(dir_ / "photo9.jpg") << "corrupt";
  const auto files = D::list_images(dir_);
  ASSERT_EQ(files.size(), 6U);
  const auto crop = D::CropOptions().size(16);
  const D::MaskGenerator generator(D::MaskGeneratorOptions(16, 16).min_ratio(0.1).max_ratio(0.3),
                                   42);
  const D::MaskSource masks = [&](uint64_t index) { return generator.mask(index); };

  std::vector<std::string> warnings;
  D::TrainingStream serial(files, crop, masks, 3, 42, 0);
  serial.set_warning_hook([&](const std::string& message) { warnings.push_back(message); });
  std::vector<D::Batch> expected;
  for (int step = 0; step < 6; ++step) expected.push_back(serial.next());
  EXPECT_EQ(expected[0].images.sizes(), (at::IntArrayRef{3, 3, 16, 16}));
  EXPECT_EQ(expected[0].masks.sizes(), (at::IntArrayRef{3, 1, 16, 16}));
  ASSERT_EQ(warnings.size(), 1U);  // the corrupt file, reported once over three epochs
  EXPECT_THAT(warnings[0], ::testing::HasSubstr("photo9.jpg"));
  EXPECT_EQ(serial.skipped().size(), 1U);

  D::TrainingStream threaded(files, crop, masks, 3, 42, 2);
  // A hook set a while after the stream is made still hears of the corrupt file: the workers
  // start with the first batch.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  std::vector<std::string> threaded_warnings;
  threaded.set_warning_hook(
      [&](const std::string& message) { threaded_warnings.push_back(message); });
  for (int step = 0; step < 6; ++step) {
    const auto batch = threaded.next();
    EXPECT_TRUE(at::equal(batch.images, expected[step].images)) << "step " << step;
    EXPECT_TRUE(at::equal(batch.masks, expected[step].masks)) << "step " << step;
  }
  EXPECT_EQ(threaded_warnings.size(), 1U);
  D::TrainingStream resumed(files, crop, masks, 3, 42, 2, /*first_example=*/12);
  EXPECT_TRUE(at::equal(resumed.next().images, expected[4].images));
  EXPECT_TRUE(at::equal(resumed.next().images, expected[5].images));

  // Two shards (data-parallel ranks) take turns through the same examples, from the start and
  // from a resumed run's count; a resume with another number of shards neither skips nor
  // repeats one.
  for (const int64_t first : {0, 6}) {
    D::TrainingStream shard0(files, crop, masks, 3, 42, 1, first, /*shard=*/0, /*shards=*/2);
    D::TrainingStream shard1(files, crop, masks, 3, 42, 0, first, /*shard=*/1, /*shards=*/2);
    for (size_t global = static_cast<size_t>(first / 3); global + 1 < expected.size();
         global += 2) {
      const auto part0 = shard0.next();
      const auto part1 = shard1.next();
      EXPECT_TRUE(at::equal(part0.images, expected[global].images)) << first << " " << global;
      EXPECT_TRUE(at::equal(part0.masks, expected[global].masks)) << first << " " << global;
      EXPECT_TRUE(at::equal(part1.images, expected[global + 1].images)) << first << " " << global;
      EXPECT_TRUE(at::equal(part1.masks, expected[global + 1].masks)) << first << " " << global;
    }
  }
  D::TrainingStream after_two_shards(files, crop, masks, 3, 42, 0, /*first_example=*/9);
  EXPECT_TRUE(at::equal(after_two_shards.next().images, expected[3].images));
  D::TrainingStream other_seed(files, crop, masks, 3, 43, 0);
  EXPECT_FALSE(at::equal(other_seed.next().images, expected[0].images));
}

TEST_F(ImageFolderTest, MaskFolderGivesAugmentedBinaryMasksReproducibly) {
  // Two 40x48 mask files, white = hole: a left band and a centre block.
  std::vector<uint8_t> band(40 * 48, 0);
  std::vector<uint8_t> block(40 * 48, 0);
  for (int y = 0; y < 40; ++y) {
    for (int x = 0; x < 48; ++x) {
      band[y * 48 + x] = x < 12 ? 1 : 0;
      block[y * 48 + x] = (y >= 10 && y < 30 && x >= 14 && x < 34) ? 1 : 0;
    }
  }
  fs::create_directories(dir_ / "masks");
  pconv::io::write_mask(dir_ / "masks" / "band.png", band, 40, 48);
  pconv::io::write_mask(dir_ / "masks" / "block.png", block, 40, 48);
  const D::MaskFolder folder(dir_ / "masks", D::MaskFolderOptions().size(64), 5);
  EXPECT_EQ(folder.size(), 2U);
  for (uint64_t index = 0; index < 6; ++index) {
    const auto mask = folder.mask(index);
    ASSERT_EQ(mask.sizes(), (at::IntArrayRef{1, 64, 64}));
    EXPECT_TRUE(((mask == 0) | (mask == 1)).all().item<bool>());  // 0 or 1 only
    EXPECT_GT((mask == 0).sum().item<int64_t>(), 0);  // some hole survives any augmentation
    EXPECT_TRUE(at::equal(mask, folder.mask(index)));
  }
  // Augmented: one file gives masks that differ from index to index (flips alone would give
  // at most 4 different ones; rotation, dilation and the crop make nearly every one new).
  fs::create_directories(dir_ / "one_mask");
  pconv::io::write_mask(dir_ / "one_mask" / "block.png", block, 40, 48);
  const D::MaskFolder one(dir_ / "one_mask", D::MaskFolderOptions().size(64), 5);
  std::vector<at::Tensor> distinct;
  for (uint64_t index = 0; index < 8; ++index) {
    const auto mask = one.mask(index);
    if (std::none_of(distinct.begin(), distinct.end(),
                     [&](const at::Tensor& seen) { return at::equal(seen, mask); })) {
      distinct.push_back(mask);
    }
  }
  EXPECT_GE(distinct.size(), 6U);
  EXPECT_THAT([&] { D::MaskFolder(dir_ / "sub", {}, 0); },
              ::testing::ThrowsMessage<pconv::InputError>(::testing::HasSubstr("no images")));

  // A mask file that cannot be read is passed over, reported once; the photos are not blamed.
  std::ofstream(dir_ / "masks" / "broken.png") << "not a png";
  D::MaskFolder with_broken(dir_ / "masks", D::MaskFolderOptions().size(64), 5);
  std::vector<std::string> warnings;
  with_broken.set_warning_hook([&](const std::string& text) { warnings.push_back(text); });
  for (uint64_t index = 0; index < 12; ++index) {
    const auto mask = with_broken.mask(index);
    EXPECT_GT((mask == 0).sum().item<int64_t>(), 0);
    EXPECT_TRUE(at::equal(mask, with_broken.mask(index)));  // reproducible after the skip too
  }
  ASSERT_EQ(warnings.size(), 1U);
  EXPECT_THAT(warnings[0], ::testing::HasSubstr("broken.png: cannot read the image"));
  // Only unreadable files: an error naming the folder.
  fs::create_directories(dir_ / "broken_masks");
  std::ofstream(dir_ / "broken_masks" / "a.png") << "not a png";
  EXPECT_THAT([&] { D::MaskFolder(dir_ / "broken_masks", {}, 0).mask(0); },
              ::testing::ThrowsMessage<pconv::InputError>(
                  ::testing::HasSubstr("broken_masks: none of its 1 mask images can be read")));
}

// read_image can scale a large image down as it reads it (training crops of camera photos):
// to the asked shorter side, the aspect kept, 8-bit PNG and tensor image alike.
TEST_F(ImageFolderTest, ReadImageShrinksLargeImages) {
  const auto picture = at::rand({3, 300, 400});
  pconv::io::write_image(dir_ / "large.png", picture);
  pconv::io::write_image(dir_ / "large.pt", picture);
  for (const char* name : {"large.png", "large.pt"}) {
    EXPECT_EQ(pconv::io::read_image(dir_ / name, 100).pixels.sizes(),
              (at::IntArrayRef{3, 100, 133}))
        << name;
    EXPECT_EQ(pconv::io::read_image(dir_ / name, 300).pixels.sizes(),
              (at::IntArrayRef{3, 300, 400}))
        << name;
    EXPECT_EQ(pconv::io::read_image(dir_ / name).pixels.sizes(), (at::IntArrayRef{3, 300, 400}))
        << name;
  }
  // Area averaging: a mean level is kept.
  const auto small = pconv::io::read_image(dir_ / "large.png", 100).pixels;
  EXPECT_NEAR(small.mean().item<double>(), picture.mean().item<double>(), 0.01);
}

// A JPEG wanted at a fraction of its size is decoded smaller by libjpeg (1/2, 1/4, 1/8, where
// that divides its sides) and then area-averaged: the size a whole decode would give, about
// the same pixels (not stretched by a partial last block), grey stays grey, EXIF still turns
// it, and the pixel limit holds for the stored size.
TEST_F(ImageFolderTest, ReadImageShrinksLargeJpegsAsTheyDecode) {
  const auto smooth = [](int height, int width) {
    cv::Mat image(height, width, CV_8UC3);
    for (int y = 0; y < height; ++y) {
      for (int x = 0; x < width; ++x) {
        for (int c = 0; c < 3; ++c) {
          image.ptr<uint8_t>(y)[x * 3 + c] = cv::saturate_cast<uint8_t>(
              128.0 + 90.0 * std::sin(x / (25.0 + 10.0 * c)) * std::cos(y / 33.0));
        }
      }
    }
    return image;
  };
  // 512x704 divides by 8: shorter sides of 60, 100 and 200 decode at 1/8, 1/4 and 1/2, 300
  // whole. 500x700 divides by 4 only, 501x701 by nothing.
  for (const auto& [height, width] : {std::pair{512, 704}, {500, 700}, {501, 701}}) {
    const auto file = dir_ / ("smooth" + std::to_string(height) + ".jpg");
    cv::imwrite(file.string(), smooth(height, width), {cv::IMWRITE_JPEG_QUALITY, 95});
    const auto whole = pconv::io::read_image(file).pixels;
    ASSERT_EQ(whole.sizes(), (at::IntArrayRef{3, height, width}));
    for (const int64_t shorter : {60, 100, 200, 300}) {
      const auto small = pconv::io::read_image(file, shorter).pixels;
      const int64_t expected_width =
          std::lround(static_cast<double>(width * shorter) / static_cast<double>(height));
      ASSERT_EQ(small.sizes(), (at::IntArrayRef{3, shorter, expected_width}))
          << file << " " << shorter;
      const auto expected =
          at::adaptive_avg_pool2d(whole.unsqueeze(0), {small.size(1), small.size(2)}).squeeze(0);
      EXPECT_LT((small - expected).abs().mean().item<double>(), 1.0 / 255.0)
          << file << " " << shorter;
    }
  }
  const auto smooth_image = smooth(512, 704);
  const auto file = dir_ / "smooth512.jpg";
  cv::Mat grey;
  cv::cvtColor(smooth_image, grey, cv::COLOR_BGR2GRAY);
  cv::imwrite((dir_ / "grey.jpg").string(), grey);
  EXPECT_EQ(pconv::io::read_image(dir_ / "grey.jpg", 60).pixels.sizes(),
            (at::IntArrayRef{1, 60, 83}));
  // Turned a quarter by its EXIF orientation (as in JpegExifOrientationIsApplied): 704 rows.
  write_turned_jpeg(dir_ / "turned.jpg", smooth_image);
  EXPECT_EQ(pconv::io::read_image(dir_ / "turned.jpg", 60).pixels.sizes(),
            (at::IntArrayRef{3, 83, 60}));
#ifdef PCONV_WITH_JPEG
  // It is libjpeg's eighth that is scaled: exactly OpenCV's reduced decode, area-averaged.
  cv::Mat eighth = cv::imread(file.string(), cv::IMREAD_REDUCED_COLOR_8);
  ASSERT_EQ(eighth.rows, 64);
  cv::resize(eighth, eighth, cv::Size(83, 60), 0, 0, cv::INTER_AREA);
  cv::cvtColor(eighth, eighth, cv::COLOR_BGR2RGB);
  const auto reduced = at::from_blob(eighth.data, {60, 83, 3}, at::kByte)
                           .permute({2, 0, 1})
                           .to(at::kFloat)
                           .div(255.0);
  EXPECT_LT((pconv::io::read_image(file, 60).pixels - reduced).abs().max().item<double>(), 1e-6);
#endif
  // The limit is on the stored size, not on the smaller decode.
  const int64_t before = pconv::io::max_image_pixels();
  pconv::io::set_max_image_pixels(512 * 704 - 1);
  EXPECT_THAT([&] { pconv::io::read_image(file, 60); },
              ::testing::ThrowsMessage<pconv::InputError>(
                  ::testing::HasSubstr("smooth512.jpg: 704x512 is more pixels than")));
  pconv::io::set_max_image_pixels(before);
}

// The share of the larger of the hole's two principal spreads over the smaller (1 for a disk):
// (the eigenvalues of the covariance of the hole pixels' coordinates).
double spread_ratio(const at::Tensor& holes) {
  const auto where = at::nonzero(holes).to(at::kDouble);  // (n, 2): y, x
  const auto centred = where - where.mean(0, true);
  const auto covariance = centred.t().mm(centred) / static_cast<double>(where.size(0));
  const double a = covariance[0][0].item<double>();
  const double b = covariance[1][1].item<double>();
  const double c = covariance[0][1].item<double>();
  const double root = std::sqrt((a - b) * (a - b) / 4 + c * c);
  return ((a + b) / 2 + root) / ((a + b) / 2 - root);
}

// A mask of another shape than square is rotated, not sheared: a disk stays a disk (with the
// rotation written for a square, a 2:1 mask's disk came out a tilted ellipse). A larger mask is
// scaled down to about the crop, so that the crop sees about the whole mask; a mask is
// thresholded as pconv inpaint reads one (the brightest colour channel), in either convention.
TEST_F(ImageFolderTest, MaskFolderRotatesScalesAndThresholdsAsInpaintDoes) {
  const int64_t height = 48;
  const int64_t width = 96;
  std::vector<uint8_t> disk(height * width, 0);
  for (int64_t y = 0; y < height; ++y) {
    for (int64_t x = 0; x < width; ++x) {
      const double dy = static_cast<double>(y) - 23.5;
      const double dx = static_cast<double>(x) - 47.5;
      disk[y * width + x] = dx * dx + dy * dy <= 9.0 * 9.0 ? 1 : 0;
    }
  }
  fs::create_directories(dir_ / "disk");
  pconv::io::write_mask(dir_ / "disk" / "disk.png", disk, height, width);
  const D::MaskFolder rotated(dir_ / "disk", D::MaskFolderOptions().size(48).max_dilation(0), 3);
  int whole = 0;
  for (uint64_t index = 0; index < 24; ++index) {
    const auto holes = rotated.mask(index)[0].eq(0);
    // Only disks the crop did not cut.
    if (holes.select(0, 0).any().item<bool>() || holes.select(0, 47).any().item<bool>() ||
        holes.select(1, 0).any().item<bool>() || holes.select(1, 47).any().item<bool>()) {
      continue;
    }
    ++whole;
    EXPECT_LT(spread_ratio(holes), 1.3) << "mask " << index;
  }
  EXPECT_GE(whole, 8);

  // A 256x256 mask whose centre quarter is hole, at crops of 64: about a quarter of every crop
  // is hole (cropped at its own size, most crops were all hole or had none).
  std::vector<uint8_t> centre(256 * 256, 0);
  for (int64_t y = 64; y < 192; ++y) {
    for (int64_t x = 64; x < 192; ++x) centre[y * 256 + x] = 1;
  }
  fs::create_directories(dir_ / "large");
  pconv::io::write_mask(dir_ / "large" / "centre.png", centre, 256, 256);
  const D::MaskFolder scaled(dir_ / "large",
                             D::MaskFolderOptions().size(64).max_dilation(0).max_rotation(0), 3);
  for (uint64_t index = 0; index < 12; ++index) {
    const double ratio = scaled.mask(index).eq(0).to(at::kDouble).mean().item<double>();
    EXPECT_GT(ratio, 0.12) << "mask " << index;
    EXPECT_LT(ratio, 0.45) << "mask " << index;
  }

  // A 1-pixel scratch in a 256x256 mask survives the scaling down to crops of 64.
  std::vector<uint8_t> scratch(256 * 256, 0);
  for (int64_t x = 0; x < 256; ++x) scratch[128 * 256 + x] = 1;
  fs::create_directories(dir_ / "scratch");
  pconv::io::write_mask(dir_ / "scratch" / "scratch.png", scratch, 256, 256);
  const D::MaskFolder thin(dir_ / "scratch",
                           D::MaskFolderOptions().size(64).max_dilation(0).max_rotation(0), 3);
  for (uint64_t index = 0; index < 6; ++index) {
    EXPECT_GT(thin.mask(index).eq(0).sum().item<int64_t>(), 0) << "mask " << index;
  }

  // Green strokes are holes (brightest channel at least half), as for pconv inpaint; with
  // white = valid the same file's holes are the rest.
  fs::create_directories(dir_ / "green");
  auto green = at::zeros({3, 64, 64});
  green[1].narrow(1, 0, 16).fill_(1.0);  // a band 16 pixels wide on the left
  pconv::io::write_image(dir_ / "green" / "green.png", green);
  const auto options = D::MaskFolderOptions().size(64).max_dilation(0).max_rotation(0);
  const D::MaskFolder hole(dir_ / "green", options, 3);
  const D::MaskFolder valid(
      dir_ / "green",
      D::MaskFolderOptions(options).convention(pconv::io::MaskConvention::kWhiteIsValid), 3);
  const double hole_ratio = hole.mask(0).eq(0).to(at::kDouble).mean().item<double>();
  EXPECT_GT(hole_ratio, 0.15);
  EXPECT_LT(hole_ratio, 0.35);
  const double inverted = valid.mask(0).eq(0).to(at::kDouble).mean().item<double>();
  EXPECT_GT(inverted, 0.65);
  EXPECT_LT(inverted, 0.85);
  // The survey sees the same: the inverted reading is mostly hole.
  EXPECT_NEAR(hole.survey(8).mean_hole_ratio, 0.25, 1e-9);
  EXPECT_NEAR(valid.survey(8).mean_hole_ratio, 0.75, 1e-9);
  EXPECT_EQ(valid.survey(8).files_read, 1U);
}

}  // namespace
