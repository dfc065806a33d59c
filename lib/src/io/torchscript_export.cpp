#include "pconv/io/torchscript_export.h"

#include "../check_argument.h"

#include "pconv/io/atomic_file.h"
#include "pconv/version.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace pconv::io {
namespace {

// The decoder's LeakyReLU slope, as in PConvUNetImpl::forward (the parity tests guard it).
constexpr double kDecoderSlope = 0.2;

// The shortest decimal text that reads back as exactly `value`, always a float literal.
std::string float_literal(double value) {
  PCONV_CHECK_ARGUMENT(std::isfinite(value), "export_torchscript: cannot write ", value,
                       " as a literal");
  char text[32];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(text, sizeof text, "%.*g", precision, value);
    if (std::strtod(text, nullptr) == value) break;
  }
  std::string literal = text;
  if (literal.find_first_of(".e") == std::string::npos) literal += ".0";
  return literal;
}

std::string int_pair(int64_t first, int64_t second) {
  return "[" + std::to_string(first) + ", " + std::to_string(second) + "]";
}

// What one partial convolution needs in the generated source.
struct ConvGeometry {
  std::string name;  // the submodule, e.g. "encoder1"
  std::string kernel, stride, padding;
  std::string window;  // inputs a full window sees, as a float literal
  bool bias;
};

ConvGeometry conv_geometry(const std::string& name, const nn::PartialConv2d& conv,
                           int64_t window_channels) {
  const auto& options = conv->options;
  const auto& kernel = *options.kernel_size();
  const auto& stride = *options.stride();
  const auto& padding = *options.padding();
  // The exported window sums are average pools, which have no dilation and no groups; the UNet
  // builds neither.
  PCONV_CHECK_ARGUMENT(
      options.groups() == 1 && (*options.dilation())[0] == 1 && (*options.dilation())[1] == 1,
      "export_torchscript: ", name, " has groups or dilation, which export does not support");
  return {name,
          int_pair(kernel[0], kernel[1]),
          int_pair(stride[0], stride[1]),
          int_pair(padding[0], padding[1]),
          float_literal(static_cast<double>(window_channels * kernel[0] * kernel[1])),
          conv->bias.defined()};
}

void emit_conv(std::ostringstream& source, const ConvGeometry& conv, const std::string& input,
               const std::string& counts, const std::string& new_mask) {
  source << "    ratio, " << new_mask << " = self._window_terms(" << counts << ", " << conv.window
         << ", " << conv.kernel << ", " << conv.stride << ", " << conv.padding << ")\n"
         << "    x = torch.conv2d(" << input << ", self." << conv.name << ".weight, None, "
         << conv.stride << ", " << conv.padding << ")\n";
  if (conv.bias) {
    source << "    x = x * ratio + self." << conv.name << ".bias.view([1, -1, 1, 1]) * " << new_mask
           << "\n";
  } else {
    source << "    x = x * ratio\n";
  }
}

void emit_batch_norm(std::ostringstream& source, const std::string& name,
                     const torch::nn::BatchNorm2d& bn) {
  const auto& options = bn->options;
  PCONV_CHECK_ARGUMENT(options.affine() && options.track_running_stats(),
                       "export_torchscript: ", name,
                       " must be affine and track running statistics");
  const std::string self = "self." + name;
  source << "    x = torch.batch_norm(x, " << self << ".weight, " << self << ".bias, " << self
         << ".running_mean, " << self << ".running_var, False, 0.0, "
         << float_literal(options.eps()) << ", True)\n";
}

// Window sums by an average pool with divisor 1: sums of whole numbers, exact on every device
// (a convolution with a ones kernel may be rounded by cuDNN's Winograd or FFT algorithms). The
// ratio is selected, never multiplied, so that an empty window gives exactly 0.
constexpr const char* kWindowTermsSource = R"(
def _window_terms(self, counts: Tensor, window: float, kernel: List[int], stride: List[int],
                  padding: List[int]) -> Tuple[Tensor, Tensor]:
    sums = torch.avg_pool2d(counts, kernel, stride, padding, False, True, 1)
    seen = sums > 0
    ratio = torch.where(seen, torch.full_like(sums, window) / sums, torch.zeros_like(sums))
    return ratio, seen.to(sums.dtype)
)";

