#include "stored_tensor.h"

#include <c10/util/safe_numerics.h>
#include <caffe2/serialize/inline_container.h>
#include <caffe2/serialize/read_adapter_interface.h>

#ifdef PCONV_WITH_ZLIB
#include <zlib.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <system_error>

namespace pconv::io {
namespace {

// The archive's bytes in memory, as the stream reader reads them.
class MemoryReader : public caffe2::serialize::ReadAdapterInterface {
 public:
  explicit MemoryReader(const std::vector<char>& bytes) : bytes_(bytes) {}
  size_t size() const override { return bytes_.size(); }
  size_t read(uint64_t pos, void* buf, size_t n, const char* /*what*/) const override {
    if (pos >= bytes_.size()) return 0;
    const size_t count = std::min<size_t>(n, bytes_.size() - pos);
    std::memcpy(buf, bytes_.data() + pos, count);
    return count;
  }

 private:
  const std::vector<char>& bytes_;
};

#ifdef PCONV_WITH_ZLIB
// Little-endian fields of a zip archive, read with bounds checks: `ok` turns false at the first
// read outside the bytes.
struct ZipBytes {
  const std::vector<char>& bytes;
  bool ok = true;
  uint64_t get(uint64_t at, int size) {
    if (at > bytes.size() || static_cast<uint64_t>(size) > bytes.size() - at) {
      ok = false;
      return 0;
    }
    uint64_t value = 0;
    for (int i = size - 1; i >= 0; --i) {
      value = (value << 8) | static_cast<unsigned char>(bytes[at + static_cast<uint64_t>(i)]);
    }
    return value;
  }
};

constexpr uint64_t kEndOfDirectory = 0x06054b50;
constexpr uint64_t kZip64Locator = 0x07064b50;
constexpr uint64_t kZip64EndOfDirectory = 0x06064b50;
constexpr uint64_t kDirectoryEntry = 0x02014b50;
constexpr uint64_t kLocalHeader = 0x04034b50;
constexpr uint64_t kMax32 = 0xFFFFFFFF;
#endif

}  // namespace

std::vector<char> read_archive(const std::string& file_name) {
  std::error_code error;
  const auto file_size = std::filesystem::file_size(file_name, error);
  if (error) return {};
  std::ifstream in(file_name, std::ios::binary);
  // A zip archive ends in its end-of-directory record: 22 bytes and a comment of at most 65535.
  // A file without one there is no archive, and that tail is all the load needs to say so: a
  // large file given by mistake (a video, a disk image) is not read whole (an 8 GiB one took
  // 33 s, a 1 TiB sparse one ran out of memory).
  const uint64_t tail_size = std::min<uint64_t>(file_size, 22 + 65535);
  std::vector<char> tail(static_cast<size_t>(tail_size));
  if (!in.seekg(static_cast<std::streamoff>(file_size - tail_size)) ||
      !in.read(tail.data(), static_cast<std::streamsize>(tail.size()))) {
    return {};
  }
  if (tail_size == file_size ||
      std::string_view(tail.data(), tail.size()).rfind("PK\x05\x06") == std::string_view::npos) {
    return tail;
  }
  std::vector<char> bytes(static_cast<size_t>(file_size));
  if (!in.seekg(0) || !in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()))) return {};
  return bytes;
}

