// The data-parallel building blocks in one process: a group of one rank (its collectives are
// the identity, on Gloo for CPU tensors and NCCL for CUDA tensors), and GradientReducer's
// overlapped averaging leaving a plain backward's gradients. The multi-process checks are the
// CTest distributed.* tests (tests/cli/distributed_check.cpp).
#include <pconv/train/distributed.h>

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/cuda.h>

#include <gtest/gtest.h>

#include <memory>
#include <vector>

namespace {

using pconv::train::DistributedOptions;
using pconv::train::GradientReducer;
using pconv::train::ProcessGroup;

// A group of this process alone; port 0: the store takes a free port.
std::shared_ptr<ProcessGroup> one_rank_group(torch::Device device) {
  DistributedOptions options;
  options.master_port = 0;
  options.timeout = std::chrono::seconds(60);
  options.device = device;
  return std::make_shared<ProcessGroup>(options);
}

std::vector<at::Tensor> parameters_on(torch::Device device) {
  at::manual_seed(3);
  return {at::randn({4, 3}, device).requires_grad_(), at::randn({4}, device).requires_grad_(),
          at::randn({2, 4}, device).requires_grad_()};
}

at::Tensor loss_of(const std::vector<at::Tensor>& p, torch::Device device) {
  at::manual_seed(4);
  const auto x = at::randn({5, 3}, device);
  return at::linear(at::linear(x, p[0], p[1]).tanh(), p[2]).square().sum();
}

// Plain backward's gradients, and GradientReducer's on the same parameters (one rank: the
// mean over the ranks is the gradient itself).
void expect_reducer_keeps_gradients(torch::Device device) {
  const auto parameters = parameters_on(device);
  loss_of(parameters, device).backward();
  std::vector<at::Tensor> expected;
  for (const auto& parameter : parameters) {
    expected.push_back(parameter.grad().clone());
    parameter.mutable_grad().reset();
  }
  GradientReducer reducer(one_rank_group(device), parameters);
  for (int step = 0; step < 2; ++step) {  // the second after c10d's bucket rebuild
    for (const auto& parameter : parameters) parameter.mutable_grad().reset();
    reducer.backward(loss_of(parameters, device));
    for (size_t index = 0; index < parameters.size(); ++index) {
      ASSERT_TRUE(parameters[index].grad().defined()) << "parameter " << index;
      EXPECT_TRUE(at::allclose(parameters[index].grad(), expected[index]))
          << "parameter " << index << " at step " << step;
    }
  }
}

TEST(Distributed, OneRankCollectivesAreTheIdentity) {
  if (!pconv::train::distributed_available()) GTEST_SKIP() << "built without Gloo";
  const auto group = one_rank_group(torch::kCPU);
  EXPECT_EQ(group->rank(), 0);
  EXPECT_EQ(group->world_size(), 1);
  EXPECT_EQ(group->backends(), "Gloo");
  std::vector<at::Tensor> tensors{at::arange(6, at::kFloat), at::Tensor(), at::full({2, 2}, 3.0)};
  group->all_reduce_mean(tensors);
  group->all_reduce_sum(tensors);
  group->broadcast(tensors);
  group->barrier();
  EXPECT_TRUE(at::equal(tensors[0], at::arange(6, at::kFloat)));
  EXPECT_FALSE(tensors[1].defined());
  EXPECT_TRUE(at::equal(tensors[2], at::full({2, 2}, 3.0)));
}

TEST(Distributed, OneRankReducerKeepsTheGradients) {
  if (!pconv::train::distributed_available()) GTEST_SKIP() << "built without Gloo";
  expect_reducer_keeps_gradients(torch::kCPU);
}

TEST(Distributed, ReducerRejectsFrozenParameters) {
  if (!pconv::train::distributed_available()) GTEST_SKIP() << "built without Gloo";
  EXPECT_THROW(GradientReducer(one_rank_group(torch::kCPU), {at::ones({2})}), c10::Error);
}

TEST(Distributed, NcclOneRankCollectives_CUDA) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU";
  if (!pconv::train::nccl_available()) GTEST_SKIP() << "built without NCCL";
  const torch::Device cuda(torch::kCUDA, 0);
  const auto group = one_rank_group(cuda);
  EXPECT_EQ(group->backends(), "NCCL for CUDA tensors, Gloo for CPU tensors");
  // CUDA tensors over NCCL, CPU tensors over Gloo, in one group.
  std::vector<at::Tensor> tensors{at::arange(6, at::TensorOptions(cuda).dtype(at::kFloat)),
                                  at::full({3}, 2.0)};
  group->all_reduce_sum(tensors);
  group->all_reduce_mean(tensors);
  group->broadcast(tensors);
  group->barrier();
  EXPECT_TRUE(at::equal(tensors[0].cpu(), at::arange(6, at::kFloat)));
  EXPECT_TRUE(at::equal(tensors[1], at::full({3}, 2.0)));
}

TEST(Distributed, NcclOneRankReducerKeepsTheGradients_CUDA) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU";
  if (!pconv::train::nccl_available()) GTEST_SKIP() << "built without NCCL";
  expect_reducer_keeps_gradients(torch::Device(torch::kCUDA, 0));
}

}  // namespace
