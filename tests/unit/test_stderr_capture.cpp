// io::StderrCapture: what is written to file descriptor 2 while a capture is open is claimed
// once, either taken (not shown) or released (shown), also when captures overlap across threads.
#include "io/stderr_capture.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <string>
#include <thread>
#include <vector>

namespace {

void write_stderr(const std::string& text) {
  ASSERT_EQ(::write(STDERR_FILENO, text.data(), text.size()), static_cast<ssize_t>(text.size()));
}

int count(const std::string& text, const std::string& part) {
  int found = 0;
  for (auto at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++found;
  return found;
}

TEST(StderrCapture, TakenTextIsNotShownAndReleasedTextIs) {
  ::testing::internal::CaptureStderr();
  {
    pconv::io::StderrCapture capture;
    write_stderr("libfoo error: bad data\n");
    EXPECT_EQ(capture.take(), "libfoo error: bad data\n");
  }
  {
    pconv::io::StderrCapture capture;
    write_stderr("libfoo warning: odd profile\n");
    capture.release();
  }
  write_stderr("after\n");
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "libfoo warning: odd profile\nafter\n");
}

TEST(StderrCapture, OverlappingCapturesClaimEveryLineExactlyOnce) {
  ::testing::internal::CaptureStderr();
  constexpr int kThreads = 8;
  constexpr int kRounds = 50;
  std::vector<std::string> taken(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t, &taken] {
      for (int round = 0; round < kRounds; ++round) {
        pconv::io::StderrCapture capture;
        write_stderr("<" + std::to_string(t) + ":" + std::to_string(round) + ">\n");
        if (round % 2 == 0) {
          taken[t] += capture.take();
        } else {
          capture.release();
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  std::string all = ::testing::internal::GetCapturedStderr();
  for (const auto& text : taken) all += text;
  for (int t = 0; t < kThreads; ++t) {
    for (int round = 0; round < kRounds; ++round) {
      const std::string line = "<" + std::to_string(t) + ":" + std::to_string(round) + ">\n";
      EXPECT_EQ(count(all, line), 1) << line;
    }
  }
  EXPECT_EQ(static_cast<int>(std::count(all.begin(), all.end(), '\n')), kThreads * kRounds);
}

// mixed(): where two captures were open at once and something was written meanwhile, neither
// can tell whose the text is; a capture alone, or overlapping ones with nothing written, can.
TEST(StderrCapture, MixedSaysWhenTwoCapturesSawText) {
  ::testing::internal::CaptureStderr();
  {
    pconv::io::StderrCapture alone;
    write_stderr("mine\n");
    EXPECT_EQ(alone.take(), "mine\n");
    EXPECT_FALSE(alone.mixed());
  }
  {
    pconv::io::StderrCapture first;
    pconv::io::StderrCapture second;
    EXPECT_EQ(second.take(), "");
    EXPECT_EQ(first.take(), "");
    EXPECT_FALSE(first.mixed());
    EXPECT_FALSE(second.mixed());
  }
  {  // the second claims the first's text, written before it opened
    pconv::io::StderrCapture first;
    write_stderr("first's\n");
    pconv::io::StderrCapture second;
    EXPECT_EQ(second.take(), "first's\n");
    EXPECT_TRUE(second.mixed());
    EXPECT_EQ(first.take(), "");
    EXPECT_TRUE(first.mixed());
  }
  {  // written while both are open
    pconv::io::StderrCapture first;
    pconv::io::StderrCapture second;
    write_stderr("whose?\n");
    EXPECT_EQ(first.take(), "whose?\n");
    EXPECT_TRUE(first.mixed());
    EXPECT_EQ(second.take(), "");
    EXPECT_TRUE(second.mixed());
  }
  {  // one after the other
    {
      pconv::io::StderrCapture first;
      write_stderr("one\n");
      EXPECT_EQ(first.take(), "one\n");
      EXPECT_FALSE(first.mixed());
    }
    pconv::io::StderrCapture second;
    write_stderr("two\n");
    EXPECT_EQ(second.take(), "two\n");
    EXPECT_FALSE(second.mixed());
  }
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
}

TEST(StderrCapture, OneLineJoinsTrimsAndShortens) {
  EXPECT_EQ(pconv::io::one_line(""), "");
  EXPECT_EQ(pconv::io::one_line("  a \n\n b\r\n"), "a; b");
  EXPECT_EQ(pconv::io::one_line(std::string(300, 'x'), 10), "xxxxxxx...");
}

}  // namespace
