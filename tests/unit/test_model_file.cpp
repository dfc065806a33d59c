// Tests of pconv model files: a round trip keeps outputs and metadata, half-precision weights
// stay close, and truncated, corrupt, damaged or foreign files are ModelErrors naming the file.
#include <pconv/error.h>
#include <pconv/io/model_file.h>

#include <ATen/ATen.h>
#include <torch/csrc/jit/serialization/pickle.h>
#include <torch/serialize/output-archive.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "damaged_archive.h"
#include "temp_dir.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>

namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::ThrowsMessage;

class ModelFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::manual_seed(21);
    model_ =
        pconv::nn::PConvUNet(pconv::nn::PConvUNetOptions().depth(3).base_width(4).max_width(8));
    // Non-trivial BatchNorm statistics, so that buffers are checked too.
    model_->train();
    model_(at::rand({2, 3, 16, 16}), at::ones({2, 1, 16, 16}));
    model_->eval();
  }

  pconv::testing::TempDir temp_;
  const fs::path& dir_ = temp_.path();
  pconv::nn::PConvUNet model_{nullptr};
};

TEST_F(ModelFileTest, RoundTripKeepsOutputsAndMetadata) {
  pconv::io::ModelMetadata metadata;
  metadata.training_data = "318 images";
  metadata.command = "pconv train --data x";
  metadata.created = "2026-11-23T00:00:00Z";
  metadata.steps = 1500;
  metadata.image_size = 256;
  metadata.metrics["val_psnr"] = 25.19;
  const auto path = dir_ / "model.pt";
  pconv::io::save_model(path, model_, metadata);

  pconv::io::ModelMetadata read;
  auto loaded = pconv::io::load_model(path, &read);
  EXPECT_EQ(loaded->options.depth(), 3);
  EXPECT_EQ(loaded->options.max_width(), 8);
  EXPECT_EQ(read.training_data, metadata.training_data);
  EXPECT_EQ(read.command, metadata.command);
  EXPECT_EQ(read.created, metadata.created);
  EXPECT_EQ(read.steps, 1500);
  EXPECT_EQ(read.image_size, 256);
  EXPECT_DOUBLE_EQ(read.metrics.at("val_psnr"), 25.19);
  const auto image = at::rand({1, 3, 16, 16});
  auto mask = at::ones({1, 1, 16, 16});
  mask.narrow(2, 4, 6).zero_();
  EXPECT_TRUE(at::equal(std::get<0>(loaded(image, mask)), std::get<0>(model_(image, mask))));

  const auto half_path = dir_ / "half.pt";
  pconv::io::save_model(half_path, model_, metadata, /*half_weights=*/true);
  EXPECT_LT(fs::file_size(half_path), fs::file_size(path));
  auto half = pconv::io::load_model(half_path);
  EXPECT_EQ(half->encoder[0]->weight.scalar_type(), at::kFloat);
  EXPECT_TRUE(
      at::allclose(std::get<0>(half(image, mask)), std::get<0>(model_(image, mask)), 1e-2, 1e-2));
}

// Bytes changed in place inside a weight record (bit rot, a bad copy): the values stay finite
// and every size still fits, but the record's CRC-32 in the zip no longer matches.
TEST_F(ModelFileTest, ChangedBytesFailTheChecksum) {
#ifndef PCONV_WITH_ZLIB
  GTEST_SKIP() << "built without zlib: checksums are not checked";
#endif
  const auto path = dir_ / "model.pt";
  pconv::io::save_model(path, model_, {});
  const auto records = pconv::testing::tensor_records(path);
  ASSERT_FALSE(records.empty());
  const auto& record = records.back();  // the largest
  uint64_t offset = 0;
  uint64_t size = 0;
  {
    caffe2::serialize::PyTorchStreamReader reader(path.string());
    offset = reader.getRecordOffset(record);
    size = reader.getRecordSize(record);
  }
  const auto changed = dir_ / "changed.pt";
  fs::copy_file(path, changed);
  {
    std::fstream file(changed, std::ios::in | std::ios::out | std::ios::binary);
    file.seekg(static_cast<std::streamoff>(offset + size / 2));
    char byte = 0;
    file.get(byte);
    file.seekp(static_cast<std::streamoff>(offset + size / 2));
    file.put(static_cast<char>(byte ^ 0x01));  // the lowest mantissa bit of some weight
  }
  EXPECT_THAT([&] { pconv::io::load_model(changed); },
              ThrowsMessage<pconv::ModelError>(
                  HasSubstr("changed.pt: is damaged (the bytes of its record ")));
  EXPECT_NO_THROW(pconv::io::load_model(path));
}

