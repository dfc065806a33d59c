// The pconv command: composes the subcommands, and maps every failure to one line on stderr
// and a documented exit code (exit_codes.h).
#include "commands/demo.h"
#include "commands/eval.h"
#include "commands/export.h"
#include "commands/info.h"
#include "commands/inpaint.h"
#include "commands/masks.h"
#include "commands/train.h"
#include "common.h"
#include "exit_codes.h"

#include <pconv/error.h>
#include <pconv/io/image_file.h>

#include <c10/util/Exception.h>
#include <c10/util/Logging.h>

#include <fmt/format.h>
#include <spdlog/cfg/env.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/ansicolor_sink.h>
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <fcntl.h>
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <unordered_set>

namespace {

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

// LibTorch's failure in words: out of memory said plainly, anything else as its first line.
std::string runtime_message(const std::string& text) {
  const auto memory = pconv::app::out_of_memory_message(text);
  return memory.empty() ? first_line(text) : memory;
}

// The message of a log line with its line breaks written as \n, so that every record stays one
// line even when a file name holds a line break: pconv's and its errors' own messages are one
// line; LibTorch's are cut to their first line where they are caught.
class OneLineMessage : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& message, const std::tm& /*time*/,
              spdlog::memory_buf_t& out) override {
    for (const char c : message.payload) {
      if (c == '\n') {
        out.append(std::string_view("\\n"));
      } else if (c == '\r') {
        out.append(std::string_view("\\r"));
      } else {
        out.push_back(c);
      }
    }
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<OneLineMessage>();
  }
};

void setup_logging() {
  using Sink = spdlog::sinks::ansicolor_sink<spdlog::details::console_mutex>;
  auto logger = std::make_shared<spdlog::logger>(
      "pconv", std::make_shared<Sink>(pconv::app::log_stream(), spdlog::color_mode::automatic));
  auto formatter = std::make_unique<spdlog::pattern_formatter>();
  formatter->add_flag<OneLineMessage>('*').set_pattern("pconv: %^%l%$: %*");
  logger->set_formatter(std::move(formatter));
  spdlog::set_default_logger(logger);
  spdlog::set_level(spdlog::level::info);
  spdlog::cfg::load_env_levels();  // SPDLOG_LEVEL=debug etc.
  // Quieter than errors would hide why a command failed: errors always show.
  if (logger->level() > spdlog::level::err) logger->set_level(spdlog::level::err);
  // The largest image this machine can inpaint without running out of memory: about 120 bytes
  // per pixel (80 measured at the peak for a 14000x14000 RGB image), unless
  // OPENCV_IO_MAX_IMAGE_PIXELS says otherwise.
  int64_t max_pixels = 0;
  if (const char* limit = std::getenv("OPENCV_IO_MAX_IMAGE_PIXELS"); limit != nullptr) {
    max_pixels = std::strtoll(limit, nullptr, 10);
  } else {
    max_pixels = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE) / 120;
  }
  if (max_pixels > 0) pconv::io::set_max_image_pixels(max_pixels);
  // What libjpeg or libpng say about an image they did decode, as pconv's own warning: once,
  // although training decodes each photo again in every pass over the data.
  pconv::io::set_decoder_warning_handler([](const std::string& warning) {
    static std::mutex mutex;
    static std::unordered_set<std::string> said;
    const std::lock_guard<std::mutex> lock(mutex);
    if (said.insert(warning).second) spdlog::warn("{}", warning);
  });
}

