// Writing files so that a reader never sees a partial one: write under a temporary name in
// the same folder, sync it to disk, then rename over the target (atomic on POSIX file systems).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace pconv::io {

/// Writes `data` to `path` through a temporary file in the same folder, synced to disk (the file
/// before the rename, the folder after it), and a rename. Throws
/// pconv::InputError naming the file on failure, leaving no temporary file behind.
void write_file_atomically(const std::filesystem::path& path, const std::vector<uint8_t>& data);
void write_file_atomically(const std::filesystem::path& path, const std::string& data);

/// Removes the temporary files of the writes in progress. Async-signal-safe (unlink(2) only):
/// for a signal handler that ends the process, so that a write cut short leaves nothing behind.
void remove_temporary_files_now();

}  // namespace pconv::io
