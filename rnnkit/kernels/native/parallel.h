// Threads for rnnkit's native kernels: OpenMP, as many as PyTorch uses. The Python side passes
// torch.get_num_threads() with every call (the `threads` slot), so the kernels follow torch.set_num_threads
// whichever OpenMP runtime they were linked with; where that runtime is PyTorch's own (libgomp.so.1 of the
// Linux wheels, which the library's dependency resolves to once torch is loaded), MKL's GEMM and these loops
// also share one pool of threads. Built without OpenMP, everything runs on one thread.

#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#else
inline int omp_get_thread_num() { return 0; }
inline int omp_get_num_threads() { return 1; }
#endif

namespace rnnkit {

// Threads for a loop over `rows` rows of `width` values each: one for small work (a parallel region costs
// a few microseconds), else up to `available` (torch's thread count).
inline int threads_for(int64_t rows, int64_t width, int64_t available) {
#ifndef _OPENMP
  available = 1;
#endif
  if (rows < 2 || rows * width < 16384 || available < 2) return 1;
  return int(std::min<int64_t>(available, rows));
}

// The number of threads that ran the latest threaded loop (read by rnnkit_threads_used, for the tests that
// check the kernels follow torch's thread count). Each loop's first row records it: the thread that runs
// row 0 is the team's first under a static schedule.
inline std::atomic<int> last_team{0};

inline void note_team(int64_t row) {
  if (row == 0) last_team.store(omp_get_num_threads(), std::memory_order_relaxed);
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
