// Checks on tensors read from files that pconv did not necessarily write.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace pconv::io {

/// Whether every element of `tensor` lies inside the bytes its storage holds. A tensor read
/// from a truncated or crafted file can have sizes and strides that reach past its storage
/// (or a storage of no bytes at all); using it would read memory that is not the file's.
bool has_all_its_bytes(const at::Tensor& tensor);

/// The bytes of the file `file_name`, read once, for the checks below and for LibTorch to load
/// from (InputArchive::load_from(data, size)); empty when it cannot be read (the load then
/// says what is wrong). Of a file that is no zip archive (no end-of-directory record in its
/// last 64 KiB) only that tail, which is enough for the load to say so.
std::vector<char> read_archive(const std::string& file_name);

/// Whether each distinct storage of `loaded`, read from `archive` (a torch::serialize archive
/// in memory), has a tensor record of its size there. LibTorch makes each storage as large as
/// the archive's pickle says and fills it from the record, so a record that was cut short
/// leaves the rest of the storage uninitialized instead of failing; this finds it.
bool records_fill(const std::vector<char>& archive, const std::vector<at::Tensor>& loaded);

/// For an archive held in memory (what torch::jit::pickle_load read) that should hold the one
/// tensor `loaded`: whether it has exactly one tensor record, of the size of that tensor's
/// storage (a size match alone could be a decoy record beside a short one).
bool single_record_fills(const std::vector<char>& archive, const at::Tensor& loaded);

/// The name of the first record of the zip archive `archive` whose bytes do not match the
/// CRC-32 the archive stores for them (LibTorch's reader does not check them), or "" when all
/// match, when the bytes are not a zip archive this can read (the loader then says what is
/// wrong) and in a build without zlib.
std::string first_damaged_record(const std::vector<char>& archive);

}  // namespace pconv::io
