// The pconv inpaint and eval commands, run as a user runs them: fixtures written here (8- and
// 16-bit, grey, RGB, RGBA, odd sizes, a corrupt file), the shipped default model, exit codes,
// outputs read back (known pixels must be bit-exact), batch mode with a bad file in the middle.
#include "temp_dir.h"

#include <pconv/data/mask_generator.h>
#include <pconv/io/folder_lock.h>
#include <pconv/io/image_file.h>
#include <pconv/io/model_file.h>
#include <pconv/train/distributed.h>

#include <ATen/ATen.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <sys/stat.h>

#include <sys/wait.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using pconv::testing::TempDir;

struct Result {
  int rc = -1;
  std::string output;
};

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Runs a shell command line, its output to a log in `dir`.
Result shell(const fs::path& dir, const std::string& command_line) {
  const auto log = dir / "pconv.log";
  const std::string command = command_line + " > " + log.string() + " 2>&1";
  const int status = std::system(command.c_str());
  Result result;
  result.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  result.output = read_text(log);
  return result;
}

// A shell snippet: `command` in the background, SIGINT to it once `ready` (a shell test, polled
// every 0.05 s for at most a minute) holds, then its exit status.
std::string interrupt_once(const std::string& command, const std::string& ready) {
  return command + " & job=$!; n=0; until " + ready +
         " || [ $n -ge 1200 ]; do sleep 0.05; n=$((n + 1)); done; kill -INT $job; wait $job";
}

Result pconv(const fs::path& dir, const std::string& args) {
  return shell(dir, std::string(PCONV_BINARY) + " " + args);
}

// How often `part` occurs in `text`.
int count(const std::string& text, const std::string& part) {
  int found = 0;
  for (auto at = text.find(part); at != std::string::npos; at = text.find(part, at + part.size())) {
    ++found;
  }
  return found;
}

// A smooth picture (so that the model has something sensible to fill) with noise.
at::Tensor picture(int64_t channels, int64_t height, int64_t width) {
  const auto y = at::linspace(0, 1, height).view({1, height, 1});
  const auto x = at::linspace(0, 1, width).view({1, 1, width});
  auto base = (0.3 + 0.4 * y * x + 0.2 * at::sin(6 * x)).expand({channels, height, width});
  return (base + 0.05 * at::rand({channels, height, width})).clamp(0, 1).contiguous();
}

// Holes as a (H, W) bool tensor with a rectangle set.
at::Tensor rectangle_holes(int64_t height, int64_t width) {
  auto holes = at::zeros({height, width}, at::kBool);
  holes.narrow(0, height / 4, height / 3).narrow(1, width / 5, width / 3).fill_(true);
  return holes;
}

void write_holes(const fs::path& path, const at::Tensor& holes) {
  const auto bytes = holes.to(at::kByte).contiguous();
  pconv::io::write_mask(
      path,
      std::vector<uint8_t>(bytes.data_ptr<uint8_t>(), bytes.data_ptr<uint8_t>() + bytes.numel()),
      holes.size(0), holes.size(1));
}

// Samples of a file as integers, (C, H, W).
at::Tensor samples(const fs::path& path) {
  const auto image = pconv::io::read_image(path);
  const double scale = image.bit_depth == 16 ? 65535.0 : 255.0;
  return (image.pixels.to(at::kDouble) * scale).round().to(at::kInt);
}

void expect_known_pixels_kept(const fs::path& input, const fs::path& output,
                              const at::Tensor& holes) {
  const auto before = samples(input);
  const auto after = samples(output);
  ASSERT_EQ(before.sizes(), after.sizes());
  const auto known = holes.logical_not().unsqueeze(0).expand_as(before);
  EXPECT_TRUE(at::equal(before.masked_select(known), after.masked_select(known)));
  EXPECT_FALSE(at::equal(before.masked_select(known.logical_not()),
                         after.masked_select(known.logical_not())));
}

TEST(InpaintCli, RgbWithOddSizeKeepsKnownPixelsAndWritesComparePicture) {
  TempDir dir;
  const auto holes = rectangle_holes(37, 50);
  pconv::io::write_image(dir.path() / "photo.png", picture(3, 37, 50));
  write_holes(dir.path() / "mask.png", holes);
  const auto run = pconv(dir.path(), "inpaint " + (dir.path() / "photo.png").string() + " " +
                                         (dir.path() / "mask.png").string() + " --compare " +
                                         (dir.path() / "cmp.png").string());
  ASSERT_EQ(run.rc, 0) << run.output;
  const auto out = dir.path() / "photo.inpainted.png";
  EXPECT_NE(run.output.find(out.string()), std::string::npos) << run.output;
  expect_known_pixels_kept(dir.path() / "photo.png", out, holes);
  const auto compare = samples(dir.path() / "cmp.png");
  ASSERT_EQ(compare.size(1), 37);
  ASSERT_EQ(compare.size(2), 3 * 50 + 8);
  // Three panels 4 pixels apart: the photo with its holes white | the result | the mask.
  const auto panel = [&](int index) { return compare.narrow(2, index * 54, 50); };
  const auto hole_pixels = holes.unsqueeze(0).expand({3, 37, 50});
  const auto white = at::full({3, 37, 50}, 255, at::kInt);
  EXPECT_TRUE(
      at::equal(panel(0), at::where(hole_pixels, white, samples(dir.path() / "photo.png"))));
  EXPECT_TRUE(at::equal(panel(1), samples(out)));
  EXPECT_TRUE(at::equal(panel(2), at::where(hole_pixels, white, at::zeros_like(white))));
}

TEST(InpaintCli, SixteenBitGreyStaysSixteenBitGrey) {
  TempDir dir;
  const auto holes = rectangle_holes(40, 33);
  pconv::io::write_image(dir.path() / "grey.png", picture(1, 40, 33), 16);
  write_holes(dir.path() / "mask.png", holes);
  const auto out = dir.path() / "out.png";
  const auto run =
      pconv(dir.path(), "inpaint " + (dir.path() / "grey.png").string() + " " +
                            (dir.path() / "mask.png").string() + " -o " + out.string());
  ASSERT_EQ(run.rc, 0) << run.output;
  const auto image = pconv::io::read_image(out);
  EXPECT_EQ(image.bit_depth, 16);
  EXPECT_EQ(image.pixels.size(0), 1);
  expect_known_pixels_kept(dir.path() / "grey.png", out, holes);
}

TEST(InpaintCli, RgbaWithoutMaskFillsTheTransparentPixels) {
  TempDir dir;
  const auto holes = rectangle_holes(30, 40);
  auto rgba = picture(4, 30, 40);
  rgba[3].fill_(1.0);
  rgba[3].masked_fill_(holes, 0.0);
  pconv::io::write_image(dir.path() / "cut.png", rgba);
  const auto out = dir.path() / "filled.png";
  const auto run =
      pconv(dir.path(), "inpaint " + (dir.path() / "cut.png").string() + " -o " + out.string());
  ASSERT_EQ(run.rc, 0) << run.output;
  const auto result = pconv::io::read_image(out).pixels;
  ASSERT_EQ(result.size(0), 4);
  EXPECT_EQ(result[3].min().item<float>(), 1.0F);  // the holes are filled, so opaque
  const auto before = samples(dir.path() / "cut.png").narrow(0, 0, 3);
  const auto after = samples(out).narrow(0, 0, 3);
  const auto known = holes.logical_not().unsqueeze(0).expand_as(before);
  EXPECT_TRUE(at::equal(before.masked_select(known), after.masked_select(known)));
  // An RGB image without a mask is a clear input error.
  pconv::io::write_image(dir.path() / "rgb.png", picture(3, 8, 8));
  const auto no_mask = pconv(dir.path(), "inpaint " + (dir.path() / "rgb.png").string());
  EXPECT_EQ(no_mask.rc, 3) << no_mask.output;
  EXPECT_NE(no_mask.output.find("no mask given"), std::string::npos) << no_mask.output;
}

TEST(InpaintCli, WhiteValidConventionAndThresholdRule) {
  TempDir dir;
  pconv::io::write_image(dir.path() / "photo.png", picture(3, 24, 24));
  // Grey levels 127 and 128 of 255 straddle the threshold: 128 is white, 127 black.
  auto mask = at::full({1, 24, 24}, 127.0 / 255.0);
  mask.narrow(1, 4, 8).narrow(2, 4, 8).fill_(128.0 / 255.0);
  pconv::io::write_image(dir.path() / "mask.png", mask);
  const auto hole_white = dir.path() / "a.png";
  ASSERT_EQ(pconv(dir.path(), "inpaint " + (dir.path() / "photo.png").string() + " " +
                                  (dir.path() / "mask.png").string() + " -o " + hole_white.string())
                .rc,
            0);
  auto square = at::zeros({24, 24}, at::kBool);
  square.narrow(0, 4, 8).narrow(1, 4, 8).fill_(true);
  expect_known_pixels_kept(dir.path() / "photo.png", hole_white, square);
  // The paper's convention: white = valid, so everything but the square is the hole.
  const auto valid_white = dir.path() / "b.png";
  ASSERT_EQ(pconv(dir.path(), "inpaint " + (dir.path() / "photo.png").string() + " " +
                                  (dir.path() / "mask.png").string() + " --white-valid -o " +
                                  valid_white.string())
                .rc,
            0);
  expect_known_pixels_kept(dir.path() / "photo.png", valid_white, square.logical_not());
}

TEST(InpaintCli, EveryStrategyRuns) {
  TempDir dir;
  const auto holes = rectangle_holes(60, 300);
  pconv::io::write_image(dir.path() / "wide.png", picture(3, 60, 300));
  write_holes(dir.path() / "mask.png", holes);
  for (const std::string strategy : {"full", "crop", "resize", "auto"}) {
    SCOPED_TRACE(strategy);
    const auto out = dir.path() / (strategy + ".png");
    const auto run =
        pconv(dir.path(), "inpaint " + (dir.path() / "wide.png").string() + " " +
                              (dir.path() / "mask.png").string() + " --strategy " + strategy +
                              " --resize-side 128 --margin 8 -o " + out.string());
    ASSERT_EQ(run.rc, 0) << run.output;
    EXPECT_NE(run.output.find(strategy == "auto" ? "full strategy" : strategy + " strategy"),
              std::string::npos)
        << run.output;
    expect_known_pixels_kept(dir.path() / "wide.png", out, holes);
  }
}

