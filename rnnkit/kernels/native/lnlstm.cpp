// rnnkit's fused step kernels for the layer-normalised LSTM (LayerNormLSTMCell), forward and backward.
//
// The Python side (rnnkit/native/__init__.py, rnnkit/sequences.py) runs the loop over time: at each step it
// computes the recurrent matrix product with torch.mm (PyTorch's BLAS), then calls one function here that
// does all of the step's element-wise work in one pass over each batch row: the layer norm of the product,
// the gates, the cell update, the layer norm of the cell, the output and the masking of rows past their end.
// In the unfused path the same work is about a dozen ATen calls per step, each a pass over memory and a
// dispatch from Python.
//
// No PyTorch headers: the file builds in about a second with a plain C++ compiler, and every buffer is
// passed as a raw pointer to contiguous memory of one dtype (float or double), laid out as the comments on
// Slot say. The equations are those of LayerNormLSTMCell's docstring:
//
//   r = (h * rmask) W_hh^T                      (computed outside, by torch.mm)
//   r_hat = (r - mean(r)) / sqrt(var(r) + eps)  (over the 4H features of a row)
//   z = xp + g_hh * r_hat;  i, f, o = sigmoid(z_i, z_f, z_o);  g = tanh(z_g)
//   c' = f * c + i * g;     y = tanh(LN(c'; g_c, b_c));  h' = o * y
//
// and the backward is their derivative, written out below.

#include <cmath>
#include <cstdint>

#include "gemm.h"
#include "norm.h"
#include "parallel.h"
#include "vmath.h"

