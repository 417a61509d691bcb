// Layer-norm arithmetic for one row, shared by rnnkit's kernels.

#pragma once

#include <cmath>
#include <cstdint>

namespace rnnkit {

// The sum of f(k) for k < n, in 32 independent partial sums: one running sum would chain every addition
// on the one before (latency-bound); 32 lanes let the compiler keep several vector accumulators.
template <typename S, typename F>
inline S reduce(int64_t n, F f) {
  constexpr int64_t W = 32;
  S acc[W] = {};
  int64_t k = 0;
  for (; k + W <= n; k += W)
    for (int64_t j = 0; j < W; ++j) acc[j] += f(k + j);
  S sum = 0;
  for (; k < n; ++k) sum += f(k);
  for (int64_t j = 0; j < W; ++j) sum += acc[j];
  return sum;
}

// Mean and 1/std of n values (biased variance, as torch's layer norm).
template <typename S>
inline void moments(const S* x, int64_t n, S eps, S& mean, S& rstd) {
  mean = reduce<S>(n, [x](int64_t k) { return x[k]; }) / S(n);
  const S m = mean;
  S sq = reduce<S>(n, [x, m](int64_t k) { S d = x[k] - m; return d * d; });
  rstd = S(1) / std::sqrt(sq / S(n) + eps);
}

// Backward of y = x_hat * gain (+ shift) for one row: dx = rstd * (dy' - mean(dy') - x_hat * mean(dy' x_hat)),
// dy' = dy * gain, x_hat(k) given as a function. Writes dx, which may be dy itself (each dx[k] is written
// after the sums, from dy[k] alone).
template <typename S, typename XHat>
inline void layer_norm_backward_of(const S* dy, const S* gain, XHat x_hat, S rstd, int64_t n, S* dx) {
  S s1 = reduce<S>(n, [dy, gain](int64_t k) { return dy[k] * gain[k]; }) / S(n);
  S s2 = reduce<S>(n, [dy, gain, x_hat](int64_t k) { return dy[k] * gain[k] * x_hat(k); }) / S(n);
  for (int64_t k = 0; k < n; ++k) dx[k] = rstd * (dy[k] * gain[k] - s1 - x_hat(k) * s2);
}

template <typename S>
inline void layer_norm_backward(const S* dy, const S* gain, const S* x_hat, S rstd, int64_t n, S* dx) {
  layer_norm_backward_of(dy, gain, [x_hat](int64_t k) { return x_hat[k]; }, rstd, n, dx);
}

}  // namespace rnnkit