TEST_F(ModelFileTest, BadFilesAreModelErrorsNamingTheFile) {
  const auto path = dir_ / "model.pt";
  pconv::io::save_model(path, model_, {});
  const auto size = fs::file_size(path);

  const auto truncated = dir_ / "truncated.pt";
  fs::copy_file(path, truncated);
  fs::resize_file(truncated, size / 2);
  EXPECT_THAT([&] { pconv::io::load_model(truncated); },
              ThrowsMessage<pconv::ModelError>(HasSubstr("truncated.pt")));

  const auto garbage = dir_ / "garbage.pt";
  std::ofstream(garbage) << "definitely not a model";
  EXPECT_THAT([&] { pconv::io::load_model(garbage); },
              ThrowsMessage<pconv::ModelError>(HasSubstr("garbage.pt")));

  const auto foreign = dir_ / "foreign.pt";
  torch::serialize::OutputArchive archive;
  archive.write("weight", at::ones({2}));
  archive.save_to(foreign.string());
  EXPECT_THAT([&] { pconv::io::load_model(foreign); },
              ThrowsMessage<pconv::ModelError>(HasSubstr("foreign.pt: not a pconv model file")));

  // Tensors saved alone (what torch.save of a tensor or a state_dict writes): sound, not a model.
  const auto tensors = dir_ / "tensors.pt";
  const auto pickled = torch::jit::pickle_save(at::zeros({3}));
  std::ofstream(tensors, std::ios::binary)
      .write(pickled.data(), static_cast<std::streamsize>(pickled.size()));
  EXPECT_THAT([&] { pconv::io::load_model(tensors); },
              ThrowsMessage<pconv::ModelError>(HasSubstr(
                  "tensors.pt: not a pconv model file (a zip archive of something else")));

  // A tensor record with no bytes (it crashed), and one cut short (it read uninitialized
  // memory as weights).
  const auto records = pconv::testing::tensor_records(path);
  ASSERT_GE(records.size(), 2U);
  for (const auto& record : {records.front(), records.back()}) {
    for (const size_t keep : {size_t{0}, size_t{3}}) {
      const auto damaged = dir_ / "damaged.pt";
      pconv::testing::copy_with_short_record(path, damaged, record, keep);
      EXPECT_THAT([&] { pconv::io::load_model(damaged); },
                  ThrowsMessage<pconv::ModelError>(HasSubstr("damaged.pt: ")))
          << record << " cut to " << keep << " bytes";
    }
  }
  // A weight that is NaN (a diverged run): the holes would come out black.
  {
    torch::NoGradGuard no_grad;
    auto diverged = pconv::nn::PConvUNet(model_->options);
    diverged->encoder[0]->weight.view(-1)[5] = std::nan("");
    pconv::io::save_model(dir_ / "nan.pt", diverged, {});
  }
  EXPECT_THAT([&] { pconv::io::load_model(dir_ / "nan.pt"); },
              ThrowsMessage<pconv::ModelError>(
                  HasSubstr("nan.pt: weight 'encoder1.weight' is not finite")));
  pconv::testing::copy_with_short_record(path, dir_ / "copy.pt", "", 0);
  EXPECT_NO_THROW(pconv::io::load_model(dir_ / "copy.pt"));  // the copy itself is sound

  // An architecture pconv does not make (building it could take all the memory).
  const auto huge = dir_ / "huge.pt";
  torch::serialize::OutputArchive huge_archive;
  huge_archive.write("magic", c10::IValue(std::string("pconv-model")));
  huge_archive.write("format", c10::IValue(int64_t{1}));
  huge_archive.write("options.depth", c10::IValue(int64_t{8}));
  huge_archive.write("options.base_width", c10::IValue(int64_t{64}));
  huge_archive.write("options.max_width", c10::IValue(int64_t{1} << 40));
  huge_archive.write("options.image_channels", c10::IValue(int64_t{3}));
  huge_archive.save_to(huge.string());
  EXPECT_THAT([&] { pconv::io::load_model(huge); },
              ThrowsMessage<pconv::ModelError>(HasSubstr("huge.pt: its architecture (depth 8, "
                                                         "widths 64..1099511627776, 3 channels) "
                                                         "is not one pconv makes")));

  // An altered architecture record: a depth-3 model's weights under depth 2 (the weights the
  // smaller net has would load, and the rest be dropped without a word).
  {
    const auto altered = dir_ / "altered.pt";
    torch::serialize::OutputArchive header;
    header.write("magic", c10::IValue(std::string("pconv-model")));
    header.write("format", c10::IValue(int64_t{1}));
    header.write("options.depth", c10::IValue(int64_t{2}));
    header.write("options.base_width", c10::IValue(int64_t{4}));
    header.write("options.max_width", c10::IValue(int64_t{8}));
    header.write("options.image_channels", c10::IValue(int64_t{3}));
    torch::serialize::OutputArchive weights;
    for (const auto& item : model_->named_parameters()) weights.write(item.key(), item.value());
    for (const auto& item : model_->named_buffers()) weights.write(item.key(), item.value(), true);
    header.write("weights", weights);
    header.save_to(altered.string());
    EXPECT_THAT([&] { pconv::io::load_model(altered); },
                ThrowsMessage<pconv::ModelError>(HasSubstr(
                    "altered.pt: holds a weight 'encoder3.weight' that its architecture (depth 2) "
                    "has no place for")));
  }

  EXPECT_THAT([&] { pconv::io::load_model(dir_ / "absent.pt"); },
              ThrowsMessage<pconv::ModelError>(HasSubstr("absent.pt: no such model file")));
  EXPECT_THAT([&] { pconv::io::save_model(dir_ / "no" / "such" / "dir.pt", model_, {}); },
              ThrowsMessage<pconv::InputError>(HasSubstr("dir.pt")));
}