std::string first_damaged_record(const std::vector<char>& bytes) {
#ifdef PCONV_WITH_ZLIB
  ZipBytes zip{bytes};
  // The end-of-directory record: 22 bytes and a comment of at most 65535 at the file's end.
  if (bytes.size() < 22) return {};
  uint64_t end = bytes.size() - 22;
  const uint64_t lowest = end > 65535 ? end - 65535 : 0;
  while (zip.get(end, 4) != kEndOfDirectory) {
    if (end == lowest) return {};
    --end;
  }
  uint64_t entries = zip.get(end + 10, 2);
  uint64_t directory = zip.get(end + 16, 4);
  if ((entries == 0xFFFF || directory == kMax32) && end >= 20 &&
      zip.get(end - 20, 4) == kZip64Locator) {
    const uint64_t end64 = zip.get(end - 20 + 8, 8);
    if (zip.get(end64, 4) != kZip64EndOfDirectory) return {};
    entries = zip.get(end64 + 32, 8);
    directory = zip.get(end64 + 48, 8);
  }
  uint64_t at = directory;
  uint64_t checked = 0;  // bytes checksummed: records never overlap in a real archive
  for (uint64_t entry = 0; entry < entries && zip.ok; ++entry) {
    if (zip.get(at, 4) != kDirectoryEntry) return {};
    const uint64_t method = zip.get(at + 10, 2);
    const uint64_t crc = zip.get(at + 16, 4);
    uint64_t stored_size = zip.get(at + 20, 4);
    const uint64_t plain_size = zip.get(at + 24, 4);
    const uint64_t name_length = zip.get(at + 28, 2);
    const uint64_t extra_length = zip.get(at + 30, 2);
    const uint64_t comment_length = zip.get(at + 32, 2);
    uint64_t local = zip.get(at + 42, 4);
    if (!zip.ok || at + 46 + name_length > bytes.size()) return {};
    std::string name(bytes.data() + at + 46, name_length);  // returned, moved
    // Zip64: the fields that overflowed 32 bits, in this order, in extra field 0x0001.
    for (uint64_t extra = at + 46 + name_length; extra + 4 <= at + 46 + name_length + extra_length;
         extra += 4 + zip.get(extra + 2, 2)) {
      if (zip.get(extra, 2) != 0x0001) continue;
      uint64_t field = extra + 4;
      if (plain_size == kMax32) field += 8;
      if (stored_size == kMax32) {
        stored_size = zip.get(field, 8);
        field += 8;
      }
      if (local == kMax32) local = zip.get(field, 8);
    }
    at += 46 + name_length + extra_length + comment_length;
    if (method != 0) continue;  // compressed: LibTorch writes none, and inflating checks its own
    if (zip.get(local, 4) != kLocalHeader) return {};
    const uint64_t data = local + 30 + zip.get(local + 26, 2) + zip.get(local + 28, 2);
    if (!zip.ok || data > bytes.size() || stored_size > bytes.size() - data) return {};
    checked += stored_size;
    if (checked > bytes.size()) return {};  // overlapping records: not an archive LibTorch wrote
    // A CRC of 0 for bytes: written with checksums turned off (torch.serialization's
    // set_crc32_options(False)); there is nothing to compare.
    if (crc == 0 && stored_size != 0) continue;
    const auto actual = crc32_z(0, reinterpret_cast<const Bytef*>(bytes.data() + data),
                                static_cast<size_t>(stored_size));
    if (actual != crc) return name;
  }
  return {};
#else
  (void)bytes;
  return {};
#endif
}

bool has_all_its_bytes(const at::Tensor& tensor) {
  if (!tensor.defined()) return false;
  if (tensor.numel() == 0) return true;
  if (!tensor.has_storage() || tensor.storage().data() == nullptr) return false;
  // The last element's offset, in elements: storage_offset + sum((size - 1) * stride).
  if (tensor.storage_offset() < 0) return false;
  auto last = static_cast<uint64_t>(tensor.storage_offset());
  for (int64_t dim = 0; dim < tensor.dim(); ++dim) {
    if (tensor.stride(dim) < 0) return false;
    uint64_t reach = 0;
    if (c10::mul_overflows(static_cast<uint64_t>(tensor.size(dim) - 1),
                           static_cast<uint64_t>(tensor.stride(dim)), &reach) ||
        c10::add_overflows(last, reach, &last)) {
      return false;
    }
  }
  uint64_t end = 0;
  if (c10::add_overflows(last, uint64_t{1}, &end) ||
      c10::mul_overflows(end, static_cast<uint64_t>(tensor.element_size()), &end)) {
    return false;
  }
  return end <= tensor.storage().nbytes();
}

bool records_fill(const std::vector<char>& archive, const std::vector<at::Tensor>& loaded) {
  // Each storage was written as one record of exactly its bytes: match them up by size.
  caffe2::serialize::PyTorchStreamReader reader(std::make_shared<MemoryReader>(archive));
  std::multiset<uint64_t> record_sizes;
  for (const auto& record : reader.getAllRecords()) {
    if (record.rfind("data/", 0) == 0) record_sizes.insert(reader.getRecordSize(record));
  }
  std::set<const void*> seen;
  for (const auto& tensor : loaded) {
    if (!tensor.defined() || !tensor.has_storage()) continue;
    if (!seen.insert(tensor.storage().unsafeGetStorageImpl()).second) continue;
    const auto match = record_sizes.find(tensor.storage().nbytes());
    if (match == record_sizes.end()) return false;
    record_sizes.erase(match);
  }
  return true;
}

bool single_record_fills(const std::vector<char>& archive, const at::Tensor& loaded) {
  if (!loaded.defined() || !loaded.has_storage()) return false;
  caffe2::serialize::PyTorchStreamReader reader(std::make_shared<MemoryReader>(archive));
  std::vector<std::string> records;
  for (const auto& record : reader.getAllRecords()) {
    if (record.rfind("data/", 0) == 0) records.push_back(record);
  }
  return records.size() == 1 && reader.getRecordSize(records[0]) == loaded.storage().nbytes();
}

}  // namespace pconv::io
