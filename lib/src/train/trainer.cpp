#include "pconv/train/trainer.h"

#include "pconv/data/image_folder.h"
#include "pconv/data/mask_folder.h"
#include "pconv/data/mask_generator.h"
#include "pconv/error.h"
#include "pconv/eval/metrics.h"
#include "pconv/io/atomic_file.h"
#include "pconv/io/folder_lock.h"
#include "pconv/io/image_file.h"
#include "pconv/io/model_file.h"
#include "pconv/version.h"

#include "../io/stored_tensor.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iomanip>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string_view>

namespace pconv::train {
namespace {

// Validation masks come from their own fixed seed, so every run is scored on the same holes.
constexpr uint64_t kValidationMaskSeed = 20180415;
constexpr int64_t kSampleRows = 4;

// What must match between a checkpoint and the run that resumes it.
std::string run_identity(const TrainerOptions& o) {
  std::ostringstream out;
  const auto& m = o.model();
  out << "size=" << o.size() << " batch=" << o.batch_size() << " seed=" << o.seed()
      << " depth=" << m.depth() << " base_width=" << m.base_width()
      << " max_width=" << m.max_width() << " finetune=" << o.finetune() << " amp=" << o.amp();
  return out.str();
}

// config.txt's first line: pconv's own, of any version.
constexpr const char* kConfigHeading = " training run";

// Whether `path` is a config.txt that pconv train wrote.
bool is_run_config(const std::filesystem::path& path) {
  std::ifstream file(path);
  std::string first_line;
  if (!std::getline(file, first_line)) return false;
  const std::string_view line(first_line);
  const std::string_view heading(kConfigHeading);
  return line.rfind("pconv ", 0) == 0 && line.size() >= heading.size() &&
         line.substr(line.size() - heading.size()) == heading;
}

std::string config_text(const TrainerOptions& o, size_t train_count, size_t validation_count) {
  std::ostringstream out;
  const int64_t processes = o.process_group() ? o.process_group()->world_size() : 1;
  const auto& m = o.model();
  const auto& w = o.loss_weights();
  out << "pconv " << kVersion << kConfigHeading << "\n"
      << "size " << o.size() << "\nbatch_size " << o.batch_size() << "\nsteps " << o.steps()
      << "\nlearning_rate " << o.learning_rate() << "\nfinetune " << o.finetune() << "\ndepth "
      << m.depth() << "\nbase_width " << m.base_width() << "\nmax_width " << m.max_width()
      << "\nloss_valid " << w.valid() << "\nloss_hole " << w.hole() << "\nloss_perceptual "
      << w.perceptual() << "\nloss_style " << w.style() << "\nloss_tv " << w.tv() << "\nvgg "
      << (o.vgg_path().empty() ? "(none: pixel terms only)" : o.vgg_path()) << "\ninit_model "
      << (o.init_model().empty() ? "(none)" : o.init_model()) << "\nworkers " << o.workers()
      << "\nseed " << o.seed() << "\ndevice " << o.device().str() << "\namp " << o.amp()
      << "\nchannels_last " << o.channels_last() << "\nval_count " << o.validation_count()
      << "\nval_spread " << o.validation_spread() << "\nvalidate_every " << o.validate_every()
      << "\nsample_every " << o.sample_every() << "\ncheckpoint_every " << o.checkpoint_every()
      << "\nhalf_weights " << o.half_weights() << "\nhole_ratio " << o.min_hole_ratio() << "-"
      << o.max_hole_ratio() << "\nthin_strokes " << o.thin_strokes() << "\nmask_dir "
      << (o.mask_dir().empty() ? "(none: generated masks)" : o.mask_dir()) << "\nmasks_white_valid "
      << o.masks_white_valid() << "\ndata "
      << (o.data_description().empty() ? "(not given)" : o.data_description()) << "\nval "
      << (o.validation_description().empty() ? "(none)" : o.validation_description())
      << "\nprocesses " << processes << "\ntrain_images " << train_count << "\nvalidation_images "
      << validation_count << '\n';
  return out.str();
}

// The settings of a config.txt ("key value" lines) in order; a later line of a key (a resume's)
// replaces the earlier one.
std::vector<std::pair<std::string, std::string>> config_settings(const std::string& text) {
  std::vector<std::pair<std::string, std::string>> settings;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    const auto space = line.find(' ');
    if (space == std::string::npos || line.rfind("pconv ", 0) == 0 ||
        line.rfind("resumed ", 0) == 0) {
      continue;
    }
    const auto key = line.substr(0, space);
    const auto value = line.substr(space + 1);
    const auto it = std::find_if(settings.begin(), settings.end(),
                                 [&](const auto& setting) { return setting.first == key; });
    if (it == settings.end()) {
      settings.emplace_back(key, value);
    } else {
      it->second = value;
    }
  }
  // Settings added after the first runs were made: a config.txt without one is of a run that
  // trained as its absence meant then (no thin strokes, masks white = hole), not as the
  // option's default of today, which would change the run on resume.
  for (const auto& [key, then] : {std::pair<const char*, const char*>{"thin_strokes", "0"},
                                  {"masks_white_valid", "0"},
                                  {"val_spread", "0"}}) {
    const bool present =
        std::any_of(settings.begin(), settings.end(),
                    [&key = key](const auto& setting) { return setting.first == key; });
    if (!present && !settings.empty()) settings.emplace_back(key, then);
  }
  return settings;
}

// A setting of the config.txt text `now` whose value differs from the one in `before`; a key
// that `before` lacks (a config.txt of an older pconv, which did not record it) is one too,
// from "(not recorded)": written down, a later resume takes it.
struct ChangedSetting {
  std::string key, before, now;
};
std::vector<ChangedSetting> changed_settings(const std::string& before, const std::string& now) {
  const auto earlier = config_settings(before);
  std::vector<ChangedSetting> changed;
  for (const auto& [key, value] : config_settings(now)) {
    const auto it = std::find_if(earlier.begin(), earlier.end(), [&key = key](const auto& setting) {
      return setting.first == key;
    });
    if (it == earlier.end()) {
      changed.push_back({key, "(not recorded)", value});
    } else if (it->second != value) {
      changed.push_back({key, it->second, value});
    }
  }
  return changed;
}

constexpr const char* kLogHeader =
    "step,valid,hole,perceptual,style_out,style_comp,tv,total,learning_rate,images_per_second\n";
constexpr const char* kValidationHeader = "step,psnr,ssim,images\n";

// The initial weights follow the run's seed (this reseeds LibTorch's global generator).
nn::PConvUNet seeded_model(const TrainerOptions& options) {
  torch::manual_seed(options.seed());
  return nn::PConvUNet{options.model()};
}

bool due(int64_t step, int64_t every, int64_t last) {
  return step == last || (every > 0 && step % every == 0);
}

std::string now_iso() {
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  std::ostringstream out;
  out << std::put_time(&utc, "%Y-%m-%dT%H:%M:%SZ");
  return out.str();
}

// The settings every rank of a data-parallel run must share: the shapes of every collective,
// the number of steps, the arithmetic and the data to shard. Paths may differ between machines
// and are left out, as is what each process decides for itself (workers, device).
std::string shared_settings(const std::string& config) {
  // (How often and on how many crops to validate are compared as what the ranks will do,
  // below: a rank without validation photos validates on none.)
  static const std::set<std::string> own{
      "vgg",  "init_model", "workers",           "device",    "mask_dir",
      "data", "val",        "validation_images", "val_count", "validate_every"};
  std::string text;
  for (const auto& [key, value] : config_settings(config)) {
    if (own.count(key) == 0) text.append(key).append(" ").append(value).append("\n");
  }
  return text;
}

// The option (or what else) that sets a config.txt key, for messages.
std::string option_of(const std::string& key) {
  static const std::map<std::string, std::string> names{
      {"learning_rate", "--lr"},
      {"base_width", "--width"},
      {"max_width", "--max-width"},
      {"batch_size", "--batch"},
      {"train_images", "photos in --data"},
      {"processes", "WORLD_SIZE"},
      {"perceptual_and_style_terms", "--vgg given"},
      {"hole_ratio", "hole ratios"},
      {"masks_white_valid", "--white-valid"},
      {"val_spread",
       "the choice of validation photos (a run from before session xii takes the first ones: "
       "copy its config.txt into every rank's -o)"},
      {"validation_crops",
       "readable photos in --val (at most "
       "--val-count)"}};
  if (const auto it = names.find(key); it != names.end()) return it->second;
  std::string option = "--" + key;
  std::replace(option.begin(), option.end(), '_', '-');
  return option;
}

// Sends rank 0's bytes to every rank: rank 0 passes them (or nullptr when it has none to send,
// having failed), the others nullptr. Returns the bytes, or nothing where rank 0 had none.
std::optional<std::vector<char>> broadcast_bytes(ProcessGroup& group,
                                                 const std::vector<char>* mine) {
  auto length = at::full({1}, mine ? static_cast<int64_t>(mine->size()) : int64_t{-1}, at::kLong);
  group.broadcast({length});
  const auto size = length.item<int64_t>();
  if (size < 0) return std::nullopt;
  auto buffer = at::empty({size}, at::kByte);
  if (group.rank() == 0 && size > 0) std::memcpy(buffer.data_ptr(), mine->data(), mine->size());
  if (size > 0) group.broadcast({buffer});
  const auto* data = static_cast<const char*>(buffer.data_ptr());
  return std::vector<char>(data, data + size);
}

// Compares this rank's shared settings with rank 0's before the first collective that depends
// on them, so that ranks started with other options fail with one line each instead of a
// collective's shape mismatch (an abort in Gloo) or a wait for steps that never come.
void check_same_settings(ProcessGroup& group, const std::string& mine) {
  const std::vector<char> my_bytes(mine.begin(), mine.end());
  const auto root_bytes = broadcast_bytes(group, group.rank() == 0 ? &my_bytes : nullptr);
  const std::string root = root_bytes ? std::string(root_bytes->begin(), root_bytes->end()) : "";
  std::string differences;
  if (root != mine) {
    for (const auto& change : changed_settings(root, mine)) {
      differences.append(differences.empty() ? "" : ", ").append(option_of(change.key));
      differences.append(" ").append(change.now).append(" (rank 0: ").append(change.before);
      differences.append(")");
    }
    if (differences.empty()) differences = "another pconv version";
  }
  auto votes = at::full({1}, differences.empty() ? 0.0 : 1.0);
  group.all_reduce_sum({votes});
  if (!differences.empty()) {
    throw InputError("rank " + std::to_string(group.rank()) +
                     " was started with other settings than rank 0: " + differences +
                     "; start every rank with the same options");
  }
  if (votes.item<double>() > 0) {
    throw InputError(std::to_string(static_cast<int64_t>(votes.item<double>())) +
                     " rank(s) were started with other settings than this one (each says "
                     "which); start every rank with the same options");
  }
}

// Keeps the rows of a CSV log up to step `keep_steps`, under its header: a resumed run rewrites
// what came after its checkpoint. A log that is gone starts again with its header; a line that
// is not one of its rows (cut short by a kill, edited by hand) is left out. Returns how many
// lines were left out that way.
int64_t truncate_log(const std::filesystem::path& path, int64_t keep_steps,
                     const char* header_line) {
  std::string kept(header_line);
  const std::string header = kept.substr(0, kept.find('\n'));
  const auto fields = std::count(header.begin(), header.end(), ',');
  int64_t dropped = 0;
  std::ifstream in(path);
  std::string line;
  while (in && std::getline(in, line)) {
    if (line == header) continue;
    int64_t step = 0;
    const auto comma = line.find(',');
    const auto parsed =
        std::from_chars(line.data(), line.data() + std::min(comma, line.size()), step);
    const bool row = comma != std::string::npos && parsed.ec == std::errc() &&
                     parsed.ptr == line.data() + comma &&
                     std::count(line.begin(), line.end(), ',') == fields;
    if (!row) {
      dropped += line.empty() ? 0 : 1;
      continue;
    }
    if (step <= keep_steps) kept += line + '\n';
  }
  in.close();
  io::write_file_atomically(path, kept);
  return dropped;
}

// Names and shapes of a model's parameters and buffers, to compare with after a load.
std::vector<std::pair<std::string, std::vector<int64_t>>> shapes_of(const torch::nn::Module& m) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes;
  for (const auto& item : m.named_parameters()) {
    shapes.emplace_back(item.key(), item->sizes().vec());
  }
  for (const auto& item : m.named_buffers()) {
    shapes.emplace_back(item.key(), item->sizes().vec());
  }
  return shapes;
}

