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

// ---- 1-D k-means of sorted values x[0..n) (for the background-selective mask). ----
// A cluster is a run [a, b) of the sorted values. Two stages, both deterministic:
// 1. Exact dynamic programming over a grid of G + 1 candidate boundaries p_0 = 0 < ... < p_G = n:
//    D[l][g] = min_{h < g} D[l-1][h] + SSE(p_h, p_g), the leftmost minimiser kept for backtracking.
//    With n <= kKmeansGrid the grid is every position and the result is the optimal clustering
//    (the public code's kmeans1d). Larger inputs use kKmeansGrid - kKmeansGridTail equal-count
//    positions plus every one of the last kKmeansGridTail positions, where the sparse,
//    heavy-tailed top values form small clusters of their own.
// 2. Lloyd iterations from that partition (boundaries at the midpoints of adjacent centres) until
//    no boundary moves, which lets the grid-restricted boundaries settle on exact positions.
// Sums are of the values minus their mean ``mu`` (prefix sums P1 of x - mu and P2 of (x - mu)^2),
// which keeps SSE = P2 - P1^2 / len from cancelling.

MGID_HD int64_t kmeans_grid_size(int64_t n) {
  return n <= kKmeansGrid ? n : kKmeansGrid;
}

// Position of candidate boundary g in [0, G].
MGID_HD int64_t kmeans_grid_position(int64_t g, int64_t n, int64_t G) {
  if (G == n) return g;
  const int64_t head = G - kKmeansGridTail;  // equal-count candidates over the first n - tail values
  const int64_t head_n = n - kKmeansGridTail;
  return g <= head ? g * head_n / head : head_n + (g - head);
}

// Sum of squared deviations from the mean of the run [a, b).
MGID_HD double segment_sse(const double* p1, const double* p2, int64_t a, int64_t b) {
  if (b <= a) return 0.0;
  const double s = p1[b] - p1[a];
  const double v = (p2[b] - p2[a]) - s * s / static_cast<double>(b - a);
  return v > 0.0 ? v : 0.0;
}

// The grid, gathered once: pos[g] = kmeans_grid_position(g), q1[g] = p1[pos[g]], q2[g] = p2[pos[g]]
// for g in [0, G], so that a cell reads contiguous arrays.
MGID_HD void kmeans_grid_entry(int64_t g, int64_t n, int64_t G, const double* p1, const double* p2, int64_t* pos,
                               double* q1, double* q2) {
  const int64_t p = kmeans_grid_position(g, n, G);
  pos[g] = p;
  q1[g] = p1[p];
  q2[g] = p2[p];
}

// Sum of squared deviations of the run between grid candidates h < g (segment_sse on the grid).
MGID_HD double grid_sse(const int64_t* pos, const double* q1, const double* q2, int64_t h, int64_t g) {
  const double s = q1[g] - q1[h];
  const double v = (q2[g] - q2[h]) - s * s / static_cast<double>(pos[g] - pos[h]);
  return v > 0.0 ? v : 0.0;
}

// One cell of the dynamic programme: the best split of x[0, p_g) into l + 1 clusters whose last
// cluster starts at candidate h in [l, g); the leftmost minimiser wins ties.
MGID_HD double kmeans_dp_cell(int l, int64_t g, const double* d_prev, const int64_t* pos, const double* q1,
                              const double* q2, int32_t* best_h) {
  double best = d_prev[l] + grid_sse(pos, q1, q2, l, g);
  int32_t arg = l;
  for (int64_t h = l + 1; h < g; ++h) {
    const double v = d_prev[h] + grid_sse(pos, q1, q2, h, g);
    if (v < best) {
      best = v;
      arg = static_cast<int32_t>(h);
    }
  }
  *best_h = arg;
  return best;
}

// First index i in [0, n) with x[i] - mu > v, n if none (x sorted).
MGID_HD int64_t upper_bound_shifted(const double* x, int64_t n, double mu, double v) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (x[mid] - mu > v)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

// Mean (of x - mu) of the run [a, b); ``fallback`` for an empty run (the centre stays).
MGID_HD double segment_mean(const double* p1, int64_t a, int64_t b, double fallback) {
  return b > a ? (p1[b] - p1[a]) / static_cast<double>(b - a) : fallback;
}

// Lloyd: the boundary after cluster j (j < k - 1) for the current centres.
MGID_HD int64_t lloyd_boundary(const double* x, int64_t n, double mu, const double* centers, int j) {
  return upper_bound_shifted(x, n, mu, (centers[j] + centers[j + 1]) / 2);
}

// After the programme: walk the minimisers back from D[k-1][G], writing the k - 1 boundaries
// (positions) of the chosen partition. ``arg`` is k x (G + 1).
MGID_HD void kmeans_backtrack(const int32_t* arg, int k, int64_t G, const int64_t* pos, int64_t* bounds) {
  int64_t g = G;
  for (int l = k - 1; l >= 1; --l) {
    g = arg[static_cast<int64_t>(l) * (G + 1) + g];
    bounds[l - 1] = pos[g];
  }
}

// Threshold: the largest value of the lowest cluster (ending at ``first_end``), -inf if empty.
MGID_HD double lowest_cluster_threshold(const double* x, int64_t first_end) {
  return first_end > 0 ? x[first_end - 1] : neg_inf<double>();
}

}  // namespace mgid
