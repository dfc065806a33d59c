#include "masks.h"

#include "../common.h"
#include "../exit_codes.h"

#include <pconv/data/mask_generator.h>
#include <pconv/error.h>
#include <pconv/io/image_file.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace pconv::app {

void setup_masks(CLI::App& app) {
  auto options = std::make_shared<MasksOptions>();
  auto* command = app.add_subcommand(
      "masks",
      "Write generated irregular hole masks (free-form strokes and blobs) as PNG files, "
      "white = hole, named mask_00000.png, mask_00001.png, ...");
  command->add_option("-n,--count", options->count, "Number of masks")
      ->transform(whole_number(1, 10000000))
      ->capture_default_str();
  command->add_option("-o,--out", options->out_dir, "Folder to write into (created if missing)")
      ->required();
  command->add_option("--size", options->size, "Mask size, WIDTHxHEIGHT")->capture_default_str();
  command->add_option("--seed", options->seed, "Random seed: the same seed gives the same masks")
      ->transform(seed_number())
      ->capture_default_str();
  command->add_option("--min-ratio", options->min_ratio, "Smallest hole fraction")
      ->check(number_in(0.0, 1.0))
      ->capture_default_str();
  command->add_option("--max-ratio", options->max_ratio, "Largest hole fraction")
      ->check(number_in(0.0, 1.0))
      ->capture_default_str();
  command
      ->add_option("--thin-strokes", options->thin_strokes,
                   "Fraction of the strokes drawn 1 to 3 pixels wide, as scratches are")
      ->check(number_in(0.0, 1.0))
      ->capture_default_str();
  command->add_flag("--overwrite", options->overwrite, "Replace mask files that already exist");
  command->callback([options] { run_masks(*options); });
}

void run_masks(const MasksOptions& options) {
  const auto [width, height] = parse_size(options.size, "--size");
  constexpr int64_t kLargestSide = 16384;  // a 16384 x 16384 mask is already 256 MB
  if (width > kLargestSide || height > kLargestSide) {
    throw CLI::ValidationError(
        "--size", fmt::format("'{}' is larger than {} on a side", options.size, kLargestSide));
  }
  if (options.min_ratio > options.max_ratio) {
    throw CLI::ValidationError("--min-ratio", fmt::format("{} is larger than --max-ratio {}",
                                                          options.min_ratio, options.max_ratio));
  }
  const data::MaskGenerator generator(data::MaskGeneratorOptions(height, width)
                                          .min_ratio(options.min_ratio)
                                          .max_ratio(options.max_ratio)
                                          .thin_probability(options.thin_strokes),
                                      options.seed);
  // A size that no mask of the ratio range fits (1x1) is a usage error, before any file exists.
  std::vector<uint8_t> first_holes;
  try {
    first_holes = generator.holes(0);
  } catch (const InputError& error) {
    std::string reason = error.what();
    const std::string prefix = "MaskGenerator: ";
    if (reason.rfind(prefix, 0) == 0) reason = reason.substr(prefix.size());
    throw CLI::ValidationError("--size", reason.substr(0, reason.find('\n')));
  }
  const std::filesystem::path out_dir(options.out_dir);
  StopOnSignal stop_on_signal;       // Ctrl-C stops between two masks
  OutputFolder out_folder(out_dir);  // taken away again if the command fails
  out_folder.lock();                 // one command writing into it at a time

  // The masks kept from an earlier run must be masks of the size asked for now: checked before
  // anything is written.
  std::vector<bool> kept(static_cast<size_t>(options.count), false);
  std::error_code listing_error;
  for (std::filesystem::directory_iterator it(out_dir, listing_error), end;
       !options.overwrite && !listing_error && it != end; it.increment(listing_error)) {
    // mask_NNNNN.png with an index this command writes, exactly as it names them.
    const std::string name = it->path().filename().string();
    if (name.size() < 14 || name.rfind("mask_", 0) != 0) continue;
    const auto digits = name.substr(5, name.size() - 9);
    if (digits.find_first_not_of("0123456789") != std::string::npos) continue;
    const int64_t index = std::stoll(digits.substr(0, 18));
    if (index >= options.count || name != fmt::format("mask_{:05d}.png", index)) continue;
    const auto& path = it->path();
    // Only a file counts as a mask already there; anything else is the write's error.
    std::error_code status_error;
    if (!std::filesystem::is_regular_file(path, status_error)) continue;
    io::Image mask;
    try {
      mask = io::read_image(path);
    } catch (const InputError& error) {
      throw InputError(std::string(error.what()) +
                       "; it has a mask's name: --overwrite replaces the masks, or choose another "
                       "folder");
    }
    if (mask.pixels.size(1) != height || mask.pixels.size(2) != width) {
      throw InputError(fmt::format(
          "{}: a {}x{} mask from an earlier run, not {}x{}; --overwrite replaces the masks, or "
          "choose another folder",
          path.string(), mask.pixels.size(2), mask.pixels.size(1), width, height));
    }
    // Black and white in one channel, as this command writes them: a photo or a drawing of
    // that name would otherwise be kept as a mask.
    const auto& levels = mask.pixels;
    if (levels.size(0) != 1 || !levels.eq(0).logical_or(levels.eq(1)).all().item<bool>()) {
      throw InputError(
          fmt::format("{}: not a mask as pconv masks writes them (black and white, one channel); "
                      "--overwrite replaces the masks, or choose another folder",
                      path.string()));
    }
    kept[static_cast<size_t>(index)] = true;
  }

  const int64_t kept_count = std::count(kept.begin(), kept.end(), true);
  if (kept_count == options.count) {
    out_folder.keep();
    spdlog::info(
        "{} of {}x{} in {} {} kept (--overwrite replaces them)",
        options.count == 1 ? std::string("the mask") : fmt::format("all {} masks", options.count),
        width, height, out_dir.string(), options.count == 1 ? "exists and was" : "exist and were");
    return;
  }
  Progress progress("masks", options.count - kept_count);  // the masks to write
  double ratio_sum = 0.0;
  for (int64_t index = 0; index < options.count; ++index) {
    if (stop_requested()) {
      out_folder.keep();  // whole masks; the same command goes on (existing ones are kept)
      throw Interrupted(fmt::format("stopped after {} of {} masks in {}", index, options.count,
                                    out_dir.string()));
    }
    const auto path = out_dir / fmt::format("mask_{:05d}.png", index);
    if (!kept[static_cast<size_t>(index)]) {
      const auto holes = index == 0 ? first_holes : generator.holes(static_cast<uint64_t>(index));
      ratio_sum += data::MaskGenerator::hole_ratio(holes);
      io::write_mask(path, holes, height, width);
      progress.advance();
    }
  }
  progress.finish();
  out_folder.keep();
  const int64_t written = options.count - kept_count;  // at least one: all kept returned above
  spdlog::info(
      "wrote {} mask{} of {}x{} to {} (mean hole ratio {:.3f}){}", written, written == 1 ? "" : "s",
      width, height, out_dir.string(), ratio_sum / static_cast<double>(written),
      kept_count > 0
          ? fmt::format("; {} existed and were kept (--overwrite replaces them)", kept_count)
          : std::string());
}

}  // namespace pconv::app