TEST(InpaintCli, PrecisionsAndLayoutsKeepKnownPixels) {
  TempDir dir;
  const auto holes = rectangle_holes(60, 80);
  pconv::io::write_image(dir.path() / "photo.png", picture(3, 60, 80));
  write_holes(dir.path() / "mask.png", holes);
  const auto reference = dir.path() / "fp32.png";
  ASSERT_EQ(pconv(dir.path(), "inpaint " + (dir.path() / "photo.png").string() + " " +
                                  (dir.path() / "mask.png").string() + " -o " + reference.string())
                .rc,
            0);
  // The holes' fill against float32's with the fused kernels (channels-last, the CPU's default),
  // in 8-bit levels: the mean and the largest difference allowed. bf16 keeps 8 significant bits
  // (measured: mean 0.33, max 2); the others differ from it by float rounding only (measured:
  // identical).
  // How the network ran, as -v logs it ("on cpu, <precision>, <layout>").
  struct Variant {
    std::string flags;
    double mean_levels, max_levels;
    std::string network;
  };
  for (const Variant& variant :
       {Variant{"--precision bf16", 1.0, 6.0, "cpu, bf16, channels-last"},
        Variant{"--nchw", 0.05, 1.0, "cpu, fp32, nchw"},
        Variant{"--reference-kernels", 0.05, 1.0, "cpu, fp32, channels-last"}}) {
    SCOPED_TRACE(variant.flags);
    const auto out = dir.path() / "out.png";
    const auto run = pconv(dir.path(), "-v inpaint " + (dir.path() / "photo.png").string() + " " +
                                           (dir.path() / "mask.png").string() + " " +
                                           variant.flags + " -o " + out.string());
    ASSERT_EQ(run.rc, 0) << run.output;
    EXPECT_NE(run.output.find(variant.network), std::string::npos) << run.output;
    if (variant.flags == "--reference-kernels") {
      EXPECT_NE(run.output.find("reference kernels"), std::string::npos) << run.output;
    }
    expect_known_pixels_kept(dir.path() / "photo.png", out, holes);
    const auto in_holes = holes.unsqueeze(0).expand({3, 60, 80});
    const auto levels =
        (samples(out) - samples(reference)).abs().masked_select(in_holes).to(at::kDouble);
    EXPECT_LE(levels.mean().item<double>(), variant.mean_levels);
    EXPECT_LE(levels.max().item<double>(), variant.max_levels);
  }
}

TEST(InpaintCli, BadInputsAreOneLineErrorsWithTheirExitCodes) {
  TempDir dir;
  const auto& d = dir.path();
  pconv::io::write_image(d / "photo.png", picture(3, 20, 20));
  write_holes(d / "mask.png", rectangle_holes(20, 20));
  write_holes(d / "small_mask.png", rectangle_holes(10, 10));
  write_holes(d / "none.png", at::zeros({20, 20}, at::kBool));
  write_holes(d / "all.png", at::ones({20, 20}, at::kBool));
  std::ofstream(d / "corrupt.png") << "not a png at all";
  {
    // A PNG cut in half: libpng itself fails, and says why.
    std::ifstream in(d / "photo.png", std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream out(d / "half.png", std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size() / 2));
  }
  std::ofstream(d / "empty.png").close();
  ASSERT_EQ(mkfifo((d / "fifo.png").c_str(), 0600), 0);
  std::ofstream(d / "bad\nname.png") << "a file name with a line break";
  fs::create_directories(d / "links");
  fs::create_symlink("loop_b", d / "links" / "loop_a");
  fs::create_symlink("loop_a", d / "links" / "loop_b");
  fs::create_directories(d / "batch_in");  // images only: a mask in --input is refused
  fs::copy_file(d / "photo.png", d / "batch_in" / "photo.png");
  const auto model = fs::path(PCONV_DEFAULT_MODEL);
  {
    std::ifstream in(model, std::ios::binary);
    std::ofstream out(d / "truncated.pt", std::ios::binary);
    std::vector<char> half(fs::file_size(model) / 2);
    in.read(half.data(), static_cast<std::streamsize>(half.size()));
    out.write(half.data(), static_cast<std::streamsize>(half.size()));
  }
  const std::string photo = (d / "photo.png").string();
  struct Case {
    std::string args;
    int rc;
    std::string message;
  };
  const Case cases[] = {
      {"inpaint " + (d / "corrupt.png").string() + " " + (d / "mask.png").string(), 3,
       "corrupt.png: cannot read the image"},
      {"inpaint " + (d / "half.png").string() + " " + (d / "mask.png").string(), 3,
       "half.png: cannot read the image (corrupt or not an image: libpng error"},
      {"inpaint " + d.string() + " " + (d / "mask.png").string(), 3,
       ": is a folder, not an image file"},
      {"inpaint " + (d / "empty.png").string() + " " + (d / "mask.png").string(), 3,
       "empty.png: is empty"},
      {"inpaint " + photo + " " + (d / "mask.png").string() + " -o " + (d / "links").string(), 2,
       "-o: '" + (d / "links").string() + "' is a folder; give the file to write"},
      {"inpaint --input " + (d / "links").string() + "/.. --masks " + d.string() + " -o " +
           d.string() + "_batch_out",
       2, "' overlap; keep the masks in a folder of their own"},
      {"inpaint --input " + d.string() + " --masks " + (d / "mask.png").string() + " -o " +
           d.string() + "_batch_out",
       2,
       "mask.png' is in --input '" + d.string() +
           "', where it would be inpainted as an image; keep the mask out of that folder"},
      {"inpaint " + photo + " " + (d / "links" / "loop_a").string(), 3,
       "loop_a: Too many levels of symbolic links"},
      {"inpaint " + photo + " " + (d / "mask.png").string() + " --model " +
           (d / "links" / "loop_a").string(),
       4, "loop_a: Too many levels of symbolic links"},
      {"inpaint --input " + (d / "sub_none").string() + " --masks " +
           (d / "links" / "loop_a").string() + " -o " + (d / "batch_out").string(),
       3, "--input " + (d / "sub_none").string() + ": no such folder"},
      // A folder that is not there is named with its option.
      {"train --data " + (d / "batch_in").string() + " --val " + (d / "no_val").string() + " -o " +
           (d / "run").string(),
       3, "--val " + (d / "no_val").string() + ": no such folder"},
      {"eval --data " + photo + " -o " + (d / "reports").string(), 3,
       "--data " + photo + ": is a file, not a folder"},
      {"inpaint --input " + (d / "links").string() + "/.. --masks " +
           (d / "links" / "loop_a").string() + " -o " + d.string() + "_batch_out",
       3, "loop_a: Too many levels of symbolic links"},
      // The one mask of every image is read before any image.
      {"inpaint --input " + (d / "batch_in").string() + " --masks " + (d / "corrupt.png").string() +
           " -o " + d.string() + "_batch_out",
       3, "corrupt.png: cannot read the image"},
      {"inpaint --input " + (d / "batch_in").string() + " --masks " + (d / "all.png").string() +
           " -o " + d.string() + "_batch_out",
       3, "all.png: every pixel is a hole; there is nothing to inpaint from in any image"},
      {"inpaint " + photo + " " + (d / "mask.png").string() + " --model " + d.string(), 4,
       ": is a folder, not a model file"},
      {"inpaint " + photo + " " + (d / "small_mask.png").string(), 3,
       "small_mask.png: mask is 10x10 but the image"},
      {"inpaint " + photo + " " + (d / "all.png").string() + " -o " + (d / "x.png").string(), 3,
       "all.png: every pixel is a hole"},
      {"inpaint " + photo + " " + (d / "mask.png").string() + " --model " +
           (d / "truncated.pt").string(),
       4, "truncated.pt"},
      {"inpaint " + photo + " " + (d / "mask.png").string() + " -o /proc/pconv-no/out.png", 3,
       "/proc/pconv-no/out.png"},
      {"inpaint " + photo + " " + (d / "mask.png").string() + " --strategy tile", 2, "--strategy"},
      {"inpaint " + photo + " " + (d / "mask.png").string() + " --half --device cpu", 2,
       "--half: fp16 needs a CUDA device"},
      {"inpaint " + photo + " " + (d / "mask.png").string() + " --precision fp16 --device cpu", 2,
       "--precision: fp16 needs a CUDA device"},
      {"inpaint " + photo + " " + (d / "mask.png").string() + " --precision fp8", 2, "--precision"},
      {"inpaint " + photo + " " + (d / "mask.png").string() + " --nchw --channels-last", 2,
       "--channels-last excludes --nchw"},
      {"inpaint --input " + (d / "batch_in").string() + " --masks " + (d / "mask.png").string() +
           " -o /proc/pconv-no/folder",
       3, "/proc/pconv-no/folder: cannot create the output folder"},
      // Never over an input: the image, the mask, the result as the side-by-side picture, the
      // input folder (the photo and masks in it are checked unchanged below).
      {"inpaint " + photo + " " + (d / "mask.png").string() + " -o " + photo, 2,
       "-o: '" + photo + "' is the same file as the image; choose another path"},
      {"inpaint " + photo + " " + (d / "mask.png").string() + " -o " +
           (d / "sub" / ".." / "mask.png").string(),
       2, "is the same file as the mask '" + (d / "mask.png").string() + "'"},
      {"inpaint " + photo + " " + (d / "mask.png").string() + " -o " + (d / "x.png").string() +
           " --compare " + (d / "x.png").string(),
       2, "--compare: '" + (d / "x.png").string() + "' is the same file as -o;"},
      {"inpaint --input " + d.string() + " --masks " + (d / "mask.png").string() + " -o " +
           d.string(),
       2, "would hold the results among the images of --input"},
      // Nor where a later run would take the results as inputs.
      {"inpaint --input " + d.string() + " --masks " + (d / "mask.png").string() + " -o " +
           (d / "filled").string(),
       2, "-o: '" + (d / "filled").string() + "' would hold the results among the images of"},
      {"inpaint --input " + (d / "links").string() + " --masks " + d.string() + " -o " +
           (d / "filled").string(),
       2, "would hold the results among the masks of --masks"},
      // A line break in a file name is written as \n: the error stays one line.
      {"inpaint '" + (d / "bad\nname.png").string() + "' " + (d / "mask.png").string(), 3,
       "bad\\nname.png: cannot read the image"},
      // A device or a pipe is not replaced by a file.
      {"inpaint " + photo + " " + (d / "mask.png").string() + " -o " + (d / "fifo.png").string(), 3,
       "fifo.png: is not a regular file"},
      // A side-by-side picture that cannot be written leaves no result behind.
      {"inpaint " + photo + " " + (d / "mask.png").string() + " -o " + (d / "x.png").string() +
           " --compare /proc/pconv-no/c.png",
       3, "/proc/pconv-no/c.png"},
      // A format pconv does not write is found before the network runs.
      {"inpaint " + photo + " " + (d / "mask.png").string() + " -o " + (d / "x.xyz").string(), 2,
       "-o: '" + (d / "x.xyz").string() + "': the extension names no image format"},
      {"inpaint " + photo + " " + (d / "mask.png").string() + " --compare " +
           (d / "c.xyz").string(),
       2, "--compare: '" + (d / "c.xyz").string() + "': the extension names no image format"},
      {"inpaint " + photo + " " + (d / "mask.png").string() + " -o " + (d / "noext").string(), 2,
       "-o: '" + (d / "noext").string() + "': no extension, so the name gives no image format"},
      // Mistakes in the command line, named (session xii: the same file as image and mask was
      // read as a mask; a folder had no hint; CLI11 listed unknown words in reverse).
      {"inpaint " + photo + " " + photo, 2, "MASK: '" + photo + "' is the image itself"},
      {"inpaint " + d.string() + " " + (d / "mask.png").string(), 3,
       d.string() + ": is a folder, not an image file (for a folder of images: --input DIR"},
      {"inpaint " + photo + " " + (d / "mask.png").string() + " --output " + (d / "x.png").string(),
       2, "unknown option '--output' for pconv inpaint (did you mean '--out'?)"},
      {"--threads 1 inpaint " + photo + " " + (d / "mask.png").string(), 2,
       "'--threads' is an option of pconv inpaint: give it after 'inpaint'"},
      {"inpaint " + photo + " " + (d / "mask.png").string() + " surplus", 2,
       "unexpected argument 'surplus' for pconv inpaint"},
      {"inpaint " + photo + " " + (d / "mask.png").string() + " -o=" + (d / "x.png").string(), 2,
       "--out: '=" + (d / "x.png").string() + "' begins with '=': for -o=FILE write -o FILE"},
      {"inpaint " + photo + " " + (d / "mask.png").string() + " -- --raw", 2,
       "unexpected argument '--raw' for pconv inpaint (after '--' it is not an option)"},
      // More threads than cores never helps, and where they cannot be made LibTorch's pool
      // waited for them forever.
      {"inpaint " + photo + " " + (d / "mask.png").string() + " --threads 100000", 2,
       "--threads: '100000' is not a whole number in [0 - "},
      // An output that cannot be written is found before the work (here before the image is
      // read): until session xii, after the network had run.
      {"inpaint " + (d / "absent.png").string() + " " + (d / "mask.png").string() +
           " -o /proc/pconv-no.png",
       3, "/proc/pconv-no.png: cannot write the file"},
  };
  const auto photo_before = samples(d / "photo.png");
  const auto mask_before = samples(d / "mask.png");
  for (const auto& c : cases) {
    SCOPED_TRACE(c.args);
    const auto run = pconv(d, c.args);
    EXPECT_EQ(run.rc, c.rc) << run.output;
    EXPECT_NE(run.output.find(c.message), std::string::npos) << run.output;
    EXPECT_EQ(run.output.find("terminate called"), std::string::npos);
    // One error line, and no line from anyone but pconv (libpng prints its own otherwise).
    std::istringstream lines(run.output);
    int errors = 0;
    for (std::string line; std::getline(lines, line);) {
      EXPECT_EQ(line.rfind("pconv: ", 0), 0U) << line;
      errors += line.rfind("pconv: error: ", 0) == 0 ? 1 : 0;
    }
    EXPECT_EQ(errors, 1) << run.output;
  }
  // A model file named by $PCONV_MODEL is said to come from there; a TorchScript export given
  // as the model is named as one.
  const std::string inpaint_photo =
      " inpaint " + photo + " " + (d / "mask.png").string() + " -o " + (d / "x.png").string();
  const auto from_environment =
      shell(d, "PCONV_MODEL=" + (d / "absent.pt").string() + " " + PCONV_BINARY + inpaint_photo);
  EXPECT_EQ(from_environment.rc, 4) << from_environment.output;
  EXPECT_NE(
      from_environment.output.find("absent.pt: no such model file (the model $PCONV_MODEL names)"),
      std::string::npos)
      << from_environment.output;
  ASSERT_EQ(pconv(d, "export " + model.string() + " -o " + (d / "m.ts").string()).rc, 0);
  const auto exported = pconv(d, inpaint_photo + " --model " + (d / "m.ts").string());
  EXPECT_EQ(exported.rc, 4) << exported.output;
  EXPECT_NE(exported.output.find("m.ts: a TorchScript export of a pconv model"), std::string::npos)
      << exported.output;
  EXPECT_FALSE(fs::exists(d / "x.png"));
  EXPECT_TRUE(fs::is_fifo(d / "fifo.png"));
  EXPECT_TRUE(at::equal(samples(d / "photo.png"), photo_before));
  EXPECT_TRUE(at::equal(samples(d / "mask.png"), mask_before));
  // The image given as the mask, the mask as the image: the "mask" is mostly grey, said so.
  const auto swapped = pconv(d, "inpaint " + (d / "mask.png").string() + " " + photo + " -o " +
                                    (d / "swapped.png").string());
  EXPECT_NE(swapped.output.find("photo.png: "), std::string::npos) << swapped.output;
  EXPECT_NE(swapped.output.find("of the mask is grey, neither near black nor near white: a photo "
                                "rather than a mask?"),
            std::string::npos)
      << swapped.output;
  EXPECT_EQ(pconv(d, inpaint_photo).output.find("of the mask is grey"), std::string::npos);
  // A mask of another size is scaled on request; a mask with no hole leaves the image as it is.
  EXPECT_EQ(pconv(d, "inpaint " + photo + " " + (d / "small_mask.png").string() +
                         " --resize-mask -o " + (d / "r.png").string())
                .rc,
            0);
  // Scaled down, a one-pixel scratch of the larger mask stays a hole (every photo pixel whose
  // area it crosses), where picking the nearest mask pixel would miss it.
  auto scratch = at::zeros({80, 80}, at::kBool);
  scratch[21].fill_(true);  // crosses photo row 5 (mask rows 20..23)
  write_holes(d / "scratch.png", scratch);
  const auto scratched = pconv(d, "inpaint " + photo + " " + (d / "scratch.png").string() +
                                      " --resize-mask -o " + (d / "s.png").string());
  EXPECT_EQ(scratched.rc, 0) << scratched.output;
  EXPECT_EQ(scratched.output.find("no hole pixel"), std::string::npos) << scratched.output;
  EXPECT_EQ(scratched.output.find("another shape"), std::string::npos) << scratched.output;
  // A mask of another shape is stretched, with a warning.
  write_holes(d / "wide_mask.png", rectangle_holes(10, 30));
  const auto stretched = pconv(d, "inpaint " + photo + " " + (d / "wide_mask.png").string() +
                                      " --resize-mask -o " + (d / "w.png").string());
  EXPECT_EQ(stretched.rc, 0) << stretched.output;
  EXPECT_NE(stretched.output.find("wide_mask.png: the mask (30x10) has another shape than the "
                                  "image"),
            std::string::npos)
      << stretched.output;
  const auto changed = (samples(d / "s.png") != samples(d / "photo.png")).any(0);
  EXPECT_TRUE(changed[5].any().item<bool>());
  EXPECT_EQ(changed.sum().item<int64_t>(), changed[5].sum().item<int64_t>());
  const auto unchanged = pconv(
      d, "inpaint " + photo + " " + (d / "none.png").string() + " -o " + (d / "same.png").string());
  EXPECT_EQ(unchanged.rc, 0);
  EXPECT_NE(unchanged.output.find("no hole pixel"), std::string::npos) << unchanged.output;
  EXPECT_TRUE(at::equal(samples(d / "photo.png"), samples(d / "same.png")));
}