// What is wrong with the tensors a checkpoint loaded into the model and the optimizer (a
// changed shape, bytes missing from a damaged file), or nothing: without this check such a
// checkpoint crashes at the first step instead of giving an error.
std::string loaded_state_problem(
    const std::vector<char>& archive, const torch::nn::Module& model,
    const torch::optim::Adam& optimizer,
    const std::vector<std::pair<std::string, std::vector<int64_t>>>& expected,
    std::vector<at::Tensor> loaded) {
  if (shapes_of(model) != expected) return "its model has other shapes than this run's";
  for (const auto& tensor : loaded) {
    if (tensor.defined() && !io::has_all_its_bytes(tensor)) return "its state is truncated";
  }
  for (const auto& item : model.named_parameters()) {
    if (!io::has_all_its_bytes(*item)) return "weight '" + item.key() + "' is truncated";
    loaded.push_back(*item);
  }
  for (const auto& item : model.named_buffers()) {
    if (!io::has_all_its_bytes(*item)) return "buffer '" + item.key() + "' is truncated";
    loaded.push_back(*item);
  }
  for (const auto& group : optimizer.param_groups()) {
    for (const auto& parameter : group.params()) {
      const auto found = optimizer.state().find(parameter.unsafeGetTensorImpl());
      if (found == optimizer.state().end()) continue;
      const auto* adam = dynamic_cast<const torch::optim::AdamParamState*>(found->second.get());
      if (adam == nullptr) return "its optimizer state is not Adam's";
      for (const auto* moment : {&adam->exp_avg(), &adam->exp_avg_sq(), &adam->max_exp_avg_sq()}) {
        if (!moment->defined()) continue;
        if (moment->sizes() != parameter.sizes() || !io::has_all_its_bytes(*moment)) {
          return "its optimizer state is damaged";
        }
        loaded.push_back(*moment);
      }
    }
  }
  if (!io::records_fill(archive, loaded)) {
    return "it is truncated: its tensors have fewer bytes than their shapes need";
  }
  return "";
}

}  // namespace

