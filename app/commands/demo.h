// `pconv demo`: runs a stack of PartialConv2d layers over a synthetic image with a hole and
// shows, layer by layer, how the hole shrinks as the mask is updated.
#pragma once

#include "../common.h"

#include <CLI/CLI.hpp>

#include <cstdint>

namespace pconv::app {

struct DemoOptions {
  CommonOptions common;
  int64_t size = 256;
  double hole_ratio = 0.25;
  int64_t layers = 7;
  int64_t width = 32;
  uint64_t seed = 0;
};

void setup_demo(CLI::App& app);
void run_demo(const DemoOptions& options);

}  // namespace pconv::app
