// CUDA kernels of the memory ops. The arithmetic is memory_math.h, shared with the C++ CPU kernels
// that the tests exercise on GPU-less machines; this file is only the parallel scaffolding.
//
// Invariants, for a reviewer:
// - Per-query kernels (read, read backward, losses backward): one thread owns one query n and
//   writes only that query's outputs (C strided elements). No shared memory, no syncs.
// - Tile kernels (update, losses): block t owns queries [t*kQueryTile, ...) (blockDim ==
//   kQueryTile), writes only row t of the partial buffers. Every reduction is in a fixed order
//   (per-thread loops, or a single thread), never float atomics: results are bit-reproducible.
// - No host synchronisation: sizes come from tensor metadata; scalars the kernels need (upstream
//   gradients) are read from device memory.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <limits>

#include "checks.h"
#include "cuda_utils.cuh"
#include "memory_math.h"

namespace mgid {
namespace {

constexpr int kThreads = kQueryTile;
// Most threads of the per-item kernels (one per channel, rounded up to a warp).
constexpr int kCombineThreads = 256;

template <typename T, typename A>
__global__ void __launch_bounds__(kThreads)
    read_forward_kernel(const T* __restrict__ q, const A* __restrict__ items_t, T* __restrict__ out, int64_t N,
                        int64_t HW, int64_t C, int M) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  A scores[kMaxItems];
  const int64_t image = n / HW, pixel = n % HW;
  T* out_base = out + image * 2 * C * HW + pixel;
  read_forward_lanes<1>(q + query_offset(n, HW, C), out_base, out_base + C * HW, HW, C, items_t, M, scores);
}

template <typename T, typename A>
__global__ void __launch_bounds__(kThreads)
    read_backward_kernel(const T* __restrict__ grad_out, const T* __restrict__ q, const A* __restrict__ items_t,
                         T* __restrict__ dq, int64_t N, int64_t HW, int64_t C, int M, bool grad_through_weights) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  A weights[kMaxItems], dscores[kMaxItems];
  const int64_t image = n / HW, pixel = n % HW, offset = query_offset(n, HW, C);
  const T* grad_base = grad_out + image * 2 * C * HW + pixel;
  read_backward_lanes<1>(q + offset, grad_base, grad_base + C * HW, dq + offset, HW, C, items_t, M,
                         grad_through_weights, weights, dscores);
}

// Shared memory of one update tile: scores (K x M), weight (K), tile_max (M), assign (K).
template <typename A>
size_t update_tile_shared_bytes(int M) {
  return sizeof(A) * (static_cast<size_t>(kQueryTile) * M + kQueryTile + M) + sizeof(int) * kQueryTile;
}

// The arrays of one update tile, carved from ``base`` in the order update_tile_shared_bytes counts.
template <typename A>
struct UpdateTileShared {
  A* scores;
  A* weight;
  A* tile_max;
  int* assign;
  __device__ UpdateTileShared(A* base, int M)
      : scores(base),
        weight(base + kQueryTile * M),
        tile_max(weight + kQueryTile),
        assign(reinterpret_cast<int*>(tile_max + M)) {}
};

// Second half of an update tile, once every thread's scores row, assignment and 1/||q|| (``weight``)
// are in shared memory and synchronised: the tile's column maxima, the update weights and the
// per-(item, channel) sums, written to row t of part_max / part_sum.
template <typename T, typename A>
__device__ __forceinline__ void update_tile_finish(const T* __restrict__ q, const A* scores, A* weight, A* tile_max,
                                                   const int* assign, A* __restrict__ part_max,
                                                   A* __restrict__ part_sum, int64_t t, int K, int64_t HW, int64_t C,
                                                   int M, bool over_assigned) {
  const int k = threadIdx.x;
  const int64_t n0 = t * kQueryTile;
  for (int m = k; m < M; m += blockDim.x) {
    tile_max[m] = tile_item_max(m, K, scores, assign, M, over_assigned);
    part_max[t * M + m] = tile_max[m];
  }
  __syncthreads();  // tile_max complete
  if (k < K) weight[k] = tile_query_weight(scores[k * M + assign[k]], tile_max[assign[k]], weight[k]);
  __syncthreads();  // weights complete
  // The thread owns (m, c) pairs.
  for (int64_t j = k; j < static_cast<int64_t>(M) * C; j += blockDim.x) {
    const int m = static_cast<int>(j / C);
    const int64_t c = j % C;
    part_sum[(t * M + m) * C + c] = tile_item_channel_sum(m, c, K, n0, q, HW, C, assign, weight);
  }
}