Trainer::Trainer(TrainerOptions options, std::vector<std::filesystem::path> train_files,
                 std::vector<std::filesystem::path> validation_files, std::filesystem::path run_dir,
                 bool resume, std::string command)
    : options_(std::move(options)),
      train_files_(std::move(train_files)),
      validation_files_(std::move(validation_files)),
      run_dir_(std::move(run_dir)),
      command_(std::move(command)),
      model_(seeded_model(options_)),
      loss_(options_.loss_weights()) {
  if (train_files_.empty()) throw InputError("no training images");
  // 0: the paper's rate for the stage (a fine-tuning at 2e-4 was the default's trap).
  if (!(options_.learning_rate() >= 0) || !std::isfinite(options_.learning_rate())) {
    throw ArgumentError("train: learning_rate must be positive (or 0 for the paper's); got " +
                        std::to_string(options_.learning_rate()));
  }
  if (options_.learning_rate() == 0) options_.learning_rate(options_.finetune() ? 5e-5 : 2e-4);
  amp_type_ = parse_amp(options_.amp());  // pconv::ArgumentError for an unknown name
  if (!options_.mask_dir().empty()) {
    data::MaskFolder check(options_.mask_dir(), {}, 0);  // a bad mask folder fails here, early
  }
  if (options_.size() % model_->size_multiple() != 0) {
    throw InputError("--size " + std::to_string(options_.size()) + " must be a multiple of " +
                     std::to_string(model_->size_multiple()) + " (2^depth)");
  }
  if (!validation_files_.empty() && options_.size() < 11) {
    throw InputError("--size " + std::to_string(options_.size()) +
                     " is too small to validate: SSIM needs 11x11 crops at least");
  }
  // Checked before anything is made, so that a refused run adds nothing to the folder.
  const auto checkpoint = run_dir_ / kCheckpointFile;
  const auto refuse_an_existing_run = [&] {
    if (!resume && std::filesystem::exists(checkpoint)) {
      throw InputError(run_dir_.string() +
                       ": holds a checkpoint already; use --resume to "
                       "continue it or another --out");
    }
    // A model without a checkpoint (one put there, or the --init model itself), another run's
    // logs, or files of these names that are not a run's would be replaced by this run's. (The
    // other ranks check the model only: rank 0 may have made samples/ in a folder they share.)
    if (resume) return;
    const auto refuse_replacing = [&](const char* file) {
      if (std::filesystem::exists(run_dir_ / file)) {
        throw InputError(run_dir_.string() + ": holds " + file +
                         " already, which this run would replace; use another --out");
      }
    };
    refuse_replacing(kModelFile);
    // A run that ended before its first checkpoint (killed) has nothing to resume: its files
    // are this run's to replace.
    if (!writes_files() || is_run_config(run_dir_ / kConfigFile)) return;
    for (const auto* file : {kConfigFile, kLogFile, kValidationFile, "samples"}) {
      refuse_replacing(file);
    }
  };
  refuse_an_existing_run();
  // The other ranks of a data-parallel run resume from rank 0's checkpoint, sent to them.
  if (resume && writes_files() && !std::filesystem::exists(checkpoint)) {
    throw InputError(checkpoint.string() + ": no checkpoint to resume");
  }
  if (writes_files()) {
    // One run per folder at a time: a second one would overwrite the first one's files.
    std::error_code error;
    std::filesystem::create_directories(run_dir_, error);
    if (error) {
      throw InputError(run_dir_.string() + ": cannot create the run folder: " + error.message());
    }
    run_dir_lock_ = io::lock_folder(run_dir_);
    refuse_an_existing_run();  // again: a run may have ended in the folder since
  }
  // Samples and validation scores come from the validation photos: without them the run
  // folder has neither samples/ nor validation.csv.
  if (!validation_files_.empty() && writes_files()) {
    std::error_code error;
    std::filesystem::create_directories(run_dir_ / "samples", error);
    if (error || !std::filesystem::is_directory(run_dir_ / "samples")) {
      throw InputError((run_dir_ / "samples").string() + ": cannot create the folder: " +
                       (error ? error.message() : "something of that name is in the way"));
    }
  }

  if (!options_.vgg_path().empty()) {
    loss_ = loss::InpaintingLoss(options_.loss_weights(),
                                 loss::load_vgg16_features(options_.vgg_path()));
  }
  if (!options_.init_model().empty()) {
    auto initial = io::load_model(options_.init_model());
    const auto& a = initial->options;
    const auto& b = model_->options;
    if (a.depth() != b.depth() || a.base_width() != b.base_width() ||
        a.max_width() != b.max_width()) {
      throw ModelError(options_.init_model() + ": its architecture (depth " +
                       std::to_string(a.depth()) + ", width " + std::to_string(a.base_width()) +
                       "-" + std::to_string(a.max_width()) + ") differs from this run's (depth " +
                       std::to_string(b.depth()) + ", width " + std::to_string(b.base_width()) +
                       "-" + std::to_string(b.max_width()) + ")");
    }
    torch::NoGradGuard no_grad;
    const auto source = initial->named_parameters();
    for (auto& item : model_->named_parameters()) item.value().copy_(source[item.key()]);
    const auto buffers = initial->named_buffers();
    for (auto& item : model_->named_buffers()) item.value().copy_(buffers[item.key()]);
  }
  model_->set_freeze_encoder_bn(options_.finetune());
  model_->to(options_.device());
  if (options_.channels_last()) nn::to_channels_last(*model_);
  loss_.to(options_.device());
  model_->train();

  std::vector<torch::Tensor> trainable;
  for (const auto& parameter : model_->parameters()) {
    if (parameter.requires_grad()) trainable.push_back(parameter);
  }
  optimizer_ = std::make_unique<torch::optim::Adam>(
      trainable, torch::optim::AdamOptions(options_.learning_rate()));

  // Fixed validation set: centre crops and generated masks from a fixed seed.
  if (!validation_files_.empty()) {
    const auto crop = data::CropOptions().size(options_.size());
    const data::MaskGenerator masks(
        data::MaskGeneratorOptions(options_.size(), options_.size()).min_ratio(0.01).max_ratio(0.6),
        kValidationMaskSeed);
    std::vector<torch::Tensor> images;
    std::vector<torch::Tensor> hole_masks;
    std::string first_problem;
    const auto limit = options_.validation_count() > 0
                           ? std::min<size_t>(validation_files_.size(), options_.validation_count())
                           : validation_files_.size();
    // The photos to read, in order: with a limit, evenly spread ones first (the middle of each
    // of `limit` equal parts of the list), then the rest, which stand in for unreadable ones.
    std::vector<size_t> order;
    const size_t count = validation_files_.size();
    if (options_.validation_spread() && limit < count) {
      std::vector<bool> picked(count, false);
      for (size_t part = 0; part < limit; ++part) {
        const size_t index = (2 * part + 1) * count / (2 * limit);
        order.push_back(index);
        picked[index] = true;
      }
      for (size_t index = 0; index < count; ++index) {
        if (!picked[index]) order.push_back(index);
      }
    } else {
      for (size_t index = 0; index < count; ++index) order.push_back(index);
    }
    for (const size_t index : order) {
      const auto& path = validation_files_[index];
      if (images.size() >= limit) break;
      try {
        images.push_back(data::crop_example(path, crop, /*random=*/false, 0));
        hole_masks.push_back(masks.mask(images.size() - 1));
      } catch (const InputError& unreadable) {
        if (notes_.empty()) first_problem = unreadable.what();
        notes_.push_back(std::string(unreadable.what()) + " (left out of validation)");
      }
    }
    // A validation folder was asked for: training without it would measure nothing.
    if (images.empty()) {
      throw InputError("no readable image among the " + std::to_string(validation_files_.size()) +
                       " validation files (" + first_problem + ")");
    }
    validation_images_ = at::stack(images).to(options_.device());
    validation_masks_ = at::stack(hole_masks).to(options_.device());
  }

  if (const auto& group = options_.process_group()) {
    // Every rank validates its part of the same crops: how often, and how many, must agree, or
    // one rank's validation all-reduce would meet another's next collective. The loss terms
    // (VGG16's or not: its path may differ) must agree too: every step averages them.
    check_same_settings(
        *group,
        shared_settings(config_text(options_, train_files_.size(), validation_files_.size())) +
            "resume " + (resume ? "yes" : "no") + "\nperceptual_and_style_terms " +
            (loss_.has_features() ? "yes" : "no") + "\nvalidate_every " +
            std::to_string(validation_images_.defined() ? options_.validate_every() : 0) +
            "\nvalidation_crops " +
            std::to_string(validation_images_.defined() ? validation_images_.size(0) : 0) + "\n");
    // Every rank starts from rank 0's weights, and BatchNorm sees the whole global batch.
    std::vector<torch::Tensor> state;
    for (const auto& parameter : model_->parameters()) state.push_back(parameter.detach());
    for (const auto& buffer : model_->buffers()) state.push_back(buffer);
    group->broadcast(state);
    model_->set_batch_norm_hook(
        [group](torch::nn::BatchNorm2dImpl& layer, const torch::Tensor& input) {
          return sync_batch_norm(*group, layer, input);
        });
  }
  if (resume) {
    load_checkpoint();
    if (step_ > options_.steps()) {
      throw InputError(run_dir_.string() + ": the run is at step " + std::to_string(step_) +
                       " already, past --steps " + std::to_string(options_.steps()) +
                       "; give more steps to train further");
    }
    if (writes_files()) {
      const auto note_dropped = [&](const std::filesystem::path& log, int64_t dropped) {
        if (dropped > 0) {
          notes_.push_back(log.string() + ": " + std::to_string(dropped) +
                           " line(s) that were not rows of the log left out");
        }
      };
      note_dropped(run_dir_ / kLogFile, truncate_log(run_dir_ / kLogFile, step_, kLogHeader));
      // A run validated before keeps its rows up to the checkpoint, with or without --val now.
      // At the last step already (a run whose model was not written, or was stopped during its
      // last validation), the final validation is done again before the model is written:
      // its row, if any, is left out of the log, to be written anew.
      const bool validates_again = step_ == options_.steps() && !validation_files_.empty();
      if (!validation_files_.empty() || std::filesystem::exists(run_dir_ / kValidationFile)) {
        note_dropped(run_dir_ / kValidationFile,
                     truncate_log(run_dir_ / kValidationFile, validates_again ? step_ - 1 : step_,
                                  kValidationHeader));
      }
      record_resumed_config();
    }
  } else if (writes_files()) {
    io::write_file_atomically(run_dir_ / kConfigFile,
                              config_text(options_, train_files_.size(), validation_files_.size()));
    io::write_file_atomically(run_dir_ / kLogFile, std::string(kLogHeader));
    if (!validation_files_.empty()) {
      io::write_file_atomically(run_dir_ / kValidationFile, std::string(kValidationHeader));
    }
  }
}

