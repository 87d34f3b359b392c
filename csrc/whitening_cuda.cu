// CUDA kernels of the whitening ops; the arithmetic is whitening_math.h, shared with the C++ CPU
// kernels. Invariants:
// - kmeans_kernel: one block (see its comment); syncs separate the tree levels (and so the layers)
//   of the dynamic programme and the steps of each level's reduction, and "read the centres" from
//   "write the centres" in every Lloyd iteration; every loop around a sync has a block-uniform count.
// - bsw tile kernel: block t owns elements [t*kElementTile, ...); lane (thread) l sums its run in
//   order, thread 0 adds the lane totals in lane order; a single thread adds the tiles in order.
// - No host synchronisation and no float atomics.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda_utils.cuh"
#include "whitening_math.h"

namespace mgid {
namespace {

// Threads per block of the BSW backward (one element each).
constexpr int kBswBackwardThreads = 256;

// Partial minima of the k-means programme's cooperative scans, one per thread.
struct KmeansReduction {
  double v[kKmeansThreads], left[kKmeansThreads], right[kKmeansThreads];
  int32_t h[kKmeansThreads];
};

// The minimum over each group of W consecutive threads (W a power of two, uniform over the block:
// every thread calls this, it syncs log2(W) times) of their partial minima, returned to the
// group's lane 0 (the other lanes get an intermediate). The caller syncs before ``reduction`` is reused.
__device__ KmeansMin group_min(KmeansMin partial, int lane, int W, KmeansReduction* reduction) {
  const int tid = threadIdx.x;
  reduction->v[tid] = partial.v;
  reduction->left[tid] = partial.left;
  reduction->right[tid] = partial.right;
  reduction->h[tid] = static_cast<int32_t>(partial.h);
  for (int half = W / 2; half > 0; half /= 2) {
    __syncthreads();  // the previous step's partial minima written
    if (lane < half) {
      KmeansMin merged{reduction->v[tid], reduction->left[tid], reduction->right[tid], reduction->h[tid]};
      kmeans_min_combine(&merged, KmeansMin{reduction->v[tid + half], reduction->left[tid + half],
                                            reduction->right[tid + half], reduction->h[tid + half]});
      reduction->v[tid] = merged.v;
      reduction->left[tid] = merged.left;
      reduction->right[tid] = merged.right;
      reduction->h[tid] = static_cast<int32_t>(merged.h);
    }
  }
  return KmeansMin{reduction->v[tid], reduction->left[tid], reduction->right[tid], reduction->h[tid]};
}

// One block of kKmeansThreads threads. Stage 1, the programme: layer after layer, each layer's cells
// by the certified divide and conquer of whitening_math.h, tree level t after tree level t - 1 with
// a sync between them (a level reads the minimisers and margins of earlier levels: arg, lam, rho,
// written by one thread per cell). Level t has 2^t node slots. While 2^t < kKmeansThreads, a group
// of W = kKmeansThreads >> t consecutive threads shares slot tid / W: each thread scans candidates
// lane, lane + W, ... of the node's range, a shared-memory tree reduction (kmeans_min_combine: value,
// then index) leaves the minimum with lane 0, which checks the certificate; if any group's fails,
// every group runs a second scan and reduction, over [l, g) where it failed and over nothing where
// it did not (so the syncs stay uniform), before lane 0 stores. From W = 1 on, thread tid owns slots
// tid, tid + kKmeansThreads, ... (kmeans_dc_cell). W, the level count and the fallback decision
// (__syncthreads_or) are uniform over the block, so every thread reaches every sync. The two D rows
// ping-pong in shared memory. Stage 2: thread 0 backtracks; thread j owns cluster j (its centre) and
// boundary j (after it). The reduction scratch and the Lloyd arrays share their shared memory (never
// live at the same time).
__global__ void __launch_bounds__(kKmeansThreads)
    kmeans_kernel(const double* __restrict__ x, const double* __restrict__ p1, const double* __restrict__ p2,
                  const double* __restrict__ mu_ptr, int64_t n, int64_t G, int k, int32_t* __restrict__ arg,
                  int64_t* __restrict__ pos, double* __restrict__ q1, double* __restrict__ q2, double* __restrict__ lam,
                  double* __restrict__ rho, double* __restrict__ threshold) {
  __shared__ double d_rows[2][kKmeansGrid + 1];
  __shared__ union {
    KmeansReduction red;  // stage 1: one partial minimum per thread
    struct {
      double centers[kKmeansThreads];
      int64_t bounds[kKmeansThreads];
      int64_t next[kKmeansThreads];
    } lloyd;  // stage 2
  } scratch;
  __shared__ bool full_scan[kKmeansThreads / 2];  // per group: its certificate failed
  __shared__ int moved;
  double* const centers = scratch.lloyd.centers;
  int64_t* const bounds = scratch.lloyd.bounds;
  int64_t* const next = scratch.lloyd.next;
  const int tid = threadIdx.x;
  const double mu = *mu_ptr;
  const KmeansTolerance tol = kmeans_dc_tolerance(x, p1, p2, n, mu);
  for (int64_t g = tid; g <= G; g += kKmeansThreads) {
    kmeans_grid_entry(g, n, G, p1, p2, pos, q1, q2);
    d_rows[0][g] = segment_sse(p1, p2, 0, pos[g]);
  }
  __syncthreads();  // grid and layer 0 complete
  int cur = 0;
  for (int l = 1; l < k; ++l) {
    const double* d_prev = d_rows[cur];
    double* d_cur = d_rows[1 - cur];
    int32_t* arg_l = arg + static_cast<int64_t>(l) * (G + 1);
    const int levels = kmeans_dc_levels(G - l);  // cells l + 1 .. G
    for (int t = 0; t < levels; ++t) {
      const int64_t slots = int64_t(1) << t;
      if (slots < kKmeansThreads) {
        const int W = kKmeansThreads >> t;  // threads per node, a power of two >= 2
        const int lane = tid & (W - 1);
        int64_t lo, hi, hlo = 0, hhi = -1;
        const bool valid = kmeans_dc_node(l + 1, G, t, tid / W, &lo, &hi);
        const int64_t g = valid ? kmeans_dc_mid(lo, hi) : 0;
        if (valid) kmeans_dc_range(l, lo, hi, G, arg_l, &hlo, &hhi);
        KmeansMin m = group_min(kmeans_dp_scan(g, hlo + lane, hhi, W, d_prev, pos, q1, q2), lane, W, &scratch.red);
        bool fails = false;
        if (valid && lane == 0) {
          const double v_lo = hlo <= hhi ? kmeans_dp_value(hlo, g, d_prev, pos, q1, q2) : 0.0;
          const double v_hi = hlo <= hhi ? kmeans_dp_value(hhi, g, d_prev, pos, q1, q2) : 0.0;
          fails = !kmeans_dc_certify(l, lo, hi, hlo, hhi, v_lo, v_hi, pos, lam, rho, x, mu, tol, &m);
          full_scan[tid / W] = fails;
        }
        if (__syncthreads_or(fails)) {  // uniform; full_scan written before it
          const bool full = valid && full_scan[tid / W];
          KmeansMin full_min = group_min(
              kmeans_dp_scan(g, full ? l + lane : 0, full ? g - 1 : -1, W, d_prev, pos, q1, q2), lane, W, &scratch.red);
          if (full && lane == 0) {
            kmeans_min_margins(&full_min);
            m = full_min;
          }
        }
        if (valid && lane == 0) kmeans_dp_store(g, m, d_cur, arg_l, lam, rho);
      } else {
        for (int64_t i = tid; i < slots; i += kKmeansThreads) {
          int64_t lo, hi;
          if (kmeans_dc_node(l + 1, G, t, i, &lo, &hi))
            kmeans_dc_cell(l, lo, hi, G, d_prev, pos, q1, q2, x, mu, tol, d_cur, arg_l, lam, rho);
        }
      }
      __syncthreads();  // level t's cells (arg, lam, rho, D) written before level t + 1 reads them
    }
    cur = 1 - cur;  // layer l complete (its last level's sync) before layer l + 1 reads it
  }
  if (tid == 0) kmeans_backtrack(arg, k, G, pos, bounds);
  __syncthreads();  // boundaries of the programme's partition
  const int j = tid;
  if (j < k) centers[j] = segment_mean(p1, j == 0 ? 0 : bounds[j - 1], j + 1 < k ? bounds[j] : n, 0.0);
  __syncthreads();  // centres written
  for (int iteration = 0; iteration < kLloydMaxIter; ++iteration) {
    if (j + 1 < k) next[j] = lloyd_boundary(x, n, mu, centers, j);
    if (j == 0) moved = 0;
    __syncthreads();  // all boundaries computed from the old centres; moved cleared
    double center = 0.0;
    if (j < k) center = segment_mean(p1, j == 0 ? 0 : next[j - 1], j + 1 < k ? next[j] : n, centers[j]);
    // Every writer writes 1.
    if (j + 1 < k && next[j] != bounds[j]) moved = 1;
    __syncthreads();  // no thread reads the old centres or bounds any more
    if (j < k) centers[j] = center;
    if (j + 1 < k) bounds[j] = next[j];
    const bool again = moved != 0;
    __syncthreads();  // every thread read moved before thread 0 clears it
    if (!again) break;
  }
  if (tid == 0) *threshold = lowest_cluster_threshold(x, k > 1 ? bounds[0] : n);
}

at::Tensor bsw_threshold_cuda(const at::Tensor& values, int64_t k_requested) {
  TORCH_CHECK(values.numel() > 0, "mgid: bsw_threshold needs at least one value");
  TORCH_CHECK(k_requested >= 1, "mgid: k must be >= 1, got ", k_requested);
  const c10::cuda::CUDAGuard guard(values.device());
  const KmeansInputs in = kmeans_inputs(values);
  const int64_t n = in.x.numel(), G = kmeans_grid_size(n);
  const int k = static_cast<int>(std::min<int64_t>(k_requested, G));
  TORCH_CHECK(k <= kKmeansThreads, "mgid: the CUDA k-means supports k <= ", kKmeansThreads, ", got k = ", k);
  at::Tensor arg = at::zeros({k, G + 1}, in.x.options().dtype(at::kInt));
  at::Tensor pos = at::empty({G + 1}, in.x.options().dtype(at::kLong));
  at::Tensor grid = at::empty({2, G + 1}, in.x.options());
  at::Tensor margins = at::empty({2, G + 1}, in.x.options());
  at::Tensor threshold = at::empty({}, in.x.options());
  kmeans_kernel<<<1, kKmeansThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      in.x.data_ptr<double>(), in.p1.data_ptr<double>(), in.p2.data_ptr<double>(), in.mu.data_ptr<double>(), n, G, k,
      arg.data_ptr<int32_t>(), pos.data_ptr<int64_t>(), grid.data_ptr<double>(), grid.data_ptr<double>() + (G + 1),
      margins.data_ptr<double>(), margins.data_ptr<double>() + (G + 1), threshold.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return threshold;
}

template <typename T, typename A>
__global__ void __launch_bounds__(kElementLanes)
    bsw_tile_kernel(const T* __restrict__ cov1, const T* __restrict__ cov2, const bool* __restrict__ mask, int64_t n,
                    A* __restrict__ parts) {
  __shared__ A lane_total[kElementLanes];
  __shared__ A lane_count[kElementLanes];
  const int64_t t = blockIdx.x;
  const int lane = threadIdx.x;
  int64_t begin, end;
  lane_range(t, lane, n, &begin, &end);
  bsw_tile_sums(begin, end, cov1, cov2, mask, &lane_total[lane], &lane_count[lane]);
  __syncthreads();  // lane totals written
  if (lane == 0) {
    A total = 0, selected = 0;
    for (int l = 0; l < kElementLanes; ++l) {
      total += lane_total[l];
      selected += lane_count[l];
    }
    parts[2 * t] = total;
    parts[2 * t + 1] = selected;
  }
}

template <typename A>
__global__ void bsw_combine_kernel(const A* __restrict__ parts, int64_t T, int64_t batch, A* __restrict__ loss,
                                   A* __restrict__ count) {
  A total = 0, selected = 0;
  for (int64_t t = 0; t < T; ++t) {
    total += parts[2 * t];
    selected += parts[2 * t + 1];
  }
  *loss = bsw_loss_value(total, selected, batch);
  *count = selected;
}

template <typename T, typename A>
__global__ void __launch_bounds__(kBswBackwardThreads)
    bsw_backward_kernel(const A* __restrict__ grad_count, const T* __restrict__ cov1, const T* __restrict__ cov2,
                        const bool* __restrict__ mask, int64_t n, int64_t batch, T* __restrict__ grad_cov1,
                        T* __restrict__ grad_cov2) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  grad_cov1[i] = static_cast<T>(bsw_grad_element(cov1, mask, i, grad_count[0], grad_count[1], batch));
  grad_cov2[i] = static_cast<T>(bsw_grad_element(cov2, mask, i, grad_count[0], grad_count[1], batch));
}

std::tuple<at::Tensor, at::Tensor> bsw_loss_masked_cuda(const at::Tensor& cov1_in, const at::Tensor& cov2_in,
                                                        const at::Tensor& mask_in) {
  check_covariances(cov1_in, cov2_in);
  check_mask(mask_in, cov1_in);
  const c10::cuda::CUDAGuard guard(cov1_in.device());
  const at::Tensor cov1 = cov1_in.contiguous(), cov2 = cov2_in.to(cov1.scalar_type()).contiguous();
  const at::Tensor mask = mask_in.contiguous();
  const int64_t n = cov1.numel(), T = ceil_div(n, kElementTile);
  const auto acc = acc_dtype(cov1.scalar_type());
  at::Tensor parts = at::empty({T, 2}, cov1.options().dtype(acc));
  at::Tensor loss = at::empty({}, cov1.options().dtype(acc));
  at::Tensor count = at::empty({}, cov1.options().dtype(acc));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  MGID_DISPATCH(cov1.scalar_type(), "mgid::bsw_loss_masked(cuda)", [&] {
    using A = at::opmath_type<scalar_t>;
    bsw_tile_kernel<scalar_t, A><<<T, kElementLanes, 0, stream>>>(cov1.data_ptr<scalar_t>(), cov2.data_ptr<scalar_t>(),
                                                                  mask.data_ptr<bool>(), n, parts.data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    bsw_combine_kernel<A>
        <<<1, 1, 0, stream>>>(parts.data_ptr<A>(), T, cov1.size(0), loss.data_ptr<A>(), count.data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss.to(cov1.scalar_type()), count};
}

std::tuple<at::Tensor, at::Tensor> bsw_loss_masked_backward_cuda(const at::Tensor& grad, const at::Tensor& cov1_in,
                                                                 const at::Tensor& cov2_in, const at::Tensor& mask_in,
                                                                 const at::Tensor& count) {
  check_covariances(cov1_in, cov2_in);
  check_mask(mask_in, cov1_in);
  const c10::cuda::CUDAGuard guard(cov1_in.device());
  // cov2 in cov1's dtype, as the forward computes it; its gradient goes back in cov2's own dtype
  const at::Tensor cov1 = cov1_in.contiguous(), cov2 = cov2_in.to(cov1_in.scalar_type()).contiguous();
  const at::Tensor mask = mask_in.contiguous();
  at::Tensor grad_cov1 = at::empty_like(cov1), grad_cov2 = at::empty_like(cov2);
  const auto acc = acc_dtype(cov1.scalar_type());
  const at::Tensor grad_and_count = at::stack({grad.reshape({}).to(acc), count.reshape({}).to(acc)}).to(cov1.device());
  const int64_t n = cov1.numel();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  MGID_DISPATCH(cov1.scalar_type(), "mgid::bsw_loss_masked_backward(cuda)", [&] {
    using A = at::opmath_type<scalar_t>;
    bsw_backward_kernel<scalar_t, A><<<ceil_div(n, kBswBackwardThreads), kBswBackwardThreads, 0, stream>>>(
        grad_and_count.data_ptr<A>(), cov1.data_ptr<scalar_t>(), cov2.data_ptr<scalar_t>(), mask.data_ptr<bool>(), n,
        cov1.size(0), grad_cov1.data_ptr<scalar_t>(), grad_cov2.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_cov1, grad_cov2.to(cov2_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(mgid, CUDA, m) {
  m.impl("bsw_threshold", &bsw_threshold_cuda);
  m.impl("bsw_loss_masked", &bsw_loss_masked_cuda);
  m.impl("bsw_loss_masked_backward", &bsw_loss_masked_backward_cuda);
}

}  // namespace mgid
