# Builds tests/package/consumer twice: with pconv_DIR pointing at the build tree, and with
# CMAKE_PREFIX_PATH pointing at a fresh `cmake --install` prefix. Runs the program each time.
file(REMOVE_RECURSE ${WORK_DIR})
set(prefix ${WORK_DIR}/install)

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}\n${out}")
  endif()
  message("${out}")
endfunction()

function(consume label)
  set(build ${WORK_DIR}/${label})
  run(${CMAKE_COMMAND} -S ${CONSUMER_SOURCE_DIR} -B ${build} -G ${GENERATOR}
      -DCMAKE_BUILD_TYPE=Release -DTorch_DIR=${Torch_DIR} -DCUDAToolkit_ROOT=${CUDAToolkit_ROOT}
      ${ARGN})
  run(${CMAKE_COMMAND} --build ${build})
  run(${build}/consumer ${MODEL_FILE} ${build})
endfunction()

consume(build_tree -Dpconv_DIR=${PCONV_BUILD_DIR})
run(${CMAKE_COMMAND} --install ${PCONV_BUILD_DIR} --prefix ${prefix})
consume(install_prefix -DCMAKE_PREFIX_PATH=${prefix})
# The installed command (where the build has one) runs as it is: no LD_LIBRARY_PATH, its
# RPATH finds LibTorch; the default model is installed beside it.
if(WITH_APP)
  foreach(installed bin/pconv share/pconv/models/pconv-default.pt)
    if(NOT EXISTS ${prefix}/${installed})
      message(FATAL_ERROR "the install prefix has no ${installed}")
    endif()
  endforeach()
  execute_process(COMMAND ${CMAKE_COMMAND} -E env --unset=LD_LIBRARY_PATH ${prefix}/bin/pconv --version
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  message("installed pconv --version -> ${rc}: ${out}")
  if(NOT rc EQUAL 0 OR NOT out MATCHES "^pconv ${VERSION} \\(LibTorch")
    message(FATAL_ERROR "the installed pconv does not run")
  endif()
endif()
