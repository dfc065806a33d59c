// The exceptions pconv throws for problems a caller can act on: bad input files, bad model
// files, and arguments the library's functions and classes cannot use. The layers
// (pconv::nn) and the loss (pconv::loss), like LibTorch's modules, report wrong tensor shapes
// and types with TORCH_CHECK (c10::Error); LibTorch's failures (out of memory, a CUDA error)
// pass through as c10::Error.
#pragma once

#include <exception>
#include <stdexcept>
#include <string>

namespace pconv {

/// Base of every pconv exception; `what()` is one line, fit to show to a user.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// An input (image, mask, folder, dataset) that cannot be used: missing, unreadable, corrupt,
/// or of the wrong size or kind. The message names the file.
class InputError : public Error {
 public:
  using Error::Error;
};

/// A model or checkpoint file that cannot be used: missing, truncated, corrupt, or for another
/// architecture. The message names the file.
class ModelError : public Error {
 public:
  using Error::Error;
};

/// An argument a function or class of the library cannot use: a tensor of the wrong shape,
/// element type or range, an option out of its range, a device that does not exist here, an
/// unknown name. The message says which and why.
class ArgumentError : public Error {
 public:
  using Error::Error;
};

/// The gist of another library's exception, to end a one-line message with: the first sentence
/// of its first line (LibTorch adds a backtrace and advice on further lines and sentences),
/// without LibTorch's "PytorchStreamReader " prefix. An internal assertion of LibTorch's (which
/// a damaged file can trip) is named as a failed check, without where it is in LibTorch's source
/// and its advice to report a bug to PyTorch.
inline std::string brief(const std::exception& error) {
  std::string text = error.what();
  text = text.substr(0, text.find('\n'));
  if (const auto assertion = text.find(" INTERNAL ASSERT FAILED"); assertion != std::string::npos) {
    // What TORCH_INTERNAL_ASSERT(condition, message) adds comes after LibTorch's advice.
    const std::string advice = "report a bug to PyTorch. ";
    const auto after = text.find(advice, assertion);
    const std::string message =
        after == std::string::npos ? std::string() : text.substr(after + advice.size());
    return "LibTorch's check " + text.substr(0, assertion) + " failed" +
           (message.empty() ? "" : ": " + message.substr(0, message.find(". ")));
  }
  text = text.substr(0, text.find(". "));
  const std::string prefix = "PytorchStreamReader ";
  if (text.rfind(prefix, 0) == 0) text = text.substr(prefix.size());
  return text;
}

}  // namespace pconv
