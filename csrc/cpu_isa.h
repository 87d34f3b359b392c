// Which copy of the CPU memory kernels runs: "avx2" where the CPU has AVX2 (x86-64), else
// "baseline"; MGID_CPU_ISA=baseline forces the baseline copy (tests compare the two, bit for bit).
#pragma once

#include <cstdlib>
#include <cstring>
#include <string>

namespace mgid {

inline bool cpu_has_avx2() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
#else
  return false;
#endif
}

// Read on every call (one getenv): tests switch it between calls.
inline bool cpu_isa_is_avx2() {
  const char* forced = std::getenv("MGID_CPU_ISA");
  if (forced != nullptr && std::strcmp(forced, "baseline") == 0) return false;
  return cpu_has_avx2();
}

inline std::string cpu_isa() { return cpu_isa_is_avx2() ? "avx2" : "baseline"; }

}  // namespace mgid
