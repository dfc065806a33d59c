#include "inpaint.h"

#include <pconv/data/image_folder.h>
#include <pconv/error.h>
#include <pconv/eval/evaluation.h>
#include <pconv/infer/inpainter.h>
#include <pconv/io/image_file.h>
#include <pconv/io/model_file.h>

#include "../exit_codes.h"

#include <ATen/ATen.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <future>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string_view>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

namespace pconv::app {
namespace {

namespace fs = std::filesystem;

// An image with its hole map, read ahead of use.
struct Loaded {
  io::Image image;
  at::Tensor holes;  // (H, W) bool
  bool holes_from_alpha = false;
};

// The image and its hole map from `mask_path` or, with none, from the image's alpha channel;
// `no_mask` says why there is none, for the error of an image without alpha.
Loaded load(const fs::path& image_path, const fs::path& mask_path, const InpaintOptions& options,
            const std::string& no_mask = "no mask given") {
  Loaded loaded;
  loaded.image = io::read_image(image_path);
  const int64_t height = loaded.image.pixels.size(1);
  const int64_t width = loaded.image.pixels.size(2);
  if (mask_path.empty()) {
    if (loaded.image.pixels.size(0) != 4) {
      throw InputError(image_path.string() + ": " + no_mask +
                       " and the image has no alpha channel to take holes from");
    }
    loaded.holes = io::holes_from_alpha(loaded.image);
    loaded.holes_from_alpha = true;
    return loaded;
  }
  auto mask = io::read_image(mask_path);
  const int64_t mask_h = mask.pixels.size(1);
  const int64_t mask_w = mask.pixels.size(2);
  if (mask_h != height || mask_w != width) {
    if (!options.resize_mask) {
      throw InputError(
          fmt::format("{}: mask is {}x{} but the image {} is {}x{} (give "
                      "--resize-mask to scale it)",
                      mask_path.string(), mask_w, mask_h, image_path.string(), width, height));
    }
  }
  loaded.holes = io::holes_from_mask(mask, options.white_valid ? io::MaskConvention::kWhiteIsValid
                                                               : io::MaskConvention::kWhiteIsHole);
  // A photo given as the mask (IMG and MASK swapped, a wrong file) still thresholds to some
  // holes: said, where a quarter of the mask is neither near black nor near white (a drawn
  // mask's soft edges are a few percent).
  const auto colours = mask.pixels.narrow(0, 0, std::min<int64_t>(mask.pixels.size(0), 3));
  const auto brightest = std::get<0>(colours.to(at::kFloat).max(0));
  const auto grey =
      brightest.gt(0.125).logical_and(brightest.lt(0.875)).to(at::kFloat).mean().item<double>();
  if (grey > 0.25) {
    spdlog::warn(
        "{}: {:.0f}% of the mask is grey, neither near black nor near white: a photo "
        "rather than a mask? (read as {} where at least half bright)",
        mask_path.string(), 100.0 * grey, options.white_valid ? "known" : "hole");
  }
  if (mask_h != height || mask_w != width) {
    // Another shape (a mask of the rotated picture, a crop) is stretched: said, not hidden.
    const double stretch =
        static_cast<double>(mask_w * height) / static_cast<double>(mask_h * width);
    if (stretch > 1.02 || stretch < 1 / 1.02) {
      spdlog::warn(
          "{}: the mask ({}x{}) has another shape than the image {} ({}x{}); "
          "--resize-mask stretches it by {:.2f} in width against height",
          mask_path.string(), mask_w, mask_h, image_path.string(), width, height, 1 / stretch);
    }
    loaded.holes = infer::scale_holes(loaded.holes, height, width);  // a thin scratch stays
  }
  return loaded;
}

// Side-by-side picture: input with the holes in white | result | mask (white = hole), RGB 8-bit.
void write_compare(const fs::path& path, const Loaded& loaded, const at::Tensor& result) {
  const auto rgb = [](const at::Tensor& pixels) {
    const auto colour = pixels.size(0) >= 3 ? pixels.narrow(0, 0, 3) : pixels.expand({3, -1, -1});
    return colour.to(at::kFloat);
  };
  const auto mask = loaded.holes.unsqueeze(0).expand({3, -1, -1}).to(at::kFloat);
  io::write_image(
      path,
      eval::side_by_side(
          {eval::with_white_holes(rgb(loaded.image.pixels), loaded.holes), rgb(result), mask}),
      8);
}

// Writes the result of one image; returns a one-line description. `before_writing` (if any) is
// called once the result is computed, just before its files are written.
std::string inpaint_one(const infer::Inpainter& inpainter, const Loaded& loaded,
                        const fs::path& image_path, const fs::path& mask_path,
                        const fs::path& out_path, const InpaintOptions& options,
                        const infer::InpaintOptions& inpaint_options,
                        const std::function<void()>& before_writing = {}) {
  const auto& pixels = loaded.image.pixels;
  const int64_t height = pixels.size(1);
  const int64_t width = pixels.size(2);
  const int bit_depth = io::keeps_16_bit(out_path) ? loaded.image.bit_depth : 8;
  const auto hole_count = loaded.holes.sum().item<int64_t>();
  const auto& hole_source = mask_path.empty() ? image_path : mask_path;
  // Transparency the output's format cannot hold is said, not lost silently.
  const auto warn_if_alpha_dropped = [&](const at::Tensor& written) {
    if (written.size(0) == 4 && !io::keeps_alpha(out_path) &&
        (written[3] < 1.0).any().item<bool>()) {
      spdlog::warn(
          "{}: the format keeps no transparency, so the alpha channel is left out (.png, "
          ".tif and .webp keep it)",
          out_path.string());
    }
  };
  if (hole_count == 0) {
    spdlog::warn("{}: no hole pixel; writing the image unchanged", hole_source.string());
    warn_if_alpha_dropped(pixels);
    if (before_writing) before_writing();
    io::write_image(out_path, pixels, bit_depth);
    return "unchanged (no hole)";
  }
  if (hole_count == height * width) {
    throw InputError(hole_source.string() +
                     ": every pixel is a hole; there is nothing to inpaint from");
  }
  const auto start = std::chrono::steady_clock::now();
  auto result = inpainter.inpaint(pixels, loaded.holes, inpaint_options);
  if (loaded.holes_from_alpha) {
    // The transparent pixels were the holes: they are now filled, so opaque.
    result.pixels[3].masked_fill_(loaded.holes, 1.0);
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  warn_if_alpha_dropped(result.pixels);
  if (before_writing) before_writing();
  // The side-by-side picture first, so that a bad --compare path leaves no result behind; and
  // removed again if the result cannot be written.
  if (!options.compare.empty()) write_compare(options.compare, loaded, result.pixels);
  try {
    io::write_image(out_path, result.pixels, bit_depth);
  } catch (...) {
    std::error_code ignored;
    if (!options.compare.empty()) fs::remove(options.compare, ignored);
    throw;
  }
  return fmt::format("{}x{}, {:.1f}% hole, {} strategy ({} pass{}), {:.2f} s", width, height,
                     100.0 * static_cast<double>(hole_count) / static_cast<double>(height * width),
                     infer::to_string(result.strategy), result.passes,
                     result.passes == 1 ? "" : "es", seconds);
}

// IMAGE.inpainted.EXT beside the image, in its format; as PNG where pconv writes no such
// format (a name without an extension, .jfif, .gif).
fs::path default_output(const fs::path& image) {
  const std::string extension =
      io::has_image_extension(image) ? image.extension().string() : std::string(".png");
  return image.parent_path() / (image.stem().string() + ".inpainted" + extension);
}

// Why no file can be written in `folder` (not writable, a read-only file system), found by
// making an empty one and removing it at once; empty where one can be.
std::string write_problem(const fs::path& folder) {
  const auto probe = (folder.empty() ? fs::path(".") : folder) /
                     (".pconv-write-test." + std::to_string(::getpid()));
  const int descriptor = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (descriptor < 0) return errno == EEXIST ? std::string() : std::strerror(errno);
  ::unlink(probe.c_str());
  ::close(descriptor);
  return {};
}

// Checks that a file can be written in `folder`.
void check_writable_folder(const fs::path& folder) {
  if (const auto problem = write_problem(folder); !problem.empty()) {
    throw InputError(folder.string() + ": the output folder is not writable (" + problem + ")");
  }
}

fs::path single_output(const InpaintOptions& options) {
  return options.out.empty() ? default_output(options.image) : fs::path(options.out);
}

void run_single(const infer::Inpainter& inpainter, const InpaintOptions& options,
                const infer::InpaintOptions& inpaint_options) {
  const fs::path out = single_output(options);
  // The folders of -o and --compare are made as needed, and taken away again if the image
  // fails. One that cannot be made ends the command before the work, naming the file and why.
  std::vector<std::unique_ptr<OutputFolder>> out_folders;
  for (const auto& file : {out, fs::path(options.compare)}) {
    if (!file.has_parent_path()) continue;
    try {
      out_folders.push_back(std::make_unique<OutputFolder>(file.parent_path()));
    } catch (const InputError& error) {
      throw InputError(file.string() + ": cannot write the file: " + error.what());
    }
  }
  // Before the network runs, not after it: a result that cannot be written is all work lost.
  for (const auto& file : {out, fs::path(options.compare)}) {
    if (file.empty()) continue;
    if (const auto problem = write_problem(file.parent_path()); !problem.empty()) {
      throw InputError(file.string() + ": cannot write the file: " + problem);
    }
  }
  const auto loaded = load(options.image, options.mask, options);
  // Until the result is computed a signal ends the command at once, without a result. Once its
  // files are being written, one lets it finish: a result on disk always comes with its path on
  // stdout and exit code 0, never with 130 and no path.
  std::optional<StopOnSignal> finishing;
  const auto summary = inpaint_one(inpainter, loaded, options.image, options.mask, out, options,
                                   inpaint_options, [&finishing] { finishing.emplace(); });
  spdlog::info("{}: {}", options.image, summary);
  for (const auto& folder : out_folders) folder->keep();
  fmt::print("{}\n", out.string());
  // The path must arrive (a full disk, a closed pipe); where it cannot, the error says where
  // the result is, which is kept.
  errno = 0;
  if (std::fflush(stdout) != 0 || std::ferror(stdout) != 0) {
    throw InputError(fmt::format("cannot write to the standard output: {}; the result is in {}",
                                 errno != 0 ? std::strerror(errno) : "write error", out.string()));
  }
  if (!options.compare.empty()) spdlog::info("side-by-side picture: {}", options.compare);
  if (stop_requested()) spdlog::info("interrupted while the result was written; it is complete");
  // The result and its path are out: from here to the exit (LibTorch's tear-down included) a
  // signal no longer turns the success into 130 or 143.
  ignore_stop_signals();
}

void run_batch(const infer::Inpainter& inpainter, const InpaintOptions& options,
               const infer::InpaintOptions& inpaint_options) {
  const fs::path input_dir = options.input_dir;
  const fs::path out_dir = options.out;
  auto files = list_images("--input", options.input_dir);
  // One mask for every image, or masks matched by file stem.
  std::map<std::string, fs::path> masks_by_stem;
  fs::path single_mask;
  std::error_code masks_error;  // a loop of links, say: one line, not a filesystem_error
  if (options.masks.empty()) {
    // Every image's transparency marks its holes.
  } else if (fs::is_directory(options.masks, masks_error)) {
    // Two masks of one stem are a mistake only where an image of that name would take one.
    std::set<std::string> image_stems;
    for (const auto& file : files) image_stems.insert(file.stem().string());
    for (const auto& mask : list_images("--masks", options.masks)) {
      const auto [it, added] = masks_by_stem.emplace(mask.stem().string(), mask);
      if (!added && image_stems.count(mask.stem().string()) > 0) {
        throw InputError(fmt::format("{} and {}: two masks for the images named '{}'",
                                     it->second.string(), mask.string(), mask.stem().string()));
      }
    }
  } else {
    single_mask = options.masks;
    if (!fs::is_regular_file(single_mask, masks_error)) {
      throw InputError(options.masks + ": " +
                       (masks_error ? masks_error.message() : "no such file or folder"));
    }
    // The one mask of every image: a bad one ends here, as one that leaves nothing to inpaint
    // from in any image.
    const auto holes = io::holes_from_mask(
        io::read_image(single_mask),
        options.white_valid ? io::MaskConvention::kWhiteIsValid : io::MaskConvention::kWhiteIsHole);
    if (holes.numel() > 0 && holes.all().item<bool>()) {
      throw InputError(options.masks +
                       ": every pixel is a hole; there is nothing to inpaint from in any image");
    }
  }
  OutputFolder out_folder(out_dir);  // taken away again if no image is inpainted
  out_folder.lock();                 // one command writing into it at a time
  check_writable_folder(out_dir);

  struct Job {
    fs::path image;
    fs::path mask;
    fs::path out;
  };
  std::vector<Job> jobs;
  std::vector<std::string> failures;
  int64_t skipped = 0;
  for (const auto& file : files) {
    // The name under --input, a link's own (fs::relative would follow the link to its target,
    // which may lie anywhere, and write the result over it).
    const auto out = out_dir / file.lexically_relative(input_dir);
    if (options.skip_existing && fs::is_regular_file(out)) {
      ++skipped;
      continue;
    }
    // A tensor image's result (.pt) must not take the place of a model or a checkpoint kept
    // in the output folder.
    if (const auto kind = pconv_file_kind(out); !kind.empty()) {
      failures.push_back(out.string() + ": is " + kind + "; not replaced by the result of " +
                         file.string());
      spdlog::warn("{}", failures.back());
      continue;
    }
    // No mask of its name (or no --masks): the image's transparency, if it has any, marks its
    // holes, as for one image given without a mask.
    fs::path mask = single_mask;
    if (single_mask.empty()) {
      const auto it = masks_by_stem.find(file.stem().string());
      if (it != masks_by_stem.end()) mask = it->second;
    }
    // A link among the inputs may lead into -o: a result never replaces the file it reads.
    std::error_code ignored;
    const bool is_image = fs::equivalent(out, file, ignored);
    if (is_image || fs::equivalent(out, mask, ignored)) {
      failures.push_back(out.string() + ": is the input " + (is_image ? file : mask).string() +
                         " (through a link); not replaced by its result");
      spdlog::warn("{}", failures.back());
      continue;
    }
    jobs.push_back({file, mask, out});
  }

  // The next image is read on another thread while the current one is inpainted.
  const auto read = [&options](const Job& job) {
    return load(job.image, job.mask, options,
                options.masks.empty() ? std::string("no --masks given")
                                      : "no mask named '" + job.image.stem().string() + ".*' in " +
                                            options.masks + ",");
  };
  int64_t done = 0;
  if (skipped > 0 || !failures.empty()) {
    spdlog::info("{} of {} images to inpaint ({} skipped as their output exists, {} left out)",
                 jobs.size(), files.size(), skipped, failures.size());
  }
  if (!jobs.empty()) {
    Progress progress("inpaint", static_cast<int64_t>(jobs.size()));
    std::future<Loaded> next = std::async(std::launch::async, read, jobs[0]);
    for (size_t i = 0; i < jobs.size(); ++i) {
      if (stop_requested()) {
        if (done == 0) throw Interrupted("stopped before the first image; no results written");
        out_folder.keep();
        throw Interrupted(
            fmt::format("stopped after {} of {} images; results so far in {} "
                        "(--skip-existing goes on from there)",
                        done, jobs.size(), out_dir.string()));
      }
      const auto& job = jobs[i];
      auto pending = std::move(next);
      next = i + 1 < jobs.size() ? std::async(std::launch::async, read, jobs[i + 1])
                                 : std::future<Loaded>();
      try {
        const auto current = pending.get();
        std::error_code ignored;
        fs::create_directories(job.out.parent_path(), ignored);
        const auto summary =
            inpaint_one(inpainter, current, job.image, job.mask, job.out, options, inpaint_options);
        spdlog::debug("{}: {}", job.image.string(), summary);
        ++done;
      } catch (const InputError& error) {
        failures.emplace_back(error.what());
        progress.note(error.what(), /*warning=*/true);
      } catch (const std::exception& error) {
        // An image too large for this machine's memory (LibTorch's, OpenCV's or C++'s
        // allocation failing): the smaller ones are still done.
        const auto* torch_error = dynamic_cast<const c10::Error*>(&error);
        const auto memory = out_of_memory_message(
            torch_error != nullptr ? torch_error->what_without_backtrace() : error.what());
        if (memory.empty()) throw;
        failures.push_back(job.image.string() + ": " + memory);
        progress.note(failures.back(), /*warning=*/true);
      }
      progress.advance();
    }
    progress.finish();
  }
  if (done > 0) out_folder.keep();
  spdlog::info("{} inpainted, {} skipped (output exists), {} failed; {}", done, skipped,
               failures.size(),
               done + skipped > 0 ? "results in " + out_dir.string() : std::string("no results"));
  if (!failures.empty()) {
    throw InputError(fmt::format("{} of {} images failed (first: {})", failures.size(),
                                 files.size(), failures.front()));
  }
}

}  // namespace

void setup_inpaint(CLI::App& app) {
  auto options = std::make_shared<InpaintOptions>();
  auto* command = app.add_subcommand(
      "inpaint", "Fill the holes of an image (IMG MASK) or of a folder of images (--input DIR)");
  command->footer(
      "Masks are white where pixels are missing, unless --white-valid; a pixel\n"
      "counts as white when its brightest channel is at least half the full scale (and its\n"
      "alpha, if any, too). An RGBA image without a mask uses its transparent pixels (alpha\n"
      "below half) as the holes, and is made opaque there; with a mask, alpha is kept as\n"
      "it is. The known pixels are kept exactly (unless --raw), and the result has the\n"
      "input's format, channels and bit depth unless -o names another format.\n"
      "Prints the output path. Batch: pconv inpaint --input DIR --masks DIR|FILE -o DIR; masks\n"
      "are matched by file stem (or one mask for all); bad files are reported and skipped\n"
      "(exit code 3 at the end).\n\n" +
      std::string(kExitCodesHelp));
  command->add_option("image", options->image, "Image to inpaint");
  command->add_option("mask", options->mask,
                      "Mask image (white = hole), the image's size unless --resize-mask; an RGBA "
                      "image without one uses its transparent pixels");
  command->add_option("--input", options->input_dir, "Folder of images to inpaint (batch)");
  command->add_option("--masks", options->masks,
                      "Batch: folder of masks matched to the images by file stem, or one mask "
                      "file for all; an image without a mask of its name (or without --masks) "
                      "has its transparent pixels filled");
  command->add_option("-o,--out", options->out,
                      "Output file (default: IMG's folder, NAME.inpainted.EXT); batch: output "
                      "folder (required), keeping the input folder's structure");
  command->add_option("--model", options->model,
                      "Model file (default: $PCONV_MODEL, else the shipped default model)");
  command->add_flag("--white-valid", options->white_valid,
                    "Masks are white where pixels are known (the paper's convention)");
  command->add_flag("--resize-mask", options->resize_mask,
                    "Scale a mask of another size to the image (a pixel is a hole where any "
                    "mask pixel under it is one)");
  command->add_flag("--raw", options->raw,
                    "Write the network's output everywhere instead of keeping known pixels");
  command
      ->add_option("--strategy", options->strategy,
                   "full: whole image; crop: boxes around the holes with context; resize: "
                   "scaled down to --resize-side; auto: full if it fits --max-memory, else "
                   "crop when the holes are local, else resize")
      ->check(CLI::IsMember({"auto", "full", "crop", "resize"}))
      ->capture_default_str();
  command
      ->add_option(
          "--max-memory", options->max_memory_mb,
          "Memory budget in MB for one network pass (auto strategy; how far resize keeps a "
          "narrow picture's shorter side at 64)")
      ->transform(whole_number(1, int64_t{1} << 30))
      ->capture_default_str();
  command->add_option("--margin", options->margin, "Context around holes for crop, in pixels")
      ->transform(whole_number(0, 65536))
      ->capture_default_str();
  command
      ->add_option("--resize-side", options->resize_side,
                   "Longer side the resize strategy scales the image to (at least 64: below it "
                   "the network sees too little to fill from; the shorter side is not scaled "
                   "below 64 either)")
      ->transform(whole_number(64, 65536))
      ->capture_default_str();
  add_inference_options(*command, options->inference);
  command->add_option("--compare", options->compare,
                      "Also write a side-by-side picture: input with holes | output | mask");
  command->add_flag("--skip-existing", options->skip_existing,
                    "Leave images whose output file exists (in a batch, or the one image's "
                    "output)");
  add_common_options(*command, options->common);
  command->callback([options] { run_inpaint(*options); });
}

void run_inpaint(const InpaintOptions& options) {
  const bool batch = !options.input_dir.empty();
  if (batch == !options.image.empty()) {
    throw CLI::ValidationError("inpaint",
                               "give either IMG [MASK] or --input DIR [--masks ...] -o DIR");
  }
  if (batch && options.out.empty()) {
    throw CLI::ValidationError("--input", "batch mode needs -o DIR");
  }
  if (batch && !options.compare.empty()) {
    throw CLI::ValidationError("--compare", "only for one image");
  }
  if (!batch && !options.masks.empty()) {
    throw CLI::ValidationError("--masks", "only with --input; for one image give IMG MASK");
  }
  const auto model_path = options.model.empty() ? default_model_path() : options.model;
  // A batch stops between two images on Ctrl-C (a signal while the model loads counts too); one
  // image ends at once.
  std::optional<StopOnSignal> stop_on_signal;
  if (batch) stop_on_signal.emplace();
  // Never write over an input, nor where a later run would take the results as inputs.
  if (batch) {
    keep_apart(options.out, "the results", "the images", "--input", options.input_dir);
    if (!options.masks.empty()) {
      keep_apart(options.out, "the results", "the masks", "--masks", options.masks);
    }
    // Both folders are listed with their subfolders: one inside the other would give images
    // that are their own masks, or masks inpainted as images.
    std::error_code ignored;
    if (fs::is_directory(options.masks, ignored) && (is_within(options.masks, options.input_dir) ||
                                                     is_within(options.input_dir, options.masks))) {
      throw CLI::ValidationError("--masks",
                                 "'" + options.masks + "' and --input '" + options.input_dir +
                                     "' overlap; keep the masks in a folder of their own");
    }
    if (fs::is_regular_file(options.masks, ignored) && io::has_image_extension(options.masks) &&
        is_within(options.masks, options.input_dir)) {
      throw CLI::ValidationError("--masks", "'" + options.masks + "' is in --input '" +
                                                options.input_dir +
                                                "', where it would be inpainted as an image; keep "
                                                "the mask out of that folder");
    }
  } else {
    const auto out = single_output(options);
    // Before the network runs: a format pconv cannot write is a mistake in the command (the
    // default output has the image's own format).
    for (const auto& [path, option] :
         {std::pair<fs::path, const char*>{options.out, "-o"}, {options.compare, "--compare"}}) {
      std::error_code ignored;
      if (!path.empty() && fs::is_directory(path, ignored)) {
        const bool is_out = std::string_view(option) == "-o";
        throw CLI::ValidationError(
            option,
            fmt::format("'{}' is a folder; give the file to write{}", path.string(),
                        is_out ? " (for a folder of images: --input DIR --masks ... -o DIR)" : ""));
      }
      if (!path.empty() && !io::has_image_extension(path)) {
        throw CLI::ValidationError(
            option, fmt::format("'{}': {} no image format pconv writes ({})", path.string(),
                                path.has_extension() ? "the extension names"
                                                     : "no extension, so the name gives",
                                io::image_extensions_text()));
      }
    }
    std::error_code same_error;
    if (fs::is_directory(options.image, same_error)) {
      throw InputError(options.image +
                       ": is a folder, not an image file (for a folder of images: "
                       "--input DIR --masks ... -o DIR)");
    }
    if (!options.mask.empty() && fs::equivalent(options.image, options.mask, same_error)) {
      throw CLI::ValidationError("MASK", fmt::format("'{}' is the image itself; give the mask of "
                                                     "its holes (white = hole), or no MASK for an "
                                                     "image with transparent holes",
                                                     options.mask));
    }
    const std::string out_option = options.out.empty() ? "the default output (give -o)" : "-o";
    refuse_overwriting_inputs(
        out, out_option,
        {{options.image, "the image"}, {options.mask, "the mask"}, {model_path, "the model"}});
    refuse_overwriting_inputs(options.compare, "--compare",
                              {{options.image, "the image"},
                               {options.mask, "the mask"},
                               {model_path, "the model"},
                               {out, options.out.empty() ? "the default output" : "-o"}});
    if (options.skip_existing && fs::is_regular_file(out) &&
        (options.compare.empty() || fs::is_regular_file(options.compare))) {
      spdlog::info("{} exists; left as it is (--skip-existing)", out.string());
      fmt::print("{}\n", out.string());
      return;
    }
  }
  const c10::Device device = resolve_device(options.common);
  const auto network = inference_options(options.inference, device);
  io::ModelMetadata metadata;
  const infer::Inpainter inpainter(io::load_model(model_path, &metadata), device, network);
  spdlog::debug("model {} ({} steps) on {}, {}, {}", model_path, metadata.steps, device.str(),
                infer::precision_name(inpainter.options().dtype()),
                infer::to_string(inpainter.options().layout()));
  const auto inpaint_options = infer::InpaintOptions()
                                   .strategy(infer::parse_strategy(options.strategy))
                                   .composite(!options.raw)
                                   .crop_margin(options.margin)
                                   .resize_side(options.resize_side)
                                   .memory_budget(options.max_memory_mb << 20);
  if (batch) {
    run_batch(inpainter, options, inpaint_options);
  } else {
    run_single(inpainter, options, inpaint_options);
  }
}

}  // namespace pconv::app
