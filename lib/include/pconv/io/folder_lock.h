// One pconv command writing into a folder at a time.
#pragma once

#include "pconv/error.h"

#include <filesystem>
#include <memory>

namespace pconv::io {

/// Thrown by lock_folder when another holder, in this process or another, has the folder.
class FolderInUse : public pconv::InputError {
 public:
  using pconv::InputError::InputError;
};

/// The FolderInUse where the other holder writes into a folder above this one (not into it).
class FolderAboveInUse : public FolderInUse {
 public:
  using FolderInUse::FolderInUse;
};

/// An exclusive lock on `folder`, held while the returned handle lives: a flock on the folder
/// itself, so no lock file is left behind and a killed holder frees it, and a shared one on
/// every folder above it, so that a command writing into a folder never meets another one
/// writing into a folder inside it. Commands that write into an output folder (a training run,
/// reports, inpainted images, masks) take it, so that two of them never mix their files. Throws FolderInUse when another holds it, InputError when the
/// folder cannot be opened. On a file system that cannot lock folders (NFS, SMB) the handle is
/// empty and nothing is locked.
std::shared_ptr<void> lock_folder(const std::filesystem::path& folder);

}  // namespace pconv::io
