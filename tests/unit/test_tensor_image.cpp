// Tensor images (.pt): the image format every build reads and writes, OpenCV or not.
#include "temp_dir.h"

#include <pconv/error.h>
#include <pconv/io/image_file.h>

#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/pickle.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <memory>
#include <sstream>
#include <string>

namespace {

using pconv::testing::TempDir;

void write_bytes(const std::filesystem::path& path, const std::vector<char>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

TEST(TensorImage, RoundTripsEightBitRgbExactly) {
  TempDir dir;
  const auto path = dir.path() / "photo.pt";
  const auto samples = at::arange(0, 5 * 7 * 3, at::kInt).remainder(256).reshape({5, 7, 3});
  pconv::io::write_image(path, samples.permute({2, 0, 1}).to(at::kFloat) / 255.0, 8);
  const auto image = pconv::io::read_image(path);
  EXPECT_EQ(image.bit_depth, 8);
  ASSERT_EQ(image.pixels.sizes(), (at::IntArrayRef{3, 5, 7}));
  EXPECT_TRUE(at::equal((image.pixels * 255.0).round().to(at::kInt).permute({1, 2, 0}), samples));
}

TEST(TensorImage, KeepsSixteenBitsAndGrey) {
  TempDir dir;
  const auto path = dir.path() / "grey16.PT";
  const auto values = at::tensor({0, 1, 32767, 32768, 65534, 65535}, at::kInt).reshape({1, 2, 3});
  pconv::io::write_image(path, values.to(at::kDouble).div(65535.0).to(at::kFloat), 16);
  const auto image = pconv::io::read_image(path);
  EXPECT_EQ(image.bit_depth, 16);
  ASSERT_EQ(image.pixels.sizes(), (at::IntArrayRef{1, 2, 3}));
  EXPECT_TRUE(at::equal((image.pixels.to(at::kDouble) * 65535.0).round().to(at::kInt), values));
}

TEST(TensorImage, ReadsTwoDimensionalTensorsAsGrey) {
  TempDir dir;
  const auto path = dir.path() / "plain.pt";
  write_bytes(path, torch::jit::pickle_save(at::full({4, 6}, 255, at::kByte)));
  const auto image = pconv::io::read_image(path);
  EXPECT_EQ(image.pixels.sizes(), (at::IntArrayRef{1, 4, 6}));
  EXPECT_EQ(image.pixels.min().item<float>(), 1.0F);
}

TEST(TensorImage, RejectsCorruptWrongTypeAndWrongShape) {
  TempDir dir;
  const auto corrupt = dir.path() / "corrupt.pt";
  write_bytes(corrupt, {'n', 'o', 't', ' ', 'a', ' ', 'z', 'i', 'p'});
  EXPECT_THROW(pconv::io::read_image(corrupt), pconv::InputError);
  const auto floats = dir.path() / "floats.pt";
  write_bytes(floats, torch::jit::pickle_save(at::zeros({4, 4, 3})));
  EXPECT_THROW(pconv::io::read_image(floats), pconv::InputError);
  const auto five = dir.path() / "five.pt";
  write_bytes(five, torch::jit::pickle_save(at::zeros({4, 4, 5}, at::kByte)));
  EXPECT_THROW(pconv::io::read_image(five), pconv::InputError);
  const auto list = dir.path() / "list.pt";
  write_bytes(list, torch::jit::pickle_save(c10::IValue(int64_t{3})));
  EXPECT_THROW(pconv::io::read_image(list), pconv::InputError);
}

// A tensor image whose data record was cut short: its pickle still claims every sample, and
// LibTorch makes a storage of that size around the short record, so the samples past it would
// be whatever memory follows. Read, it is refused before any sample is used.
TEST(TensorImage, RejectsATruncatedDataRecord) {
  TempDir dir;
  const auto whole = torch::jit::pickle_save(at::zeros({64, 64, 3}, at::kByte));
  std::istringstream whole_stream(std::string(whole.begin(), whole.end()));
  caffe2::serialize::PyTorchStreamReader reader(&whole_stream);
  std::string cut;
  caffe2::serialize::PyTorchStreamWriter writer([&cut](const void* data, size_t size) {
    cut.append(static_cast<const char*>(data), size);
    return size;
  });
  for (const auto& name : reader.getAllRecords()) {
    if (name == "version" || name.rfind(".data/", 0) == 0) continue;  // the writer adds its own
    const auto [data, size] = reader.getRecord(name);
    writer.writeRecord(name, data.get(), name == "data/0" ? 16 : size);
  }
  writer.writeEndOfFile();
  const auto path = dir.path() / "cut.pt";
  write_bytes(path, std::vector<char>(cut.begin(), cut.end()));
  EXPECT_THAT([&] { pconv::io::read_image(path); },
              ::testing::ThrowsMessage<pconv::InputError>(::testing::HasSubstr("truncated")));
  // The same records uncut read back.
  const auto again = dir.path() / "whole.pt";
  write_bytes(again, whole);
  EXPECT_EQ(pconv::io::read_image(again).pixels.sizes(), (at::IntArrayRef{3, 64, 64}));
}

// Changed samples (a flipped bit in the data record) fail the zip's checksum: an error, never a
// picture with wrong pixels.
TEST(TensorImage, RejectsChangedSamples) {
#ifndef PCONV_WITH_ZLIB
  GTEST_SKIP() << "built without zlib: checksums are not checked";
#endif
  TempDir dir;
  const auto path = dir.path() / "image.pt";
  const auto pixels = at::rand({3, 16, 16});
  pconv::io::write_image(path, pixels, 8);
  uint64_t offset = 0;
  uint64_t size = 0;
  {
    caffe2::serialize::PyTorchStreamReader reader(path.string());
    for (const auto& name : reader.getAllRecords()) {
      if (name.rfind("data/", 0) == 0 || name.find("/data/") != std::string::npos) {
        offset = reader.getRecordOffset(name);
        size = reader.getRecordSize(name);
      }
    }
  }
  ASSERT_GT(size, 0U);
  {
    std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
    file.seekg(static_cast<std::streamoff>(offset + size / 2));
    char byte = 0;
    file.get(byte);
    file.seekp(static_cast<std::streamoff>(offset + size / 2));
    file.put(static_cast<char>(byte ^ 0x01));
  }
  EXPECT_THAT([&] { pconv::io::read_image(path); },
              ::testing::ThrowsMessage<pconv::InputError>(
                  ::testing::HasSubstr("image.pt: is damaged (the bytes of its record ")));
}

// A large file that is not a zip archive is refused from its first bytes, not read whole.
TEST(TensorImage, RejectsAFileThatIsNotAnArchiveFromItsFirstBytes) {
  TempDir dir;
  const auto path = dir.path() / "zeros.pt";
  { std::ofstream create(path); }
  std::filesystem::resize_file(path, uintmax_t{1} << 30);  // 1 GiB of zeros, sparse
  EXPECT_THAT(
      [&] { pconv::io::read_image(path); },
      ::testing::ThrowsMessage<pconv::InputError>(::testing::HasSubstr("not a tensor image")));
}

// 16-bit samples as int32 (how Python saves them: its torch.save writes uint16 in a form
// LibTorch cannot read), and files that describe more than they hold.
TEST(TensorImage, ReadsInt32AsSixteenBitsAndRejectsWhatTheFileDoesNotHold) {
  TempDir dir;
  const auto int32 = dir.path() / "int32.pt";
  const auto values = at::tensor({0, 1, 65535, 40000}, at::kInt).reshape({2, 2});
  write_bytes(int32, torch::jit::pickle_save(values));
  const auto image = pconv::io::read_image(int32);
  EXPECT_EQ(image.bit_depth, 16);
  EXPECT_TRUE(at::equal((image.pixels[0].to(at::kDouble) * 65535.0).round().to(at::kInt), values));

  const auto too_large = dir.path() / "too_large.pt";
  write_bytes(too_large, torch::jit::pickle_save(at::full({2, 2}, 65536, at::kInt)));
  EXPECT_THAT([&] { pconv::io::read_image(too_large); },
              ::testing::ThrowsMessage<pconv::InputError>(::testing::HasSubstr("0 to 65535")));

  // One byte repeated as a 20000x20000 picture: 1.2 GB of samples from a file of a few bytes.
  const auto repeated = dir.path() / "repeated.pt";
  write_bytes(repeated,
              torch::jit::pickle_save(at::zeros({1, 1, 3}, at::kByte).expand({20000, 20000, 3})));
  EXPECT_THAT([&] { pconv::io::read_image(repeated); },
              ::testing::ThrowsMessage<pconv::InputError>(::testing::HasSubstr("zero strides")));
}

TEST(TensorImage, WritesGreyAsTwoDimensions) {
  TempDir dir;
  const auto path = dir.path() / "grey.pt";
  pconv::io::write_image(path, at::full({1, 3, 5}, 0.5F));
  std::ifstream in(path, std::ios::binary);
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)),
                                std::istreambuf_iterator<char>());
  EXPECT_EQ(torch::jit::pickle_load(bytes).toTensor().sizes(), (at::IntArrayRef{3, 5}));
  EXPECT_EQ(pconv::io::read_image(path).pixels.sizes(), (at::IntArrayRef{1, 3, 5}));
}

