#include "pconv/train/distributed.h"

#include "pconv/error.h"

#include <ATen/ATen.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/autograd.h>

// PCONV_WITH_GLOO, not LibTorch's own USE_C10D_GLOO: the torch target defines that one for
// every source, with or without the Gloo headers this file then needs.
#ifdef PCONV_WITH_GLOO
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>
#endif
#ifdef PCONV_WITH_NCCL
#include "nccl_backend.h"
#endif

#ifdef PCONV_WITH_GLOO
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <future>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <vector>

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

#ifdef PCONV_WITH_GLOO
// The address of this machine's interface that its packets to `host` leave from (a UDP
// socket's connect sends nothing; it only picks the route): the address the other ranks can
// reach this one at, on the master's machine too (the loopback address when the master is
// there). Empty when `host` cannot be resolved or routed to.
std::string local_address_towards(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* found = nullptr;
  if (::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found) != 0) return {};
  std::string address;
  for (const addrinfo* candidate = found; candidate != nullptr && address.empty();
       candidate = candidate->ai_next) {
    const int socket = ::socket(candidate->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (socket < 0) continue;
    sockaddr_storage local{};
    socklen_t length = sizeof(local);
    std::array<char, INET6_ADDRSTRLEN> text{};
    if (::connect(socket, candidate->ai_addr, candidate->ai_addrlen) == 0 &&
        ::getsockname(socket, reinterpret_cast<sockaddr*>(&local), &length) == 0) {
      const void* raw =
          local.ss_family == AF_INET
              ? static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(&local)->sin_addr)
              : static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(&local)->sin6_addr);
      if (::inet_ntop(local.ss_family, raw, text.data(), text.size()) != nullptr) {
        address = text.data();
      }
    }
    ::close(socket);
  }
  ::freeaddrinfo(found);
  return address;
}

// Gloo's transport: on the interfaces GLOO_SOCKET_IFNAME names (comma-separated), as
// torch.distributed does; otherwise on the one this machine reaches the master through.
std::vector<std::shared_ptr<::gloo::transport::Device>> gloo_devices(
    const DistributedOptions& options) {
  std::vector<std::shared_ptr<::gloo::transport::Device>> devices;
  if (const auto interfaces = environment("GLOO_SOCKET_IFNAME")) {
    std::stringstream list(*interfaces);
    for (std::string name; std::getline(list, name, ',');) {
      if (!name.empty()) devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
    }
  }
  if (devices.empty()) {
    const auto address = local_address_towards(options.master_addr, options.master_port);
    devices.push_back(address.empty() ? c10d::ProcessGroupGloo::createDefaultDevice()
                                      : c10d::ProcessGroupGloo::createDeviceForHostname(address));
  }
  return devices;
}
#endif

}  // namespace

std::optional<DistributedOptions> distributed_from_environment() {
  if (!environment("WORLD_SIZE")) {
    // Half a torchrun environment is a mistake, not a single-process run.
    if (environment("RANK")) {
      throw InputError(
          "RANK is set but WORLD_SIZE is not: set both (as torchrun does), or neither");
    }
    return std::nullopt;
  }
  DistributedOptions options;
  options.world_size = integer_variable("WORLD_SIZE", 1, 1, 1 << 20);
  // Every process of a group needs its own rank: two without one would both be rank 0.
  if (options.world_size > 1 && !environment("RANK")) {
    throw InputError("WORLD_SIZE is " + std::to_string(options.world_size) +
                     " but RANK is not set: set both (as torchrun does), or neither");
  }
  options.rank = integer_variable("RANK", 0, 0, options.world_size - 1);
  options.local_world_size = integer_variable("LOCAL_WORLD_SIZE", 1, 1, options.world_size);
  // Without LOCAL_RANK: the rank's place among its machine's processes, where LOCAL_WORLD_SIZE
  // says how many there are (ranks numbered machine by machine, as torchrun numbers them), else
  // the rank itself (one machine).
  options.local_rank = integer_variable(
      "LOCAL_RANK",
      environment("LOCAL_WORLD_SIZE") ? options.rank % options.local_world_size : options.rank, 0,
      options.world_size - 1);
  if (environment("LOCAL_WORLD_SIZE") && options.local_rank >= options.local_world_size) {
    throw InputError("LOCAL_RANK is " + std::to_string(options.local_rank) +
                     " but LOCAL_WORLD_SIZE is " + std::to_string(options.local_world_size) +
                     ": a local rank is below the number of processes on its machine");
  }
  options.master_addr = environment("MASTER_ADDR").value_or("127.0.0.1");
  options.master_port = integer_variable("MASTER_PORT", 29500, 1, 65535);
  return options;
}

