// Keeps what libraries print on stderr while a call runs, so that the caller can turn it into
// its own message. OpenCV's image decoders let libpng and libjpeg print their reason for a
// failed decode ("libpng error: IDAT: incorrect data check") straight to stderr, and pconv
// reports every failure in one line of its own.
#pragma once

#include <cstddef>
#include <string>

namespace pconv::io {

/// While an instance is open, file descriptor 2 points into a temporary file. Instances may
/// overlap, also across threads: the first one opened redirects, the last one closed restores,
/// and each claims the text written since the end of the previous claim, so nothing is shown
/// twice and nothing is lost (short of a write on another thread that is still in progress at
/// the very moment the last capture closes). Text that another thread writes meanwhile goes to
/// whichever claim comes first, so for the text of one call among several that print at once
/// see mixed(). If stderr cannot be redirected, nothing is captured.
class StderrCapture {
 public:
  StderrCapture();
  ~StderrCapture();
  StderrCapture(const StderrCapture&) = delete;
  StderrCapture& operator=(const StderrCapture&) = delete;
  StderrCapture(StderrCapture&&) = delete;
  StderrCapture& operator=(StderrCapture&&) = delete;

  /// Stops capturing and returns the claimed text, which is not shown.
  std::string take();
  /// Stops capturing and writes the claimed text to the real stderr.
  void release();

  /// After take() or release(): whether something was written while another capture was open
  /// too, so that the claimed text may hold another call's and lack some of this one's (which
  /// the capture claimed first). Both captures say so.
  bool mixed() const { return mixed_; }

 private:
  std::string claim(bool show);

  bool open_ = false;
  bool mixed_ = false;
  bool overlapped_at_open_ = false;  // another capture was open already
  unsigned long serial_ = 0;         // this capture's number among those of the redirection
  long size_at_open_ = 0;            // how much had been written into the file then
};

/// The captured text as one line: lines joined with "; ", blank space trimmed, at most
/// `max_length` characters.
std::string one_line(const std::string& text, std::size_t max_length = 200);

}  // namespace pconv::io
