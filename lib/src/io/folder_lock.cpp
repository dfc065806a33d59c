#include "pconv/io/folder_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>
#include <vector>

namespace pconv::io {
namespace {

// The open folders whose locks a handle holds; closing them releases the locks.
struct HeldLocks {
  std::vector<int> descriptors;
  HeldLocks() = default;
  HeldLocks(const HeldLocks&) = delete;
  HeldLocks& operator=(const HeldLocks&) = delete;
  ~HeldLocks() {
    for (const int descriptor : descriptors) ::close(descriptor);
  }
};

}  // namespace

std::shared_ptr<void> lock_folder(const std::filesystem::path& folder) {
  const int descriptor = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (descriptor < 0) {
    throw InputError(folder.string() + ": cannot open the folder: " + std::strerror(errno));
  }
  if (::flock(descriptor, LOCK_EX | LOCK_NB) != 0) {
    const int error = errno;
    ::close(descriptor);
    if (error == EWOULDBLOCK) {
      throw FolderInUse(folder.string() +
                        ": another pconv command is writing into this folder (or one inside it)");
    }
    // A file system without locks for folders (NFS, SMB emulate flock with byte-range locks
    // that need a file open for writing): go on without the guard rather than not at all.
    return {};
  }
  auto held = std::make_shared<HeldLocks>();
  held->descriptors.push_back(descriptor);
  // A shared lock on every folder above: a command writing into one of them (which holds this
  // folder) has it exclusively, and one that comes later finds it shared. Folders that cannot
  // be opened or locked are passed over.
  std::error_code error;
  const auto canonical = std::filesystem::canonical(folder, error);
  if (error) return held;
  for (auto parent = canonical.parent_path(); !parent.empty(); parent = parent.parent_path()) {
    const int above = ::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (above >= 0) {
      if (::flock(above, LOCK_SH | LOCK_NB) == 0) {
        held->descriptors.push_back(above);
      } else {
        const int lock_error = errno;
        ::close(above);
        if (lock_error == EWOULDBLOCK) {
          throw FolderAboveInUse(folder.string() + ": another pconv command is writing into " +
                                 parent.string() + ", which holds this folder");
        }
      }
    }
    if (parent == parent.root_path()) break;
  }
  return held;
}

}  // namespace pconv::io
