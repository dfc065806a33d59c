// Tests of the trainer on a few generated photos: the loss goes down, the run folder holds
// what it should, and a run stopped and resumed ends exactly where an uninterrupted one does.
#include <pconv/error.h>
#include <pconv/io/image_file.h>
#include <pconv/io/model_file.h>
#include <pconv/train/trainer.h>

#include <ATen/ATen.h>
#include <torch/cuda.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "damaged_archive.h"
#include "temp_dir.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

namespace T = pconv::train;
namespace fs = std::filesystem;

// The photos and the sample pictures: png files, or tensor images in a build without OpenCV
// (the GPU machine's), where the trainer writes its samples as .pt.
#ifdef PCONV_WITH_OPENCV
const std::string kImageExtension = ".png";
#else
const std::string kImageExtension = ".pt";
#endif

class TrainerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::manual_seed(3);
    fs::create_directories(dir_ / "photos");
    // Smooth random colour fields: something a network can learn to fill.
    for (int i = 0; i < 6; ++i) {
      const auto small = at::rand({3, 4, 4});
      const auto image = at::upsample_bilinear2d(small.unsqueeze(0), {48, 56}, false).squeeze(0);
      const auto path = dir_ / "photos" / ("p" + std::to_string(i) + kImageExtension);
      pconv::io::write_image(path, image);
      files_.push_back(path);
    }
  }

  T::TrainerOptions tiny(int64_t steps) const {
    return T::TrainerOptions()
        .size(32)
        .batch_size(2)
        .steps(steps)
        .learning_rate(2e-3)
        .model(pconv::nn::PConvUNetOptions().depth(3).base_width(8).max_width(16))
        .workers(1)
        .seed(9)
        .sample_every(0)
        .validate_every(0)
        .checkpoint_every(0);
  }

  // The parameters and buffers of two trainers' models are equal, bit for bit.
  static void expect_same_state(T::Trainer& actual, T::Trainer& expected) {
    const auto a = parameters(actual);
    const auto b = parameters(expected);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(at::equal(a[i], b[i])) << "tensor " << i;
  }

  static std::vector<at::Tensor> parameters(T::Trainer& trainer) {
    std::vector<at::Tensor> result;
    for (const auto& p : trainer.model()->parameters()) result.push_back(p.detach().clone());
    for (const auto& b : trainer.model()->buffers()) result.push_back(b.detach().clone());
    return result;
  }

  // Collects each step's total loss through `callbacks`.
  static void record_totals(T::TrainerCallbacks& callbacks, std::vector<double>& totals) {
    callbacks.on_step = [&totals](const T::StepReport& report) {
      for (const auto& [name, value] : report.losses) {
        if (name == "total") totals.push_back(value);
      }
    };
  }

  // The mean total loss of the first and of the last 8 steps.
  static std::pair<double, double> first_and_last_eight(const std::vector<double>& totals) {
    double first = 0;
    double last = 0;
    for (size_t i = 0; i < 8; ++i) {
      first += totals[i];
      last += totals[totals.size() - 1 - i];
    }
    return {first / 8, last / 8};
  }

  pconv::testing::TempDir temp_;
  const fs::path& dir_ = temp_.path();
  std::vector<fs::path> files_;
};

