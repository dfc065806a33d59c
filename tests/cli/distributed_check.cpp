// One rank of a multi-process check of pconv::train::ProcessGroup over c10d/Gloo on loopback.
//   pconv_distributed_check collectives|dead|stuck   (RANK, WORLD_SIZE, MASTER_PORT from the environment)
// collectives: broadcast from rank 0 and a bucketed mean over ranks, checked exactly;
// dead: rank 1 leaves after joining; stuck: rank 1 joins, then does nothing for 8 s. In both,
// rank 0's next collective must fail with a clear error within the (3 s) timeout instead of
// hanging. Exit 0 when the rank saw what it should. Reports go to stderr: execute_process
// pipes rank 0's stdout into rank 1.
#include <pconv/error.h>
#include <pconv/io/model_file.h>
#include <pconv/train/distributed.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <string>
#include <thread>

// compare A B TOLERANCE: the largest difference between two model files' parameters and
// buffers; exit 0 when within the tolerance.
int compare(const std::string& first, const std::string& second, double tolerance) {
  auto a = pconv::io::load_model(first);
  auto b = pconv::io::load_model(second);
  const auto pa = a->named_parameters();
  const auto pb = b->named_parameters();
  double largest = 0;
  for (const auto& item : pa) {
    largest = std::max(largest, (item.value() - pb[item.key()]).abs().max().item<double>());
  }
  const auto ba = a->named_buffers();
  const auto bb = b->named_buffers();
  for (const auto& item : ba) {
    largest = std::max(largest, (item.value().to(at::kDouble) - bb[item.key()].to(at::kDouble))
                                    .abs()
                                    .max()
                                    .item<double>());
  }
  std::fprintf(stderr, "largest parameter/buffer difference %.3g (tolerance %.3g)\n", largest,
               tolerance);
  return largest <= tolerance ? 0 : 1;
}

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "compare" && argc == 5) return compare(argv[2], argv[3], std::atof(argv[4]));
  try {
    auto options = pconv::train::distributed_from_environment();
    if (!options) {
      std::fprintf(stderr, "WORLD_SIZE is not set\n");
      return 2;
    }
    const bool failure_mode = mode == "dead" || mode == "stuck";
    options->timeout = std::chrono::seconds(failure_mode ? 3 : 60);
    pconv::train::ProcessGroup group(*options);
    const int rank = group.rank();
    const int world = group.world_size();
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
      std::fprintf(stderr, "rank %d of %d: broadcast %s, mean %s\n", rank, world, same ? "ok" : "WRONG",
                  mean ? "ok" : "WRONG");
      return same && mean ? 0 : 1;
    }
    if (failure_mode) {
      if (rank != 0 && mode == "dead") {
        std::fprintf(stderr, "rank %d leaves\n", rank);
        std::fflush(stderr);
        std::_Exit(0);  // gone without a word, as a crashed rank is
      }
      if (rank != 0) {
        std::fprintf(stderr, "rank %d stops taking part\n", rank);
        std::this_thread::sleep_for(std::chrono::seconds(8));  // alive, but never joins in
        std::_Exit(0);
      }
      const auto start = std::chrono::steady_clock::now();
      try {
        std::vector<at::Tensor> grads{at::ones({4})};
        group.all_reduce_mean(grads);
      } catch (const pconv::Error& error) {
        const double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        std::fprintf(stderr, "rank 0: clear error after %.1f s: %s\n", seconds, error.what());
        return seconds < 30 ? 0 : 1;
      }
      std::fprintf(stderr, "rank 0: the collective succeeded with a rank gone\n");
      return 1;
    }
    std::fprintf(stderr, "usage: pconv_distributed_check collectives|dead|stuck\n");
    return 2;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "rank error: %s\n", error.what());
    return 1;
  }
}
