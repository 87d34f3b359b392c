// Input checks of the compiled ops (host only). The Python API validates first with friendlier
// messages; these guard direct torch.ops.mgid.* calls. Messages name the argument and the
// expected shape, dtype and device.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <vector>

#include "common.h"

// The input dtypes every memory and whitening kernel is instantiated for.
#define MGID_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

// A TORCH_CHECK compiled only into MGID_DEBUG=1 builds (setup.py defines MGID_DEBUG): checks that read
// tensor values, which costs a pass over them and, on CUDA, a host synchronisation that the release
// build never makes. In a release build the condition is not evaluated.
#ifdef MGID_DEBUG
#define MGID_DEBUG_CHECK(COND, ...) TORCH_CHECK(COND, __VA_ARGS__)
#else
#define MGID_DEBUG_CHECK(COND, ...) ((void)0)
#endif

namespace mgid {

inline void check_float(const at::Tensor& tensor, const char* name, const char* layout) {
  const auto dtype = tensor.scalar_type();
  TORCH_CHECK(dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat || dtype == at::kDouble,
              "mgid: ", name, " must be a floating tensor (float16, bfloat16, float32 or float64) of shape ", layout,
              ", got dtype ", tensor.scalar_type());
}

inline void check_query_items(const at::Tensor& query, const at::Tensor& items) {
  TORCH_CHECK(query.dim() == 4, "mgid: query must have shape (B, C, H, W), got ", query.sizes());
  TORCH_CHECK(items.dim() == 2, "mgid: items must have shape (M, C), got ", items.sizes());
  check_float(query, "query", "(B, C, H, W)");
  check_float(items, "items", "(M, C)");
  TORCH_CHECK(query.device() == items.device(), "mgid: query and items must be on one device, got query on ",
              query.device(), " and items on ", items.device());
  TORCH_CHECK(items.size(1) == query.size(1),
              "mgid: items must have shape (M, C) with C = query.size(1) = ", query.size(1), ", got ", items.sizes());
  TORCH_CHECK(query.numel() > 0 && items.numel() > 0, "mgid: query and items must not be empty, got query ",
              query.sizes(), " and items ", items.sizes());
  TORCH_CHECK(items.size(0) <= kMaxItems, "mgid: at most ", kMaxItems,
              " memory items are supported, got M = ", items.size(0));
}

inline void check_covariances(const at::Tensor& cov1, const at::Tensor& cov2) {
  TORCH_CHECK(cov1.dim() == 3 && cov1.size(1) == cov1.size(2), "mgid: cov1 must have shape (B, C, C), got ",
              cov1.sizes());
  TORCH_CHECK(cov1.sizes() == cov2.sizes(), "mgid: cov2 must have the shape of cov1 ", cov1.sizes(), ", got ",
              cov2.sizes());
  check_float(cov1, "cov1", "(B, C, C)");
  check_float(cov2, "cov2", "(B, C, C)");
  TORCH_CHECK(cov1.device() == cov2.device(), "mgid: cov1 and cov2 must be on one device, got ", cov1.device(), " and ",
              cov2.device());
  TORCH_CHECK(cov1.numel() > 0, "mgid: cov1 must not be empty, got ", cov1.sizes());
}

inline void check_mask(const at::Tensor& mask, const at::Tensor& cov1) {
  TORCH_CHECK(mask.scalar_type() == at::kBool, "mgid: mask must be a bool tensor, got ", mask.scalar_type());
  TORCH_CHECK(mask.sizes() == cov1.sizes(), "mgid: mask must have the shape of cov1 ", cov1.sizes(), ", got ",
              mask.sizes());
  TORCH_CHECK(mask.device() == cov1.device(), "mgid: mask must be on ", cov1.device(), ", got ", mask.device());
}

// Everything a memory kernel needs, prepared on the host without synchronising: the query as
// contiguous NCHW (no copy when it already is), the items transposed to (C, M) in the
// accumulation dtype, and the sizes.
struct MemoryInputs {
  at::Tensor query;    // (B, C, H, W) contiguous
  at::Tensor items_t;  // (C, M) contiguous, accumulation dtype
  int64_t B, C, H, W, HW, N;
  int M;
};

inline at::ScalarType acc_dtype(at::ScalarType t);

inline MemoryInputs prepare_memory_inputs(const at::Tensor& query, const at::Tensor& items) {
  check_query_items(query, items);
  MemoryInputs in;
  in.query = query.contiguous();
  in.items_t = items.detach().to(acc_dtype(query.scalar_type())).t().contiguous();
  in.B = query.size(0);
  in.C = query.size(1);
  in.H = query.size(2);
  in.W = query.size(3);
  in.HW = in.H * in.W;
  in.N = in.B * in.HW;
  in.M = static_cast<int>(items.size(0));
  return in;
}

// The read's upstream gradient has the read's output shape (B, 2C, H, W); returned contiguous in the
// query's dtype.
inline at::Tensor checked_read_grad(const at::Tensor& grad_out, const MemoryInputs& in) {
  const std::vector<int64_t> expected = {in.B, 2 * in.C, in.H, in.W};
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(expected),
              "mgid: grad_out must have shape (B, 2C, H, W) = ", at::IntArrayRef(expected), ", got ", grad_out.sizes());
  return grad_out.to(in.query.scalar_type()).contiguous();
}