// Values CLI11 alone would take: "" (as the default), whole numbers past the type's limit (it
// caps them), a negative seed (it wraps), a loss weight past float's range; and half a
// torchrun environment.
TEST(Cli, EmptyAndOutOfRangeValuesAreUsageErrors) {
  TempDir dir;
  const auto& d = dir.path();
  pconv::io::write_image(d / "photo.png", picture(3, 16, 16));
  write_holes(d / "mask.png", rectangle_holes(16, 16));
  fs::create_directories(d / "val");
  pconv::io::write_image(d / "val" / "photo.png", picture(3, 16, 16));
  const std::string photo = (d / "photo.png").string();
  const std::string mask = (d / "mask.png").string();
  const std::string data = " --data " + d.string();
  struct Case {
    std::string environment;
    std::string args;
    std::string message;
  };
  const Case cases[] = {
      {"", "inpaint '' " + mask, "image: an empty value"},
      {"", "inpaint " + photo + " " + mask + " -o ''", "--out: an empty value"},
      {"", "train" + data + " -o ''", "--out: an empty value"},
      {"", "eval" + data + " --per-bin ''", "--per-bin: '' is not a whole number"},
      {"", "eval" + data + " --per-bin 99999999999999999999",
       "--per-bin: '99999999999999999999' is not a whole number in [0 - 100000]"},
      {"", "inpaint " + photo + " " + mask + " --margin 1e20", "--margin: '1e20' is not"},
      {"", "train" + data + " --seed -1", "--seed: '-1' is not a whole number from 0"},
      {"", "masks -n 1 -o " + (d / "m").string() + " --seed 18446744073709551616",
       "--seed: '18446744073709551616' is not"},
      {"", "train" + data + " --timeout 99999999999999", "--timeout: '99999999999999' is not"},
      {"", "train" + data + " --validate-every 1e9", "--validate-every: '1e9' is not"},
      {"", "train" + data + " --loss-valid 1e39", "--loss-valid: '1e39' is outside [0, 1000000]"},
      {"RANK", "train" + data, "RANK is set but WORLD_SIZE is not"},
      {"WORLD_SIZE", "train" + data, "WORLD_SIZE='2x': expected an integer"},
      {"WORLD_SIZE=2", "train" + data, "WORLD_SIZE is 2 but RANK is not set"},
      {"LOCAL_WORLD_SIZE", "train" + data, "LOCAL_RANK is 1 but LOCAL_WORLD_SIZE is 1"},
      {"", "train" + data + " -o " + d.string(),
       "-o: '" + d.string() + "' would hold the run among the photos of --data"},
      {"",
       "train --data " + (d / "val").string() + " --val " + d.string() + " -o " +
           (d / "run").string(),
       "-o: '" + (d / "run").string() + "' would hold the run among the photos of --val"},
      {"", "train" + data + " -o " + (d / "run").string(),
       "-o: '" + (d / "run").string() + "' would hold the run among the photos of --data"},
      // Relative paths, a new one and the defaults (runs/pconv, pconv-eval) included.
      {"", "train --data . -o run", "-o: 'run' would hold the run among the photos of --data '.'"},
      {"", "eval --data .", "-o: 'pconv-eval' would hold the reports among the photos of"},
      {"",
       "train --data " + (d / "val").string() + " --masks " + d.string() + " -o " +
           (d / "run").string(),
       "-o: '" + (d / "run").string() + "' would hold the run among the masks of --masks"},
      // Masks among the photos would be trained on as photos.
      {"", "train" + data + " --masks " + (d / "val").string(),
       "--masks: '" + (d / "val").string() + "' overlaps the photos of --data"},
      {"", "train" + data + " --white-valid", "--white-valid: only with --masks"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.environment + " " + c.args);
    if (c.environment == "RANK") setenv("RANK", "1", 1);
    if (c.environment == "WORLD_SIZE") setenv("WORLD_SIZE", "2x", 1);
    if (c.environment == "WORLD_SIZE=2") setenv("WORLD_SIZE", "2", 1);
    if (c.environment == "LOCAL_WORLD_SIZE") {  // local rank 1 of a machine of 1 process
      setenv("WORLD_SIZE", "2", 1);
      setenv("RANK", "1", 1);
      setenv("LOCAL_RANK", "1", 1);
      setenv("LOCAL_WORLD_SIZE", "1", 1);
    }
    const auto run = pconv(d, c.args);
    unsetenv("RANK");
    unsetenv("WORLD_SIZE");
    unsetenv("LOCAL_RANK");
    unsetenv("LOCAL_WORLD_SIZE");
    EXPECT_EQ(run.rc, 2) << run.output;
    EXPECT_NE(run.output.find("pconv: error: " + c.message), std::string::npos) << run.output;
  }
  EXPECT_FALSE(fs::exists(d / "m"));
  // The largest seed is a seed.
  EXPECT_EQ(pconv(d, "masks -n 1 -o " + (d / "m").string() + " --seed 18446744073709551615").rc, 0);
}

// OPENCV_IO_MAX_IMAGE_PIXELS bounds the images pconv reads (OpenCV checks the header, pconv
// the decoded size); without it the bound follows the machine's memory.
TEST(Cli, ImagesPastThePixelLimitAreInputErrors) {
  TempDir dir;
  const auto& d = dir.path();
  pconv::io::write_image(d / "photo.png", picture(3, 16, 16));
  write_holes(d / "mask.png", rectangle_holes(16, 16));
  const std::string args =
      "inpaint " + (d / "photo.png").string() + " " + (d / "mask.png").string();
  setenv("OPENCV_IO_MAX_IMAGE_PIXELS", "100", 1);
  const auto refused = pconv(d, args + " -o " + (d / "no.png").string());
  unsetenv("OPENCV_IO_MAX_IMAGE_PIXELS");
  EXPECT_EQ(refused.rc, 3) << refused.output;
  EXPECT_NE(refused.output.find("photo.png: has more pixels than the 100 pconv reads"),
            std::string::npos)
      << refused.output;
  EXPECT_FALSE(fs::exists(d / "no.png"));
  EXPECT_EQ(pconv(d, args + " -o " + (d / "yes.png").string()).rc, 0);
}

