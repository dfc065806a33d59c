// One rank of a multi-process check of pconv::train::ProcessGroup over c10d/Gloo on loopback.
//   pconv_distributed_check MODE   (RANK, WORLD_SIZE, MASTER_PORT from the environment)
// collectives: broadcast from rank 0 and a bucketed mean over ranks, checked exactly;
// reducer: GradientReducer's gradients (averaged during the backward) equal those of a plain
// backward followed by all_reduce_mean, over several steps and buckets; with
// find_unused_parameters, a parameter no rank used keeps no gradient and one used on rank 0
// only is averaged with zeros; without it, an unused parameter is a clear error on every rank;
// dead: rank 1 leaves after joining; stuck: rank 1 joins, then does nothing for 8 s. In both,
// rank 0's next collective must fail with a clear error within the (3 s) timeout instead of
// hanging; dead_overlapped and stuck_overlapped: the same with the collective inside
// GradientReducer::backward. Exit 0 when the rank saw what it should. Reports go to stderr:
// execute_process pipes rank 0's stdout into rank 1. Without ranks: compare A B TOLERANCE
// (two model files) and logs A B TOLERANCE (two training logs), below.
#include <pconv/error.h>
#include <pconv/io/model_file.h>
#include <pconv/train/distributed.h>

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

// compare A B TOLERANCE: the largest difference between two model files' parameters and
// buffers, and between their validation metrics; exit 0 when both have the same names and
// shapes and every difference is within the tolerance (NaN is never within it).
int compare(const std::string& first, const std::string& second, double tolerance) {
  pconv::io::ModelMetadata metadata_a;
  pconv::io::ModelMetadata metadata_b;
  auto a = pconv::io::load_model(first, &metadata_a);
  auto b = pconv::io::load_model(second, &metadata_b);
  double largest = 0;
  bool ok = true;
  if (metadata_a.metrics.size() != metadata_b.metrics.size()) {
    std::fprintf(stderr, "metric count differs: %zu vs %zu\n", metadata_a.metrics.size(),
                 metadata_b.metrics.size());
    ok = false;
  }
  for (const auto& [name, value] : metadata_a.metrics) {
    const auto other = metadata_b.metrics.find(name);
    const double difference =
        other == metadata_b.metrics.end() ? NAN : std::abs(value - other->second);
    std::fprintf(stderr, "metric %s: %.9g vs %.9g\n", name.c_str(), value,
                 other == metadata_b.metrics.end() ? NAN : other->second);
    if (!(difference <= tolerance)) {
      std::fprintf(stderr, "metric %s differs by %.3g\n", name.c_str(), difference);
      ok = false;
    }
  }
  using Named = torch::OrderedDict<std::string, at::Tensor>;
  const auto check = [&](const Named& items_a, const Named& items_b, const char* kind) {
    if (items_a.size() != items_b.size()) {
      std::fprintf(stderr, "%s count differs: %zu vs %zu\n", kind, items_a.size(), items_b.size());
      ok = false;
      return;
    }
    for (const auto& item : items_a) {
      const at::Tensor* other = items_b.find(item.key());
      if (other == nullptr || !other->sizes().equals(item.value().sizes())) {
        std::fprintf(stderr, "%s %s missing or of another shape in %s\n", kind, item.key().c_str(),
                     second.c_str());
        ok = false;
        continue;
      }
      const double difference =
          (item.value().to(at::kDouble) - other->to(at::kDouble)).abs().max().item<double>();
      if (!(difference <= tolerance)) {  // NaN included
        std::fprintf(stderr, "%s %s differs by %.3g\n", kind, item.key().c_str(), difference);
        ok = false;
      }
      if (!std::isnan(difference)) largest = std::max(largest, difference);
    }
  };
  check(a->named_parameters(), b->named_parameters(), "parameter");
  check(a->named_buffers(), b->named_buffers(), "buffer");
  std::fprintf(stderr, "largest parameter/buffer difference %.3g (tolerance %.3g)\n", largest,
               tolerance);
  return ok ? 0 : 1;
}

