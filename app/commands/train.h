// `pconv train`: trains (or fine-tunes, or resumes) a partial-convolution UNet on a folder of
// photos, writing logs, sample grids, checkpoints and the final model into a run folder.
#pragma once

#include "../common.h"

#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>

namespace pconv::app {

struct TrainOptions {
  CommonOptions common;
  std::string data_dir;
  std::string validation_dir;
  std::string out_dir = "runs/pconv";
  int64_t size = 256;
  int64_t batch = 4;
  int64_t steps = 1000;
  double learning_rate = 0;  // 0: 2e-4, or 5e-5 with --finetune
  bool finetune = false;
  int64_t depth = 7;
  int64_t width = 64;
  int64_t max_width = 512;
  double loss_valid = 1.0, loss_hole = 6.0, loss_perceptual = 0.05, loss_style = 120.0,
         loss_tv = 0.1;
  std::string vgg;
  std::string init_model;
  std::string mask_dir;
  bool masks_white_valid = false;
  double thin_strokes = 0.25;
  int workers = 2;
  uint64_t seed = 0;
  bool resume = false;
  int64_t sample_every = 500;
  int64_t checkpoint_every = 500;
  int64_t validate_every = 500;
  int64_t validation_count = 32;
  bool validation_spread = true;  // no option: false only for a resumed run from before it
  bool half_weights = false;
  bool channels_last = false;
  int64_t timeout_seconds = 300;
  std::string amp = "off";
  std::string command_line;
};

void setup_train(CLI::App& app);
void run_train(const TrainOptions& options);

}  // namespace pconv::app