namespace {

// Positions in the int64 slot array the Python side fills once per call (pointers as integers).
enum Slot : int {
  kT, kB, kH,
  kXp,       // (T, B, 4H)  input half of the gates, LN(W_ih x) + biases (or W_ih x: see GainIH)
  kProd,     // (B, 4H)     this step's recurrent product, written by torch.mm before each forward step
  kGainHH,   // (4H)        gain of the recurrent product's layer norm
  kGainC,    // (H)         gain of the cell's layer norm
  kBiasC,    // (H)         shift of the cell's layer norm
  kMask,     // (T, B) bool, or 0: rows past their end keep their state and output zeros
  kRMask,    // (B, H), or 0: dropout mask on the state where it enters the recurrent product
  kHs,       // (T+1, B, H) the state h before each step, and the last
  kCs,       // (T+1, B, H) the cell c before each step, and the last
  kHIn,      // (T+1, B, H) h * rmask (the product's input), or 0 without rmask
  kRHat,     // (T, B, 4H)  normalised recurrent products
  kRRstd,    // (T, B)      1/std of the recurrent products' rows
  kAct,      // (T, B, 4H)  sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
  kCNew,     // (T, B, H)   c' (the same memory as Cs[1:] without a mask)
  kCMean,    // (T, B)
  kCRstd,    // (T, B)
  kTanhC,    // (T, B, H)   tanh(LN(c'))
  kOut,      // (T, B, H)   outputs (the same memory as Hs[1:] without a mask)
  kGradOut,  // (T, B, H) gradient of the outputs, or 0
  kDhMM,     // (B, H)      gradient reaching h from the later step's product (before rmask), or grad of h_T
  kKeepH,    // (B, H), or 0 without a mask: gradient passed straight through rows past their end
  kDc,       // (B, H)      gradient of c, updated in place from c_{t+1} to c_t
  kDGates,   // (T, B, 4H)  gradient of Xp: of the pre-activations z, or of u with GainIH
  kDR,       // (T, B, 4H)  gradient of the recurrent product r
  kDGainHH,  // (4H) float64, gradient of g_hh, accumulated over the steps and rows
  kDGainC,   // (H) float64, gradient of g_c, accumulated
  kDBiasC,   // (H) float64, gradient of b_c, accumulated
  kGainIH,   // (4H) or 0: with it, Xp holds the raw input product u = W_ih x, and the kernel applies its
             // layer norm itself: LN(u; g_ih) + shift_ih (otherwise Xp is that already)
  kShiftIH,  // (4H) or 0: b_ih + b_hh, the input layer norm's shift
  kUMean,    // (T, B)      mean of each row of u (with GainIH)
  kURstd,    // (T, B)      1/std of each row of u
  kDGainIH,  // (4H) float64, gradient of g_ih, accumulated (with GainIH)
  kDShiftIH, // (4H) float64, gradient of shift_ih, accumulated, or 0
  kGemmKind,  // five slots for the sequence functions' products: rnnkit::gemm_at (gemm.h)
  kThreads = kGemmKind + 5,  // torch.get_num_threads() at the call (parallel.h)
  kSlots
};

using rnnkit::at;
using rnnkit::layer_norm_backward;
using rnnkit::layer_norm_backward_of;
using rnnkit::moments;
using rnnkit::sigmoid;
using rnnkit::tanh_of;

template <typename S>
void forward_step(const int64_t* p, int64_t t, S eps) {
  const int64_t B = p[kB], H = p[kH], G = 4 * H;
  const S* prod = at<S>(p, kProd);
  const S* g_hh = at<S>(p, kGainHH);
  const S* g_c = at<S>(p, kGainC);
  const S* b_c = at<S>(p, kBiasC);
  const S* g_ih = p[kGainIH] ? at<S>(p, kGainIH) : nullptr;
  const S* shift_ih = p[kShiftIH] ? at<S>(p, kShiftIH) : nullptr;
  const bool* mask = p[kMask] ? at<bool>(p, kMask) + t * B : nullptr;
  const S* rmask = p[kRMask] ? at<S>(p, kRMask) : nullptr;
  const S* hs = at<S>(p, kHs) + t * B * H;
  const S* cs = at<S>(p, kCs) + t * B * H;
  S* h_next = at<S>(p, kHs) + (t + 1) * B * H;
  S* c_next = at<S>(p, kCs) + (t + 1) * B * H;
  S* h_in = p[kHIn] ? at<S>(p, kHIn) + (t + 1) * B * H : nullptr;
  const int threads = rnnkit::threads_for(B, G, p[kThreads]);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t b = 0; b < B; ++b) {
    rnnkit::note_team(b);
    const S* r = prod + b * G;
    const S* xp = at<S>(p, kXp) + (t * B + b) * G;
    S* r_hat = at<S>(p, kRHat) + (t * B + b) * G;
    S* act = at<S>(p, kAct) + (t * B + b) * G;
    S* c_new = at<S>(p, kCNew) + (t * B + b) * H;
    S* tanh_c = at<S>(p, kTanhC) + (t * B + b) * H;
    S* out = at<S>(p, kOut) + (t * B + b) * H;
    const S* c = cs + b * H;
    const S* h = hs + b * H;

    S mean, rstd;
    moments(r, G, eps, mean, rstd);
    at<S>(p, kRRstd)[t * B + b] = rstd;
    if (g_ih) {  // the input product's layer norm, here rather than in a pass of its own
      S u_mean, u_rstd;
      moments(xp, G, eps, u_mean, u_rstd);
      at<S>(p, kUMean)[t * B + b] = u_mean;
      at<S>(p, kURstd)[t * B + b] = u_rstd;
      for (int64_t k = 0; k < G; ++k) {
        S n = (r[k] - mean) * rstd;
        r_hat[k] = n;
        act[k] = (xp[k] - u_mean) * u_rstd * g_ih[k] + (shift_ih ? shift_ih[k] : S(0)) + g_hh[k] * n;
      }
    } else {
      for (int64_t k = 0; k < G; ++k) {
        S n = (r[k] - mean) * rstd;
        r_hat[k] = n;
        act[k] = xp[k] + g_hh[k] * n;  // z, turned into activations below
      }
    }
    for (int64_t k = 0; k < 2 * H; ++k) act[k] = sigmoid(act[k]);
    for (int64_t k = 2 * H; k < 3 * H; ++k) act[k] = tanh_of(act[k]);
    for (int64_t k = 3 * H; k < G; ++k) act[k] = sigmoid(act[k]);
    const S* a_i = act;
    const S* a_f = act + H;
    const S* a_g = act + 2 * H;
    const S* a_o = act + 3 * H;
    for (int64_t k = 0; k < H; ++k) c_new[k] = a_f[k] * c[k] + a_i[k] * a_g[k];
    S c_mean, c_rstd;
    moments(c_new, H, eps, c_mean, c_rstd);
    at<S>(p, kCMean)[t * B + b] = c_mean;
    at<S>(p, kCRstd)[t * B + b] = c_rstd;
    for (int64_t k = 0; k < H; ++k) {
      S y = tanh_of((c_new[k] - c_mean) * c_rstd * g_c[k] + b_c[k]);
      tanh_c[k] = y;
      out[k] = a_o[k] * y;
    }
    S* hn = h_next + b * H;
    S* cn = c_next + b * H;
    if (mask && !mask[b]) {  // past its end: keep the state, output zeros
      for (int64_t k = 0; k < H; ++k) { hn[k] = h[k]; cn[k] = c[k]; out[k] = 0; }
    } else if (mask) {
      for (int64_t k = 0; k < H; ++k) { hn[k] = out[k]; cn[k] = c_new[k]; }
    }  // without a mask, out and c_new are already h_next and c_next
    if (h_in) {
      const S* m = rmask + b * H;
      S* hi = h_in + b * H;
      for (int64_t k = 0; k < H; ++k) hi[k] = hn[k] * m[k];
    }
  }
}

