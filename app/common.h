// Pieces that several pconv subcommands share: logging set-up, device and thread choice.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <CLI/CLI.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace pconv::infer {
struct InferenceOptions;
}  // namespace pconv::infer

namespace pconv::app {

/// Options every subcommand accepts.
struct CommonOptions {
  std::string device = "auto";
  int threads = 0;  // 0: LibTorch's default
  bool reference_kernels = false;
};

/// Adds --device, --threads and --reference-kernels to `command`, stored in `options`.
void add_common_options(CLI::App& command, CommonOptions& options);

/// Resolves "auto", "cpu", "cuda" or "cuda:N" to a device that exists here; throws
/// CLI::ValidationError naming the problem otherwise. Applies --threads and
/// --reference-kernels.
c10::Device resolve_device(const CommonOptions& options);

/// How inpaint and eval run the network.
struct InferenceCliOptions {
  std::string precision = "fp32";
  bool half = false;  // the short form of --precision fp16
  int64_t thin_hole_growth = 2;
  bool channels_last = false;
  bool nchw = false;
};

/// Adds --precision, --half, --channels-last, --nchw and --thin-hole-growth to `command`.
void add_inference_options(CLI::App& command, InferenceCliOptions& options);

/// The network's element type and layout on `device`; throws CLI::ValidationError for float16
/// on a CPU.
infer::InferenceOptions inference_options(const InferenceCliOptions& options, c10::Device device);

/// The model used when --model is not given: $PCONV_MODEL if set, else the default model
/// installed beside the program (<prefix>/share/pconv/models/pconv-default.pt), else the one in
/// the source tree it was built from (models/pconv-default.pt).
std::string default_model_path();

/// Whether default_model_path() answered with $PCONV_MODEL in this run.
std::atomic<bool>& model_from_environment();

/// A model error's message, saying where the file's name came from when that was $PCONV_MODEL
/// (the command line did not name it).
std::string model_error_line(const std::string& message);

/// "pconv X.Y.Z (LibTorch A.B.C)".
std::string version_string();

/// The exit codes and the log level's variable, the last lines of every command's --help.
constexpr const char* kExitCodesHelp =
    "Exit codes: 0 success, 1 runtime failure, 2 bad command line, 3 bad input file\n"
    "(or an output that cannot be written), 4 bad model file, 130 interrupted.\n"
    "Logging level also from SPDLOG_LEVEL.";

/// The command line as typed (for records such as the model file); main() sets it.
void set_invocation(int argc, char** argv);
const std::string& invocation();

/// When LibTorch's error `text` says that an allocation failed, that in words with what to try
/// ("out of memory: 2.1 GB more were needed at once; ..."); else empty.
std::string out_of_memory_message(const std::string& text);

/// "a pconv model file", "a pconv training checkpoint" or "a pconv TorchScript export" when
/// `path` is one, which no command replaces with its output (export: but another export); else
/// empty.
std::string pconv_file_kind(const std::filesystem::path& path);

/// A file a command reads, and what it is to the command ("the image", "--model"), for messages.
struct NamedInput {
  std::filesystem::path path;
  std::string role;
};

/// Throws CLI::ValidationError naming `option` when `output` is the same file as one of
/// `inputs` (empty paths are ignored), or is a pconv model file, training checkpoint or (unless
/// `may_replace_export`, for pconv export itself) TorchScript export: writing it would destroy
/// that input, or a model.
void refuse_overwriting_inputs(const std::filesystem::path& output, const std::string& option,
                               std::initializer_list<NamedInput> inputs,
                               bool may_replace_export = false);

/// Whether `path` is `folder` or lies inside it (both resolved: links, "..", relative paths).
bool is_within(const std::filesystem::path& path, const std::filesystem::path& folder);

/// SIGINT and SIGTERM end the process at once (as by default) outside a StopOnSignal, and ask
/// the job inside one to stop. main() calls it first, so that both act the same from the start
/// even where SIGINT came in ignored (a background job of a script, whose Ctrl-C then reaches
/// pconv as it reaches the script).
void handle_stop_signals();

/// SIGINT and SIGTERM ignored from here to the exit: for a command whose result is complete
/// and reported, so that a late signal cannot turn its success into 130 or 143.
void ignore_stop_signals();

/// While alive, SIGINT and SIGTERM only ask the command to stop (stop_requested() turns true):
/// a long job then stops at its next step, keeps or takes away what it wrote, and exits 130.
class StopOnSignal {
 public:
  StopOnSignal();
  ~StopOnSignal();
  StopOnSignal(const StopOnSignal&) = delete;
  StopOnSignal& operator=(const StopOnSignal&) = delete;
};

/// Whether SIGINT or SIGTERM came while a StopOnSignal was alive.
bool stop_requested();

/// Where pconv's log and progress bar go: a duplicate of stderr made at the start, so that the
/// moments in which the library takes file descriptor 2 for itself (io::StderrCapture, around
/// an image decoder on one thread) never take pconv's own lines from other threads with them.
std::FILE* log_stream();

/// Keeps a command's output folder `out` apart from an input folder `folder` (given as
/// `option`, holding `inputs`, such as "the photos"): `out` equal to it, above it or inside it is
/// a usage error. Above, the outputs could replace inputs; inside, a later run would read them as
/// inputs (folders are listed with their subfolders).
void keep_apart(const std::string& out, const std::string& what, const std::string& inputs,
                const std::string& option, const std::string& folder);

/// Logs `message` as a warning: for library callbacks such as data::list_images's skipped
/// entries.
void warn_line(const std::string& message);

/// data::list_images of the folder given as `option` (skipped entries logged as warnings); a
/// folder that is missing, a file, unreadable or without images is an InputError that names the
/// option ("--val photos/val: no such folder").
std::vector<std::filesystem::path> list_images(const std::string& option,
                                               const std::string& folder);

/// Makes `folder` (and its missing parents) for a command's results, or throws InputError.
/// Unless keep() is called, the destructor takes away the folders it made that are empty
/// again, so that a failed command leaves no empty folder behind; files are never removed
/// (each is whole: written under a temporary name and renamed).
class OutputFolder {
 public:
  explicit OutputFolder(const std::filesystem::path& folder);
  ~OutputFolder();
  OutputFolder(const OutputFolder&) = delete;
  OutputFolder& operator=(const OutputFolder&) = delete;

