// The trainer: Adam on the inpainting loss over a stream of photo crops with generated masks,
// the paper's two stages, validation, sample grids, a CSV log, atomic checkpoints and an exact
// resume. Reports through callbacks; the library never prints.
#pragma once

#include <pconv/error.h>
#include <pconv/loss/inpainting_loss.h>
#include <pconv/nn/pconv_unet.h>
#include <pconv/train/distributed.h>
#include <pconv/train/mixed_precision.h>

#include <torch/arg.h>
#include <torch/optim/adam.h>
#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace pconv::train {

struct TrainerOptions {
  /// Side of the square training crops.
  TORCH_ARG(int64_t, size) = 256;
  TORCH_ARG(int64_t, batch_size) = 4;
  /// Total optimisation steps of the run (a resumed run continues up to this).
  TORCH_ARG(int64_t, steps) = 1000;
  /// Adam's learning rate; 0 (the default): the paper's, 2e-4, or 5e-5 for fine-tuning.
  TORCH_ARG(double, learning_rate) = 0;
  /// Fine-tuning stage: encoder BatchNorm frozen.
  TORCH_ARG(bool, finetune) = false;
  TORCH_ARG(nn::PConvUNetOptions, model) = {};
  TORCH_ARG(loss::InpaintingLossOptions, loss_weights) = {};
  /// A VGG16 TorchScript file for the perceptual and style terms; empty: pixel terms only.
  TORCH_ARG(std::string, vgg_path) = "";
  /// A pconv model file to start from (e.g. for fine-tuning); empty: random initialisation.
  TORCH_ARG(std::string, init_model) = "";
  /// Threads decoding photos ahead of the model.
  TORCH_ARG(int, workers) = 2;
  TORCH_ARG(uint64_t, seed) = 0;
  TORCH_ARG(c10::Device, device) = c10::Device(c10::kCPU);
  /// A folder of mask images (white = hole) to train with, augmented; empty: generated masks.
  TORCH_ARG(std::string, mask_dir) = "";
  /// The mask images are white where pixels are known (pconv inpaint's --white-valid).
  TORCH_ARG(bool, masks_white_valid) = false;
  /// Hole ratios of the generated training masks.
  TORCH_ARG(double, min_hole_ratio) = 0.01;
  TORCH_ARG(double, max_hole_ratio) = 0.6;
  /// The fraction of the generated masks' strokes that are thin, 1 to 3 pixels wide
  /// (MaskGeneratorOptions::thin_probability). A model that never saw such holes fills them
  /// dark: its last layer learned to pass each known pixel through.
  TORCH_ARG(double, thin_strokes) = 0.25;
  /// Every N steps (0: never; the last step always): sample grid, checkpoint, validation.
  TORCH_ARG(int64_t, sample_every) = 500;
  TORCH_ARG(int64_t, checkpoint_every) = 500;
  TORCH_ARG(int64_t, validate_every) = 500;
  /// Validation photos used (centre crops, fixed masks); 0: all.
  TORCH_ARG(int64_t, validation_count) = 32;
  /// Where validation_count leaves photos out: true takes them evenly across the sorted list
  /// (folders named by source or date are all represented); false the first ones in path
  /// order, as runs before session xii did (`pconv train --resume` of such a run passes false,
  /// from its config.txt, which recorded_settings reads as val_spread 0).
  TORCH_ARG(bool, validation_spread) = true;
  /// Store the final model file's weights in float16 (half the size; read back as float32).
  TORCH_ARG(bool, half_weights) = false;
  /// What the training photos are (e.g. their folder), recorded in the model file.
  TORCH_ARG(std::string, data_description) = "";
  /// The validation photos' folder, recorded in config.txt.
  TORCH_ARG(std::string, validation_description) = "";
  /// Data-parallel training: this process is one rank of the group. batch_size is then the
  /// batch of each rank (the global batch is batch_size * world size); the data is sharded by
  /// rank, gradients are averaged over the ranks after each backward (in buckets), BatchNorm
  /// statistics are synchronised, and only rank 0 writes logs, samples, checkpoints and the
  /// model. Null: one process.
  TORCH_ARG(std::shared_ptr<ProcessGroup>, process_group) = nullptr;
  /// Mixed precision: "off", "bf16" (autocast to bfloat16) or "fp16" (autocast to float16 with
  /// dynamic loss scaling; steps whose gradients overflow are skipped).
  TORCH_ARG(std::string, amp) = "off";
  /// Weights, activations and gradients in channels-last (NHWC) memory format.
  TORCH_ARG(bool, channels_last) = false;
};

struct StepReport {
  int64_t step = 0;  // 1-based: steps done
  std::vector<std::pair<std::string, double>> losses;
  double learning_rate = 0;
  double images_per_second = 0;
};

