// Fused multi-tensor AdamW and LAMB updates for CPU, registered as torch ops in the `groupbert` namespace
// (custom_ops/fused_optim.py registers their fake kernels and documents the design; the equations are in
// the docstrings of optimizers/adamw.py and optimizers/lamb.py).
//
// The floating-point operations follow the Python single-tensor paths (_single_tensor_adamw,
// _single_tensor_lamb) line by line. Per-tensor scalars (the β^t corrections, the trust ratio) are
// computed once, outside the element loops; the loops are contiguous and vectorised. All tensors of a
// call are cut into chunks of kChunk elements, so one embedding and hundreds of bias vectors share the
// threads evenly. Sums of squares are taken per chunk and added in chunk order: the results do not depend
// on the number of threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

namespace {

// Elements per work item: 64 KiB of float32 per stream, small enough to balance, large enough that the
// per-chunk overhead (tens of ns) is nothing next to its ~5-10 us of memory traffic.
constexpr int64_t kChunk = 16384;
// LAMB runs pass 1 then pass 2 per batch of tensors of at most this many elements together (a larger
// tensor is a batch of its own), so that pass 2 finds the batch's data in cache: 5 MiB of u and 5 MiB of
// θ (float32) for the second pass, after 25 MiB of first-pass traffic, with 2 MiB of L2 per core and a
// shared L3. 1.25 Mi (GroupBERT Base's 768x1536 matrices, or two 768x768) was as good as or better
// than 0.5, 1 and 2.4 Mi there (AMD EPYC, 2 threads; the differences were within ±5%).
constexpr int64_t kBatch = int64_t(5) << 18;
// Sums of squares: each block of kNormBlock elements is summed in the tensor's dtype (kNormBlock / SIMD
// width terms per lane, then across the lanes), the block sums in double. Accumulating every element in
// double costs two conversions and two double FMAs per vector, as much as the rest of LAMB's first pass.
constexpr int64_t kNormBlock = 256;

struct Chunk {
  int32_t tensor;
  int64_t begin;
  int64_t end;
};

template <typename F>
void with_bool(bool b, F&& f) {
  if (b) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// ---------------------------------------------------------------------------------------------------
// Input checks.

void check_lists(const char* op, at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                 at::TensorList exp_avg_sqs, at::TensorList state_steps) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n && state_steps.size() == n,
              op, ": the tensor lists must have the same length; got params ", n, ", grads ", grads.size(),
              ", exp_avgs ", exp_avgs.size(), ", exp_avg_sqs ", exp_avg_sqs.size(), ", state_steps ",
              state_steps.size());
  const char* names[] = {"params", "grads", "exp_avgs", "exp_avg_sqs"};
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor* ts[] = {&params[i], &grads[i], &exp_avgs[i], &exp_avg_sqs[i]};
    const at::Tensor& p = params[i];
    TORCH_CHECK(p.defined(), op, ": params[", i, "] is undefined");
    TORCH_CHECK(p.scalar_type() == at::kFloat || p.scalar_type() == at::kDouble, op, ": params[", i,
                "] has dtype ", p.scalar_type(), "; the fused kernel supports float32 and float64 only");
    for (int k = 0; k < 4; ++k) {
      const at::Tensor& t = *ts[k];
      TORCH_CHECK(t.defined(), op, ": ", names[k], "[", i, "] is undefined");
      TORCH_CHECK(t.device().is_cpu(), op, ": ", names[k], "[", i, "] is on ", t.device(),
                  "; this kernel is CPU-only (use the foreach path on other devices)");
      TORCH_CHECK(t.layout() == at::kStrided, op, ": ", names[k], "[", i, "] is not a dense (strided) tensor");
      TORCH_CHECK(t.scalar_type() == p.scalar_type(), op, ": ", names[k], "[", i, "] has dtype ",
                  t.scalar_type(), " but params[", i, "] has ", p.scalar_type(),
                  "; param, grad and state must share a dtype");
      TORCH_CHECK(t.sizes() == p.sizes(), op, ": ", names[k], "[", i, "] has shape ", t.sizes(),
                  " but params[", i, "] has ", p.sizes());
      TORCH_CHECK(t.is_contiguous(), op, ": ", names[k], "[", i,
                  "] is not contiguous; the fused kernel needs contiguous tensors (use fused=False)");
    }
    const at::Tensor& s = state_steps[i];
    TORCH_CHECK(s.defined() && s.device().is_cpu() && s.numel() == 1 &&
                    (s.scalar_type() == at::kFloat || s.scalar_type() == at::kDouble),
                op, ": state_steps[", i, "] must be a one-element float32 or float64 CPU tensor (got ",
                s.defined() ? s.toString() : std::string("undefined"), " with ",
                s.defined() ? s.numel() : 0, " elements)");
  }
}