TEST_F(TrainerTest, ShortRunReducesTheLossAndWritesTheRunFolder) {
  T::Trainer trainer(tiny(40).validate_every(2), files_, files_, dir_ / "run", false,
                     "pconv train (test)");
  std::vector<double> totals;
  std::vector<T::ValidationReport> validations;
  T::TrainerCallbacks callbacks;
  record_totals(callbacks, totals);
  callbacks.on_validation = [&](const T::ValidationReport& report) {
    validations.push_back(report);
  };
  const auto result = trainer.run(callbacks);
  ASSERT_EQ(totals.size(), 40U);
  const auto [first, last] = first_and_last_eight(totals);
  EXPECT_LT(last, 0.8 * first) << "first 8 steps " << first << ", last 8 steps " << last;
  EXPECT_EQ(result.step, 40);
  ASSERT_EQ(validations.size(), 20U);
  // Validation improves: measured 12.1 dB / SSIM 0.37 at step 2, 19.9 dB / 0.69 at step 40.
  EXPECT_EQ(validations.front().step, 2);
  EXPECT_EQ(validations.back().step, 40);
  EXPECT_GT(validations.back().psnr, validations.front().psnr + 5.0);
  EXPECT_GT(validations.back().ssim, validations.front().ssim + 0.2);
  for (const std::string& name :
       {std::string("checkpoint.pt"), std::string("model.pt"), std::string("log.csv"),
        std::string("validation.csv"), std::string("config.txt"),
        "samples/step_0000040" + kImageExtension}) {
    EXPECT_TRUE(fs::exists(dir_ / "run" / name)) << name;
  }
  pconv::io::ModelMetadata metadata;
  const auto model = pconv::io::load_model(dir_ / "run" / "model.pt", &metadata);
  EXPECT_EQ(metadata.steps, 40);
  EXPECT_EQ(metadata.command, "pconv train (test)");
  EXPECT_NEAR(metadata.metrics.at("val_psnr"), validations.back().psnr, 1e-9);
  // 41 lines: the header and one per step.
  std::ifstream log(dir_ / "run" / "log.csv");
  int lines = 0;
  for (std::string line; std::getline(log, line);) ++lines;
  EXPECT_EQ(lines, 41);
}

// A stop asked for during a validation ends it at its next batch (Ctrl-C need not wait for a
// long validation): the step's checkpoint is saved, its validation left out.
TEST_F(TrainerTest, AStopDuringValidationEndsItEarly) {
  T::Trainer trainer(tiny(6).validate_every(2), files_, files_, dir_ / "run", false);
  T::TrainerCallbacks callbacks;
  int validations = 0;
  callbacks.on_validation = [&](const T::ValidationReport&) { ++validations; };
  // The first question at step 2 is the validation's (the next step's comes after it).
  callbacks.should_stop = [&] { return trainer.step() == 2; };
  const auto result = trainer.run(callbacks);
  EXPECT_TRUE(result.stopped_early);
  EXPECT_EQ(result.step, 2);
  EXPECT_EQ(validations, 0);
  EXPECT_TRUE(result.validations.empty());
  EXPECT_TRUE(fs::exists(dir_ / "run" / "checkpoint.pt"));
}

// A stop during the last step's validation (Ctrl-C in the last seconds of a run) leaves the
// run unfinished, not finished without its scores: no model file, the checkpoint at the last
// step, no validation row. The resume validates and writes the model a straight run writes; so
// does a resume of a finished run, which keeps one validation row for the last step.
TEST_F(TrainerTest, AStopDuringTheLastValidationLeavesTheModelToTheResume) {
  double psnr = 0;
  {
    T::Trainer straight(tiny(2), files_, files_, dir_ / "straight", false);
    const auto straight_result = straight.run();
    ASSERT_EQ(straight_result.validations.size(), 1U);
    psnr = straight_result.validations.front().psnr;
  }
  const auto data_rows = [](const fs::path& csv) {
    std::ifstream in(csv);
    std::vector<std::string> rows;
    for (std::string line; std::getline(in, line);) rows.push_back(line);
    if (!rows.empty()) rows.erase(rows.begin());  // the header
    return rows;
  };
  {
    T::Trainer stopped(tiny(2), files_, files_, dir_ / "run", false);
    T::TrainerCallbacks callbacks;
    std::vector<std::string> messages;
    callbacks.on_message = [&](const std::string& text) { messages.push_back(text); };
    // Asked once, at the validation's first question (a caller need not keep saying it).
    bool asked = false;
    callbacks.should_stop = [&] {
      if (asked || stopped.step() != 2) return false;
      asked = true;
      return true;
    };
    const auto result = stopped.run(callbacks);
    EXPECT_TRUE(result.stopped_early);
    EXPECT_EQ(result.step, 2);
    EXPECT_TRUE(result.validations.empty());
    EXPECT_EQ(std::count(messages.begin(), messages.end(), "step 2: validation left out (stopped)"),
              1);
  }
  EXPECT_FALSE(fs::exists(dir_ / "run" / "model.pt"));
  EXPECT_TRUE(fs::exists(dir_ / "run" / "checkpoint.pt"));
  EXPECT_TRUE(data_rows(dir_ / "run" / "validation.csv").empty());

  for (const auto& run : {dir_ / "run", dir_ / "straight"}) {
    SCOPED_TRACE(run.string());
    T::Trainer resumed(tiny(2), files_, files_, run, true);
    EXPECT_EQ(resumed.step(), 2);
    const auto result = resumed.run();
    EXPECT_FALSE(result.stopped_early);
    ASSERT_EQ(result.validations.size(), 1U);
    EXPECT_EQ(result.validations.front().step, 2);
    EXPECT_NEAR(result.validations.front().psnr, psnr, 1e-9);
    pconv::io::ModelMetadata metadata;
    pconv::io::load_model(run / "model.pt", &metadata);
    EXPECT_NEAR(metadata.metrics.at("val_psnr"), psnr, 1e-9);
    const auto rows = data_rows(run / "validation.csv");
    ASSERT_EQ(rows.size(), 1U);
    EXPECT_EQ(rows.front().substr(0, 2), "2,");
  }
}

