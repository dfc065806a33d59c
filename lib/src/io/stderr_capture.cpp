#include "stderr_capture.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <mutex>

namespace pconv::io {
namespace {

// The one redirection shared by all open captures.
struct Redirect {
  std::mutex mutex;
  int open_count = 0;
  int saved_stderr = -1;  // the real stderr while redirected
  std::FILE* file = nullptr;
  long claimed = 0;          // bytes of the file already claimed
  unsigned long opened = 0;  // captures opened since the redirection began
};

Redirect& redirect() {
  static Redirect state;
  return state;
}

long size_of(std::FILE* file) {
  struct stat info {};
  return ::fstat(::fileno(file), &info) == 0 ? static_cast<long>(info.st_size) : 0;
}

// The file's bytes from `from` to its end, and that end. pread and fstat leave the file offset
// alone, which fd 2 shares: writers keep appending at the end while this reads.
std::string read_from(std::FILE* file, long from, long& end) {
  std::string text;
  struct stat info {};
  if (::fstat(::fileno(file), &info) != 0) return text;
  end = static_cast<long>(info.st_size);
  if (end <= from) return text;
  text.resize(static_cast<std::size_t>(end - from));
  const ssize_t got = ::pread(::fileno(file), text.data(), text.size(), from);
  text.resize(got > 0 ? static_cast<std::size_t>(got) : 0);
  end = from + static_cast<long>(text.size());
  return text;
}

void write_all(int fd, const std::string& text) {
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t written = ::write(fd, text.data() + done, text.size() - done);
    if (written <= 0) return;
    done += static_cast<std::size_t>(written);
  }
}

}  // namespace

StderrCapture::StderrCapture() {
  auto& state = redirect();
  const std::lock_guard<std::mutex> lock(state.mutex);
  if (state.open_count == 0) {
    std::fflush(stderr);
    std::FILE* file = std::tmpfile();
    if (file == nullptr) return;
    const int saved = ::dup(STDERR_FILENO);
    if (saved < 0 || ::dup2(::fileno(file), STDERR_FILENO) < 0) {
      if (saved >= 0) ::close(saved);
      std::fclose(file);
      return;
    }
    state.saved_stderr = saved;
    state.file = file;
    state.claimed = 0;
    state.opened = 0;
  }
  overlapped_at_open_ = state.open_count > 0;
  serial_ = ++state.opened;
  size_at_open_ = size_of(state.file);
  ++state.open_count;
  open_ = true;
}

StderrCapture::~StderrCapture() { release(); }

std::string StderrCapture::claim(bool show) {
  if (!open_) return {};
  open_ = false;
  auto& state = redirect();
  const std::lock_guard<std::mutex> lock(state.mutex);
  std::fflush(stderr);
  // Another capture was open at some point, and text was written meanwhile (by anyone) or
  // from before this capture opened is still unclaimed (another's, which this claim takes).
  const bool overlapped = overlapped_at_open_ || state.opened != serial_;
  mixed_ = overlapped && (size_of(state.file) > size_at_open_ || state.claimed < size_at_open_);
  const bool last = --state.open_count == 0;
  // The last one restores stderr before it reads, so that what other threads write meanwhile
  // either lands in the file before the read or goes to the real stderr.
  if (last) ::dup2(state.saved_stderr, STDERR_FILENO);
  long end = state.claimed;
  std::string text = read_from(state.file, state.claimed, end);
  state.claimed = end;
  if (last) {
    ::close(state.saved_stderr);
    std::fclose(state.file);
    state.saved_stderr = -1;
    state.file = nullptr;
  }
  // Still under the lock: to the real stderr if this was the last capture, else into the file
  // for a capture still open, which claims it in turn.
  if (show) write_all(STDERR_FILENO, text);
  return text;
}

std::string StderrCapture::take() { return claim(/*show=*/false); }

void StderrCapture::release() { claim(/*show=*/true); }

std::string one_line(const std::string& text, std::size_t max_length) {
  std::string line;
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::size_t first = start;
    std::size_t last = end;
    while (first < last && std::isspace(static_cast<unsigned char>(text[first])) != 0) ++first;
    while (last > first && std::isspace(static_cast<unsigned char>(text[last - 1])) != 0) --last;
    if (last > first) {
      if (!line.empty()) line += "; ";
      line.append(text, first, last - first);
    }
    start = end + 1;
  }
  if (line.size() > max_length) line = line.substr(0, max_length - 3) + "...";
  return line;
}

}  // namespace pconv::io
