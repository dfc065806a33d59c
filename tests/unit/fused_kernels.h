// Switches the partial convolution's fused kernels on or off for a scope; lists the operators a
// step calls and looks for autograd nodes, to tell which path ran.
#pragma once

#include <pconv/nn/functional/partial_conv2d.h>

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include <gtest/gtest.h>

#include <memory>
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
  // A marker: a profiler that records nothing fails here, instead of passing every check that
  // an operator was not called.
  (void)at::zeros({1});
  const auto result = profiler::disableProfiler();  // owns the events
  std::multiset<std::string> names;
  for (const auto& event : result->events()) names.insert(event.name());
  const auto marker = names.find("aten::zeros");
  if (marker == names.end()) {
    ADD_FAILURE() << "the profiler recorded no operator";
  } else {
    names.erase(marker);
  }
  return names;
}

/// Whether autograd's graph from `node` reaches a node whose name contains `name`.
inline bool graph_has(const std::shared_ptr<torch::autograd::Node>& node, const std::string& name) {
  if (!node) return false;
  if (node->name().find(name) != std::string::npos) return true;
  for (const auto& edge : node->next_edges()) {
    if (graph_has(edge.function, name)) return true;
  }
  return false;
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
