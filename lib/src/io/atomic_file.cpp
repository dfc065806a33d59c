#include "pconv/io/atomic_file.h"

#include "pconv/error.h"

#include <fstream>
#include <random>
#include <system_error>

namespace pconv::io {
namespace {

std::filesystem::path temporary_sibling(const std::filesystem::path& path) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  return path.parent_path() /
         ("." + path.filename().string() + ".tmp" + std::to_string(rng() % 1000000000));
}

void write_bytes(const std::filesystem::path& path, const char* data, size_t size) {
  // The rename would replace whatever is there: a device (-o /dev/null), a pipe, a socket.
  std::error_code status_error;
  const auto status = std::filesystem::status(path, status_error);
  if (std::filesystem::exists(status) && !std::filesystem::is_regular_file(status)) {
    throw InputError(path.string() + (std::filesystem::is_directory(status)
                                          ? ": is a folder, not a file to write"
                                          : ": is not a regular file; pconv writes only files"));
  }
  const auto temporary = temporary_sibling(path);
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    out.write(data, static_cast<std::streamsize>(size));
    out.close();
    if (!out) {
      std::error_code ignored;
      std::filesystem::remove(temporary, ignored);
      throw InputError(path.string() + ": cannot write the file (is the folder writable?)");
    }
  }
  std::error_code error;
  std::filesystem::rename(temporary, path, error);
  if (error) {
    std::error_code ignored;
    std::filesystem::remove(temporary, ignored);
    throw InputError(path.string() + ": cannot write the file: " + error.message());
  }
}

}  // namespace

void write_file_atomically(const std::filesystem::path& path, const std::vector<uint8_t>& data) {
  write_bytes(path, reinterpret_cast<const char*>(data.data()), data.size());
}

void write_file_atomically(const std::filesystem::path& path, const std::string& data) {
  write_bytes(path, data.data(), data.size());
}

}  // namespace pconv::io