// Adds 1 to each step counter and returns the new values (as torch's `step_t += 1; step_t.item()`).
std::vector<double> increment_steps(at::TensorList state_steps) {
  std::vector<double> t(state_steps.size());
  for (size_t i = 0; i < state_steps.size(); ++i) {
    const at::Tensor& s = state_steps[i];
    if (s.scalar_type() == at::kFloat) {
      float* ptr = s.data_ptr<float>();
      *ptr += 1.0f;
      t[i] = *ptr;
    } else {
      double* ptr = s.data_ptr<double>();
      *ptr += 1.0;
      t[i] = *ptr;
    }
  }
  return t;
}

std::vector<Chunk> make_chunks(at::TensorList tensors, int64_t first, int64_t last) {
  std::vector<Chunk> chunks;
  for (int64_t i = first; i < last; ++i) {
    const int64_t n = tensors[i].numel();
    for (int64_t b = 0; b < n; b += kChunk) {
      chunks.push_back({static_cast<int32_t>(i), b, std::min(n, b + kChunk)});
    }
  }
  return chunks;
}

// Runs f(k) for every chunk k, the chunks taken in order by whichever thread is free (an atomic cursor):
// balanced however the tensors are sized, and a thread that is descheduled does not hold up
// the others beyond the chunk it holds.
template <typename F>
void for_each_chunk(const std::vector<Chunk>& chunks, const F& f) {
  const int64_t n = static_cast<int64_t>(chunks.size());
  if (n == 0) return;
  int64_t total = 0;
  for (const Chunk& c : chunks) total += c.end - c.begin;
  // no second thread for less than a quarter chunk of work: it would cost more than it saves
  const int64_t threads = std::max<int64_t>(
      1, std::min<int64_t>({static_cast<int64_t>(at::get_num_threads()), n, (total + kChunk / 4 - 1) / (kChunk / 4)}));
  if (threads == 1) {
    for (int64_t k = 0; k < n; ++k) f(k);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t k = next.fetch_add(1, std::memory_order_relaxed); k < n; k = next.fetch_add(1, std::memory_order_relaxed)) {
      f(k);
    }
  });
}


// x / c, correctly rounded (the same bits as the division), for a per-tensor constant c with rc = 1/c
// rounded: Markstein's theorem (q within 1 ulp of x/c, r = x - q·c exact by FMA, q + r·rc rounds to
// x/c), barring underflow of the residual (|x| below ~2^-100 in float32). A division occupies the
// divider for several cycles per vector; these are three FMA-unit ops, and the loops below are bound by
// the divider (√v and the division by √v̂ + ε remain).
template <typename T>
inline T div_by_const(T x, T c, T rc) {
  const T q = x * rc;
  const T r = std::fma(-q, c, x);
  return std::fma(r, rc, q);
}

// ---------------------------------------------------------------------------------------------------
// AdamW (optimizers/adamw.py::_single_tensor_adamw, line by line):
//   g = -g if maximize; θ *= 1 - γλ; m.lerp_(g, 1 - β1); v = v·β2 + (1 - β2)·g·g;
//   denom = √v / √(1 - β2^t) + ε; θ += (-γ / (1 - β1^t))·m / denom

template <typename T>
struct AdamCoef {
  T decay;         // 1 - γλ (exactly 1 when λ = 0)
  T lerp_w;        // 1 - β1: torch's lerp uses w for w < 0.5 ...
  T lerp_w1;       // ... and w - 1 (from the end point) otherwise
  T beta2;
  T one_minus_beta2;
  T eps;
  T bc2_sqrt;      // √(1 - β2^t)
  T rbc2_sqrt;     // its reciprocal, for div_by_const
  T neg_step;      // -γ / (1 - β1^t)
};

template <typename T, bool kMaximize, bool kSmallW>
void adamw_kernel(T* __restrict p, const T* __restrict g, T* __restrict m, T* __restrict v, int64_t n,
                  const AdamCoef<T> c) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T gi = kMaximize ? -g[i] : g[i];
    const T pi = p[i] * c.decay;
    const T mi = m[i];
    const T d = gi - mi;
    const T mn = kSmallW ? std::fma(c.lerp_w, d, mi) : std::fma(c.lerp_w1, d, gi);
    const T vn = v[i] * c.beta2 + c.one_minus_beta2 * gi * gi;
    const T denom = div_by_const(std::sqrt(vn), c.bc2_sqrt, c.rbc2_sqrt) + c.eps;
    p[i] = pi + (c.neg_step * mn) / denom;
    m[i] = mn;
    v[i] = vn;
  }
}