// logs A B TOLERANCE: two training logs (log.csv) have the same header and steps, and every
// loss term of every row within the tolerance (the last column, images/s, left out). Exit 0
// when they do.
int compare_logs(const std::string& first, const std::string& second, double tolerance) {
  const auto rows = [](const std::string& path) {
    std::vector<std::vector<std::string>> table;
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) {
      std::vector<std::string> fields;
      std::stringstream cells(line);
      for (std::string cell; std::getline(cells, cell, ',');) fields.push_back(cell);
      if (!line.empty() && line.back() == ',') fields.emplace_back();
      table.push_back(fields);
    }
    return table;
  };
  const auto a = rows(first);
  const auto b = rows(second);
  if (a.size() < 2 || a.size() != b.size() || a.front() != b.front()) {
    std::fprintf(stderr, "logs differ in their header or row count (%zu vs %zu lines)\n", a.size(),
                 b.size());
    return 1;
  }
  double largest = 0;
  bool ok = true;
  for (size_t row = 1; row < a.size(); ++row) {
    if (a[row].size() != a.front().size() || b[row].size() != a.front().size() ||
        a[row].front() != b[row].front()) {
      std::fprintf(stderr, "line %zu: another step or field count\n", row + 1);
      ok = false;
      continue;
    }
    for (size_t column = 1; column + 1 < a.front().size(); ++column) {
      if (a[row][column].empty() != b[row][column].empty()) {
        std::fprintf(stderr, "line %zu: %s is in one log only\n", row + 1,
                     a.front()[column].c_str());
        ok = false;
        continue;
      }
      if (a[row][column].empty()) continue;  // a term neither run has
      const double difference =
          std::abs(std::atof(a[row][column].c_str()) - std::atof(b[row][column].c_str()));
      if (!(difference <= tolerance)) {
        std::fprintf(stderr, "step %s: %s %s vs %s\n", a[row].front().c_str(),
                     a.front()[column].c_str(), a[row][column].c_str(), b[row][column].c_str());
        ok = false;
      }
      if (!std::isnan(difference)) largest = std::max(largest, difference);
    }
  }
  std::fprintf(stderr, "%zu rows; largest loss difference %.3g (tolerance %.3g)\n", a.size() - 1,
               largest, tolerance);
  return ok ? 0 : 1;
}

// A small network's parameters (registration order: first layer first) and its loss on a
// batch that depends on the rank and the step, so that the ranks' gradients differ.
struct TinyModel {
  std::vector<at::Tensor> parameters;

  TinyModel() {
    at::manual_seed(7);  // the same weights on every rank
    for (const auto& shape : std::vector<std::vector<int64_t>>{
             {8, 3, 3, 3}, {8}, {16, 8, 3, 3}, {16}, {32, 16 * 4 * 4}, {32}, {2, 32}, {2}}) {
      parameters.push_back(at::randn(shape).mul_(0.2).requires_grad_());
    }
  }

  at::Tensor loss(int rank, int step) const {
    at::manual_seed(1000 * step + rank);
    auto x = at::conv2d(at::randn({3, 3, 8, 8}), parameters[0], parameters[1], 1, 1).relu();
    x = at::conv2d(x, parameters[2], parameters[3], 2, 1).relu().flatten(1);
    x = at::linear(x, parameters[4], parameters[5]).tanh();
    return at::linear(x, parameters[6], parameters[7]).square().mean();
  }

  void zero_grad() const {
    for (const auto& parameter : parameters) parameter.mutable_grad().reset();
  }
};

