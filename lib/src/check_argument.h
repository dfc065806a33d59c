// PCONV_CHECK_ARGUMENT: TORCH_CHECK's form for the arguments of pconv's functions and classes,
// throwing pconv::ArgumentError (one line, no backtrace) instead of c10::Error.
#pragma once

#include "pconv/error.h"

#include <c10/util/StringUtil.h>

// NOLINTNEXTLINE(cppcoreguidelines-macro-usage): the message is built only when the check fails
#define PCONV_CHECK_ARGUMENT(condition, ...)                 \
  do {                                                       \
    if (!(condition)) {                                      \
      throw ::pconv::ArgumentError(::c10::str(__VA_ARGS__)); \
    }                                                        \
  } while (false)