// The data workers' warnings (a photo that cannot be read) reach on_message on the thread
// that runs the trainer, never on a worker's.
TEST_F(TrainerTest, CallbacksComeOnTheCallersThread) {
  std::ofstream(dir_ / "photos" / ("broken" + kImageExtension)) << "not an image";
  auto files = files_;
  files.push_back(dir_ / "photos" / ("broken" + kImageExtension));
  T::Trainer trainer(tiny(8).workers(3), files, {}, dir_ / "run", false);
  const auto caller = std::this_thread::get_id();
  std::mutex mutex;
  std::vector<std::string> messages;
  std::vector<std::thread::id> threads;
  T::TrainerCallbacks callbacks;
  callbacks.on_message = [&](const std::string& text) {
    const std::lock_guard<std::mutex> lock(mutex);
    messages.push_back(text);
    threads.push_back(std::this_thread::get_id());
  };
  trainer.run(callbacks);
  const std::lock_guard<std::mutex> lock(mutex);
  EXPECT_THAT(messages, ::testing::Contains(::testing::HasSubstr("broken")));
  for (size_t i = 0; i < threads.size(); ++i) EXPECT_EQ(threads[i], caller) << messages[i];
}

// A config.txt of a run from before an option existed reads as that run trained: no thin
// strokes, masks white = hole (not today's defaults, which a resume would switch to mid-run).
TEST_F(TrainerTest, OlderRunsSettingsReadAsTheyTrained) {
  fs::create_directories(dir_ / "old");
  std::ofstream(dir_ / "old" / "config.txt") << "pconv 0.1.0 training run\nsize 32\nseed 9\n";
  const auto settings = T::recorded_settings(dir_ / "old");
  EXPECT_EQ(settings.at("size"), "32");
  EXPECT_EQ(settings.at("thin_strokes"), "0");
  EXPECT_EQ(settings.at("masks_white_valid"), "0");
  EXPECT_EQ(settings.at("val_spread"), "0");
  std::ofstream(dir_ / "old" / "config.txt", std::ios::app) << "thin_strokes 0.25\n";
  EXPECT_EQ(T::recorded_settings(dir_ / "old").at("thin_strokes"), "0.25");
}

// Without a learning rate the stage's own: the paper's 2e-4, or 5e-5 for fine-tuning (it was
// 2e-4 for both: a library fine-tuning ran at four times the paper's rate).
TEST_F(TrainerTest, TheDefaultLearningRateIsTheStages) {
  for (const bool finetune : {false, true}) {
    T::Trainer trainer(tiny(1).learning_rate(0).finetune(finetune), files_, {},
                       dir_ / (finetune ? "fine" : "first"), false);
    double rate = 0;
    T::TrainerCallbacks callbacks;
    callbacks.on_step = [&](const T::StepReport& report) { rate = report.learning_rate; };
    trainer.run(callbacks);
    EXPECT_DOUBLE_EQ(rate, finetune ? 5e-5 : 2e-4);
  }
  EXPECT_THROW(T::Trainer(tiny(1).learning_rate(-1), files_, {}, dir_ / "negative", false),
               pconv::ArgumentError);
}

