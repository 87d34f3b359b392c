// Registers the mgid operators with the PyTorch dispatcher. Device kernels are registered beside
// them (memory_cpu.cpp, whitening_cpu.cpp, *.cu); autograd formulas and fake (meta)
// implementations are registered in Python (mgid/ops/_registration.py).
#include <Python.h>
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

#include "checks.h"
#include "cpu_isa.h"

namespace mgid {
namespace {

bool built_with_cuda() {
#ifdef MGID_WITH_CUDA
  return true;
#else
  return false;
#endif
}

std::string built_torch_version() { return MGID_STR(MGID_TORCH_VERSION); }

// An MGID_DEBUG=1 build (setup.py): unoptimised, with debug information and the MGID_DEBUG_CHECK checks.
bool built_debug() {
#ifdef MGID_DEBUG
  return true;
#else
  return false;
#endif
}

// SHA-256 of csrc/ at build time (mgid/ops/_source_hash.py): a checkout checks that the extension it
// borrows from an installed copy of mgid was built from its own kernel sources.
std::string built_source_sha256() {
#ifdef MGID_SOURCE_SHA256
  return MGID_STR(MGID_SOURCE_SHA256);
#else
  return "";
#endif
}

std::string built_cuda_arch_list() {
#ifdef MGID_CUDA_ARCH_LIST
  std::string arch_list = MGID_STR(MGID_CUDA_ARCH_LIST);
  for (char& ch : arch_list)
    if (ch == '/') ch = ';';
  return arch_list;
#else
  return "";
#endif
}

// Device-generic ops composed of ATen calls (cuBLAS / MKL GEMM) and the mgid kernels.
at::Tensor feature_covariance(const at::Tensor& features) {
  TORCH_CHECK(features.dim() == 4, "mgid: features must have shape (B, C, H, W), got ", features.sizes());
  check_float(features, "features", "(B, C, H, W)");
  const int64_t B = features.size(0), C = features.size(1), HW = features.size(2) * features.size(3);
  TORCH_CHECK(HW >= 2, "mgid: features need H*W >= 2 for a covariance, got ", features.sizes());
  const at::Tensor flat = features.reshape({B, C, HW});
  const at::Tensor ridge = at::eye(C, features.options()).mul_(kCovEps).expand({B, C, C});
  return at::baddbmm(ridge, flat, flat.transpose(1, 2), 1.0, 1.0 / static_cast<double>(HW - 1));
}

at::Tensor bsw_mask(const at::Tensor& cov1, const at::Tensor& cov2, int64_t k) {
  check_covariances(cov1, cov2);
  TORCH_CHECK(k >= 1, "mgid: k must be >= 1, got ", k);
  const at::Tensor variance = (cov1.detach() - cov2.detach().to(cov1.scalar_type())).pow(2).div(4).to(at::kDouble);
  static auto threshold_op = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("mgid::bsw_threshold", "")
                                 .typed<at::Tensor(const at::Tensor&, int64_t)>();
  const at::Tensor threshold = threshold_op.call(variance, k);
  const int64_t C = cov1.size(1);
  const at::Tensor upper = at::ones({C, C}, cov1.options().dtype(at::kBool)).triu();
  return variance.le(threshold).logical_and_(upper);
}

}  // namespace

TORCH_LIBRARY(mgid, m) {
  m.def("built_with_cuda() -> bool", &built_with_cuda);
  m.def("built_torch_version() -> str", &built_torch_version);
  m.def("built_debug() -> bool", &built_debug);
  m.def("built_cuda_arch_list() -> str", &built_cuda_arch_list);
  m.def("built_source_sha256() -> str", &built_source_sha256);
  m.def("cpu_isa() -> str", &cpu_isa);

  m.def("memory_read(Tensor query, Tensor items, bool grad_through_weights=False) -> Tensor");
  m.def("memory_read_backward(Tensor grad_out, Tensor query, Tensor items, bool grad_through_weights) -> Tensor");
  m.def("memory_update_stats(Tensor query, Tensor items, bool max_over_assigned=False) -> (Tensor, Tensor)");
  m.def("memory_update(Tensor query, Tensor items, bool max_over_assigned=False) -> Tensor");
  m.def("memory_losses(Tensor query, Tensor items) -> (Tensor, Tensor)");
  m.def("memory_losses_backward(Tensor grad_compactness, Tensor grad_separateness, Tensor query, "
        "Tensor items) -> Tensor");
  m.def("memory_step(Tensor query, Tensor items, bool grad_through_weights=False, bool max_over_assigned=False, "
        "bool with_losses=True, bool with_update=True) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("memory_step_backward(Tensor grad_read, Tensor grad_compactness, Tensor grad_separateness, Tensor query, "
        "Tensor items, Tensor top, bool grad_through_weights, bool with_losses) -> Tensor");

  m.def("feature_covariance(Tensor features) -> Tensor");
  m.def("bsw_threshold(Tensor values, int k) -> Tensor");
  m.def("bsw_mask(Tensor cov1, Tensor cov2, int k=50) -> Tensor");
  m.def("bsw_loss_masked(Tensor cov1, Tensor cov2, Tensor mask) -> (Tensor, Tensor)");
  m.def("bsw_loss_masked_backward(Tensor grad, Tensor cov1, Tensor cov2, Tensor mask, Tensor count) "
        "-> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mgid, CompositeExplicitAutograd, m) {
  m.impl("feature_covariance", &feature_covariance);
  m.impl("bsw_mask", &bsw_mask);
}

}  // namespace mgid

// The extension is loaded as a Python module only to run the registrations above.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
