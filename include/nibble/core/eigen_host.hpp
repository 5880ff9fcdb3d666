// Eigen, for nibble's host-only code (the GPTQ, AutoClip and AWQ solvers), includable from CUDA
// translation units.
//
// Under nvcc, Eigen's __host__ __device__ annotations draw warnings (#20012, #20013, #20015) that
// the CUDA header check (cuda/CMakeLists.txt: -Werror=all-warnings) turns into errors. Eigen's
// EIGEN_NO_CUDA exists for ".cu files for which Eigen is used on the host only" (Eigen's
// preprocessor directives page). It is set only when this header is the first to include Eigen,
// and only for that include: a CUDA TU that runs Eigen on the device includes Eigen before nibble.
#pragma once

#if defined(__CUDACC__) && !defined(EIGEN_CORE_H) && !defined(EIGEN_NO_CUDA)
#define EIGEN_NO_CUDA
#define NIBBLE_DEFINED_EIGEN_NO_CUDA
#endif
#include <Eigen/Dense>
#if defined(NIBBLE_DEFINED_EIGEN_NO_CUDA)
#undef EIGEN_NO_CUDA
#undef NIBBLE_DEFINED_EIGEN_NO_CUDA
#endif