// One step back in time. On entry DhMM holds the gradient reaching h_{t+1} through step t+1's recurrent
// product (before the rmask; at the last step, with `last` set, the gradient of h_T itself), KeepH what
// reached h_{t+1} past the row's end, Dc the gradient of c_{t+1}. On return Dc is the gradient of c_t and
// KeepH that of h_t past the end; the caller adds DR[t] W_hh (the product) to reach h_t.
// The gains' and shifts' gradients: sums over rows, per thread where there are several (parallel.h); made
// once for a whole sequence, or for one step where the Python side drives the loop.
using Sums = rnnkit::ThreadSums<5>;

inline Sums backward_sums(const int64_t* p) {
  const int64_t H = p[kH], G = 4 * H;
  double* totals[5] = {at<double>(p, kDGainHH), at<double>(p, kDGainC), at<double>(p, kDBiasC),
                       p[kDGainIH] ? at<double>(p, kDGainIH) : nullptr,
                       p[kDShiftIH] ? at<double>(p, kDShiftIH) : nullptr};
  return Sums(totals, {G, H, H, G, G}, rnnkit::threads_for(p[kB], G, p[kThreads]));
}

template <typename S>
void backward_step(const int64_t* p, int64_t t, int64_t last, Sums& sums) {
  const int64_t B = p[kB], H = p[kH], G = 4 * H;
  const S* g_hh = at<S>(p, kGainHH);
  const S* g_c = at<S>(p, kGainC);
  const bool* mask = p[kMask] ? at<bool>(p, kMask) + t * B : nullptr;
  const S* rmask = (p[kRMask] && !last) ? at<S>(p, kRMask) : nullptr;
  const S* grad_out = p[kGradOut] ? at<S>(p, kGradOut) + t * B * H : nullptr;
  const S* dh_mm = at<S>(p, kDhMM);
  S* keep_h = p[kKeepH] ? at<S>(p, kKeepH) : nullptr;
  S* dc_all = at<S>(p, kDc);
  const S* cs = at<S>(p, kCs) + t * B * H;
  const S* g_ih = p[kGainIH] ? at<S>(p, kGainIH) : nullptr;
  const int threads = rnnkit::threads_for(B, G, p[kThreads]);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t b = 0; b < B; ++b) {
    rnnkit::note_team(b);
    double *d_gain_hh = sums.part(0), *d_gain_c = sums.part(1), *d_bias_c = sums.part(2);
    double *d_gain_ih = sums.part(3), *d_shift_ih = sums.part(4);
    S x_hat_buf[4096];  // the row's normalised c' (H <= 4096 is checked on the Python side)
    S d_lnc[4096];      // the row's gradient of LN(c')
    const int64_t row = t * B + b;
    S* d_gates = at<S>(p, kDGates) + row * G;
    S* d_r = at<S>(p, kDR) + row * G;
    S* dc = dc_all + b * H;
    S* kh = keep_h ? keep_h + b * H : nullptr;
    const S* dm = dh_mm + b * H;
    const S* rm = rmask ? rmask + b * H : nullptr;
    if (mask && !mask[b]) {  // past its end: the gradient of the state passes straight through
      for (int64_t k = 0; k < H; ++k) kh[k] += rm ? dm[k] * rm[k] : dm[k];
      for (int64_t k = 0; k < G; ++k) { d_gates[k] = 0; d_r[k] = 0; }
      continue;  // dc unchanged
    }
    const S* act = at<S>(p, kAct) + row * G;
    const S* a_i = act;
    const S* a_f = act + H;
    const S* a_g = act + 2 * H;
    const S* a_o = act + 3 * H;
    const S* tanh_c = at<S>(p, kTanhC) + row * H;
    const S* c_new = at<S>(p, kCNew) + row * H;
    const S* c = cs + b * H;
    const S* go = grad_out ? grad_out + b * H : nullptr;
    const S c_mean = at<S>(p, kCMean)[row], c_rstd = at<S>(p, kCRstd)[row];
    S* d_o = d_gates + 3 * H;  // d(o) first, turned into d(z_o) below
    for (int64_t k = 0; k < H; ++k) {
      S dh = (rm ? dm[k] * rm[k] : dm[k]) + (kh ? kh[k] : S(0)) + (go ? go[k] : S(0));
      S y = tanh_c[k];
      d_o[k] = dh * y;
      d_lnc[k] = dh * a_o[k] * (S(1) - y * y);
      x_hat_buf[k] = (c_new[k] - c_mean) * c_rstd;
    }
    if (kh) for (int64_t k = 0; k < H; ++k) kh[k] = 0;
    // d c' = LN backward + the gradient of c_{t+1}; then the gates.
    S* dcn = d_r;  // scratch for d c' (d_r is written last)
    layer_norm_backward(d_lnc, g_c, x_hat_buf, c_rstd, H, dcn);
    for (int64_t k = 0; k < H; ++k) {
      S d = dcn[k] + dc[k];
      S i = a_i[k], f = a_f[k], g = a_g[k], o = a_o[k];
      d_gates[k] = d * g * i * (S(1) - i);
      d_gates[H + k] = d * c[k] * f * (S(1) - f);
      d_gates[2 * H + k] = d * i * (S(1) - g * g);
      d_gates[3 * H + k] = d_o[k] * o * (S(1) - o);
      dc[k] = d * f;
    }
    const S* r_hat = at<S>(p, kRHat) + row * G;
    layer_norm_backward(d_gates, g_hh, r_hat, at<S>(p, kRRstd)[row], G, d_r);
    for (int64_t k = 0; k < G; ++k) d_gain_hh[k] += double(d_gates[k] * r_hat[k]);
    if (g_ih) {  // through the input product's layer norm: DGates becomes the gradient of u, in place
      const S* u = at<S>(p, kXp) + row * G;
      const S u_mean = at<S>(p, kUMean)[row], u_rstd = at<S>(p, kURstd)[row];
      auto u_hat = [u, u_mean, u_rstd](int64_t k) { return (u[k] - u_mean) * u_rstd; };
      for (int64_t k = 0; k < G; ++k) d_gain_ih[k] += double(d_gates[k] * u_hat(k));
      if (d_shift_ih)
        for (int64_t k = 0; k < G; ++k) d_shift_ih[k] += double(d_gates[k]);
      layer_norm_backward_of(d_gates, g_ih, u_hat, u_rstd, G, d_gates);
    }
    for (int64_t k = 0; k < H; ++k) {
      d_gain_c[k] += double(d_lnc[k] * x_hat_buf[k]);
      d_bias_c[k] += double(d_lnc[k]);
    }
  }
}

