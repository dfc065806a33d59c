#include "train.h"

#include <pconv/data/image_folder.h>
#include <pconv/error.h>
#include <pconv/io/folder_lock.h>
#include <pconv/io/model_file.h>
#include <pconv/train/distributed.h>
#include <pconv/train/trainer.h>

#include "../exit_codes.h"

#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace pconv::app {
namespace {

// Builds the trainer and runs it to the end, or to a stop request.
void run_trainer(const train::TrainerOptions& trainer_options,
                 const std::vector<std::filesystem::path>& train_files,
                 const std::vector<std::filesystem::path>& validation_files,
                 const TrainOptions& options);

// Every file and folder under `folder`, at any depth (none if it does not exist).
std::set<std::filesystem::path> folder_entries(const std::filesystem::path& folder);

// --resume: the options the command does not give are the run's own, from its config.txt.
void take_the_runs_settings(const CLI::App& command, TrainOptions& options);

}  // namespace

void setup_train(CLI::App& app) {
  auto options = std::make_shared<TrainOptions>();
  // The paper's largest weight is 120; a weight past float's range would train to NaN.
  auto* command = app.add_subcommand(
      "train", "Train a partial-convolution UNet on a folder of photos, or fine-tune one");
  command->footer(
      "Random crops, generated masks. Writes config.txt, log.csv, checkpoint.pt and, at the end,\n"
      "model.pt into --out; with --val also validation.csv and samples/*.png.\n"
      "Ctrl-C saves a checkpoint; --resume continues it exactly. Data-parallel: start one process\n"
      "per rank with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set (as torchrun\n"
      "does, or scripts/train-parallel.sh N ...); --batch is then per rank.\n\n" +
      std::string(kExitCodesHelp));
  command->add_option("--data", options->data_dir,
                      "Folder of training photos (searched recursively); required, except with "
                      "--resume, which takes the run's own");
  command->add_option("--val", options->validation_dir, "Folder of validation photos");
  command->add_option("-o,--out", options->out_dir, "Run folder")->capture_default_str();
  command
      ->add_option("--size", options->size,
                   "Crop size (a multiple of 2^depth; at least 16, the validation's SSIM "
                   "window needs 11)")
      ->transform(whole_number(16, 4096))
      ->capture_default_str();
  command->add_option("--batch", options->batch, "Batch size")
      ->transform(whole_number(1, 4096))
      ->capture_default_str();
  command->add_option("--steps", options->steps, "Total optimisation steps")
      ->transform(whole_number(1, 100000000))
      ->capture_default_str();
  command
      ->add_option("--lr", options->learning_rate,
                   "Learning rate (default 2e-4; 5e-5 with --finetune)")
      ->check(positive_number(1.0));
  command->add_flag("--finetune", options->finetune,
                    "Fine-tuning stage: encoder BatchNorm frozen, learning rate 5e-5 by default "
                    "(start from a model with --init)");
  command
      ->add_option("--depth", options->depth,
                   "Stride-2 layers of the UNet (paper: 7 at 256, 8 at 512)")
      ->transform(whole_number(1, 10))
      ->capture_default_str();
  command->add_option("--width", options->width, "Channels of the first layer (paper: 64)")
      ->transform(whole_number(1, 1024))
      ->capture_default_str();
  command->add_option("--max-width", options->max_width, "Most channels of any layer (paper: 512)")
      ->transform(whole_number(1, 4096))
      ->capture_default_str();
  command->add_option("--loss-valid", options->loss_valid, "Weight of the valid-pixel L1 term")
      ->check(number_in(0.0, 1e6))
      ->capture_default_str();
  command->add_option("--loss-hole", options->loss_hole, "Weight of the hole-pixel L1 term")
      ->check(number_in(0.0, 1e6))
      ->capture_default_str();
  command
      ->add_option("--loss-perceptual", options->loss_perceptual, "Weight of the perceptual term")
      ->check(number_in(0.0, 1e6))
      ->capture_default_str();
  command->add_option("--loss-style", options->loss_style, "Weight of each style term")
      ->check(number_in(0.0, 1e6))
      ->capture_default_str();
  command->add_option("--loss-tv", options->loss_tv, "Weight of the total-variation term")
      ->check(number_in(0.0, 1e6))
      ->capture_default_str();
  command->add_option("--vgg", options->vgg,
                      "VGG16 TorchScript file for the perceptual and style terms (see README)");
  command->add_option(
      "--masks", options->mask_dir,
      "Folder of mask images (white = hole, unless --white-valid) to train with, randomly "
      "flipped, rotated, dilated, scaled to the crop and cropped; default: generated masks");
  command->add_flag("--white-valid,!--no-white-valid", options->masks_white_valid,
                    "The --masks images are white where pixels are known (as pconv inpaint's "
                    "--white-valid); --no-white-valid: white = hole, also on --resume of a run "
                    "that had --white-valid");
  command
      ->add_option("--thin-strokes", options->thin_strokes,
                   "Fraction of the generated masks' strokes drawn 1 to 3 pixels wide, as "
                   "scratches are (a model that never saw such holes fills them dark)")
      ->check(number_in(0.0, 1.0))
      ->capture_default_str();
  command->add_option("--init", options->init_model,
                      "Start from the weights of this pconv model file (its architecture is the "
                      "default for --depth, --width and --max-width)");
  command->add_option("--workers", options->workers, "Threads decoding photos")
      ->transform(whole_number(0, 64))
      ->capture_default_str();
  command->add_option("--seed", options->seed, "Random seed (data order, crops, masks)")
      ->transform(seed_number())
      ->capture_default_str();
  command->add_flag("--resume", options->resume,
                    "Continue the run in --out from its checkpoint, with the run's settings "
                    "(config.txt) for the options not given (but --device, --threads and "
                    "--timeout: this machine's)");
  command
      ->add_option("--sample-every", options->sample_every,
                   "Steps between sample grids (0: only at the end)")
      ->transform(whole_number(0, 100000000))
      ->capture_default_str();
  command
      ->add_option("--checkpoint-every", options->checkpoint_every,
                   "Steps between checkpoints (0: only at the end)")
      ->transform(whole_number(0, 100000000))
      ->capture_default_str();
  command
      ->add_option("--validate-every", options->validate_every,
                   "Steps between validations (0: only at the end)")
      ->transform(whole_number(0, 100000000))
      ->capture_default_str();
  command
      ->add_option("--timeout", options->timeout_seconds,
                   "Data-parallel runs: seconds a collective may wait for the other ranks "
                   "before the run fails")
      ->transform(whole_number(1, 604800))
      ->capture_default_str();
  command
      ->add_option("--amp", options->amp,
                   "Mixed precision: bf16 (autocast to bfloat16), fp16 (float16 with dynamic "
                   "loss scaling; overflowing steps are skipped) or off")
      ->check(CLI::IsMember({"off", "bf16", "fp16"}))
      ->capture_default_str();
  command->add_flag("--channels-last,!--no-channels-last", options->channels_last,
                    "Channels-last (NHWC) memory format for weights and activations, the layout "
                    "of cuDNN's tensor-core kernels");
  command->add_flag("--half-weights,!--no-half-weights", options->half_weights,
                    "Store the final model's weights as float16 (half the file size)");
  command
      ->add_option("--val-count", options->validation_count,
                   "Validation photos used, spread evenly over the sorted list (0: all)")
      ->transform(whole_number(0, 10000000))
      ->capture_default_str();
  add_common_options(*command, options->common);
  command->callback([options, command] {
    options->command_line = invocation();
    if (options->resume) take_the_runs_settings(*command, *options);
    if (options->data_dir.empty()) {
      // No config.txt to take --data from: most likely no run there at all.
      std::error_code ignored;
      if (options->resume && !std::filesystem::exists(
                                 std::filesystem::path(options->out_dir) / "config.txt", ignored)) {
        throw CLI::ValidationError(
            "--resume", fmt::format("{}: holds no training run to resume (no config.txt); to "
                                    "start a new run there, leave out --resume and give --data",
                                    options->out_dir));
      }
      throw CLI::RequiredError("--data");
    }
    // --init's architecture, where the command does not give one.
    if (!options->init_model.empty()) {
      const auto initial = io::load_model(options->init_model);
      const auto& architecture = initial->options;
      if (command->count("--depth") == 0) options->depth = architecture.depth();
      if (command->count("--width") == 0) options->width = architecture.base_width();
      if (command->count("--max-width") == 0) options->max_width = architecture.max_width();
      // Options that contradict the model's architecture: the command line is wrong.
      if (options->depth != architecture.depth() || options->width != architecture.base_width() ||
          options->max_width != architecture.max_width()) {
        throw CLI::ValidationError(
            "--init", fmt::format("'{}' has --depth {}, --width {}, --max-width {}; the command "
                                  "asks for --depth {}, --width {}, --max-width {} (leave them out "
                                  "to take the model's)",
                                  options->init_model, architecture.depth(),
                                  architecture.base_width(), architecture.max_width(),
                                  options->depth, options->width, options->max_width));
      }
    }
    run_train(*options);
  });
}