// --val-count takes photos spread over the sorted list: with 6 and a count of 2, the second and
// the fifth (the middle of each half), here unreadable, so named, and others stand in. Until
// session xii the first two; a resumed run from before (validation_spread false) keeps them.
TEST_F(TrainerTest, ValidationCountSpreadsThePhotos) {
  fs::create_directories(dir_ / "val");
  std::vector<fs::path> validation;
  for (int i = 0; i < 6; ++i) {
    const auto path = dir_ / "val" / ("v" + std::to_string(i) + kImageExtension);
    if (i == 1 || i == 4) {
      std::ofstream(path) << "not an image";
    } else {
      fs::copy_file(files_[static_cast<size_t>(i)], path);
    }
    validation.push_back(path);
  }
  for (const bool spread : {true, false}) {
    SCOPED_TRACE(spread ? "spread" : "first ones");
    std::vector<std::string> messages;
    T::TrainerCallbacks callbacks;
    callbacks.on_message = [&](const std::string& text) { messages.push_back(text); };
    const auto run = dir_ / (spread ? "spread" : "first");
    T::Trainer trainer(tiny(1).validation_count(2).validation_spread(spread), files_, validation,
                       run, false);
    trainer.run(callbacks);
    std::string all;
    for (const auto& text : messages) all += text + "\n";
    EXPECT_NE(all.find("v1" + kImageExtension), std::string::npos) << all;
    EXPECT_EQ(all.find("v4" + kImageExtension) != std::string::npos, spread) << all;
    EXPECT_NE(all.find("validating on 2 images"), std::string::npos) << all;
  }
}

// Also with other numbers of data workers on each side of the stop: what a step trains on does
// not depend on them.
TEST_F(TrainerTest, StoppedAndResumedRunEqualsAnUninterruptedOne) {
  T::Trainer straight(tiny(6), files_, {}, dir_ / "straight", false);
  straight.run();

  {
    T::Trainer interrupted(tiny(6).workers(2), files_, {}, dir_ / "resumed", false);
    T::TrainerCallbacks callbacks;
    callbacks.should_stop = [&] { return interrupted.step() == 3; };  // as Ctrl-C would
    const auto result = interrupted.run(callbacks);
    EXPECT_TRUE(result.stopped_early);
    EXPECT_EQ(result.step, 3);
    EXPECT_FALSE(fs::exists(dir_ / "resumed" / "model.pt"));
  }
  // A second run without --resume must not overwrite the stopped one.
  EXPECT_THAT([&] { T::Trainer(tiny(6), files_, {}, dir_ / "resumed", false); },
              ::testing::ThrowsMessage<pconv::InputError>(::testing::HasSubstr("--resume")));
  // Resuming with other options is refused.
  EXPECT_THAT([&] { T::Trainer(tiny(8).seed(10), files_, {}, dir_ / "resumed", true); },
              ::testing::ThrowsMessage<pconv::InputError>(::testing::HasSubstr("another run")));
  // So is resuming with fewer steps than the run has done.
  EXPECT_THAT([&] { T::Trainer(tiny(2), files_, {}, dir_ / "resumed", true); },
              ::testing::ThrowsMessage<pconv::InputError>(
                  ::testing::HasSubstr("at step 3 already, past --steps 2")));
  T::Trainer resumed(tiny(6).workers(3), files_, {}, dir_ / "resumed", true);
  EXPECT_EQ(resumed.step(), 3);
  EXPECT_EQ(resumed.examples(), 3 * 2);  // where the data stream goes on (batch 2)
  resumed.run();
  EXPECT_EQ(resumed.examples(), 6 * 2);
  expect_same_state(resumed, straight);
}

