#include "export.h"

#include "../common.h"

#include <pconv/error.h>
#include <pconv/io/image_file.h>
#include <pconv/io/model_file.h>
#include <pconv/io/torchscript_export.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>

namespace pconv::app {

void setup_export(CLI::App& app) {
  auto options = std::make_shared<ExportOptions>();
  auto* command = app.add_subcommand(
      "export",
      "Write a pconv model file as TorchScript, for Python (torch.jit.load) or C++ "
      "(torch::jit::load) without pconv");
  command->add_option("model", options->model, "Model file (model.pt from pconv train)")
      ->required();
  command->add_option("-o,--out", options->out,
                      "TorchScript file to write (default: the model's name with .ts); "
                      "replaced atomically if it exists");
  command->footer(
      "In Python:\n"
      "  net = torch.jit.load('model.ts').eval()\n"
      "  with torch.no_grad():\n"
      "      output, output_mask = net(image, mask)\n"
      "image: float (N, C, H, W), RGB (not OpenCV's BGR), values in [0, 1], H and W multiples "
      "of 2^depth (see pconv info).\n"
      "mask: float (N or 1, 1, H, W), 1 = valid, 0 = hole (the paper's convention; pconv "
      "inpaint's mask images are white = hole, so pass 1 - holes).\n"
      "output: the raw network output, what pconv's network computes in eval mode; keep the "
      "known pixels with image * mask + output * (1 - mask). output_mask: 1 where the network "
      "saw valid input.\n"
      "The architecture and training metadata are in the extra file pconv.json:\n"
      "  files = {'pconv.json': ''}; torch.jit.load('model.ts', _extra_files=files)\n\n" +
      std::string(kExitCodesHelp));
  command->callback([options] { run_export(*options); });
}

void run_export(const ExportOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  io::ModelMetadata metadata;
  const std::filesystem::path out =
      options.out.empty() ? std::filesystem::path(options.model).replace_extension(".ts")
                          : std::filesystem::path(options.out);
  // A TorchScript file under an image's name would be taken for one (.pt is also a name for
  // TorchScript, as in PyTorch; the check below keeps a model file from being replaced).
  if (io::has_image_extension(out) && !io::is_tensor_image(out)) {
    throw CLI::ValidationError("-o", "'" + out.string() +
                                         "' has an image's extension; TorchScript goes to a .ts "
                                         "(or .pt) file");
  }
  // Read first: a file that is no model (an export already, a checkpoint) is said as such
  // (exit 4), not that its export would go over it.
  auto model = io::load_model(options.model, &metadata);
  const std::string option = options.out.empty() ? "the default output (give -o)" : "-o";
  if (out.filename().empty()) {
    throw CLI::ValidationError(option, "'" + out.string() + "' names a folder; give the export's " +
                                           "file name (e.g. " + (out / "model.ts").string() + ")");
  }
  refuse_overwriting_inputs(out, option, {{options.model, "the model"}},
                            /*may_replace_export=*/true);
  // As inpaint's -o: missing folders are made (one that cannot be made shows up as the
  // write's error, naming the file), and taken away again if the export fails.
  std::optional<OutputFolder> out_folder;
  if (out.has_parent_path()) {
    try {
      out_folder.emplace(out.parent_path());
    } catch (const InputError&) {
    }
  }
  io::export_torchscript(model, metadata, out);
  if (out_folder) out_folder->keep();
  const std::chrono::duration<double> seconds = std::chrono::steady_clock::now() - start;
  const auto& o = model->options;
  spdlog::info(
      "wrote {} ({:.1f} MB): TorchScript of PConvUNet depth {}, widths {}..{}, "
      "forward(image, mask) -> (output, output_mask), in {:.2f} s",
      out.string(), static_cast<double>(std::filesystem::file_size(out)) / 1e6, o.depth(),
      o.base_width(), model->encoder_width(o.depth()), seconds.count());
}

}  // namespace pconv::app
