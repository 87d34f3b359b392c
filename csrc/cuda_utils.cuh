// Launch helpers of the CUDA kernels (host side). Kept apart from the shared math headers.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include "common.h"

namespace mgid {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Dynamic shared memory above the default 48 KiB must be opted into per kernel; fail with the
// sizes when even the device's opt-in limit is too small.
template <typename Kernel>
inline void allow_shared_memory(Kernel kernel, size_t bytes, const char* what) {
  if (bytes <= 48 * 1024) return;
  int device = 0, optin = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  TORCH_CHECK(bytes <= static_cast<size_t>(optin), "mgid: ", what, " needs ", bytes,
              " bytes of shared memory per block, the device allows ", optin,
              "; use fewer memory items or float32 instead of float64");
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

// Aligned base of the dynamic shared memory, typed.
template <typename A>
__device__ __forceinline__ A* shared_base() {
  extern __shared__ __align__(16) unsigned char mgid_shared_raw[];
  return reinterpret_cast<A*>(mgid_shared_raw);
}

}  // namespace mgid
