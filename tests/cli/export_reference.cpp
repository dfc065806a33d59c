// Writes the fixture of the TorchScript export test: a small pconv model file with non-trivial
// BatchNorm statistics, and what pconv computes with it (read back from the file) on a fixed
// batch, pickled so that Python's torch.load reads it.
//   pconv_export_reference DIR   ->   DIR/model.pt, DIR/reference.pt (DIR is emptied first)
// reference.pt is the tuple (image, mask, output, output_mask).
#include <pconv/io/model_file.h>

#include <ATen/ATen.h>
#include <torch/serialize.h>

#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>

namespace {

void write_fixture(const std::filesystem::path& dir) {
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  torch::manual_seed(2018);
  pconv::nn::PConvUNet model(pconv::nn::PConvUNetOptions().depth(3).base_width(8).max_width(16));
  {
    torch::NoGradGuard no_grad;
    for (auto& bn : model->encoder_bn) {
      bn->running_mean.normal_(0.0, 0.2);
      bn->running_var.uniform_(0.5, 2.0);
    }
    for (auto& bn : model->decoder_bn) {
      bn->running_mean.normal_(0.0, 0.2);
      bn->running_var.uniform_(0.5, 2.0);
    }
  }
  pconv::io::ModelMetadata metadata;
  metadata.training_data = "none: random weights for the export test";
  metadata.steps = 0;
  metadata.image_size = 32;
  pconv::io::save_model(dir / "model.pt", model, metadata);

  // The reference comes from the file, as pconv export reads it.
  auto loaded = pconv::io::load_model(dir / "model.pt");
  const int64_t size = 32;
  const auto image = at::rand({3, 3, size, size});
  auto mask = at::ones({3, 1, size, size});
  mask[0].copy_(at::rand({1, size, size}) > 0.5);                            // random pixels
  mask[1].narrow(1, 0, 3 * size / 4).narrow(2, size / 8, size / 2).zero_();  // a large hole
  // mask[2] stays all valid.
  torch::NoGradGuard no_grad;
  const auto [output, output_mask] = loaded(image, mask);

  // A tuple, not a dict: torch.load's default weights_only mode rejects the type tags that
  // LibTorch pickles with a typed dict.
  const std::vector<char> bytes =
      torch::pickle_save(c10::ivalue::Tuple::create({image, mask, output, output_mask}));
  std::ofstream out(dir / "reference.pt", std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + (dir / "reference.pt").string());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: pconv_export_reference DIR\n";
    return 2;
  }
  try {
    write_fixture(argv[1]);
  } catch (const std::exception& error) {
    std::cerr << "pconv_export_reference: " << error.what() << "\n";
    return 1;
  }
  std::cout << "wrote " << argv[1] << "/model.pt and reference.pt\n";
  return 0;
}
