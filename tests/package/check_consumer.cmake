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

# With only pconv's location, as the README shows: the package finds the torch and the CUDA
# toolkit pconv was built with, and says where the default model is (the build tree: the source
# tree's; an install prefix: its own, where the command was installed).
function(consume label expected_model)
  set(build ${WORK_DIR}/${label})
  run(${CMAKE_COMMAND} -S ${CONSUMER_SOURCE_DIR} -B ${build} -G ${GENERATOR}
      -DCMAKE_BUILD_TYPE=Release ${ARGN})
  file(READ ${build}/default_model.txt model)
  if(NOT model STREQUAL expected_model)
    message(FATAL_ERROR "pconv_DEFAULT_MODEL is '${model}'; expected '${expected_model}'")
  endif()
  run(${CMAKE_COMMAND} --build ${build})
  run(${build}/consumer ${MODEL_FILE} ${build})
endfunction()

consume(build_tree "${MODEL_FILE}" -Dpconv_DIR=${PCONV_BUILD_DIR})
run(${CMAKE_COMMAND} --install ${PCONV_BUILD_DIR} --prefix ${prefix})
if(WITH_APP)
  set(installed_model ${prefix}/share/pconv/models/pconv-default.pt)
else()
  set(installed_model "")
endif()
consume(install_prefix "${installed_model}" -DCMAKE_PREFIX_PATH=${prefix})
# Another torch than pconv's is refused with a message that says which.
file(MAKE_DIRECTORY ${WORK_DIR}/other_torch)
file(WRITE ${WORK_DIR}/other_torch/TorchConfig.cmake "set(Torch_FOUND TRUE)\n")
file(WRITE ${WORK_DIR}/other_torch/TorchConfigVersion.cmake
     "set(PACKAGE_VERSION 1.0.0)\nset(PACKAGE_VERSION_COMPATIBLE TRUE)\n")
execute_process(COMMAND ${CMAKE_COMMAND} -S ${CONSUMER_SOURCE_DIR} -B ${WORK_DIR}/other_torch_build
                        -G ${GENERATOR} -Dpconv_DIR=${PCONV_BUILD_DIR}
                        -DTorch_DIR=${WORK_DIR}/other_torch
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
if(rc EQUAL 0 OR NOT out MATCHES "pconv was built with LibTorch [0-9.]+, but this project found 1.0.0")
  message(FATAL_ERROR "another torch was not refused as it should be (${rc}):\n${out}")
endif()
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
