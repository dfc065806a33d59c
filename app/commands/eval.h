// `pconv eval`: the model against OpenCV's Telea and Navier-Stokes inpainting, per hole-ratio
// bin, on centre crops of a folder of photos; table on stdout, Markdown, CSV, JSON and a
// picture grid in the output folder.
#pragma once

#include "../common.h"

#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>

namespace pconv::app {

struct EvalOptions {
  std::string data_dir;
  std::string model;
  std::string out_dir = "pconv-eval";
  int64_t size = 512;
  int64_t per_bin = 0;
  uint64_t seed = 0;
  double thin_strokes = 0.0;
  double radius = 3.0;
  int64_t examples = 1;
  bool no_baselines = false;
  InferenceCliOptions inference;
  CommonOptions common;
};

void setup_eval(CLI::App& app);
void run_eval(const EvalOptions& options);

}  // namespace pconv::app
