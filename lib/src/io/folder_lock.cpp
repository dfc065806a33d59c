#include "pconv/io/folder_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace pconv::io {

std::shared_ptr<void> lock_folder(const std::filesystem::path& folder) {
  const int descriptor = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (descriptor < 0) {
    throw InputError(folder.string() + ": cannot open the folder: " + std::strerror(errno));
  }
  if (::flock(descriptor, LOCK_EX | LOCK_NB) != 0) {
    const int error = errno;
    ::close(descriptor);
    if (error == EWOULDBLOCK) {
      throw FolderInUse(folder.string() + ": another pconv command is writing into this folder");
    }
    // A file system without locks for folders (NFS, SMB emulate flock with byte-range locks
    // that need a file open for writing): go on without the guard rather than not at all.
    return {};
  }
  return {nullptr, [descriptor](void* /*unused*/) { ::close(descriptor); }};
}

}  // namespace pconv::io