std::map<std::string, std::string> recorded_settings(const std::filesystem::path& run_dir) {
  const auto path = run_dir / Trainer::kConfigFile;
  std::error_code error;
  if (!std::filesystem::exists(path, error)) return {};
  if (!std::filesystem::is_regular_file(path, error) || !is_run_config(path)) {
    throw InputError(path.string() + ": not the config.txt of a pconv training run");
  }
  std::ifstream in(path);
  if (!in.is_open()) throw InputError(path.string() + ": cannot read the file");
  std::ostringstream text;
  text << in.rdbuf();
  const auto settings = config_settings(text.str());
  return {settings.begin(), settings.end()};
}

void Trainer::record_resumed_config() {
  const auto path = run_dir_ / kConfigFile;
  const auto now = config_text(options_, train_files_.size(), validation_files_.size());
  const std::string resumed = "resumed at step " + std::to_string(step_);
  std::error_code error;
  if (std::filesystem::exists(path, error) && !std::filesystem::is_regular_file(path, error)) {
    notes_.push_back(path.string() + " is not a file: this resume's settings are not recorded");
    return;
  }
  std::ifstream in(path);
  if (!in) {
    io::write_file_atomically(path, now + resumed + " (config.txt was missing: written anew)\n");
    notes_.push_back(path.string() + " was missing: written anew with this resume's options");
    return;
  }
  std::ostringstream text;
  text << in.rdbuf();
  in.close();
  std::string changed_lines;
  std::string changes;
  for (const auto& change : changed_settings(text.str(), now)) {
    if (change.key == "init_model") continue;  // a resume takes the weights from the checkpoint
    changed_lines.append(change.key).append(" ").append(change.now).append("\n");
    changes.append(changes.empty() ? "" : ", ").append(change.key).append(" ");
    changes.append(change.before).append(" -> ").append(change.now);
  }
  if (changes.empty()) return;
  // config.txt keeps how the run started and each resume's changes, in order.
  io::write_file_atomically(path, text.str() + resumed + ", with:\n" + changed_lines);
  notes_.push_back(resumed + " with other settings than before (in " + path.string() +
                   "): " + changes);
}

