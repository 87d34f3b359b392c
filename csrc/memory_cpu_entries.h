// Entry points of the memory CPU kernels (memory_cpu_kernels.h), declared for each compiled ISA.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#define MGID_DECLARE_MEMORY_CPU_KERNELS(NS)                                                                         \
  namespace mgid {                                                                                                  \
  namespace NS {                                                                                                    \
  at::Tensor memory_read_cpu(const at::Tensor& query, const at::Tensor& items, bool grad_through_weights);          \
  at::Tensor memory_read_backward_cpu(const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& items, \
                                      bool grad_through_weights);                                                   \
  std::tuple<at::Tensor, at::Tensor> memory_update_stats_cpu(const at::Tensor& query, const at::Tensor& items,      \
                                                             bool max_over_assigned);                               \
  at::Tensor memory_update_cpu(const at::Tensor& query, const at::Tensor& items, bool max_over_assigned);           \
  std::tuple<at::Tensor, at::Tensor> memory_losses_cpu(const at::Tensor& query, const at::Tensor& items);           \
  at::Tensor memory_losses_backward_cpu(const at::Tensor& grad_compact, const at::Tensor& grad_separate,            \
                                        const at::Tensor& query, const at::Tensor& items);                          \
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> memory_step_cpu(               \
      const at::Tensor& query, const at::Tensor& items, bool grad_through_weights, bool max_over_assigned,          \
      bool with_losses, bool with_update);                                                                          \
  at::Tensor memory_step_backward_cpu(const at::Tensor& grad_read, const at::Tensor& grad_compact,                  \
                                      const at::Tensor& grad_separate, const at::Tensor& query,                     \
                                      const at::Tensor& items, const at::Tensor& top, bool grad_through_weights,    \
                                      bool with_losses);                                                            \
  }                                                                                                                 \
  }

MGID_DECLARE_MEMORY_CPU_KERNELS(isa_baseline)
MGID_DECLARE_MEMORY_CPU_KERNELS(isa_avx2)
