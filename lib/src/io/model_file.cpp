#include "pconv/io/model_file.h"

#include "file_problem.h"
#include "stored_tensor.h"

#include "pconv/error.h"
#include "pconv/io/atomic_file.h"
#include "pconv/io/torchscript_export.h"

#include <ATen/ATen.h>
#include <c10/util/StringUtil.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

namespace pconv::io {
namespace {

constexpr int64_t kFormatVersion = 1;
constexpr const char* kMagic = "pconv-model";
// The record that every checkpoint of train::Trainer holds (the run's options, as text).
constexpr const char* kCheckpointRecord = "identity";

// Whether `archive` holds a string under `key` (equal to `expected` when that is given).
bool holds_string(torch::serialize::InputArchive& archive, const char* key,
                  const char* expected = nullptr) {
  c10::IValue value;
  return archive.try_read(key, value) && value.isString() &&
         (expected == nullptr || value.toStringRef() == expected);
}

}  // namespace

void save_model(const std::filesystem::path& path, nn::PConvUNet& model,
                const ModelMetadata& metadata, bool half_weights) {
  torch::serialize::OutputArchive archive;
  archive.write("magic", c10::IValue(std::string(kMagic)));
  archive.write("format", c10::IValue(kFormatVersion));
  const auto& options = model->options;
  archive.write("options.depth", c10::IValue(options.depth()));
  archive.write("options.base_width", c10::IValue(options.base_width()));
  archive.write("options.max_width", c10::IValue(options.max_width()));
  archive.write("options.image_channels", c10::IValue(options.image_channels()));
  archive.write("meta.training_data", c10::IValue(metadata.training_data));
  archive.write("meta.command", c10::IValue(metadata.command));
  archive.write("meta.created", c10::IValue(metadata.created));
  archive.write("meta.steps", c10::IValue(metadata.steps));
  archive.write("meta.image_size", c10::IValue(metadata.image_size));
  c10::Dict<std::string, double> metrics;
  for (const auto& [name, value] : metadata.metrics) metrics.insert(name, value);
  archive.write("meta.metrics", c10::IValue(metrics));

  torch::serialize::OutputArchive weights;
  torch::NoGradGuard no_grad;
  for (const auto& item : model->named_parameters()) {
    const auto& value = item.value();
    weights.write(item.key(),
                  half_weights && value.is_floating_point() ? value.to(at::kHalf) : value);
  }
  for (const auto& item : model->named_buffers()) {
    const auto& value = item.value();
    weights.write(item.key(),
                  half_weights && value.is_floating_point() ? value.to(at::kHalf) : value,
                  /*is_buffer=*/true);
  }
  archive.write("weights", weights);

  std::ostringstream bytes;
  archive.save_to(bytes);
  write_file_atomically(path, bytes.str());
}

nn::PConvUNet load_model(const std::filesystem::path& path, ModelMetadata* metadata) {
  const std::string name = path.string();
  if (const auto problem = file_problem(path, "model file"); !problem.empty()) {
    throw ModelError(name + ": " + problem);
  }
  // Read once: checked against the zip's checksums, loaded, and its records' sizes compared.
  const auto bytes = read_archive(name);
  if (const auto damaged = first_damaged_record(bytes); !damaged.empty()) {
    throw ModelError(name + ": is damaged (the bytes of its record " + damaged +
                     " do not match their checksum)");
  }
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(bytes.data(), bytes.size(), at::kCPU);
    if (!holds_string(archive, "magic", kMagic)) {
      throw ModelError(
          name + (holds_string(archive, kCheckpointRecord)
                      ? ": a training checkpoint, not a model file (the run writes model.pt next "
                        "to it when it ends; to end it now, resume it with --steps set to the "
                        "step it is at)"
                  : stored_kind(path) == StoredKind::kExport
                      ? ": a TorchScript export of a pconv model (for torch.jit.load), not a "
                        "model file: give the model it was exported from"
                      : ": not a pconv model file"));
    }
    c10::IValue value;
    archive.read("format", value);
    if (value.toInt() > kFormatVersion) {
      throw ModelError(name + ": model format " + std::to_string(value.toInt()) +
                       " is newer than this pconv reads (" + std::to_string(kFormatVersion) + ")");
    }
    auto read_int = [&](const char* key) {
      c10::IValue item;
      archive.read(key, item);
      return item.toInt();
    };
    nn::PConvUNetOptions options;
    options.depth(read_int("options.depth"))
        .base_width(read_int("options.base_width"))
        .max_width(read_int("options.max_width"))
        .image_channels(read_int("options.image_channels"));
    // The ranges pconv train makes (and a little room): anything else is a damaged or foreign
    // file, and building it could take all the memory.
    if (options.depth() < 1 || options.depth() > 10 || options.base_width() < 1 ||
        options.max_width() < options.base_width() || options.max_width() > 8192 ||
        options.image_channels() < 1 || options.image_channels() > 4) {
      throw ModelError(
          name + ": its architecture (depth " + std::to_string(options.depth()) + ", widths " +
          std::to_string(options.base_width()) + ".." + std::to_string(options.max_width()) + ", " +
          std::to_string(options.image_channels()) + " channels) is not one pconv makes");
    }
    nn::PConvUNet model(options);

    torch::serialize::InputArchive weights;
    archive.read("weights", weights);
    torch::NoGradGuard no_grad;
    std::vector<at::Tensor> loaded;
    for (auto& item : model->named_parameters()) {
      at::Tensor stored;
      weights.read(item.key(), stored);
      if (stored.sizes() != item.value().sizes()) {
        throw ModelError(name + ": weight '" + item.key() + "' has the wrong shape");
      }
      if (!has_all_its_bytes(stored)) {
        throw ModelError(name + ": weight '" + item.key() + "' is truncated");
      }
      // A diverged training run or a damaged file; the network would fill holes with black.
      if (stored.is_floating_point() && !stored.isfinite().all().item<bool>()) {
        throw ModelError(name + ": weight '" + item.key() + "' is not finite (NaN or infinity)");
      }
      item.value().copy_(stored);
      loaded.push_back(stored);
    }
    for (auto& item : model->named_buffers()) {
      at::Tensor stored;
      weights.read(item.key(), stored, /*is_buffer=*/true);
      if (stored.sizes() != item.value().sizes()) {
        throw ModelError(name + ": buffer '" + item.key() + "' has the wrong shape");
      }
      if (!has_all_its_bytes(stored)) {
        throw ModelError(name + ": buffer '" + item.key() + "' is truncated");
      }
      item.value().copy_(stored);
      loaded.push_back(stored);
    }
    // Weights the architecture has no place for: a file whose recorded architecture was
    // altered (a deeper net's weights under a smaller depth would otherwise be dropped silently,
    // and the holes filled by what is left).
    std::set<std::string> known{"training"};  // every TorchScript module's own attribute
    for (const auto& item : model->named_parameters()) known.insert(item.key());
    for (const auto& item : model->named_buffers()) known.insert(item.key());
    for (const auto& key : weights.keys()) {
      if (known.count(key) == 0) {
        throw ModelError(c10::str(name, ": holds a weight '", key,
                                  "' that its architecture (depth ", options.depth(),
                                  ") has no place for: a damaged or altered file"));
      }
    }
    if (!records_fill(bytes, loaded)) {
      throw ModelError(name +
                       ": is truncated (its weights have fewer bytes than their shapes need)");
    }
    if (metadata != nullptr) {
      auto read_string = [&](const char* key) {
        c10::IValue item;
        archive.read(key, item);
        return item.toStringRef();
      };
      metadata->training_data = read_string("meta.training_data");
      metadata->command = read_string("meta.command");
      metadata->created = read_string("meta.created");
      metadata->steps = read_int("meta.steps");
      metadata->image_size = read_int("meta.image_size");
      c10::IValue metrics;
      archive.read("meta.metrics", metrics);
      metadata->metrics.clear();
      for (const auto& entry : metrics.toGenericDict()) {
        metadata->metrics[entry.key().toStringRef()] = entry.value().toDouble();
      }
    }
    model->eval();
    return model;
  } catch (const ModelError&) {
    throw;
  } catch (const std::exception& error) {
    const std::string reason = brief(error);
    // LibTorch's words for a zip that is none of its archives ("[enforce fail at
    // inline_container.cc:...]", no version record), or for one of tensors alone (torch.save of
    // a tensor or a state_dict: no constants.pkl): a sound file, but not a model.
    for (const char* foreign : {"enforce fail", "hasRecord(\"version\")", "constants.pkl"}) {
      if (reason.find(foreign) != std::string::npos) {
        throw ModelError(name +
                         ": not a pconv model file (a zip archive of something else, such "
                         "as tensors saved by torch.save)");
      }
    }
    throw ModelError(name + ": cannot read the model (not a pconv model, or truncated: " + reason +
                     ")");
  }
}