template <typename T>
void adamw_chunk(const at::Tensor& p, const at::Tensor& g, const at::Tensor& m, const at::Tensor& v,
                 const Chunk& ch, const AdamCoef<T>& c, bool maximize, bool small_w) {
  T* pp = p.data_ptr<T>() + ch.begin;
  const T* gp = g.data_ptr<T>() + ch.begin;
  T* mp = m.data_ptr<T>() + ch.begin;
  T* vp = v.data_ptr<T>() + ch.begin;
  const int64_t n = ch.end - ch.begin;
  with_bool(maximize, [&](auto mx) {
    with_bool(small_w, [&](auto sw) { adamw_kernel<T, decltype(mx)::value, decltype(sw)::value>(pp, gp, mp, vp, n, c); });
  });
}

template <typename T>
AdamCoef<T> adam_coef(double lr, double beta1, double beta2, double eps, double weight_decay, double t,
                      bool bias_correction) {
  AdamCoef<T> c;
  c.decay = static_cast<T>(1.0 - lr * weight_decay);
  c.lerp_w = static_cast<T>(1.0 - beta1);
  c.lerp_w1 = c.lerp_w - T(1);
  c.beta2 = static_cast<T>(beta2);
  c.one_minus_beta2 = static_cast<T>(1.0 - beta2);
  c.eps = static_cast<T>(eps);
  const double bc1 = bias_correction ? 1.0 - std::pow(beta1, t) : 1.0;
  const double bc2 = 1.0 - std::pow(beta2, t);
  c.bc2_sqrt = static_cast<T>(std::pow(bc2, 0.5));
  c.rbc2_sqrt = T(1) / c.bc2_sqrt;
  c.neg_step = static_cast<T>(-lr / bc1);
  return c;
}

bool lerp_weight_small(double beta1, bool is_double) {
  // torch: |w| < 0.5 with w = 1 - β1 in the tensor's dtype
  return is_double ? std::abs(1.0 - beta1) < 0.5 : std::abs(static_cast<float>(1.0 - beta1)) < 0.5f;
}

