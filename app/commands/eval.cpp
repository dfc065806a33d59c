#include "eval.h"

#include <pconv/data/image_folder.h>
#include <pconv/error.h>
#include <pconv/eval/evaluation.h>
#include <pconv/infer/inpainter.h>
#include <pconv/io/atomic_file.h>
#include <pconv/io/classical_inpaint.h>
#include <pconv/io/image_file.h>
#include <pconv/io/model_file.h>
#include <pconv/nn/functional/partial_conv2d.h>

#include "../exit_codes.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

namespace pconv::app {
namespace {

nlohmann::json scores_json(const eval::Scores& s) {
  return {{"count", s.count}, {"psnr", s.psnr}, {"ssim", s.ssim}, {"l1", s.l1}};
}

// Everything but the timings, so that one seed gives the same file on every run.
std::string to_json(const eval::EvalReport& report, const std::string& model_path,
                    const std::string& precision) {
  nlohmann::json bins = nlohmann::json::array();
  for (size_t b = 0; b < report.bins.size(); ++b) {
    bins.push_back({{"low", report.bins[b].low},
                    {"high", report.bins[b].high},
                    {"mean_hole_ratio", report.mean_hole_ratio[b]}});
  }
  nlohmann::json methods = nlohmann::json::object();
  for (size_t m = 0; m < report.methods.size(); ++m) {
    nlohmann::json per_bin = nlohmann::json::array();
    for (const auto& scores : report.per_bin[m]) per_bin.push_back(scores_json(scores));
    methods[report.methods[m]] = {{"bins", per_bin}, {"all", scores_json(report.overall[m])}};
  }
  const nlohmann::json document = {{"photos", report.photos},
                                   {"size", report.size},
                                   {"seed", report.seed},
                                   {"thin_strokes", report.thin_strokes},
                                   {"upscaled_photos", report.upscaled},
                                   {"model", model_path},
                                   {"precision", precision},
                                   {"bins", bins},
                                   {"methods", methods}};
  return document.dump(2) + "\n";
}

}  // namespace

void setup_eval(CLI::App& app) {
  auto options = std::make_shared<EvalOptions>();
  auto* command = app.add_subcommand(
      "eval", "Measure the model against OpenCV's Telea and Navier-Stokes per hole-ratio bin");
  command->footer(
      "Centre crops of the photos in --data, generated masks in the paper's six hole-ratio\n"
      "bins ((0.01,0.1] ... (0.5,0.6]), the same inputs for every method; PSNR, SSIM and L1 of\n"
      "the composite per bin and overall. Prints the table and writes eval.md, eval.csv,\n"
      "eval.json and examples.png into --out. The same seed gives the same results.\n\n" +
      std::string(kExitCodesHelp));
  command->add_option("--data", options->data_dir, "Folder of photos (searched recursively)")
      ->required();
  command->add_option("--model", options->model,
                      "Model file (default: $PCONV_MODEL, else the shipped default model)");
  command->add_option("-o,--out", options->out_dir, "Folder for the reports")
      ->capture_default_str();
  command
      ->add_option("--size", options->size,
                   "Side of the square centre crops (at least 64: SSIM's 11x11 windows weigh "
                   "the 5 pixels at each edge less, which on a 16x16 crop hid whole holes)")
      ->transform(whole_number(64, 8192))
      ->capture_default_str();
  command->add_option("--per-bin", options->per_bin, "Examples per bin (0: one per photo)")
      ->transform(whole_number(0, 100000))
      ->capture_default_str();
  command->add_option("--seed", options->seed, "Seed of the masks")
      ->transform(seed_number())
      ->capture_default_str();
  command
      ->add_option("--thin-strokes", options->thin_strokes,
                   "Fraction of the masks' strokes drawn 1 to 3 pixels wide, as scratches "
                   "are; 0: the masks of earlier versions")
      ->check(number_in(0.0, 1.0))
      ->capture_default_str();
  command->add_option("--radius", options->radius, "Neighbourhood radius of Telea and NS, pixels")
      ->check(positive_number())
      ->capture_default_str();
  command->add_option("--examples", options->examples, "Examples per bin in examples.png")
      ->transform(whole_number(1, 16))
      ->capture_default_str();
  command->add_flag("--no-baselines", options->no_baselines, "Only the model");
  add_inference_options(*command, options->inference);
  add_common_options(*command, options->common);
  command->callback([options] { run_eval(*options); });
}

void run_eval(const EvalOptions& options) {
  StopOnSignal stop_on_signal;  // Ctrl-C: no reports, no folder left, exit 130
  const c10::Device device = resolve_device(options.common);
  // The reports never mix with the photos (examples.png would be read as one next time).
  keep_apart(options.out_dir, "the reports", "the photos", "--data", options.data_dir);
  auto photos = list_images("--data", options.data_dir);
  const auto model_path = options.model.empty() ? default_model_path() : options.model;
  auto inpainter = std::make_shared<infer::Inpainter>(io::load_model(model_path), device,
                                                      inference_options(options.inference, device));
  std::vector<std::pair<std::string, eval::Method>> methods;
  methods.emplace_back("pconv", [inpainter](const at::Tensor& image, const at::Tensor& holes) {
    return inpainter
        ->inpaint(image, holes, infer::InpaintOptions().strategy(infer::Strategy::kFull))
        .pixels;
  });
  const bool baselines = !options.no_baselines && io::classical_inpaint_available();
  if (!options.no_baselines && !baselines) {
    spdlog::warn("this pconv was built without OpenCV: no Telea or Navier-Stokes baselines");
  }
  if (baselines) {
    const double radius = options.radius;
    methods.emplace_back("Telea", [radius](const at::Tensor& image, const at::Tensor& holes) {
      return io::classical_inpaint(image, holes, io::ClassicalMethod::kTelea, radius);
    });
    methods.emplace_back("NS", [radius](const at::Tensor& image, const at::Tensor& holes) {
      return io::classical_inpaint(image, holes, io::ClassicalMethod::kNavierStokes, radius);
    });
  }
  const auto eval_options = eval::EvalOptions()
                                .size(options.size)
                                .per_bin(options.per_bin)
                                .seed(options.seed)
                                .thin_strokes(options.thin_strokes)
                                .examples_per_bin(options.examples);
  const int64_t per_bin =
      options.per_bin > 0 ? options.per_bin : static_cast<int64_t>(photos.size());
  const std::string precision =
      infer::precision_name(inpainter->options().dtype()) + ", " +
      infer::to_string(inpainter->options().layout()) +
      (nn::functional::fused_kernels_enabled() ? "" : ", reference kernels") +
      (inpainter->options().thin_hole_growth() > 0
           ? ", thin holes widened by " + std::to_string(inpainter->options().thin_hole_growth())
           : std::string(", thin holes as they are"));
  spdlog::info("{} photos in {}, {}x{} crops, {} per bin, model {} on {} ({})", photos.size(),
               options.data_dir, options.size, options.size, per_bin, model_path, device.str(),
               precision);
  const std::filesystem::path out_dir = options.out_dir;
  OutputFolder out_folder(out_dir);  // made now, so that an unwritable -o fails early
  out_folder.lock();                 // one command writing into it at a time
#ifdef PCONV_WITH_OPENCV
  const std::string grid_name = "examples.png";
#else
  const auto grid_name = std::string("examples") + io::kTensorImageExtension;
#endif
  const std::vector<std::string> names{"eval.md", "eval.csv", "eval.json", grid_name};
  // Before the work: a report's name taken by something a file cannot replace (a folder).
  for (const auto& name : names) {
    std::error_code error;
    const auto status = std::filesystem::status(out_dir / name, error);
    if (std::filesystem::exists(status) && !std::filesystem::is_regular_file(status)) {
      throw InputError((out_dir / name).string() +
                       ": is not a file that the report can replace; move it away");
    }
  }

  Progress progress("eval", per_bin * static_cast<int64_t>(eval::paper_bins().size()));
  const auto report = eval::evaluate(photos, methods, eval_options, [&] {
    if (stop_requested()) throw Interrupted("stopped; no reports written");
    progress.advance();
  });
  progress.finish();
  if (!report.upscaled.empty()) {
    spdlog::warn(
        "{} of the photos {} smaller than the {}x{} crops and {} upscaled, which makes "
        "them easier to fill than real photos ({}{}); a smaller --size avoids it",
        report.upscaled.size(), report.upscaled.size() == 1 ? "is" : "are", options.size,
        options.size, report.upscaled.size() == 1 ? "was" : "were", report.upscaled.front(),
        report.upscaled.size() > 1 ? ", ..." : "");
  }

  // The four reports replace an earlier run's together or not at all: they are written into a
  // hidden folder of a new name in -o, then renamed into place, which needs no space. A full
  // disk half-way leaves the earlier set whole. (Folder listings skip hidden names, so one
  // left by a killed run is never read as photos.)
  std::string pattern = (out_dir / ".pconv-eval-XXXXXX").string();
  if (::mkdtemp(pattern.data()) == nullptr) {
    throw InputError(out_dir.string() + ": cannot write into the folder: " + std::strerror(errno));
  }
  const std::filesystem::path staging = pattern;
  std::error_code error;
  try {
    io::write_file_atomically(staging / names[0], eval::to_markdown(report));
    io::write_file_atomically(staging / names[1], eval::to_csv(report));
    io::write_file_atomically(staging / names[2], to_json(report, model_path, precision));
    io::write_image(staging / names[3], eval::example_grid(report));
    for (const auto& name : names) {
      std::filesystem::rename(staging / name, out_dir / name, error);
      if (error) {
        throw InputError((out_dir / name).string() + ": cannot write the file: " + error.message());
      }
    }
  } catch (...) {
    std::filesystem::remove_all(staging, error);
    throw;
  }
  std::filesystem::remove(staging, error);
  out_folder.keep();
  fmt::print("{}", eval::to_text(report));
  spdlog::info("reports in {}: eval.md, eval.csv, eval.json, {} (columns: input, {}, truth)",
               out_dir.string(), grid_name, fmt::join(report.methods, ", "));
}

}  // namespace pconv::app