template <typename T, typename A>
__global__ void __launch_bounds__(kThreads)
    update_tile_kernel(const T* __restrict__ q, const A* __restrict__ items_t, A* __restrict__ part_max,
                       A* __restrict__ part_sum, int64_t N, int64_t HW, int64_t C, int M, bool over_assigned) {
  const UpdateTileShared<A> tile(shared_base<A>(), M);
  A *scores = tile.scores, *weight = tile.weight, *tile_max = tile.tile_max;
  int* assign = tile.assign;
  const int64_t t = blockIdx.x, n0 = t * kQueryTile;
  const int K = static_cast<int>(N - n0 < kQueryTile ? N - n0 : kQueryTile);
  const int k = threadIdx.x;
  if (k < K) {  // thread k owns query n0 + k: its scores row, assignment and weight
    const T* query_k = q + query_offset(n0 + k, HW, C);
    A norm;
    lanes_inv_norm<1>(query_k, HW, C, &norm, &weight[k]);
    lanes_scores<1>(query_k, HW, C, items_t, M, &weight[k], scores + k * M);
    A best;
    lanes_argmax<1>(scores + k * M, M, &best, &assign[k]);
  }
  __syncthreads();  // all scores and assignments of the tile are written
  update_tile_finish(q, scores, weight, tile_max, assign, part_max, part_sum, t, K, HW, C, M, over_assigned);
}

// Shared memory of one memory-step tile: the loss terms (2 x K), then an update tile's when updating.
template <typename A>
size_t step_tile_shared_bytes(int M, bool with_update) {
  return sizeof(A) * 2 * kQueryTile + (with_update ? update_tile_shared_bytes<A>(M) : 0);
}

// One tile of the memory step (block t; thread k owns query n0 + k): its read output, its loss
// terms and, with ``with_update``, the update partials, all from one score vector per query. The
// same math in the same order as read_forward_kernel, losses_tile_kernel and update_tile_kernel.
template <typename T, typename A>
__global__ void __launch_bounds__(kThreads)
    step_tile_kernel(const T* __restrict__ q, const A* __restrict__ items_t, T* __restrict__ out, A* __restrict__ parts,
                     A* __restrict__ part_max, A* __restrict__ part_sum, int32_t* __restrict__ top, int64_t N,
                     int64_t HW, int64_t C, int M, bool over_assigned, bool with_losses, bool with_update) {
  A* compact_terms = shared_base<A>();
  A* triplet_terms = compact_terms + kQueryTile;
  const UpdateTileShared<A> tile(triplet_terms + kQueryTile, M);  // with_update only
  A *scores = tile.scores, *weight = tile.weight, *tile_max = tile.tile_max;
  int* assign = tile.assign;
  const int64_t t = blockIdx.x, n0 = t * kQueryTile;
  const int K = static_cast<int>(N - n0 < kQueryTile ? N - n0 : kQueryTile);
  const int k = threadIdx.x;
  if (k < K) {
    A query_scores[kMaxItems];
    const int64_t n = n0 + k;
    const T* query_k = q + query_offset(n, HW, C);
    A norm, inv;
    lanes_inv_norm<1>(query_k, HW, C, &norm, &inv);
    lanes_scores<1>(query_k, HW, C, items_t, M, &inv, query_scores);
    int top1 = 0;
    if (with_losses) {
      LossLanes<1, A> terms;
      loss_terms_from_scores_lanes<1>(query_k, HW, C, items_t, M, &inv, query_scores, &terms);
      compact_terms[k] = terms.compact[0];
      triplet_terms[k] = terms.triplet[0];
      top[2 * n] = top1 = terms.top1[0];
      top[2 * n + 1] = terms.top2[0];
    }
    if (with_update) {
      weight[k] = inv;
      for (int m = 0; m < M; ++m) scores[k * M + m] = query_scores[m];
      if (with_losses) {  // the losses' top-1 is the assignment
        assign[k] = top1;
      } else {
        A best;
        lanes_argmax<1>(query_scores, M, &best, &assign[k]);
      }
    }
    T* out_base = out + (n / HW) * 2 * C * HW + n % HW;
    read_from_scores_lanes<1>(query_k, out_base, out_base + C * HW, HW, C, items_t, M, &inv,
                              query_scores);  // overwrites query_scores
  }
  __syncthreads();  // the tile's loss terms, scores and assignments are written
  if (k == 0) {     // one owner sums the loss terms in query order, as losses_tile_kernel
    A compact_sum = 0, triplet_sum = 0;
    if (with_losses)
      for (int i = 0; i < K; ++i) {
        compact_sum += compact_terms[i];
        triplet_sum += triplet_terms[i];
      }
    parts[2 * t] = compact_sum;
    parts[2 * t + 1] = triplet_sum;
  }
  if (with_update)  // a kernel argument: the same branch for the whole block, so its syncs are safe
    update_tile_finish(q, scores, weight, tile_max, assign, part_max, part_sum, t, K, HW, C, M, over_assigned);
}

