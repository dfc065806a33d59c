// Seeds for the data pipeline's random streams: each (run seed, stream, index) maps to an
// unrelated 64-bit seed, so that example i's crop, mask and order never depend on the others
// (what makes a resumed run, or any number of workers, reproduce the same data).
#pragma once

#include <cstdint>

namespace pconv::data::detail {

enum class SeedStream : uint64_t {
  kGeneratedMask = 1,
  kMaskFolder = 2,
  kEpochOrder = 3,
  kCrop = 4,
};

/// splitmix64's finaliser over the seed, the stream and the index.
inline uint64_t mix_seed(uint64_t seed, SeedStream stream, uint64_t index) {
  uint64_t z = seed ^ (static_cast<uint64_t>(stream) * 0xD1B54A32D192ED03ULL);
  z += 0x9E3779B97F4A7C15ULL * (index + 1);
  z = (z ^ (z >> 30U)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27U)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31U);
}

}  // namespace pconv::data::detail
