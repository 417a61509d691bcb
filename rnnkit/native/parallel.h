// Threads for rnnkit's native kernels: OpenMP, sharing PyTorch's own runtime (the library links
// libgomp.so.1, which resolves to the copy PyTorch has already loaded, so torch.set_num_threads governs
// both, and MKL's GEMM and these loops use one pool). Built without OpenMP, everything runs on one thread.

#pragma once

#include <algorithm>
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#else
inline int omp_get_thread_num() { return 0; }
inline int omp_get_max_threads() { return 1; }
#endif

namespace rnnkit {

// Threads for a loop over `rows` rows of `width` values each: one for small work (a parallel region costs
// a few microseconds), else up to torch's thread count.
inline int threads_for(int64_t rows, int64_t width) {
  if (rows < 2 || rows * width < 16384) return 1;
  return int(std::min<int64_t>(omp_get_max_threads(), rows));
}

}  // namespace rnnkit