void run_train(const TrainOptions& options) {
  // From the start, so that an early Ctrl-C also ends in a checkpoint rather than a kill.
  StopOnSignal stop_on_signal;
  // Started by torchrun or scripts/train-parallel.sh: join the process group first.
  std::shared_ptr<train::ProcessGroup> group;
  c10::Device device = resolve_device(options.common);
  std::optional<train::DistributedOptions> distributed;
  try {
    distributed = train::distributed_from_environment();
  } catch (const InputError& error) {
    // The variables are part of how the command was started, as its options are.
    throw CLI::ValidationError(error.what());
  }
  if (distributed && distributed->world_size > 1) {
    if (distributed->rank != 0) spdlog::set_level(spdlog::level::warn);  // rank 0 reports
    // Processes on one machine share its cores: each takes its share of LibTorch's threads
    // unless --threads or OMP_NUM_THREADS says otherwise. All of them each (2 ranks x 2 threads
    // on 2 cores) made training 10-20% slower than 1 thread each, measured.
    if (distributed->local_world_size > 1 && options.common.threads == 0 &&
        std::getenv("OMP_NUM_THREADS") == nullptr) {
      const int threads = std::max(1, at::get_num_threads() / distributed->local_world_size);
      at::set_num_threads(threads);
      spdlog::info("{} processes on this machine: {} CPU thread{} each (--threads to choose)",
                   distributed->local_world_size, threads, threads == 1 ? "" : "s");
    }
    // One GPU per rank; the group sends CUDA tensors over NCCL there.
    if (device.is_cuda()) device.set_index(static_cast<c10::DeviceIndex>(distributed->local_rank));
    distributed->timeout = std::chrono::seconds(options.timeout_seconds);
    distributed->device = device;
    distributed->should_stop = [] { return stop_requested(); };
    spdlog::info(
        "joining the process group at {}:{} as rank {} of {}: waiting up to {} s for "
        "the other ranks (--timeout)",
        distributed->master_addr, distributed->master_port, distributed->rank,
        distributed->world_size, options.timeout_seconds);
    try {
      group = std::make_shared<train::ProcessGroup>(*distributed);
    } catch (const Error&) {
      if (stop_requested()) throw Interrupted("stopped while joining the process group");
      throw;
    }
    spdlog::info("joined the process group at {}:{} as rank {} of {} ({})",
                 distributed->master_addr, distributed->master_port, distributed->rank,
                 distributed->world_size, group->backends());
    if (device.is_cuda() && !train::nccl_available()) {
      spdlog::warn(
          "this pconv was built without NCCL (no nccl.h): CUDA gradients go over Gloo, "
          "through host memory");
    }
  }
  // (A resumed fine-tuning takes its weights from the checkpoint.)
  if (options.finetune && options.init_model.empty() && !options.resume) {
    throw CLI::ValidationError("--finetune",
                               "needs --init MODEL: fine-tuning starts from a trained model");
  }
  if (options.max_width < options.width) {
    throw CLI::ValidationError("--max-width", fmt::format("{} is smaller than --width {}",
                                                          options.max_width, options.width));
  }
  const int64_t multiple = int64_t{1} << options.depth;
  if (options.size % multiple != 0) {
    throw CLI::ValidationError(
        "--size", fmt::format("{} is not a multiple of 2^depth = {}", options.size, multiple));
  }
  // BatchNorm in training needs two values of each channel at least; the deepest encoder
  // layer's has (size / 2^depth)^2 of them per photo (its statistics are the global batch's).
  // With --finetune the encoder's BatchNorm is frozen.
  const int64_t ranks = distributed ? distributed->world_size : 1;
  const int64_t deepest = (options.size / multiple) * (options.size / multiple);
  if (!options.finetune && options.depth >= 2 && deepest * options.batch * ranks < 2) {
    throw CLI::ValidationError(
        "--batch", fmt::format("1 with --size {} and --depth {} leaves the deepest layer one "
                               "pixel to normalise: give --batch 2 or more, or a larger --size",
                               options.size, options.depth));
  }
  // The run folder never mixes with the photos: model.pt could replace a photo of that name,
  // and samples/*.png would be trained on by a later run.
  keep_apart(options.out_dir, "the run", "the photos", "--data", options.data_dir);
  if (!options.validation_dir.empty()) {
    keep_apart(options.out_dir, "the run", "the photos", "--val", options.validation_dir);
    // Scores on photos the model trains on would say nothing of how it fills new ones.
    if (is_within(options.validation_dir, options.data_dir) ||
        is_within(options.data_dir, options.validation_dir)) {
      throw CLI::ValidationError(
          "--val", "'" + options.validation_dir + "' overlaps the training photos of --data '" +
                       options.data_dir + "'; validate on photos the model does not train on");
    }
  }
  if (!options.mask_dir.empty()) {
    keep_apart(options.out_dir, "the run", "the masks", "--masks", options.mask_dir);
    // Both folders are listed with their subfolders: masks among the photos would be trained
    // on as photos.
    for (const auto& [option, folder] :
         {std::pair<const char*, const std::string&>{"--data", options.data_dir},
          {"--val", options.validation_dir}}) {
      if (!folder.empty() &&
          (is_within(options.mask_dir, folder) || is_within(folder, options.mask_dir))) {
        throw CLI::ValidationError(
            "--masks", fmt::format("'{}' overlaps the photos of {} '{}'; keep the masks in a "
                                   "folder of their own",
                                   options.mask_dir, option, folder));
      }
    }
  } else if (options.masks_white_valid) {
    throw CLI::ValidationError("--white-valid",
                               "only with --masks (it says how mask images are drawn)");
  }
  auto train_files = list_images("--data", options.data_dir);
  std::vector<std::filesystem::path> validation_files;
  if (!options.validation_dir.empty()) {
    validation_files = list_images("--val", options.validation_dir);
  }
  spdlog::info("{} training photo{} in {}{}", train_files.size(),
               train_files.size() == 1 ? "" : "s", options.data_dir,
               validation_files.empty()
                   ? std::string(", no validation folder")
                   : fmt::format(", {} validation photo{} in {}", validation_files.size(),
                                 validation_files.size() == 1 ? "" : "s", options.validation_dir));

  // Paths as config.txt keeps them for a resume: whole, so that one from another folder finds
  // them (as typed, `--data photos` was looked for where the resume ran).
  const auto whole = [](const std::string& path) {
    return path.empty() ? path : std::filesystem::absolute(path).lexically_normal().string();
  };
  train::TrainerOptions trainer_options;
  trainer_options.size(options.size)
      .batch_size(options.batch)
      .steps(options.steps)
      .learning_rate(options.learning_rate)  // 0: the stage's own, as the library picks it
      .finetune(options.finetune)
      .model(nn::PConvUNetOptions()
                 .depth(options.depth)
                 .base_width(options.width)
                 .max_width(options.max_width))
      .loss_weights(loss::InpaintingLossOptions()
                        .valid(options.loss_valid)
                        .hole(options.loss_hole)
                        .perceptual(options.loss_perceptual)
                        .style(options.loss_style)
                        .tv(options.loss_tv))
      .vgg_path(whole(options.vgg))
      .init_model(whole(options.init_model))
      .mask_dir(whole(options.mask_dir))
      .masks_white_valid(options.masks_white_valid)
      .thin_strokes(options.thin_strokes)
      .workers(options.workers)
      .seed(options.seed)
      .device(device)
      .sample_every(options.sample_every)
      .checkpoint_every(options.checkpoint_every)
      .validate_every(options.validate_every)
      .validation_count(options.validation_count)
      .validation_spread(options.validation_spread)
      .half_weights(options.half_weights)
      .process_group(group)
      .amp(options.amp)
      .channels_last(options.channels_last)
      .data_description(whole(options.data_dir))
      .validation_description(whole(options.validation_dir));
  // A new run that fails before its first checkpoint (unreadable photos, a bad --init or
  // --vgg file, ...) takes away what it wrote: the whole run folder if it made it, else the
  // files it added to it. Rank 0 owns the folder.
  const std::filesystem::path run_dir(options.out_dir);
  std::error_code error;
  const bool owns_folder = distributed == std::nullopt || distributed->rank == 0;
  const bool new_folder = !std::filesystem::exists(run_dir, error);
  const auto entries_before = folder_entries(run_dir);
  try {
    run_trainer(trainer_options, train_files, validation_files, options);
  } catch (const io::FolderAboveInUse&) {
    // Another command writes into a folder above: the run folder, if made here, is still empty.
    if (new_folder) std::filesystem::remove(run_dir, error);
    throw;
  } catch (const io::FolderInUse&) {
    throw;  // the folder is the other run's: nothing of it is taken away
  } catch (...) {
    // Only while no other run is in the folder (one may have started since the snapshot, and
    // this run may have failed before it could take the lock itself).
    std::shared_ptr<void> lock;
    bool folder_free = owns_folder;
    try {
      if (owns_folder) lock = io::lock_folder(run_dir);
    } catch (const std::exception&) {
      folder_free = false;  // another run's now, or gone: nothing to take away
    }
    if (folder_free && !std::filesystem::exists(run_dir / train::Trainer::kCheckpointFile, error)) {
      if (new_folder) {
        std::filesystem::remove_all(run_dir, error);
      } else {
        for (const auto& entry : folder_entries(run_dir)) {
          if (entries_before.count(entry) == 0) std::filesystem::remove_all(entry, error);
        }
      }
    }
    throw;
  }
}

