// What rnnkit's loader (__init__.py) asks of a kernel library besides the kernels: which sources and CPU
// variant it was built from, how many threads ran its latest threaded loop, and a check of its BLAS path.

#include <cstdint>

#include "gemm.h"
#include "parallel.h"

#ifndef RNNKIT_SOURCE_KEY
#define RNNKIT_SOURCE_KEY "unknown"
#endif
#ifndef RNNKIT_VARIANT
#define RNNKIT_VARIANT "unknown"
#endif

namespace {

// y (B, N) = x (B, K) W^T and, where the slots allow it, z (B, K) = d (B, N) W: the two products of the
// sequence kernels, through the GEMM slots at p[0..4] (GEMM_SLOTS), with the arguments they pass.
template <typename S>
void gemm_check(const int64_t* p, int64_t B, int64_t N, int64_t K, const S* x, S* y, const S* d, S* z) {
  const rnnkit::Gemm g = rnnkit::gemm_at(p, 0);
  rnnkit::product_wt<S>(g, int(B), int(N), int(K), x, y);
  if (g.kind != rnnkit::kGemmPacked || g.packed_w) rnnkit::product_w<S>(g, int(B), int(N), int(K), d, z);
}

}  // namespace

extern "C" {
#pragma GCC visibility push(default)  // the library is built with -fvisibility=hidden
const char* rnnkit_source_key() { return RNNKIT_SOURCE_KEY; }
const char* rnnkit_variant() { return RNNKIT_VARIANT; }
int64_t rnnkit_threads_used() { return rnnkit::last_team.load(std::memory_order_relaxed); }
#ifdef _OPENMP
int64_t rnnkit_openmp() { return _OPENMP; }
#else
int64_t rnnkit_openmp() { return 0; }
#endif
void rnnkit_gemm_check_f32(const int64_t* p, int64_t B, int64_t N, int64_t K, const float* x, float* y,
                           const float* d, float* z) {
  gemm_check<float>(p, B, N, K, x, y, d, z);
}
void rnnkit_gemm_check_f64(const int64_t* p, int64_t B, int64_t N, int64_t K, const double* x, double* y,
                           const double* d, double* z) {
  gemm_check<double>(p, B, N, K, x, y, d, z);
}
#pragma GCC visibility pop
}
