// The pconv command's exit codes, one per kind of failure, so that scripts can tell a bad
// command line from a bad input file from a bad model file. Documented in the README.
#pragma once

#include <stdexcept>

namespace pconv::app {

/// Thrown when a long job stopped on SIGINT/SIGTERM after saving its state: exit code 130.
class Interrupted : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum ExitCode : int {
  kExitOk = 0,
  kExitRuntime = 1,        // the work itself failed: out of memory, device error, internal error
  kExitUsage = 2,          // the command line is wrong: unknown subcommand or option, bad value
  kExitInput = 3,          // an input file or folder is missing, unreadable or unusable
  kExitModel = 4,          // a model or checkpoint file is missing, corrupt or incompatible
  kExitInterrupted = 130,  // stopped by SIGINT/SIGTERM after saving what could be saved
};

}  // namespace pconv::app