void fused_adamw_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                     at::TensorList exp_avg_sqs, at::TensorList state_steps, double lr, double beta1,
                     double beta2, double eps, double weight_decay, bool bias_correction, bool maximize) {
  check_lists("fused_adamw_", params, grads, exp_avgs, exp_avg_sqs, state_steps);
  const std::vector<double> steps = increment_steps(state_steps);
  const size_t n = params.size();
  std::vector<AdamCoef<float>> cf(n);
  std::vector<AdamCoef<double>> cd(n);
  for (size_t i = 0; i < n; ++i) {
    if (params[i].scalar_type() == at::kFloat) {
      cf[i] = adam_coef<float>(lr, beta1, beta2, eps, weight_decay, steps[i], bias_correction);
    } else {
      cd[i] = adam_coef<double>(lr, beta1, beta2, eps, weight_decay, steps[i], bias_correction);
    }
  }
  const bool small_f = lerp_weight_small(beta1, false), small_d = lerp_weight_small(beta1, true);
  const std::vector<Chunk> chunks = make_chunks(params, 0, static_cast<int64_t>(n));
  for_each_chunk(chunks, [&](int64_t k) {
    const Chunk& ch = chunks[k];
    const int64_t i = ch.tensor;
    if (params[i].scalar_type() == at::kFloat) {
      adamw_chunk<float>(params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], ch, cf[i], maximize, small_f);
    } else {
      adamw_chunk<double>(params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], ch, cd[i], maximize, small_d);
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// LAMB (optimizers/lamb.py::_single_tensor_lamb, line by line):
//   ĝ = g / divisor; m.lerp_(ĝ, 1 - β1); v = v·β2 + (1 - β2)·ĝ·ĝ;
//   denom = √v / √bc2 + ε; u = (m / bc1) / denom; u = u + λθ (λ ≠ 0);
//   r = φ/‖u‖ (φ = min(‖θ‖, φ_max); 1 if either is 0 or no trust ratio); θ = θ - η·(u·r)

template <typename T>
struct LambCoef {
  T divisor, rdivisor;    // global clip factor max(1, G/c) and its reciprocal (1 without clipping)
  T lerp_w;
  T lerp_w1;
  T beta2;
  T one_minus_beta2;
  T eps;
  T bc1, rbc1;            // 1 - β1^t (1 without bias correction)
  T bc2_sqrt, rbc2_sqrt;  // √(1 - β2^t) (1 without bias correction)
  T wd;                   // λ
  T neg_lr;               // -η
};

// u = (m / bc1) / (√v / √bc2 + ε) + λθ, in the Python path's order, except that the divisions by the
// per-tensor constants bc1 and √bc2 are multiplications by their reciprocals (within 1 ulp of the
// division; the exact div_by_const costs ~10% of LAMB's time here, and LAMB's results differ from the
// Python path's by far more through its float32 norms anyway). Without bias correction bc1 = bc2 = 1
// and the steps are skipped.
template <typename T, bool kBC, bool kDecay>
inline T lamb_direction(T mn, T vn, T pi, const LambCoef<T>& c) {
  const T sq = kBC ? std::sqrt(vn) * c.rbc2_sqrt : std::sqrt(vn);
  const T denom = sq + c.eps;
  T u = (kBC ? mn * c.rbc1 : mn) / denom;
  if (kDecay) u = std::fma(pi, c.wd, u);
  return u;
}

// What pass 1 does after the moments.
enum Pass1Mode : int {
  kApplyUpdate = 0,  // no trust ratio: θ = θ - η u now, one pass in all
  kNormsOnly = 1,    // sum θ², u² (pass 2 recomputes u from m, v, θ)
  kNormsAndU = 2,    // sum θ², u² and keep u in a scratch buffer that stays in cache for pass 2
};

template <typename T, bool kClip, bool kSmallW, bool kBC, bool kDecay, int kMode>
void lamb_pass1_kernel(T* __restrict p, const T* __restrict g, T* __restrict m, T* __restrict v,
                       T* __restrict u_out, int64_t n, const LambCoef<T> c, double* w2_out, double* u2_out) {
  double w2 = 0.0, u2 = 0.0;
  for (int64_t b = 0; b < n; b += kNormBlock) {
    const int64_t e = std::min(n, b + kNormBlock);
    T bw2 = 0, bu2 = 0;  // this block's sums of squares (kNormBlock / SIMD width terms per lane)
#pragma omp simd reduction(+ : bw2, bu2)
    for (int64_t i = b; i < e; ++i) {
      const T gi = kClip ? g[i] * c.rdivisor : g[i];  // ĝ = g / divisor (see lamb_direction)
      const T mi = m[i];
      const T d = gi - mi;
      const T mn = kSmallW ? std::fma(c.lerp_w, d, mi) : std::fma(c.lerp_w1, d, gi);
      const T vn = v[i] * c.beta2 + c.one_minus_beta2 * gi * gi;
      m[i] = mn;
      v[i] = vn;
      const T pi = p[i];
      const T u = lamb_direction<T, kBC, kDecay>(mn, vn, pi, c);
      if (kMode == kApplyUpdate) {
        p[i] = std::fma(u, c.neg_lr, pi);
      } else {
        if (kMode == kNormsAndU) u_out[i] = u;
        bw2 += pi * pi;
        bu2 += u * u;
      }
    }
    w2 += bw2;
    u2 += bu2;
  }
  *w2_out = w2;
  *u2_out = u2;
}

// Pass 2, big tensors: recompute u from the new m, v and the old θ (bit-identical to pass 1).
template <typename T, bool kBC, bool kDecay>
void lamb_pass2_recompute_kernel(T* __restrict p, const T* __restrict m, const T* __restrict v, int64_t n,
                                 const LambCoef<T> c, const T ratio) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T pi = p[i];
    const T u = lamb_direction<T, kBC, kDecay>(m[i], v[i], pi, c) * ratio;
    p[i] = std::fma(u, c.neg_lr, pi);
  }
}

// Pass 2, cached batches: u from the scratch buffer.
template <typename T>
void lamb_pass2_stored_kernel(T* __restrict p, const T* __restrict u, int64_t n, const T neg_lr, const T ratio) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) p[i] = std::fma(u[i] * ratio, neg_lr, p[i]);
}

struct LambFlags {
  bool clip, small_w, bc, decay;
};