struct ValidationReport {
  int64_t step = 0;
  double psnr = 0;  // dB, of the composite, mean over the validation images
  double ssim = 0;
  int64_t images = 0;
};

/// Every callback is called on the thread that runs Trainer::run, one at a time (the data
/// workers' warnings are queued and passed on between steps).
struct TrainerCallbacks {
  /// After each step; in a data-parallel run the losses are the means over every rank's part.
  std::function<void(const StepReport&)> on_step;
  std::function<void(const ValidationReport&)> on_validation;
  /// One-line notes worth showing (skipped files, checkpoints, what the loss uses). Those that
  /// warn of something likely wrong (mask files that look inverted) begin with "warning: ".
  std::function<void(const std::string&)> on_message;
  /// Polled between steps (and, in a one-process run, during validation); true saves a
  /// checkpoint and ends the run early. A stop during the last step's validation ends it early
  /// too, with every step done: a resume then validates and writes the model.
  std::function<bool()> should_stop;
};

/// What `run` ended with.
struct RunResult {
  int64_t step = 0;
  bool stopped_early = false;
  std::filesystem::path model_file;  // written when the run reached its last step
  std::vector<ValidationReport> validations;
  /// Fraction of the run's wall time spent waiting for the data workers.
  double data_wait_fraction = 0;
  /// float16 steps of this run skipped for overflowing gradients (they count in `step`).
  int64_t skipped_steps = 0;
};

/// The settings a run folder's config.txt records ("size" -> "256", "data" -> the folder, ...),
/// each with its latest value (a resume that changed it writes it again). Empty where the run
/// has no config.txt; pconv::InputError where it is not one pconv wrote or cannot be read.
std::map<std::string, std::string> recorded_settings(const std::filesystem::path& run_dir);

class Trainer {
 public:
  /// Prepares a run in `run_dir` (created if missing). With `resume` the run continues from
  /// run_dir/checkpoint.pt exactly where it stopped; without it an existing checkpoint is an
  /// error (pconv::InputError) so that no run is overwritten by accident. `command` is
  /// recorded in the model file. Throws pconv::InputError / ModelError for bad inputs, among
  /// them validation files none of which can be read.
  Trainer(TrainerOptions options, std::vector<std::filesystem::path> train_files,
          std::vector<std::filesystem::path> validation_files, std::filesystem::path run_dir,
          bool resume, std::string command = "");

  RunResult run(const TrainerCallbacks& callbacks = {});

  nn::PConvUNet& model() { return model_; }
  int64_t step() const { return step_; }
  /// Examples trained on so far, all ranks together: where the data stream goes on.
  int64_t examples() const { return examples_; }

  /// Files the run writes, relative to its folder.
  static constexpr const char* kCheckpointFile = "checkpoint.pt";
  static constexpr const char* kModelFile = "model.pt";
  static constexpr const char* kLogFile = "log.csv";
  static constexpr const char* kValidationFile = "validation.csv";
  static constexpr const char* kConfigFile = "config.txt";

 private:
  void save_checkpoint() const;
  /// Rank 0, or the only process: the one that writes files.
  bool writes_files() const;
  void load_checkpoint();
  /// On resume: adds to config.txt the settings that differ from the run's so far (or writes
  /// it anew if it is gone), and notes them for run() to report.
  void record_resumed_config();
  /// The validation scores, or nothing where `should_stop` (asked between batches, in one
  /// process only: the ranks of a group validate to the end together) stopped it.
  std::optional<ValidationReport> validate(const std::function<bool()>& should_stop);
  void write_samples(const std::string& name);

  TrainerOptions options_;
  std::vector<std::filesystem::path> train_files_;
  std::vector<std::filesystem::path> validation_files_;
  std::filesystem::path run_dir_;
  std::string command_;
  nn::PConvUNet model_;
  loss::InpaintingLoss loss_;
  std::unique_ptr<torch::optim::Adam> optimizer_;
  std::shared_ptr<void> run_dir_lock_;  // held while this Trainer lives (rank 0)
  std::optional<c10::ScalarType> amp_type_;
  GradScaler scaler_;
  int64_t skipped_steps_ = 0;  // fp16 steps skipped for overflowing gradients, this run
  int64_t step_ = 0;
  // Examples trained on, all ranks together. Kept apart from the step because a run resumed
  // with another number of processes changes the global batch.
  int64_t examples_ = 0;
  torch::Tensor validation_images_;  // (V, 3, S, S) on the device
  torch::Tensor validation_masks_;   // (V, 1, S, S)
  std::vector<std::string> notes_;   // what the constructor found (photos left out, a resume's
                                     // changed settings), reported by run()
};

}  // namespace pconv::train