// Ctrl-C (here SIGINT after 6 s, well after start-up, as `timeout` sends it) stops a long job
// between two items: exit 130, one warning line; eval leaves no folder, masks keep their whole
// masks (neither job can end in 6 s: 600,000 evaluation crops, a million masks).
TEST(Cli, InterruptedJobsStopCleanly) {
  TempDir dir;
  const auto& d = dir.path();
  fs::create_directories(d / "photos");
  pconv::io::write_image(d / "photos" / "photo.png", picture(3, 80, 80));
  const std::string interrupt = std::string("timeout --preserve-status -s INT 6 ") + PCONV_BINARY;
  const auto eval = shell(d, interrupt + " eval --data " + (d / "photos").string() +
                                 " --size 64 --per-bin 100000 -o " + (d / "reports").string());
  EXPECT_EQ(eval.rc, 130) << eval.output;
  EXPECT_NE(eval.output.find("pconv: warning: stopped; no reports written"), std::string::npos)
      << eval.output;
  EXPECT_FALSE(fs::exists(d / "reports"));

  const auto masks =
      shell(d, interrupt + " masks -n 1000000 --size 512x512 -o " + (d / "masks").string());
  EXPECT_EQ(masks.rc, 130) << masks.output;
  EXPECT_NE(masks.output.find("pconv: warning: stopped after "), std::string::npos) << masks.output;
  EXPECT_GT(std::distance(fs::directory_iterator(d / "masks"), fs::directory_iterator()), 0);

  // A batch stops between two images: exit 130 with the count, every result written whole, and
  // --skip-existing goes on from there to the end. The signal goes out once the first result
  // is there.
  fs::create_directories(d / "batch");
  constexpr int kImages = 40;
  for (int i = 0; i < kImages; ++i) {
    pconv::io::write_image(d / "batch" / ("b" + std::to_string(i) + ".png"), picture(3, 192, 192));
  }
  write_holes(d / "batch-mask.png", rectangle_holes(192, 192));
  const std::string batch_command = std::string(PCONV_BINARY) +
                                    " inpaint --input batch --masks batch-mask.png -o batch-out "
                                    "--device cpu";
  const auto batch =
      shell(d, "cd " + d.string() + " && (" +
                   interrupt_once(batch_command, "ls batch-out/*.png > /dev/null 2>&1") + ")");
  EXPECT_EQ(batch.rc, 130) << batch.output;
  EXPECT_NE(batch.output.find("pconv: warning: stopped after "), std::string::npos) << batch.output;
  int64_t written = 0;
  for (const auto& entry : fs::directory_iterator(d / "batch-out")) {
    EXPECT_EQ(entry.path().extension(), ".png") << entry.path();  // no temporary file
    EXPECT_EQ(pconv::io::read_image(entry.path()).pixels.sizes(), at::IntArrayRef({3, 192, 192}));
    ++written;
  }
  EXPECT_GE(written, 1);
  EXPECT_LT(written, kImages);
  EXPECT_NE(batch.output.find("stopped after " + std::to_string(written) + " of 40 images"),
            std::string::npos)
      << batch.output;
  const auto rest = shell(d, "cd " + d.string() + " && " + batch_command + " --skip-existing");
  EXPECT_EQ(rest.rc, 0) << rest.output;
  EXPECT_EQ(std::distance(fs::directory_iterator(d / "batch-out"), fs::directory_iterator()),
            kImages);
  fs::remove_all(d / "batch");
  fs::remove_all(d / "batch-out");
  fs::remove(d / "batch-mask.png");

  // One image ends at once, also where SIGINT came in ignored (a script's background job). The
  // signal goes out as soon as pconv says the model is loaded (its -v line, before the image is
  // read), not after a fixed time: the reading and the network's pass over 2400x2400 pixels
  // that follow take seconds on any CPU, so it lands before the result whatever the machine.
  pconv::io::write_image(d / "large.png", picture(3, 2400, 2400));
  write_holes(d / "large-mask.png", rectangle_holes(2400, 2400));
  const auto single =
      shell(d, "cd " + d.string() + " && (trap '' INT; " +
                   interrupt_once(std::string(PCONV_BINARY) +
                                      " -v inpaint large.png large-mask.png --strategy full "
                                      "--device cpu --threads 1 -o large-out.png 2> loaded.txt",
                                  "grep -q 'debug: model' loaded.txt") +
                   "; status=$?; cat loaded.txt; exit $status)");
  EXPECT_EQ(single.rc, 130) << single.output;  // the interrupted exit code, not a crash
  EXPECT_NE(single.output.find("debug: model"), std::string::npos) << single.output;
  EXPECT_FALSE(fs::exists(d / "large-out.png"));
  // photos/, masks/, the two inputs, loaded.txt and pconv.log: no result, no temporary file.
  EXPECT_EQ(std::distance(fs::directory_iterator(d), fs::directory_iterator()), 6);
}

// Ctrl-C while a rank waits for the others to join (up to --timeout) ends the wait at once:
// exit 130 with its one warning, no run folder. Rank 0 of 2 here, whose rank 1 never comes.
TEST(Cli, CtrlCWhileJoiningTheProcessGroupExits130) {
  if (!pconv::train::distributed_available()) GTEST_SKIP() << "built without Gloo";
  TempDir dir;
  const auto& d = dir.path();
  fs::create_directories(d / "photos");
  pconv::io::write_image(d / "photos" / "photo.png", picture(3, 40, 40));
  const auto joining = shell(
      d, "cd " + d.string() + " && (" +
             interrupt_once("RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29790 " +
                                std::string(PCONV_BINARY) +
                                " train --data photos -o run --size 32 --depth 3 --timeout 120 "
                                "2> joining.txt",
                            "grep -q 'joining the process group' joining.txt") +
             "; status=$?; cat joining.txt; exit $status)");
  EXPECT_EQ(joining.rc, 130) << joining.output;
  EXPECT_NE(joining.output.find("pconv: warning: stopped while joining the process group"),
            std::string::npos)
      << joining.output;
  EXPECT_FALSE(fs::exists(d / "run"));
}

// What pconv prints on stdout must arrive: a full disk there is an error (exit 3), not success.
TEST(Cli, AFailedWriteToStdoutIsAnError) {
  TempDir dir;
  const auto full = shell(dir.path(), "(" + std::string(PCONV_BINARY) + " info " +
                                          PCONV_DEFAULT_MODEL + " > /dev/full)");
  EXPECT_EQ(full.rc, 3) << full.output;
  EXPECT_NE(full.output.find("pconv: error: cannot write to the standard output: No space left"),
            std::string::npos)
      << full.output;
  // A result whose path cannot be printed is kept, and the error says where it is.
  const auto& d = dir.path();
  pconv::io::write_image(d / "photo.png", picture(3, 16, 16));
  write_holes(d / "mask.png", rectangle_holes(16, 16));
  const auto result =
      shell(d, "(" + std::string(PCONV_BINARY) + " inpaint " + (d / "photo.png").string() + " " +
                   (d / "mask.png").string() + " -o " + (d / "out.png").string() + " > /dev/full)");
  EXPECT_EQ(result.rc, 3) << result.output;
  EXPECT_NE(
      result.output.find("No space left on device; the result is in " + (d / "out.png").string()),
      std::string::npos)
      << result.output;
  EXPECT_TRUE(fs::is_regular_file(d / "out.png"));
  // So is a pipe whose reader is gone (`| true`): exit 3 with the same line, not a silent death
  // by SIGPIPE (141).
  const auto piped =
      shell(d, "((" + std::string(PCONV_BINARY) + " inpaint " + (d / "photo.png").string() + " " +
                   (d / "mask.png").string() + " -o " + (d / "piped.png").string() +
                   "; echo \"exit $?\" >&2) | true)");
  EXPECT_NE(piped.output.find("exit 3"), std::string::npos) << piped.output;
  EXPECT_NE(piped.output.find("pconv: error: cannot write to the standard output: Broken pipe; "
                              "the result is in " +
                              (d / "piped.png").string()),
            std::string::npos)
      << piped.output;
  EXPECT_TRUE(fs::is_regular_file(d / "piped.png"));
  // Started without a standard output (`>&-`): exit 3 too. Its number was free, so the copy of
  // stderr that decoding makes took it and the path went to stderr with exit 0; worse, a file
  // opened next could have taken it and received the output.
  const auto closed =
      shell(d, "(" + std::string(PCONV_BINARY) + " inpaint " + (d / "photo.png").string() + " " +
                   (d / "mask.png").string() + " -o " + (d / "closed.png").string() + " >&-)");
  EXPECT_EQ(closed.rc, 3) << closed.output;
  EXPECT_NE(closed.output.find("pconv: error: cannot write to the standard output: Bad file "
                               "descriptor; the result is in " +
                               (d / "closed.png").string()),
            std::string::npos)
      << closed.output;
}

// Formats that hold less than the image are written with what they hold, never refused after
// the network has run: grey as RGB in .ppm, RGBA without its alpha in .pnm and .jpg (with a
// warning where some pixel was not opaque); an image whose extension pconv does not write
// gets its default output as .png.
TEST(InpaintCli, OutputFormatsThatHoldLessStillGetTheResult) {
  TempDir dir;
  const auto& d = dir.path();
  const auto holes = rectangle_holes(24, 20);
  write_holes(d / "mask.png", holes);
  pconv::io::write_image(d / "grey.png", picture(1, 24, 20));
  auto rgba = picture(4, 24, 20);
  rgba[3].fill_(0.8);  // partly transparent everywhere: no hole from alpha, a mask gives them
  pconv::io::write_image(d / "rgba.png", rgba);
  const std::string mask = " " + (d / "mask.png").string();

  const auto grey =
      pconv(d, "inpaint " + (d / "grey.png").string() + mask + " -o " + (d / "grey.ppm").string());
  ASSERT_EQ(grey.rc, 0) << grey.output;
  const auto grey_samples = samples(d / "grey.ppm");
  ASSERT_EQ(grey_samples.size(0), 3);
  EXPECT_TRUE(at::equal(grey_samples[0], grey_samples[2]));  // grey as RGB
  for (const std::string name : {"rgba.pnm", "rgba.jpg"}) {
    const auto run =
        pconv(d, "inpaint " + (d / "rgba.png").string() + mask + " -o " + (d / name).string());
    ASSERT_EQ(run.rc, 0) << run.output;
    EXPECT_EQ(samples(d / name).size(0), 3) << name;
    EXPECT_NE(run.output.find("pconv: warning: " + (d / name).string() +
                              ": the format keeps no transparency"),
              std::string::npos)
        << run.output;
  }
  for (const std::string name : {"rgba-out.png", "rgba-out.tif", "rgba-out.webp"}) {
    const auto kept =
        pconv(d, "inpaint " + (d / "rgba.png").string() + mask + " -o " + (d / name).string());
    ASSERT_EQ(kept.rc, 0) << kept.output;
    EXPECT_EQ(kept.output.find("transparency"), std::string::npos) << kept.output;
    EXPECT_EQ(samples(d / name).size(0), 4) << name;
  }

  // No extension, and one pconv reads (by content) but does not write.
  fs::copy_file(d / "grey.png", d / "noext");
  fs::copy_file(d / "grey.png", d / "grey.gif");
  for (const std::string name : {"noext", "grey.gif"}) {
    const auto run = pconv(d, "inpaint " + (d / name).string() + mask);
    ASSERT_EQ(run.rc, 0) << run.output;
    const auto expected = d / (fs::path(name).stem().string() + ".inpainted.png");
    EXPECT_NE(run.output.find(expected.string()), std::string::npos) << run.output;
    expect_known_pixels_kept(d / "grey.png", expected, holes);
  }
}

