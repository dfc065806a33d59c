# A smoke run of the real binary: make a few pictures (generated masks serve as photos), train
# a tiny model, check the run folder, refuse to overwrite it, then resume it to more steps.
#   cmake -DPCONV=<binary> -DWORK_DIR=<dir> -P train_smoke.cmake
file(REMOVE_RECURSE ${WORK_DIR})

function(pconv expected_rc)
  execute_process(COMMAND ${PCONV} ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  message("pconv ${ARGN}\n-> ${rc}\n${out}")
  if(NOT rc STREQUAL expected_rc)
    message(FATAL_ERROR "expected exit code ${expected_rc}, got ${rc}")
  endif()
  set(last_output "${out}" PARENT_SCOPE)
endfunction()

pconv(0 masks -n 6 -o ${WORK_DIR}/photos --size 48x40 --seed 2 --min-ratio 0.2 --max-ratio 0.5)
# Validation photos of their own (a --val among the training photos is refused).
pconv(0 masks -n 3 -o ${WORK_DIR}/val --size 48x40 --seed 3 --min-ratio 0.2 --max-ratio 0.5)
set(model_args --size 32 --depth 3 --width 8 --max-width 16 --batch 2 --workers 1 --threads 1)
set(train_args train --data ${WORK_DIR}/photos --val ${WORK_DIR}/val -o ${WORK_DIR}/run
    ${model_args} --validate-every 2 --sample-every 2 --checkpoint-every 2)
pconv(0 ${train_args} --steps 4)
foreach(file config.txt log.csv validation.csv checkpoint.pt model.pt samples/step_0000002.png samples/step_0000004.png)
  if(NOT EXISTS ${WORK_DIR}/run/${file})
    message(FATAL_ERROR "missing ${WORK_DIR}/run/${file}")
  endif()
endforeach()
if(NOT last_output MATCHES "validation PSNR [0-9.]+ dB")
  message(FATAL_ERROR "no validation line")
endif()
pconv(3 ${train_args} --steps 4)
if(NOT last_output MATCHES "pconv: error: .*checkpoint already; use --resume")
  message(FATAL_ERROR "no clear error for an existing run")
endif()
pconv(0 ${train_args} --steps 6 --resume)
if(NOT last_output MATCHES "resuming at step 4" OR NOT last_output MATCHES "done: 6 steps")
  message(FATAL_ERROR "the run did not resume from step 4 to 6")
endif()
pconv(0 info ${WORK_DIR}/run/model.pt)
if(NOT last_output MATCHES "depth 3, widths 8..16" OR NOT last_output MATCHES "steps +6 at 32x32"
   OR NOT last_output MATCHES "metric +val_psnr")
  message(FATAL_ERROR "pconv info does not describe the model")
endif()
file(WRITE ${WORK_DIR}/broken.pt "not a model")
pconv(4 info ${WORK_DIR}/broken.pt)
if(NOT last_output MATCHES "pconv: error: .*broken.pt: cannot read the model")
  message(FATAL_ERROR "no clear error for a corrupt model file")
endif()
file(STRINGS ${WORK_DIR}/run/log.csv log_lines)
list(LENGTH log_lines count)
if(NOT count EQUAL 7)
  message(FATAL_ERROR "log.csv has ${count} lines, expected a header and 6 steps")
endif()

# A new run that fails before its first checkpoint leaves no run folder: a bad --init file
# (exit 4) and a folder of unreadable photos (exit 3, naming a file).
pconv(4 train --data ${WORK_DIR}/photos -o ${WORK_DIR}/run_bad_init --init ${WORK_DIR}/broken.pt
      ${model_args} --steps 2)
file(MAKE_DIRECTORY ${WORK_DIR}/unreadable)
file(WRITE ${WORK_DIR}/unreadable/a.png "not a png")
file(WRITE ${WORK_DIR}/unreadable/b.png "not a png either")
pconv(3 train --data ${WORK_DIR}/unreadable -o ${WORK_DIR}/run_unreadable ${model_args} --steps 2)
if(NOT last_output MATCHES "no usable photo left among the 2 files \\(.*unreadable/[ab].png")
  message(FATAL_ERROR "no clear error for a folder of unreadable photos")
endif()
foreach(run run_bad_init run_unreadable)
  if(EXISTS ${WORK_DIR}/${run})
    message(FATAL_ERROR "a failed new run left ${WORK_DIR}/${run} behind")
  endif()
endforeach()

# A validation folder of only unreadable photos is an error too (exit 3), not a run that
# measures nothing. The run folder existed: the run takes away only the files it added.
file(WRITE ${WORK_DIR}/run_existing/notes.txt "kept")
pconv(3 train --data ${WORK_DIR}/photos --val ${WORK_DIR}/unreadable -o ${WORK_DIR}/run_existing
      ${model_args} --steps 2)
if(NOT last_output MATCHES "no readable image among the 2 validation files \\(.*unreadable/[ab].png")
  message(FATAL_ERROR "no clear error for a validation folder of unreadable photos")
endif()
file(GLOB_RECURSE left LIST_DIRECTORIES true RELATIVE ${WORK_DIR}/run_existing
     ${WORK_DIR}/run_existing/*)
if(NOT left STREQUAL "notes.txt")
  message(FATAL_ERROR "the failed run changed the existing folder: ${left}")
endif()

# Training on a mask folder (the generated validation pictures are masks, white = hole).
pconv(0 train --data ${WORK_DIR}/photos --masks ${WORK_DIR}/val -o ${WORK_DIR}/run_masks
      ${model_args} --steps 2)
if(NOT last_output MATCHES "masks: augmented from the mask images" OR last_output MATCHES "warning")
  message(FATAL_ERROR "the mask folder was not used, or not without a warning")
endif()
# The same masks read the other way round (--white-valid) are mostly hole: a warning says so.
pconv(0 train --data ${WORK_DIR}/photos --masks ${WORK_DIR}/val --white-valid
      -o ${WORK_DIR}/run_masks_inverted ${model_args} --steps 1)
if(NOT last_output MATCHES "pconv: warning: the mask images in .* are [0-9]+% hole on average \\(white = known\\)")
  message(FATAL_ERROR "no warning of masks that are mostly hole")
endif()

# SIGINT in the middle of a long run: a checkpoint, exit code 130, and a resumable run.
find_program(TIMEOUT timeout REQUIRED)
execute_process(COMMAND ${TIMEOUT} --preserve-status -s INT 10 ${PCONV} train --data ${WORK_DIR}/photos
                        -o ${WORK_DIR}/run_interrupted ${model_args} --steps 1000000
                        --checkpoint-every 0 --validate-every 0 --sample-every 0
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
message("interrupted run -> ${rc}\n${out}")
if(NOT rc EQUAL 130 OR NOT out MATCHES "checkpoint saved" OR NOT EXISTS ${WORK_DIR}/run_interrupted/checkpoint.pt)
  message(FATAL_ERROR "SIGINT did not save a checkpoint and exit with 130")
endif()
# ... which resumes (its own settings from config.txt) and finishes two steps further on.
string(REGEX MATCH "stopped at step ([0-9]+)" stopped "${out}")
set(stopped_step "${CMAKE_MATCH_1}")
math(EXPR further "${stopped_step} + 2")
pconv(0 train --resume -o ${WORK_DIR}/run_interrupted --steps ${further})
if(NOT last_output MATCHES "resuming at step ${stopped_step}"
   OR NOT last_output MATCHES "done: ${further} steps"
   OR NOT EXISTS ${WORK_DIR}/run_interrupted/model.pt)
  message(FATAL_ERROR "the interrupted run did not resume to step ${further}")
endif()

# Mixed precision runs on the CPU too: bfloat16 autocast, and float16 with loss scaling.
foreach(amp bf16 fp16)
  pconv(0 train --data ${WORK_DIR}/photos -o ${WORK_DIR}/amp_${amp} ${model_args} --steps 2
        --amp ${amp})
  if(NOT last_output MATCHES "done: 2 steps")
    message(FATAL_ERROR "--amp ${amp} did not finish")
  endif()
endforeach()
