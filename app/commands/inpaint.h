// `pconv inpaint`: fill the holes of one image (IMG MASK), or of a folder of images (--input
// DIR --masks DIR|FILE -o DIR) with the model loaded once and the next image read while the
// current one is computed.
#pragma once

#include "../common.h"

#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>

namespace pconv::app {

struct InpaintOptions {
  std::string image;
  std::string mask;
  std::string input_dir;
  std::string masks;
  std::string out;
  std::string model;
  bool white_valid = false;
  bool resize_mask = false;
  bool raw = false;
  std::string strategy = "auto";
  int64_t max_memory_mb = 3072;
  int64_t margin = 96;
  int64_t resize_side = 1024;
  InferenceCliOptions inference;
  std::string compare;
  bool skip_existing = false;
  CommonOptions common;
};

void setup_inpaint(CLI::App& app);
void run_inpaint(const InpaintOptions& options);

}  // namespace pconv::app