// A failure mid-run (here a callback that throws, as a lost rank or an unreadable data folder
// would) keeps the steps done: a checkpoint at the last whole step, from which a resume ends
// where an uninterrupted run does.
TEST_F(TrainerTest, AFailureMidRunKeepsTheStepsDone) {
  T::Trainer straight(tiny(6), files_, {}, dir_ / "straight", false);
  straight.run();
  {
    T::Trainer failing(tiny(6), files_, {}, dir_ / "failed", false);
    T::TrainerCallbacks callbacks;
    callbacks.on_step = [](const T::StepReport& report) {
      if (report.step == 3) throw std::runtime_error("lost");
    };
    EXPECT_THROW(failing.run(callbacks), std::runtime_error);
  }
  ASSERT_TRUE(fs::exists(dir_ / "failed" / "checkpoint.pt"));
  T::Trainer resumed(tiny(6), files_, {}, dir_ / "failed", true);
  EXPECT_EQ(resumed.step(), 3);
  resumed.run();
  expect_same_state(resumed, straight);
}

// float16 with loss scaling, on the CPU: a step whose scaled gradients overflow (here a hole
// weight so large that they pass float16's 65504) is skipped, the weights stay, the scale
// halves and the run's summary says so.
TEST_F(TrainerTest, OverflowingFloat16StepsAreSkipped) {
  auto options = tiny(2).amp("fp16");
  options.loss_weights().hole(1e30);
  T::Trainer trainer(options, files_, {}, dir_ / "run", false);
  std::vector<at::Tensor> before;
  for (const auto& p : trainer.model()->parameters()) before.push_back(p.detach().clone());
  std::vector<std::string> messages;
  T::TrainerCallbacks callbacks;
  callbacks.on_message = [&](const std::string& text) { messages.push_back(text); };
  const auto result = trainer.run(callbacks);
  EXPECT_EQ(result.step, 2);  // the steps count, trained or skipped
  const auto after = trainer.model()->parameters();
  for (size_t i = 0; i < before.size(); ++i) {
    EXPECT_TRUE(at::equal(after[i].detach(), before[i])) << "parameter " << i;
  }
  EXPECT_THAT(messages, ::testing::Contains(::testing::HasSubstr(
                            "2 float16 step(s) skipped for overflowing gradients (loss scale "
                            "now 16384")));
}

// The same when the failure comes in the middle of a step's forward pass (here from a BatchNorm
// layer, as a lost rank's synchronised statistics would), after other BatchNorm layers have
// moved their running statistics: those are put back to the last whole step's.
TEST_F(TrainerTest, AFailureInsideAStepKeepsTheLastWholeStep) {
  T::Trainer straight(tiny(6), files_, {}, dir_ / "straight", false);
  straight.run();
  {
    T::Trainer failing(tiny(6), files_, {}, dir_ / "failed", false);
    int calls = 0;
    int per_step = 0;
    failing.model()->set_batch_norm_hook(
        [&](torch::nn::BatchNorm2dImpl& layer, const torch::Tensor& input) {
          ++calls;
          if (failing.step() == 0) per_step = calls;  // BatchNorm layers in one forward
          if (failing.step() == 3 && calls == 3 * per_step + 2) throw std::runtime_error("lost");
          return layer.forward(input);
        });
    EXPECT_THROW(failing.run(), std::runtime_error);
    ASSERT_GT(per_step, 2);
  }
  T::Trainer resumed(tiny(6), files_, {}, dir_ / "failed", true);
  EXPECT_EQ(resumed.step(), 3);
  resumed.run();
  expect_same_state(resumed, straight);
}

// The shallowest network (depth 1: no BatchNorm, nothing for a step to put back) trains too.
TEST_F(TrainerTest, DepthOneTrains) {
  T::Trainer trainer(
      tiny(2).model(pconv::nn::PConvUNetOptions().depth(1).base_width(8).max_width(8)), files_, {},
      dir_ / "run", false);
  EXPECT_TRUE(trainer.model()->buffers().empty());
  EXPECT_EQ(trainer.run().step, 2);
}