// A large file that is no zip archive (a video or a disk image given by mistake) is refused
// from its last 64 KiB, not read whole: a 1 TiB sparse file was "out of memory", an 8 GiB one
// took 33 s.
TEST_F(ModelFileTest, AHugeFileThatIsNoArchiveIsRefusedFromItsTail) {
  const auto huge = dir_ / "disk.img";
  std::ofstream(huge) << "no archive";
  std::error_code error;
  fs::resize_file(huge, std::uintmax_t{1} << 40, error);  // sparse: no disk space taken
  if (error) GTEST_SKIP() << "this file system has no 1 TiB sparse files: " << error.message();
  EXPECT_THAT([&] { pconv::io::load_model(huge); },
              ThrowsMessage<pconv::ModelError>(
                  HasSubstr("disk.img: cannot read the model (not a pconv model, or truncated")));
  fs::remove(huge);
}

}  // namespace

namespace {

// A damaged file can trip an internal assertion of LibTorch's: the one-line message names the
// check that failed, not where it is in LibTorch's source nor its advice to report a bug.
TEST(ModelFile, BriefNamesLibTorchsFailedCheckWithoutItsAdvice) {
  const std::runtime_error error(
      "args.at(0).toStringRef() == \"storage\" INTERNAL ASSERT FAILED at "
      "\"/pytorch/torch/csrc/jit/serialization/unpickler.cpp\":552, please report a bug to "
      "PyTorch. \nException raised from ...");
  EXPECT_EQ(pconv::brief(error), "LibTorch's check args.at(0).toStringRef() == \"storage\" failed");
  // With TORCH_INTERNAL_ASSERT's own message, which follows the advice.
  const std::runtime_error with_message(
      "false INTERNAL ASSERT FAILED at \"x.cpp\":7, please report a bug to PyTorch. Unknown "
      "storage type. More text");
  EXPECT_EQ(pconv::brief(with_message), "LibTorch's check false failed: Unknown storage type");
}

}  // namespace