#ifdef PCONV_WITH_GLOO

bool distributed_available() { return true; }

#ifdef PCONV_WITH_NCCL
bool nccl_available() { return true; }
#else
bool nccl_available() { return false; }
#endif

struct ProcessGroup::Impl {
  DistributedOptions options;
  c10::intrusive_ptr<c10d::Store> store;
  // c10d's process group, as torch.distributed's "cpu:gloo,cuda:nccl": it sends each
  // collective to the backend of its tensors' device. c10d::Reducer needs this form.
  c10::intrusive_ptr<c10d::ProcessGroup> group;
  std::string backends;

  // Connects to the store and sets up the backends: c10d's part of joining the group.
  // `connected` turns true once the store has its master's first answer.
  static std::unique_ptr<Impl> join(const DistributedOptions& options,
                                    const std::shared_ptr<std::atomic<bool>>& connected);

  // c10d's failures as one clear line.
  [[noreturn]] void fail(const std::string& what, const std::exception& error) const {
    std::string detail = error.what();
    detail = detail.substr(0, detail.find('\n'));
    throw Error("rank " + std::to_string(options.rank) + " of " +
                std::to_string(options.world_size) + ": " + what + " failed (another rank " +
                "stopped, or the " + std::to_string(options.timeout.count() / 1000) +
                " s timeout passed): " + detail);
  }

  // Runs one collective and waits for it, at most the timeout.
  template <typename Operation>
  void run(const char* what, Operation&& operation) {
    bool completed = false;
    try {
      completed = operation()->wait(options.timeout);
    } catch (const std::exception& error) {
      fail(what, error);
    }
    // An aborted collective (NCCL's watchdog, a shutdown) returns false and leaves its tensors as
    // they were: never used as if reduced.
    if (!completed) fail(what, std::runtime_error("the operation was aborted"));
  }
};

std::unique_ptr<ProcessGroup::Impl> ProcessGroup::Impl::join(
    const DistributedOptions& options, const std::shared_ptr<std::atomic<bool>>& connected) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  const std::string where = options.master_addr + ":" + std::to_string(options.master_port);
  try {
    c10d::TCPStoreOptions store_options;
    store_options.port = static_cast<uint16_t>(options.master_port);
    store_options.isServer = options.rank == 0;
    store_options.numWorkers = options.world_size;
    store_options.waitWorkers = true;
    store_options.timeout = options.timeout;
    impl->store = c10::make_intrusive<c10d::TCPStore>(options.master_addr, store_options);
    *connected = true;
    auto gloo_options = c10d::ProcessGroupGloo::Options::create(options.timeout);
    gloo_options->devices = gloo_devices(options);
    // Each backend rendezvouses under its own prefix of the one store.
    c10::intrusive_ptr<c10d::Backend> gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(
        c10::make_intrusive<c10d::PrefixStore>("gloo", impl->store), options.rank,
        options.world_size, gloo_options);
    auto group =
        c10::make_intrusive<c10d::ProcessGroup>(impl->store, options.rank, options.world_size);
    using BackendType = c10d::ProcessGroup::BackendType;
    group->setBackend(c10::DeviceType::CPU, BackendType::GLOO, gloo);
    impl->backends = "Gloo";
    bool nccl = false;
#ifdef PCONV_WITH_NCCL
    if (options.device.is_cuda()) {
      auto nccl_store = c10::make_intrusive<c10d::PrefixStore>("nccl", impl->store);
      group->setBackend(c10::DeviceType::CUDA, BackendType::NCCL,
                        make_nccl_backend(nccl_store, options.rank, options.world_size,
                                          options.device.index(), options.timeout));
      impl->backends = "NCCL for CUDA tensors, Gloo for CPU tensors";
      nccl = true;
    }
#endif
    if (!nccl) {
      // Gloo also reduces CUDA tensors (through host memory): slower than NCCL, but it works.
      group->setBackend(c10::DeviceType::CUDA, BackendType::GLOO, gloo);
    }
    group->setDefaultBackend(BackendType::GLOO);  // barrier() on a CPU tensor
    group->setGroupName("pconv");
    impl->group = group;
  } catch (const std::exception& error) {
    std::string detail = error.what();
    throw Error("rank " + std::to_string(options.rank) + " of " +
                std::to_string(options.world_size) + ": cannot join the process group at " + where +
                ": " + detail.substr(0, detail.find('\n')));
  }
  return impl;
}