// A resume with another learning rate trains with it: LibTorch's optimizer state restores the
// saved rate, which must not win. At a rate of 1e-12 the resumed steps leave the weights where
// the checkpoint had them (at the run's 2e-3 they move by about 1e-3).
TEST_F(TrainerTest, AResumeTrainsWithItsOwnLearningRate) {
  T::Trainer(tiny(2), files_, {}, dir_ / "run", false).run();
  T::Trainer resumed(tiny(4).learning_rate(1e-12), files_, {}, dir_ / "run", true);
  // The weights only: BatchNorm's running statistics move whatever the rate.
  const auto weights = [&resumed] {
    std::vector<at::Tensor> result;
    for (const auto& p : resumed.model()->parameters()) result.push_back(p.detach().clone());
    return result;
  };
  const auto before = weights();
  resumed.run();
  EXPECT_EQ(resumed.step(), 4);  // it trained: two steps, at the new rate
  const auto after = weights();
  double moved = 0.0;
  for (size_t i = 0; i < before.size(); ++i) {
    moved = std::max(moved, (after[i] - before[i]).abs().max().item<double>());
  }
  EXPECT_LT(moved, 1e-6);
}

// A resume keeps the run folder true: a log that is gone starts again with its header, and
// config.txt gains the settings the resume changed, which are also reported.
TEST_F(TrainerTest, AResumeKeepsTheRunFolderTrue) {
  T::Trainer(tiny(2), files_, {}, dir_ / "run", false).run();
  // Without validation photos there are no samples and no validation scores.
  EXPECT_FALSE(fs::exists(dir_ / "run" / "samples"));
  EXPECT_FALSE(fs::exists(dir_ / "run" / "validation.csv"));
  fs::remove(dir_ / "run" / "log.csv");
  std::vector<std::string> messages;
  T::TrainerCallbacks callbacks;
  callbacks.on_message = [&](const std::string& text) { messages.push_back(text); };
  T::Trainer(tiny(4).learning_rate(1e-3), files_, {}, dir_ / "run", true).run(callbacks);
  const auto read = [](const fs::path& path) {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  const auto log = read(dir_ / "run" / "log.csv");
  EXPECT_EQ(log.rfind("step,valid,hole,", 0), 0U) << log;
  EXPECT_NE(log.find("\n3,"), std::string::npos) << log;
  const auto config = read(dir_ / "run" / "config.txt");
  EXPECT_NE(config.find("steps 2\n"), std::string::npos) << config;
  EXPECT_NE(config.find("resumed at step 2, with:\nsteps 4\nlearning_rate 0.001\n"),
            std::string::npos)
      << config;
  EXPECT_THAT(messages, ::testing::Contains(
                            ::testing::HasSubstr("steps 2 -> 4, learning_rate 0.002 -> 0.001")));
  // Resumed again: only what changed since the last resume is added. Lines of the log that
  // are not its rows (edited by hand, cut short by a kill) are left out, and said.
  std::ofstream(dir_ / "run" / "log.csv", std::ios::app) << "garbage\n3.5,1\n4,0.1,0.2";
  messages.clear();
  T::Trainer(tiny(5).learning_rate(1e-3), files_, {}, dir_ / "run", true).run(callbacks);
  const auto cleaned = read(dir_ / "run" / "log.csv");
  EXPECT_EQ(cleaned.find("garbage"), std::string::npos) << cleaned;
  EXPECT_EQ(cleaned.find("3.5,"), std::string::npos) << cleaned;
  EXPECT_EQ(cleaned.find("4,0.1,0.2\n"), std::string::npos) << cleaned;
  EXPECT_NE(cleaned.find("\n5,"), std::string::npos) << cleaned;
  EXPECT_THAT(messages, ::testing::Contains(::testing::HasSubstr(
                            "log.csv: 3 line(s) that were not rows of the log left out")));
  const auto again = read(dir_ / "run" / "config.txt");
  EXPECT_NE(again.find("resumed at step 4, with:\nsteps 5\n"), std::string::npos) << again;
  EXPECT_EQ(again.find("learning_rate 0.001", again.find("resumed at step 4")), std::string::npos)
      << again;
  fs::remove(dir_ / "run" / "config.txt");
  T::Trainer(tiny(6).learning_rate(1e-3), files_, {}, dir_ / "run", true).run();
  EXPECT_NE(read(dir_ / "run" / "config.txt").find("config.txt was missing: written anew"),
            std::string::npos);
  // A config.txt of an older pconv, without a setting recorded since: the resume writes it
  // down, so that the next resume takes it (before, only values that changed were written).
  {
    auto older = read(dir_ / "run" / "config.txt");
    const auto line = older.find("checkpoint_every ");
    ASSERT_NE(line, std::string::npos);
    older.erase(line, older.find('\n', line) + 1 - line);
    std::ofstream(dir_ / "run" / "config.txt") << older;
    messages.clear();
    T::Trainer(tiny(7).learning_rate(1e-3), files_, {}, dir_ / "run", true).run(callbacks);
    const auto recorded = read(dir_ / "run" / "config.txt");
    EXPECT_NE(recorded.find("resumed at step 6, with:\nsteps 7\ncheckpoint_every 0\n"),
              std::string::npos)
        << recorded;
    EXPECT_THAT(messages,
                ::testing::Contains(::testing::HasSubstr("checkpoint_every (not recorded) -> 0")));
  }
  EXPECT_FALSE(fs::exists(dir_ / "run" / "validation.csv"));
  // A resume that brings validation photos starts both.
  T::Trainer(tiny(8).learning_rate(1e-3).validate_every(1).sample_every(1), files_, files_,
             dir_ / "run", true)
      .run();
  EXPECT_TRUE(fs::exists(dir_ / "run" / "samples" / ("step_0000008" + kImageExtension)));
  EXPECT_EQ(read(dir_ / "run" / "validation.csv").rfind("step,psnr,ssim,images\n8,", 0), 0U)
      << read(dir_ / "run" / "validation.csv");
}

// Two runs in one folder at a time would overwrite each other's files: the second is refused
// while the first lives, and may start once it is gone.
TEST_F(TrainerTest, OneRunPerFolderAtATime) {
  auto first = std::make_unique<T::Trainer>(tiny(2), files_, files_, dir_ / "run", false);
  EXPECT_THAT([&] { T::Trainer(tiny(2).seed(2), files_, files_, dir_ / "run", false); },
              ::testing::ThrowsMessage<pconv::InputError>(
                  ::testing::HasSubstr("run: another pconv command is writing into this folder")));
  first.reset();
  EXPECT_NO_THROW(T::Trainer(tiny(2).seed(2), files_, files_, dir_ / "run", false));
}

TEST_F(TrainerTest, DamagedCheckpointIsAModelErrorNotACrash) {
  {
    T::Trainer stopped(tiny(4), files_, {}, dir_ / "run", false);
    T::TrainerCallbacks callbacks;
    callbacks.should_stop = [&] { return stopped.step() == 2; };
    stopped.run(callbacks);
  }
  const auto checkpoint = dir_ / "run" / "checkpoint.pt";
  const auto sound = dir_ / "sound.pt";
  fs::copy_file(checkpoint, sound);
  const auto records = pconv::testing::tensor_records(sound);
  ASSERT_GE(records.size(), 2U);
  // Each record with no bytes, or cut short: a scalar, a weight or a moment of the optimizer,
  // the random state.
  for (size_t i = 0; i < records.size(); i += std::max<size_t>(1, records.size() / 7)) {
    for (const size_t keep : {size_t{0}, size_t{1}}) {
      fs::remove(checkpoint);
      pconv::testing::copy_with_short_record(sound, checkpoint, records[i], keep);
      EXPECT_THAT([&] { T::Trainer(tiny(4), files_, {}, dir_ / "run", true); },
                  ::testing::ThrowsMessage<pconv::ModelError>(
                      ::testing::HasSubstr("checkpoint.pt: cannot")))
          << records[i] << " cut to " << keep << " bytes";
    }
  }
  // A run identity with a setting pconv never writes (one letter changed, checksums made anew,
  // as a fuzzer made it): damaged, not "of another run" (which named depth=3 against 3).
  fs::remove(checkpoint);
  int changed = 0;
  pconv::testing::copy_with_changed_records(
      sound, checkpoint, [&](const std::string&, std::string& bytes) {
        for (auto at = bytes.find("depth="); at != std::string::npos; at = bytes.find("depth=")) {
          bytes[at + 1] = 'z';
          ++changed;
        }
      });
  ASSERT_EQ(changed, 1);
  EXPECT_THAT(
      [&] { T::Trainer(tiny(4), files_, {}, dir_ / "run", true); },
      ::testing::ThrowsMessage<pconv::ModelError>(::testing::HasSubstr(
          "checkpoint.pt: is damaged, or of a newer pconv (its run identity holds 'dzpth=3'")));
  fs::remove(checkpoint);
  pconv::testing::copy_with_short_record(sound, checkpoint, "", 0);
  T::Trainer resumed(tiny(4), files_, {}, dir_ / "run", true);  // the copy itself is sound
  EXPECT_EQ(resumed.step(), 2);
}

TEST_F(TrainerTest, ChannelsLastTrainsTheSameModel) {
  T::Trainer plain(tiny(4), files_, {}, dir_ / "plain", false);
  plain.run();
  T::Trainer nhwc(tiny(4).channels_last(true), files_, {}, dir_ / "nhwc", false);
  const auto weight = nhwc.model()->parameters().front();
  ASSERT_EQ(weight.dim(), 4);
  EXPECT_TRUE(weight.is_contiguous(at::MemoryFormat::ChannelsLast));
  EXPECT_FALSE(weight.is_contiguous());
  nhwc.run();
  const auto expected = parameters(plain);
  const auto actual = parameters(nhwc);
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < actual.size(); ++i) {
    // Another summation order in the convolutions; Adam amplifies tiny gradients' differences.
    EXPECT_TRUE(at::allclose(actual[i], expected[i], 1e-3, 1e-4))
        << "tensor " << i << ": " << (actual[i] - expected[i]).abs().max().item<double>();
  }
}

