// Shared by the C++ CPU kernels and the CUDA kernels: the math of every op is written once, in
// MGID_HD functions, so the CPU tests on GPU-less machines exercise the kernels' arithmetic.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

// Always inlined: the CPU kernels need the loops over lanes inlined into their callers to vectorise
// them (an out-of-line copy measured 5x slower).
#if defined(__CUDACC__)
#define MGID_HD __host__ __device__ __forceinline__
#else
#define MGID_HD inline __attribute__((always_inline))
#endif

#define MGID_STR_IMPL(x) #x
#define MGID_STR(x) MGID_STR_IMPL(x)

namespace mgid {

// Score arrays of one query (one entry per memory item) live in registers / local memory.
constexpr int kMaxItems = 256;
// Neighbouring queries the CPU kernels process together (vectorised over them); 1 on the GPU.
constexpr int kCpuLanes = 32;  // 32 floats: whole cache lines per channel row (8 measured 2.6x slower)
// Queries per tile: the unit of the update and loss reductions, on the CPU (one task) and on the
// GPU (one block). A fixed tile makes the summation order independent of the thread count.
constexpr int kQueryTile = 128;
// Elements per tile of the BSW loss reduction.
constexpr int kElementTile = 1024;
// 1-D k-means of the BSW mask (whitening_math.h): the grid of its dynamic programme, and Lloyd's
// iteration cap; on the GPU one block of kKmeansThreads threads runs it, one thread per cluster in
// the Lloyd stage (so k <= kKmeansThreads). mgid/ops/reference.py repeats these numbers.
constexpr int64_t kKmeansGrid = 1024;
constexpr int64_t kKmeansGridTail = 512;
constexpr int kKmeansThreads = 1024;
constexpr int kLloydMaxIter = 300;

constexpr double kNormEps = 1e-12;      // F.normalize's eps
constexpr double kTripletMargin = 1.0;  // MNAD separateness margin
constexpr double kTripletEps = 1e-6;    // torch.pairwise_distance eps of TripletMarginLoss
constexpr double kCovEps = 1e-5;        // ridge added to every covariance (public code)

template <typename A>
MGID_HD A msqrt(A x) {
#if defined(__CUDA_ARCH__)
  return sqrt(x);
#else
  return std::sqrt(x);
#endif
}

template <typename A>
MGID_HD A mexp(A x) {
#if defined(__CUDA_ARCH__)
  return exp(x);
#else
  return std::exp(x);
#endif
}

template <typename A>
MGID_HD A neg_inf() {
  return -std::numeric_limits<A>::infinity();
}

}  // namespace mgid
