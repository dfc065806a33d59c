// c10d's NCCL backend for CUDA tensors, kept out of distributed.cpp: its header pulls in the
// CUDA runtime and nccl.h, which only builds with NCCL (PCONV_WITH_NCCL) compile.
#pragma once

#include <c10/core/Device.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>

namespace pconv::train {

/// A ProcessGroupNCCL of `world_size` ranks on CUDA device `device` (made the current device),
/// whose collectives fail after `timeout`.
c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                    int rank, int world_size,
                                                    c10::DeviceIndex device,
                                                    std::chrono::milliseconds timeout);

}  // namespace pconv::train