bool Trainer::writes_files() const {
  return !options_.process_group() || options_.process_group()->rank() == 0;
}

void Trainer::save_checkpoint() const {
  if (!writes_files()) return;
  torch::serialize::OutputArchive archive;
  archive.write("identity", c10::IValue(run_identity(options_)));
  archive.write("step", c10::IValue(step_));
  archive.write("examples", c10::IValue(examples_));
  torch::serialize::OutputArchive model_archive;
  model_->save(model_archive);
  archive.write("model", model_archive);
  torch::serialize::OutputArchive optimizer_archive;
  optimizer_->save(optimizer_archive);
  archive.write("optimizer", optimizer_archive);
  archive.write("cpu_rng", at::detail::getDefaultCPUGenerator().get_state());
  const auto scaler_state = scaler_.state();
  archive.write("amp_scale", scaler_state[0]);
  archive.write("amp_growth_tracker", scaler_state[1]);
  std::ostringstream bytes;
  archive.save_to(bytes);
  io::write_file_atomically(run_dir_ / kCheckpointFile, bytes.str());
}

void Trainer::load_checkpoint() {
  const auto path = run_dir_ / kCheckpointFile;
  // Rank 0's checkpoint (the only one written) is every rank's: its bytes are sent to the others,
  // so that they resume from the same state with no shared folder and no copy of the file.
  const auto& process_group = options_.process_group();
  std::vector<char> bytes;
  try {
    if (writes_files()) {
      if (std::filesystem::is_directory(path)) {
        throw ModelError(path.string() + ": is a folder, not a checkpoint");
      }
      if (io::stored_kind(path) == io::StoredKind::kModel) {
        throw ModelError(path.string() +
                         ": a model file, not a checkpoint (start a new run with "
                         "--init " +
                         path.string() + " to train from it)");
      }
      // Read once: checked against the zip's checksums, loaded, and its records' sizes compared.
      bytes = io::read_archive(path.string());
      if (const auto damaged = io::first_damaged_record(bytes); !damaged.empty()) {
        throw ModelError(path.string() + ": is damaged (the bytes of its record " + damaged +
                         " do not match their checksum)");
      }
    }
  } catch (...) {
    if (process_group)
      broadcast_bytes(*process_group, nullptr);  // the others are told, not left waiting
    throw;
  }
  if (process_group) {
    auto received = broadcast_bytes(*process_group, process_group->rank() == 0 ? &bytes : nullptr);
    if (!received) {
      throw ModelError("rank " + std::to_string(process_group->rank()) +
                       ": rank 0 cannot read its checkpoint (rank 0 says why)");
    }
    bytes = std::move(*received);
  }
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(bytes.data(), bytes.size(), options_.device());
    c10::IValue value;
    archive.read("identity", value);
    // Settings a checkpoint's identity may name; anything else is damage, or a newer pconv's.
    static const std::set<std::string> identity_keys{"size",       "batch",     "seed",     "depth",
                                                     "base_width", "max_width", "finetune", "amp"};
    {
      std::istringstream words(value.toStringRef());
      for (std::string word; words >> word;) {
        if (identity_keys.count(word.substr(0, word.find('='))) == 0) {
          throw ModelError(path.string() +
                           ": is damaged, or of a newer pconv (its run identity "
                           "holds '" +
                           word + "', which this pconv does not write)");
        }
      }
    }
    if (const auto mine = run_identity(options_); value.toStringRef() != mine) {
      // The settings that differ, as "amp=bf16 (this command: off)".
      std::istringstream theirs(value.toStringRef());
      std::istringstream ours(mine);
      std::string a;
      std::string b;
      std::string differences;
      while (theirs >> a && ours >> b) {
        if (a == b) continue;
        differences += (differences.empty() ? "" : ", ") + a +
                       " (this command: " + b.substr(b.find('=') + 1) + ")";
      }
      throw InputError(path.string() + ": the checkpoint is of another run (" +
                       (differences.empty() ? value.toStringRef() : differences) +
                       "); resume with the same size, batch, seed, model, stage and amp");
    }
    archive.read("step", value);
    step_ = value.toInt();
    const int64_t ranks = process_group ? process_group->world_size() : 1;
    // Checkpoints from before session vii have no count: they went on at the step's position
    // for this number of processes, as they did then.
    examples_ =
        archive.try_read("examples", value) ? value.toInt() : step_ * options_.batch_size() * ranks;
    if (step_ < 0 || examples_ < step_ * options_.batch_size()) {
      throw ModelError(path.string() + ": is damaged (step " + std::to_string(step_) + " after " +
                       std::to_string(examples_) + " examples of batch " +
                       std::to_string(options_.batch_size()) + ")");
    }
    const auto expected_shapes = shapes_of(*model_);
    torch::serialize::InputArchive model_archive;
    archive.read("model", model_archive);
    model_->load(model_archive);
    torch::serialize::InputArchive optimizer_archive;
    archive.read("optimizer", optimizer_archive);
    optimizer_->load(optimizer_archive);
    // LibTorch's load also restores the options each group was saved with: the learning rate of
    // this run (a resume may change it) goes back in, or the checkpoint's would go on silently.
    for (auto& group : optimizer_->param_groups()) {
      static_cast<torch::optim::AdamOptions&>(group.options()).lr(options_.learning_rate());
    }
    at::Tensor rng_state;
    archive.read("cpu_rng", rng_state);
    at::Tensor amp_scale;
    at::Tensor amp_growth_tracker;
    // Checkpoints from before mixed precision have no scaler state: keep the initial one.
    const bool has_scaler = archive.try_read("amp_scale", amp_scale) &&
                            archive.try_read("amp_growth_tracker", amp_growth_tracker);
    if (const auto problem = loaded_state_problem(bytes, *model_, *optimizer_, expected_shapes,
                                                  {rng_state, amp_scale, amp_growth_tracker});
        !problem.empty()) {
      throw ModelError(path.string() + ": cannot resume from the checkpoint (" + problem + ")");
    }
    at::Generator generator = at::detail::getDefaultCPUGenerator();
    generator.set_state(rng_state.to(at::kCPU));
    if (has_scaler) {
      scaler_.load_state({amp_scale.to(at::kCPU), amp_growth_tracker.to(at::kCPU)});
    }
    model_->set_freeze_encoder_bn(options_.finetune());
    model_->train();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& error) {
    throw ModelError(path.string() + ": cannot read the checkpoint (" + brief(error) + ")");
  }
}

