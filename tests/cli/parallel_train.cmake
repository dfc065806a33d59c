# Data-parallel training equals one process with the same global batch: 2 ranks x batch 2 over
# Gloo on the loopback address against 1 process x batch 4, same seed, K steps; the model files
# must agree within float tolerance (synchronised BatchNorm, averaged gradients), also when the
# parallel run is resumed half-way.
#   cmake -DPCONV=<pconv> -DCHECK=<pconv_distributed_check> -DLAUNCH=<train-parallel.sh>
#         -DWORK_DIR=<dir> -DPORT=<port> -P parallel_train.cmake
file(REMOVE_RECURSE ${WORK_DIR})
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  message("${ARGN}\n-> ${rc}\n${out}")
  if(NOT rc STREQUAL "0")
    message(FATAL_ERROR "failed: ${ARGN}")
  endif()
  set(last_output "${out}" PARENT_SCOPE)
endfunction()
run(${PCONV} masks -n 8 -o ${WORK_DIR}/photos --size 40x36 --seed 5 --min-ratio 0.2 --max-ratio 0.5)
set(unthreaded --data ${WORK_DIR}/photos --size 32 --depth 3 --width 8 --max-width 16
    --workers 1 --seed 3 --validate-every 0 --sample-every 0 --checkpoint-every 0)
set(common ${unthreaded} --threads 1)
# Validated too (each rank scores a part of the 3 images; rank 0 reports the whole): the model
# files' validation metrics must agree as well.
run(${PCONV} masks -n 3 -o ${WORK_DIR}/val --size 40x36 --seed 6 --min-ratio 0.2 --max-ratio 0.5)
set(validated --val ${WORK_DIR}/val)
run(${PCONV} train ${common} ${validated} --steps 4 --batch 4 -o ${WORK_DIR}/single)
set(launch ${CMAKE_COMMAND} -E env PCONV=${PCONV} MASTER_PORT=${PORT} bash ${LAUNCH} 2 ${common}
    --batch 2 --timeout 60)
run(${launch} ${validated} --steps 4 -o ${WORK_DIR}/parallel)
if(NOT last_output MATCHES "step 4: validation PSNR [0-9.]+ dB, SSIM [0-9.]+ \\(3 images\\)")
  message(FATAL_ERROR "the parallel run reported no validation at step 4")
endif()
if(last_output MATCHES "processes on this machine")
  message(FATAL_ERROR "the ranks chose their CPU threads although --threads was given")
endif()
run(${CHECK} compare ${WORK_DIR}/single/model.pt ${WORK_DIR}/parallel/model.pt 1e-6)
if(NOT last_output MATCHES "metric val_psnr")
  message(FATAL_ERROR "no validation metrics compared")
endif()
# Rank 0 logs the whole global batch's losses (each rank's mean over its part, averaged), as
# the single process does (log.csv keeps 6 decimals).
run(${CHECK} logs ${WORK_DIR}/single/log.csv ${WORK_DIR}/parallel/log.csv 5e-6)
if(NOT last_output MATCHES "4 rows")
  message(FATAL_ERROR "the logs' 4 rows were not compared")
endif()
# Ranks on one machine share its cores: without --threads (and OMP_NUM_THREADS) each takes its
# share of them, as the launcher's LOCAL_WORLD_SIZE tells it.
run(${CMAKE_COMMAND} -E env --unset=OMP_NUM_THREADS PCONV=${PCONV} MASTER_PORT=${PORT} bash
    ${LAUNCH} 2 ${unthreaded} --batch 2 --timeout 60 --steps 1 -o ${WORK_DIR}/shared-cores)
if(NOT last_output MATCHES "2 processes on this machine: [0-9]+ CPU threads? each")
  message(FATAL_ERROR "the ranks did not take their share of the CPU threads")
