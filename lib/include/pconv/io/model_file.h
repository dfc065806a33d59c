// pconv model files: one file with the network's weights, its architecture options and
// metadata (training data, steps, date, metrics), written atomically, read with clear errors.
#pragma once

#include <pconv/nn/pconv_unet.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>

namespace pconv::io {

/// What a model file says about where the model came from.
struct ModelMetadata {
  std::string training_data;              // e.g. the training folder and its size
  std::string command;                    // the command line that trained it
  std::string created;                    // ISO 8601 date and time
  int64_t steps = 0;                      // optimisation steps taken
  int64_t image_size = 0;                 // training crop size
  std::map<std::string, double> metrics;  // e.g. val_psnr, val_ssim
};

/// Writes `model` (weights, BatchNorm statistics, options) and `metadata` to `path`, atomically.
/// With `half_weights` floating-point tensors are stored in float16 (half the size); they are
/// read back as float32.
void save_model(const std::filesystem::path& path, nn::PConvUNet& model,
                const ModelMetadata& metadata, bool half_weights = false);

/// Reads a model file written by save_model. Throws pconv::ModelError naming the file if it is
/// missing, truncated, corrupt, or not a pconv model.
nn::PConvUNet load_model(const std::filesystem::path& path, ModelMetadata* metadata = nullptr);

/// What a file is to pconv, for commands that must not replace a model, a checkpoint or an
/// export with their output.
enum class StoredKind {
  kOther,       // anything else, missing or unreadable included
  kModel,       // a model file (save_model)
  kCheckpoint,  // a training checkpoint (train::Trainer's checkpoint.pt)
  kExport,      // a TorchScript export (export_torchscript, with its kTorchScriptMetadataFile)
};
StoredKind stored_kind(const std::filesystem::path& path);

}  // namespace pconv::io
