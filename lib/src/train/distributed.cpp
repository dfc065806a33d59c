#include "pconv/train/distributed.h"

#include "pconv/error.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#ifdef USE_C10D_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif

#include <cstdlib>
#include <string>

namespace pconv::train {
namespace {

std::optional<std::string> environment(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return std::nullopt;
  return std::string(value);
}

int integer_variable(const char* name, int fallback, int low, int high) {
  const auto text = environment(name);
  if (!text) return fallback;
  try {
    size_t used = 0;
    const int value = std::stoi(*text, &used);
    if (used == text->size() && value >= low && value <= high) return value;
  } catch (const std::exception&) {
  }
  throw InputError(std::string(name) + "='" + *text + "': expected an integer in [" +
                   std::to_string(low) + ", " + std::to_string(high) + "]");
}

}  // namespace

std::optional<DistributedOptions> distributed_from_environment() {
  if (!environment("WORLD_SIZE")) return std::nullopt;
  DistributedOptions options;
  options.world_size = integer_variable("WORLD_SIZE", 1, 1, 1 << 20);
  options.rank = integer_variable("RANK", 0, 0, options.world_size - 1);
  options.local_rank = integer_variable("LOCAL_RANK", options.rank, 0, options.world_size - 1);
  options.master_addr = environment("MASTER_ADDR").value_or("127.0.0.1");
  options.master_port = integer_variable("MASTER_PORT", 29500, 1, 65535);
  return options;
}

#ifdef USE_C10D_GLOO

bool distributed_available() { return true; }

struct ProcessGroup::Impl {
  DistributedOptions options;
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;