ProcessGroup::ProcessGroup(const DistributedOptions& options) {
  // c10d's client waits for its master's first answer with no timeout, and a rendezvous cannot
  // be cancelled: join on a thread of its own, so that the timeout and a stop request end the
  // wait. A join that never ends leaves that thread behind, blocked on its socket.
  auto connected = std::make_shared<std::atomic<bool>>(false);
  std::packaged_task<std::unique_ptr<Impl>()> task(
      [options, connected] { return Impl::join(options, connected); });
  auto joined = task.get_future();
  std::thread(std::move(task)).detach();
  // Until the store has its master's first answer (a wait c10d gives no timeout); after it the
  // waits for the other ranks are c10d's, each with the timeout, one after the other.
  const auto deadline =
      std::chrono::steady_clock::now() + options.timeout + std::chrono::seconds(2);
  const std::string who =
      "rank " + std::to_string(options.rank) + " of " + std::to_string(options.world_size) + ": ";
  const std::string where =
      " the process group at " + options.master_addr + ":" + std::to_string(options.master_port);
  const std::string stopped = who + "stopped while joining" + where;
  const std::string no_answer = who + "cannot join" + where + ": no answer within " +
                                std::to_string(options.timeout.count() / 1000) + " s";
  while (joined.wait_for(std::chrono::milliseconds(50)) != std::future_status::ready) {
    if (options.should_stop && options.should_stop()) throw Error(stopped);
    if (!*connected && std::chrono::steady_clock::now() > deadline) throw Error(no_answer);
  }
  impl_ = joined.get();
  // The join ran on a thread of its own: the rank's GPU becomes this thread's current device
  // too, so that nothing that takes the current device lands on GPU 0 of every rank.
  if (options.device.is_cuda() && options.device.has_index()) {
    c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->setDevice(options.device);
  }
}

ProcessGroup::~ProcessGroup() = default;

int ProcessGroup::rank() const { return impl_->options.rank; }
int ProcessGroup::world_size() const { return impl_->options.world_size; }
std::string ProcessGroup::backends() const { return impl_->backends; }

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

struct GradientReducer::Impl {
  std::shared_ptr<ProcessGroup> group;
  std::vector<torch::Tensor> parameters;
  bool find_unused = false;
  std::unique_ptr<c10d::Reducer> reducer;
};

GradientReducer::GradientReducer(std::shared_ptr<ProcessGroup> group,
                                 std::vector<torch::Tensor> parameters,
                                 const GradientReducerOptions& options)
    : impl_(std::make_unique<Impl>()) {
  TORCH_CHECK(group != nullptr, "GradientReducer: no process group");
  TORCH_CHECK(!parameters.empty(), "GradientReducer: no parameters");
  TORCH_CHECK(options.bucket_bytes() > 0, "GradientReducer: bucket_bytes must be positive, got ",
              options.bucket_bytes());
  const auto count = parameters.size();
  std::unordered_map<size_t, std::string> names;  // for c10d's own messages
  for (size_t index = 0; index < count; ++index) {
    TORCH_CHECK(parameters[index].defined() && parameters[index].requires_grad(),
                "GradientReducer: parameter ", index, " does not require a gradient");
    names[index] = "parameter " + std::to_string(index);
  }
  // DDP's first bucket assignment: the parameters in reverse order, since the backward makes the
  // last layers' gradients first. c10d rebuilds the buckets after the first backward in the
  // order the gradients actually came.
  const std::vector<at::Tensor> reversed(parameters.rbegin(), parameters.rend());
  std::vector<int64_t> reversed_indices(count);
  for (size_t index = 0; index < count; ++index) {
    reversed_indices[index] = static_cast<int64_t>(count - 1 - index);
  }
  const auto bucket_bytes = static_cast<size_t>(options.bucket_bytes());
  const auto first_bucket_bytes =
      std::min(bucket_bytes, static_cast<size_t>(c10d::kDefaultFirstBucketBytes));
  auto buckets = std::get<0>(c10d::compute_bucket_assignment_by_size(
      reversed, {first_bucket_bytes, bucket_bytes}, {}, reversed_indices));
  impl_->reducer = std::make_unique<c10d::Reducer>(
      parameters, std::move(buckets), group->impl_->group, std::vector<bool>(count, false),
      options.bucket_bytes(), options.find_unused_parameters(),
      /*gradient_as_bucket_view=*/false, std::move(names), static_cast<int64_t>(first_bucket_bytes),
      /*skip_all_reduce_unused_params=*/false,
      /*use_python_reducer=*/false, /*bucket_bytes_cap_list=*/std::vector<int64_t>{});
  impl_->group = std::move(group);
  impl_->parameters = std::move(parameters);
  impl_->find_unused = options.find_unused_parameters();
}

