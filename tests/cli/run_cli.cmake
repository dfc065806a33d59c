# Runs the pconv binary once and checks its exit code and output, so that a CLI test can assert
# both (PASS_REGULAR_EXPRESSION alone cannot check the exit code).
#   cmake -DPCONV=<binary> -DARGS=<;-list> -DEXPECT_RC=<code> -DEXPECT_REGEX=<non-empty regex>
#         [-DREJECT_REGEX=<regex>] [-DCLEAN_DIR=<dir removed first>]
#         [-DEXPECT_FILES=<;-list of files that must exist after>]
#         [-DABSENT_FILES=<;-list of files or folders that must not exist after>] -P run_cli.cmake
# A failing run (EXPECT_RC not 0) must also report its failure in exactly one line.
if(DEFINED CLEAN_DIR)
  file(REMOVE_RECURSE "${CLEAN_DIR}")
endif()
execute_process(COMMAND ${PCONV} ${ARGS} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
set(all "${out}${err}")
message("exit code ${rc}; output:\n${all}")
if(NOT rc STREQUAL EXPECT_RC)
  message(FATAL_ERROR "expected exit code ${EXPECT_RC}, got ${rc}")
endif()
# Every test says what its output must show: an empty regex would match anything.
if(NOT EXPECT_REGEX)
  message(FATAL_ERROR "no EXPECT_REGEX given: say what the output must show")
endif()
if(NOT all MATCHES "${EXPECT_REGEX}")
  message(FATAL_ERROR "output does not match: ${EXPECT_REGEX}")
endif()
if(DEFINED REJECT_REGEX AND all MATCHES "${REJECT_REGEX}")
  message(FATAL_ERROR "output matches what it must not: ${REJECT_REGEX}")
endif()
# A failure is reported in one line, "pconv: error: ...", and every other line on stderr is
# pconv's own log (no second error line, no text from a library such as libpng).
if(NOT EXPECT_RC STREQUAL "0")
  string(REGEX MATCHALL "pconv: error: " error_lines "${err}")
  list(LENGTH error_lines error_count)
  if(NOT error_count EQUAL 1)
    message(FATAL_ERROR "expected one error line, got ${error_count}")
  endif()
  string(REGEX REPLACE "\n$" "" err_lines "${err}")
  string(REPLACE ";" "," err_lines "${err_lines}")
  string(REPLACE "\n" ";" err_lines "${err_lines}")
  foreach(line IN LISTS err_lines)
    if(NOT line MATCHES "^pconv: ")
      message(FATAL_ERROR "stderr holds a line that is not pconv's: ${line}")
    endif()
  endforeach()
endif()
foreach(expected IN LISTS EXPECT_FILES)
  if(NOT EXISTS "${expected}")
    message(FATAL_ERROR "expected file missing: ${expected}")
  endif()
endforeach()
foreach(absent IN LISTS ABSENT_FILES)
  if(EXISTS "${absent}")
    message(FATAL_ERROR "must not exist: ${absent}")
  endif()
endforeach()
