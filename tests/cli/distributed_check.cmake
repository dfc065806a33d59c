# Starts two ranks of pconv_distributed_check at once on the loopback address (execute_process
# with two COMMANDs runs them concurrently) and checks both exit codes.
#   cmake -DCHECK=<binary> -DMODE=<a pconv_distributed_check mode> -DPORT=<port> -P distributed_check.cmake
set(common WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=${PORT})
execute_process(
  COMMAND ${CMAKE_COMMAND} -E env ${common} RANK=0 ${CHECK} ${MODE}
  COMMAND ${CMAKE_COMMAND} -E env ${common} RANK=1 ${CHECK} ${MODE}
  RESULTS_VARIABLE codes OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 120)
message("exit codes: ${codes}\n${out}${err}")
if(NOT codes STREQUAL "0;0")
  message(FATAL_ERROR "expected both ranks to exit 0")
endif()