// GradientReducer against a plain backward and ProcessGroup::all_reduce_mean.
bool check_reducer(const std::shared_ptr<pconv::train::ProcessGroup>& group) {
  const int rank = group->rank();
  bool ok = true;
  const auto report = [&](const char* what, bool good) {
    std::fprintf(stderr, "rank %d: %s %s\n", rank, what, good ? "ok" : "WRONG");
    ok = ok && good;
  };
  {
    TinyModel model;
    // 300 bytes: several buckets (the first of at most 300 bytes), so that some are sent while
    // the backward still runs, and the rebuild after the first step has something to reorder.
    pconv::train::GradientReducer reducer(group, model.parameters,
                                          pconv::train::GradientReducerOptions().bucket_bytes(300));
    bool same = true;
    for (int step = 0; step < 3; ++step) {
      model.zero_grad();
      model.loss(rank, step).backward();
      std::vector<at::Tensor> expected;
      for (const auto& parameter : model.parameters) expected.push_back(parameter.grad().clone());
      group->all_reduce_mean(expected);
      model.zero_grad();
      reducer.backward(model.loss(rank, step));
      for (size_t index = 0; index < expected.size(); ++index) {
        const auto& grad = model.parameters[index].grad();
        same = same && grad.defined() && at::allclose(grad, expected[index], 1e-6, 1e-7);
      }
    }
    report("overlapped mean equals all_reduce_mean over 3 steps:", same);
  }
  {
    // parameters[0] is used by no rank, parameters[1] by rank 0 only.
    std::vector<at::Tensor> parameters{at::ones({3}).requires_grad_(),
                                       at::full({3}, 2.0).requires_grad_(),
                                       at::full({3}, 3.0).requires_grad_()};
    pconv::train::GradientReducer reducer(
        group, parameters, pconv::train::GradientReducerOptions().find_unused_parameters(true));
    const double weight = rank + 1.0;
    auto loss = (parameters[2] * weight).sum();
    if (rank == 0) loss = loss + parameters[1].sum();
    reducer.backward(loss);
    const double world = group->world_size();
    const bool unused = !parameters[0].grad().defined() &&
                        at::allclose(parameters[1].grad(), at::full({3}, 1.0 / world)) &&
                        at::allclose(parameters[2].grad(), at::full({3}, (world + 1) / 2));
    report("find_unused_parameters: unused kept undefined, partly used averaged with zeros:",
           unused);
  }
  {
    std::vector<at::Tensor> parameters{at::ones({3}).requires_grad_(),
                                       at::ones({3}).requires_grad_()};
    pconv::train::GradientReducer reducer(group, parameters);
    std::string error;
    try {
      reducer.backward(parameters[1].sum());
    } catch (const pconv::Error& caught) {
      error = caught.what();
    }
    std::fprintf(stderr, "rank %d: unused parameter: %s\n", rank, error.c_str());
    report("an unused parameter without find_unused_parameters is a clear error:",
           error.find("1 of 2 parameters got no gradient") != std::string::npos &&
               error.find('\n') == std::string::npos);
  }
  group->barrier();
  return ok;
}

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "compare" && argc == 5) return compare(argv[2], argv[3], std::atof(argv[4]));
  if (mode == "logs" && argc == 5) return compare_logs(argv[2], argv[3], std::atof(argv[4]));
  try {
    auto options = pconv::train::distributed_from_environment();
    if (!options) {
      std::fprintf(stderr, "WORLD_SIZE is not set\n");
      return 2;
    }
    const bool overlapped = mode == "dead_overlapped" || mode == "stuck_overlapped";
    const bool dead = mode == "dead" || mode == "dead_overlapped";
    const bool failure_mode = dead || overlapped || mode == "stuck";
    if (failure_mode) {
      // The ranks start together first, in a group of their own (100 ports up) with a long
      // timeout: the short one below is for the failures, not for two processes loading
      // LibTorch on a busy machine to reach the rendezvous within 3 s of each other.
      auto start = *options;
      start.master_port += 100;
      start.timeout = std::chrono::seconds(60);
      pconv::train::ProcessGroup together(start);
      together.barrier();
    }
    options->timeout = std::chrono::seconds(failure_mode ? 3 : 60);
    auto shared_group = std::make_shared<pconv::train::ProcessGroup>(*options);
    auto& group = *shared_group;
    const int rank = group.rank();
    const int world = group.world_size();
    if (mode == "reducer") return check_reducer(shared_group) ? 0 : 1;
    if (mode == "collectives") {
      // Parameters differ per rank until rank 0's are broadcast.
      std::vector<at::Tensor> parameters{at::full({3, 2}, 10.0 + rank), at::full({5}, -1.0 * rank)};
      group.broadcast(parameters);
      const bool same = at::equal(parameters[0], at::full({3, 2}, 10.0)) &&
                        at::equal(parameters[1], at::zeros({5}));
      // Gradients: rank r holds (r + 1) * base; the mean is base * (world + 1) / 2. Small buckets
      // force several collectives; an undefined tensor is skipped.
      const auto base = at::arange(0, 40, at::kFloat);
      std::vector<at::Tensor> grads{(rank + 1) * base.narrow(0, 0, 10).clone(), at::Tensor(),
                                    (rank + 1) * base.narrow(0, 10, 30).reshape({5, 6}).clone()};
      group.all_reduce_mean(grads, /*bucket_bytes=*/48);
      const double factor = (world + 1) / 2.0;
      const bool mean = at::allclose(grads[0], base.narrow(0, 0, 10) * factor) &&
                        at::allclose(grads[2], base.narrow(0, 10, 30).reshape({5, 6}) * factor);
      group.barrier();
      std::fprintf(stderr, "rank %d of %d: broadcast %s, mean %s\n", rank, world,
                   same ? "ok" : "WRONG", mean ? "ok" : "WRONG");
      return same && mean ? 0 : 1;
    }
    if (failure_mode) {
      if (rank != 0 && dead) {
        std::fprintf(stderr, "rank %d leaves\n", rank);
        std::fflush(stderr);
        std::_Exit(0);  // gone without a word, as a crashed rank is
      }
      if (rank != 0) {
        std::fprintf(stderr, "rank %d stops taking part\n", rank);
        // Alive, but never joins in, for well past rank 0's 3 s timeout: were the timeout not
        // kept, rank 0 would fail only when this rank's connection closes, at 12 s.
        std::this_thread::sleep_for(std::chrono::seconds(12));
        std::_Exit(0);
      }
      TinyModel model;
      std::unique_ptr<pconv::train::GradientReducer> reducer;
      if (overlapped) {
        reducer = std::make_unique<pconv::train::GradientReducer>(shared_group, model.parameters);
      }
      const auto start = std::chrono::steady_clock::now();
      try {
        if (overlapped) {
          reducer->backward(model.loss(rank, 0));
        } else {
          std::vector<at::Tensor> grads{at::ones({4})};
          group.all_reduce_mean(grads);
        }
      } catch (const pconv::Error& error) {
        const double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        const std::string message = error.what();
        std::fprintf(stderr, "rank 0: clear error after %.1f s: %s\n", seconds, message.c_str());
        const bool clear =
            message.rfind("rank 0 of 2: ", 0) == 0 && message.find('\n') == std::string::npos;
        // A rank that stops taking part is caught by the 3 s timeout, not before and not by its
        // exit; one that is gone may be noticed at once.
        const bool in_time =
            mode.rfind("stuck", 0) == 0 ? seconds >= 2.5 && seconds < 9 : seconds < 9;
        return in_time && clear ? 0 : 1;
      }
      std::fprintf(stderr, "rank 0: the collective succeeded with a rank gone\n");
      return 1;
    }
    std::fprintf(stderr,
                 "usage: pconv_distributed_check "
                 "collectives|reducer|dead|stuck|dead_overlapped|stuck_overlapped\n");
    return 2;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "rank error: %s\n", error.what());
    return 1;
  }
}