std::optional<ValidationReport> Trainer::validate(const std::function<bool()>& should_stop) {
  ValidationReport report;
  report.step = step_;
  if (!validation_images_.defined()) return report;
  torch::NoGradGuard no_grad;
  model_->eval();
  // Each rank of a data-parallel run scores its own part of the images (in eval mode BatchNorm
  // takes no collective), so that no rank waits at its next collective while another validates
  // alone.
  const auto& group = options_.process_group();
  const int64_t ranks = group ? group->world_size() : 1;
  const int64_t rank = group ? group->rank() : 0;
  const int64_t count = validation_images_.size(0);
  const int64_t first = count * rank / ranks;
  const int64_t end = count * (rank + 1) / ranks;
  double psnr_sum = 0;
  double ssim_sum = 0;
  for (int64_t begin = first; begin < end; begin += options_.batch_size()) {
    // Ctrl-C during a long validation stops the run without waiting for its end.
    if (!group && should_stop && should_stop()) {
      model_->train();
      return std::nullopt;
    }
    const int64_t size = std::min(options_.batch_size(), end - begin);
    const auto images = validation_images_.narrow(0, begin, size);
    const auto masks = validation_masks_.narrow(0, begin, size);
    const auto output = std::get<0>(model_(images * masks, masks));
    const auto comp = loss::composite(output.clamp(0.0, 1.0), images, masks);
    psnr_sum += eval::psnr(comp, images).clamp_max(100.0).sum().item<double>();
    ssim_sum += eval::ssim(comp, images).sum().item<double>();
  }
  model_->train();
  if (group) {
    auto sums = at::tensor({psnr_sum, ssim_sum}, at::kDouble);
    group->all_reduce_sum({sums});
    psnr_sum = sums[0].item<double>();
    ssim_sum = sums[1].item<double>();
  }
  report.images = count;
  report.psnr = psnr_sum / static_cast<double>(count);
  report.ssim = ssim_sum / static_cast<double>(count);
  return report;
}

void Trainer::write_samples(const std::string& name) {
  if (!validation_images_.defined()) return;
  torch::NoGradGuard no_grad;
  model_->eval();
  const int64_t rows = std::min<int64_t>(kSampleRows, validation_images_.size(0));
  const auto images = validation_images_.narrow(0, 0, rows);
  const auto masks = validation_masks_.narrow(0, 0, rows);
  const auto output = std::get<0>(model_(images * masks, masks)).clamp(0.0, 1.0);
  model_->train();
  // input with white holes | mask (white = hole) | output | composite | truth
  const auto holes = (1.0 - masks).expand_as(images);
  const auto input = images * masks + holes;
  const auto columns =
      at::cat({input, holes, output, loss::composite(output, images, masks), images}, 3);
  const auto grid = at::cat(columns.unbind(0), 1);  // rows stacked vertically
  io::write_image(run_dir_ / "samples" / name, grid);
}

