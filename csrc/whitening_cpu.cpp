// C++ CPU kernels of the whitening ops; the math is whitening_math.h, shared with the CUDA kernels.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "checks.h"
#include "whitening_math.h"

namespace mgid {
namespace {

// The k-means of whitening_math.h, the grid cells of each layer in parallel and the Lloyd stage one
// cluster after another: the CUDA kernel runs the same steps with one thread per cell / cluster.
at::Tensor bsw_threshold_cpu(const at::Tensor& values, int64_t k_requested) {
  TORCH_CHECK(values.numel() > 0, "mgid: bsw_threshold needs at least one value");
  TORCH_CHECK(k_requested >= 1, "mgid: k must be >= 1, got ", k_requested);
  const KmeansInputs in = kmeans_inputs(values);
  const int64_t n = in.x.numel(), G = kmeans_grid_size(n);
  const int k = static_cast<int>(std::min<int64_t>(k_requested, G));
  const double* x = in.x.data_ptr<double>();
  const double* p1 = in.p1.data_ptr<double>();
  const double* p2 = in.p2.data_ptr<double>();
  const double mu = in.mu.item<double>();
  std::vector<int64_t> pos(G + 1);
  std::vector<double> q1(G + 1), q2(G + 1), d_prev(G + 1), d_cur(G + 1);
  std::vector<int32_t> arg(static_cast<size_t>(k) * (G + 1), 0);
  for (int64_t g = 0; g <= G; ++g) kmeans_grid_entry(g, n, G, p1, p2, pos.data(), q1.data(), q2.data());
  for (int64_t g = 0; g <= G; ++g) d_prev[g] = segment_sse(p1, p2, 0, pos[g]);
  for (int l = 1; l < k; ++l) {
    at::parallel_for(l + 1, G + 1, 64, [&](int64_t g0, int64_t g1) {
      for (int64_t g = g0; g < g1; ++g)
        d_cur[g] = kmeans_dp_cell(l, g, d_prev.data(), pos.data(), q1.data(), q2.data(),
                                  &arg[static_cast<size_t>(l) * (G + 1) + g]);
    });
    d_prev.swap(d_cur);
  }
  std::vector<int64_t> bounds(std::max(k - 1, 0)), next(std::max(k - 1, 0));
  std::vector<double> centers(k);
  kmeans_backtrack(arg.data(), k, G, pos.data(), bounds.data());
  for (int j = 0; j < k; ++j)
    centers[j] = segment_mean(p1, j == 0 ? 0 : bounds[j - 1], j + 1 < k ? bounds[j] : n, 0.0);
  for (int it = 0; it < kLloydMaxIter; ++it) {
    for (int j = 0; j + 1 < k; ++j) next[j] = lloyd_boundary(x, n, mu, centers.data(), j);
    for (int j = 0; j < k; ++j)
      centers[j] = segment_mean(p1, j == 0 ? 0 : next[j - 1], j + 1 < k ? next[j] : n, centers[j]);
    const bool moved = next != bounds;
    bounds.swap(next);
    if (!moved) break;
  }
  const int64_t first_end = k > 1 ? bounds[0] : n;
  return at::scalar_tensor(lowest_cluster_threshold(x, first_end), in.x.options());
}

std::tuple<at::Tensor, at::Tensor> bsw_loss_masked_cpu(const at::Tensor& cov1_in, const at::Tensor& cov2_in,
                                                       const at::Tensor& mask_in) {
  check_covariances(cov1_in, cov2_in);
  check_mask(mask_in, cov1_in);
  const at::Tensor cov1 = cov1_in.contiguous(), cov2 = cov2_in.to(cov1.scalar_type()).contiguous();
  const at::Tensor mask = mask_in.contiguous();
  const int64_t n = cov1.numel(), T = (n + kElementTile - 1) / kElementTile;
  const auto acc = acc_dtype(cov1.scalar_type());
  at::Tensor parts = at::empty({T, 2}, cov1.options().dtype(acc));
  at::Tensor loss, count;
  MGID_DISPATCH(cov1.scalar_type(), "mgid::bsw_loss_masked(cpu)", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* a = cov1.data_ptr<scalar_t>();
    const scalar_t* b = cov2.data_ptr<scalar_t>();
    const bool* mk = mask.data_ptr<bool>();
    A* pp = parts.data_ptr<A>();
    at::parallel_for(0, T, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t)
        bsw_tile_reduce(t, n, a, b, mk, &pp[2 * t], &pp[2 * t + 1]);
    });
    A total = 0, cnt = 0;
    for (int64_t t = 0; t < T; ++t) {
      total += pp[2 * t];
      cnt += pp[2 * t + 1];
    }
    loss = at::scalar_tensor(bsw_loss_value(total, cnt, cov1.size(0)), cov1.options().dtype(acc))
               .to(cov1.scalar_type());
    count = at::scalar_tensor(cnt, cov1.options().dtype(acc));
  });
  return {loss, count};
}

std::tuple<at::Tensor, at::Tensor> bsw_loss_masked_backward_cpu(const at::Tensor& grad, const at::Tensor& cov1_in,
                                                                const at::Tensor& cov2_in, const at::Tensor& mask_in,
                                                                const at::Tensor& count) {
  check_covariances(cov1_in, cov2_in);
  check_mask(mask_in, cov1_in);
  // cov2 in cov1's dtype, as the forward computes it; its gradient goes back in cov2's own dtype
  const at::Tensor cov1 = cov1_in.contiguous(), cov2 = cov2_in.to(cov1_in.scalar_type()).contiguous();
  const at::Tensor mask = mask_in.contiguous();
  at::Tensor g1 = at::empty_like(cov1), g2 = at::empty_like(cov2);
  const auto acc = acc_dtype(cov1.scalar_type());
  const at::Tensor gc = at::stack({grad.reshape({}).to(acc), count.reshape({}).to(acc)});
  const int64_t n = cov1.numel(), batch = cov1.size(0);
  MGID_DISPATCH(cov1.scalar_type(), "mgid::bsw_loss_masked_backward(cpu)", [&] {
    using A = at::opmath_type<scalar_t>;
    const A g = gc.data_ptr<A>()[0], cnt = gc.data_ptr<A>()[1];
    const scalar_t* a = cov1.data_ptr<scalar_t>();
    const scalar_t* b = cov2.data_ptr<scalar_t>();
    const bool* mk = mask.data_ptr<bool>();
    scalar_t* da = g1.data_ptr<scalar_t>();
    scalar_t* db = g2.data_ptr<scalar_t>();
    at::parallel_for(0, n, kElementTile, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        da[i] = static_cast<scalar_t>(bsw_grad_element(a, mk, i, g, cnt, batch));
        db[i] = static_cast<scalar_t>(bsw_grad_element(b, mk, i, g, cnt, batch));
      }
    });
  });
  return {g1, g2.to(cov2_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(mgid, CPU, m) {
  m.impl("bsw_threshold", &bsw_threshold_cpu);
  m.impl("bsw_loss_masked", &bsw_loss_masked_cpu);
  m.impl("bsw_loss_masked_backward", &bsw_loss_masked_backward_cpu);
}

}  // namespace mgid