  void keep() { made_.clear(); }

  /// Holds io::lock_folder on the folder until this is destroyed, after any folder it made is
  /// taken away: one command writing into the folder at a time. Throws io::FolderInUse when
  /// another command holds it, and then takes nothing away.
  void lock();

 private:
  std::filesystem::path folder_;
  std::filesystem::path made_;  // the outermost folder this made, or empty
  std::shared_ptr<void> lock_;  // released after the destructor has taken made_ away
};

/// CLI11 checks for finite numbers > 0 and >= 0, with short messages (CLI11's PositiveNumber
/// and NonNegativeNumber let NaN through and print their bounds with 300 digits).
CLI::Validator positive_number();
/// A number more than 0 and at most `high`.
CLI::Validator positive_number(double high);
/// A finite number from `low` to `high` (CLI11's Range lets NaN through and prints its bounds
/// with six decimals).
CLI::Validator number_in(double low, double high);
CLI::Validator non_negative_number();

/// A CLI11 check for a whole number from `low` to `high` (CLI11 would cap a larger one at the
/// type's limit, or wrap a negative one into an unsigned type, without a word). It writes the
/// value back in decimal, so attach it with ->transform: ->check discards what a validator
/// writes, and CLI11 then reads "010" as octal 8.
CLI::Validator whole_number(int64_t low, int64_t high);

/// A CLI11 check for a seed: a whole number from 0 to 2^64 - 1; attached with ->transform, as
/// whole_number.
CLI::Validator seed_number();

/// Adds to every option of `app` and its subcommands that takes a value a check that the value
/// is not empty (CLI11 would take "" as the default) and, for one with a short name, does not
/// begin with '=' ("-o=out.png" would write "=out.png").
void refuse_empty_values(CLI::App& app);

/// Parses "WIDTHxHEIGHT" (e.g. 512x384) into (width, height); throws CLI::ValidationError
/// naming `option` otherwise.
std::pair<int64_t, int64_t> parse_size(const std::string& text, const std::string& option);

/// Progress of a long job on stderr: a bar with count, rate and ETA, redrawn in place, on a
/// terminal; otherwise a plain log line every 10% (at most one a second, at least one every
/// 30 s) and one at the end. Silent with -q.
class Progress {
 public:
  Progress(std::string label, int64_t total);
  void advance(int64_t steps = 1);
  /// Starts the count at `done` (a resumed job) without counting it in the rate.
  void resume_at(int64_t done);
  void finish();
  /// Text shown after the counts (e.g. the current loss).
  void set_status(std::string status);
  /// Logs a line (a warning if `warning`) without garbling the bar. Safe from any thread (the
  /// data workers report skipped photos through it), as are the other calls.
  void note(const std::string& text, bool warning = false);

 private:
  void draw(bool final);  // with mutex_ held

  std::mutex mutex_;

  std::string label_;
  std::string status_;
  int64_t total_;
  int64_t done_ = 0;
  int64_t first_ = 0;
  bool terminal_;
  bool enabled_;
  int64_t next_log_ = 0;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

}  // namespace pconv::app
