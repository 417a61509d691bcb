// rnnkit's fused step kernels for the plain cells (vanilla RNN, LSTM, GRU), forward and backward.
//
// As for the layer-normalised LSTM (lnlstm.cpp): the Python side (rnnkit/sequences.py) runs the loop over
// time, computes each step's recurrent product with torch.mm, and calls one function here for all of the
// step's element-wise work, one pass over each batch row. The equations are torch.nn's:
//
//   p = (h * rmask) W_hh^T                        (computed outside, by torch.mm)
//   rnn:  h' = tanh(xp + p)  or relu(xp + p)      (xp = W_ih x + b_ih + b_hh)
//   lstm: i, f, o = sigmoid(xp + p)_{i,f,o};  g = tanh(xp + p)_g;  c' = f c + i g;  h' = o tanh(c')
//   gru:  r, z = sigmoid(xp + p)_{r,z};  n = tanh(xp_n + r (p_n + b_hn));  h' = (1 - z) n + z h
//                                                 (xp = W_ih x + b_ih + [b_hr, b_hz, 0])
//
// Rows past their end (mask false) keep their state and output zeros.

#include <cmath>
#include <cstdint>

#include "gemm.h"
#include "norm.h"
#include "parallel.h"
#include "vmath.h"

namespace {

enum Cell : int64_t { kRnnTanh = 0, kRnnRelu = 1, kLstm = 2, kGru = 3 };

// Positions in the int64 slot array filled by the Python side (rnnkit.native.CELL_SLOTS).
enum Slot : int {
  kT, kB, kH, kCell,
  kXp,       // (T, B, G)  input half of the gates (G = H, 4H or 3H)
  kProd,     // (B, G)     this step's recurrent product, written by torch.mm before each forward step
  kBiasHN,   // (H) or 0   GRU: b_hn, inside the reset gate's product
  kMask,     // (T, B) bool, or 0
  kRMask,    // (B, H), or 0: dropout mask on the state where it enters the recurrent product
  kHs,       // (T+1, B, H) h before each step, and the last
  kCs,       // (T+1, B, H) LSTM: c before each step, and the last
  kHIn,      // (T+1, B, H) h * rmask, or 0 without rmask
  kAct,      // (T, B, G)  LSTM: i, f, g, o; GRU: r, z, n; RNN: unused
  kAux,      // (T, B, H)  LSTM: tanh(c'); GRU: p_n + b_hn
  kCNew,     // (T, B, H)  LSTM: c' (the same memory as Cs[1:] without a mask)
  kOut,      // (T, B, H)  outputs (the same memory as Hs[1:] without a mask)
  kGradOut,  // (T, B, H) or 0
  kDhMM,     // (B, H)     gradient reaching h_{t+1} through step t+1's product (before rmask), or of h_T
  kKeepH,    // (B, H)     gradient reaching h_{t+1} other than through the product
  kDc,       // (B, H)     LSTM: gradient of c, updated in place from c_{t+1} to c_t
  kDXp,      // (T, B, G)  gradient of xp
  kDProd,    // (T, B, G)  gradient of the product p (the same memory as DXp except for the GRU)
  kDBiasHN,  // (H) float64, GRU: gradient of b_hn, accumulated
  // The layer-normalised GRU (LayerNormGRUCell) is the GRU with these set: the products enter as
  // LN(W_ih x; g_ih) + shift_ih and LN(p; g_hh) (+ b_hh, as for the GRU); Xp then holds u = W_ih x.
  kGainIH,   // (3H) or 0
  kShiftIH,  // (3H) or 0: b_ih + [b_hr, b_hz, 0]
  kUMean,    // (T, B)
  kURstd,    // (T, B)
  kGainHH,   // (3H) or 0
  kRHat,     // (T, B, 3H) the normalised recurrent products
  kRRstd,    // (T, B)
  kDGainIH,  // (3H) float64, accumulated
  kDShiftIH, // (3H) float64, accumulated, or 0
  kDGainHH,  // (3H) float64, accumulated
  // The peephole LSTM (PeepholeLSTMCell) is the LSTM with these set: i and f also see p_i * c and p_f * c,
  // o sees p_o * c'.
  kPeepI,    // (H) or 0
  kPeepF,    // (H)
  kPeepO,    // (H)
  kDPeepI,   // (H) float64, accumulated
  kDPeepF,   // (H) float64, accumulated
  kDPeepO,   // (H) float64, accumulated
  // The input half's bias, added here rather than into Xp (which is then the bare product W_ih x): one
  // pass over a (T, B, G) tensor fewer each way, the gradient summed in the kernel.
  kBiasX,    // (G) or 0; not with the layer norms (LayerNormGRUCell's input bias is ShiftIH)
  kDBiasX,   // (G) float64, accumulated, or 0
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

// G, the width of a row of gates: 4H, 3H or H.
inline int64_t gates(const int64_t* p) {
  return p[kCell] == kLstm ? 4 * p[kH] : p[kCell] == kGru ? 3 * p[kH] : p[kH];
}

template <typename S>
void forward_step(const int64_t* p, int64_t t, S eps) {
  const int64_t B = p[kB], H = p[kH], cell = p[kCell], G = gates(p);
  S* prod_all = at<S>(p, kProd);
  const bool* mask = p[kMask] ? at<bool>(p, kMask) + t * B : nullptr;
  const S* rmask = p[kRMask] ? at<S>(p, kRMask) : nullptr;
  const S* b_hn = p[kBiasHN] ? at<S>(p, kBiasHN) : nullptr;
  const S* bias_x = p[kBiasX] ? at<S>(p, kBiasX) : nullptr;
  const int threads = rnnkit::threads_for(B, G, p[kThreads]);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t b = 0; b < B; ++b) {
    rnnkit::note_team(b);
    const int64_t row = t * B + b;
    const S* xp = at<S>(p, kXp) + row * G;
    const S* pr = prod_all + b * G;
    const S* g_ih = p[kGainIH] ? at<S>(p, kGainIH) : nullptr;
    const S* shift_ih = p[kShiftIH] ? at<S>(p, kShiftIH) : nullptr;
    const S* g_hh = p[kGainHH] ? at<S>(p, kGainHH) : nullptr;
    const S* peep_i = p[kPeepI] ? at<S>(p, kPeepI) : nullptr;
    const S* peep_f = p[kPeepF] ? at<S>(p, kPeepF) : nullptr;
    const S* peep_o = p[kPeepO] ? at<S>(p, kPeepO) : nullptr;
    const S* h = at<S>(p, kHs) + row * H;  // hs[t] row b: (t * B + b) * H
    S* out = at<S>(p, kOut) + row * H;
    S* hn = at<S>(p, kHs) + (row + B) * H;
    if (bias_x) {  // the product row is this step's scratch: the input bias joins it there, except the GRU's
                   // n part, which sits outside r * q (added to the input half below)
      S* pr_row = prod_all + b * G;
      for (int64_t k = 0, n = cell == kGru ? 2 * H : G; k < n; ++k) pr_row[k] += bias_x[k];
    }
    if (cell == kRnnTanh) {
      for (int64_t k = 0; k < H; ++k) out[k] = tanh_of(xp[k] + pr[k]);
    } else if (cell == kRnnRelu) {
      for (int64_t k = 0; k < H; ++k) { S v = xp[k] + pr[k]; out[k] = v > S(0) ? v : S(0); }
    } else if (cell == kLstm) {
      S* act = at<S>(p, kAct) + row * G;
      S* tanh_c = at<S>(p, kAux) + row * H;
      S* c_new = at<S>(p, kCNew) + row * H;
      const S* c = at<S>(p, kCs) + row * H;
      for (int64_t k = 0; k < G; ++k) act[k] = xp[k] + pr[k];
      if (peep_i) {  // the gates also see the cell: p_i * c and p_f * c before the update, p_o * c' after
        for (int64_t k = 0; k < H; ++k) {
          S i = sigmoid(act[k] + peep_i[k] * c[k]), f = sigmoid(act[H + k] + peep_f[k] * c[k]);
          S g = tanh_of(act[2 * H + k]);
          S cn = f * c[k] + i * g;
          S o = sigmoid(act[3 * H + k] + peep_o[k] * cn);
          act[k] = i;
          act[H + k] = f;
          act[2 * H + k] = g;
          act[3 * H + k] = o;
          c_new[k] = cn;
        }
      } else {
        for (int64_t k = 0; k < 2 * H; ++k) act[k] = sigmoid(act[k]);
        for (int64_t k = 2 * H; k < 3 * H; ++k) act[k] = tanh_of(act[k]);
        for (int64_t k = 3 * H; k < G; ++k) act[k] = sigmoid(act[k]);
        for (int64_t k = 0; k < H; ++k) c_new[k] = act[H + k] * c[k] + act[k] * act[2 * H + k];
      }
      for (int64_t k = 0; k < H; ++k) {
        S y = tanh_of(c_new[k]);
        tanh_c[k] = y;
        out[k] = act[3 * H + k] * y;
      }
    } else {  // GRU
      S* act = at<S>(p, kAct) + row * G;
      S* hn_saved = at<S>(p, kAux) + row * H;
      S x_norm[3 * 4096], p_norm[3 * 4096];  // the layer-normalised halves (H <= 4096: checked in Python)
      const S* x = xp;
      if (g_ih) {
        S mean, rstd;
        moments(xp, G, eps, mean, rstd);
        at<S>(p, kUMean)[row] = mean;
        at<S>(p, kURstd)[row] = rstd;
        for (int64_t k = 0; k < G; ++k) x_norm[k] = (xp[k] - mean) * rstd * g_ih[k] + (shift_ih ? shift_ih[k] : S(0));
        x = x_norm;
      }
      if (g_hh) {
        S mean, rstd;
        moments(pr, G, eps, mean, rstd);
        at<S>(p, kRRstd)[row] = rstd;
        S* r_hat = at<S>(p, kRHat) + row * G;
        for (int64_t k = 0; k < G; ++k) {
          r_hat[k] = (pr[k] - mean) * rstd;
          p_norm[k] = g_hh[k] * r_hat[k];
        }
        pr = p_norm;
      }
      const S* x_n = x + 2 * H;  // the candidate's input half
      if (bias_x) {  // (the GRU without layer norms) n's bias, written into n's place in act first
        for (int64_t k = 0; k < H; ++k) act[2 * H + k] = x[2 * H + k] + bias_x[2 * H + k];
        x_n = act + 2 * H;
      }
      for (int64_t k = 0; k < 2 * H; ++k) act[k] = sigmoid(x[k] + pr[k]);
      for (int64_t k = 0; k < H; ++k) {
        S q = pr[2 * H + k] + (b_hn ? b_hn[k] : S(0));
        hn_saved[k] = q;
        act[2 * H + k] = tanh_of(x_n[k] + act[k] * q);
      }
      for (int64_t k = 0; k < H; ++k) {
        S z = act[H + k];
        out[k] = (S(1) - z) * act[2 * H + k] + z * h[k];
      }
    }
    if (mask) {
      if (!mask[b]) {  // past its end: keep the state, output zeros
        for (int64_t k = 0; k < H; ++k) { hn[k] = h[k]; out[k] = 0; }
        if (cell == kLstm) {
          const S* c = at<S>(p, kCs) + row * H;
          S* cn = at<S>(p, kCs) + (row + B) * H;
          for (int64_t k = 0; k < H; ++k) cn[k] = c[k];
        }
      } else {
        for (int64_t k = 0; k < H; ++k) hn[k] = out[k];
        if (cell == kLstm) {
          const S* c_new = at<S>(p, kCNew) + row * H;
          S* cn = at<S>(p, kCs) + (row + B) * H;
          for (int64_t k = 0; k < H; ++k) cn[k] = c_new[k];
        }
      }
    }  // without a mask, out and c_new are already the next h and c
    if (rmask) {
      const S* m = rmask + b * H;
      S* hi = at<S>(p, kHIn) + (row + B) * H;
      for (int64_t k = 0; k < H; ++k) hi[k] = hn[k] * m[k];
    }
  }
}

// One step back in time. On entry DhMM holds the gradient reaching h_{t+1} through step t+1's product
// (before the rmask; with `last` set, the gradient of h_T itself and no rmask), KeepH what reached h_{t+1}
// other than through that product, Dc (LSTM) the gradient of c_{t+1}. On return KeepH and Dc hold the same
// for h_t and c_t; the caller adds DProd[t] W_hh (the product) to reach h_t.
// The sums of the backward (the biases', gains' and peepholes' gradients), per thread where there are several
// (parallel.h): made once for a whole sequence, or for one step where the Python side drives the loop.
using Sums = rnnkit::ThreadSums<8>;

inline Sums backward_sums(const int64_t* p) {
  const int64_t H = p[kH], G = gates(p);
  const int sum_slots[8] = {kDBiasHN, kDGainIH, kDShiftIH, kDGainHH, kDPeepI, kDPeepF, kDPeepO, kDBiasX};
  double* totals[8];
  for (int j = 0; j < 8; ++j) totals[j] = p[sum_slots[j]] ? at<double>(p, sum_slots[j]) : nullptr;
  return Sums(totals, {H, G, G, G, H, H, H, G}, rnnkit::threads_for(p[kB], G, p[kThreads]));
}

template <typename S>
void backward_step(const int64_t* p, int64_t t, int64_t last, Sums& sums) {
  const int64_t B = p[kB], H = p[kH], cell = p[kCell], G = gates(p);
  const bool* mask = p[kMask] ? at<bool>(p, kMask) + t * B : nullptr;
  const S* rmask = (p[kRMask] && !last) ? at<S>(p, kRMask) : nullptr;
  const S* grad_out = p[kGradOut] ? at<S>(p, kGradOut) + t * B * H : nullptr;
  const S* dh_mm = at<S>(p, kDhMM);
  S* keep_h = at<S>(p, kKeepH);
  const S* g_ih = p[kGainIH] ? at<S>(p, kGainIH) : nullptr;
  const S* g_hh = p[kGainHH] ? at<S>(p, kGainHH) : nullptr;
  const S* peep_i = p[kPeepI] ? at<S>(p, kPeepI) : nullptr;
  const S* peep_f = p[kPeepF] ? at<S>(p, kPeepF) : nullptr;
  const S* peep_o = p[kPeepO] ? at<S>(p, kPeepO) : nullptr;
  const int threads = rnnkit::threads_for(B, G, p[kThreads]);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t b = 0; b < B; ++b) {
    rnnkit::note_team(b);
    double *d_b_hn = sums.part(0), *d_gain_ih = sums.part(1), *d_shift_ih = sums.part(2), *d_gain_hh = sums.part(3);
    double *d_peep_i = sums.part(4), *d_peep_f = sums.part(5), *d_peep_o = sums.part(6);
    double* d_bias_x = sums.part(7);
    const int64_t row = t * B + b;
    S* d_xp = at<S>(p, kDXp) + row * G;
    S* d_prod = at<S>(p, kDProd) + row * G;
    S* kh = keep_h + b * H;
    const S* dm = dh_mm + b * H;
    const S* rm = rmask ? rmask + b * H : nullptr;
    if (mask && !mask[b]) {  // past its end: the gradients of the state pass straight through
      for (int64_t k = 0; k < H; ++k) kh[k] += rm ? dm[k] * rm[k] : dm[k];
      for (int64_t k = 0; k < G; ++k) d_xp[k] = 0;
      if (d_prod != d_xp)
        for (int64_t k = 0; k < G; ++k) d_prod[k] = 0;
      continue;  // Dc unchanged
    }
    const S* go = grad_out ? grad_out + b * H : nullptr;
    const S* out = at<S>(p, kOut) + row * H;
    // kh becomes the gradient of h_t other than through the product: zero except for the GRU's z h term.
    if (cell == kRnnTanh || cell == kRnnRelu) {
      for (int64_t k = 0; k < H; ++k) {
        S dh = (rm ? dm[k] * rm[k] : dm[k]) + kh[k] + (go ? go[k] : S(0));
        S y = out[k];
        d_xp[k] = cell == kRnnTanh ? dh * (S(1) - y * y) : (y > S(0) ? dh : S(0));
        kh[k] = 0;
      }
    } else if (cell == kLstm) {
      const S* act = at<S>(p, kAct) + row * G;
      const S* tanh_c = at<S>(p, kAux) + row * H;
      const S* c = at<S>(p, kCs) + row * H;
      S* dc = at<S>(p, kDc) + b * H;
      if (peep_i) {
        const S* c_new = at<S>(p, kCNew) + row * H;
        for (int64_t k = 0; k < H; ++k) {
          S dh = (rm ? dm[k] * rm[k] : dm[k]) + kh[k] + (go ? go[k] : S(0));
          S i = act[k], f = act[H + k], g = act[2 * H + k], o = act[3 * H + k], y = tanh_c[k];
          S dzo = dh * y * o * (S(1) - o);
          S dcn = dh * o * (S(1) - y * y) + dc[k] + dzo * peep_o[k];  // o sees c' through p_o
          S dzi = dcn * g * i * (S(1) - i), dzf = dcn * c[k] * f * (S(1) - f);
          d_xp[k] = dzi;
          d_xp[H + k] = dzf;
          d_xp[2 * H + k] = dcn * i * (S(1) - g * g);
          d_xp[3 * H + k] = dzo;
          dc[k] = dcn * f + dzi * peep_i[k] + dzf * peep_f[k];
          d_peep_i[k] += double(dzi * c[k]);
          d_peep_f[k] += double(dzf * c[k]);
          d_peep_o[k] += double(dzo * c_new[k]);
          kh[k] = 0;
        }
      } else {
        for (int64_t k = 0; k < H; ++k) {
          S dh = (rm ? dm[k] * rm[k] : dm[k]) + kh[k] + (go ? go[k] : S(0));
          S i = act[k], f = act[H + k], g = act[2 * H + k], o = act[3 * H + k], y = tanh_c[k];
          S dcn = dh * o * (S(1) - y * y) + dc[k];
          d_xp[k] = dcn * g * i * (S(1) - i);
          d_xp[H + k] = dcn * c[k] * f * (S(1) - f);
          d_xp[2 * H + k] = dcn * i * (S(1) - g * g);
          d_xp[3 * H + k] = dh * y * o * (S(1) - o);
          dc[k] = dcn * f;
          kh[k] = 0;
        }
      }
    } else {  // GRU
      const S* act = at<S>(p, kAct) + row * G;
      const S* hn = at<S>(p, kAux) + row * H;
      const S* h = at<S>(p, kHs) + row * H;
      for (int64_t k = 0; k < H; ++k) {
        S dh = (rm ? dm[k] * rm[k] : dm[k]) + kh[k] + (go ? go[k] : S(0));
        S r = act[k], z = act[H + k], n = act[2 * H + k];
        S dn = dh * (S(1) - z) * (S(1) - n * n);
        S dr = dn * hn[k] * r * (S(1) - r);
        S dz = dh * (h[k] - n) * z * (S(1) - z);
        S d_hn = dn * r;
        d_xp[k] = dr;
        d_xp[H + k] = dz;
        d_xp[2 * H + k] = dn;
        d_prod[k] = dr;
        d_prod[H + k] = dz;
        d_prod[2 * H + k] = d_hn;
        if (d_b_hn) d_b_hn[k] += double(d_hn);
        kh[k] = dh * z;
      }
      if (g_hh) {  // back through LN(p; g_hh): DProd becomes the gradient of the raw product, in place
        const S* r_hat = at<S>(p, kRHat) + row * G;
        for (int64_t k = 0; k < G; ++k) d_gain_hh[k] += double(d_prod[k] * r_hat[k]);
        layer_norm_backward(d_prod, g_hh, r_hat, at<S>(p, kRRstd)[row], G, d_prod);
      }
      if (g_ih) {  // back through LN(u; g_ih) + shift: DXp becomes the gradient of u, in place
        const S* u = at<S>(p, kXp) + row * G;
        const S u_mean = at<S>(p, kUMean)[row], u_rstd = at<S>(p, kURstd)[row];
        auto u_hat = [u, u_mean, u_rstd](int64_t k) { return (u[k] - u_mean) * u_rstd; };
        for (int64_t k = 0; k < G; ++k) d_gain_ih[k] += double(d_xp[k] * u_hat(k));
        if (d_shift_ih)
          for (int64_t k = 0; k < G; ++k) d_shift_ih[k] += double(d_xp[k]);
        layer_norm_backward_of(d_xp, g_ih, u_hat, u_rstd, G, d_xp);
      }
    }
    if (d_bias_x)
      for (int64_t k = 0; k < G; ++k) d_bias_x[k] += double(d_xp[k]);
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
  rnnkit::forward_loop<S>(rnnkit::gemm_at(p, kGemmKind), p[kT], p[kB], gates(p), p[kH],
                          at<S>(p, p[kHIn] ? kHIn : kHs), at<S>(p, kProd),
                          [p, eps](int64_t t) { forward_step<S>(p, t, eps); });
}

template <typename S>
void backward_sequence(const int64_t* p) {
  const int64_t T = p[kT];
  Sums sums = backward_sums(p);  // each thread sums its rows over all steps; merged once, in thread order
  rnnkit::backward_loop<S>(rnnkit::gemm_at(p, kGemmKind), T, p[kB], gates(p), p[kH], at<S>(p, kDProd),
                           at<S>(p, kDhMM),
                           [p, T, &sums](int64_t t) { backward_step<S>(p, t, t == T - 1, sums); });
  sums.merge();
}

// One step of a stack of plain-cell layers for streaming (Recurrent.step without autograd), in one call:
// per layer, both products through the Fortran GEMM (at B=1 matrix-vector products), then the gates.
// The slots: the StepSlot entries, then four per layer (w_ih, w_hh, b_ih or 0, b_hh or 0).
enum StepSlot : int {
  sCell, sB, sI, sH, sLayers,
  sX,        // (B, I) the first layer's input; a later layer reads the one before's new h
  sH0,       // (L, B, H)
  sC0,       // (L, B, H) LSTM, or 0
  sHOut,     // (L, B, H)
  sCOut,     // (L, B, H) LSTM, or 0
  sScratch,  // (2, B, G)
  sGemmFn,   // the dtype's Fortran GEMM
  sStepSlots
};

template <typename S>
void cell_steps(const int64_t* p) {
  const int64_t cell = p[sCell], B = p[sB], H = p[sH], L = p[sLayers];
  const int64_t G = cell == kLstm ? 4 * H : cell == kGru ? 3 * H : H;
  S* ih = at<S>(p, sScratch);
  S* hh = ih + B * G;
  void* fn = reinterpret_cast<void*>(p[sGemmFn]);
  for (int64_t layer = 0; layer < L; ++layer) {
    const int64_t* w = p + sStepSlots + 4 * layer;
    const int64_t I = layer == 0 ? p[sI] : H;
    const S* input = layer == 0 ? at<S>(p, sX) : at<S>(p, sHOut) + (layer - 1) * B * H;
    const S* h_all = at<S>(p, sH0) + layer * B * H;
    S* h_out_all = at<S>(p, sHOut) + layer * B * H;
    rnnkit::product_wt<S>({rnnkit::kGemmFortran, fn, reinterpret_cast<const void*>(w[0]), nullptr, nullptr},
                          int(B), int(G), int(I), input, ih);
    rnnkit::product_wt<S>({rnnkit::kGemmFortran, fn, reinterpret_cast<const void*>(w[1]), nullptr, nullptr},
                          int(B), int(G), int(H), h_all, hh);
    const S* b_ih = reinterpret_cast<const S*>(w[2]);
    const S* b_hh = reinterpret_cast<const S*>(w[3]);
    for (int64_t b = 0; b < B; ++b) {
      S* x = ih + b * G;  // the gates' input half, biases added in place
      S* r = hh + b * G;
      for (int64_t k = 0; k < G; ++k) {
        if (b_ih) x[k] += b_ih[k];
        if (b_hh) r[k] += b_hh[k];
      }
      const S* h = h_all + b * H;
      S* h_out = h_out_all + b * H;
      if (cell == kRnnTanh || cell == kRnnRelu) {
        for (int64_t k = 0; k < H; ++k) {
          S v = x[k] + r[k];
          h_out[k] = cell == kRnnTanh ? tanh_of(v) : (v > S(0) ? v : S(0));
        }
      } else if (cell == kLstm) {
        const S* c = at<S>(p, sC0) + (layer * B + b) * H;
        S* c_out = at<S>(p, sCOut) + (layer * B + b) * H;
        for (int64_t k = 0; k < G; ++k) x[k] += r[k];
        for (int64_t k = 0; k < H; ++k) {
          S i = sigmoid(x[k]), f = sigmoid(x[H + k]), g = tanh_of(x[2 * H + k]), o = sigmoid(x[3 * H + k]);
          S c_new = f * c[k] + i * g;
          c_out[k] = c_new;
          h_out[k] = o * tanh_of(c_new);
        }
      } else {  // GRU
        for (int64_t k = 0; k < H; ++k) {
          S rr = sigmoid(x[k] + r[k]), z = sigmoid(x[H + k] + r[H + k]);
          S n = tanh_of(x[2 * H + k] + rr * r[2 * H + k]);
          h_out[k] = (S(1) - z) * n + z * h[k];
        }
      }
    }
  }
}

// The linear recurrence of minGRU and minLSTM (scan.linear_recurrence), h_t = a_t h_{t-1} + b_t over
// T steps of N values each, time-major and contiguous; and the backward's own recurrence over the
// gradient reaching each state, g_t = dL/dh_t + a_{t+1} g_{t+1}.
// The N columns are independent: threads (up to `threads_available`) take blocks of them, each for all T steps.
constexpr int64_t kColumnBlock = 256;

template <typename S>
void linear_forward(const S* a, const S* b, const S* h0, S* out, int64_t T, int64_t N, int64_t threads_available) {
  const int64_t blocks = (N + kColumnBlock - 1) / kColumnBlock;
  const int threads = rnnkit::threads_for(blocks, T * kColumnBlock, threads_available);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t block = 0; block < blocks; ++block) {
    rnnkit::note_team(block);
    const int64_t lo = block * kColumnBlock, hi = std::min(N, lo + kColumnBlock);
    const S* h = h0;
    for (int64_t t = 0; t < T; ++t) {
      const S* a_t = a + t * N;
      const S* b_t = b + t * N;
      S* o = out + t * N;
      for (int64_t k = lo; k < hi; ++k) o[k] = a_t[k] * h[k] + b_t[k];
      h = o;
    }
  }
}