template <typename T>
void lamb_pass1_chunk(const at::Tensor& p, const at::Tensor& g, const at::Tensor& m, const at::Tensor& v,
                      const Chunk& ch, const LambCoef<T>& c, LambFlags f, int mode, T* u_out, double* w2,
                      double* u2) {
  T* pp = p.data_ptr<T>() + ch.begin;
  const T* gp = g.data_ptr<T>() + ch.begin;
  T* mp = m.data_ptr<T>() + ch.begin;
  T* vp = v.data_ptr<T>() + ch.begin;
  const int64_t n = ch.end - ch.begin;
  auto run = [&](auto mode_c) {
    with_bool(f.clip, [&](auto clip) {
      with_bool(f.small_w, [&](auto sw) {
        with_bool(f.bc, [&](auto bc) {
          with_bool(f.decay, [&](auto dec) {
            lamb_pass1_kernel<T, decltype(clip)::value, decltype(sw)::value, decltype(bc)::value,
                              decltype(dec)::value, decltype(mode_c)::value>(pp, gp, mp, vp, u_out, n, c, w2, u2);
          });
        });
      });
    });
  };
  if (mode == kApplyUpdate) {
    run(std::integral_constant<int, kApplyUpdate>{});
  } else if (mode == kNormsOnly) {
    run(std::integral_constant<int, kNormsOnly>{});
  } else {
    run(std::integral_constant<int, kNormsAndU>{});
  }
}

template <typename T>
void lamb_pass2_chunk(const at::Tensor& p, const at::Tensor& m, const at::Tensor& v, const Chunk& ch,
                      const LambCoef<T>& c, LambFlags f, T ratio, const T* u) {
  T* pp = p.data_ptr<T>() + ch.begin;
  const int64_t n = ch.end - ch.begin;
  if (u != nullptr) {
    lamb_pass2_stored_kernel<T>(pp, u, n, c.neg_lr, ratio);
    return;
  }
  const T* mp = m.data_ptr<T>() + ch.begin;
  const T* vp = v.data_ptr<T>() + ch.begin;
  with_bool(f.bc, [&](auto bc) {
    with_bool(f.decay, [&](auto dec) {
      lamb_pass2_recompute_kernel<T, decltype(bc)::value, decltype(dec)::value>(pp, mp, vp, n, c, ratio);
    });
  });
}

template <typename T>
LambCoef<T> lamb_coef(double divisor, double lr, double beta1, double beta2, double eps, double weight_decay,
                      double t, bool bias_correction) {
  LambCoef<T> c;
  c.divisor = static_cast<T>(divisor);
  c.rdivisor = T(1) / c.divisor;
  c.lerp_w = static_cast<T>(1.0 - beta1);
  c.lerp_w1 = c.lerp_w - T(1);
  c.beta2 = static_cast<T>(beta2);
  c.one_minus_beta2 = static_cast<T>(1.0 - beta2);
  c.eps = static_cast<T>(eps);
  const double bc1 = bias_correction ? 1.0 - std::pow(beta1, t) : 1.0;
  const double bc2 = bias_correction ? 1.0 - std::pow(beta2, t) : 1.0;
  c.bc1 = static_cast<T>(bc1);
  c.rbc1 = T(1) / c.bc1;
  c.bc2_sqrt = static_cast<T>(std::pow(bc2, 0.5));
  c.rbc2_sqrt = T(1) / c.bc2_sqrt;
  c.wd = static_cast<T>(weight_decay);
  c.neg_lr = static_cast<T>(-lr);
  return c;
}

// r = φ/‖u‖ in the tensor's dtype, as the Python path's float32 (float64) norm tensors.
template <typename T>
T trust_ratio_of(double w2, double u2, const c10::optional<double>& max_weight_norm) {
  T phi = static_cast<T>(std::sqrt(w2));
  if (max_weight_norm.has_value()) phi = std::min(phi, static_cast<T>(*max_weight_norm));
  const T unorm = static_cast<T>(std::sqrt(u2));
  return (phi > T(0) && unorm > T(0)) ? phi / unorm : T(1);
}