// Missing folders on the way to -o and --compare (inpaint) and -o (export) are made.
TEST(Cli, OutputFoldersAreMadeAsNeeded) {
  TempDir dir;
  const auto& d = dir.path();
  pconv::io::write_image(d / "photo.png", picture(3, 16, 16));
  write_holes(d / "mask.png", rectangle_holes(16, 16));
  const auto run = pconv(d, "inpaint " + (d / "photo.png").string() + " " +
                                (d / "mask.png").string() + " -o " + (d / "a" / "x.png").string() +
                                " --compare " + (d / "b" / "c" / "side.png").string());
  EXPECT_EQ(run.rc, 0) << run.output;
  EXPECT_TRUE(fs::is_regular_file(d / "a" / "x.png"));
  EXPECT_TRUE(fs::is_regular_file(d / "b" / "c" / "side.png"));
  const auto exported = pconv(
      d, std::string("export ") + PCONV_DEFAULT_MODEL + " -o " + (d / "e" / "model.ts").string());
  EXPECT_EQ(exported.rc, 0) << exported.output;
  EXPECT_TRUE(fs::is_regular_file(d / "e" / "model.ts"));
}

// A write cut short leaves nothing behind: past a file-size limit (ulimit -f) the command says
// so in one line and keeps what was there; a signal during a write removes its temporary file.
TEST(Cli, CutShortWritesLeaveNoTemporaryFile) {
  TempDir dir;
  const auto& d = dir.path();
  fs::create_directories(d / "out");
  std::ofstream(d / "out" / "keep.ts") << "precious";
  const std::string exporter = std::string(PCONV_BINARY) + " export " + PCONV_DEFAULT_MODEL;
  const auto limited =
      shell(d, "(ulimit -f 1000; " + exporter + " -o " + (d / "out" / "keep.ts").string() + ")");
  EXPECT_EQ(limited.rc, 3) << limited.output;
  EXPECT_NE(limited.output.find("keep.ts: cannot write the file: File too large"),
            std::string::npos)
      << limited.output;
  EXPECT_EQ(read_text(d / "out" / "keep.ts"), "precious");
  const auto masks = shell(d, "(ulimit -f 1; " + std::string(PCONV_BINARY) +
                                  " masks -n 2 --size 256x256 -o " + (d / "masks").string() + ")");
  EXPECT_EQ(masks.rc, 3) << masks.output;
  EXPECT_FALSE(fs::exists(d / "masks")) << masks.output;
  // SIGTERM as soon as the export's temporary file appears (a few tries: the write may end
  // before the shell sees it). At least one try must have cut a write short: killed by the
  // signal (143) with no x.ts, the temporary file gone too (checked below).
  const auto signalled = shell(
      d, "cd " + (d / "out").string() + " && for i in 1 2 3 4 5 6 7 8; do " + exporter +
             " -o x.ts & pid=$!; seen=0; while [ $seen = 0 ] && kill -0 $pid 2>/dev/null; do "
             "for f in .x.ts.tmp*; do if [ -e \"$f\" ]; then kill -TERM $pid; seen=1; fi; done; "
             "done; wait $pid; status=$?; if [ $seen = 1 ]; then echo \"caught: exit $status, "
             "$([ -e x.ts ] && echo written || echo nothing written)\"; fi; rm -f x.ts; done");
  EXPECT_NE(signalled.output.find("caught: exit 143, nothing written"), std::string::npos)
      << signalled.output;
  // keep.ts and nothing else: no .x.ts.tmp* and no .keep.ts.tmp*.
  EXPECT_EQ(std::distance(fs::directory_iterator(d / "out"), fs::directory_iterator()), 1);
}

// Three small photos for a training run.
void write_training_photos(const fs::path& folder) {
  fs::create_directories(folder);
  for (int i = 0; i < 3; ++i) {
    pconv::io::write_image(folder / ("p" + std::to_string(i) + ".png"), picture(3, 40, 36 + i));
  }
}

// --resume takes the run's own settings (config.txt) for the options not given: the same
// command with --resume alone continues it, to the model an uninterrupted run makes; a
// fine-tuning run resumes without its --init (the checkpoint has the weights).
TEST(Cli, AResumeTakesTheRunsOwnSettings) {
  TempDir dir;
  const auto& d = dir.path();
  write_training_photos(d / "photos");
  write_training_photos(d / "val");
  const std::string settings = " --data " + (d / "photos").string() + " --val " +
                               (d / "val").string() +
                               " --size 32 --depth 3 --width 8 --max-width 16 --batch 2 --seed 5 "
                               "--thin-strokes 0.5 --lr 1e-3 --workers 1 --val-count 1 "
                               "--validate-every 1 --sample-every 1 --checkpoint-every 1 "
                               "--half-weights ";
  ASSERT_EQ(pconv(d, "train" + settings + "--steps 4 -o " + (d / "straight").string()).rc, 0);
  ASSERT_EQ(pconv(d, "train" + settings + "--steps 2 -o " + (d / "run").string()).rc, 0);
  const auto resumed = pconv(d, "train --resume --steps 4 -o " + (d / "run").string());
  ASSERT_EQ(resumed.rc, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("--resume: the run's own --data " + (d / "photos").string() +
                                " --val " + (d / "val").string() +
                                " --size 32 --batch 2 --lr 0.001 --depth 3 --width 8 "
                                "--max-width 16 --thin-strokes 0.5 --seed 5 --workers 1 "
                                "--val-count 1 --validate-every 1 --sample-every 1 "
                                "--checkpoint-every 1 --half-weights"),
            std::string::npos)
      << resumed.output;
  // Until session xii the last six went back to their defaults: validation on all 3 photos
  // and samples every 500 steps, float32 weights.
  EXPECT_EQ(read_text(d / "run" / "validation.csv"), read_text(d / "straight" / "validation.csv"));
  const auto names = [](const fs::path& folder) {
    std::set<std::string> found;
    for (const auto& entry : fs::directory_iterator(folder)) {
      found.insert(entry.path().filename().string());
    }
    return found;
  };
  EXPECT_EQ(names(d / "run" / "samples"), names(d / "straight" / "samples"));
  // Half weights: float32 ones would be some 25 KB more; the files differ in their recorded
  // command lines.
  EXPECT_NEAR(static_cast<double>(fs::file_size(d / "run" / "model.pt")),
              static_cast<double>(fs::file_size(d / "straight" / "model.pt")), 2000.0);
  const auto straight = pconv::io::load_model(d / "straight" / "model.pt");
  const auto continued = pconv::io::load_model(d / "run" / "model.pt");
  const auto expected = straight->named_parameters();
  for (const auto& item : continued->named_parameters()) {
    EXPECT_TRUE(at::equal(item.value(), expected[item.key()])) << item.key();
  }
  // Given options win over the run's: another seed is another run, refused (exit 3).
  const auto other = pconv(d, "train --resume --steps 5 --seed 6 -o " + (d / "run").string());
  EXPECT_EQ(other.rc, 3) << other.output;
  // Fine-tuning, stopped at step 1 and resumed without --init.
  ASSERT_EQ(pconv(d, "train --data " + (d / "photos").string() + " --size 32 --batch 2 " +
                         "--workers 1 --steps 1 --finetune --init " +
                         (d / "run" / "model.pt").string() + " -o " + (d / "fine").string())
                .rc,
            0);
  const auto fine = pconv(d, "train --resume --steps 2 -o " + (d / "fine").string());
  EXPECT_EQ(fine.rc, 0) << fine.output;
  EXPECT_NE(fine.output.find("--finetune"), std::string::npos) << fine.output;
  // Nothing to resume: said so (it was "--data is required").
  const auto nothing = pconv(d, "train --resume -o " + (d / "none").string());
  EXPECT_EQ(nothing.rc, 2) << nothing.output;
  EXPECT_NE(nothing.output.find("none: holds no training run to resume (no config.txt)"),
            std::string::npos)
      << nothing.output;
}

// A training log that cannot be written (here past a file-size limit, as on a full disk) ends
// the run with its one-line error, exit 3, instead of training on with the rows lost.
TEST(Cli, ATrainingLogThatCannotBeWrittenEndsTheRun) {
  TempDir dir;
  const auto& d = dir.path();
  write_training_photos(d / "photos");
  // config.txt (about 430 bytes) fits in 2 KiB; log.csv's rows (about 55 bytes) pass it near
  // step 35.
  const auto run = shell(d, "(ulimit -f 2; " + std::string(PCONV_BINARY) + " train --data " +
                                (d / "photos").string() +
                                " --size 32 --depth 3 --width 8 --max-width 16 --workers 1 "
                                "--steps 200 --validate-every 0 --sample-every 0 "
                                "--checkpoint-every 0 -o " +
                                (d / "run").string() + ")");
  EXPECT_EQ(run.rc, 3) << run.output;
  EXPECT_NE(run.output.find("pconv: error: " + (d / "run" / "log.csv").string() +
                            ": cannot write the log: File too large"),
            std::string::npos)
      << run.output;
}

// Two commands writing into one folder at once would mix their files (masks of two seeds,
// reports of two models): while one holds the folder, the others are refused and change nothing
// there; once it is free they run.
TEST(Cli, OneCommandWritesIntoAFolderAtATime) {
  TempDir dir;
  const auto& d = dir.path();
  fs::create_directories(d / "photos");
  pconv::io::write_image(d / "photos" / "a.png", picture(3, 64, 64));
  write_holes(d / "mask.png", rectangle_holes(64, 64));
  fs::create_directories(d / "out");
  const std::string out = (d / "out").string();
  const std::string commands[] = {
      "masks -n 2 --size 32x32 -o " + out,
      "inpaint --input " + (d / "photos").string() + " --masks " + (d / "mask.png").string() +
          " -o " + out,
      "eval --data " + (d / "photos").string() + " --size 64 --per-bin 1 -o " + out,
      "train --data " + (d / "photos").string() + " --size 64 --depth 4 --steps 1 -o " + out,
  };
  {
    const auto lock = pconv::io::lock_folder(d / "out");  // as another command would
    for (const auto& args : commands) {
      SCOPED_TRACE(args);
      const auto run = pconv(d, args);
      EXPECT_EQ(run.rc, 3) << run.output;
      EXPECT_NE(run.output.find("pconv: error: " + out +
                                ": another pconv command is writing into this folder"),
                std::string::npos)
          << run.output;
      EXPECT_TRUE(fs::is_empty(d / "out"));
    }
    // Nor into a folder inside it, nor into the folder that holds it.
    const auto inside = pconv(d, "masks -n 1 --size 32x32 -o " + out + "/sub");
    EXPECT_EQ(inside.rc, 3) << inside.output;
    EXPECT_NE(inside.output.find(": another pconv command is writing into " +
                                 fs::canonical(d / "out").string() + ", which holds this folder"),
              std::string::npos)
        << inside.output;
    EXPECT_FALSE(fs::exists(d / "out" / "sub"));
    const auto above = pconv(d, "masks -n 1 --size 32x32 -o " + d.string());
    EXPECT_EQ(above.rc, 3) << above.output;
    EXPECT_NE(above.output.find("another pconv command is writing into this folder (or one "
                                "inside it)"),
              std::string::npos)
        << above.output;
    EXPECT_FALSE(fs::exists(d / "mask_00000.png"));
  }
  const auto free = pconv(d, commands[0]);
  EXPECT_EQ(free.rc, 0) << free.output;
  EXPECT_TRUE(fs::exists(d / "out" / "mask_00001.png"));
}