// SIGINT and SIGTERM handled from before the shared libraries' static initialisers run
// (LibTorch's registrations take a good part of the start-up): the executable's .preinit_array
// runs first of all initialisers. Only the loader's mapping of the libraries comes before.
// Also first: a standard stream the command was started without (`>&-`) is held by /dev/null,
// opened read-only so that writing there still fails (the result's path is not lost without a
// word). Left free, the next file opened took its number: stdout then wrote into the copy of
// stderr the decoders' capture makes, or into whatever file came next.
void handle_signals_early(int /*argc*/, char** /*argv*/, char** /*environment*/) {
  for (int stream = 0; stream <= 2; ++stream) {
    if (::fcntl(stream, F_GETFD) == -1 && errno == EBADF) {
      const int held = ::open("/dev/null", O_RDONLY);  // the lowest free number; inherited
      if (held >= 0 && held != stream) {
        ::dup2(held, stream);
        ::close(held);
      }
    }
  }
  pconv::app::handle_stop_signals();
}
__attribute__((section(".preinit_array"),
               used)) void (*const early_signal_handling)(int, char**,
                                                          char**) = handle_signals_early;

// What CLI11's "The following arguments were not expected: ..." means, for `command`: the
// first word the command line gave that nothing took, named as an unknown option (with the
// command's option it most likely meant), an option of the command given before the command,
// or an unexpected argument.
std::string unexpected_words(const CLI::App& app, const CLI::App& command, int argc, char** argv) {
  const auto left = app.remaining(/*recurse=*/true);
  const std::set<std::string> unexpected(left.begin(), left.end());
  std::string word = left.empty() ? std::string() : left.front();
  for (int i = 1; i < argc; ++i) {
    if (unexpected.count(argv[i]) > 0) {
      word = argv[i];
      break;
    }
  }
  const std::string name = "pconv " + command.get_name();
  if (word.rfind('-', 0) != 0 || word == "-") {
    return fmt::format("unexpected argument '{}' for {}", word, name);
  }
  const std::string option = word.substr(0, word.find('='));
  const bool before_command =
      std::find(argv + 1, argv + argc, command.get_name()) > std::find(argv + 1, argv + argc, word);
  if (command.get_option_no_throw(option) != nullptr) {
    if (before_command) {
      return fmt::format("'{}' is an option of {}: give it after '{}'", option, name,
                         command.get_name());
    }
    // An option's name CLI11 left as a word: after "--", which ends the options.
    return fmt::format("unexpected argument '{}' for {} (after '--' it is not an option)", word,
                       name);
  }
  // A long name that begins with another's, or the other way round (--output for --out); of
  // several, the one nearest in length (--valid: --val, not --validate-every).
  std::string near;
  if (option.rfind("--", 0) == 0 && option.size() > 3) {
    const auto distance = [&](const std::string& known) {
      return known.size() > option.size() ? known.size() - option.size()
                                          : option.size() - known.size();
    };
    for (const auto* candidate : command.get_options()) {
      for (const auto& long_name : candidate->get_lnames()) {
        const std::string known = "--" + long_name;
        if (known.size() > 3 && (known.rfind(option, 0) == 0 || option.rfind(known, 0) == 0) &&
            (near.empty() || distance(known) < distance(near))) {
          near = known;
        }
      }
    }
  }
  return fmt::format("unknown option '{}' for {}{}", option, name,
                     near.empty() ? "" : fmt::format(" (did you mean '{}'?)", near));
}

}  // namespace

