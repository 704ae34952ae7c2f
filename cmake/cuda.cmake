# east's optional CUDA backend: the header-only .cuh files under include/east/cuda, usable from
# code compiled by nvcc, through the INTERFACE target east::cuda (east::east + the CUDA runtime).
# Included by the root CMakeLists.txt when EAST_CUDA_ENABLED (AUTO: nvcc found).

# Architectures for east's own CUDA tests and benchmarks (consumers choose their own): A100 and
# H100 by default, few enough to keep CI compile time low. Must be set before enable_language.
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR "${CMAKE_CUDA_ARCHITECTURES}" STREQUAL "")
  set(CMAKE_CUDA_ARCHITECTURES "80;90" CACHE STRING "CUDA architectures east's CUDA tests and benchmarks are built for")
endif()
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
if(NOT DEFINED CMAKE_CUDA_STANDARD)
  set(CMAKE_CUDA_STANDARD 17)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
endif()

add_library(east_cuda INTERFACE)
add_library(east::cuda ALIAS east_cuda)
set_target_properties(east_cuda PROPERTIES EXPORT_NAME cuda)
# Installed consumers get CUDA::cudart when they have it (find_package(CUDAToolkit)); nvcc links
# the static runtime into CUDA executables anyway, so a consumer without it still links.
# (eastConfig.cmake does not find CUDAToolkit itself yet.)
target_link_libraries(east_cuda INTERFACE east
  $<BUILD_INTERFACE:CUDA::cudart>
  $<INSTALL_INTERFACE:$<$<TARGET_EXISTS:CUDA::cudart>:CUDA::cudart>>)
target_compile_features(east_cuda INTERFACE cuda_std_17)
target_compile_definitions(east_cuda INTERFACE EAST_HAS_CUDA=1)
install(TARGETS east_cuda EXPORT eastTargets)
message(STATUS "east: CUDA backend on (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, architectures ${CMAKE_CUDA_ARCHITECTURES})")

if(EAST_BUILD_BENCHMARKS AND EXISTS ${PROJECT_SOURCE_DIR}/benchmarks/cuda/bench_cuda.cu)
  add_executable(east_bench_cuda ${PROJECT_SOURCE_DIR}/benchmarks/cuda/bench_cuda.cu)
  target_link_libraries(east_bench_cuda PRIVATE east::cuda)
  target_compile_options(east_bench_cuda PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-O3 -lineinfo>)
endif()
