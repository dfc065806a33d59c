#include "common.h"

#include <pconv/version.h>

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/cuda.h>
#include <torch/headeronly/version.h>

#include <fmt/format.h>

namespace pconv::app {

void add_common_options(CLI::App& command, CommonOptions& options) {
  command
      .add_option("--device", options.device,
                  "Where to compute: auto (a CUDA GPU if there is one, else the CPU), cpu, cuda "
                  "or cuda:N")
      ->capture_default_str();
  command.add_option("--threads", options.threads, "CPU threads for LibTorch (0: its default)")
      ->check(CLI::Range(0, 1024))
      ->capture_default_str();
}

c10::Device resolve_device(const CommonOptions& options) {
  if (options.threads > 0) at::set_num_threads(options.threads);
  if (options.device == "auto") {
    return torch::cuda::is_available() ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
  }
  c10::Device device(c10::kCPU);
  try {
    device = c10::Device(options.device);
  } catch (const c10::Error&) {
    throw CLI::ValidationError("--device", "'" + options.device +
                                               "' is not a device; use auto, cpu, cuda or cuda:N");
  }
  if (device.is_cpu()) return device;
  if (!device.is_cuda()) {
    throw CLI::ValidationError("--device", "'" + options.device + "' is not supported; use auto, "
                                                                  "cpu, cuda or cuda:N");
  }
  const auto count = static_cast<int64_t>(torch::cuda::device_count());
  if (count == 0) {
    throw CLI::ValidationError("--device", "'" + options.device +
                                               "' asked for, but no CUDA GPU is available here");
  }
  if (!device.has_index()) device.set_index(0);
  if (device.index() >= count) {
    throw CLI::ValidationError("--device", fmt::format("'{}' asked for, but there are only {} "
                                                       "CUDA GPU(s)",
                                                       options.device, count));
  }
  return device;
}

std::string version_string() {
  return fmt::format("pconv {} (LibTorch {})", kVersion, TORCH_VERSION);
}

}  // namespace pconv::app
