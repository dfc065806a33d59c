// Switches the partial convolution's fused kernels on or off for a scope; lists the operators a
// step calls, to tell which path ran.
#pragma once

#include <pconv/nn/functional/partial_conv2d.h>

#include <torch/csrc/autograd/profiler_kineto.h>

#include <set>
#include <string>

namespace pconv::testing {

/// The names of the operators LibTorch's profiler sees while `step` runs on the CPU.
template <typename Step>
std::multiset<std::string> operators_called(Step&& step) {
  namespace impl = torch::profiler::impl;
  namespace profiler = torch::autograd::profiler;
  const impl::ProfilerConfig config(impl::ProfilerState::KINETO);
  const std::set<impl::ActivityType> activities{impl::ActivityType::CPU};
  profiler::prepareProfiler(config, activities);
  profiler::enableProfiler(config, activities);
  step();
  const auto result = profiler::disableProfiler();  // owns the events
  std::multiset<std::string> names;
  for (const auto& event : result->events()) names.insert(event.name());
  return names;
}

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
