// The data-parallel building blocks in one process: a group of one rank (its collectives are
// the identity, on Gloo for CPU tensors and NCCL for CUDA tensors), and GradientReducer's
// overlapped averaging leaving a plain backward's gradients. The multi-process checks are the
// CTest distributed.* tests (tests/cli/distributed_check.cpp).
#include <pconv/error.h>
#include <pconv/train/distributed.h>

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/cuda.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
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

// torchrun's variables: LOCAL_RANK, when not set, is the rank's place on its machine where
// LOCAL_WORLD_SIZE says how many processes it runs (two machines of two: rank 3 is local rank
// 1), else the rank; a LOCAL_RANK past LOCAL_WORLD_SIZE is an error naming both.
TEST(Distributed, LocalRankFollowsTheProcessesPerMachine) {
  setenv("WORLD_SIZE", "4", 1);
  setenv("RANK", "3", 1);
  auto options = pconv::train::distributed_from_environment();
  ASSERT_TRUE(options.has_value());
  EXPECT_EQ(options->local_rank, 3);
  EXPECT_EQ(options->local_world_size, 1);
  setenv("LOCAL_WORLD_SIZE", "2", 1);
  options = pconv::train::distributed_from_environment();
  EXPECT_EQ(options->local_rank, 1);
  EXPECT_EQ(options->local_world_size, 2);
  setenv("LOCAL_RANK", "2", 1);
  EXPECT_THAT([] { pconv::train::distributed_from_environment(); },
              ::testing::ThrowsMessage<pconv::InputError>(
                  ::testing::HasSubstr("LOCAL_RANK is 2 but LOCAL_WORLD_SIZE is 2")));
  for (const char* name : {"WORLD_SIZE", "RANK", "LOCAL_WORLD_SIZE", "LOCAL_RANK"}) {
    unsetenv(name);
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

// A master that takes the connection and never answers: c10d's client waits for its first
// answer with no timeout of its own.
class SilentMaster {
 public:
  SilentMaster() : socket_(::socket(AF_INET, SOCK_STREAM, 0)) {
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    address.sin_port = 0;  // a free port
    socklen_t length = sizeof(address);
    if (socket_ < 0 || ::bind(socket_, reinterpret_cast<sockaddr*>(&address), length) != 0 ||
        ::listen(socket_, 4) != 0 ||
        ::getsockname(socket_, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
      ADD_FAILURE() << "cannot listen on the loopback address";
    }
    port_ = ntohs(address.sin_port);
  }
  ~SilentMaster() { ::close(socket_); }
  SilentMaster(const SilentMaster&) = delete;
  SilentMaster& operator=(const SilentMaster&) = delete;

  int port() const { return port_; }

 private:
  int socket_;
  int port_ = 0;
};

TEST(Distributed, JoiningASilentMasterEndsAtTheTimeoutOrAStopRequest) {
  if (!pconv::train::distributed_available()) GTEST_SKIP() << "built without Gloo";
  SilentMaster master;
  DistributedOptions options;
  options.rank = 1;
  options.world_size = 2;
  options.master_port = master.port();
  options.timeout = std::chrono::seconds(1);
  const auto start = std::chrono::steady_clock::now();
  EXPECT_THAT([&] { ProcessGroup group(options); },
              ::testing::ThrowsMessage<pconv::Error>(
                  ::testing::HasSubstr("rank 1 of 2: cannot join the process group at 127.0.0.1:" +
                                       std::to_string(master.port()) + ": no answer within 1 s")));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));

  options.timeout = std::chrono::minutes(10);
  const auto stop_at = std::chrono::steady_clock::now() + std::chrono::milliseconds(300);
  options.should_stop = [stop_at] { return std::chrono::steady_clock::now() > stop_at; };
  EXPECT_THAT([&] { ProcessGroup group(options); },
              ::testing::ThrowsMessage<pconv::Error>(
                  ::testing::HasSubstr("stopped while joining the process group")));
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
