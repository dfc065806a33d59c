// Data-parallel building blocks on torch.distributed's c10d: joining a process group the way
// torchrun describes it (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT)
// through c10d's TCPStore, and the collectives a data-parallel trainer needs (parameter broadcast,
// bucketed gradient averaging, also overlapped with the backward pass by c10d's own DDP engine),
// each with a timeout so that a rank that dies makes the others fail with a clear error instead of
// hanging. CPU tensors go over Gloo, CUDA tensors over NCCL (when built with it). The c10d
// headers stay in the source: this header needs none of them.
#pragma once

#include <torch/arg.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace pconv::train {

struct DistributedOptions {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  /// Processes of the group on this machine (LOCAL_WORLD_SIZE, as torchrun sets it; 1 when
  /// not set): they share its CPU cores.
  int local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  /// How long joining and each collective may take before it is an error.
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};
  /// The device this rank trains on (cuda:LOCAL_RANK on a GPU machine). A CUDA device makes
  /// CUDA tensors go over NCCL when this build has it (Gloo otherwise); CPU tensors always go
  /// over Gloo.
  torch::Device device = torch::kCPU;
  /// Polled while joining the group (which can wait up to the timeout for the other ranks):
  /// returning true ends the wait with a pconv::Error, as on Ctrl-C.
  std::function<bool()> should_stop;
};

/// The process group torchrun's variables describe, or nullopt when WORLD_SIZE is not set.
/// Throws pconv::InputError naming the variable when one is malformed or inconsistent.
std::optional<DistributedOptions> distributed_from_environment();

/// Whether this build has c10d's Gloo backend (it needs the Gloo headers at build time).
bool distributed_available();

/// Whether this build has c10d's NCCL backend for CUDA tensors (it needs nccl.h at build time).
bool nccl_available();

class GradientReducer;

/// One process's membership of a process group. Collectives are blocking and in place; every
/// rank must call the same ones in the same order. Failures (a rank gone, a timeout) throw
/// pconv::Error with a one-line message naming the rank and the operation.
class ProcessGroup {
 public:
  explicit ProcessGroup(const DistributedOptions& options);
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int rank() const;
  int world_size() const;
  /// Which backend carries which tensors, for the log: e.g. "Gloo" or "NCCL for CUDA tensors,
  /// Gloo for CPU tensors".
  std::string backends() const;

  /// Copies rank `root`'s tensors into every rank's (e.g. the initial parameters).
  void broadcast(const std::vector<torch::Tensor>& tensors, int root = 0);

  /// Replaces each tensor by its mean over the ranks. Tensors are packed into flat buckets of
  /// about `bucket_bytes` (one collective per bucket, not per tensor); undefined tensors are
  /// skipped on every rank alike.
  void all_reduce_mean(const std::vector<torch::Tensor>& tensors,
                       int64_t bucket_bytes = int64_t{25} << 20);

  /// Replaces each tensor by its sum over the ranks (one collective per tensor).
  void all_reduce_sum(const std::vector<torch::Tensor>& tensors);

  /// Waits until every rank has arrived.
  void barrier();

 private:
  friend class GradientReducer;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct GradientReducerOptions {
  /// Most bytes of gradients in one all-reduce (bucket), as DDP's bucket_cap_mb. The first
  /// bucket is smaller (1 MB), so that the first collective starts early in the backward.
  TORCH_ARG(int64_t, bucket_bytes) = int64_t{25} << 20;
  /// Whether some parameters may get no gradient in a backward. Off (DDP's default): every
  /// parameter must take part in every backward, or backward() throws a clear error on every
  /// rank that had one unused (a rank that had none fails at the timeout, waiting for them).
  /// On: c10d searches each loss's autograd graph for the unused ones (one more pass over the
  /// graph and one small all-reduce per step); a parameter no rank used keeps an undefined
  /// gradient, one used on some ranks only counts as zeros on the others.
  TORCH_ARG(bool, find_unused_parameters) = false;
};

/// Gradient averaging overlapped with the backward pass, by c10d's own DDP engine
/// (c10d::Reducer): the parameters' gradients are packed into buckets (first in reverse order
/// of the parameters, as the backward produces the last layers' gradients first; after the
/// first backward, in the order they actually came), and each bucket's all-reduce starts as
/// soon as its last gradient is ready, while the backward goes on. The same mean as
/// ProcessGroup::all_reduce_mean, without waiting for the whole backward before sending.
class GradientReducer {
 public:
  /// `parameters`: the trainable parameters (each requiring grad), the same list on every rank.
  GradientReducer(std::shared_ptr<ProcessGroup> group, std::vector<torch::Tensor> parameters,
                  const GradientReducerOptions& options = {});
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  /// Runs loss.backward() and leaves in every parameter's grad() its mean over the ranks (of
  /// the whole grad(): unset or zero the gradients before, as optimizer.zero_grad() does). It
  /// runs the backward itself because c10d waits for the last buckets inside the backward, at
  /// its end: a rank gone or a timeout (the group's) surfaces there, and is thrown as a
  /// one-line pconv::Error naming the rank and the operation. Every rank must call it once per
  /// step.
  void backward(const torch::Tensor& loss);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// BatchNorm in training mode with the batch statistics of all ranks together (synchronised
/// BatchNorm): the output, the running statistics and the gradients are those of one process
/// holding every rank's batch. Every rank must call it for the same layers in the same order.
/// For PConvUNetImpl::set_batch_norm_hook.
torch::Tensor sync_batch_norm(ProcessGroup& group, torch::nn::BatchNorm2dImpl& layer,
                              const torch::Tensor& input);

}  // namespace pconv::train