static int run_pconv(int argc, char** argv) {
  using namespace pconv::app;
  // Keep freed memory for reuse: glibc otherwise returns every large tensor to the kernel when
  // it is freed, and each training step pays page faults for all of them again (a third of the
  // CPU time of a small model's training step, measured).
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max());
  handle_stop_signals();
  setup_logging();
  set_invocation(argc, argv);

  CLI::App app{"pconv: image inpainting with partial convolutions (Liu et al., ECCV 2018)",
               "pconv"};
  app.set_version_flag("--version", version_string(), "Print the version and exit");
  app.require_subcommand(0, 1);  // none: usage error below, after CLI11 names unknown words
  app.fallthrough();
  int verbose = 0;
  bool quiet = false;
  app.add_flag("-v,--verbose", verbose, "More log output (-vv for everything)");
  app.add_flag("-q,--quiet", quiet, "Only warnings and errors");
  app.parse_complete_callback([&] {
    if (quiet) spdlog::set_level(spdlog::level::warn);
    if (verbose > 0) spdlog::set_level(verbose > 1 ? spdlog::level::trace : spdlog::level::debug);
    // LibTorch's own log (c10d's connection retries and timeouts, with backtraces) only with
    // -v: pconv reports every failure itself, in one line.
    FLAGS_caffe2_log_level = verbose > 0 ? c10::GLOG_WARNING : c10::GLOG_FATAL;
  });
  app.footer(kExitCodesHelp);  // subcommands without a footer of their own inherit it

  setup_inpaint(app);
  setup_eval(app);
  setup_demo(app);
  setup_masks(app);
  setup_train(app);
  setup_info(app);
  setup_export(app);
  refuse_empty_values(app);

  try {
    app.parse(argc, argv);
    if (app.get_subcommands().empty()) {
      throw CLI::RequiredError("a subcommand");
    }
  } catch (const CLI::ParseError& error) {
    if (error.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) {
      return app.exit(error);  // --help, --version
    }
    // One line: the problem, then where the usage is explained.
    const auto parsed = app.get_subcommands();
    const std::string help =
        parsed.empty() ? "pconv --help" : "pconv " + parsed.front()->get_name() + " --help";
    std::string what = error.what();
    // CLI11's words for an option given twice.
    const auto twice = what.find("At Most 1 required but received");
    if (twice != std::string::npos) what = what.substr(0, twice) + "given more than once";
    // Words a command does not take: the first as given (CLI11 lists them in another order),
    // and where it is an option of the command given before it, or a near name of one, so.
    if (!parsed.empty() && dynamic_cast<const CLI::ExtrasError*>(&error) != nullptr) {
      what = unexpected_words(app, *parsed.front(), argc, argv);
    }
    // A word that is no subcommand, before any subcommand: name it as such.
    if (parsed.empty() && dynamic_cast<const CLI::ExtrasError*>(&error) != nullptr) {
      std::vector<std::string> names;
      for (const auto* command : app.get_subcommands([](CLI::App*) { return true; })) {
        names.push_back(command->get_name());
      }
      const auto extras = app.remaining();
      const std::string word = extras.empty() ? std::string() : extras.front();
      what = word.rfind('-', 0) == 0 ? fmt::format("unknown option '{}'", word)
                                     : fmt::format("unknown command '{}' (the commands: {})", word,
                                                   fmt::join(names, ", "));
    }
    spdlog::error("{} (see '{}')", what, help);
    return kExitUsage;
  } catch (const Interrupted& error) {
    spdlog::warn("{}", error.what());
    return kExitInterrupted;
  } catch (const pconv::InputError& error) {
    spdlog::error("{}", error.what());
    return kExitInput;
  } catch (const pconv::ModelError& error) {
    spdlog::error("{}", pconv::app::model_error_line(error.what()));
    return kExitModel;
  } catch (const c10::Error& error) {
    spdlog::error("{}", runtime_message(error.what_without_backtrace()));
    return kExitRuntime;
  } catch (const std::exception& error) {
    spdlog::error("{}", runtime_message(error.what()));  // OpenCV's out of memory too
    return kExitRuntime;
  }
  return kExitOk;
}

int main(int argc, char** argv) {
  try {
    const int code = run_pconv(argc, argv);
    // What went to stdout (the result's path, pconv info, --help) must have arrived: a full
    // disk or a closed pipe there is a failure, not a success with nothing written.
    errno = 0;
    if ((std::fflush(stdout) != 0 || std::ferror(stdout) != 0) && code == pconv::app::kExitOk) {
      const std::string reason = errno != 0 ? std::strerror(errno) : "write error";
      std::fputs(("pconv: error: cannot write to the standard output: " + reason + "\n").c_str(),
                 pconv::app::log_stream());
      return pconv::app::kExitInput;
    }
    return code;
  } catch (...) {
    // Only logging set-up itself can get here; everything after it is caught in run_pconv().
    std::fputs("pconv: error: unexpected failure\n", pconv::app::log_stream());
    return pconv::app::kExitRuntime;
  }
}