// A model file or a checkpoint is never replaced by an output: not by an inpainted image, an
// export or a new training run (its --init model included).
// A photo the decoder warns about (a truncated JPEG: its lower part grey) is named once, with
// its own name, although every pass over the data decodes it again, on two worker threads.
TEST(Cli, TrainingWarnsOnceAboutADamagedPhoto) {
  TempDir dir;
  const auto& d = dir.path();
  fs::create_directories(d / "photos");
  pconv::io::write_image(d / "photos" / "a.png", picture(3, 40, 40));
  pconv::io::write_image(d / "photos" / "b.jpg", picture(3, 40, 40));
  pconv::io::write_image(d / "photos" / "c.jpg", picture(3, 96, 96));
  fs::resize_file(d / "photos" / "c.jpg", fs::file_size(d / "photos" / "c.jpg") * 3 / 4);
  const auto run = pconv(d, "train --data " + (d / "photos").string() +
                                " --size 16 --depth 2 --width 4 --max-width 8 --batch 1 "
                                "--steps 12 --workers 2 -o " +
                                (d / "run").string());
  ASSERT_EQ(run.rc, 0) << run.output;
  const std::string warning = "c.jpg: Premature end of JPEG file\n";
  EXPECT_EQ(count(run.output, "Premature end"), 1) << run.output;
  EXPECT_NE(run.output.find(warning), std::string::npos) << run.output;
}

// A float16 run whose every step overflowed (a hole weight far too large) trained nothing: it
// says so, not only "done".
TEST(Cli, TrainingSaysWhenEveryFloat16StepWasSkipped) {
  TempDir dir;
  const auto& d = dir.path();
  fs::create_directories(d / "photos");
  pconv::io::write_image(d / "photos" / "a.png", picture(3, 32, 32));
  const auto run = pconv(d, "train --data " + (d / "photos").string() +
                                " --size 16 --depth 2 --width 4 --max-width 8 --batch 1 --steps 2 "
                                "--amp fp16 --loss-hole 1e6 --device cpu -o " +
                                (d / "run").string());
  ASSERT_EQ(run.rc, 0) << run.output;
  EXPECT_NE(run.output.find("warning: every one of the 2 float16 steps of this run was skipped"),
            std::string::npos)
      << run.output;
  EXPECT_NE(run.output.find("done: 2 steps (2 of this run's 2 skipped)"), std::string::npos)
      << run.output;
  // A run that trains says neither.
  const auto trained = pconv(d, "train --data " + (d / "photos").string() +
                                    " --size 16 --depth 2 --width 4 --max-width 8 --batch 1 "
                                    "--steps 2 -o " +
                                    (d / "trained").string());
  ASSERT_EQ(trained.rc, 0) << trained.output;
  EXPECT_EQ(trained.output.find("skipped"), std::string::npos) << trained.output;
  EXPECT_NE(trained.output.find("done: 2 steps; model written"), std::string::npos)
      << trained.output;
}

TEST(Cli, ModelsAndCheckpointsAreNeverReplaced) {
  TempDir dir;
  const auto& d = dir.path();
  fs::create_directories(d / "photos");
  pconv::io::write_image(d / "photos" / "a.png", picture(3, 32, 32));
  write_holes(d / "mask.png", rectangle_holes(32, 32));
  const std::string tiny = " --size 16 --depth 2 --width 4 --max-width 8 --batch 1 --steps 1";
  const auto trained =
      pconv(d, "train --data " + (d / "photos").string() + tiny + " -o " + (d / "run").string());
  ASSERT_EQ(trained.rc, 0) << trained.output;
  const auto model = (d / "run" / "model.pt").string();
  const auto checkpoint = (d / "run" / "checkpoint.pt").string();
  const auto model_bytes = read_text(model);
  const auto checkpoint_bytes = read_text(checkpoint);
  fs::create_directories(d / "again");
  fs::copy_file(model, d / "again" / "model.pt");
  const std::string photo = (d / "photos" / "a.png").string() + " " + (d / "mask.png").string();
  const auto exported = (d / "e.pt").string();  // a TorchScript export under a .pt name
  ASSERT_EQ(pconv(d, "export " + model + " -o " + exported).rc, 0);
  const std::pair<std::string, std::string> refused[] = {
      {"inpaint " + photo + " --model " + model + " -o " + exported,
       "is a pconv TorchScript export; pconv does not write over one"},
      {"export " + model + " -o " + (d / "new").string() + "/", "names a folder; give the export"},
      {"inpaint " + photo + " --model " + model + " -o " + checkpoint,
       "-o: '" + checkpoint + "' is a pconv training checkpoint; pconv does not write over one"},
      {"inpaint " + photo + " --model " + model + " -o " + (d / "again" / "model.pt").string(),
       "is a pconv model file; pconv does not write over one"},
      {"export " + model + " -o " + checkpoint, "is a pconv training checkpoint"},
      {"export " + model + " -o " + (d / "x.png").string(), "has an image's extension"},
      {"train --data " + (d / "photos").string() + " --size 8 --depth 2",
       "--size: '8' is not a whole number in [16 - 4096]"},
  };
  for (const auto& [args, message] : refused) {
    SCOPED_TRACE(args);
    const auto run = pconv(d, args);
    EXPECT_EQ(run.rc, 2) << run.output;
    EXPECT_EQ(run.output.rfind("pconv: error: ", 0), 0U) << run.output;
    EXPECT_NE(run.output.find(message), std::string::npos) << run.output;
  }
  EXPECT_EQ(pconv(d, "export " + model + " -o " + exported).rc, 0);  // an export replaces one
  // A new run into a folder with a model (here its own --init) would replace it at its end.
  const auto init =
      pconv(d, "train --data " + (d / "photos").string() + tiny + " --init " +
                   (d / "again" / "model.pt").string() + " -o " + (d / "again").string());
  EXPECT_EQ(init.rc, 3) << init.output;
  EXPECT_NE(init.output.find("again: holds model.pt already, which this run would replace"),
            std::string::npos)
      << init.output;
  // Nor a folder's own config.txt, log.csv, validation.csv or samples/: each is refused, kept.
  for (const std::string file : {"config.txt", "log.csv", "validation.csv", "samples"}) {
    const auto folder = d / ("mine-" + file);
    fs::create_directories(folder);
    std::ofstream(folder / file) << "my own notes";
    const auto kept_out =
        pconv(d, "train --data " + (d / "photos").string() + tiny + " -o " + folder.string());
    EXPECT_EQ(kept_out.rc, 3) << kept_out.output;
    EXPECT_NE(kept_out.output.find(folder.string() + ": holds " + file +
                                   " already, which this run would replace; use another --out"),
              std::string::npos)
        << kept_out.output;
    EXPECT_EQ(read_text(folder / file), "my own notes");
    EXPECT_EQ(std::distance(fs::directory_iterator(folder), fs::directory_iterator()), 1);
  }
  // Nor does a batch's tensor image (.pt) of the same name as a model in the output folder.
  fs::create_directories(d / "tensors");
  pconv::io::write_image(d / "tensors" / "model.pt", picture(3, 32, 32));
  pconv::io::write_image(d / "tensors" / "b.pt", picture(3, 32, 32));
  const auto batch = pconv(d, "inpaint --input " + (d / "tensors").string() + " --masks " +
                                  (d / "mask.png").string() + " --model " + model + " -o " +
                                  (d / "again").string());
  EXPECT_EQ(batch.rc, 3) << batch.output;
  EXPECT_NE(batch.output.find("model.pt: is a pconv model file; not replaced by the result of"),
            std::string::npos)
      << batch.output;
  EXPECT_NE(batch.output.find("1 of 2 images to inpaint (0 skipped as their output exists, 1 "
                              "left out)"),
            std::string::npos)
      << batch.output;
  EXPECT_TRUE(fs::exists(d / "again" / "b.pt"));
  EXPECT_EQ(read_text(model), model_bytes);
  EXPECT_EQ(read_text(d / "again" / "model.pt"), model_bytes);
  EXPECT_EQ(read_text(checkpoint), checkpoint_bytes);
  EXPECT_FALSE(fs::exists(d / "x.png"));
  // A checkpoint given as a model says what it is.
  const auto info = pconv(d, "info " + checkpoint);
  EXPECT_EQ(info.rc, 4) << info.output;
  EXPECT_NE(info.output.find("checkpoint.pt: a training checkpoint, not a model file"),
            std::string::npos)
      << info.output;
  // --skip-existing for one image: an existing output is left as it is.
  const auto out = (d / "out.png").string();
  ASSERT_EQ(pconv(d, "inpaint " + photo + " --model " + model + " -o " + out).rc, 0);
  std::ofstream(out, std::ios::app) << "x";  // marked, so that a rewrite would show
  const auto marked = read_text(out);
  const auto skip =
      pconv(d, "inpaint " + photo + " --model " + model + " -o " + out + " --skip-existing");
  EXPECT_EQ(skip.rc, 0) << skip.output;
  EXPECT_NE(skip.output.find("exists; left as it is (--skip-existing)"), std::string::npos)
      << skip.output;
  EXPECT_EQ(read_text(out), marked);
  // Fine-tuning starts from a model, whose architecture --init gives when the command does not.
  const auto alone = pconv(d, "train --data " + (d / "photos").string() + tiny + " --finetune");
  EXPECT_EQ(alone.rc, 2) << alone.output;
  EXPECT_NE(alone.output.find("--finetune: needs --init MODEL"), std::string::npos) << alone.output;
  const auto tuned = pconv(d, "train --data " + (d / "photos").string() +
                                  " --size 16 --batch 1 --steps 1 --finetune --init " + model +
                                  " -o " + (d / "tuned").string());
  ASSERT_EQ(tuned.rc, 0) << tuned.output;
  const auto tuned_info = pconv(d, "info " + (d / "tuned" / "model.pt").string());
  EXPECT_NE(tuned_info.output.find("depth 2, widths 4..8"), std::string::npos) << tuned_info.output;
}

// Only a file counts as a mask already written; a folder of that name is an error, not a mask.
TEST(MasksCli, AFolderIsNotAMask) {
  TempDir dir;
  const auto& d = dir.path();
  fs::create_directories(d / "masks" / "mask_00001.png");
  const auto run = pconv(d, "masks -n 2 --size 32x32 -o " + (d / "masks").string());
  EXPECT_EQ(run.rc, 3) << run.output;
  EXPECT_NE(run.output.find("mask_00001.png: is a folder, not a file to write"), std::string::npos)
      << run.output;
  EXPECT_TRUE(fs::is_regular_file(d / "masks" / "mask_00000.png"));
}

