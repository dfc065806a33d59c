// What every pconv benchmark program does before Google Benchmark runs: take --threads and
// --device (and the program's own flags) off the command line, keep freed memory for reuse,
// and set LibTorch's thread count.
#pragma once

#include <ATen/Parallel.h>
#include <c10/core/Device.h>
#include <torch/csrc/autograd/profiler_kineto.h>
#include <torch/cuda.h>

#include <benchmark/benchmark.h>

#include <malloc.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace pconv::bench {

struct BenchSetup {
  int threads = 2;
  c10::Device device = c10::Device(c10::kCPU);
  std::map<std::string, std::string> extra;  // values of the program's own flags
  std::vector<char*> remaining;              // for benchmark::Initialize
};

/// Parses --threads N, --device D and each flag in `extra_flags` (all taking a value); the
/// rest stays for Google Benchmark. Returns false (after a message) if the device is missing.
inline bool setup(int argc, char** argv, const std::vector<std::string>& extra_flags,
                  BenchSetup& out) {
  for (int i = 0; i < argc; ++i) {
    const std::string flag = argv[i];
    const bool has_value = i + 1 < argc;
    if (flag == "--threads" && has_value) {
      out.threads = std::atoi(argv[++i]);
    } else if (flag == "--device" && has_value) {
      out.device = c10::Device(argv[++i]);
    } else if (has_value &&
               std::find(extra_flags.begin(), extra_flags.end(), flag) != extra_flags.end()) {
      out.extra[flag] = argv[++i];
    } else {
      out.remaining.push_back(argv[i]);
    }
  }
  // Keep freed memory for reuse, as a long-running process with a caching allocator does.
  // glibc otherwise hands every large tensor back to the kernel when it is freed, and each
  // iteration then pays page faults for its outputs: noise that swamps the small operations.
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max());
  at::set_num_threads(out.threads);
  if (out.device.is_cuda() && !torch::cuda::is_available()) {
    std::fprintf(stderr, "%s: --device %s asked for, but no CUDA GPU is available\n", argv[0],
                 out.device.str().c_str());
    return false;
  }
  std::printf("device %s, %d CPU threads\n", out.device.str().c_str(), at::get_num_threads());
  return true;
}

/// How many events LibTorch's profiler records on `device` while `step` runs once: on CUDA the
/// kernels, memsets and copies, that is the launches; on the CPU the operator calls, nested
/// ones included. `step` must synchronise its GPU work.
template <typename Step>
int64_t profiled_events(const c10::Device& device, Step&& step) {
  namespace impl = torch::profiler::impl;
  namespace profiler = torch::autograd::profiler;
  const impl::ProfilerConfig config(impl::ProfilerState::KINETO);
  std::set<impl::ActivityType> activities{impl::ActivityType::CPU};
  if (device.is_cuda()) activities.insert(impl::ActivityType::CUDA);
  profiler::prepareProfiler(config, activities);
  profiler::enableProfiler(config, activities);
  step();
  const auto result = profiler::disableProfiler();
  return std::count_if(
      result->events().begin(), result->events().end(),
      [&](const profiler::KinetoEvent& event) { return event.deviceType() == device.type(); });
}

/// Registers `body` as benchmark `name`, timed in wall-clock milliseconds like every pconv
/// benchmark (GPU work is synchronised inside the bodies).
template <typename Body>
void register_timed(const std::string& name, Body body) {
  benchmark::RegisterBenchmark(name.c_str(), std::move(body))
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
}

/// Hands the flags setup() left to Google Benchmark and runs what was registered, through
/// `reporter` if given. Returns the exit code: 2 for a flag nobody knows.
inline int run_benchmarks(BenchSetup& setup, benchmark::BenchmarkReporter* reporter = nullptr) {
  int argc = static_cast<int>(setup.remaining.size());
  benchmark::Initialize(&argc, setup.remaining.data());
  if (benchmark::ReportUnrecognizedArguments(argc, setup.remaining.data())) return 2;
  if (reporter != nullptr) {
    benchmark::RunSpecifiedBenchmarks(reporter);
  } else {
    benchmark::RunSpecifiedBenchmarks();
  }
  benchmark::Shutdown();
  return 0;
}

}  // namespace pconv::bench
