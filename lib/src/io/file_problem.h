// Why a path cannot be read as a file, in words for a one-line error.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>
#include <system_error>

namespace pconv::io {

/// What is wrong with `path` as a `kind` ("image file", "model file", ...) to read: "no such
/// image file", "is a folder, not an image file", "is empty", the system's reason (a loop of
/// symbolic links, a folder that cannot be searched, a file it may not read), or nothing for a
/// non-empty regular file that opens.
inline std::string file_problem(const std::filesystem::path& path, const std::string& kind) {
  std::error_code error;
  const auto status = std::filesystem::status(path, error);
  switch (status.type()) {
    case std::filesystem::file_type::regular: {
      if (std::filesystem::file_size(path, error) == 0 && !error) return "is empty";
      // The system's reason (permission denied), rather than a decoder's guess at it later.
      const int descriptor = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (descriptor < 0) return std::strerror(errno);
      ::close(descriptor);
      return "";
    }
    case std::filesystem::file_type::directory:
      return std::string("is a folder, not ") +
             (kind.empty() || std::string("aeiou").find(kind.front()) == std::string::npos
                  ? "a "
                  : "an ") +
             kind;
    case std::filesystem::file_type::not_found:
      return "no such " + kind;
    default:
      return error ? error.message() : "not a regular file";
  }
}

}  // namespace pconv::io