GradientReducer::~GradientReducer() = default;

void GradientReducer::backward(const torch::Tensor& loss) {
  const auto& group = *impl_->group->impl_;
  auto& reducer = *impl_->reducer;
  try {
    // Once, before the second backward: buckets in the order the first one made the gradients
    // (rank 0's order, broadcast, so that every rank agrees).
    reducer.rebuild_buckets();
    // Arms the hooks for this backward; the unused-parameter search starts from the loss.
    reducer.prepare_for_backward(impl_->find_unused ? std::vector<at::Tensor>{loss}
                                                    : std::vector<at::Tensor>{});
    loss.backward();
  } catch (const Error&) {
    throw;  // a collective of the backward itself (synchronised BatchNorm) said it already
  } catch (const c10::OutOfMemoryError&) {
    throw;  // the backward's own memory, not a collective's failure
  } catch (const std::exception& error) {
    group.fail("backward with the overlapped gradient all-reduce", error);
  }
  try {
    // A bucket whose parameters did not all get a gradient was never sent: the backward ended
    // without c10d's final wait, and the gradients are not averaged.
    reducer.check_finalized();
  } catch (const std::exception&) {
    const auto unused =
        std::count_if(impl_->parameters.begin(), impl_->parameters.end(),
                      [](const torch::Tensor& parameter) { return !parameter.grad().defined(); });
    // Gradients left from an earlier step hide which ones: then say "some".
    const std::string which =
        unused > 0 ? std::to_string(unused) + " of " + std::to_string(impl_->parameters.size())
                   : "some";
    throw Error("rank " + std::to_string(group.options.rank) + " of " +
                std::to_string(group.options.world_size) + ": gradient all-reduce: " + which +
                " parameters got no gradient in this backward; use "
                "GradientReducerOptions::find_unused_parameters for such models");
  }
}

#else  // no Gloo headers at build time

bool distributed_available() { return false; }
bool nccl_available() { return false; }

struct ProcessGroup::Impl {};

ProcessGroup::ProcessGroup(const DistributedOptions& /*options*/) {
  throw Error("this pconv was built without c10d's Gloo backend (install libgloo-dev and rebuild)");
}
ProcessGroup::~ProcessGroup() = default;
int ProcessGroup::rank() const { return 0; }
int ProcessGroup::world_size() const { return 1; }
std::string ProcessGroup::backends() const { return "none"; }
void ProcessGroup::broadcast(const std::vector<torch::Tensor>& /*tensors*/, int /*root*/) {}
void ProcessGroup::all_reduce_mean(const std::vector<torch::Tensor>& /*tensors*/,
                                   int64_t /*bucket_bytes*/) {}
void ProcessGroup::all_reduce_sum(const std::vector<torch::Tensor>& /*tensors*/) {}
void ProcessGroup::barrier() {}

struct GradientReducer::Impl {};

GradientReducer::GradientReducer(std::shared_ptr<ProcessGroup> /*group*/,
                                 std::vector<torch::Tensor> /*parameters*/,
                                 const GradientReducerOptions& /*options*/) {
  throw Error("this pconv was built without c10d's Gloo backend (install libgloo-dev and rebuild)");
}
GradientReducer::~GradientReducer() = default;
void GradientReducer::backward(const torch::Tensor& /*loss*/) {}

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
                            double momentum, double eps, int64_t group_address) {
    auto& group =
        *reinterpret_cast<ProcessGroup*>(group_address);  // NOLINT(performance-no-int-to-ptr)
    const int64_t channels = input.size(1);
    const int64_t per_channel_count = input.numel() / channels;  // exact: numel = N * C * H * W
    const auto values = input.to(at::kDouble);
    auto stats = at::cat({values.sum({0, 2, 3}), values.square().sum({0, 2, 3}),
                          at::full({1}, static_cast<double>(per_channel_count), values.options())});
    group.all_reduce_sum({stats});
    const auto count = stats[2 * channels].item<double>();
    const auto mean = stats.narrow(0, 0, channels) / count;
    const auto variance =
        (stats.narrow(0, channels, channels) / count - mean.square()).clamp_min(0);
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
    return {grad_input,   weight.defined() ? sum_dy_normalized : at::Tensor(),
            sum_dy,       at::Tensor(),
            at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
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
