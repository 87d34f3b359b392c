// C++ CPU kernels of the memory ops (memory_cpu_kernels.h), baseline ISA copy, and their
// registration: each op runs the AVX2 copy (memory_cpu_avx2.cpp) where the CPU has AVX2, else this one.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "cpu_isa.h"
#include "memory_cpu_entries.h"
#include "memory_math.h"

#define MGID_CPU_ISA_NS isa_baseline
#include "memory_cpu_kernels.h"
#undef MGID_CPU_ISA_NS

namespace mgid {
namespace {

// The copy of a kernel to run: the two have the same signature and compute the same floats.
#define MGID_BY_ISA(name, ...) (cpu_isa_is_avx2() ? isa_avx2::name(__VA_ARGS__) : isa_baseline::name(__VA_ARGS__))

at::Tensor memory_read(const at::Tensor& query, const at::Tensor& items, bool grad_through_weights) {
  return MGID_BY_ISA(memory_read_cpu, query, items, grad_through_weights);
}
at::Tensor memory_read_backward(const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& items,
                                bool grad_through_weights) {
  return MGID_BY_ISA(memory_read_backward_cpu, grad_out, query, items, grad_through_weights);
}
std::tuple<at::Tensor, at::Tensor> memory_update_stats(const at::Tensor& query, const at::Tensor& items,
                                                       bool max_over_assigned) {
  return MGID_BY_ISA(memory_update_stats_cpu, query, items, max_over_assigned);
}
at::Tensor memory_update(const at::Tensor& query, const at::Tensor& items, bool max_over_assigned) {
  return MGID_BY_ISA(memory_update_cpu, query, items, max_over_assigned);
}
std::tuple<at::Tensor, at::Tensor> memory_losses(const at::Tensor& query, const at::Tensor& items) {
  return MGID_BY_ISA(memory_losses_cpu, query, items);
}
at::Tensor memory_losses_backward(const at::Tensor& grad_compact, const at::Tensor& grad_separate,
                                  const at::Tensor& query, const at::Tensor& items) {
  return MGID_BY_ISA(memory_losses_backward_cpu, grad_compact, grad_separate, query, items);
}
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> memory_step(
    const at::Tensor& query, const at::Tensor& items, bool grad_through_weights, bool max_over_assigned,
    bool with_losses, bool with_update) {
  return MGID_BY_ISA(memory_step_cpu, query, items, grad_through_weights, max_over_assigned, with_losses, with_update);
}
at::Tensor memory_step_backward(const at::Tensor& grad_read, const at::Tensor& grad_compact,
                                const at::Tensor& grad_separate, const at::Tensor& query, const at::Tensor& items,
                                const at::Tensor& top, bool grad_through_weights, bool with_losses) {
  return MGID_BY_ISA(memory_step_backward_cpu, grad_read, grad_compact, grad_separate, query, items, top,
                     grad_through_weights, with_losses);
}

#undef MGID_BY_ISA

}  // namespace

TORCH_LIBRARY_IMPL(mgid, CPU, m) {
  m.impl("memory_read", &memory_read);
  m.impl("memory_read_backward", &memory_read_backward);
  m.impl("memory_update_stats", &memory_update_stats);
  m.impl("memory_update", &memory_update);
  m.impl("memory_losses", &memory_losses);
  m.impl("memory_losses_backward", &memory_losses_backward);
  m.impl("memory_step", &memory_step);
  m.impl("memory_step_backward", &memory_step_backward);
}

}  // namespace mgid
