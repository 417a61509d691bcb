// Threads for rnnkit's native kernels: OpenMP, sharing PyTorch's own runtime (the library links
// libgomp.so.1, which resolves to the copy PyTorch has already loaded, so torch.set_num_threads governs
// both, and MKL's GEMM and these loops use one pool). Built without OpenMP, everything runs on one thread.

#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

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

// N sums over rows (a gradient of gains, biases or peepholes, each `sizes[j]` long, added into `totals[j]`;
// a null total is not wanted). On one thread the rows add straight into the totals; on several, each thread
// sums its rows into parts of its own, and merge() adds the parts in thread order: the same result for the
// same thread count, run after run.
template <int N>
class ThreadSums {
 public:
  ThreadSums(double* const (&totals)[N], const int64_t (&sizes)[N], int threads) : threads_(threads) {
    for (int j = 0; j < N; ++j) {
      totals_[j] = totals[j];
      sizes_[j] = sizes[j];
      offsets_[j] = width_;
      if (totals[j]) width_ += sizes[j];  // parts only for the sums wanted
    }
    if (threads > 1 && width_ > 0) parts_.assign(threads * width_, 0.0);
  }

  // Where the calling thread adds part j (inside the parallel loop).
  double* part(int j) const {
    if (threads_ <= 1 || !totals_[j]) return totals_[j];
    return const_cast<double*>(parts_.data()) + omp_get_thread_num() * width_ + offsets_[j];
  }

  void merge() {
    for (int th = 0; th < (threads_ > 1 ? threads_ : 0); ++th)
      for (int j = 0; j < N; ++j)
        if (totals_[j])
          for (int64_t k = 0; k < sizes_[j]; ++k) totals_[j][k] += parts_[th * width_ + offsets_[j] + k];
  }

 private:
  int threads_;
  double* totals_[N];
  int64_t sizes_[N], offsets_[N], width_ = 0;
  std::vector<double> parts_;
};

}  // namespace rnnkit