// forward(), unrolled: the steps of PConvUNetImpl::forward with every width and kernel fixed.
std::string forward_source(const nn::PConvUNetImpl& model) {
  const auto& options = model.options;
  const int64_t depth = options.depth();
  const std::string channels = std::to_string(options.image_channels());
  const std::string multiple = std::to_string(model.size_multiple());
  const int kFloat32 = static_cast<int>(at::kFloat);
  const int kFloat64 = static_cast<int>(at::kDouble);
  std::ostringstream source;
  // TorchScript compiled from C++ knows no exception classes: assert raises AssertionError.
  source << "def forward(self, image: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor]:\n"
         << "    assert image.dim() == 4 and image.size(1) == " << channels
         << ", \"pconv model: image must be (N, " << channels
         << ", H, W); got {}\".format(image.shape)\n"
         << "    assert image.size(2) % " << multiple << " == 0 and image.size(3) % " << multiple
         << " == 0, \"pconv model: image height and width must be multiples of " << multiple
         << " (2^depth); got {}\".format(image.shape)\n"
         << "    assert mask.dim() == 4 and mask.size(1) == 1 and (mask.size(0) == 1 or "
            "mask.size(0) == image.size(0)) and mask.size(2) == image.size(2) and mask.size(3) "
            "== image.size(3), \"pconv model: mask must be (N or 1, 1, H, W) for image {}; got "
            "{}\".format(image.shape, mask.shape)\n"
         << "    assert mask.is_floating_point(), \"pconv model: mask must be floating point\"\n"
         // Nor dtype names: a dtype is its ScalarType number (what torch.jit.save writes too).
         << "    terms_dtype = " << kFloat32 << "  # torch.float32\n"
         << "    if image.dtype == " << kFloat64 << ":  # torch.float64\n"
         << "        terms_dtype = " << kFloat64
         << "\n"
         // The mask pyramid: mask{L} is the one-channel mask of encoder level L's output.
         << "    mask0 = mask.detach().to(terms_dtype)\n";

  for (int64_t level = 1; level <= depth; ++level) {
    const auto& conv = model.encoder[level - 1];
    const std::string below = std::to_string(level - 1);
    const std::string name = "encoder" + std::to_string(level);
    source << "    # " << name << "\n"
           << "    skip" << below << " = " << (level == 1 ? "image" : "x") << " * mask" << below
           << ".to(" << (level == 1 ? "image" : "x") << ".dtype)\n";
    // The count is channels x mask and the window channels x k x k: the channels cancel.
    emit_conv(source, conv_geometry(name, conv, 1), "skip" + below, "mask" + below,
              "mask" + std::to_string(level));
    if (level >= 2) {
      emit_batch_norm(source, "encoder_bn" + std::to_string(level), model.encoder_bn[level - 2]);
    }
    source << "    x = torch.relu(x)\n";
  }

  source << "    current_mask = mask" << depth << "\n";
  for (int64_t level = depth; level >= 1; --level) {
    const auto& conv = model.decoder[depth - level];
    const std::string below = std::to_string(level - 1);
    const std::string name = "decoder" + std::to_string(level);
    const int64_t up_channels = model.encoder_width(level);
    const int64_t skip_channels = model.encoder_width(level - 1);
    PCONV_CHECK_ARGUMENT(conv->options.in_channels() == up_channels + skip_channels,
                         "export_torchscript: ", name, " has ", conv->options.in_channels(),
                         " input channels; expected ", up_channels, " + ", skip_channels);
    std::string size = "[skip";  // the size of the skip input: [skipN.size(2), skipN.size(3)]
    size.append(below).append(".size(2), skip").append(below).append(".size(3)]");
    source << "    # " << name << "\n"
           << "    up_mask = torch.upsample_nearest2d(current_mask, " << size << ")\n"
           << "    x = torch.upsample_nearest2d(x, " << size << ")\n"
           << "    x = torch.cat([x * up_mask.to(x.dtype), skip" << below << "], 1)\n"
           << "    counts = up_mask * " << float_literal(static_cast<double>(up_channels))
           << " + mask" << below << " * " << float_literal(static_cast<double>(skip_channels))
           << "\n";
    emit_conv(source, conv_geometry(name, conv, up_channels + skip_channels), "x", "counts",
              "current_mask");
    if (level >= 2) {
      emit_batch_norm(source, "decoder_bn" + std::to_string(level),
                      model.decoder_bn[depth - level]);
      source << "    x = torch.leaky_relu(x, " << float_literal(kDecoderSlope) << ")\n";
    }
  }
  source << "    return x, current_mask.to(mask.dtype)\n";
  return source.str();
}