TEST(TensorImage, WritesMasksWhiteForHoles) {
  TempDir dir;
  const auto path = dir.path() / "mask.pt";
  pconv::io::write_mask(path, {0, 1, 0, 7}, 2, 2);
  const auto image = pconv::io::read_image(path);
  EXPECT_TRUE(at::equal(image.pixels.reshape({4}), at::tensor({0.0F, 1.0F, 0.0F, 1.0F})));
  // A hole map of another size is the caller's mistake (ArgumentError), not the file's, and
  // writes nothing.
  EXPECT_THROW(pconv::io::write_mask(dir.path() / "short.pt", {0, 1, 0}, 2, 2),
               pconv::ArgumentError);
  EXPECT_FALSE(std::filesystem::exists(dir.path() / "short.pt"));
}

// A mask without pixels (a default Image) is an ArgumentError, not a LibTorch error.
TEST(TensorImage, HolesFromAMaskWithoutPixelsIsAnArgumentError) {
  EXPECT_THROW(
      pconv::io::holes_from_mask(pconv::io::Image{}, pconv::io::MaskConvention::kWhiteIsHole),
      pconv::ArgumentError);
  pconv::io::Image five_channels{at::zeros({5, 2, 2}), 8};
  EXPECT_THROW(pconv::io::holes_from_mask(five_channels, pconv::io::MaskConvention::kWhiteIsHole),
               pconv::ArgumentError);
}

}  // namespace
