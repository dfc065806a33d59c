#include "stored_tensor.h"

#include <c10/util/safe_numerics.h>
#include <caffe2/serialize/inline_container.h>

#include <cstdint>
#include <set>

namespace pconv::io {

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

bool records_fill(const std::string& file_name, const std::vector<at::Tensor>& loaded) {
  // Each storage was written as one record of exactly its bytes: match them up by size.
  caffe2::serialize::PyTorchStreamReader reader(file_name);
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

}  // namespace pconv::io
