// The math of the memory ops, per query (in lanes) and per tile, shared by the CPU and CUDA kernels.
//
// Layout: the query tensor is NCHW, (B, C, H, W) contiguous. Query n (n = b*HW + p, p the pixel)
// has its channel c at q[query_offset(n) + c*HW]: a query is a strided C-vector, and consecutive
// queries are consecutive addresses (coalesced on the GPU). Items come transposed, (C, M) row-major
// (items[c*M + m] = P[m, c]), in the accumulation type A (float for half/bfloat16/float, double for
// double), so that the loop over items is contiguous (vectorised on the CPU, broadcast on the GPU).
#pragma once

#include "common.h"

namespace mgid {

MGID_HD int64_t query_offset(int64_t n, int64_t hw, int64_t C) { return (n / hw) * C * hw + (n % hw); }

// ---- Per-query math, on L lanes at once. ----
// A group of L queries at consecutive pixels of one image: lane l, channel c is q[c*stride + l].
// The GPU runs L = 1 (one thread, one query); the CPU kernel runs L = kCpuLanes neighbouring pixels
// so that the compiler vectorises the loops over lanes. Each lane's arithmetic (every operation
// and its order) is the same for every L, so the CPU and GPU kernels compute the same numbers.
// Per-lane arrays: x[l]; per-item-per-lane arrays: scores[m*L + l].

// inv[l] = 1 / max(||q_l||, eps) (a NaN norm stays NaN); norm[l] = ||q_l||.
template <int L, typename T, typename A>
MGID_HD void lanes_inv_norm(const T* q, int64_t stride, int64_t C, A* norm, A* inv) {
  A sum_sq[L];
  for (int l = 0; l < L; ++l) sum_sq[l] = 0;
  for (int64_t c = 0; c < C; ++c)
    for (int l = 0; l < L; ++l) {
      const A value = static_cast<A>(q[c * stride + l]);
      sum_sq[l] += value * value;
    }
  for (int l = 0; l < L; ++l) {
    const A length = msqrt(sum_sq[l]);
    norm[l] = length;
    inv[l] = A(1) / (length <= A(kNormEps) ? A(kNormEps) : length);
  }
}

// scores[m*L + l] = q_hat_l . P[m] (cosine similarity), accumulated over c in order.
template <int L, typename T, typename A>
MGID_HD void lanes_scores(const T* q, int64_t stride, int64_t C, const A* items, int M, const A* inv, A* scores) {
  for (int i = 0; i < M * L; ++i) scores[i] = 0;
  for (int64_t c = 0; c < C; ++c) {
    A q_hat[L];
    for (int l = 0; l < L; ++l) q_hat[l] = static_cast<A>(q[c * stride + l]) * inv[l];
    for (int m = 0; m < M; ++m) {
      const A item_value = items[c * M + m];
      A* scores_m = scores + m * L;  // a row pointer: -fwrapv int index math would block vectorisation
      for (int l = 0; l < L; ++l) scores_m[l] += q_hat[l] * item_value;
    }
  }
}

// The largest score of every lane and its index, the first one on ties (as torch.argmax). Written
// without branches (a select per item and lane) so that the CPU vectorises it over the lanes: a
// branch per comparison mispredicted on random scores. Comparisons as written (a NaN never wins).
template <int L, typename A>
MGID_HD void lanes_argmax(const A* scores, int M, A* best, int* arg) {
  for (int l = 0; l < L; ++l) {
    best[l] = scores[l];
    arg[l] = 0;
  }
  for (int m = 1; m < M; ++m) {
    const A* scores_m = scores + m * L;
    for (int l = 0; l < L; ++l) {
      const bool greater = scores_m[l] > best[l];
      best[l] = greater ? scores_m[l] : best[l];
      arg[l] = greater ? m : arg[l];
    }
  }
}

// Index of every lane's largest score other than ``first[l]`` (M >= 2), the first one on ties.
template <int L, typename A>
MGID_HD void lanes_argmax_second(const A* scores, int M, const int* first, int* arg) {
  A best[L];
  for (int l = 0; l < L; ++l) {
    arg[l] = first[l] == 0 ? 1 : 0;
    best[l] = scores[arg[l] * L + l];
  }
  for (int m = 1; m < M; ++m) {
    const A* scores_m = scores + m * L;
    for (int l = 0; l < L; ++l) {
      // m below the start is only ever first[l]; m equal to it does not compare greater.
      const bool take = m != first[l] && scores_m[l] > best[l];
      best[l] = take ? scores_m[l] : best[l];
      arg[l] = take ? m : arg[l];
    }
  }
}

// Row softmax over items of every lane, in place.
template <int L, typename A>
MGID_HD void lanes_softmax(A* scores, int M) {
  A max_score[L], sum[L];
  int arg[L];
  lanes_argmax<L>(scores, M, max_score, arg);
  for (int l = 0; l < L; ++l) sum[l] = 0;
  for (int m = 0; m < M; ++m) {
    A* scores_m = scores + m * L;
    for (int l = 0; l < L; ++l) {
      const A exp_score = mexp(scores_m[l] - max_score[l]);
      scores_m[l] = exp_score;
      sum[l] += exp_score;
    }
  }
  for (int l = 0; l < L; ++l) sum[l] = A(1) / sum[l];
  for (int m = 0; m < M; ++m) {
    A* scores_m = scores + m * L;
    for (int l = 0; l < L; ++l) scores_m[l] *= sum[l];
  }
}

// Second half of the read, given each lane's 1/||q|| and raw ``scores`` (overwritten by the weights).
// out_qhat[c] = q_hat_c, out_read[c] = sum_m softmax(scores)_m P[m, c].
template <int L, typename T, typename A>
MGID_HD void read_from_scores_lanes(const T* q, T* out_qhat, T* out_read, int64_t stride, int64_t C, const A* items,
                                    int M, const A* inv, A* scores) {
  lanes_softmax<L>(scores, M);
  for (int64_t c = 0; c < C; ++c) {
    A read_acc[L];
    // The first item's term added to 0 as its own loop, not after zeroing read_acc: GCC turned the zeroing
    // into a memset (rep stos) per channel, which profiled at a quarter of the CPU forward. The same
    // operations (0 + w_0 p_0, then the next items in order), so the same floats.
    const A item0_value = M > 0 ? items[c * M] : A(0);
    for (int l = 0; l < L; ++l) read_acc[l] = A(0) + (M > 0 ? scores[l] * item0_value : A(0));
    for (int m = 1; m < M; ++m) {
      const A item_value = items[c * M + m];
      const A* weights_m = scores + m * L;
      for (int l = 0; l < L; ++l) read_acc[l] += weights_m[l] * item_value;
    }
    for (int l = 0; l < L; ++l) out_read[c * stride + l] = static_cast<T>(read_acc[l]);
    for (int l = 0; l < L; ++l) out_qhat[c * stride + l] = static_cast<T>(static_cast<A>(q[c * stride + l]) * inv[l]);
  }
}

// Memory read of L queries (read_from_scores_lanes). ``scores`` is scratch of M*L entries.
template <int L, typename T, typename A>
MGID_HD void read_forward_lanes(const T* q, T* out_qhat, T* out_read, int64_t stride, int64_t C, const A* items, int M,
                                A* scores) {
  A norm[L], inv[L];
  lanes_inv_norm<L>(q, stride, C, norm, inv);
  lanes_scores<L>(q, stride, C, items, M, inv, scores);
  read_from_scores_lanes<L>(q, out_qhat, out_read, stride, C, items, M, inv, scores);
}

// Backward of y = x / max(||x||, eps) for L queries, given the gradient on y as a functor
// grad(c, grad_qhat) filling grad_qhat[L] (g below): dx = (g - y (y.g)) / ||x|| where ||x|| >= eps, g / eps where the
// norm is clamped (the y.g term is then dropped, as clamp_min passes no gradient to the norm).
template <int L, typename T, typename A, typename GradFn>
MGID_HD void normalize_backward_lanes(const T* q, T* dq, int64_t stride, int64_t C, const A* norm, const A* inv,
                                      const GradFn& grad) {
  A dot[L];
  for (int l = 0; l < L; ++l) dot[l] = 0;
  for (int64_t c = 0; c < C; ++c) {
    A grad_qhat[L];
    grad(c, grad_qhat);
    for (int l = 0; l < L; ++l) dot[l] += static_cast<A>(q[c * stride + l]) * inv[l] * grad_qhat[l];
  }
  for (int l = 0; l < L; ++l) dot[l] = norm[l] >= A(kNormEps) ? dot[l] : A(0);
  for (int64_t c = 0; c < C; ++c) {
    A grad_qhat[L];
    grad(c, grad_qhat);
    for (int l = 0; l < L; ++l) {
      const A q_hat = static_cast<A>(q[c * stride + l]) * inv[l];
      dq[c * stride + l] = static_cast<T>((grad_qhat[l] - q_hat * dot[l]) * inv[l]);
    }
  }
}

// Gradient of the read half W P on the scores, through the softmax ``weights`` w (M*L, read only):
// ds_m = w_m (g_read.P[m] - sum_j w_j g_read.P[j]), into ``dscores`` (M*L).
template <int L, typename T, typename A>
MGID_HD void read_score_grad_lanes(const T* g_read, int64_t stride, int64_t C, const A* items, int M, const A* weights,
                                   A* dscores) {
  for (int i = 0; i < M * L; ++i) dscores[i] = 0;
  for (int64_t c = 0; c < C; ++c)
    for (int m = 0; m < M; ++m) {
      const A item_value = items[c * M + m];
      A* dscores_m = dscores + m * L;
      for (int l = 0; l < L; ++l) dscores_m[l] += static_cast<A>(g_read[c * stride + l]) * item_value;
    }
  A weighted_sum[L];
  for (int l = 0; l < L; ++l) weighted_sum[l] = 0;
  for (int m = 0; m < M; ++m) {
    const A* weights_m = weights + m * L;
    const A* dscores_m = dscores + m * L;
    for (int l = 0; l < L; ++l) weighted_sum[l] += weights_m[l] * dscores_m[l];
  }
  for (int m = 0; m < M; ++m) {
    const A* weights_m = weights + m * L;
    A* dscores_m = dscores + m * L;
    for (int l = 0; l < L; ++l) dscores_m[l] = weights_m[l] * (dscores_m[l] - weighted_sum[l]);
  }
}

// Per-lane terms of the memory losses before averaging: compactness sum_c (q_hat_c - P[top1, c])^2
// and the triplet hinge max(||q_hat - P[top1] + eps|| - ||q_hat - P[top2] + eps|| + margin, 0).
template <int L, typename A>
struct LossLanes {
  A compact[L];
  A triplet[L];
  A d_pos[L];  // ||q_hat - P[top1] + eps||
  A d_neg[L];  // ||q_hat - P[top2] + eps||
  int top1[L];
  int top2[L];
};

// The loss terms from each lane's raw ``scores`` (read only).
template <int L, typename T, typename A>
MGID_HD void loss_terms_from_top_lanes(const T* q, int64_t stride, int64_t C, const A* items, int M, const A* inv,
                                       LossLanes<L, A>* terms, A* gathered = nullptr);

template <int L, typename T, typename A>
MGID_HD void loss_terms_from_scores_lanes(const T* q, int64_t stride, int64_t C, const A* items, int M, const A* inv,
                                          const A* scores, LossLanes<L, A>* terms) {
  A best[L];
  lanes_argmax<L>(scores, M, best, terms->top1);
  lanes_argmax_second<L>(scores, M, terms->top1, terms->top2);
  loss_terms_from_top_lanes<L>(q, stride, C, items, M, inv, terms);
}

// The loss terms of L queries whose two nearest items terms->top1, terms->top2 are known. ``gathered``: null,
// or 2*C*L scratch that receives each lane's two items, channel by channel (P[top1] rows c*L + l,
// then P[top2] rows C*L + c*L + l), for step_backward_lanes to reuse.
template <int L, typename T, typename A>
MGID_HD void loss_terms_from_top_lanes(const T* q, int64_t stride, int64_t C, const A* items, int M, const A* inv,
                                       LossLanes<L, A>* terms, A* gathered) {
  // Local accumulators and the two items' channel gathered per lane first: the CPU then vectorises
  // the lane loop (stores through ``terms`` could alias ``items`` and kept it scalar).
  A compact[L], dist_pos_sq[L], dist_neg_sq[L];
  int top1[L], top2[L];
  for (int l = 0; l < L; ++l) {
    compact[l] = 0;
    dist_pos_sq[l] = 0;
    dist_neg_sq[l] = 0;
    top1[l] = terms->top1[l];
    top2[l] = terms->top2[l];
  }
  for (int64_t c = 0; c < C; ++c) {
    A item_top1[L], item_top2[L];
    for (int l = 0; l < L; ++l) {
      item_top1[l] = items[c * M + top1[l]];
      item_top2[l] = items[c * M + top2[l]];
    }
    if (gathered != nullptr)
      for (int l = 0; l < L; ++l) {
        gathered[c * L + l] = item_top1[l];
        gathered[(C + c) * L + l] = item_top2[l];
      }
    for (int l = 0; l < L; ++l) {
      const A q_hat = static_cast<A>(q[c * stride + l]) * inv[l];
      const A diff_pos = q_hat - item_top1[l];
      const A diff_pos_eps = diff_pos + A(kTripletEps);
      const A diff_neg_eps = q_hat - item_top2[l] + A(kTripletEps);
      compact[l] += diff_pos * diff_pos;
      dist_pos_sq[l] += diff_pos_eps * diff_pos_eps;
      dist_neg_sq[l] += diff_neg_eps * diff_neg_eps;
    }
  }
  for (int l = 0; l < L; ++l) {
    terms->compact[l] = compact[l];
    terms->d_pos[l] = msqrt(dist_pos_sq[l]);
    terms->d_neg[l] = msqrt(dist_neg_sq[l]);
    const A hinge = terms->d_pos[l] - terms->d_neg[l] + A(kTripletMargin);
    terms->triplet[l] = hinge > A(0) ? hinge : A(0);
  }
}

template <int L, typename T, typename A>
MGID_HD void loss_terms_lanes(const T* q, int64_t stride, int64_t C, const A* items, int M, const A* inv, A* scores,
                              LossLanes<L, A>* terms) {
  lanes_scores<L>(q, stride, C, items, M, inv, scores);
  loss_terms_from_scores_lanes<L>(q, stride, C, items, M, inv, scores, terms);
}

// ---- The memory step: read, losses and the update's per-query part from one set of scores. ----

// dL/d(one query's term) of the two loss means, from dL/dcompactness and dL/dseparateness
// (``grads``, 2 values): compactness averages N*C terms, separateness N.
template <typename A>
MGID_HD void mean_loss_grads(const A* grads, int64_t N, int64_t C, A* grad_compact_term, A* grad_separate_term) {
  *grad_compact_term = grads[0] / static_cast<A>(N * C);
  *grad_separate_term = grads[1] / static_cast<A>(N);
}

// Backward of the memory step for L queries, through one normalisation: the read's gradient
// (g_qhat on the q_hat half, null for none; g_read on the W P half, used only with
// grad_through_weights: the public code detaches W) plus, with ``with_losses``, the losses'
// (grad_compact_term, grad_separate_term from mean_loss_grads). With grad_through_weights, ds_m = w_m (g_read.P[m] -
// sum_j w_j g_read.P[j]) and q_hat gets sum_m ds_m P[m]. ``scores``, ``weights`` and ``dscores`` are scratch of M*L
// entries each; ``scores`` may be ``weights`` when with_losses is false.
//
// ``top``: null, or the two nearest items of each lane as the forward found them (top[2l], top[2l+1]);
// given, the losses need no scores (they are the forward's, so the result is the same).
// ``grad_buf``: null, or 3*C*L scratch that keeps the gradient on q_hat between the two passes over the
// channels and the two nearest items' channels (the CPU); null recomputes them (the GPU, where they
// would be local memory).
template <int L, typename T, typename A>
MGID_HD void step_backward_lanes(const T* q, const T* g_qhat, const T* g_read, T* dq, int64_t stride, int64_t C,
                                 const A* items, int M, bool grad_through_weights, bool with_losses,
                                 A grad_compact_term, A grad_separate_term, const int32_t* top, A* scores, A* weights,
                                 A* dscores, A* grad_buf = nullptr) {
  A norm[L], inv[L];
  lanes_inv_norm<L>(q, stride, C, norm, inv);
  if (grad_through_weights || (with_losses && top == nullptr)) lanes_scores<L>(q, stride, C, items, M, inv, scores);
  LossLanes<L, A> terms;
  A hinge_grad_pos[L], hinge_grad_neg[L];
  for (int l = 0; l < L; ++l) {
    terms.top1[l] = terms.top2[l] = 0;
    hinge_grad_pos[l] = hinge_grad_neg[l] = A(0);
  }
  if (with_losses) {
    if (top != nullptr) {
      for (int l = 0; l < L; ++l) {
        terms.top1[l] = top[2 * l];
        terms.top2[l] = top[2 * l + 1];
      }
      // With grad_buf (C*L for the gradient, then 2*C*L), the two items' channels are gathered once.
      loss_terms_from_top_lanes<L>(q, stride, C, items, M, inv, &terms,
                                   grad_buf != nullptr ? grad_buf + C * L : nullptr);
    } else {
      loss_terms_from_scores_lanes<L>(q, stride, C, items, M, inv, scores, &terms);
    }
    for (int l = 0; l < L; ++l) {
      // clamp_min passes the gradient where its input is >= the bound (torch's convention).
      const bool active = terms.d_pos[l] - terms.d_neg[l] + A(kTripletMargin) >= A(0);
      hinge_grad_pos[l] = (active && terms.d_pos[l] > A(0)) ? grad_separate_term / terms.d_pos[l] : A(0);
      hinge_grad_neg[l] = (active && terms.d_neg[l] > A(0)) ? grad_separate_term / terms.d_neg[l] : A(0);
    }
  }
  if (grad_through_weights) {
    if (weights != scores)
      for (int i = 0; i < M * L; ++i) weights[i] = scores[i];
    lanes_softmax<L>(weights, M);
    read_score_grad_lanes<L>(g_read, stride, C, items, M, weights, dscores);
  }
  const bool gathered_top = with_losses && top != nullptr && grad_buf != nullptr;
  auto grad = [&](int64_t c, A* grad_c) {
    A grad_lanes[L];  // local until the end: stores through ``grad_c`` could alias the inputs and block vectorisation
    for (int l = 0; l < L; ++l) grad_lanes[l] = g_qhat ? static_cast<A>(g_qhat[c * stride + l]) : A(0);
    if (grad_through_weights)
      for (int m = 0; m < M; ++m) {
        const A item_value = items[c * M + m];
        const A* dscores_m = dscores + m * L;
        for (int l = 0; l < L; ++l) grad_lanes[l] += dscores_m[l] * item_value;
      }
    if (with_losses) {
      A item_top1[L], item_top2[L];
      if (gathered_top)
        for (int l = 0; l < L; ++l) {
          item_top1[l] = grad_buf[(C + c) * L + l];
          item_top2[l] = grad_buf[(2 * C + c) * L + l];
        }
      else
        for (int l = 0; l < L; ++l) {
          item_top1[l] = items[c * M + terms.top1[l]];
          item_top2[l] = items[c * M + terms.top2[l]];
        }
      for (int l = 0; l < L; ++l) {
        const A q_hat = static_cast<A>(q[c * stride + l]) * inv[l];
        const A diff_pos = q_hat - item_top1[l];
        const A diff_neg = q_hat - item_top2[l];
        grad_lanes[l] += A(2) * grad_compact_term * diff_pos + hinge_grad_pos[l] * (diff_pos + A(kTripletEps)) -
                         hinge_grad_neg[l] * (diff_neg + A(kTripletEps));
      }
    }
    for (int l = 0; l < L; ++l) grad_c[l] = grad_lanes[l];
  };
  if (grad_buf != nullptr) {
    // The CPU computes each channel's gradient once into ``grad_buf`` (C*L) for both passes of the
    // normalisation's backward; the GPU (null) computes it twice. The same floats either way.
    for (int64_t c = 0; c < C; ++c) grad(c, grad_buf + c * L);
    normalize_backward_lanes<L>(q, dq, stride, C, norm, inv, [&](int64_t c, A* grad_c) {
      for (int l = 0; l < L; ++l) grad_c[l] = grad_buf[c * L + l];
    });
  } else {
    normalize_backward_lanes<L>(q, dq, stride, C, norm, inv, grad);
  }
}

// Backward of the read alone (the step's backward without losses). ``weights`` and ``dscores``: M*L scratch.
template <int L, typename T, typename A>
MGID_HD void read_backward_lanes(const T* q, const T* g_qhat, const T* g_read, T* dq, int64_t stride, int64_t C,
                                 const A* items, int M, bool grad_through_weights, A* weights, A* dscores) {
  step_backward_lanes<L>(q, g_qhat, g_read, dq, stride, C, items, M, grad_through_weights, false, A(0), A(0),
                         static_cast<const int32_t*>(nullptr), weights, weights, dscores);
}

// Backward of the losses alone (the step's backward with no read gradient). ``scores``: M*L scratch.
template <int L, typename T, typename A>
MGID_HD void losses_backward_lanes(const T* q, T* dq, int64_t stride, int64_t C, const A* items, int M,
                                   A grad_compact_term, A grad_separate_term, A* scores) {
  step_backward_lanes<L>(q, static_cast<const T*>(nullptr), static_cast<const T*>(nullptr), dq, stride, C, items, M,
                         false, true, grad_compact_term, grad_separate_term, static_cast<const int32_t*>(nullptr),
                         scores, scores, scores);
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
  A max_score = neg_inf<A>();
  for (int k = 0; k < K; ++k) {
    if (over_assigned && assign[k] != m) continue;
    const A score = scores[k * M + m];
    if (score > max_score) max_score = score;
  }
  return max_score;
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
  A global_max = neg_inf<A>();
  for (int64_t t = 0; t < T; ++t) {
    const A tile_max = part_max[t * M + m];
    if (tile_max > global_max) global_max = tile_max;
  }
  return global_max;
}

// The factor of a tile's partial sum for an item whose tile max is ``tile_max`` and global max ``global_max``.
template <typename A>
MGID_HD A combine_tile_scale(A tile_max, A global_max) {
  return mexp(tile_max - global_max);
}

// sum[m][c] over T tiles (part_sum is T x M x C), rescaled to the global max ``global_max``.
template <typename A>
MGID_HD A combine_item_channel_sum(int m, int64_t c, int64_t T, const A* part_max, const A* part_sum, int M, int64_t C,
                                   A global_max) {
  A acc = 0;
  for (int64_t t = 0; t < T; ++t) {
    const A tile_max = part_max[t * M + m];
    if (!(tile_max > neg_inf<A>())) continue;  // no query of this tile counts for item m
    acc += part_sum[(t * M + m) * C + c] * combine_tile_scale(tile_max, global_max);
  }
  return acc;
}

// New item m: P[m] + sum[m] scaled to unit norm (eps as F.normalize). ``items`` is (M, C) here.
template <typename A>
MGID_HD A updated_item_inv_norm(int m, int64_t C, const A* items, const A* sum) {
  A sum_sq = 0;
  for (int64_t c = 0; c < C; ++c) {
    const A value = items[m * C + c] + sum[m * C + c];
    sum_sq += value * value;
  }
  const A length = msqrt(sum_sq);
  return A(1) / (length <= A(kNormEps) ? A(kNormEps) : length);  // a NaN norm stays NaN
}

}  // namespace mgid
