// exp, tanh and sigmoid for rnnkit's kernels, written so that the compiler vectorises the loops that call them.
//
// The float versions are branch-free arithmetic (a polynomial and the exponent's bits), which a loop over a row
// turns into AVX-512, AVX2 or SSE code, whichever the object is compiled for, without the C library's vector
// functions: those come in only under -ffast-math, whose start-up file would set flush-to-zero for the whole
// process (see __init__.py). They are within about 2 ulp of the exact values, and never produce a
// subnormal: exp's argument is clamped to [-87.3, 87.3], so its values stay within [2^-126, 2^126] and the
// sigmoid's within [2^-126, 1]. NaN passes through (the clamps are comparisons, false for NaN).
//
// The double versions are the C library's, exact to rounding: float64 is for checking, not for speed.

#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace rnnkit {

inline uint32_t bits_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

inline float float_of(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

// e^x = 2^n e^r with n = round(x / ln 2) and r = x - n ln 2 (ln 2 in two parts, the first exact in few bits, so
// that n * ln2_hi has no rounding error), |r| <= ln 2 / 2; e^r = 1 + r + r^2 q(r), q fitted for relative
// error over that interval. Adding 1.5 * 2^23 rounds x / ln 2 to an integer held in the sum's low bits, which
// then give 2^n's exponent.
inline float exp_f32(float x) {
  constexpr float kLimit = 87.3f;  // 2^n within [2^-126, 2^126]: normal numbers, no infinity
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;  // 8 significant bits
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kRound = 12582912.0f;   // 1.5 * 2^23
  x = x > kLimit ? kLimit : x;
  x = x < -kLimit ? -kLimit : x;
  const float shifted = x * kLog2e + kRound;
  const float n = shifted - kRound;
  float r = x - n * kLn2Hi;
  r = r - n * kLn2Lo;
  float q = 0.00137514085508883f;
  q = q * r + 0.008368918672204018f;
  q = q * r + 0.04166953265666962f;
  q = q * r + 0.166665181517601f;
  q = q * r + 0.49999988079071045f;
  const float e_r = (1.0f + r) + r * r * q;
  // n + 127 in the exponent field; unsigned, so that the arithmetic is defined for any input (NaN included).
  const uint32_t scale = (bits_of(shifted) - bits_of(kRound) + 127u) << 23;
  return e_r * float_of(scale);
}

// tanh(|x|) = 1 - 2 / (e^{2|x|} + 1) away from 0, where that loses no precision; below 0.625 the odd
// polynomial x + x^3 q(x^2), fitted for relative error. Both are computed and one chosen (a select, not a
// branch, so that the loop vectorises).
inline float tanh_f32(float x) {
  const float a = std::fabs(x);
  const float far = 1.0f - 2.0f / (exp_f32(2.0f * a) + 1.0f);
  const float s = x * x;
  float q = -0.005718147847801447f;
  q = q * s + 0.02065243199467659f;
  q = q * s + -0.05374445766210556f;
  q = q * s + 0.1333151012659073f;
  q = q * s + -0.3333328366279602f;
  const float near = a + a * s * q;
  return std::copysign(a < 0.625f ? near : far, x);
}

inline float exp_of(float x) { return exp_f32(x); }
inline double exp_of(double x) { return std::exp(x); }
inline float tanh_of(float x) { return tanh_f32(x); }
inline double tanh_of(double x) { return std::tanh(x); }

template <typename S>
inline S sigmoid(S x) { return S(1) / (S(1) + exp_of(-x)); }

}  // namespace rnnkit
