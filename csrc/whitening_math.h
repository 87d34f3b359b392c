// The math of the whitening ops, shared by the CPU and CUDA kernels: the masked BSW reduction and
// its gradient, and Lloyd's 1-D k-means on sorted values (for the background-selective mask).
#pragma once

#include "common.h"

namespace mgid {

// ---- BSW loss: sum_i M_i (|S1_i| + |S2_i|) / (B * sum_i M_i), 0 for an empty mask. ----

template <typename T, typename A>
MGID_HD void bsw_tile_sums(int64_t begin, int64_t end, const T* cov1, const T* cov2, const bool* mask, A* total,
                           A* count) {
  A abs_sum = 0, selected = 0;
  for (int64_t i = begin; i < end; ++i) {
    if (!mask[i]) continue;
    const A cov1_value = static_cast<A>(cov1[i]);
    const A cov2_value = static_cast<A>(cov2[i]);
    abs_sum += (cov1_value < A(0) ? -cov1_value : cov1_value) + (cov2_value < A(0) ? -cov2_value : cov2_value);
    selected += A(1);
  }
  *total = abs_sum;
  *count = selected;
}

// A tile of kElementTile elements is kElementLanes runs (one per GPU thread), each summed in
// order, then the run totals are added in lane order: the same arithmetic on both devices.
constexpr int kElementLanes = 256;
constexpr int kElementsPerLane = kElementTile / kElementLanes;

MGID_HD void lane_range(int64_t tile, int lane, int64_t n, int64_t* begin, int64_t* end) {
  const int64_t first = tile * kElementTile + static_cast<int64_t>(lane) * kElementsPerLane;
  *begin = first < n ? first : n;
  *end = first + kElementsPerLane < n ? first + kElementsPerLane : n;
}

template <typename T, typename A>
MGID_HD void bsw_tile_reduce(int64_t tile, int64_t n, const T* cov1, const T* cov2, const bool* mask, A* total,
                             A* count) {
  A abs_sum = 0, selected = 0;
  for (int lane = 0; lane < kElementLanes; ++lane) {
    int64_t lane_begin, lane_end;
    lane_range(tile, lane, n, &lane_begin, &lane_end);
    A lane_total, lane_count;
    bsw_tile_sums(lane_begin, lane_end, cov1, cov2, mask, &lane_total, &lane_count);
    abs_sum += lane_total;
    selected += lane_count;
  }
  *total = abs_sum;
  *count = selected;
}

template <typename A>
MGID_HD A bsw_loss_value(A total, A count, int64_t batch) {
  return count > A(0) ? total / (static_cast<A>(batch) * count) : A(0);
}

template <typename A>
MGID_HD A sign_of(A v) {
  return v > A(0) ? A(1) : (v < A(0) ? A(-1) : A(0));
}

// d loss / d cov at element i, given the upstream gradient ``grad`` and the selected count.
template <typename T, typename A>
MGID_HD A bsw_grad_element(const T* cov, const bool* mask, int64_t i, A grad, A count, int64_t batch) {
  if (!mask[i] || !(count > A(0))) return A(0);
  return grad * sign_of(static_cast<A>(cov[i])) / (static_cast<A>(batch) * count);
}

// ---- 1-D k-means of sorted values x[0..n) (for the background-selective mask). ----
// A cluster is a run [a, b) of the sorted values. Two stages, both deterministic:
// 1. Exact dynamic programming over a grid of G + 1 candidate boundaries p_0 = 0 < ... < p_G = n:
//    D[l][g] = min_{h < g} D[l-1][h] + SSE(p_h, p_g), the leftmost minimiser kept for backtracking
//    (each layer by a certified divide and conquer over its cells, below: the full scan's minima).
//    With n <= kKmeansGrid the grid is every position and the result is the optimal clustering
//    (the public code's kmeans1d). Larger inputs use kKmeansGrid - kKmeansGridTail equal-count
//    positions plus every one of the last kKmeansGridTail positions, where the sparse,
//    heavy-tailed top values form small clusters of their own.
// 2. Lloyd iterations from that partition (boundaries at the midpoints of adjacent centres) until
//    no boundary moves, which lets the grid-restricted boundaries settle on exact positions.
// Sums are of the values minus their mean ``mu`` (prefix sums P1 of x - mu and P2 of (x - mu)^2),
// which keeps SSE = P2 - P1^2 / len from cancelling.

MGID_HD int64_t kmeans_grid_size(int64_t n) { return n <= kKmeansGrid ? n : kKmeansGrid; }

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
  const double run_sum = p1[b] - p1[a];
  const double sse = (p2[b] - p2[a]) - run_sum * run_sum / static_cast<double>(b - a);
  return sse > 0.0 ? sse : 0.0;
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
  const double run_sum = q1[g] - q1[h];
  const double sse = (q2[g] - q2[h]) - run_sum * run_sum / static_cast<double>(pos[g] - pos[h]);
  return sse > 0.0 ? sse : 0.0;
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

// ---- Each layer of the programme by divide and conquer, certified equal to the full scan. ----
// Layer l's cells are g in [l + 1, G]; cell g's last cluster starts at a candidate h in [l, g) and its
// value is the leftmost minimum over h of v(h, g) = d_prev[h] + grid_sse(h, g) (the full scan, which
// the PyTorch reference does: O(G^2) a layer). In exact arithmetic the minimiser opt(g) is
// non-decreasing in g (SSE of sorted values satisfies the quadrangle inequality), so the cells form an
// implicit binary tree: node [lo, hi] computes its mid g = (lo + hi) / 2 from the candidates
// [hlo, hhi] = [opt(lo - 1), min(g - 1, opt(hi + 1))] only (cells lo - 1 and hi + 1 are mids of
// ancestors; l and g - 1 where they fall outside the layer), and its children are [lo, g - 1] and
// [g + 1, hi]: O(G log G) candidates a layer. A tree level reads only what earlier levels wrote, so
// the nodes of a level are independent (the CPU's parallel_for, the GPU block's threads).
//
// Floating point: the computed v satisfy the quadrangle inequality only up to rounding, and on ties
// (duplicates, runs of near-equal values whose SSE is rounding noise) the full scan's minimiser is
// not monotone, so a plain divide and conquer can miss it. Each cell therefore carries a
// certificate that nothing outside its range beats it, and scans [l, g) in full where that fails:
// - the scan of [hlo, hhi] also returns the smallest value left of its minimiser (margin lambda =
//   that - min, > 0) and right of it (rho >= 0);
// - quadrangle inequality for h < a1 = opt(g1), g1 = lo - 1 < g: v(h, g) - v(a1, g) >= v(h, g1) -
//   v(a1, g1) - tau >= lambda(g1) - tau, so every skipped h < hlo is worse than the minimum m by
//   at least (v(hlo, g) - m) + lambda(g1) - tau; the right side likewise with rho(g2), g2 = hi + 1;
// - tau (kmeans_dc_tolerance) bounds how far the computed values violate the inequality: v(h, g)
//   is d_prev[h] + SSE(h, g) of the sorted floats y = x - mu exactly, plus terms that depend on h
//   alone or on g alone (they cancel in the inequality), plus the rounding of the last operations,
//   of the prefix sums p1 (through s^2 / len) and of the clamp at 0; first order in the unit
//   roundoff, for any summation order of the prefix sums (sequential on the CPU, a scan on the GPU).
// A certified cell and a fully scanned one have the value and minimiser of the full scan, bit for
// bit, so every layer, the backtrack and the threshold equal the reference's whatever the rounding
// (finite inputs; NaN or inf fail every certificate, and those cells scan in full as before). On
// tie-heavy inputs tau = 0 gives many cells that differ from the full scan, tau / 1000 none (the
// bound is loose). Training-shape variances fall back in ~500 of the ~49,000 cells of a call;
// inputs made of a few repeated values in most cells (the old O(k G^2) cost).

// A partial or complete minimum of one cell: the smallest value v at candidate h (leftmost), and the
// smallest values among the scanned candidates left and right of h (+inf if none).
struct KmeansMin {
  double v, left, right;
  int64_t h;
};

// v(h, g), as every scan computes it.
MGID_HD double kmeans_dp_value(int64_t h, int64_t g, const double* d_prev, const int64_t* pos, const double* q1,
                               const double* q2) {
  return d_prev[h] + grid_sse(pos, q1, q2, h, g);
}

// Leftmost minimum of v(h, g) over h = h0, h0 + stride, ... <= h1 (the whole range with stride 1, a
// thread's share of it in a cooperative scan). None: +inf at h1 + 1. ``ends``, if given, receives
// the first and the last value scanned (with stride 1: v(h0, g) and v(h1, g)).
MGID_HD KmeansMin kmeans_dp_scan(int64_t g, int64_t h0, int64_t h1, int64_t stride, const double* d_prev,
                                 const int64_t* pos, const double* q1, const double* q2, double* ends = nullptr) {
  const double inf = std::numeric_limits<double>::infinity();
  KmeansMin m{inf, inf, inf, h1 + 1};
  if (h0 > h1) return m;
  m.v = kmeans_dp_value(h0, g, d_prev, pos, q1, q2);
  m.h = h0;
  double value = m.v;
  if (ends != nullptr) ends[0] = value;
  for (int64_t h = h0 + stride; h <= h1; h += stride) {
    value = kmeans_dp_value(h, g, d_prev, pos, q1, q2);
    if (value < m.v) {
      m.left = m.v;  // the old minimum is the smallest value left of h
      m.right = inf;
      m.v = value;
      m.h = h;
    } else {
      m.right = value < m.right ? value : m.right;
    }
  }
  if (ends != nullptr) ends[1] = value;
  return m;
}

// Merge the minimum of another, disjoint set of candidates into *m (the smaller value, then the
// smaller candidate). The loser's values lie at or above its minimum; which of them fall left of the
// winner is not known when the two sets interleave, so the merged left / right values are lower
// bounds (never above the true ones), which keeps the certificate sound.
MGID_HD void kmeans_min_combine(KmeansMin* m, const KmeansMin& other) {
  const bool other_wins = other.v < m->v || (other.v == m->v && other.h < m->h);
  const KmeansMin winner = other_wins ? other : *m;
  const KmeansMin loser = other_wins ? *m : other;
  KmeansMin merged = winner;
  const double lo_side = loser.h < winner.h ? loser.v : loser.left;   // the loser's values left of w.h are >= this
  const double hi_side = loser.h < winner.h ? loser.right : loser.v;  // ... and right of w.h
  merged.left = lo_side < winner.left ? lo_side : winner.left;
  merged.right = hi_side < winner.right ? hi_side : winner.right;
  *m = merged;
}

MGID_HD int64_t kmeans_dc_mid(int64_t lo, int64_t hi) { return (lo + hi) / 2; }

// Levels of the tree over ``cells`` cells: the bit length of ``cells`` (0 for none).
MGID_HD int kmeans_dc_levels(int64_t cells) {
  int levels = 0;
  for (; cells > 0; cells >>= 1) ++levels;
  return levels;
}

// Node ``i`` in [0, 2^t) of tree level t over the cells [first, last]: descend from the root along
// the bits of i, most significant first (0 = left child). False if that node is empty.
MGID_HD bool kmeans_dc_node(int64_t first, int64_t last, int t, int64_t i, int64_t* lo, int64_t* hi) {
  int64_t node_lo = first, node_hi = last;
  for (int bit = t - 1; bit >= 0 && node_lo <= node_hi; --bit) {
    const int64_t mid = kmeans_dc_mid(node_lo, node_hi);
    if ((i >> bit) & 1)
      node_lo = mid + 1;
    else
      node_hi = mid - 1;
  }
  *lo = node_lo;
  *hi = node_hi;
  return node_lo <= node_hi;
}

// The candidates [*hlo, *hhi] of node [lo, hi]'s mid in layer l, from the minimisers ``arg_l`` (row l
// of ``arg``) that earlier tree levels wrote. Empty (hlo > hhi) where those are not monotone.
MGID_HD void kmeans_dc_range(int l, int64_t lo, int64_t hi, int64_t G, const int32_t* arg_l, int64_t* hlo,
                             int64_t* hhi) {
  const int64_t g = kmeans_dc_mid(lo, hi);
  *hlo = lo > l + 1 ? static_cast<int64_t>(arg_l[lo - 1]) : static_cast<int64_t>(l);
  const int64_t right = hi < G ? static_cast<int64_t>(arg_l[hi + 1]) : g - 1;
  *hhi = right < g - 1 ? right : g - 1;
}

// tau of the certificate, from the inputs, first order in the unit roundoff u (n u << 1). Q = p2[n]
// bounds every prefix sum of y^2, so every q2 difference, SSE and (with a factor 2) D value. y is
// sorted, so its exact prefix sums fall until y turns positive, then rise to sum(y) ~ 0: every run
// sum of y is at most |p1[turn]| + |p1[n]| (first order), of y^2 at most Q, and as any summation
// order adds at most n partial (run) sums, E1 = u n (|p1[turn]| + |p1[n]|) and E2 = u n Q (times
// 1.001) bound the rounding error of every prefix sum of y and of y^2 (sequential on the CPU, a scan
// on the GPU). Per value v(h, g): the last operations err by at most 23 u Q < 32 u Q; s = sum + e
// with |e| <= 2 E1 adds 2 mean(h, g) e + e^2 / len to s^2 / len; the clamp at 0 moves a value by at
// most its other errors plus the u Q + 2 E2 that the q2 difference holds besides the run's sum of
// y^2 (a part that, like d_prev[h], depends on h alone or g alone and cancels in the inequality).
// Over the positions spanned by the inequality's four runs, with R the range of y there (bounding
// the differences of the runs' means) and Ys the largest |y| (both from the span's ends, y sorted),
// the four values violate it by at most 8 E1 R + 16 Ys E1 + 32 E1^2 + 260 u Q + 8 E2; tau is twice
// that: base + per_range R + per_y Ys. Ys and R are small among the crowded low values, where
// rounding ties occur.
struct KmeansTolerance {
  double base, per_range, per_y;
};

MGID_HD KmeansTolerance kmeans_dc_tolerance(const double* x, const double* p1, const double* p2, int64_t n, double mu) {
  const double u = 1.1102230246251565e-16;  // 2^-53
  const double n_double = static_cast<double>(n);
  const double Q = p2[n];
  const int64_t turn = upper_bound_shifted(x, n, mu, 0.0);  // first y > 0
  const double abs_p1_turn = p1[turn] < 0.0 ? -p1[turn] : p1[turn];
  const double abs_p1_end = p1[n] < 0.0 ? -p1[n] : p1[n];
  const double E1 = 1.001 * u * n_double * (abs_p1_turn + abs_p1_end), E2 = 1.001 * u * n_double * Q;
  return KmeansTolerance{64.0 * E1 * E1 + 520.0 * u * Q + 16.0 * E2, 16.0 * E1, 32.0 * E1};
}

// tau for an inequality whose runs lie in the positions [p0, p1), p0 < p1.
MGID_HD double kmeans_dc_tau(const KmeansTolerance& tol, const double* x, double mu, int64_t p0, int64_t p1) {
  const double y_first = x[p0] - mu, y_last = x[p1 - 1] - mu;  // y sorted: ya <= yb
  const double abs_first = y_first < 0.0 ? -y_first : y_first, abs_last = y_last < 0.0 ? -y_last : y_last;
  return tol.base + tol.per_range * (y_last - y_first) + tol.per_y * (abs_first > abs_last ? abs_first : abs_last);
}

// The certificate of node [lo, hi]'s mid g after the scan ``m`` of its candidates [hlo, hhi], whose
// values at hlo and hhi are v_lo and v_hi: turn m's left / right values into margins (value -
// minimum) and extend them to the skipped candidates with the margins ``lam`` / ``rho`` of cells
// lo - 1 / hi + 1. False (scan [l, g) in full) if the range is empty or a skipped candidate might be
// as good (left) or better (right).
MGID_HD bool kmeans_dc_certify(int l, int64_t lo, int64_t hi, int64_t hlo, int64_t hhi, double v_lo, double v_hi,
                               const int64_t* pos, const double* lam, const double* rho, const double* x, double mu,
                               const KmeansTolerance& tol, KmeansMin* m) {
  const int64_t g = kmeans_dc_mid(lo, hi);
  if (hlo > hhi) return false;
  m->left -= m->v;
  m->right -= m->v;
  bool ok = true;
  if (hlo > l) {  // [l, hlo) skipped, hlo = opt(lo - 1): runs within positions [pos[l], pos[g])
    const double bound = (v_lo - m->v) + lam[lo - 1] - kmeans_dc_tau(tol, x, mu, pos[l], pos[g]);
    ok = ok && bound > 0.0;
    m->left = bound < m->left ? bound : m->left;
  }
  if (hhi < g - 1) {  // (hhi, g) skipped, hhi = opt(hi + 1): runs within [pos[hhi], pos[hi + 1])
    const double bound = (v_hi - m->v) + rho[hi + 1] - kmeans_dc_tau(tol, x, mu, pos[hhi], pos[hi + 1]);
    ok = ok && bound >= 0.0;
    m->right = bound < m->right ? bound : m->right;
  }
  return ok;
}

// The full scan's margins (every candidate scanned).
MGID_HD void kmeans_min_margins(KmeansMin* m) {
  m->left -= m->v;
  m->right -= m->v;
}

// Record cell g: D[l][g], its minimiser in arg row l, and its margins.
MGID_HD void kmeans_dp_store(int64_t g, const KmeansMin& m, double* d_cur, int32_t* arg_l, double* lam, double* rho) {
  d_cur[g] = m.v;
  arg_l[g] = static_cast<int32_t>(m.h);
  lam[g] = m.left;
  rho[g] = m.right;
}

// One node of layer l's tree by one thread: the range, the scan, the certificate (else the full
// scan), the store.
MGID_HD void kmeans_dc_cell(int l, int64_t lo, int64_t hi, int64_t G, const double* d_prev, const int64_t* pos,
                            const double* q1, const double* q2, const double* x, double mu, const KmeansTolerance& tol,
                            double* d_cur, int32_t* arg_l, double* lam, double* rho) {
  const int64_t g = kmeans_dc_mid(lo, hi);
  int64_t hlo, hhi;
  kmeans_dc_range(l, lo, hi, G, arg_l, &hlo, &hhi);
  double ends[2] = {0.0, 0.0};  // v(hlo, g), v(hhi, g)
  KmeansMin m = kmeans_dp_scan(g, hlo, hhi, 1, d_prev, pos, q1, q2, ends);
  if (!kmeans_dc_certify(l, lo, hi, hlo, hhi, ends[0], ends[1], pos, lam, rho, x, mu, tol, &m)) {
    m = kmeans_dp_scan(g, l, g - 1, 1, d_prev, pos, q1, q2);
    kmeans_min_margins(&m);
  }
  kmeans_dp_store(g, m, d_cur, arg_l, lam, rho);
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