endif()
# Stopped after 2 steps and resumed to 4: the same model again.
run(${launch} ${validated} --steps 2 -o ${WORK_DIR}/resumed)
run(${launch} ${validated} --steps 4 -o ${WORK_DIR}/resumed --resume)
run(${CHECK} compare ${WORK_DIR}/single/model.pt ${WORK_DIR}/resumed/model.pt 1e-6)
# Resumed with another number of processes (the global batch changes): the data stream goes on
# at the next example, none skipped or repeated: after 2 steps of 2 ranks x 2 at example 8, after
# one more step of 1 process x 2 at example 10.
run(${launch} --steps 2 -o ${WORK_DIR}/regrouped)
run(${PCONV} train ${common} --batch 2 --steps 3 -o ${WORK_DIR}/regrouped --resume)
if(NOT last_output MATCHES "resuming at step 2, after 8 examples")
  message(FATAL_ERROR "2 ranks resumed as 1 process: not at example 8")
endif()
run(${launch} --steps 4 -o ${WORK_DIR}/regrouped --resume)
if(NOT last_output MATCHES "resuming at step 3, after 10 examples")
  message(FATAL_ERROR "1 process resumed as 2 ranks: not at example 10")
endif()
# Rank 0 cannot read its checkpoint (here a folder in its place): every rank exits 4 at once,
# the others saying so, instead of waiting out the timeout.
file(REMOVE ${WORK_DIR}/regrouped/checkpoint.pt)
file(MAKE_DIRECTORY ${WORK_DIR}/regrouped/checkpoint.pt)
execute_process(COMMAND ${launch} --steps 5 -o ${WORK_DIR}/regrouped --resume
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
message("unreadable checkpoint -> ${rc}\n${out}")
if(NOT rc STREQUAL "4" OR NOT out MATCHES "checkpoint.pt: is a folder, not a checkpoint"
   OR NOT out MATCHES "rank 1: rank 0 cannot read its checkpoint")
  message(FATAL_ERROR "unreadable checkpoint: expected exit 4 and both ranks' messages")
endif()

# Ranks started with other options: one error line on each rank, exit 3, never a collective's
# abort or a wait for the timeout. Here rank 1's first layer is narrower; then it validates on
# fewer crops, or not at all, where every rank scores its part of the same crops.
set(rank_env ${CMAKE_COMMAND} -E env WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=${PORT})
function(mismatch rank0_args rank1_args expected)
  execute_process(
    COMMAND ${rank_env} RANK=0 ${PCONV} train ${common} ${rank0_args} --batch 2 --steps 2
            --timeout 60 -o ${WORK_DIR}/mismatch
    COMMAND ${rank_env} RANK=1 ${PCONV} train ${rank1_common} ${rank1_args} --batch 2 --steps 2
            --timeout 60 -o ${WORK_DIR}/mismatch
    RESULTS_VARIABLE codes OUTPUT_VARIABLE out ERROR_VARIABLE out)
  message("mismatched ranks -> ${codes}\n${out}")
  if(NOT codes STREQUAL "3;3")
    message(FATAL_ERROR "mismatched ranks: exit codes ${codes}, expected 3;3")
  endif()
  foreach(line "rank 1 was started with other settings than rank 0: ${expected}"
               "1 rank\\(s\\) were started with other settings than this one")
    if(NOT out MATCHES "${line}")
      message(FATAL_ERROR "mismatched ranks: no '${line}'")
    endif()
  endforeach()
  if(out MATCHES "terminate|Abort|gloo")
    message(FATAL_ERROR "mismatched ranks: an abort or a collective's message")
  endif()
  if(EXISTS ${WORK_DIR}/mismatch)
    message(FATAL_ERROR "mismatched ranks: the refused run left its folder")
  endif()
endfunction()
string(REPLACE "--width;8" "--width;4" rank1_common "${common}")
mismatch("" "" "--width 4 \\(rank 0: 8\\)")
set(rank1_common ${common})
mismatch("${validated}" "${validated};--val-count;2"
         "readable photos in --val \\(at most --val-count\\) 2 \\(rank 0: 3\\)")
mismatch("${validated}" "" "readable photos in --val \\(at most --val-count\\) 0 \\(rank 0: 3\\)")