template <typename S>
void linear_backward(const S* grad_out, const S* a, S* g, int64_t T, int64_t N, int64_t threads_available) {
  const int64_t blocks = (N + kColumnBlock - 1) / kColumnBlock;
  const int threads = rnnkit::threads_for(blocks, T * kColumnBlock, threads_available);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t block = 0; block < blocks; ++block) {
    rnnkit::note_team(block);
    const int64_t lo = block * kColumnBlock, hi = std::min(N, lo + kColumnBlock);
    for (int64_t k = lo; k < hi; ++k) g[(T - 1) * N + k] = grad_out[(T - 1) * N + k];
    for (int64_t t = T - 2; t >= 0; --t) {
      const S* next_a = a + (t + 1) * N;
      const S* next_g = g + (t + 1) * N;
      const S* go = grad_out + t * N;
      S* g_t = g + t * N;
      for (int64_t k = lo; k < hi; ++k) g_t[k] = go[k] + next_a[k] * next_g[k];
    }
  }
}

}  // namespace

extern "C" {
#pragma GCC visibility push(default)  // the library is built with -fvisibility=hidden
void rnnkit_linear_forward_f32(const float* a, const float* b, const float* h0, float* out, int64_t T, int64_t N,
                               int64_t threads) {
  linear_forward<float>(a, b, h0, out, T, N, threads);
}
void rnnkit_linear_forward_f64(const double* a, const double* b, const double* h0, double* out, int64_t T,
                               int64_t N, int64_t threads) {
  linear_forward<double>(a, b, h0, out, T, N, threads);
}
void rnnkit_linear_backward_f32(const float* grad_out, const float* a, float* g, int64_t T, int64_t N,
                                int64_t threads) {
  linear_backward<float>(grad_out, a, g, T, N, threads);
}
void rnnkit_linear_backward_f64(const double* grad_out, const double* a, double* g, int64_t T, int64_t N,
                                int64_t threads) {
  linear_backward<double>(grad_out, a, g, T, N, threads);
}
int64_t rnnkit_step_slots() { return sStepSlots; }
void rnnkit_cell_step_f32(const int64_t* p) { cell_steps<float>(p); }
void rnnkit_cell_step_f64(const int64_t* p) { cell_steps<double>(p); }
void rnnkit_cell_forward_sequence_f32(const int64_t* p, double eps) { forward_sequence<float>(p, float(eps)); }
void rnnkit_cell_forward_sequence_f64(const int64_t* p, double eps) { forward_sequence<double>(p, eps); }
void rnnkit_cell_backward_sequence_f32(const int64_t* p) { backward_sequence<float>(p); }
void rnnkit_cell_backward_sequence_f64(const int64_t* p) { backward_sequence<double>(p); }
int64_t rnnkit_cell_slots() { return kSlots; }
void rnnkit_cell_forward_f32(const int64_t* p, int64_t t, double eps) { forward_step<float>(p, t, float(eps)); }
void rnnkit_cell_forward_f64(const int64_t* p, int64_t t, double eps) { forward_step<double>(p, t, eps); }
void rnnkit_cell_backward_f32(const int64_t* p, int64_t t, int64_t last) {
  backward_one_step<float>(p, t, last);
}
void rnnkit_cell_backward_f64(const int64_t* p, int64_t t, int64_t last) {
  backward_one_step<double>(p, t, last);
}
#pragma GCC visibility pop
}