// LAMB's two passes over batches of tensors, in one parallel region.
//
// Batches: consecutive tensors with at most kBatch elements together, or one larger tensor. Each batch's
// chunks are split among the threads statically (contiguous runs, balanced by elements), and a chunk's
// pass 2 runs on the thread that did its pass 1, walking that thread's run backwards: the data a core
// touched last is in its own L2 (or the L3) when pass 2 starts. (Letting the other core take the chunk
// instead was measured slower than reading it from memory.) A batch of at most kBatch elements keeps u
// in a per-thread scratch buffer, so its pass 2 reads only u and θ, both in cache; a larger tensor's
// pass 2 recomputes u from m, v, θ. Between the passes the threads meet per batch: the last to finish
// its pass-1 run computes the batch's trust ratios; a thread waiting for that does its pass-1 run of
// the next batch meanwhile (its scratch is double-buffered), so a descheduled thread stalls the other
// one batch later, not at every batch boundary. One fork/join per call.
template <typename Pass1, typename Finish, typename Pass2>
void lamb_two_pass(const std::vector<Chunk>& chunks, at::TensorList params, const Pass1& pass1,
                   const Finish& finish, const Pass2& pass2) {
  const int64_t nchunks = static_cast<int64_t>(chunks.size());
  if (nchunks == 0) return;
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), nchunks));
  // batches as chunk ranges [begin[b], begin[b + 1]); thread t's run of batch b is [cut[b*(T+1) + t], ... + 1)
  std::vector<int64_t> begin{0}, cut;
  std::vector<char> cached;
  std::vector<int64_t> offset(nchunks, 0);  // byte offset of chunk k's u in its thread's scratch buffer
  int64_t scratch_bytes = 0;                // per thread and buffer
  for (int64_t k = 0; k < nchunks;) {
    int64_t elems = 0, k_end = k;
    int32_t last_tensor = -1;
    while (k_end < nchunks) {
      const int32_t t = chunks[k_end].tensor;
      if (t != last_tensor) {  // whole tensors join a batch
        const int64_t numel = params[t].numel();
        if (k_end > k && elems + numel > kBatch) break;
        elems += numel;
        last_tensor = t;
      }
      ++k_end;
    }
    const bool c = elems <= kBatch;
    // static split of [k, k_end) into `threads` runs with about equal element counts
    int64_t total = 0;
    for (int64_t j = k; j < k_end; ++j) total += chunks[j].end - chunks[j].begin;
    const size_t base = cut.size();
    cut.resize(base + threads + 1, k_end);
    cut[base] = k;
    int64_t seen = 0, t = 1;
    for (int64_t j = k; j < k_end && t < threads; ++j) {
      seen += chunks[j].end - chunks[j].begin;
      while (t < threads && seen * threads >= total * t) cut[base + t++] = j + 1;
    }
    for (int64_t t2 = 0; t2 < threads; ++t2) {
      int64_t bytes = 0;
      for (int64_t j = cut[base + t2]; j < cut[base + t2 + 1]; ++j) {
        offset[j] = bytes;
        if (c) bytes += ((chunks[j].end - chunks[j].begin) * params[chunks[j].tensor].element_size() + 63) / 64 * 64;
      }
      scratch_bytes = std::max(scratch_bytes, bytes);
    }
    cached.push_back(c);
    begin.push_back(k_end);
    k = k_end;
  }
  const int64_t nbatches = static_cast<int64_t>(cached.size());
  // scratch: per thread two buffers (batch b uses b % 2), kept per calling thread across calls
  thread_local std::vector<char> scratch_buf;
  const int64_t stride = (scratch_bytes + 63) / 64 * 64;
  const size_t need = static_cast<size_t>(2 * threads * stride + 64);
  if (scratch_buf.size() < need) scratch_buf.resize(need);
  char* const scratch0 = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(scratch_buf.data()) + 63) / 64 * 64);

  std::unique_ptr<std::atomic<int64_t>[]> arrived(new std::atomic<int64_t>[nbatches]);
  std::unique_ptr<std::atomic<bool>[]> ready(new std::atomic<bool>[nbatches]);
  for (int64_t b = 0; b < nbatches; ++b) {
    arrived[b].store(0, std::memory_order_relaxed);
    ready[b].store(false, std::memory_order_relaxed);
  }

  // Runs the plans of threads [t0, t1) on the calling OS thread (normally one each; all of them if
  // parallel_for runs inline, e.g. inside another parallel region: nothing then waits for anyone else).
  auto worker = [&](int64_t t0, int64_t t1) {
    auto scratch_of = [&](int64_t t, int64_t b, int64_t k) -> char* {
      return cached[b] ? scratch0 + (2 * t + b % 2) * stride + offset[k] : nullptr;
    };
    auto run_pass1 = [&](int64_t b) {
      for (int64_t t = t0; t < t1; ++t) {
        const size_t c0 = static_cast<size_t>(b * (threads + 1) + t);
        for (int64_t k = cut[c0]; k < cut[c0 + 1]; ++k) {
          pass1(k, cached[b] ? kNormsAndU : kNormsOnly, scratch_of(t, b, k));
        }
      }
      if (arrived[b].fetch_add(t1 - t0, std::memory_order_acq_rel) + (t1 - t0) == threads) {  // last one in
        finish(begin[b], begin[b + 1]);
        ready[b].store(true, std::memory_order_release);
      }
    };
    int64_t ahead = 0;  // batches [0, ahead) have had pass 1 here
    for (int64_t b = 0; b < nbatches; ++b) {
      if (ahead <= b) {
        run_pass1(b);
        ahead = b + 1;
      }
      int spins = 0;
      while (!ready[b].load(std::memory_order_acquire)) {
        if (ahead == b + 1 && ahead < nbatches) {  // the next batch's pass 1 while waiting
          run_pass1(ahead);
          ++ahead;
          continue;
        }
        if (++spins < 64) {
#if defined(__x86_64__)
          __builtin_ia32_pause();
#endif
        } else {
          std::this_thread::yield();
        }
      }
      for (int64_t t = t0; t < t1; ++t) {
        const size_t c0 = static_cast<size_t>(b * (threads + 1) + t);
        for (int64_t k = cut[c0 + 1] - 1; k >= cut[c0]; --k) pass2(k, scratch_of(t, b, k));  // backwards
      }
    }
  };
  if (threads == 1) {
    worker(0, 1);
  } else {
    at::parallel_for(0, threads, 1, [&](int64_t b, int64_t e) { worker(b, e); });
  }
}

