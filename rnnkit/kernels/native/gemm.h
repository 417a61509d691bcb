// The recurrent matrix products of rnnkit's native kernels, through the BLAS that PyTorch's CPU library
// carries (Intel MKL in the x86-64 builds), found by the Python side and handed over as function pointers:
//
// - float32: MKL's packed GEMM. W_hh is packed once per sequence call (cblas_sgemm_pack, on the Python
//   side) and every step multiplies by the packed copy (cblas_sgemm_compute): a small-batch product no
//   longer re-packs the whole weight matrix at every step, as a plain GEMM call does;
// - float64 (and float32 without the packed API): the Fortran GEMM (dgemm_ / sgemm_).
//
// Without them (another BLAS), the Python side runs the time loop itself with torch.mm and calls the step
// functions one at a time.

#pragma once

#include <cmath>
#include <cstdint>

namespace rnnkit {

// A kernel's slot array holds pointers and sizes as int64 (filled by rnnkit.native.Slots).
template <typename S>
inline S* at(const int64_t* p, int slot) { return reinterpret_cast<S*>(p[slot]); }

enum GemmKind : int64_t { kGemmNone = 0, kGemmPacked = 1, kGemmFortran = 2 };

// The BLAS's integers. MKL's LP64 interface (PyTorch's) takes 32-bit ints, an ILP64 build 64-bit ones. Held
// in 64 bits, a small non-negative value reads the same to either: by value on x86-64, each argument fills a
// 64-bit register or stack slot, whose low half is what an `int` parameter reads; by pointer (Fortran) on a
// little-endian machine, the low half comes first. Elsewhere they are plain ints. The loader still checks a
// product against torch.mm before any kernel runs (rnnkit_gemm_check), for BLAS libraries that differ in
// other ways.
#if defined(__x86_64__) || defined(_M_X64)
using BlasInt = int64_t;
#else
using BlasInt = int;
#endif
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
using FortranInt = int64_t;
#else
using FortranInt = int;
#endif

// cblas_sgemm_compute (CBLAS enums are ints).
using PackedCompute = void (*)(BlasInt layout, BlasInt transa, BlasInt transb, BlasInt m, BlasInt n, BlasInt k,
                               const float* a, BlasInt lda, const float* b, BlasInt ldb, float beta, float* c,
                               BlasInt ldc);
template <typename S>
using FortranGemm = void (*)(const char* transa, const char* transb, const FortranInt* m, const FortranInt* n,
                             const FortranInt* k, const S* alpha, const S* a, const FortranInt* lda, const S* b,
                             const FortranInt* ldb, const S* beta, S* c, const FortranInt* ldc);

constexpr int kRowMajor = 101, kNoTrans = 111, kPacked = 151;

struct Gemm {
  int64_t kind;
  void* fn;                 // cblas_sgemm_compute, or the Fortran gemm of the dtype
  const void* weight;       // W (N, K) row-major
  const int64_t* packed_wt;  // packed kind: W^T as the right-hand matrix of x (B, K) @ W^T, in slices (below)
  const int64_t* packed_w;   // packed kind: W as the right-hand matrix of d (B, N) @ W, in slices
};

// The packed copies come in slices of the product's output columns: a table {parts, slice 0, slice 1, ...},
// slice p packed for the columns [n p / parts, n (p + 1) / parts) of an n-column product (rnnkit.native
// packs them so). With several parts, each thread of one parallel region multiplies its own slice, MKL
// running on one thread inside it: for the 32-row products of a time step this beat MKL's own split of the
// whole product (2 threads on an AVX2 machine: 119 against 157 us at H=256, 447 against 542 at H=512).
// One part is multiplied outside any parallel region, so that MKL threads it itself: inside even a
// serialised region (an OpenMP `if` clause that is false), MKL's own region would be a nested one, whose
// threads libgomp starts anew at every call (20 times slower, measured).
inline void packed_product(const Gemm& g, const int64_t* table, int B, int n, int k, const float* a, float* out) {
  const int64_t parts = table[0];
  auto multiply = [&](int64_t part) {
    const int64_t lo = n * part / parts, hi = n * (part + 1) / parts;
    reinterpret_cast<PackedCompute>(g.fn)(kRowMajor, kNoTrans, kPacked, B, hi - lo, k, a, k,
                                           reinterpret_cast<const float*>(table[1 + part]), k, 0.0f, out + lo, n);
  };
  if (parts == 1) {
    multiply(0);
    return;
  }
#pragma omp parallel for num_threads(int(parts)) schedule(static)
  for (int64_t part = 0; part < parts; ++part) multiply(part);
}

// The five GEMM slots a kernel's slot array holds from `first` on: kind, function, W (N, K) row-major, and
// the tables of W^T packed for x @ W^T and of W packed for d @ W (packed kind only; rnnkit.native.GEMM_SLOTS).
inline Gemm gemm_at(const int64_t* p, int first) {
  return {p[first], reinterpret_cast<void*>(p[first + 1]), reinterpret_cast<const void*>(p[first + 2]),
          reinterpret_cast<const int64_t*>(p[first + 3]), reinterpret_cast<const int64_t*>(p[first + 4])};
}

// A step's recurrent product, W (N, K) row-major: out (B, N) = in (B, K) @ W^T; with `back`, its gradient
// out (B, K) = in (B, N) @ W.
template <typename S>
inline void product(const Gemm& g, bool back, int B, int N, int K, const S* in, S* out) {
  const int cols = back ? K : N, inner = back ? N : K;  // out's columns, and the length of each sum
  if (g.kind == kGemmPacked) {
    packed_product(g, back ? g.packed_w : g.packed_wt, B, cols, inner, reinterpret_cast<const float*>(in),
                   reinterpret_cast<float*>(out));
  } else {
    // Column-major view: out^T = W (N, K) @ in^T forward (W row-major is W^T column-major), W^T @ in^T back.
    const S one = 1, zero = 0;
    const FortranInt c = cols, b = B, i = inner, k = K;
    reinterpret_cast<FortranGemm<S>>(g.fn)(back ? "N" : "T", "N", &c, &b, &i, &one,
                                           reinterpret_cast<const S*>(g.weight), &k, in, &i, &zero, out, &c);
  }
}

template <typename S>
inline void product_wt(const Gemm& g, int B, int N, int K, const S* x, S* out) {
  product(g, false, B, N, K, x, out);
}

template <typename S>
inline void product_w(const Gemm& g, int B, int N, int K, const S* d, S* out) {
  product(g, true, B, N, K, d, out);
}

// A layer's whole sequence, the recurrent products included: no return to Python between steps. The
// forward multiplies step t's input (B, H) rows of `inputs` by W^T into `prod` (B, G), then runs step(t);
// the backward runs step(t) from the last step down, then multiplies its row of `d_prod` (T, B, G) by W
// into `dh` (B, H), the gradient the step before receives through the product.
template <typename S, typename Step>
void forward_loop(const Gemm& g, int64_t T, int64_t B, int64_t G, int64_t H, const S* inputs, S* prod, Step step) {
  for (int64_t t = 0; t < T; ++t) {
    product_wt<S>(g, int(B), int(G), int(H), inputs + t * B * H, prod);
    step(t);
  }
}

template <typename S, typename Step>
void backward_loop(const Gemm& g, int64_t T, int64_t B, int64_t G, int64_t H, const S* d_prod, S* dh, Step step) {
  for (int64_t t = T - 1; t >= 0; --t) {
    step(t);
    product_w<S>(g, int(B), int(G), int(H), d_prod + t * B * G, dh);
  }
}

}  // namespace rnnkit