// A rerun keeps the masks there, but only masks of the size it is asked for.
TEST(MasksCli, KeptMasksMustHaveTheSizeAskedFor) {
  TempDir dir;
  const auto& d = dir.path();
  const auto out = (d / "masks").string();
  ASSERT_EQ(pconv(d, "masks -n 2 --size 48x32 -o " + out).rc, 0);
  const auto again = pconv(d, "masks -n 3 --size 48x32 -o " + out);
  EXPECT_EQ(again.rc, 0) << again.output;
  EXPECT_NE(again.output.find("wrote 1 mask of 48x32"), std::string::npos) << again.output;
  // The progress counts only the mask written; with none to write, it says so.
  EXPECT_NE(again.output.find("masks: 1/1 ("), std::string::npos) << again.output;
  const auto none = pconv(d, "masks -n 3 --size 48x32 -o " + out);
  EXPECT_EQ(none.rc, 0) << none.output;
  EXPECT_NE(none.output.find("all 3 masks of 48x32 in " + out + " exist and were kept"),
            std::string::npos)
      << none.output;
  EXPECT_EQ(none.output.find("masks: "), std::string::npos) << none.output;
  // Refused with exit 3 and `message`, before anything is written.
  const auto refused = [&](const std::string& message) {
    const auto run = pconv(d, "masks -n 3 --size 64x64 -o " + out);
    EXPECT_EQ(run.rc, 3) << run.output;
    EXPECT_NE(run.output.find(message), std::string::npos) << run.output;
  };
  refused("mask_00000.png: a 48x32 mask from an earlier run, not 64x64");
  // Checked before anything is written: with only mask 2 kept, masks 0 and 1 are not made.
  fs::remove(d / "masks" / "mask_00000.png");
  fs::remove(d / "masks" / "mask_00001.png");
  EXPECT_EQ(pconv(d, "masks -n 3 --size 64x64 -o " + out).rc, 3);
  EXPECT_FALSE(fs::exists(d / "masks" / "mask_00000.png"));
  EXPECT_EQ(pconv(d, "masks -n 3 --size 64x64 --overwrite -o " + out).rc, 0);
  EXPECT_EQ(pconv::io::read_image(d / "masks" / "mask_00002.png").pixels.size(2), 64);
  // A file under a mask's name that is no image: named as in the way, with the way out.
  std::ofstream(d / "masks" / "mask_00000.png") << "not a png";
  refused("it has a mask's name: --overwrite replaces the masks");
  fs::remove(d / "masks" / "mask_00000.png");
  // A count is read in decimal (CLI11 read "010" as octal 8).
  const auto decimal = pconv(d, "masks -n 010 --size 16x16 -o " + (d / "ten").string());
  EXPECT_NE(decimal.output.find("wrote 10 masks"), std::string::npos) << decimal.output;
  // A picture of the right size under a mask's name is no mask either (it was kept as one).
  pconv::io::write_image(d / "masks" / "mask_00001.png", picture(3, 64, 64));
  refused("mask_00001.png: not a mask as pconv masks writes them");
}

// A command that fails takes away the output folders it made: nothing is left to look like a
// result. A refused training run adds nothing to the run folder.
TEST(Cli, FailedCommandsLeaveNoFolderBehind) {
  TempDir dir;
  const auto& d = dir.path();
  fs::create_directories(d / "bad");
  std::ofstream(d / "bad" / "a.png") << "not a png";
  std::ofstream(d / "bad" / "b.png") << "not a png either";
  pconv::io::write_image(d / "photo.png", picture(3, 16, 16));
  write_holes(d / "mask.png", rectangle_holes(16, 16));
  fs::create_directories(d / "photos");
  pconv::io::write_image(d / "photos" / "photo.png", picture(3, 16, 16));
  fs::create_directories(d / "run");
  std::ofstream(d / "run" / "checkpoint.pt") << "a checkpoint";
  const std::string bad = (d / "bad").string();
  const std::pair<std::string, int> runs[] = {
      {"eval --data " + bad + " -o " + (d / "reports" / "deep").string(), 3},
      {"inpaint --input " + bad + " --masks " + (d / "mask.png").string() + " -o " +
           (d / "batch" / "x").string(),
       3},
      {"inpaint " + (d / "photo.png").string() + " " + bad + "/a.png -o " +
           (d / "single" / "x" / "out.png").string(),
       3},
      {"train --data " + (d / "photos").string() + " -o " + (d / "run").string(), 3},
  };
  for (const auto& [args, rc] : runs) {
    SCOPED_TRACE(args);
    const auto run = pconv(d, args);
    EXPECT_EQ(run.rc, rc) << run.output;
    if (args.rfind("inpaint --input", 0) == 0) {
      // Each bad image is a warning; the one error line counts them.
      EXPECT_NE(run.output.find("pconv: error: 2 of 2 images failed"), std::string::npos)
          << run.output;
    }
  }
  for (const auto* made : {"reports", "batch", "single"}) {
    EXPECT_FALSE(fs::exists(d / made)) << made;
  }
  EXPECT_EQ(std::distance(fs::directory_iterator(d / "run"), fs::directory_iterator()), 1);
}

