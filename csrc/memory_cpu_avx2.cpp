// The memory CPU kernels (memory_cpu_kernels.h) compiled with AVX2 (8 floats a vector instead of 4);
// memory_cpu.cpp runs them where the CPU has AVX2 (cpu_isa.h). Every header the kernels use is
// included before the target switch, so only the kernels themselves (and the always-inlined math
// of memory_math.h) are AVX2 code. FMA stays off: the floats are those of the baseline copy.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <limits>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "memory_cpu_entries.h"

#if defined(__x86_64__) && defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#elif defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2")
#endif

#include "memory_math.h"
#define MGID_CPU_ISA_NS isa_avx2
#include "memory_cpu_kernels.h"
#undef MGID_CPU_ISA_NS

#if defined(__x86_64__) && defined(__clang__)
#pragma clang attribute pop
#elif defined(__x86_64__) && defined(__GNUC__)
#pragma GCC pop_options
#endif