// dL/dcompactness and dL/dseparateness (0-dim, any float dtype and device) as two values in the
// accumulation dtype on the query's device, where the kernels read them (no host synchronisation).
inline at::Tensor stacked_loss_grads(const at::Tensor& grad_compact, const at::Tensor& grad_separate,
                                     const MemoryInputs& in) {
  const auto acc = in.items_t.scalar_type();
  return at::stack({grad_compact.reshape({}).to(acc), grad_separate.reshape({}).to(acc)}).to(in.query.device());
}

// The step's saved nearest items (N, 2) int32 (in.N rows with the losses, none without), contiguous.
inline at::Tensor checked_step_top(const at::Tensor& top, const MemoryInputs& in, bool with_losses) {
  TORCH_CHECK(
      top.scalar_type() == at::kInt && top.dim() == 2 && top.size(1) == 2 && top.size(0) == (with_losses ? in.N : 0),
      "mgid: top must be the int32 (N, 2) = (", with_losses ? in.N : 0, ", 2) nearest items memory_step returned, got ",
      top.scalar_type(), " ", top.sizes());
  TORCH_CHECK(top.device() == in.query.device(), "mgid: top must be on ", in.query.device(), ", got ", top.device());
  // The kernels index the items with these values: out of range, they would read outside them.
  MGID_DEBUG_CHECK(top.numel() == 0 || (top.min().item<int32_t>() >= 0 && top.max().item<int32_t>() < in.M),
                   "mgid: top must hold item indices in [0, ", in.M, "), got values in [", top.min().item<int32_t>(),
                   ", ", top.max().item<int32_t>(), "]");
  return top.contiguous();
}

// Separateness needs the two best items of every query.
inline void check_loss_items(const at::Tensor& items) {
  TORCH_CHECK(items.dim() == 2 && items.size(0) >= 2,
              "mgid: memory_losses needs at least 2 memory items (separateness uses the top two), got items ",
              items.sizes());
}

inline int64_t num_query_tiles(int64_t N) { return (N + kQueryTile - 1) / kQueryTile; }

// Inputs of the 1-D k-means (whitening_math.h), made by ATen calls on the values' device without a
// host synchronisation: the sorted values (float64), their mean mu (0-dim), and the prefix sums
// [0, y0, y0+y1, ...] of y = x - mu and of y^2.
struct KmeansInputs {
  at::Tensor x, mu, p1, p2;
};

// From values already sorted (float64, 1-D, contiguous): the same ATen calls on every device.
inline KmeansInputs kmeans_inputs_from_sorted(const at::Tensor& sorted) {
  KmeansInputs in;
  in.x = sorted;
  in.mu = in.x.mean();
  const at::Tensor y = in.x - in.mu;
  const at::Tensor zero = at::zeros({1}, in.x.options());
  in.p1 = at::cat({zero, at::cumsum(y, 0)}).contiguous();
  in.p2 = at::cat({zero, at::cumsum(y * y, 0)}).contiguous();
  return in;
}

inline KmeansInputs kmeans_inputs(const at::Tensor& values) {
  return kmeans_inputs_from_sorted(std::get<0>(at::sort(values.detach().reshape({-1}).to(at::kDouble))).contiguous());
}

// The accumulation dtype of an input dtype: float64 stays, everything else accumulates in float32.
inline at::ScalarType acc_dtype(at::ScalarType dtype) { return dtype == at::kDouble ? at::kDouble : at::kFloat; }

}  // namespace mgid