std::string json_string(const std::string& text) {
  std::string quoted = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\') {
      quoted += '\\';
      quoted += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\u%04x", static_cast<unsigned>(c));
      quoted += escaped;
    } else {
      quoted += c;
    }
  }
  return quoted + "\"";
}

std::string json_number(double value) {
  return std::isfinite(value) ? float_literal(value) : "null";  // JSON has no inf or NaN
}

std::string metadata_json(const nn::PConvUNetImpl& model, const ModelMetadata& metadata) {
  const auto& options = model.options;
  std::ostringstream json;
  json << "{\n"
       << "  \"format\": \"pconv-torchscript\",\n"
       << "  \"pconv_version\": " << json_string(kVersion) << ",\n"
       << R"(  "architecture": {"name": "PConvUNet", "depth": )" << options.depth()
       << ", \"base_width\": " << options.base_width() << ", \"max_width\": " << options.max_width()
       << ", \"image_channels\": " << options.image_channels()
       << ", \"size_multiple\": " << model.size_multiple() << "},\n"
       << "  \"forward\": "
       << json_string(
              "forward(image (N, C, H, W) RGB in [0, 1], mask (N or 1, 1, H, W) 1 = valid 0 = "
              "hole) -> (output, output_mask)")
       << ",\n"
       << "  \"training_data\": " << json_string(metadata.training_data) << ",\n"
       << "  \"command\": " << json_string(metadata.command) << ",\n"
       << "  \"created\": " << json_string(metadata.created) << ",\n"
       << "  \"steps\": " << metadata.steps << ",\n"
       << "  \"image_size\": " << metadata.image_size << ",\n"
       << "  \"metrics\": {";
  const char* separator = "";
  for (const auto& [name, value] : metadata.metrics) {
    json << separator << json_string(name) << ": " << json_number(value);
    separator = ", ";
  }
  json << "}\n}\n";
  return json.str();
}

// A script module holding copies of `module`'s own parameters and buffers, on the CPU.
torch::jit::Module parameter_holder(const std::string& class_name, torch::nn::Module& module,
                                    const std::shared_ptr<torch::jit::CompilationUnit>& unit) {
  // Mangled: the UNet's layers of one kind share a class name but not their attributes.
  torch::jit::Module holder(c10::QualifiedName("__torch__.pconv." + class_name), unit,
                            /*shouldMangle=*/true);
  holder.register_attribute("training", c10::BoolType::get(), false);
  for (const auto& item : module.named_parameters(/*recurse=*/false)) {
    // Parameters require gradients, as those of a torch.nn.Module do.
    holder.register_parameter(item.key(), item.value().detach().cpu().clone().requires_grad_(),
                              /*is_buffer=*/false);
  }
  for (const auto& item : module.named_buffers(/*recurse=*/false)) {
    holder.register_buffer(item.key(), item.value().detach().cpu().clone());
  }
  return holder;
}

}  // namespace

torch::jit::Module to_torchscript(nn::PConvUNet& model) {
  torch::NoGradGuard no_grad;
  auto unit = std::make_shared<torch::jit::CompilationUnit>();
  torch::jit::Module module(c10::QualifiedName("__torch__.pconv.PConvUNet"), unit);
  module.register_attribute("training", c10::BoolType::get(), false);
  for (const auto& child : model->named_children()) {
    const bool conv = child.value()->as<nn::PartialConv2d>() != nullptr;
    PCONV_CHECK_ARGUMENT(conv || child.value()->as<torch::nn::BatchNorm2d>() != nullptr,
                         "export_torchscript: unexpected submodule ", child.key());
    const std::string class_name = conv ? "PartialConv2d" : "BatchNorm2d";
    module.register_module(child.key(), parameter_holder(class_name, *child.value(), unit));
  }
  module.define(forward_source(*model) + kWindowTermsSource);
  return module;
}

void export_torchscript(nn::PConvUNet& model, const ModelMetadata& metadata,
                        const std::filesystem::path& path) {
  const torch::jit::Module module = to_torchscript(model);
  std::ostringstream bytes;
  module.save(bytes, {{kTorchScriptMetadataFile, metadata_json(*model, metadata)}});
  write_file_atomically(path, bytes.str());
}

}  // namespace pconv::io
