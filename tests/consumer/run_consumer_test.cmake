# Installs east into a scratch prefix, then configures, builds and runs a consumer project
# that only knows find_package(east).
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})
function(run)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "command failed (${rc}): ${ARGV}\n${out}\n${err}")
  endif()
endfunction()
run(${CMAKE_COMMAND} -S ${EAST_SOURCE_DIR} -B ${WORK_DIR}/east-build -DEAST_BUILD_TESTS=OFF
    -DEAST_BUILD_EXAMPLES=OFF -DEAST_BUILD_BENCHMARKS=OFF -DEAST_CUDA=OFF -DCMAKE_INSTALL_PREFIX=${WORK_DIR}/prefix)
run(${CMAKE_COMMAND} --install ${WORK_DIR}/east-build)
run(${CMAKE_COMMAND} -S ${EAST_SOURCE_DIR}/tests/consumer -B ${WORK_DIR}/consumer-build
    -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix)
run(${CMAKE_COMMAND} --build ${WORK_DIR}/consumer-build)
run(${WORK_DIR}/consumer-build/consumer)
if(EXISTS ${WORK_DIR}/consumer-build/consumer_full)
  run(${WORK_DIR}/consumer-build/consumer_full)
endif()

# add_subdirectory: east's options default off when it is not the top-level project, so its
# tests, examples, benchmarks, Torch and CUDA are neither configured nor built.
execute_process(COMMAND ${CMAKE_COMMAND} -S ${EAST_SOURCE_DIR}/tests/consumer/subdirectory -B ${WORK_DIR}/subdir-build
                -DEAST_SOURCE_DIR=${EAST_SOURCE_DIR}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "add_subdirectory consumer: configure failed\n${out}\n${err}")
endif()
if(out MATCHES "Caffe2|Torch|CUDA compiler|libtorch")
  message(FATAL_ERROR "add_subdirectory consumer: east looked for Torch or CUDA as a dependency:\n${out}")
endif()
run(${CMAKE_COMMAND} --build ${WORK_DIR}/subdir-build)
execute_process(COMMAND ${CMAKE_COMMAND} --build ${WORK_DIR}/subdir-build --target help OUTPUT_VARIABLE targets)
if(targets MATCHES "test_controller|east-trainer|east_bench")
  message(FATAL_ERROR "add_subdirectory consumer: east added its own targets:\n${targets}")
endif()
run(${WORK_DIR}/subdir-build/consumer)