// The query gradient of the step's read and losses, one thread per query (step_backward_lanes).
template <typename T, typename A>
__global__ void __launch_bounds__(kThreads)
    step_backward_kernel(const A* __restrict__ grads, const T* __restrict__ grad_out, const T* __restrict__ q,
                         const A* __restrict__ items_t, const int32_t* __restrict__ top, T* __restrict__ dq, int64_t N,
                         int64_t HW, int64_t C, int M, bool grad_through_weights, bool with_losses) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  A scores[kMaxItems], weights[kMaxItems], dscores[kMaxItems];
  A grad_compact_term, grad_separate_term;
  mean_loss_grads(grads, N, C, &grad_compact_term, &grad_separate_term);
  const int64_t offset = query_offset(n, HW, C);
  const T* grad_base = grad_out + (n / HW) * 2 * C * HW + n % HW;
  step_backward_lanes<1>(q + offset, grad_base, grad_base + C * HW, dq + offset, HW, C, items_t, M,
                         grad_through_weights, with_losses, grad_compact_term, grad_separate_term,
                         with_losses ? top + 2 * n : nullptr, scores, weights, dscores);
}

// Block m combines item m over all tiles; thread c owns channel c.
template <typename A>
__global__ void __launch_bounds__(kCombineThreads)
    update_combine_kernel(const A* __restrict__ part_max, const A* __restrict__ part_sum, int64_t T, int M, int64_t C,
                          A* __restrict__ col_max, A* __restrict__ sum) {
  const int m = blockIdx.x;
  const A global_max = combine_item_max(m, T, part_max, M);
  if (threadIdx.x == 0) col_max[m] = global_max;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
    sum[m * C + c] = combine_item_channel_sum(m, c, T, part_max, part_sum, M, C, global_max);
}

// Block m writes the new item m; thread 0 computes the norm (one owner, no reduction order issue).
template <typename A>
__global__ void __launch_bounds__(kCombineThreads)
    update_finish_kernel(const A* __restrict__ items, const A* __restrict__ sum, int64_t C, A* __restrict__ out) {
  __shared__ A inv;
  const int m = blockIdx.x;
  if (threadIdx.x == 0) inv = updated_item_inv_norm(m, C, items, sum);
  __syncthreads();
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) out[m * C + c] = (items[m * C + c] + sum[m * C + c]) * inv;
}

template <typename T, typename A>
__global__ void __launch_bounds__(kThreads)
    losses_tile_kernel(const T* __restrict__ q, const A* __restrict__ items_t, A* __restrict__ parts, int64_t N,
                       int64_t HW, int64_t C, int M) {
  __shared__ A compact_terms[kQueryTile];
  __shared__ A triplet_terms[kQueryTile];
  const int64_t t = blockIdx.x, n0 = t * kQueryTile;
  const int K = static_cast<int>(N - n0 < kQueryTile ? N - n0 : kQueryTile);
  const int k = threadIdx.x;
  if (k < K) {
    A scores[kMaxItems];
    const T* query_k = q + query_offset(n0 + k, HW, C);
    A norm;
    A inv;
    lanes_inv_norm<1>(query_k, HW, C, &norm, &inv);
    LossLanes<1, A> terms;
    loss_terms_lanes<1>(query_k, HW, C, items_t, M, &inv, scores, &terms);
    compact_terms[k] = terms.compact[0];
    triplet_terms[k] = terms.triplet[0];
  }
  __syncthreads();  // the tile's per-query terms are written
  if (k == 0) {     // one owner sums them in query order, as the CPU kernel does
    A compact_sum = 0, triplet_sum = 0;
    for (int i = 0; i < K; ++i) {
      compact_sum += compact_terms[i];
      triplet_sum += triplet_terms[i];
    }
    parts[2 * t] = compact_sum;
    parts[2 * t + 1] = triplet_sum;
  }
}