  // Runs one collective and turns c10d's failures into one clear line.
  template <typename Operation>
  void run(const char* what, Operation&& operation) {
    try {
      operation()->wait(options.timeout);
    } catch (const std::exception& error) {
      std::string detail = error.what();
      detail = detail.substr(0, detail.find('\n'));
      throw Error("rank " + std::to_string(options.rank) + " of " +
                  std::to_string(options.world_size) + ": " + what + " failed (another rank " +
                  "stopped, or the " + std::to_string(options.timeout.count() / 1000) +
                  " s timeout passed): " + detail);
    }
  }
};

ProcessGroup::ProcessGroup(const DistributedOptions& options) : impl_(std::make_unique<Impl>()) {
  impl_->options = options;
  const std::string where = options.master_addr + ":" + std::to_string(options.master_port);
  try {
    c10d::TCPStoreOptions store_options;
    store_options.port = static_cast<uint16_t>(options.master_port);
    store_options.isServer = options.rank == 0;
    store_options.numWorkers = options.world_size;
    store_options.waitWorkers = true;
    store_options.timeout = options.timeout;
    impl_->store = c10::make_intrusive<c10d::TCPStore>(options.master_addr, store_options);
    auto gloo_options = c10d::ProcessGroupGloo::Options::create(options.timeout);
    gloo_options->devices.push_back(
        c10d::ProcessGroupGloo::createDeviceForHostname(options.master_addr));
    impl_->group = c10::make_intrusive<c10d::ProcessGroupGloo>(
        impl_->store, options.rank, options.world_size, gloo_options);
  } catch (const std::exception& error) {
    std::string detail = error.what();
    throw Error("rank " + std::to_string(options.rank) + " of " +
                std::to_string(options.world_size) + ": cannot join the process group at " +
                where + ": " + detail.substr(0, detail.find('\n')));
  }
}

ProcessGroup::~ProcessGroup() = default;

int ProcessGroup::rank() const { return impl_->options.rank; }
int ProcessGroup::world_size() const { return impl_->options.world_size; }

void ProcessGroup::broadcast(const std::vector<torch::Tensor>& tensors, int root) {
  at::NoGradGuard no_grad;  // parameters are overwritten in place
  for (const auto& tensor : tensors) {
    if (!tensor.defined()) continue;
    std::vector<at::Tensor> one{tensor.is_contiguous() ? tensor : tensor.contiguous()};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    impl_->run("broadcast", [&] { return impl_->group->broadcast(one, options); });
    if (!one[0].is_same(tensor)) tensor.copy_(one[0]);
  }
}

void ProcessGroup::all_reduce_mean(const std::vector<torch::Tensor>& tensors,
                                   int64_t bucket_bytes) {
  at::NoGradGuard no_grad;
  const double scale = 1.0 / static_cast<double>(world_size());
  std::vector<at::Tensor> bucket;
  int64_t bytes = 0;
  const auto flush = [&] {
    if (bucket.empty()) return;
    std::vector<at::Tensor> flat;
    flat.reserve(bucket.size());
    for (const auto& tensor : bucket) flat.push_back(tensor.reshape({-1}));
    std::vector<at::Tensor> packed{at::cat(flat)};
    impl_->run("gradient all-reduce", [&] { return impl_->group->allreduce(packed); });
    packed[0].mul_(scale);
    int64_t offset = 0;
    for (const auto& tensor : bucket) {
      tensor.copy_(packed[0].narrow(0, offset, tensor.numel()).view_as(tensor));
      offset += tensor.numel();
    }
    bucket.clear();
    bytes = 0;
  };
  for (const auto& tensor : tensors) {
    if (!tensor.defined()) continue;
    if (!bucket.empty() && (tensor.scalar_type() != bucket.front().scalar_type() ||
                            tensor.device() != bucket.front().device())) {
      flush();
    }
    bucket.push_back(tensor);
    bytes += tensor.numel() * static_cast<int64_t>(tensor.element_size());
    if (bytes >= bucket_bytes) flush();
  }
  flush();
}

void ProcessGroup::all_reduce_sum(const std::vector<torch::Tensor>& tensors) {
  for (const auto& tensor : tensors) {
    if (!tensor.defined()) continue;
    std::vector<at::Tensor> one{tensor};
    impl_->run("all-reduce", [&] { return impl_->group->allreduce(one); });
  }
}

void ProcessGroup::barrier() {
  impl_->run("barrier", [&] { return impl_->group->barrier(); });
}

#else  // no Gloo headers at build time

bool distributed_available() { return false; }

struct ProcessGroup::Impl {};

ProcessGroup::ProcessGroup(const DistributedOptions& /*options*/) {
  throw Error("this pconv was built without c10d's Gloo backend (install libgloo-dev and rebuild)");
}
ProcessGroup::~ProcessGroup() = default;
int ProcessGroup::rank() const { return 0; }
int ProcessGroup::world_size() const { return 1; }
void ProcessGroup::broadcast(const std::vector<torch::Tensor>& /*tensors*/, int /*root*/) {}
void ProcessGroup::all_reduce_mean(const std::vector<torch::Tensor>& /*tensors*/,
                                   int64_t /*bucket_bytes*/) {}
void ProcessGroup::all_reduce_sum(const std::vector<torch::Tensor>& /*tensors*/) {}
void ProcessGroup::barrier() {}

#endif

namespace {

at::Tensor per_channel(const at::Tensor& values) { return values.view({1, -1, 1, 1}); }

// Synchronised BatchNorm: batch statistics summed over the ranks in the forward, and the two
// per-channel sums the input gradient needs summed over the ranks in the backward, so that
// the input gradient is the one of the sum of every rank's loss (gradient averaging over the
// ranks then gives the gradient of the mean loss, as with one process and the whole batch).
struct SyncBatchNormFunction : public torch::autograd::Function<SyncBatchNormFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& weight, const at::Tensor& bias,
                            const at::Tensor& running_mean, const at::Tensor& running_var,
                            double momentum,
                            double eps, int64_t group_address) {
    auto& group = *reinterpret_cast<ProcessGroup*>(group_address);  // NOLINT(performance-no-int-to-ptr)
    const int64_t channels = input.size(1);
    const int64_t per_channel_count = input.numel() / channels;  // exact: numel = N * C * H * W
    const auto values = input.to(at::kDouble);
    auto stats = at::cat({values.sum({0, 2, 3}), values.square().sum({0, 2, 3}),
                          at::full({1}, static_cast<double>(per_channel_count), values.options())});
    group.all_reduce_sum({stats});
    const auto count = stats[2 * channels].item<double>();
    const auto mean = stats.narrow(0, 0, channels) / count;
    const auto variance = (stats.narrow(0, channels, channels) / count - mean.square()).clamp_min(0);
    const auto invstd = (variance + eps).rsqrt().to(input.scalar_type());
    const auto mean_typed = mean.to(input.scalar_type());
    if (running_mean.defined()) {
      running_mean.mul_(1 - momentum).add_(mean.to(running_mean.scalar_type()), momentum);
      running_var.mul_(1 - momentum)
          .add_((variance * (count / std::max(count - 1, 1.0))).to(running_var.scalar_type()),
                momentum);
    }
    const auto normalized = (input - per_channel(mean_typed)) * per_channel(invstd);
    ctx->save_for_backward({normalized, weight, invstd});
    ctx->saved_data["group"] = group_address;
    ctx->saved_data["count"] = count;
    auto output = normalized;
    if (weight.defined()) output = output * per_channel(weight);
    if (bias.defined()) output = output + per_channel(bias);
    return output;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& normalized = saved[0];
    const auto& weight = saved[1];
    const auto& invstd = saved[2];
    auto& group = *reinterpret_cast<ProcessGroup*>(  // NOLINT(performance-no-int-to-ptr)
        ctx->saved_data["group"].toInt());
    const double count = ctx->saved_data["count"].toDouble();
    const auto& grad_output = grads[0];
    const int64_t channels = grad_output.size(1);
    const auto sum_dy = grad_output.sum({0, 2, 3});
    const auto sum_dy_normalized = (grad_output * normalized).sum({0, 2, 3});
    auto sums = at::cat({sum_dy, sum_dy_normalized});
    group.all_reduce_sum({sums});
    const auto scale = weight.defined() ? invstd * weight : invstd;
    const auto grad_input =
        per_channel(scale) * (grad_output - per_channel(sums.narrow(0, 0, channels)) / count -
                              normalized * per_channel(sums.narrow(0, channels, channels)) / count);
    return {grad_input,
            weight.defined() ? sum_dy_normalized : at::Tensor(),
            sum_dy,
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

torch::Tensor sync_batch_norm(ProcessGroup& group, torch::nn::BatchNorm2dImpl& layer,
                              const torch::Tensor& input) {
  const auto& options = layer.options;
  double momentum = options.momentum().value_or(0.1);
  if (layer.num_batches_tracked.defined()) {
    layer.num_batches_tracked.add_(1);
    if (!options.momentum()) momentum = 1.0 / layer.num_batches_tracked.item<double>();
  }
  return SyncBatchNormFunction::apply(input, layer.weight, layer.bias, layer.running_mean,
                                      layer.running_var, momentum, options.eps(),
                                      reinterpret_cast<int64_t>(&group));
}

}  // namespace pconv::train
