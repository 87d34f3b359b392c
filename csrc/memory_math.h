// The math of the memory ops, per query and per tile, shared by the CPU and CUDA kernels.
//
// Layout: the query tensor is NCHW, (B, C, H, W) contiguous. Query n (n = b*HW + p, p the pixel)
// has its channel c at q[query_offset(n) + c*HW]: a query is a strided C-vector, and consecutive
// queries are consecutive addresses (coalesced on the GPU). Items come transposed, (C, M) row-major
// (items[c*M + m] = P[m, c]), in the accumulation type A (float for half/bfloat16/float, double for
// double), so that the loop over items is contiguous (vectorised on the CPU, broadcast on the GPU).
#pragma once

#include "common.h"

namespace mgid {

MGID_HD int64_t query_offset(int64_t n, int64_t hw, int64_t C) {
  return (n / hw) * C * hw + (n % hw);
}

// 1 / max(||q||, eps); ``norm`` receives ||q||.
template <typename T, typename A>
MGID_HD A query_inv_norm(const T* q, int64_t stride, int64_t C, A* norm) {
  A ss = 0;
  for (int64_t c = 0; c < C; ++c) {
    const A v = static_cast<A>(q[c * stride]);
    ss += v * v;
  }
  const A n = msqrt(ss);
  *norm = n;
  return A(1) / (n <= A(kNormEps) ? A(kNormEps) : n);  // a NaN norm stays NaN
}

// s[m] = q_hat . P[m] (cosine similarity).
template <typename T, typename A>
MGID_HD void query_scores(const T* q, int64_t stride, int64_t C, const A* items, int M, A inv, A* s) {
  for (int m = 0; m < M; ++m) s[m] = 0;
  for (int64_t c = 0; c < C; ++c) {
    const A v = static_cast<A>(q[c * stride]) * inv;
    for (int m = 0; m < M; ++m) s[m] += v * items[c * M + m];
  }
}

// Index of the largest score; the first one on ties (as torch.argmax).
template <typename A>
MGID_HD int argmax_first(const A* s, int M) {
  int best = 0;
  for (int m = 1; m < M; ++m)
    if (s[m] > s[best]) best = m;
  return best;
}

// Index of the largest score other than ``first`` (M >= 2).
template <typename A>
MGID_HD int argmax_second(const A* s, int M, int first) {
  int best = first == 0 ? 1 : 0;
  for (int m = best + 1; m < M; ++m)
    if (m != first && s[m] > s[best]) best = m;
  return best;
}

// Row softmax over items, in place.
template <typename A>
MGID_HD void softmax_inplace(A* s, int M) {
  A mx = s[argmax_first(s, M)];
  A sum = 0;
  for (int m = 0; m < M; ++m) {
    s[m] = mexp(s[m] - mx);
    sum += s[m];
  }
  const A inv = A(1) / sum;
  for (int m = 0; m < M; ++m) s[m] *= inv;
}

// Memory read of one query: out_qhat[c] = q_hat_c, out_read[c] = sum_m softmax(s)_m P[m, c].
// ``s`` is scratch of M entries.
template <typename T, typename A>
MGID_HD void read_forward_query(const T* q, T* out_qhat, T* out_read, int64_t stride, int64_t C,
                                const A* items, int M, A* s) {
  A norm;
  const A inv = query_inv_norm(q, stride, C, &norm);
  query_scores(q, stride, C, items, M, inv, s);
  softmax_inplace(s, M);
  for (int64_t c = 0; c < C; ++c) {
    A r = 0;
    for (int m = 0; m < M; ++m) r += s[m] * items[c * M + m];
    out_qhat[c * stride] = static_cast<T>(static_cast<A>(q[c * stride]) * inv);
    out_read[c * stride] = static_cast<T>(r);
  }
}

// Backward of y = x / max(||x||, eps) for one query, given the gradient g(c) on y as a functor:
// dx = (g - y (y.g)) / ||x|| where ||x|| > eps, g / eps where the norm is clamped.
template <typename T, typename A, typename GradFn>
MGID_HD void normalize_backward_query(const T* q, T* dq, int64_t stride, int64_t C, A norm, A inv,
                                      const GradFn& g) {
  if (norm >= A(kNormEps)) {
    A dot = 0;
    for (int64_t c = 0; c < C; ++c) dot += static_cast<A>(q[c * stride]) * inv * g(c);
    for (int64_t c = 0; c < C; ++c) {
      const A y = static_cast<A>(q[c * stride]) * inv;
      dq[c * stride] = static_cast<T>((g(c) - y * dot) * inv);
    }
  } else {
    for (int64_t c = 0; c < C; ++c) dq[c * stride] = static_cast<T>(g(c) * inv);
  }
}

// Backward of the read for one query. g_qhat / g_read: the gradient on the two output halves.
// Without grad_through_weights the read half is detached (public MNAD) and only g_qhat flows.
// With it, ds_m = w_m (g_read.P[m] - sum_j w_j g_read.P[j]) and q_hat gets sum_m ds_m P[m].
// ``w`` and ``ds`` are scratch of M entries.
template <typename T, typename A>
MGID_HD void read_backward_query(const T* q, const T* g_qhat, const T* g_read, T* dq, int64_t stride,
                                 int64_t C, const A* items, int M, bool grad_through_weights, A* w,
                                 A* ds) {
  A norm;
  const A inv = query_inv_norm(q, stride, C, &norm);
  if (grad_through_weights) {
    query_scores(q, stride, C, items, M, inv, w);
    softmax_inplace(w, M);
    for (int m = 0; m < M; ++m) ds[m] = 0;
    for (int64_t c = 0; c < C; ++c) {
      const A gr = static_cast<A>(g_read[c * stride]);
      for (int m = 0; m < M; ++m) ds[m] += gr * items[c * M + m];
    }
    A wsum = 0;
    for (int m = 0; m < M; ++m) wsum += w[m] * ds[m];
    for (int m = 0; m < M; ++m) ds[m] = w[m] * (ds[m] - wsum);
  }
  auto g = [&](int64_t c) -> A {
    A v = static_cast<A>(g_qhat[c * stride]);
    if (grad_through_weights)
      for (int m = 0; m < M; ++m) v += ds[m] * items[c * M + m];
    return v;
  };
  normalize_backward_query(q, dq, stride, C, norm, inv, g);
}

// Per-query terms of the memory losses before averaging:
// compactness sum_c (q_hat_c - P[top1, c])^2 and the triplet hinge
// max(||q_hat - P[top1] + eps|| - ||q_hat - P[top2] + eps|| + margin, 0).
template <typename A>
struct LossTerms {
  A compact;
  A triplet;
  A d_pos;  // ||q_hat - P[top1] + eps||
  A d_neg;  // ||q_hat - P[top2] + eps||
  int top1;
  int top2;
};

template <typename T, typename A>
MGID_HD LossTerms<A> loss_terms_query(const T* q, int64_t stride, int64_t C, const A* items, int M, A inv,
                                      A* s) {
  LossTerms<A> t;
  query_scores(q, stride, C, items, M, inv, s);
  t.top1 = argmax_first(s, M);
  t.top2 = argmax_second(s, M, t.top1);
  A comp = 0, dp2 = 0, dn2 = 0;
  for (int64_t c = 0; c < C; ++c) {
    const A y = static_cast<A>(q[c * stride]) * inv;
    const A dp = y - items[c * M + t.top1];
    const A ep = dp + A(kTripletEps);
    const A en = y - items[c * M + t.top2] + A(kTripletEps);
    comp += dp * dp;
    dp2 += ep * ep;
    dn2 += en * en;
  }
  t.compact = comp;
  t.d_pos = msqrt(dp2);
  t.d_neg = msqrt(dn2);
  const A hinge = t.d_pos - t.d_neg + A(kTripletMargin);
  t.triplet = hinge > A(0) ? hinge : A(0);
  return t;
}

// Backward of the losses for one query. gc = dL/dcompactness / (N*C), gs = dL/dseparateness / N.
template <typename T, typename A>
MGID_HD void losses_backward_query(const T* q, T* dq, int64_t stride, int64_t C, const A* items, int M,
                                   A gc, A gs, A* s) {
  A norm;
  const A inv = query_inv_norm(q, stride, C, &norm);
  const LossTerms<A> t = loss_terms_query(q, stride, C, items, M, inv, s);
  // clamp_min passes the gradient where its input is >= the bound (torch's convention).
  const bool active = t.d_pos - t.d_neg + A(kTripletMargin) >= A(0);
  const A wp = (active && t.d_pos > A(0)) ? gs / t.d_pos : A(0);
  const A wn = (active && t.d_neg > A(0)) ? gs / t.d_neg : A(0);
  auto g = [&](int64_t c) -> A {
    const A y = static_cast<A>(q[c * stride]) * inv;
    const A dp = y - items[c * M + t.top1];
    const A dn = y - items[c * M + t.top2];
    return A(2) * gc * dp + wp * (dp + A(kTripletEps)) - wn * (dn + A(kTripletEps));
  };
  normalize_backward_query(q, dq, stride, C, norm, inv, g);
}

// ---- Memory update: per-tile partials, combined over tiles in a fixed order. ----
//
// For a tile of K queries with raw scores s_k (K x M), assignment a_k = argmax_m s_k[m] and
// own_k = s_k[a_k]:
//   tile_max[m] = max_k s_k[m]                    (public code: over all queries)
//              or max_{k: a_k = m} own_k          (paper: over the assigned queries; -inf if none)
//   tile_sum[m][c] = sum_{k: a_k = m} exp(own_k - tile_max[m]) * q_hat_k[c]
// Tiles combine like an online softmax: with G = max_t tile_max_t[m],
//   sum[m][c] = sum_t tile_sum_t[m][c] * exp(tile_max_t[m] - G).

template <typename A>
MGID_HD A tile_item_max(int m, int K, const A* scores, const int* assign, int M, bool over_assigned) {
  A mx = neg_inf<A>();
  for (int k = 0; k < K; ++k) {
    if (over_assigned && assign[k] != m) continue;
    const A v = scores[k * M + m];
    if (v > mx) mx = v;
  }
  return mx;
}

// The tile's weighted sum for item m, channel c. ``n0`` is the tile's first query index.
// Weight of an assigned query in its item's tile sum, applied to the raw query: the column-softmax
// ratio exp(s - tile_max) times 1/||q|| (so that weight * q = ratio * q_hat).
template <typename A>
MGID_HD A tile_query_weight(A own_score, A tile_max, A inv) {
  return mexp(own_score - tile_max) * inv;
}

// The tile's weighted sum for item m, channel c, adding the assigned queries in ascending order.
// ``n0`` is the tile's first query, ``weight`` the tile_query_weight of each of its K queries.
// (The CPU kernel adds the same terms in the same order with its loops turned around.)
template <typename T, typename A>
MGID_HD A tile_item_channel_sum(int m, int64_t c, int K, int64_t n0, const T* q, int64_t hw, int64_t C,
                                const int* assign, const A* weight) {
  A acc = 0;
  for (int k = 0; k < K; ++k) {
    if (assign[k] != m) continue;
    acc += weight[k] * static_cast<A>(q[query_offset(n0 + k, hw, C) + c * hw]);
  }
  return acc;
}

// Global column max of item m over T tiles (part_max is T x M).
template <typename A>
MGID_HD A combine_item_max(int m, int64_t T, const A* part_max, int M) {
  A g = neg_inf<A>();
  for (int64_t t = 0; t < T; ++t) {
    const A v = part_max[t * M + m];
    if (v > g) g = v;
  }
  return g;
}

// sum[m][c] over T tiles (part_sum is T x M x C), rescaled to the global max ``g``.
template <typename A>
MGID_HD A combine_item_channel_sum(int m, int64_t c, int64_t T, const A* part_max, const A* part_sum, int M,
                                   int64_t C, A g) {
  A acc = 0;
  for (int64_t t = 0; t < T; ++t) {
    const A mx = part_max[t * M + m];
    if (!(mx > neg_inf<A>())) continue;  // no query of this tile counts for item m
    acc += part_sum[(t * M + m) * C + c] * mexp(mx - g);
  }
  return acc;
}

// New item m: P[m] + sum[m] scaled to unit norm (eps as F.normalize). ``items`` is (M, C) here.
template <typename A>
MGID_HD A updated_item_inv_norm(int m, int64_t C, const A* items, const A* sum) {
  A ss = 0;
  for (int64_t c = 0; c < C; ++c) {
    const A v = items[m * C + c] + sum[m * C + c];
    ss += v * v;
  }
  const A n = msqrt(ss);
  return A(1) / (n <= A(kNormEps) ? A(kNormEps) : n);  // a NaN norm stays NaN
}

}  // namespace mgid