// Sums the T partial pairs in tile order and divides them into the two means.
template <typename A>
__global__ void losses_combine_kernel(const A* __restrict__ parts, int64_t T, A compact_count, A separate_count,
                                      A* __restrict__ compact, A* __restrict__ separate) {
  A compact_sum = 0, triplet_sum = 0;
  for (int64_t t = 0; t < T; ++t) {
    compact_sum += parts[2 * t];
    triplet_sum += parts[2 * t + 1];
  }
  *compact = compact_sum / compact_count;
  *separate = triplet_sum / separate_count;
}

template <typename T, typename A>
__global__ void __launch_bounds__(kThreads)
    losses_backward_kernel(const A* __restrict__ grads, const T* __restrict__ q, const A* __restrict__ items_t,
                           T* __restrict__ dq, int64_t N, int64_t HW, int64_t C, int M) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  A scores[kMaxItems];
  A grad_compact_term, grad_separate_term;
  mean_loss_grads(grads, N, C, &grad_compact_term, &grad_separate_term);
  const int64_t offset = query_offset(n, HW, C);
  losses_backward_lanes<1>(q + offset, dq + offset, HW, C, items_t, M, grad_compact_term, grad_separate_term, scores);
}

at::Tensor memory_read_cuda(const at::Tensor& query, const at::Tensor& items, bool /*grad_through_weights*/) {
  const c10::cuda::CUDAGuard guard(query.device());
  const MemoryInputs in = prepare_memory_inputs(query, items);
  at::Tensor out = at::empty({in.B, 2 * in.C, in.H, in.W}, in.query.options());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  MGID_DISPATCH(in.query.scalar_type(), "mgid::memory_read(cuda)", [&] {
    using A = at::opmath_type<scalar_t>;
    read_forward_kernel<scalar_t, A><<<ceil_div(in.N, kThreads), kThreads, 0, stream>>>(
        in.query.data_ptr<scalar_t>(), in.items_t.data_ptr<A>(), out.data_ptr<scalar_t>(), in.N, in.HW, in.C, in.M);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor memory_read_backward_cuda(const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& items,
                                     bool grad_through_weights) {
  const c10::cuda::CUDAGuard guard(query.device());
  const MemoryInputs in = prepare_memory_inputs(query, items);
  const at::Tensor grad_checked = checked_read_grad(grad_out, in);
  at::Tensor dq = at::empty_like(in.query);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  MGID_DISPATCH(in.query.scalar_type(), "mgid::memory_read_backward(cuda)", [&] {
    using A = at::opmath_type<scalar_t>;
    read_backward_kernel<scalar_t, A><<<ceil_div(in.N, kThreads), kThreads, 0, stream>>>(
        grad_checked.data_ptr<scalar_t>(), in.query.data_ptr<scalar_t>(), in.items_t.data_ptr<A>(),
        dq.data_ptr<scalar_t>(), in.N, in.HW, in.C, in.M, grad_through_weights);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dq;
}

std::tuple<at::Tensor, at::Tensor> memory_update_stats_cuda(const at::Tensor& query, const at::Tensor& items,
                                                            bool max_over_assigned) {
  const c10::cuda::CUDAGuard guard(query.device());
  const MemoryInputs in = prepare_memory_inputs(query, items);
  const int64_t T = num_query_tiles(in.N);
  const auto acc_opts = in.items_t.options();
  at::Tensor part_max = at::empty({T, in.M}, acc_opts);
  at::Tensor part_sum = at::empty({T, in.M, in.C}, acc_opts);
  at::Tensor col_max = at::empty({in.M}, acc_opts);
  at::Tensor sum = at::empty({in.M, in.C}, acc_opts);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  MGID_DISPATCH(in.query.scalar_type(), "mgid::memory_update_stats(cuda)", [&] {
    using A = at::opmath_type<scalar_t>;
    const size_t smem = update_tile_shared_bytes<A>(in.M);
    allow_shared_memory(update_tile_kernel<scalar_t, A>, smem, "memory_update");
    update_tile_kernel<scalar_t, A>
        <<<T, kThreads, smem, stream>>>(in.query.data_ptr<scalar_t>(), in.items_t.data_ptr<A>(), part_max.data_ptr<A>(),
                                        part_sum.data_ptr<A>(), in.N, in.HW, in.C, in.M, max_over_assigned);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int threads = static_cast<int>(std::min<int64_t>(kCombineThreads, ceil_div(in.C, 32) * 32));
    update_combine_kernel<A><<<in.M, threads, 0, stream>>>(part_max.data_ptr<A>(), part_sum.data_ptr<A>(), T, in.M,
                                                           in.C, col_max.data_ptr<A>(), sum.data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {col_max, sum};
}

at::Tensor memory_update_cuda(const at::Tensor& query, const at::Tensor& items, bool max_over_assigned) {
  const c10::cuda::CUDAGuard guard(query.device());
  auto stats = memory_update_stats_cuda(query, items, max_over_assigned);
  const at::Tensor& sum = std::get<1>(stats);
  const at::Tensor items_acc = items.detach().to(sum.scalar_type()).contiguous();
  at::Tensor out = at::empty_like(items_acc);
  const int64_t C = items_acc.size(1);
  const int threads = static_cast<int>(std::min<int64_t>(kCombineThreads, ceil_div(C, 32) * 32));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(sum.scalar_type(), "mgid::memory_update(cuda)", [&] {
    update_finish_kernel<scalar_t><<<items_acc.size(0), threads, 0, stream>>>(
        items_acc.data_ptr<scalar_t>(), sum.data_ptr<scalar_t>(), C, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out.to(items.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> memory_losses_cuda(const at::Tensor& query, const at::Tensor& items) {
  check_loss_items(items);
  const c10::cuda::CUDAGuard guard(query.device());
  const MemoryInputs in = prepare_memory_inputs(query, items);
  const int64_t T = num_query_tiles(in.N);
  at::Tensor parts = at::empty({T, 2}, in.items_t.options());
  // Two separate 0-dim outputs: they must not alias (the schema says so).
  at::Tensor compact = at::empty({}, in.items_t.options()), separate = at::empty({}, in.items_t.options());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  MGID_DISPATCH(in.query.scalar_type(), "mgid::memory_losses(cuda)", [&] {
    using A = at::opmath_type<scalar_t>;
    losses_tile_kernel<scalar_t, A><<<T, kThreads, 0, stream>>>(in.query.data_ptr<scalar_t>(), in.items_t.data_ptr<A>(),
                                                                parts.data_ptr<A>(), in.N, in.HW, in.C, in.M);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    losses_combine_kernel<A><<<1, 1, 0, stream>>>(parts.data_ptr<A>(), T, static_cast<A>(in.N * in.C),
                                                  static_cast<A>(in.N), compact.data_ptr<A>(), separate.data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {compact.to(query.scalar_type()), separate.to(query.scalar_type())};
}

at::Tensor memory_losses_backward_cuda(const at::Tensor& grad_compact, const at::Tensor& grad_separate,
                                       const at::Tensor& query, const at::Tensor& items) {
  const c10::cuda::CUDAGuard guard(query.device());
  const MemoryInputs in = prepare_memory_inputs(query, items);
  const at::Tensor grads = stacked_loss_grads(grad_compact, grad_separate, in);
  at::Tensor dq = at::empty_like(in.query);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  MGID_DISPATCH(in.query.scalar_type(), "mgid::memory_losses_backward(cuda)", [&] {
    using A = at::opmath_type<scalar_t>;
    losses_backward_kernel<scalar_t, A><<<ceil_div(in.N, kThreads), kThreads, 0, stream>>>(
        grads.data_ptr<A>(), in.query.data_ptr<scalar_t>(), in.items_t.data_ptr<A>(), dq.data_ptr<scalar_t>(), in.N,
        in.HW, in.C, in.M);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dq;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> memory_step_cuda(
    const at::Tensor& query, const at::Tensor& items, bool /*grad_through_weights*/, bool max_over_assigned,
    bool with_losses, bool with_update) {
  if (with_losses) check_loss_items(items);
  const c10::cuda::CUDAGuard guard(query.device());
  const MemoryInputs in = prepare_memory_inputs(query, items);
  const int64_t T = num_query_tiles(in.N);
  const auto acc_opts = in.items_t.options();
  at::Tensor out = at::empty({in.B, 2 * in.C, in.H, in.W}, in.query.options());
  at::Tensor parts = at::empty({T, 2}, acc_opts);
  at::Tensor part_max = at::empty({with_update ? T : 0, in.M}, acc_opts);
  at::Tensor part_sum = at::empty({with_update ? T : 0, in.M, in.C}, acc_opts);
  at::Tensor col_max =
      with_update ? at::empty({in.M}, acc_opts) : at::full({in.M}, -std::numeric_limits<double>::infinity(), acc_opts);
  at::Tensor sum = with_update ? at::empty({in.M, in.C}, acc_opts) : at::zeros({in.M, in.C}, acc_opts);
  at::Tensor compact = at::empty({}, acc_opts), separate = at::empty({}, acc_opts);  // must not alias
  at::Tensor top = at::empty({with_losses ? in.N : 0, 2}, in.query.options().dtype(at::kInt));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  MGID_DISPATCH(in.query.scalar_type(), "mgid::memory_step(cuda)", [&] {
    using A = at::opmath_type<scalar_t>;
    const size_t smem = step_tile_shared_bytes<A>(in.M, with_update);
    allow_shared_memory(step_tile_kernel<scalar_t, A>, smem, "memory_step");
    step_tile_kernel<scalar_t, A><<<T, kThreads, smem, stream>>>(
        in.query.data_ptr<scalar_t>(), in.items_t.data_ptr<A>(), out.data_ptr<scalar_t>(), parts.data_ptr<A>(),
        part_max.data_ptr<A>(), part_sum.data_ptr<A>(), top.data_ptr<int32_t>(), in.N, in.HW, in.C, in.M,
        max_over_assigned, with_losses, with_update);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    losses_combine_kernel<A><<<1, 1, 0, stream>>>(parts.data_ptr<A>(), T, static_cast<A>(in.N * in.C),
                                                  static_cast<A>(in.N), compact.data_ptr<A>(), separate.data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (with_update) {
      const int threads = static_cast<int>(std::min<int64_t>(kCombineThreads, ceil_div(in.C, 32) * 32));
      update_combine_kernel<A><<<in.M, threads, 0, stream>>>(part_max.data_ptr<A>(), part_sum.data_ptr<A>(), T, in.M,
                                                             in.C, col_max.data_ptr<A>(), sum.data_ptr<A>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {out, compact.to(query.scalar_type()), separate.to(query.scalar_type()), col_max, sum, top};
}

at::Tensor memory_step_backward_cuda(const at::Tensor& grad_read, const at::Tensor& grad_compact,
                                     const at::Tensor& grad_separate, const at::Tensor& query, const at::Tensor& items,
                                     const at::Tensor& top, bool grad_through_weights, bool with_losses) {
  const c10::cuda::CUDAGuard guard(query.device());
  const MemoryInputs in = prepare_memory_inputs(query, items);
  const at::Tensor top_contiguous = checked_step_top(top, in, with_losses);
  const at::Tensor grad_checked = checked_read_grad(grad_read, in);
  const at::Tensor grads = stacked_loss_grads(grad_compact, grad_separate, in);
  at::Tensor dq = at::empty_like(in.query);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  MGID_DISPATCH(in.query.scalar_type(), "mgid::memory_step_backward(cuda)", [&] {
    using A = at::opmath_type<scalar_t>;
    step_backward_kernel<scalar_t, A><<<ceil_div(in.N, kThreads), kThreads, 0, stream>>>(
        grads.data_ptr<A>(), grad_checked.data_ptr<scalar_t>(), in.query.data_ptr<scalar_t>(), in.items_t.data_ptr<A>(),
        top_contiguous.data_ptr<int32_t>(), dq.data_ptr<scalar_t>(), in.N, in.HW, in.C, in.M, grad_through_weights,
        with_losses);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dq;
}

}  // namespace

TORCH_LIBRARY_IMPL(mgid, CUDA, m) {
  m.impl("memory_read", &memory_read_cuda);
  m.impl("memory_read_backward", &memory_read_backward_cuda);
  m.impl("memory_update_stats", &memory_update_stats_cuda);
  m.impl("memory_update", &memory_update_cuda);
  m.impl("memory_losses", &memory_losses_cuda);
  m.impl("memory_losses_backward", &memory_losses_backward_cuda);
  m.impl("memory_step", &memory_step_cuda);
  m.impl("memory_step_backward", &memory_step_backward_cuda);
}

}  // namespace mgid
