// `pconv export MODEL -o OUT`: writes a pconv model file as TorchScript, which Python's
// torch.jit.load and LibTorch's torch::jit::load run without pconv.
#pragma once

#include <CLI/CLI.hpp>

#include <string>

namespace pconv::app {

struct ExportOptions {
  std::string model;
  std::string out;  // empty: the model's path with the extension .ts
};

void setup_export(CLI::App& app);
void run_export(const ExportOptions& options);

}  // namespace pconv::app
