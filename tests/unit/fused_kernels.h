// Switches the partial convolution's fused kernels on or off for a scope.
#pragma once

#include <pconv/nn/functional/partial_conv2d.h>

namespace pconv::testing {

class FusedKernels {
 public:
  explicit FusedKernels(bool enabled) : before_(nn::functional::fused_kernels_enabled()) {
    nn::functional::set_fused_kernels_enabled(enabled);
  }
  ~FusedKernels() { nn::functional::set_fused_kernels_enabled(before_); }
  FusedKernels(const FusedKernels&) = delete;
  FusedKernels& operator=(const FusedKernels&) = delete;

 private:
  bool before_;
};

}  // namespace pconv::testing
