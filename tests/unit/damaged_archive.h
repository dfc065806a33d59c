// Damaged copies of LibTorch archives (model files, checkpoints): the same zip with one
// tensor record cut short, as a truncated download or a crafted file would have it.
#pragma once

#include <caffe2/serialize/inline_container.h>

#include <algorithm>
#include <cstddef>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace pconv::testing {

/// The names of `archive`'s tensor records ("data/N"), smallest record first.
inline std::vector<std::string> tensor_records(const std::filesystem::path& archive) {
  caffe2::serialize::PyTorchStreamReader reader(archive.string());
  std::vector<std::string> names;
  for (const auto& name : reader.getAllRecords()) {
    if (name.rfind("data/", 0) == 0) names.push_back(name);
  }
  std::stable_sort(names.begin(), names.end(), [&](const auto& a, const auto& b) {
    return reader.getRecordSize(a) < reader.getRecordSize(b);
  });
  return names;
}

/// Writes `to`: `from` with each record's bytes passed through `change(name, bytes)`, its
/// checksums made anew (a crafted file, or damage a checksum does not catch).
template <typename Change>
void copy_with_changed_records(const std::filesystem::path& from, const std::filesystem::path& to,
                               Change&& change) {
  caffe2::serialize::PyTorchStreamReader reader(from.string());
  std::ofstream out(to, std::ios::binary);
  caffe2::serialize::PyTorchStreamWriter writer([&out](const void* data, size_t size) {
    out.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
    return size;
  });
  for (const auto& name : reader.getAllRecords()) {
    // The writer adds these itself.
    if (name == ".data/version" || name == "version" || name == "byteorder" ||
        name == ".data/serialization_id") {
      continue;
    }
    const auto [data, size] = reader.getRecord(name);
    std::string bytes(static_cast<const char*>(data.get()), size);
    change(name, bytes);
    writer.writeRecord(name, bytes.data(), bytes.size());
  }
  writer.writeEndOfFile();
}

/// Writes `to`: `from` with the record `record` cut to its first `keep` bytes.
inline void copy_with_short_record(const std::filesystem::path& from,
                                   const std::filesystem::path& to, const std::string& record,
                                   size_t keep) {
  copy_with_changed_records(from, to, [&](const std::string& name, std::string& bytes) {
    if (name == record) bytes.resize(std::min(keep, bytes.size()));
  });
}

}  // namespace pconv::testing