template <typename S>
void backward_one_step(const int64_t* p, int64_t t, int64_t last) {
  Sums sums = backward_sums(p);
  backward_step<S>(p, t, last, sums);
  sums.merge();
}

// The whole sequence, the recurrent products included (gemm.h).
template <typename S>
void forward_sequence(const int64_t* p, S eps) {
  rnnkit::forward_loop<S>(rnnkit::gemm_at(p, kGemmKind), p[kT], p[kB], 4 * p[kH], p[kH],
                          at<S>(p, p[kHIn] ? kHIn : kHs), at<S>(p, kProd),
                          [p, eps](int64_t t) { forward_step<S>(p, t, eps); });
}

template <typename S>
void backward_sequence(const int64_t* p) {
  const int64_t T = p[kT];
  Sums sums = backward_sums(p);  // each thread sums its rows over all steps; merged once, in thread order
  rnnkit::backward_loop<S>(rnnkit::gemm_at(p, kGemmKind), T, p[kB], 4 * p[kH], p[kH], at<S>(p, kDR),
                           at<S>(p, kDhMM),
                           [p, T, &sums](int64_t t) { backward_step<S>(p, t, t == T - 1, sums); });
  sums.merge();
}

}  // namespace

extern "C" {
#pragma GCC visibility push(default)  // the library is built with -fvisibility=hidden
void rnnkit_lnlstm_forward_sequence_f32(const int64_t* p, double eps) { forward_sequence<float>(p, float(eps)); }
void rnnkit_lnlstm_forward_sequence_f64(const int64_t* p, double eps) { forward_sequence<double>(p, eps); }
void rnnkit_lnlstm_backward_sequence_f32(const int64_t* p) { backward_sequence<float>(p); }
void rnnkit_lnlstm_backward_sequence_f64(const int64_t* p) { backward_sequence<double>(p); }
int64_t rnnkit_lnlstm_slots() { return kSlots; }
void rnnkit_lnlstm_forward_f32(const int64_t* p, int64_t t, double eps) { forward_step<float>(p, t, float(eps)); }
void rnnkit_lnlstm_forward_f64(const int64_t* p, int64_t t, double eps) { forward_step<double>(p, t, eps); }
void rnnkit_lnlstm_backward_f32(const int64_t* p, int64_t t, int64_t last) {
  backward_one_step<float>(p, t, last);
}
void rnnkit_lnlstm_backward_f64(const int64_t* p, int64_t t, int64_t last) {
  backward_one_step<double>(p, t, last);
}
#pragma GCC visibility pop
}