// CUDA: the same training as on the CPU, and reduced precision that trains. Skipped without a GPU.
TEST_F(TrainerTest, CpuEqualsCuda_CUDA) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU";
  at::globalContext().setAllowTF32CuDNN(false);
  at::globalContext().setAllowTF32CuBLAS(false);
  T::Trainer cpu(tiny(4), files_, {}, dir_ / "cpu", false);
  cpu.run();
  for (const bool channels_last : {false, true}) {
    SCOPED_TRACE(channels_last ? "channels-last" : "NCHW");
    const auto run_dir = dir_ / (channels_last ? "cuda-cl" : "cuda");
    T::Trainer gpu(tiny(4).device(c10::Device(c10::kCUDA)).channels_last(channels_last), files_, {},
                   run_dir, false);
    gpu.run();
    const auto expected = parameters(cpu);
    const auto actual = parameters(gpu);
    ASSERT_EQ(actual.size(), expected.size());
    for (size_t i = 0; i < actual.size(); ++i) {
      // cuDNN sums in other orders, and Adam's normalised steps let a near-zero gradient's
      // rounding move a weight by up to lr per step: a loose tolerance, far below a wrong
      // kernel's errors.
      EXPECT_TRUE(at::allclose(actual[i].cpu(), expected[i], 1e-2, 2e-3))
          << "tensor " << i << ": " << (actual[i].cpu() - expected[i]).abs().max().item<double>();
    }
  }
}

TEST_F(TrainerTest, MixedPrecisionTrains_CUDA) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU";
  for (const std::string amp : {"bf16", "fp16"}) {
    SCOPED_TRACE(amp);
    T::Trainer trainer(tiny(40).device(c10::Device(c10::kCUDA)).amp(amp), files_, {},
                       dir_ / ("amp-" + amp), false);
    std::vector<double> totals;
    T::TrainerCallbacks callbacks;
    record_totals(callbacks, totals);
    trainer.run(callbacks);
    ASSERT_EQ(totals.size(), 40U);
    const auto [first, last] = first_and_last_eight(totals);
    EXPECT_TRUE(std::isfinite(last));
    EXPECT_LT(last, 0.8 * first) << "first 8 steps " << first << ", last 8 " << last;
    for (const auto& parameter : trainer.model()->parameters()) {
      EXPECT_TRUE(parameter.isfinite().all().item<bool>());
    }
  }
}

}  // namespace
