#include "common.h"

#include <pconv/data/image_folder.h>
#include <pconv/error.h>
#include <pconv/infer/inpainter.h>
#include <pconv/io/atomic_file.h>
#include <pconv/io/folder_lock.h>
#include <pconv/io/model_file.h>
#include <pconv/nn/functional/partial_conv2d.h>
#include <pconv/version.h>

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/cuda.h>
#include <torch/headeronly/version.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iterator>
#include <regex>
#include <thread>
#include <utility>

namespace pconv::app {

namespace {
// The cores this process may run on (its affinity: a container's or a job's share), else the
// machine's; at least 1.
int64_t usable_cores() {
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (::sched_getaffinity(0, sizeof(allowed), &allowed) == 0 && CPU_COUNT(&allowed) > 0) {
    return CPU_COUNT(&allowed);
  }
  return std::max(1U, std::thread::hardware_concurrency());
}
}  // namespace

void add_common_options(CLI::App& command, CommonOptions& options) {
  command
      .add_option("--device", options.device,
                  "Where to compute: auto (a CUDA GPU if there is one, else the CPU), cpu, cuda "
                  "or cuda:N")
      ->capture_default_str();
  // At most one a core this process may run on: more never help, and where a memory limit kept
  // them from being made LibTorch's thread pool waited for them forever.
  const int64_t cores = usable_cores();
  command
      .add_option("--threads", options.threads,
                  "CPU threads for LibTorch (0: its default; at most " + std::to_string(cores) +
                      ", the cores this process may use)")
      ->transform(whole_number(0, cores))
      ->capture_default_str();
  command.add_flag("--reference-kernels", options.reference_kernels,
                   "Compute the partial convolutions' mask terms and renormalisation with plain "
                   "LibTorch operations instead of pconv's fused kernels: slower, the same "
                   "results within rounding; for comparisons, or should the fused kernels "
                   "misbehave on a GPU");
}

void add_inference_options(CLI::App& command, InferenceCliOptions& options) {
  auto* precision =
      command
          .add_option("--precision", options.precision,
                      "Element type of the network: fp32, fp16 (CUDA only) or bf16. The reduced "
                      "types halve the memory and use tensor cores on a GPU; on a CPU bf16 is "
                      "slower unless it has bf16 instructions")
          ->check(CLI::IsMember({"fp32", "fp16", "bf16"}))
          ->capture_default_str();
  command.add_flag("--half", options.half, "Same as --precision fp16")->excludes(precision);
  auto* channels_last = command.add_flag(
      "--channels-last", options.channels_last,
      "Channels-last (NHWC) memory format for the network; the default on a CPU, where oneDNN's "
      "convolutions are faster in it (with bf16 much faster); on a GPU the layout of cuDNN's "
      "tensor-core kernels");
  command
      .add_flag("--nchw", options.nchw,
                "NCHW memory format for the network; the default on a GPU (with bf16 on a CPU "
                "about 50x slower than channels-last)")
      ->excludes(channels_last);
  command
      .add_option("--thin-hole-growth", options.thin_hole_growth,
                  "Widen the parts of the holes thinner than 2N+1 pixels by N pixels for the "
                  "network (the known pixels are kept all the same): the default model, "
                  "trained on wider strokes, fills 1-2 pixel scratches dark otherwise; 0: off")
      ->transform(whole_number(0, 16))
      ->capture_default_str();
}

infer::InferenceOptions inference_options(const InferenceCliOptions& options, c10::Device device) {
  const auto dtype = infer::parse_precision(options.half ? "fp16" : options.precision);
  if (dtype == c10::kHalf && !device.is_cuda()) {
    throw CLI::ValidationError(options.half ? "--half" : "--precision",
                               "fp16 needs a CUDA device (--device cuda)");
  }
  const auto layout = options.channels_last ? infer::NetworkLayout::kChannelsLast
                      : options.nchw        ? infer::NetworkLayout::kNchw
                                            : infer::NetworkLayout::kAuto;
  if (options.nchw && dtype == c10::kBFloat16 && device.is_cpu()) {
    spdlog::warn(
        "--nchw with bf16 on a CPU: oneDNN's NCHW bfloat16 convolutions can be about 50x slower "
        "than channels-last ones (the default)");
  }
  return infer::InferenceOptions().dtype(dtype).layout(layout).thin_hole_growth(
      options.thin_hole_growth);
}

std::string default_model_path() {
  if (const char* from_environment = std::getenv("PCONV_MODEL");
      from_environment != nullptr && *from_environment != '\0') {
    model_from_environment().store(true);
    return from_environment;
  }
  std::error_code error;
  const auto program = std::filesystem::read_symlink("/proc/self/exe", error);
  if (!error) {
    const auto installed =
        program.parent_path().parent_path() / "share" / "pconv" / "models" / "pconv-default.pt";
    if (std::filesystem::is_regular_file(installed, error)) return installed.string();
  }
  return PCONV_SOURCE_MODEL;
}

std::atomic<bool>& model_from_environment() {
  static std::atomic<bool> used{false};
  return used;
}

std::string model_error_line(const std::string& message) {
  const char* variable = std::getenv("PCONV_MODEL");
  if (model_from_environment().load() && variable != nullptr && *variable != '\0' &&
      message.rfind(std::string(variable) + ":", 0) == 0) {
    return message + " (the model $PCONV_MODEL names)";
  }
  return message;
}

namespace {
// `device` (a GPU), after saying whether the fused CUDA kernels run on it: a build for other
// GPU architectures leaves the partial convolutions to LibTorch's operators (correct, slower).
c10::Device checked_gpu(const c10::Device& device, const CommonOptions& options) {
  if (nn::functional::cuda_kernels_built() && !options.reference_kernels &&
      !nn::functional::cuda_kernels_run_on(device)) {
    spdlog::warn(
        "{}: pconv's CUDA kernels were not built for this GPU's architecture (configure with "
        "TORCH_CUDA_ARCH_LIST naming it): partial convolutions take LibTorch's slower path",
        device.str());
  }
  return device;
}
}  // namespace

c10::Device resolve_device(const CommonOptions& options) {
  if (options.threads > 0) at::set_num_threads(options.threads);
  nn::functional::set_fused_kernels_enabled(!options.reference_kernels);
  if (options.reference_kernels) spdlog::info("partial convolutions: reference kernels (ATen)");
  if (options.device == "auto") {
    return torch::cuda::is_available() ? checked_gpu(c10::Device(c10::kCUDA, 0), options)
                                       : c10::Device(c10::kCPU);
  }
  c10::Device device(c10::kCPU);
  try {
    device = c10::Device(options.device);
  } catch (const c10::Error&) {
    throw CLI::ValidationError(
        "--device", "'" + options.device + "' is not a device; use auto, cpu, cuda or cuda:N");
  }
  if (device.is_cpu()) return device;
  if (!device.is_cuda()) {
    throw CLI::ValidationError("--device", "'" + options.device +
                                               "' is not supported; use auto, "
                                               "cpu, cuda or cuda:N");
  }
  const int64_t count = static_cast<unsigned char>(torch::cuda::device_count());
  if (count == 0) {
    throw CLI::ValidationError(
        "--device", "'" + options.device + "' asked for, but no CUDA GPU is available here");
  }
  if (!device.has_index()) device.set_index(0);
  if (device.index() >= count) {
    throw CLI::ValidationError("--device", fmt::format("'{}' asked for, but there are only {} "
                                                       "CUDA GPU(s)",
                                                       options.device, count));
  }
  return checked_gpu(device, options);
}

namespace {
std::string& invocation_storage() {
  static std::string text;
  return text;
}
}  // namespace

void set_invocation(int argc, char** argv) {
  std::string text;
  for (int i = 0; i < argc; ++i) {
    if (i > 0) text += ' ';
    text += i == 0 ? std::string("pconv") : std::string(argv[i]);
  }
  invocation_storage() = text;
}

const std::string& invocation() { return invocation_storage(); }

namespace {
std::filesystem::path resolved(const std::filesystem::path& path) {
  // Absolute first: weakly_canonical leaves a relative path whose first part does not exist
  // (a new "out") relative, and it would never compare equal to, or within, an absolute one.
  std::error_code error;
  const auto absolute = std::filesystem::absolute(path, error);
  if (error) return path.lexically_normal();
  auto result = std::filesystem::weakly_canonical(absolute, error);
  return error ? absolute.lexically_normal() : result;
}

// What a stored kind is called in messages; empty for kOther.
std::string kind_in_words(io::StoredKind kind) {
  switch (kind) {
    case io::StoredKind::kModel:
      return "a pconv model file";
    case io::StoredKind::kCheckpoint:
      return "a pconv training checkpoint";
    case io::StoredKind::kExport:
      return "a pconv TorchScript export";
    case io::StoredKind::kOther:
      break;
  }
  return {};
}
}  // namespace

void refuse_overwriting_inputs(const std::filesystem::path& output, const std::string& option,
                               std::initializer_list<NamedInput> inputs, bool may_replace_export) {
  if (output.empty()) return;
  const auto target = resolved(output);
  for (const auto& [input, role] : inputs) {
    if (input.empty()) continue;
    std::error_code error;
    const bool same =
        resolved(input) == target || std::filesystem::equivalent(input, output, error);
    if (same) {
      // The input's own spelling where it differs (a link, another relative path).
      const std::string spelled = input == output ? "" : " '" + input.string() + "'";
      throw CLI::ValidationError(
          option, fmt::format("'{}' is the same file as {}{}; choose another path", output.string(),
                              role, spelled));
    }
  }
  const auto kind = io::stored_kind(output);
  if (may_replace_export && kind == io::StoredKind::kExport) return;
  if (const auto words = kind_in_words(kind); !words.empty()) {
    throw CLI::ValidationError(option, "'" + output.string() + "' is " + words +
                                           "; pconv does not write over one, choose another path");
  }
}

std::string out_of_memory_message(const std::string& text) {
  // The CPU allocator's words, and CUDA's caching allocator's ("Tried to allocate 2.00 GiB").
  static const std::regex cpu(R"(you tried to allocate (\d+) bytes)");
  static const std::regex cuda(R"(Tried to allocate ([0-9.]+) (GiB|MiB|KiB|B)\b)");
  // OpenCV's ("Failed to allocate 144000000 bytes"), and C++'s own.
  static const std::regex opencv(R"(Failed to allocate (\d+) bytes)");
  static const std::string hint =
      "; try smaller images or a smaller --size or --batch (inpaint: --strategy auto with a "
      "smaller --max-memory)";
  if (text == "std::bad_alloc") return "out of memory" + hint;
  std::smatch match;
  double bytes = 0;
  if (std::regex_search(text, match, cpu) || std::regex_search(text, match, opencv)) {
    bytes = std::stod(match[1].str());
  } else if (std::regex_search(text, match, cuda)) {
    const std::string unit = match[2].str();
    const double scale = unit == "GiB"   ? 1 << 30
                         : unit == "MiB" ? 1 << 20
                         : unit == "KiB" ? 1 << 10
                                         : 1;
    bytes = std::stod(match[1].str()) * scale;
  } else {
    return {};
  }
  const std::string amount = bytes >= 1e8 ? fmt::format("{:.1f} GB", bytes / 1e9)
                                          : fmt::format("{:.0f} MB", std::max(1.0, bytes / 1e6));
  return "out of memory: " + amount + " more were needed at once" + hint;
}

std::string pconv_file_kind(const std::filesystem::path& path) {
  return kind_in_words(io::stored_kind(path));
}

bool is_within(const std::filesystem::path& path, const std::filesystem::path& folder) {
  const auto inner = resolved(path);
  const auto outer = resolved(folder);
  auto a = inner.begin();
  for (auto b = outer.begin(); b != outer.end(); ++b, ++a) {
    if (b->empty()) continue;  // a trailing separator
    if (a == inner.end() || *a != *b) return false;
  }
  return true;
}

namespace {
std::atomic<bool> g_stop_requested{false};
std::atomic<int> g_stop_scopes{0};  // StopOnSignal objects alive
static_assert(std::atomic<int>::is_always_lock_free && std::atomic<bool>::is_always_lock_free);

// Inside a StopOnSignal a signal only asks the job to stop; outside, it ends the process as
// the default action would, removing the temporary file of a write it cuts short (signal(),
// raise() and unlink() are async-signal-safe).
extern "C" void on_stop_signal(int signal) {
  if (g_stop_scopes.load() > 0) {
    g_stop_requested = true;
    return;
  }
  pconv::io::remove_temporary_files_now();
  std::signal(signal, SIG_DFL);
  std::raise(signal);
}
}  // namespace

void handle_stop_signals() {
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
  // Past a file-size limit (ulimit -f) a write then fails with EFBIG, reported as any failed
  // write is, instead of the process being killed with its temporary file left behind.
  std::signal(SIGXFSZ, SIG_IGN);
  // A standard output whose reader is gone (`| true`) is a failed write too (EPIPE, exit 3 with
  // its line, which says where a result is), not a silent death by SIGPIPE.
  std::signal(SIGPIPE, SIG_IGN);
}

void ignore_stop_signals() {
  std::signal(SIGINT, SIG_IGN);
  std::signal(SIGTERM, SIG_IGN);
}

StopOnSignal::StopOnSignal() {
  g_stop_requested = false;  // first: a signal from here on counts
  ++g_stop_scopes;
  handle_stop_signals();
}

StopOnSignal::~StopOnSignal() { --g_stop_scopes; }

bool stop_requested() { return g_stop_requested.load(); }

std::FILE* log_stream() {
  static std::FILE* const stream = [] {
    const int descriptor = ::dup(STDERR_FILENO);
    std::FILE* file = descriptor >= 0 ? ::fdopen(descriptor, "w") : nullptr;
    if (file == nullptr) return stderr;
    std::setvbuf(file, nullptr, _IONBF, 0);  // unbuffered, as stderr is
    return file;
  }();
  return stream;
}

void keep_apart(const std::string& out, const std::string& what, const std::string& inputs,
                const std::string& option, const std::string& folder) {
  if (is_within(folder, out) || is_within(out, folder)) {
    throw CLI::ValidationError("-o", "'" + out + "' would hold " + what + " among " + inputs +
                                         " of " + option + " '" + folder +
                                         "'; choose a folder outside it");
  }
}

void warn_line(const std::string& message) { spdlog::warn("{}", message); }

std::vector<std::filesystem::path> list_images(const std::string& option,
                                               const std::string& folder) {
  try {
    return data::list_images(folder, warn_line);
  } catch (const InputError& error) {
    throw InputError(option + " " + error.what());
  }
}

namespace {

// Removes `folder` and the folders under it that hold nothing (links are not followed): never a
// file, and never a folder that another command wrote into.
void remove_empty_folders(const std::filesystem::path& folder) {
  std::error_code error;
  std::vector<std::filesystem::path> subfolders;
  for (std::filesystem::directory_iterator it(folder, error), end; !error && it != end;
       it.increment(error)) {
    std::error_code entry_error;
    if (it->is_directory(entry_error) && !it->is_symlink(entry_error)) {
      subfolders.push_back(it->path());
    }
  }
  for (const auto& subfolder : subfolders) remove_empty_folders(subfolder);
  std::filesystem::remove(folder, error);  // fails, harmlessly, where something is left
}

}  // namespace

OutputFolder::OutputFolder(const std::filesystem::path& folder) : folder_(folder) {
  namespace fs = std::filesystem;
  // The missing levels, made one at a time from the outermost: only a folder that this command
  // itself made (create_directory says so) is ever taken away, even with other commands making
  // the same folders at the same moment.
  std::vector<fs::path> missing;
  for (auto level = folder; !level.empty(); level = level.parent_path()) {
    std::error_code error;
    const auto status = fs::symlink_status(level, error);
    if (status.type() != fs::file_type::not_found ||
        error != std::errc::no_such_file_or_directory) {
      break;  // there (a link too), or not to be looked at: not ours
    }
    missing.push_back(level);
    if (level == level.parent_path()) break;
  }
  std::error_code error;
  for (auto level = missing.rbegin(); level != missing.rend() && !error; ++level) {
    if (fs::create_directory(*level, error) && made_.empty()) made_ = *level;
  }
  if (!error) fs::create_directories(folder, error);
  if (error || !fs::is_directory(folder)) {
    if (!made_.empty()) remove_empty_folders(made_);
    throw InputError(folder.string() + ": cannot create the output folder" +
                     (error ? ": " + error.message() : std::string()));
  }
}

OutputFolder::~OutputFolder() {
  if (!made_.empty()) remove_empty_folders(made_);
  // lock_ is released after this, once the folders are gone
}

void OutputFolder::lock() {
  try {
    lock_ = io::lock_folder(folder_);
  } catch (const io::FolderAboveInUse&) {
    throw;  // the folder is not the other command's own: an empty one made here goes again
  } catch (const io::FolderInUse&) {
    made_.clear();  // another command holds it: its folder now, not to be taken away
    throw;
  }
}

namespace {
// A check that the option's value is a finite number and, where `problem` says so, more: it
// returns what is wrong with the value ("must be ...") or nothing.
CLI::Validator number_check(std::function<std::string(double)> problem, std::string description,
                            std::string name) {
  return {[problem = std::move(problem)](std::string& text) -> std::string {
            double value = 0;
            if (!CLI::detail::lexical_cast(text, value)) return {};  // the option's type says it
            if (!std::isfinite(value)) return "'" + text + "' is not a finite number";
            const std::string what = problem(value);
            return what.empty() ? what : "'" + text + "' " + what;
          },
          std::move(description), std::move(name)};
}
}  // namespace

CLI::Validator positive_number() {
  return number_check(
      [](double value) { return value > 0 ? std::string() : std::string("must be more than 0"); },
      "POSITIVE", "positive");
}
CLI::Validator number_in(double low, double high) {
  const std::string range = fmt::format("[{}, {}]", low, high);
  return number_check(
      [low, high, range](double value) {
        return value < low || value > high ? "is outside " + range : std::string();
      },
      "NUMBER in " + range, "number in range");
}
CLI::Validator positive_number(double high) {
  const std::string range = fmt::format("(0, {}]", high);
  return number_check(
      [high, range](double value) {
        return value <= 0 || value > high ? "is outside " + range : std::string();
      },
      "NUMBER in " + range, "positive number");
}
CLI::Validator non_negative_number() {
  return number_check(
      [](double value) { return value >= 0 ? std::string() : std::string("must be 0 or more"); },
      "NONNEGATIVE", "non-negative");
}

CLI::Validator whole_number(int64_t low, int64_t high) {
  const std::string range = "[" + std::to_string(low) + " - " + std::to_string(high) + "]";
  return {[low, high, range](std::string& text) -> std::string {
            int64_t value = 0;
            const char* end = text.data() + text.size();
            const auto [stop, error] = std::from_chars(text.data(), end, value);
            if (error != std::errc() || stop != end || value < low || value > high) {
              return "'" + text + "' is not a whole number in " + range;
            }
            // As read here, in decimal: CLI11 would read "010" as octal 8.
            text = std::to_string(value);
            return {};
          },
          "INT in " + range, "whole number"};
}

CLI::Validator seed_number() {
  return {[](std::string& text) -> std::string {
            uint64_t value = 0;
            const char* end = text.data() + text.size();
            const auto [stop, error] = std::from_chars(text.data(), end, value);
            if (text.empty() || text.front() == '-' || error != std::errc() || stop != end) {
              return "'" + text + "' is not a whole number from 0 to 18446744073709551615";
            }
            text = std::to_string(value);  // decimal, as read here (CLI11: "010" is octal)
            return {};
          },
          "", "seed"};
}

void refuse_empty_values(CLI::App& app) {
  const CLI::Validator not_empty(
      [](std::string& text) {
        return text.empty() ? std::string("an empty value") : std::string();
      },
      "", "not empty");
  // "-o=out.png" gives the short option "=out.png" (CLI11 takes '=' after long names only).
  const CLI::Validator no_equals_sign(
      [](std::string& text) {
        return text.rfind('=', 0) == 0
                   ? "'" + text +
                         "' begins with '=': for -o=FILE write -o FILE; a name that "
                         "begins with '=' as ./=NAME"
                   : std::string();
      },
      "", "no leading =");
  for (auto* option : app.get_options()) {
    if (option->get_type_size() == 0) continue;
    option->check(not_empty);
    if (!option->get_snames().empty()) option->check(no_equals_sign);
  }
  for (auto* subcommand : app.get_subcommands([](CLI::App*) { return true; })) {
    refuse_empty_values(*subcommand);
  }
}

std::pair<int64_t, int64_t> parse_size(const std::string& text, const std::string& option) {
  static const std::regex pattern(R"(^\s*([0-9]{1,6})\s*[xX]\s*([0-9]{1,6})\s*$)");
  std::smatch match;
  if (!std::regex_match(text, match, pattern)) {
    throw CLI::ValidationError(option, "'" + text + "' is not WIDTHxHEIGHT (e.g. 512x512)");
  }
  const int64_t width = std::stoll(match[1].str());
  const int64_t height = std::stoll(match[2].str());
  if (width < 1 || height < 1) {
    throw CLI::ValidationError(option, "'" + text + "' has a zero side");
  }
  return {width, height};
}

Progress::Progress(std::string label, int64_t total)
    : label_(std::move(label)),
      total_(std::max<int64_t>(total, 1)),
      terminal_(isatty(fileno(log_stream())) != 0),
      enabled_(spdlog::should_log(spdlog::level::info)),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

void Progress::advance(int64_t steps) {
  std::lock_guard<std::mutex> lock(mutex_);
  done_ = std::min(total_, done_ + steps);
  draw(false);
}

void Progress::resume_at(int64_t done) {
  std::lock_guard<std::mutex> lock(mutex_);
  done_ = first_ = std::min(total_, done);
  next_log_ = done_;
}

void Progress::finish() {
  std::lock_guard<std::mutex> lock(mutex_);
  draw(true);
}

void Progress::set_status(std::string status) {
  std::lock_guard<std::mutex> lock(mutex_);
  status_ = std::move(status);
}

void Progress::note(const std::string& text, bool warning) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (terminal_ && enabled_) std::fprintf(log_stream(), "\r\033[K");  // clear the bar's line
  if (warning) {
    spdlog::warn("{}", text);
  } else {
    spdlog::info("{}", text);
  }
  if (terminal_ && enabled_) draw(false);
}

