// `pconv masks`: writes generated irregular hole masks as PNG files (white = hole), for
// training, evaluation or a look at what the generator makes.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>

namespace pconv::app {

struct MasksOptions {
  int64_t count = 16;
  std::string out_dir;
  std::string size = "512x512";
  uint64_t seed = 0;
  double min_ratio = 0.01;
  double max_ratio = 0.6;
  double thin_strokes = 0.0;  // the masks of eval and of earlier versions
  bool overwrite = false;
};

void setup_masks(CLI::App& app);
void run_masks(const MasksOptions& options);

}  // namespace pconv::app