RunResult Trainer::run(const TrainerCallbacks& callbacks) {
  RunResult result;
  auto message = [&](const std::string& text) {
    if (callbacks.on_message) callbacks.on_message(text);
  };
  message(loss_.has_features()
              ? "loss: pixel, perceptual and style terms (VGG16 from " + options_.vgg_path() + ")"
              : "loss: pixel terms only (valid, hole, total variation); give --vgg for the "
                "perceptual and style terms");
  if (step_ > 0) {
    message("resuming at step " + std::to_string(step_) + ", after " + std::to_string(examples_) +
            " examples");
  }
  for (const auto& note : notes_) message(note);
  // The data workers' warnings (a photo or mask skipped) come from their threads: they are
  // queued and reach on_message here, on the caller's thread, between steps.
  std::mutex warnings_mutex;
  std::vector<std::string> warnings;
  const auto queue_warning = [&warnings_mutex, &warnings](const std::string& text) {
    const std::lock_guard<std::mutex> lock(warnings_mutex);
    warnings.push_back(text);
  };
  const auto deliver_warnings = [&] {
    std::vector<std::string> ready;
    {
      const std::lock_guard<std::mutex> lock(warnings_mutex);
      ready.swap(warnings);
    }
    for (const auto& text : ready) message(text);
  };

  data::MaskSource mask_source;
  if (options_.mask_dir().empty()) {
    mask_source = [generator = data::MaskGenerator(
                       data::MaskGeneratorOptions(options_.size(), options_.size())
                           .min_ratio(options_.min_hole_ratio())
                           .max_ratio(options_.max_hole_ratio())
                           .thin_probability(options_.thin_strokes()),
                       options_.seed())](uint64_t index) { return generator.mask(index); };
  } else {
    const auto convention = options_.masks_white_valid() ? io::MaskConvention::kWhiteIsValid
                                                         : io::MaskConvention::kWhiteIsHole;
    data::MaskFolder folder(options_.mask_dir(),
                            data::MaskFolderOptions().size(options_.size()).convention(convention),
                            options_.seed());
    folder.set_warning_hook(queue_warning);
    mask_source = [folder](uint64_t index) { return folder.mask(index); };
    const char* white = options_.masks_white_valid() ? "white = known" : "white = hole";
    message(std::string("masks: augmented from the mask images in ") + options_.mask_dir() + " (" +
            white + ")");
    // Masks in the other convention train on mostly-hole crops without a word: said here.
    // (Rank 0 alone: the others would say the same, once each.)
    const auto survey = writes_files() ? folder.survey(64) : data::MaskSurvey{};
    if (survey.files_read > 0 && survey.mean_hole_ratio > 0.5) {
      message("warning: the mask images in " + options_.mask_dir() + " are " +
              std::to_string(static_cast<int>(std::lround(100 * survey.mean_hole_ratio))) +
              "% hole on average (" + white + "), where holes are usually the lesser part: " +
              (options_.masks_white_valid() ? "leave out --white-valid"
                                            : "if they are white where pixels are known, give "
                                              "--white-valid") +
              " (" + std::to_string(survey.files_read) + " files read)");
    }
    if (survey.without_holes + survey.all_hole > 0) {
      message("warning: of " + std::to_string(survey.files_read) + " mask images read in " +
              options_.mask_dir() + ", " + std::to_string(survey.without_holes) +
              " have no hole and " + std::to_string(survey.all_hole) +
              " are hole everywhere: they teach nothing");
    }
  }
  const auto& group = options_.process_group();
  const int64_t ranks = group ? group->world_size() : 1;
  data::TrainingStream stream(train_files_, data::CropOptions().size(options_.size()), mask_source,
                              options_.batch_size(), options_.seed(), options_.workers(),
                              /*first_example=*/examples_, /*shard=*/group ? group->rank() : 0,
                              /*shards=*/ranks);
  if (group) {
    message("data-parallel: rank " + std::to_string(group->rank()) + " of " +
            std::to_string(ranks) + ", global batch " +
            std::to_string(options_.batch_size() * ranks));
  }
  // What the optimiser updates: the gradients to average and to unscale.
  const auto& trainable = optimizer_->param_groups().front().params();
  // Averaged over the ranks while the backward runs (c10d's DDP engine); every trainable
  // parameter of the network takes part in every step.
  std::unique_ptr<GradientReducer> reducer;
  if (group) reducer = std::make_unique<GradientReducer>(group, trainable);
  stream.set_warning_hook(queue_warning);

  std::ofstream log;
  std::ofstream validation_log;
  // A row that cannot be written (a full disk) ends the run, with a checkpoint: the logs would
  // miss it, and every row after it, while the run went on.
  const auto check_written = [](const std::ofstream& file, const std::filesystem::path& path) {
    if (!file) {
      throw InputError(path.string() + ": cannot write the log" +
                       (errno != 0 ? std::string(": ") + std::strerror(errno) : std::string()));
    }
  };
  if (writes_files()) {
    errno = 0;
    log.open(run_dir_ / kLogFile, std::ios::app);
    check_written(log, run_dir_ / kLogFile);
    if (validation_images_.defined()) {
      validation_log.open(run_dir_ / kValidationFile, std::ios::app);
      check_written(validation_log, run_dir_ / kValidationFile);
    }
  }
  const int64_t last = options_.steps();
  // The validation of the last step, and whether it was left out for a stop.
  std::optional<ValidationReport> final_validation;
  bool final_validation_stopped = false;
  // Rank 0's sample grid of this step; one that cannot be written is only a message.
  const auto write_step_samples = [&] {
    std::ostringstream name;
    // A build without OpenCV writes tensor images.
#ifdef PCONV_WITH_OPENCV
    const char* extension = ".png";
#else
    const char* extension = io::kTensorImageExtension;
#endif
    name << "step_" << std::setw(7) << std::setfill('0') << step_ << extension;
    try {
      write_samples(name.str());
    } catch (const InputError& error) {
      message(std::string("sample not written: ") + error.what());  // the run goes on
    }
  };
  // Every rank validates its part of the images (rank 0 announces the first validation); the
  // last step's is kept, or that it was left out for a stop.
  const auto validate_now = [&] {
    if (result.validations.empty() && writes_files()) {
      message("step " + std::to_string(step_) + ": validating on " +
              std::to_string(validation_images_.size(0)) +
              (validation_images_.size(0) == 1 ? " image" : " images"));
    }
    auto validation = validate(callbacks.should_stop);
    if (!validation) message("step " + std::to_string(step_) + ": validation left out (stopped)");
    if (step_ == last) {
      final_validation = validation;
      final_validation_stopped = !validation;
    }
    return validation;
  };
  // Rank 0 keeps a validation: in the result, its log and the caller's callback.
  const auto record_validation = [&](const ValidationReport& validation) {
    result.validations.push_back(validation);
    validation_log << validation.step << ',' << validation.psnr << ',' << validation.ssim << ','
                   << validation.images << '\n';
    validation_log.flush();
    check_written(validation_log, run_dir_ / kValidationFile);
    if (callbacks.on_validation) callbacks.on_validation(validation);
  };
  const auto run_start = std::chrono::steady_clock::now();
  std::chrono::steady_clock::duration data_wait{};
  auto window_start = run_start;
  int64_t window_images = 0;
  int64_t saved_step = step_;  // of the checkpoint on disk (a resumed run's), if any
  // BatchNorm's running statistics move during the forward pass: kept as they were before each
  // step, so that a step that fails part-way leaves the model as it was at the last whole one.
  std::vector<torch::Tensor> buffers;
  std::vector<torch::Tensor> buffers_before;
  for (const auto& buffer : model_->buffers()) {
    buffers.push_back(buffer);
    buffers_before.push_back(buffer.detach().clone());
  }
  // (A model without BatchNorm, depth 1, has none: _foreach_copy_ refuses empty lists.)
  const auto copy_buffers = [](const std::vector<torch::Tensor>& to,
                               const std::vector<torch::Tensor>& from) {
    if (to.empty()) return;
    torch::NoGradGuard no_grad;
    at::_foreach_copy_(to, from);
  };
  bool inside_step = false;
  try {
    while (step_ < last) {
      bool stop = callbacks.should_stop && callbacks.should_stop();
      if (group) {
        // Every rank stops at the same step, when any of them is asked to.
        auto votes = at::full({1}, stop ? 1.0 : 0.0);
        group->all_reduce_sum({votes});
        stop = votes.item<double>() > 0;
      }
      if (stop) {
        save_checkpoint();  // the caller says so (result.stopped_early), once
        result.stopped_early = true;
        break;
      }
      const auto wait_start = std::chrono::steady_clock::now();
      const auto batch = stream.next();
      data_wait += std::chrono::steady_clock::now() - wait_start;
      deliver_warnings();
      const auto format =
          options_.channels_last() ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
      const auto images = batch.images.to(options_.device()).contiguous(format);
      const auto masks = batch.masks.to(options_.device()).contiguous(format);
      copy_buffers(buffers_before, buffers);
      inside_step = true;
      optimizer_->zero_grad();
      loss::LossTerms terms;
      {
        AutocastScope autocast(options_.device().type(), amp_type_);
        const auto output = std::get<0>(model_(images * masks, masks));
        terms = loss_(output.to(at::kFloat), images, masks);
      }
      const bool scaled = amp_type_ == c10::kHalf;
      const auto loss = scaled ? scaler_.scale(terms.total) : terms.total;
      if (reducer) {
        reducer->backward(loss);  // the scaled gradients' mean: an overflow reaches every rank
      } else {
        loss.backward();
      }
      bool take_step = true;
      if (scaled) {
        std::vector<torch::Tensor> grads;
        grads.reserve(trainable.size());
        for (const auto& parameter : trainable) grads.push_back(parameter.grad());
        take_step = scaler_.unscale(grads);
        scaler_.update();
        if (!take_step) ++skipped_steps_;
      }
      if (take_step) optimizer_->step();
      ++step_;
      examples_ += options_.batch_size() * ranks;  // a skipped fp16 step used its batch too
      inside_step = false;

      window_images += options_.batch_size() * ranks;
      const auto now = std::chrono::steady_clock::now();
      const double seconds = std::chrono::duration<double>(now - window_start).count();
      StepReport report;
      report.step = step_;
      report.losses = terms.values();
      if (group) {
        // Each rank's terms are the means over its part of the batch: their mean over the ranks
        // is the whole batch's, as one process would report it.
        std::vector<double> values;
        for (const auto& term : report.losses) values.push_back(term.second);
        auto sums = at::tensor(values, at::kDouble);
        group->all_reduce_sum({sums});
        sums.div_(static_cast<double>(ranks));
        for (size_t i = 0; i < report.losses.size(); ++i) {
          report.losses[i].second = sums[static_cast<int64_t>(i)].item<double>();
        }
      }
      report.learning_rate = options_.learning_rate();
      report.images_per_second = seconds > 0 ? static_cast<double>(window_images) / seconds : 0;
      if (seconds > 10.0) {  // a rate over the last ~10 s
        window_start = now;
        window_images = 0;
      }
      // Rank 0 logs the step first: a callback or a validation that fails (a rank lost in its
      // all-reduce) leaves the step whole, its row included, for the checkpoint the failure
      // saves.
      if (writes_files()) {
        std::map<std::string, double> values(report.losses.begin(), report.losses.end());
        auto field = [&](const char* name) {
          const auto found = values.find(name);
          return found == values.end() ? std::string() : std::to_string(found->second);
        };
        log << step_ << ',' << field("valid") << ',' << field("hole") << ',' << field("perceptual")
            << ',' << field("style_out") << ',' << field("style_comp") << ',' << field("tv") << ','
            << field("total") << ',' << report.learning_rate << ',' << report.images_per_second
            << '\n';
        log.flush();
        check_written(log, run_dir_ / kLogFile);
      }
      if (callbacks.on_step) callbacks.on_step(report);

      // Every rank validates its part of the images; rank 0 reports.
      std::optional<ValidationReport> validation;
      if (due(step_, options_.validate_every(), last) && validation_images_.defined()) {
        const auto validation_start = std::chrono::steady_clock::now();
        validation = validate_now();
        // The step rate is training's own: the time spent validating is left out of it.
        window_start += std::chrono::steady_clock::now() - validation_start;
      }

      if (!writes_files()) continue;  // rank 0 logs, samples and checkpoints
      if (validation) record_validation(*validation);
      if (due(step_, options_.sample_every(), last)) write_step_samples();
      if (due(step_, options_.checkpoint_every(), last)) {
        save_checkpoint();
        saved_step = step_;
      }
    }
    // Resumed at the last step (a run stopped in its last validation, or whose model could not
    // be written): the model is written with the last step's validation, done now.
    if (!result.stopped_early && step_ == last && !final_validation && !final_validation_stopped &&
        validation_images_.defined()) {
      if (const auto validation = validate_now(); validation && writes_files()) {
        record_validation(*validation);
        write_step_samples();
      }
    }
    // A stop during the last validation: the run is not done, though its steps are (and
    // checkpointed): --resume validates and writes the model.
    if (final_validation_stopped) result.stopped_early = true;
    deliver_warnings();
  } catch (...) {
    // A failure mid-run (no photo left to read, a rank lost, a log that cannot be written)
    // keeps the steps done since the last checkpoint: the parameters are those of step_, whole,
    // and the running statistics are put back to theirs.
    if (inside_step) copy_buffers(buffers, buffers_before);
    if (writes_files() && step_ > saved_step) {
      try {
        save_checkpoint();
        message("failed at step " + std::to_string(step_) +
                "; checkpoint saved, --resume continues once the cause is fixed");
      } catch (const std::exception&) {
        // the disk may be what failed: the error that ended the run is the one to report
      }
    }
    try {
      deliver_warnings();
    } catch (...) {
      // the caller's callback failing now: the error that ended the run is the one to report
    }
    throw;
  }
  result.step = step_;
  result.skipped_steps = skipped_steps_;
  const double run_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count();
  const double wait_seconds = std::chrono::duration<double>(data_wait).count();
  result.data_wait_fraction = run_seconds > 0 ? wait_seconds / run_seconds : 0.0;
  std::ostringstream summary;
  summary << std::fixed << std::setprecision(1) << "waited " << wait_seconds << " s of "
          << run_seconds << " s for data (" << 100.0 * result.data_wait_fraction << "%)";
  if (skipped_steps_ > 0) {
    summary << "; " << skipped_steps_ << " float16 step(s) skipped for overflowing gradients "
            << "(loss scale now " << scaler_.scale_value() << ")";
  }
  if (const auto skipped = stream.skipped(); !skipped.empty()) {
    summary << "; " << skipped.size() << " photo(s) skipped (unreadable or too small)";
  }
  message(summary.str());

  if (step_ >= last && !result.stopped_early && writes_files()) {
    io::ModelMetadata metadata;
    metadata.training_data = std::to_string(train_files_.size()) + " images";
    if (!options_.data_description().empty()) {
      metadata.training_data += " in " + options_.data_description();
    }
    metadata.command = command_;
    metadata.created = now_iso();
    metadata.steps = step_;
    metadata.image_size = options_.size();
    if (!result.validations.empty()) {
      metadata.metrics["val_psnr"] = result.validations.back().psnr;
      metadata.metrics["val_ssim"] = result.validations.back().ssim;
    }
    model_->to(at::kCPU);
    io::save_model(run_dir_ / kModelFile, model_, metadata, options_.half_weights());
    model_->to(options_.device());
    result.model_file = run_dir_ / kModelFile;
  }
  return result;
}

}  // namespace pconv::train
