// Pieces that several pconv subcommands share: logging set-up, device and thread choice.
#pragma once

#include <CLI/CLI.hpp>
#include <c10/core/Device.h>

#include <string>

namespace pconv::app {

/// Options every subcommand accepts.
struct CommonOptions {
  std::string device = "auto";
  int threads = 0;  // 0: LibTorch's default
};

/// Adds --device and --threads to `command`, stored in `options`.
void add_common_options(CLI::App& command, CommonOptions& options);

/// Resolves "auto", "cpu", "cuda" or "cuda:N" to a device that exists here; throws
/// CLI::ValidationError naming the problem otherwise. Applies --threads.
c10::Device resolve_device(const CommonOptions& options);

/// "pconv X.Y.Z (LibTorch A.B.C)".
std::string version_string();

}  // namespace pconv::app
