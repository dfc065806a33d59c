#include "info.h"

#include <pconv/io/model_file.h>

#include <fmt/format.h>

#include <filesystem>
#include <memory>
#include <string>

namespace pconv::app {

void setup_info(CLI::App& app) {
  auto options = std::make_shared<InfoOptions>();
  auto* command = app.add_subcommand(
      "info", "Print what a pconv model file holds: architecture, size and training metadata");
  command->add_option("model", options->model, "Model file (model.pt from pconv train)")
      ->required();
  command->callback([options] { run_info(*options); });
}

namespace {

// A text from the model file as one printable line: a line break is written \n, as in pconv's
// log lines, and other control characters (a terminal escape) become '?', so that a crafted
// file cannot drive the terminal.
std::string shown(const std::string& text) {
  if (text.empty()) return "(not recorded)";
  std::string line;
  for (const char c : text) {
    if (c == '\n') {
      line += "\\n";
    } else {
      line += static_cast<unsigned char>(c) < 0x20 || c == 0x7f ? '?' : c;
    }
  }
  return line;
}

// 8.22 M, 65.3 K, 812: three significant digits or so, for sizes and counts.
std::string human_size(double value, const char* unit) {
  if (value >= 1e6) return fmt::format("{:.2f} M{}", value / 1e6, unit);
  if (value >= 1e3) return fmt::format("{:.1f} K{}", value / 1e3, unit);
  return fmt::format("{:.0f} {}", value, unit);
}

}  // namespace

void run_info(const InfoOptions& options) {
  io::ModelMetadata metadata;
  auto model = io::load_model(options.model, &metadata);
  int64_t parameters = 0;
  for (const auto& parameter : model->parameters()) parameters += parameter.numel();
  const auto& o = model->options;
  fmt::print("model        {}\n", options.model);
  fmt::print("file size    {}\n",
             human_size(static_cast<double>(std::filesystem::file_size(options.model)), "B"));
  fmt::print("architecture PConvUNet depth {}, widths {}..{}, {} image channels\n", o.depth(),
             o.base_width(), model->encoder_width(o.depth()), o.image_channels());
  fmt::print("parameters   {}\n", human_size(static_cast<double>(parameters), ""));
  fmt::print("input        height and width multiples of {}\n", model->size_multiple());
  fmt::print("trained on   {}\n", shown(metadata.training_data));
  fmt::print("steps        {} at {}x{}\n", metadata.steps, metadata.image_size,
             metadata.image_size);
  fmt::print("created      {}\n", shown(metadata.created));
  fmt::print("command      {}\n", shown(metadata.command));
  for (const auto& [name, value] : metadata.metrics)
    fmt::print("metric       {} = {:.4f}\n", shown(name), value);
}

}  // namespace pconv::app