void Progress::draw(bool final) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double since_draw = std::chrono::duration<double>(now - last_draw_).count();
  const double rate = elapsed > 0 ? static_cast<double>(done_ - first_) / elapsed : 0.0;
  const double eta = rate > 0 ? static_cast<double>(total_ - done_) / rate : 0.0;
  const auto clock = [](double seconds) {
    const int64_t s = std::llround(seconds);
    return fmt::format("{}:{:02d}:{:02d}", s / 3600, (s / 60) % 60, s % 60);
  };
  if (terminal_) {
    if (!final && since_draw < 0.1 && done_ < total_) return;
    constexpr int kBarWidth = 30;
    const int filled = static_cast<int>(kBarWidth * done_ / total_);
    std::fprintf(log_stream(), "\r\033[K%s [%s%s] %lld/%lld  %.2f/s  %s %s  %s%s", label_.c_str(),
                 std::string(filled, '#').c_str(), std::string(kBarWidth - filled, '.').c_str(),
                 static_cast<long long>(done_), static_cast<long long>(total_), rate,
                 final ? "took" : "ETA", clock(final ? elapsed : eta).c_str(), status_.c_str(),
                 final ? "\n" : "");
    std::fflush(log_stream());
  } else if (final || (done_ < total_ &&
                       ((done_ >= next_log_ && since_draw >= 1.0) || since_draw >= 30.0))) {
    spdlog::info("{}: {}/{} ({:.2f}/s, {} {}){}{}", label_, done_, total_, rate,
                 final ? "took" : "ETA", clock(final ? elapsed : eta), status_.empty() ? "" : "  ",
                 status_);
    next_log_ = done_ + std::max<int64_t>(1, total_ / 10);
    if (final) enabled_ = false;
  } else {
    return;
  }
  last_draw_ = now;
}

std::string version_string() {
  return fmt::format("pconv {} (LibTorch {})", kVersion, TORCH_VERSION);
}

}  // namespace pconv::app