void fused_lamb_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                    at::TensorList exp_avg_sqs, at::TensorList state_steps,
                    const c10::optional<at::Tensor>& grad_divisor, double lr, double beta1, double beta2,
                    double eps, double weight_decay, bool bias_correction,
                    c10::optional<double> max_weight_norm, bool trust_ratio) {
  check_lists("fused_lamb_", params, grads, exp_avgs, exp_avg_sqs, state_steps);
  double divisor = 1.0;
  const bool clip = grad_divisor.has_value() && grad_divisor->defined();
  if (clip) {
    TORCH_CHECK(grad_divisor->numel() == 1 && grad_divisor->device().is_cpu() &&
                    at::isFloatingType(grad_divisor->scalar_type()),
                "fused_lamb_: grad_divisor must be a one-element floating-point CPU tensor");
    divisor = grad_divisor->item<double>();
  }
  const std::vector<double> steps = increment_steps(state_steps);
  const int64_t n = static_cast<int64_t>(params.size());
  std::vector<LambCoef<float>> cf(n);
  std::vector<LambCoef<double>> cd(n);
  for (int64_t i = 0; i < n; ++i) {
    if (params[i].scalar_type() == at::kFloat) {
      cf[i] = lamb_coef<float>(divisor, lr, beta1, beta2, eps, weight_decay, steps[i], bias_correction);
    } else {
      cd[i] = lamb_coef<double>(divisor, lr, beta1, beta2, eps, weight_decay, steps[i], bias_correction);
    }
  }
  const LambFlags ff{clip, lerp_weight_small(beta1, false), bias_correction, weight_decay != 0.0};
  const LambFlags fd{clip, lerp_weight_small(beta1, true), bias_correction, weight_decay != 0.0};
  auto is_float = [&](int64_t i) { return params[i].scalar_type() == at::kFloat; };
  const std::vector<Chunk> chunks = make_chunks(params, 0, n);
  std::vector<double> w2(chunks.size(), 0.0), u2(chunks.size(), 0.0);  // per-chunk Σθ², Σu²
  // pass 1 of chunk k; scratch: where it keeps u (kNormsAndU), else null
  auto pass1 = [&](int64_t k, int mode, char* scratch) {
    const Chunk& ch = chunks[k];
    const int64_t i = ch.tensor;
    if (is_float(i)) {
      lamb_pass1_chunk<float>(params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], ch, cf[i], ff, mode,
                              reinterpret_cast<float*>(scratch), &w2[k], &u2[k]);
    } else {
      lamb_pass1_chunk<double>(params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], ch, cd[i], fd, mode,
                               reinterpret_cast<double*>(scratch), &w2[k], &u2[k]);
    }
  };
  if (!trust_ratio) {  // r = 1: one pass does it all
    for_each_chunk(chunks, [&](int64_t k) { pass1(k, kApplyUpdate, nullptr); });
    return;
  }
  std::vector<float> ratio_f(n, 1.0f);
  std::vector<double> ratio_d(n, 1.0);
  lamb_two_pass(chunks, params, pass1, [&](int64_t first_chunk, int64_t last_chunk) {
    // per-tensor norms of the batch: chunk partials summed in chunk order (deterministic), then r
    for (int64_t k = first_chunk; k < last_chunk;) {
      const int64_t i = chunks[k].tensor;
      double tw2 = 0.0, tu2 = 0.0;
      for (; k < last_chunk && chunks[k].tensor == i; ++k) {
        tw2 += w2[k];
        tu2 += u2[k];
      }
      if (is_float(i)) {
        ratio_f[i] = trust_ratio_of<float>(tw2, tu2, max_weight_norm);
      } else {
        ratio_d[i] = trust_ratio_of<double>(tw2, tu2, max_weight_norm);
      }
    }
  }, [&](int64_t k, const char* scratch) {
    const Chunk& ch = chunks[k];
    const int64_t i = ch.tensor;
    if (is_float(i)) {
      lamb_pass2_chunk<float>(params[i], exp_avgs[i], exp_avg_sqs[i], ch, cf[i], ff, ratio_f[i],
                              reinterpret_cast<const float*>(scratch));
    } else {
      lamb_pass2_chunk<double>(params[i], exp_avgs[i], exp_avg_sqs[i], ch, cd[i], fd, ratio_d[i],
                               reinterpret_cast<const double*>(scratch));
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// (Σ_j ‖g_j‖²)^½ over all tensors, one pass, reduced in double per chunk and then in chunk order.
// Returns a 0-dim float32 tensor (float64 if any gradient is float64), as optimizers.lamb.global_grad_norm.

template <typename T>
double sum_squares(const T* __restrict x, int64_t n) {
  double s = 0.0;
  for (int64_t b = 0; b < n; b += kNormBlock) {
    const int64_t e = std::min(n, b + kNormBlock);
    T bs = 0;
#pragma omp simd reduction(+ : bs)
    for (int64_t i = b; i < e; ++i) bs += x[i] * x[i];
    s += bs;
  }
  return s;
}

at::Tensor global_grad_norm_cpu(at::TensorList grads) {
  bool any_double = false;
  for (size_t i = 0; i < grads.size(); ++i) {
    const at::Tensor& g = grads[i];
    TORCH_CHECK(g.defined() && g.device().is_cpu() && g.layout() == at::kStrided && g.is_contiguous() &&
                    (g.scalar_type() == at::kFloat || g.scalar_type() == at::kDouble),
                "global_grad_norm: grads[", i, "] must be a dense contiguous float32/float64 CPU tensor (got ",
                g.defined() ? g.toString() : std::string("undefined"), ")");
    any_double |= g.scalar_type() == at::kDouble;
  }
  const std::vector<Chunk> chunks = make_chunks(grads, 0, static_cast<int64_t>(grads.size()));
  std::vector<double> part(chunks.size(), 0.0);
  for_each_chunk(chunks, [&](int64_t k) {
    const Chunk& ch = chunks[k];
    const at::Tensor& g = grads[ch.tensor];
    part[k] = g.scalar_type() == at::kFloat ? sum_squares(g.data_ptr<float>() + ch.begin, ch.end - ch.begin)
                                            : sum_squares(g.data_ptr<double>() + ch.begin, ch.end - ch.begin);
  });
  double total = 0.0;
  for (double s : part) total += s;
  const double norm = std::sqrt(total);
  at::Tensor out = at::empty({}, at::TensorOptions().dtype(any_double ? at::kDouble : at::kFloat));
  if (any_double) {
    *out.data_ptr<double>() = norm;
  } else {
    *out.data_ptr<float>() = static_cast<float>(norm);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(groupbert, m) {
  m.def(
      "fused_adamw_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
      "Tensor(d!)[] state_steps, float lr, float beta1, float beta2, float eps, float weight_decay, "
      "bool bias_correction, bool maximize) -> ()");
  m.def(
      "fused_lamb_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
      "Tensor(d!)[] state_steps, Tensor? grad_divisor, float lr, float beta1, float beta2, float eps, "
      "float weight_decay, bool bias_correction, float? max_weight_norm, bool trust_ratio) -> ()");
  m.def("global_grad_norm(Tensor[] grads) -> Tensor");
}

TORCH_LIBRARY_IMPL(groupbert, CPU, m) {
  m.impl("fused_adamw_", &fused_adamw_cpu);
  m.impl("fused_lamb_", &fused_lamb_cpu);
  m.impl("global_grad_norm", &global_grad_norm_cpu);
}