TEST(InpaintCli, BatchMatchesMasksByStemAndSkipsABadFile) {
  TempDir dir;
  const auto& d = dir.path();
  fs::create_directories(d / "in" / "sub");
  fs::create_directories(d / "masks");
  pconv::io::write_image(d / "in" / "a.png", picture(3, 32, 40));
  std::ofstream(d / "in" / "b.png") << "broken";
  pconv::io::write_image(d / "in" / "sub" / "c.jpg", picture(3, 30, 30));
  pconv::io::write_image(d / "in" / "d.png", picture(3, 16, 16));  // no mask for d
  // No mask for e either, but transparent holes: filled as one image without a mask is.
  auto rgba = picture(4, 30, 40);
  rgba[3].fill_(1.0);
  rgba[3].masked_fill_(rectangle_holes(30, 40), 0.0);
  pconv::io::write_image(d / "in" / "e.png", rgba);
  write_holes(d / "masks" / "a.png", rectangle_holes(32, 40));
  write_holes(d / "masks" / "b.png", rectangle_holes(32, 40));
  write_holes(d / "masks" / "c.png", rectangle_holes(30, 30));
  const std::string args = "inpaint --input " + (d / "in").string() + " --masks " +
                           (d / "masks").string() + " -o " + (d / "out").string();
  const auto run = pconv(d, args);
  EXPECT_EQ(run.rc, 3) << run.output;
  EXPECT_NE(run.output.find("b.png: cannot read the image"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("d.png: no mask named 'd.*' in " + (d / "masks").string() +
                            ", and the image has no alpha channel to take holes from"),
            std::string::npos)
      << run.output;
  EXPECT_NE(run.output.find("3 inpainted, 0 skipped (output exists), 2 failed"), std::string::npos)
      << run.output;
  EXPECT_EQ(pconv::io::read_image(d / "out" / "e.png").pixels[3].min().item<float>(), 1.0F);
  expect_known_pixels_kept(d / "in" / "a.png", d / "out" / "a.png", rectangle_holes(32, 40));
  EXPECT_TRUE(fs::exists(d / "out" / "sub" / "c.jpg"));
  EXPECT_FALSE(fs::exists(d / "out" / "b.png"));
  // Two masks of one stem: an error where an image of that name would take one (before any
  // work), nothing where none would.
  fs::create_directories(d / "one");
  fs::copy_file(d / "in" / "a.png", d / "one" / "a.png");
  fs::create_directories(d / "masks2");
  for (const std::string name : {"a.png", "z.png", "z.bmp"}) {
    write_holes(d / "masks2" / name, rectangle_holes(32, 40));
  }
  const std::string one =
      "inpaint --input " + (d / "one").string() + " --masks " + (d / "masks2").string() + " -o ";
  const auto unused_pair = pconv(d, one + (d / "out2").string());
  EXPECT_EQ(unused_pair.rc, 0) << unused_pair.output;
  write_holes(d / "masks2" / "a.bmp", rectangle_holes(32, 40));
  const auto used_pair = pconv(d, one + (d / "out3").string());
  EXPECT_EQ(used_pair.rc, 3) << used_pair.output;
  EXPECT_NE(used_pair.output.find("two masks for the images named 'a'"), std::string::npos)
      << used_pair.output;
  EXPECT_FALSE(fs::exists(d / "out3"));
  // Again with --skip-existing: the two done are left alone.
  const auto again = pconv(d, args + " --skip-existing");
  EXPECT_NE(again.output.find("0 inpainted, 3 skipped (output exists), 2 failed"),
            std::string::npos)
      << again.output;
  // Without --masks every image's transparency marks its holes: e is filled, the others fail.
  const auto alpha_only =
      pconv(d, "inpaint --input " + (d / "in").string() + " -o " + (d / "alpha_out").string());
  EXPECT_EQ(alpha_only.rc, 3) << alpha_only.output;
  EXPECT_NE(alpha_only.output.find("a.png: no --masks given and the image has no alpha channel"),
            std::string::npos)
      << alpha_only.output;
  EXPECT_NE(alpha_only.output.find("1 inpainted, 0 skipped (output exists), 4 failed"),
            std::string::npos)
      << alpha_only.output;
  EXPECT_TRUE(fs::exists(d / "alpha_out" / "e.png"));
}

// An image too large for the memory is one failed image of a batch, named, and the others are
// still done. The address space is limited to 8 GB (LibTorch with its CUDA libraries takes
// about 5 of it) and a 6000x6000 picture needs about 23 GB in one pass.
TEST(InpaintCli, BatchGoesOnPastAnImageTooLargeForTheMemory) {
  TempDir dir;
  const auto& d = dir.path();
  fs::create_directories(d / "in");
  // A generated mask is a quick way to a large picture (grey strokes, a small PNG).
  ASSERT_EQ(pconv(d, "masks -n 1 --size 6000x6000 -o " + (d / "large").string()).rc, 0);
  fs::rename(d / "large" / "mask_00000.png", d / "in" / "large.png");
  pconv::io::write_image(d / "in" / "small.png", picture(3, 32, 32));
  write_holes(d / "mask.png", rectangle_holes(32, 32));
  const auto run =
      shell(d, "(ulimit -v 8000000; " + std::string(PCONV_BINARY) + " inpaint --input " +
                   (d / "in").string() + " --masks " + (d / "mask.png").string() +
                   " --resize-mask --strategy full --device cpu --threads 1 -o " +
                   (d / "out").string() + ")");
  EXPECT_EQ(run.rc, 3) << run.output;
  EXPECT_NE(run.output.find("pconv: error: 1 of 2 images failed (first: " +
                            (d / "in" / "large.png").string() + ": out of memory: "),
            std::string::npos)
      << run.output;
  EXPECT_TRUE(fs::exists(d / "out" / "small.png"));
  EXPECT_FALSE(fs::exists(d / "out" / "large.png"));
}

// Links among the inputs: each result takes the link's own name under -o, and no input (a
// link's target above all) is ever written to.
TEST(InpaintCli, BatchResultsOfLinksKeepTheLinksNames) {
  TempDir dir;
  const auto& d = dir.path();
  fs::create_directories(d / "in");
  fs::create_directories(d / "elsewhere" / "folder");
  pconv::io::write_image(d / "in" / "a.png", picture(3, 32, 32));
  pconv::io::write_image(d / "elsewhere" / "far.png", picture(3, 32, 32));
  fs::create_symlink("../elsewhere/far.png", d / "in" / "near.png");
  fs::create_symlink("a.png", d / "in" / "b.png");
  fs::create_symlink(d / "elsewhere" / "folder", d / "in" / "folder");
  write_holes(d / "mask.png", rectangle_holes(32, 32));
  const auto far_bytes = read_text(d / "elsewhere" / "far.png");
  const auto a_bytes = read_text(d / "in" / "a.png");
  const auto run = pconv(d, "inpaint --input " + (d / "in").string() + " --masks " +
                                (d / "mask.png").string() + " -o " + (d / "out").string());
  EXPECT_EQ(run.rc, 0) << run.output;
  EXPECT_NE(run.output.find("folder: a link to a folder, not followed; skipped"), std::string::npos)
      << run.output;
  for (const auto* name : {"a.png", "b.png", "near.png"}) {
    expect_known_pixels_kept(d / "in" / name, d / "out" / name, rectangle_holes(32, 32));
  }
  EXPECT_EQ(read_text(d / "elsewhere" / "far.png"), far_bytes);
  EXPECT_EQ(read_text(d / "in" / "a.png"), a_bytes);
  EXPECT_EQ(std::distance(fs::directory_iterator(d / "elsewhere"), fs::directory_iterator()), 2);
  // A link whose target is where its result would go: not replaced.
  fs::create_directories(d / "links");
  fs::create_symlink("../elsewhere/far.png", d / "links" / "far.png");
  const auto into = pconv(d, "inpaint --input " + (d / "links").string() + " --masks " +
                                 (d / "mask.png").string() + " -o " + (d / "elsewhere").string());
  EXPECT_EQ(into.rc, 3) << into.output;
  EXPECT_NE(into.output.find("far.png: is the input " + (d / "links" / "far.png").string() +
                             " (through a link); not replaced by its result"),
            std::string::npos)
      << into.output;
  EXPECT_EQ(read_text(d / "elsewhere" / "far.png"), far_bytes);
}

// scripts/inpaint-folder.sh: the log goes beside the output folder (a trailing slash or a
// missing parent folder included), each run adds to it, and a refused command leaves none.
TEST(InpaintCli, FolderScriptKeepsItsLog) {
  TempDir dir;
  const auto& d = dir.path();
  fs::create_directories(d / "in");
  pconv::io::write_image(d / "in" / "a.png", picture(3, 32, 32));
  std::ofstream(d / "in" / "b.png") << "broken";
  write_holes(d / "mask.png", rectangle_holes(32, 32));
  const std::string script = "PCONV=" + std::string(PCONV_BINARY) +
                             " " PCONV_SCRIPTS "/inpaint-folder.sh " + (d / "in").string() + " " +
                             (d / "mask.png").string() + " ";
  const auto first = shell(d, script + (d / "jobs" / "out").string() + "/");
  EXPECT_EQ(first.rc, 3) << first.output;
  EXPECT_NE(first.output.find("done except the inputs named in " + (d / "jobs" / "out").string() +
                              ".log"),
            std::string::npos)
      << first.output;
  EXPECT_TRUE(fs::exists(d / "jobs" / "out" / "a.png"));
  shell(d, script + (d / "jobs" / "out").string());
  const auto log = read_text(d / "jobs" / "out.log");
  EXPECT_NE(log.find("b.png: cannot read the image"), std::string::npos) << log;
  // Two sections, one per run, each headed "== DATE exit status N".
  const auto second_section = log.find("exit status 3", log.find("exit status 3") + 1);
  EXPECT_EQ(log.rfind("== ", 0), 0U) << log;
  EXPECT_NE(second_section, std::string::npos) << log;
  const auto refused = shell(d, script + (d / "in" / "res").string());
  EXPECT_EQ(refused.rc, 2) << refused.output;
  EXPECT_NE(refused.output.find("pconv inpaint refused the job, exit status 2 (see the messages "
                                "above)"),
            std::string::npos)
      << refused.output;
  EXPECT_FALSE(fs::exists(d / "in" / "res.log"));
  EXPECT_FALSE(fs::exists(d / "in" / "res"));
  // Refused with an output folder that exists (the photos' own): no log either.
  EXPECT_EQ(shell(d, script + (d / "in").string()).rc, 2);
  EXPECT_FALSE(fs::exists(d / "in.log"));
  // "." as the output folder: the log goes beside it, named after it.
  fs::create_directories(d / "here");
  const auto here = shell(d, "cd " + (d / "here").string() + " && " + script + ".");
  EXPECT_EQ(here.rc, 3) << here.output;
  EXPECT_TRUE(fs::exists(d / "here.log"));
  EXPECT_FALSE(fs::exists(d / "here" / "..log"));
  // Every image failed: pconv leaves no output folder, and the log is beside where it was.
  fs::create_directories(d / "bad");
  std::ofstream(d / "bad" / "c.png") << "broken";
  const auto all_failed = shell(
      d, "PCONV=" + std::string(PCONV_BINARY) + " " PCONV_SCRIPTS "/inpaint-folder.sh " +
             (d / "bad").string() + " " + (d / "mask.png").string() + " " + (d / "none").string());
  EXPECT_EQ(all_failed.rc, 3) << all_failed.output;
  EXPECT_FALSE(fs::exists(d / "none"));
  EXPECT_NE(read_text(d / "none.log").find("c.png: cannot read the image"), std::string::npos)
      << all_failed.output;
}

TEST(EvalCli, SameSeedSameReports) {
  TempDir dir;
  const auto& d = dir.path();
  fs::create_directories(d / "photos");
  for (int i = 0; i < 3; ++i) {
    pconv::io::write_image(d / "photos" / ("p" + std::to_string(i) + ".png"), picture(3, 64, 80));
  }
  const std::string args =
      "eval --data " + (d / "photos").string() + " --size 64 --per-bin 2 --seed 4";
  const auto first = pconv(d, args + " -o " + (d / "one").string());
  ASSERT_EQ(first.rc, 0) << first.output;
  EXPECT_NE(first.output.find("(0.5, 0.6]"), std::string::npos) << first.output;
  EXPECT_NE(first.output.find("SSIM Telea"), std::string::npos) << first.output;
  const auto second = pconv(d, args + " -o " + (d / "two").string());
  ASSERT_EQ(second.rc, 0) << second.output;
  for (const char* name : {"eval.csv", "eval.json"}) {
    const auto first_text = read_text(d / "one" / name);
    EXPECT_FALSE(first_text.empty());
    EXPECT_EQ(first_text, read_text(d / "two" / name)) << name;
  }
  // A CSV reader finds as many fields in each row as in the header (commas inside quotes are
  // a field's).
  std::istringstream csv(read_text(d / "one" / "eval.csv"));
  std::string line;
  std::vector<int> fields;
  while (std::getline(csv, line)) {
    int count = 1;
    bool quoted = false;
    for (const char c : line) {
      if (c == '"') quoted = !quoted;
      if (c == ',' && !quoted) ++count;
    }
    fields.push_back(count);
  }
  ASSERT_GT(fields.size(), 1U);
  EXPECT_EQ(static_cast<size_t>(std::count(fields.begin(), fields.end(), fields[0])),
            fields.size());
  EXPECT_NE(read_text(d / "one" / "eval.csv").find(",\"(0.1, 0.2]\","), std::string::npos);
  EXPECT_TRUE(fs::exists(d / "one" / "examples.png"));
  EXPECT_TRUE(fs::exists(d / "one" / "eval.md"));
  // What the report says: each method scored --per-bin 2 examples in each of the 6 bins, with
  // scores in their ranges.
  const auto report = nlohmann::json::parse(read_text(d / "one" / "eval.json"));
  EXPECT_EQ(report.at("photos").get<int>(), 3);
  ASSERT_EQ(report.at("bins").size(), 6U);
  ASSERT_EQ(report.at("methods").size(), 3U);
  for (const auto& [method, scores] : report.at("methods").items()) {
    SCOPED_TRACE(method);
    EXPECT_EQ(scores.at("all").at("count").get<int>(), 12);
    ASSERT_EQ(scores.at("bins").size(), 6U);
    for (const auto& bin : scores.at("bins")) {
      EXPECT_EQ(bin.at("count").get<int>(), 2);
      EXPECT_GT(bin.at("psnr").get<double>(), 5.0);
      EXPECT_LT(bin.at("psnr").get<double>(), 100.0);
      EXPECT_GT(bin.at("ssim").get<double>(), 0.0);
      EXPECT_LE(bin.at("ssim").get<double>(), 1.0);
      EXPECT_GE(bin.at("l1").get<double>(), 0.0);
      EXPECT_LT(bin.at("l1").get<double>(), 0.5);
    }
  }
  // Photos smaller than the crops are upscaled, which the log and the reports say.
  EXPECT_EQ(first.output.find("upscaled"), std::string::npos) << first.output;
  EXPECT_TRUE(report.at("upscaled_photos").empty());
  const auto upscaled =
      pconv(d, "eval --data " + (d / "photos").string() +
                   " --size 128 --per-bin 1 --no-baselines -o " + (d / "large").string());
  ASSERT_EQ(upscaled.rc, 0) << upscaled.output;
  EXPECT_NE(upscaled.output.find("3 of the photos are smaller than the 128x128 crops and were "
                                 "upscaled"),
            std::string::npos)
      << upscaled.output;
  EXPECT_NE(upscaled.output.find("p0.png (80x64)"), std::string::npos) << upscaled.output;
  EXPECT_EQ(
      nlohmann::json::parse(read_text(d / "large" / "eval.json")).at("upscaled_photos").size(), 3U);
  EXPECT_NE(read_text(d / "large" / "eval.md").find("3 of the photos are smaller than the crops"),
            std::string::npos);
  // Another seed gives other masks.
  const auto other = pconv(d, "eval --data " + (d / "photos").string() +
                                  " --size 64 --per-bin 2 --seed 5 -o " + (d / "three").string());
  ASSERT_EQ(other.rc, 0);
  EXPECT_NE(read_text(d / "one" / "eval.csv"), read_text(d / "three" / "eval.csv"));
  // A run that cannot write all four reports (here examples.png is over the file size limit, as
  // on a full disk) leaves an earlier run's set whole.
  const auto earlier = read_text(d / "one" / "eval.csv");
  const auto limited =
      shell(d, "(trap '' XFSZ; ulimit -f 16; " + std::string(PCONV_BINARY) + " eval --data " +
                   (d / "photos").string() + " --size 64 --per-bin 2 --seed 5 -o " +
                   (d / "one").string() + ")");
  EXPECT_EQ(limited.rc, 3) << limited.output;
  EXPECT_NE(limited.output.find("examples.png: cannot write the file: File too large"),
            std::string::npos)
      << limited.output;
  EXPECT_EQ(read_text(d / "one" / "eval.csv"), earlier);
  EXPECT_EQ(std::distance(fs::directory_iterator(d / "one"), fs::directory_iterator()), 4);
  // A report's name taken by a folder: refused before any report is replaced.
  fs::remove(d / "one" / "eval.json");
  fs::create_directories(d / "one" / "eval.json");
  const auto blocked = pconv(d, args + " -o " + (d / "one").string());
  EXPECT_EQ(blocked.rc, 3) << blocked.output;
  EXPECT_NE(blocked.output.find("eval.json: is not a file that the report can replace"),
            std::string::npos)
      << blocked.output;
  EXPECT_EQ(read_text(d / "one" / "eval.csv"), earlier);
  // The reports never go among the photos, nor into a folder inside them (a later eval would
  // read examples.png as a photo).
  for (const auto& out : {d / "photos", d / "photos" / "reports"}) {
    const auto among = pconv(d, args + " -o " + out.string());
    EXPECT_EQ(among.rc, 2) << among.output;
    EXPECT_NE(among.output.find("would hold the reports among the photos of --data"),
              std::string::npos)
        << among.output;
  }
  EXPECT_FALSE(fs::exists(d / "photos" / "eval.md"));
  EXPECT_FALSE(fs::exists(d / "photos" / "reports"));
}

}  // namespace
