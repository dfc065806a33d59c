# Runs the pconv binary once and checks its exit code and output, so that a CLI test can assert
# both (PASS_REGULAR_EXPRESSION alone cannot check the exit code).
#   cmake -DPCONV=<binary> -DARGS=<;-list> -DEXPECT_RC=<code> -DEXPECT_REGEX=<regex>
#         [-DREJECT_REGEX=<regex>] [-DCLEAN_DIR=<dir removed first>]
#         [-DEXPECT_FILES=<;-list of files that must exist after>] -P run_cli.cmake
if(DEFINED CLEAN_DIR)
  file(REMOVE_RECURSE "${CLEAN_DIR}")
endif()
execute_process(COMMAND ${PCONV} ${ARGS} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
set(all "${out}${err}")
message("exit code ${rc}; output:\n${all}")
if(NOT rc STREQUAL EXPECT_RC)
  message(FATAL_ERROR "expected exit code ${EXPECT_RC}, got ${rc}")
endif()
if(DEFINED EXPECT_REGEX AND NOT all MATCHES "${EXPECT_REGEX}")
  message(FATAL_ERROR "output does not match: ${EXPECT_REGEX}")
endif()
if(DEFINED REJECT_REGEX AND all MATCHES "${REJECT_REGEX}")
  message(FATAL_ERROR "output matches what it must not: ${REJECT_REGEX}")
endif()
foreach(expected IN LISTS EXPECT_FILES)
  if(NOT EXISTS "${expected}")
    message(FATAL_ERROR "expected file missing: ${expected}")
  endif()
endforeach()