namespace {

void take_the_runs_settings(const CLI::App& command, TrainOptions& options) {
  const auto settings = train::recorded_settings(options.out_dir);
  if (settings.empty()) return;  // no config.txt: the trainer says what is missing
  const auto config = (std::filesystem::path(options.out_dir) / "config.txt").string();
  std::vector<std::string> taken;  // what differs from the command's defaults, to say so
  // Sets `field` from the run's `key` where the command does not give `option`; `none` is the
  // value config.txt writes for an option that was not given (left as the default then).
  const auto take = [&](const char* key, const char* option, auto& field,
                        const std::string& none = {}) {
    const auto found = settings.find(key);
    if (found == settings.end() || command.count(option) > 0) return;
    const std::string& value = found->second;
    if (!none.empty() && value.rfind(none, 0) == 0) return;
    using Field = std::decay_t<decltype(field)>;
    const Field before = field;
    try {
      if constexpr (std::is_same_v<Field, std::string>) {
        field = value;
      } else if constexpr (std::is_same_v<Field, bool>) {
        if (value != "0" && value != "1") throw std::invalid_argument(value);
        field = value == "1";
      } else if constexpr (std::is_floating_point_v<Field>) {
        size_t used = 0;
        field = std::stod(value, &used);
        if (used != value.size()) throw std::invalid_argument(value);
      } else {
        Field parsed{};
        const auto [end, error] =
            std::from_chars(value.data(), value.data() + value.size(), parsed);
        if (error != std::errc() || end != value.data() + value.size()) {
          throw std::invalid_argument(value);
        }
        field = parsed;
      }
    } catch (const std::exception&) {
      throw InputError(fmt::format("{}: '{} {}' is not a value of {}", config, key, value, option));
    }
    // Said where it is not what the command would have taken anyway.
    if (field == before) return;
    if constexpr (std::is_same_v<Field, bool>) {
      taken.emplace_back(field ? option : std::string("no ") + option);
    } else {
      taken.push_back(fmt::format("{} {}", option, value));
    }
  };
  take("data", "--data", options.data_dir, "(not given)");
  take("val", "--val", options.validation_dir, "(none)");
  take("size", "--size", options.size);
  take("batch_size", "--batch", options.batch);
  take("steps", "--steps", options.steps);
  take("learning_rate", "--lr", options.learning_rate);
  take("finetune", "--finetune", options.finetune);
  take("depth", "--depth", options.depth);
  take("base_width", "--width", options.width);
  take("max_width", "--max-width", options.max_width);
  take("loss_valid", "--loss-valid", options.loss_valid);
  take("loss_hole", "--loss-hole", options.loss_hole);
  take("loss_perceptual", "--loss-perceptual", options.loss_perceptual);
  take("loss_style", "--loss-style", options.loss_style);
  take("loss_tv", "--loss-tv", options.loss_tv);
  take("vgg", "--vgg", options.vgg, "(none");
  take("mask_dir", "--masks", options.mask_dir, "(none");
  take("masks_white_valid", "--white-valid", options.masks_white_valid);
  take("thin_strokes", "--thin-strokes", options.thin_strokes);
  take("seed", "--seed", options.seed);
  take("amp", "--amp", options.amp);
  take("channels_last", "--channels-last", options.channels_last);
  take("workers", "--workers", options.workers);
  take("val_count", "--val-count", options.validation_count);
  take("validate_every", "--validate-every", options.validate_every);
  take("sample_every", "--sample-every", options.sample_every);
  take("checkpoint_every", "--checkpoint-every", options.checkpoint_every);
  take("half_weights", "--half-weights", options.half_weights);
  // Which validation photos --val-count leaves out: no option; a run keeps its own.
  if (const auto spread = settings.find("val_spread"); spread != settings.end()) {
    options.validation_spread = spread->second != "0";
  }
  if (!taken.empty())
    spdlog::info("--resume: the run's own {} (from {})", fmt::join(taken, " "), config);
}

std::set<std::filesystem::path> folder_entries(const std::filesystem::path& folder) {
  std::set<std::filesystem::path> entries;
  std::error_code error;
  for (auto it = std::filesystem::recursive_directory_iterator(folder, error);
       !error && it != std::filesystem::recursive_directory_iterator(); it.increment(error)) {
    entries.insert(it->path());
  }
  return entries;
}

void run_trainer(const train::TrainerOptions& trainer_options,
                 const std::vector<std::filesystem::path>& train_files,
                 const std::vector<std::filesystem::path>& validation_files,
                 const TrainOptions& options) {
  train::Trainer trainer(trainer_options, train_files, validation_files, options.out_dir,
                         options.resume, options.command_line);

  const int64_t first_step = trainer.step();
  Progress progress("train", options.steps);
  progress.resume_at(first_step);
  train::TrainerCallbacks callbacks;
  callbacks.on_message = [&](const std::string& text) {
    // Skipped photos and what the trainer marks as a warning are warnings; the rest is
    // information.
    constexpr std::string_view kWarning = "warning: ";
    if (text.rfind(kWarning, 0) == 0) {
      progress.note(text.substr(kWarning.size()), true);
      return;
    }
    progress.note(text, text.find("(skipped)") != std::string::npos ||
                            text.find("(left out") != std::string::npos);
  };
  callbacks.should_stop = [] { return stop_requested(); };
  callbacks.on_step = [&](const train::StepReport& report) {
    double total = 0;
    for (const auto& [name, value] : report.losses) {
      if (name == "total") total = value;
    }
    progress.set_status(fmt::format("loss {:.4f}  {:.2f} img/s", total, report.images_per_second));
    progress.advance();
  };
  callbacks.on_validation = [&](const train::ValidationReport& report) {
    progress.note(fmt::format("step {}: validation PSNR {:.2f} dB, SSIM {:.4f} ({} image{})",
                              report.step, report.psnr, report.ssim, report.images,
                              report.images == 1 ? "" : "s"));
  };
  const auto result = trainer.run(callbacks);
  progress.finish();
  if (result.stopped_early)
    throw Interrupted(fmt::format(
        "stopped at step {}; checkpoint saved: the same command with --resume continues",
        result.step));
  const int64_t run_steps = result.step - first_step;
  if (run_steps > 0 && result.skipped_steps == run_steps) {
    // Nothing was learnt: "done" alone would pass a model for a trained one.
    spdlog::warn(
        "every one of the {} float16 step{} of this run was skipped for overflowing "
        "gradients, so the model did not change; --amp bf16 or --amp off, or smaller "
        "loss weights, train it",
        run_steps, run_steps == 1 ? "" : "s");
  }
  spdlog::info("done: {} steps{}; model written to {}", result.step,
               result.skipped_steps > 0
                   ? fmt::format(" ({} of this run's {} skipped)", result.skipped_steps, run_steps)
                   : std::string(),
               result.model_file.string());
}

}  // namespace

}  // namespace pconv::app