StoredKind stored_kind(const std::filesystem::path& path) {
  // Only a regular file that is a zip archive can be either; anything else is not read further
  // (opening a fifo would wait for a writer).
  std::error_code error;
  if (!std::filesystem::is_regular_file(path, error)) return StoredKind::kOther;
  std::ifstream file(path, std::ios::binary);
  char signature[4] = {};
  if (!file.read(signature, sizeof signature) || std::string(signature, 4) != "PK\x03\x04") {
    return StoredKind::kOther;
  }
  file.close();
  try {
    // Models and checkpoints are TorchScript archives, with code records; a tensor image is a
    // pickle without any. The zip's directory says which, before anything is loaded.
    const auto records = caffe2::serialize::PyTorchStreamReader(path.string()).getAllRecords();
    const bool scripted = std::any_of(records.begin(), records.end(), [](const std::string& name) {
      return name.rfind("code/", 0) == 0 || name.find("/code/") != std::string::npos;
    });
    if (!scripted) return StoredKind::kOther;
    const std::string metadata = std::string("extra/") + kTorchScriptMetadataFile;
    if (std::find(records.begin(), records.end(), metadata) != records.end()) {
      return StoredKind::kExport;
    }
    torch::serialize::InputArchive archive;
    archive.load_from(path.string(), at::kCPU);
    if (holds_string(archive, "magic", kMagic)) return StoredKind::kModel;
    if (holds_string(archive, kCheckpointRecord)) return StoredKind::kCheckpoint;
  } catch (const std::exception&) {
    // not an archive of modules (a tensor image, a damaged file): neither
  }
  return StoredKind::kOther;
}

}  // namespace pconv::io
