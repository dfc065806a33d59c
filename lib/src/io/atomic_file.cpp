#include "pconv/io/atomic_file.h"

#include "pconv/error.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstring>
#include <random>
#include <system_error>

namespace pconv::io {
namespace {

// The temporary files being written, for remove_temporary_files_now(): fixed slots, so that a
// signal handler can read them without a lock or an allocation. A slot is free (0), reserved
// while its path is copied (1), holds the path of a file about to be created or created an
// instant ago (4), of a file this process created (2), or is being removed by the handler (3).
// More writes at once than slots are simply not tracked.
constexpr size_t kTrackedWrites = 64;
std::array<std::atomic<int>, kTrackedWrites> g_slot_state{};
std::array<std::array<char, PATH_MAX>, kTrackedWrites> g_slot_path{};
static_assert(std::atomic<int>::is_always_lock_free);

// Tracks one temporary file while it exists.
class TrackedTemporary {
 public:
  explicit TrackedTemporary(const std::filesystem::path& path) {
    const std::string& name = path.native();
    if (name.size() >= PATH_MAX) return;
    for (size_t i = 0; i < kTrackedWrites; ++i) {
      int expected = 0;
      if (g_slot_state[i].compare_exchange_strong(expected, 1)) {
        std::memcpy(g_slot_path[i].data(), name.c_str(), name.size() + 1);
        g_slot_state[i].store(4);
        slot_ = static_cast<int>(i);
        return;
      }
    }
  }
  // The file exists now, and is this process's own (created with O_EXCL).
  void created() {
    if (slot_ >= 0) g_slot_state[static_cast<size_t>(slot_)].store(2);
  }
  ~TrackedTemporary() {
    if (slot_ < 0) return;
    // A slot the handler is removing (3) is left to it: the process is ending.
    int expected = 2;
    auto& state = g_slot_state[static_cast<size_t>(slot_)];
    // 4 (never created) goes back to 0 only if the handler has not claimed it (4 -> 3) since.
    if (!state.compare_exchange_strong(expected, 0) && expected == 4) {
      state.compare_exchange_strong(expected, 0);
    }
  }
  TrackedTemporary(const TrackedTemporary&) = delete;
  TrackedTemporary& operator=(const TrackedTemporary&) = delete;

 private:
  int slot_ = -1;
};

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
  // POSIX calls rather than a stream, for the system's reason when a write fails (a full disk,
  // a read-only file system, a folder that is not writable).
  TrackedTemporary tracked(temporary);  // from before the file exists to after the rename
  const int descriptor = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (descriptor < 0) {
    throw InputError(path.string() + ": cannot write the file: " + std::strerror(errno));
  }
  tracked.created();
  size_t written = 0;
  int write_error = 0;
  while (written < size) {
    const ssize_t count = ::write(descriptor, data + written, size - written);
    if (count < 0 && errno == EINTR) continue;
    if (count <= 0) {
      write_error = count < 0 ? errno : EIO;
      break;
    }
    written += static_cast<size_t>(count);
  }
  // On disk before the rename, so that a crash or a power cut never leaves the name on an empty
  // or partial file (a checkpoint a resume would then refuse). A file system without fsync
  // (EINVAL, ENOTSUP) keeps what it can.
  if (write_error == 0 && ::fsync(descriptor) != 0 && errno != EINVAL && errno != ENOTSUP) {
    write_error = errno;
  }
  if (::close(descriptor) != 0 && write_error == 0) write_error = errno;
  if (write_error != 0) {
    std::error_code ignored;
    std::filesystem::remove(temporary, ignored);
    throw InputError(path.string() + ": cannot write the file: " + std::strerror(write_error));
  }
  std::error_code error;
  std::filesystem::rename(temporary, path, error);
  if (error) {
    std::error_code ignored;
    std::filesystem::remove(temporary, ignored);
    throw InputError(path.string() + ": cannot write the file: " + error.message());
  }
  // The rename itself reaches the disk with the folder; the file is whole by now, so a folder
  // that cannot be synced (or opened) costs only durability, never the result.
  const auto folder = path.parent_path().empty() ? std::filesystem::path(".") : path.parent_path();
  if (const int folder_descriptor = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      folder_descriptor >= 0) {
    ::fsync(folder_descriptor);
    ::close(folder_descriptor);
  }
}

}  // namespace

void write_file_atomically(const std::filesystem::path& path, const std::vector<uint8_t>& data) {
  write_bytes(path, reinterpret_cast<const char*>(data.data()), data.size());
}

void write_file_atomically(const std::filesystem::path& path, const std::string& data) {
  write_bytes(path, data.data(), data.size());
}

void remove_temporary_files_now() {
  for (size_t i = 0; i < kTrackedWrites; ++i) {
    // Claimed first, so that the writer cannot free and refill the slot meanwhile. After the
    // rename the name is gone and unlink fails, harmlessly. A path whose file is about to be
    // created (4) is taken too: the file may have been created in the instant before the
    // writer marked it (the process ends right after this, so the writer never goes on); a
    // temporary name of the writer's random form that is not there yet is not there to remove.
    for (int claimed : {2, 4}) {
      if (g_slot_state[i].compare_exchange_strong(claimed, 3)) {
        ::unlink(g_slot_path[i].data());
        break;
      }
    }
  }
}

}  // namespace pconv::io
