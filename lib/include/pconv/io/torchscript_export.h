// TorchScript export of a PConvUNet: a module that Python's torch.jit.load (or LibTorch's
// torch::jit::load) runs without pconv, computing what PConvUNet::forward computes in eval mode.
#pragma once

#include <pconv/io/model_file.h>
#include <pconv/nn/pconv_unet.h>

#include <torch/csrc/jit/api/module.h>

#include <filesystem>

namespace pconv::io {

/// Name of the extra file in an exported module that holds the architecture and the model
/// metadata as JSON (Python: torch.jit.load(path, _extra_files={"pconv.json": ""})).
inline constexpr const char* kTorchScriptMetadataFile = "pconv.json";

/// Builds the TorchScript module for `model`. Its submodules and their parameters and buffers
/// carry the same names as in `model` ("encoder1.weight", "encoder_bn2.running_mean", ...), on
/// the CPU, copied (later changes to `model` do not reach the module). Its method
///
///   forward(image, mask) -> (output, output_mask)
///
/// takes the image (N, C, H, W), H and W multiples of 2^depth, and the mask (N or 1, 1, H, W),
/// 1 = valid, 0 = hole, and returns the network output and the final mask, as
/// PConvUNet::forward does in eval mode (BatchNorm uses its running statistics, whatever mode
/// `model` is in). The source is generated with every layer unrolled; partial-convolution
/// window sums are exact, so results match the C++ forward to float rounding.
torch::jit::Module to_torchscript(nn::PConvUNet& model);

/// Writes to_torchscript(model) to `path`, atomically, with `metadata` and the architecture in
/// the extra file kTorchScriptMetadataFile. Throws pconv::InputError naming the file if it
/// cannot be written.
void export_torchscript(nn::PConvUNet& model, const ModelMetadata& metadata,
                        const std::filesystem::path& path);

}  // namespace pconv::io
