// The math of the whitening ops, shared by the CPU and CUDA kernels: the masked BSW reduction and
// its gradient, and Lloyd's 1-D k-means on sorted values (for the background-selective mask).
#pragma once

#include "common.h"

namespace mgid {

// ---- BSW loss: sum_i M_i (|S1_i| + |S2_i|) / (B * sum_i M_i), 0 for an empty mask. ----

template <typename T, typename A>
MGID_HD void bsw_tile_sums(int64_t begin, int64_t end, const T* cov1, const T* cov2, const bool* mask, A* total,
                           A* count) {
  A t = 0, n = 0;
  for (int64_t i = begin; i < end; ++i) {
    if (!mask[i]) continue;
    const A a = static_cast<A>(cov1[i]);
    const A b = static_cast<A>(cov2[i]);
    t += (a < A(0) ? -a : a) + (b < A(0) ? -b : b);
    n += A(1);
  }
  *total = t;
  *count = n;
}

// A tile of kElementTile elements is kElementLanes runs (one per GPU thread), each summed in
// order, then the run totals are added in lane order: the same arithmetic on both devices.
constexpr int kElementLanes = 256;
constexpr int kElementsPerLane = kElementTile / kElementLanes;

MGID_HD void lane_range(int64_t tile, int lane, int64_t n, int64_t* begin, int64_t* end) {
  const int64_t b = tile * kElementTile + static_cast<int64_t>(lane) * kElementsPerLane;
  *begin = b < n ? b : n;
  *end = b + kElementsPerLane < n ? b + kElementsPerLane : n;
}

template <typename T, typename A>
MGID_HD void bsw_tile_reduce(int64_t tile, int64_t n, const T* cov1, const T* cov2, const bool* mask, A* total,
                             A* count) {
  A t = 0, c = 0;
  for (int lane = 0; lane < kElementLanes; ++lane) {
    int64_t b, e;
    lane_range(tile, lane, n, &b, &e);
    A lt, lc;
    bsw_tile_sums(b, e, cov1, cov2, mask, &lt, &lc);
    t += lt;
    c += lc;
  }
  *total = t;
  *count = c;
}

template <typename A>
MGID_HD A bsw_loss_value(A total, A count, int64_t batch) {
  return count > A(0) ? total / (static_cast<A>(batch) * count) : A(0);
}

template <typename A>
MGID_HD A sign_of(A v) {
  return v > A(0) ? A(1) : (v < A(0) ? A(-1) : A(0));
}

// d loss / d cov at element i, given the upstream gradient ``g`` and the selected count.
template <typename T, typename A>
MGID_HD A bsw_grad_element(const T* cov, const bool* mask, int64_t i, A g, A count, int64_t batch) {
  if (!mask[i] || !(count > A(0))) return A(0);
  return g * sign_of(static_cast<A>(cov[i])) / (static_cast<A>(batch) * count);
}

// ---- 1-D k-means by Lloyd iterations on sorted values x[0..n) with prefix sums P[0..n]. ----
// Cluster j is the run [b_{j-1}, b_j) of the sorted values (b_{-1} = 0, b_{k-1} = n); the
// boundary with the next cluster is the first value above the midpoint of the two centres.

// First index i in [0, n) with x[i] > v, n if none.
MGID_HD int64_t upper_bound_sorted(const double* x, int64_t n, double v) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (x[mid] > v)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

// Seed: centre j is the mean of the j-th of k equal-count quantile segments; its end boundary.
MGID_HD int64_t lloyd_seed_end(int j, int k, int64_t n) {
  return (static_cast<int64_t>(j) + 1) * n / k;
}

MGID_HD double segment_mean(const double* prefix, int64_t begin, int64_t end, double fallback) {
  return end > begin ? (prefix[end] - prefix[begin]) / static_cast<double>(end - begin) : fallback;
}

// New boundary after cluster j (j < k - 1) from the centres.
MGID_HD int64_t lloyd_boundary(const double* x, int64_t n, const double* centers, int j) {
  return upper_bound_sorted(x, n, (centers[j] + centers[j + 1]) / 2);
}

// Threshold: the largest value of the lowest cluster (ending at ``first_end``), -inf if empty.
MGID_HD double lowest_cluster_threshold(const double* x, int64_t first_end) {
  return first_end > 0 ? x[first_end - 1] : neg_inf<double>();
}

}  // namespace mgid
