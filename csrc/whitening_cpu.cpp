// C++ CPU kernels of the whitening ops; the math is whitening_math.h, shared with the CUDA kernels.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "checks.h"
#include "whitening_math.h"

namespace mgid {
namespace {

// Radix-sort keys of doubles: unsigned order = numeric order (-0.0 just below +0.0); every NaN last,
// as at::sort puts them.
inline uint64_t radix_key(double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  if (std::isnan(v)) return ~uint64_t(0);
  return (bits >> 63) ? ~bits : (bits | (uint64_t(1) << 63));
}

inline double radix_value(uint64_t key, double nan) {
  if (key == ~uint64_t(0)) return nan;
  const uint64_t bits = (key >> 63) ? (key & ~(uint64_t(1) << 63)) : ~key;
  double value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

// The values sorted ascending into ``out`` (n of them): an LSD radix sort, 11 bits a pass, passes
// where every key has the same digit skipped. The same numbers as at::sort (which also sorts the
// indices and measured 5x slower at the training shape); a NaN comes back as a quiet NaN.
void sort_values(const double* values, int64_t n, double* out) {
  constexpr int kBits = 11, kBuckets = 1 << kBits, kPasses = (64 + kBits - 1) / kBits;
  std::vector<uint64_t> keys(n), scratch(n);
  std::vector<int64_t> count(static_cast<size_t>(kPasses) * kBuckets, 0);
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t key = radix_key(values[i]);
    keys[i] = key;
    for (int pass = 0; pass < kPasses; ++pass) ++count[pass * kBuckets + ((key >> (pass * kBits)) & (kBuckets - 1))];
  }
  for (int pass = 0; pass < kPasses; ++pass) {
    int64_t* offsets = &count[pass * kBuckets];
    bool trivial = false;
    int64_t start = 0;
    for (int digit = 0; digit < kBuckets; ++digit) {
      const int64_t bucket_count = offsets[digit];
      trivial = trivial || bucket_count == n;
      offsets[digit] = start;
      start += bucket_count;
    }
    if (trivial) continue;
    for (int64_t i = 0; i < n; ++i) scratch[offsets[(keys[i] >> (pass * kBits)) & (kBuckets - 1)]++] = keys[i];
    keys.swap(scratch);
  }
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (int64_t i = 0; i < n; ++i) out[i] = radix_value(keys[i], nan);
}

// kmeans_inputs (checks.h) on the CPU: the sort by sort_values, then kmeans_inputs_from_sorted, so the
// mean and the prefix sums are those of the reference, bit for bit.
KmeansInputs kmeans_inputs_cpu(const at::Tensor& values) {
  const at::Tensor flat = values.detach().reshape({-1}).to(at::kDouble).contiguous();
  at::Tensor sorted = at::empty_like(flat);
  sort_values(flat.data_ptr<double>(), flat.numel(), sorted.data_ptr<double>());
  return kmeans_inputs_from_sorted(sorted);
}

// The k-means of whitening_math.h: each layer of the programme by the certified divide and conquer,
// tree level after tree level, the nodes of a level in parallel; the Lloyd stage one cluster after
// another. The CUDA kernel runs the same nodes a level at a time (it finds node i of level t by
// descending along the bits of i, kmeans_dc_node; here each level's list is made from its parents'),
// and one thread per cluster. Neither the order of a level's nodes nor the thread count changes a
// bit of the result.
at::Tensor bsw_threshold_cpu(const at::Tensor& values, int64_t k_requested) {
  TORCH_CHECK(values.numel() > 0, "mgid: bsw_threshold needs at least one value");
  TORCH_CHECK(k_requested >= 1, "mgid: k must be >= 1, got ", k_requested);
  const KmeansInputs in = kmeans_inputs_cpu(values);
  const int64_t n = in.x.numel(), G = kmeans_grid_size(n);
  const int k = static_cast<int>(std::min<int64_t>(k_requested, G));
  const double* x = in.x.data_ptr<double>();
  const double* p1 = in.p1.data_ptr<double>();
  const double* p2 = in.p2.data_ptr<double>();
  const double mu = in.mu.item<double>();
  const KmeansTolerance tol = kmeans_dc_tolerance(x, p1, p2, n, mu);
  std::vector<int64_t> pos(G + 1);
  std::vector<double> q1(G + 1), q2(G + 1), d_prev(G + 1), d_cur(G + 1), lam(G + 1), rho(G + 1);
  std::vector<int32_t> arg(static_cast<size_t>(k) * (G + 1), 0);
  for (int64_t g = 0; g <= G; ++g) kmeans_grid_entry(g, n, G, p1, p2, pos.data(), q1.data(), q2.data());
  for (int64_t g = 0; g <= G; ++g) d_prev[g] = segment_sse(p1, p2, 0, pos[g]);
  // The nodes [lo, hi] of one tree level, in any order (a node reads only its ancestors' cells).
  std::vector<std::pair<int64_t, int64_t>> level, children;
  level.reserve(G + 1);
  children.reserve(G + 1);
  for (int l = 1; l < k; ++l) {
    int32_t* arg_l = &arg[static_cast<size_t>(l) * (G + 1)];
    level.assign(1, {l + 1, G});
    while (!level.empty()) {
      at::parallel_for(0, static_cast<int64_t>(level.size()), 64, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i)
          kmeans_dc_cell(l, level[i].first, level[i].second, G, d_prev.data(), pos.data(), q1.data(), q2.data(), x, mu,
                         tol, d_cur.data(), arg_l, lam.data(), rho.data());
      });
      children.clear();
      for (const auto& [lo, hi] : level) {
        const int64_t mid = kmeans_dc_mid(lo, hi);
        if (lo < mid) children.emplace_back(lo, mid - 1);
        if (mid < hi) children.emplace_back(mid + 1, hi);
      }
      level.swap(children);
    }
    d_prev.swap(d_cur);
  }
  std::vector<int64_t> bounds(std::max(k - 1, 0)), next(std::max(k - 1, 0));
  std::vector<double> centers(k);
  kmeans_backtrack(arg.data(), k, G, pos.data(), bounds.data());
  for (int j = 0; j < k; ++j) centers[j] = segment_mean(p1, j == 0 ? 0 : bounds[j - 1], j + 1 < k ? bounds[j] : n, 0.0);
  for (int iteration = 0; iteration < kLloydMaxIter; ++iteration) {
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
    const scalar_t* cov1_data = cov1.data_ptr<scalar_t>();
    const scalar_t* cov2_data = cov2.data_ptr<scalar_t>();
    const bool* mask_data = mask.data_ptr<bool>();
    A* parts_data = parts.data_ptr<A>();
    at::parallel_for(0, T, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t)
        bsw_tile_reduce(t, n, cov1_data, cov2_data, mask_data, &parts_data[2 * t], &parts_data[2 * t + 1]);
    });
    A total = 0, selected = 0;
    for (int64_t t = 0; t < T; ++t) {
      total += parts_data[2 * t];
      selected += parts_data[2 * t + 1];
    }
    loss = at::scalar_tensor(bsw_loss_value(total, selected, cov1.size(0)), cov1.options().dtype(acc))
               .to(cov1.scalar_type());
    count = at::scalar_tensor(selected, cov1.options().dtype(acc));
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
  at::Tensor grad_cov1 = at::empty_like(cov1), grad_cov2 = at::empty_like(cov2);
  const auto acc = acc_dtype(cov1.scalar_type());
  const at::Tensor grad_and_count = at::stack({grad.reshape({}).to(acc), count.reshape({}).to(acc)});
  const int64_t n = cov1.numel(), batch = cov1.size(0);
  MGID_DISPATCH(cov1.scalar_type(), "mgid::bsw_loss_masked_backward(cpu)", [&] {
    using A = at::opmath_type<scalar_t>;
    const A grad_value = grad_and_count.data_ptr<A>()[0], selected = grad_and_count.data_ptr<A>()[1];
    const scalar_t* cov1_data = cov1.data_ptr<scalar_t>();
    const scalar_t* cov2_data = cov2.data_ptr<scalar_t>();
    const bool* mask_data = mask.data_ptr<bool>();
    scalar_t* grad_cov1_data = grad_cov1.data_ptr<scalar_t>();
    scalar_t* grad_cov2_data = grad_cov2.data_ptr<scalar_t>();
    at::parallel_for(0, n, kElementTile, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        grad_cov1_data[i] =
            static_cast<scalar_t>(bsw_grad_element(cov1_data, mask_data, i, grad_value, selected, batch));
        grad_cov2_data[i] =
            static_cast<scalar_t>(bsw_grad_element(cov2_data, mask_data, i, grad_value, selected, batch));
      }
    });
  });
  return {grad_cov1, grad_cov2.to(cov2_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(mgid, CPU, m) {
  m.impl("bsw_threshold", &bsw_threshold_cpu);
  m.impl("bsw_loss_masked", &bsw_loss_masked_cpu);
  m.impl("bsw_loss_masked_backward", &bsw_loss_masked_backward_cpu);
}

}  // namespace mgid
