// Grouped 1-D "same" convolution on the channels-last [batch, time, channels] layout (GroupBERT's conv
// module), forward and backward, registered as groupbert::grouped_conv1d / grouped_conv1d_backward.
//
//   y[b, t, o]          = bias[o] + sum_k sum_i x[b, t + k - P, g(o) Cin_g + i] w[o, i, k]     P = K / 2
//   grad_x[b, s, c]     = sum_k sum_o gy[b, s - k + P, o] w[o, c - g Cin_g, k]     (o in c's group g)
//   grad_w[o, i, k]     = sum_b sum_t gy[b, t, o] x[b, t + k - P, g(o) Cin_g + i]
//   grad_bias[o]        = sum_b sum_t gy[b, t, o]
// with zeros outside 0 <= t < T. grad_x is the same convolution of gy with the kernel flipped in time and
// transposed within each group, so one tile kernel serves the forward and the input gradient.
//
// Forward and input gradient: the weight is re-laid out once per call to [G][K][Cin_g][Cout_g] (in the
// accumulation type), so a group's whole kernel is contiguous (7 x 16 x 16 floats = 7 KiB at GroupBERT
// Base) and the innermost loop runs over a block of OB output channels. A work item is (sequence, chunk
// of <= 64 time steps): it copies the chunk's input rows, with the K - 1 halo rows and their zero
// padding, into a group-major buffer (reading whole rows in order, which the prefetchers follow, where
// one group's 64-byte slices of rows 3 KiB apart are not), prefetches the next item's rows while it
// computes, and for each group runs register tiles of TT time steps x OB channels over (k, i): one
// weight vector load and TT broadcast input values feed TT x OB multiply-adds (8 x 16 floats in 8 zmm
// on AVX-512, 6 x 16 in 12 ymm on AVX2).
// Weight (and bias) gradient: the (sequence, chunk) row blocks are split into one range per thread,
// each summing into its own partial kernel (added up at the end, so the reduction over batch and time
// is parallel without atomics). A block's input and output-gradient rows are staged the same way, and
// register tiles of IB input x OB output channels sweep each group's block for every tap. For square
// groups (GroupBERT) the input gradient is computed in the same pass from the same staged gy rows.
// bfloat16 is computed in float and rounded once at the end.
//
// Packed rows (groupbert::grouped_conv1d_segments / _segments_backward): segment_ids [B, T] split each
// row into runs of equal contiguous ids, and a tap reads only inside the output's own run:
//   y[b, t, o]      = bias[o] + sum_k sum_i [run(s) = run(t)] x[b, s, g(o) Cin_g + i] w[o, i, k]   s = t + k - P
//   grad_x[b, s, c] = sum_k sum_o [run(t) = run(s)] gy[b, t, o] w[o, c - g Cin_g, k]             t = s - k + P
//   grad_w[o, i, k] = sum_b sum_t [run(s) = run(t)] gy[b, t, o] x[b, s, g(o) Cin_g + i]          s = t + k - P
// i.e. each run is convolved as if it were its own zero-padded sequence. The mask is symmetric, so
// grad_x is again the segmented convolution of gy with the flipped kernel, and the same kernels serve:
// work items are cut at run edges (a run of L steps: ceil(L / chunk) items) and the halo rows that fall
// outside the item's run are staged as zeros, exactly as the rows outside [0, T) are for whole rows.
// grad_bias is the plain column sum (the mask does not enter it).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__GNUC__)
#define GC_INLINE inline __attribute__((always_inline))
#else
#define GC_INLINE inline
#endif

// The target's vector register width (the library is built with -march=native on the machine that runs it).
#if defined(__AVX512F__)
#define GC_VEC_BYTES 64
#elif defined(__AVX__)
#define GC_VEC_BYTES 32
#else
#define GC_VEC_BYTES 16
#endif

namespace {

template <typename T> struct AccType { using type = T; };
template <> struct AccType<c10::BFloat16> { using type = float; };

// Output-channel block width: the largest of 16, 8, 4 dividing n (1 otherwise).
inline int64_t pick_block(int64_t n) {
  for (int64_t b : {16, 8, 4})
    if (n % b == 0) return b;
  return 1;
}

// Items per at::parallel_for task so that a task has at least ~64K multiply-adds (or element copies):
// tiny problems run inline on the calling thread, with no thread wake-up, large ones split finely.
constexpr int64_t kMinTaskWork = int64_t(1) << 16;
inline int64_t grain(int64_t work_per_item) {
  return std::max<int64_t>(1, kMinTaskWork / std::max<int64_t>(work_per_item, 1));
}

// A block of OB channels held as NV vectors of L lanes (GCC/Clang vector extensions), L at most one
// register wide: 16 floats are one zmm on AVX-512 and two ymm on AVX2. The compiler keeps small arrays
// of these in registers, which it does not reliably do for arrays of scalars, and it lowers vectors
// wider than a register poorly, hence the split.
template <typename T, int OB>
struct Block {
  static constexpr int L = std::min<int>(OB, GC_VEC_BYTES / sizeof(T));
  static constexpr int NV = OB / L;
  typedef T vec __attribute__((vector_size(L * sizeof(T))));
  vec v[NV];

  template <typename S>
  static GC_INLINE Block load(const S* p) {
    Block b;
    for (int n = 0; n < NV; ++n) {
      if constexpr (std::is_same_v<S, T>) {
        std::memcpy(&b.v[n], p + n * L, sizeof(vec));
      } else {
        for (int j = 0; j < L; ++j) b.v[n][j] = static_cast<T>(p[n * L + j]);
      }
    }
    return b;
  }
  template <typename S>
  GC_INLINE void store(S* p) const {
    for (int n = 0; n < NV; ++n) {
      if constexpr (std::is_same_v<S, T>) {
        std::memcpy(p + n * L, &v[n], sizeof(vec));
      } else {
        for (int j = 0; j < L; ++j) p[n * L + j] = static_cast<S>(v[n][j]);
      }
    }
  }
  // Keep an operand that feeds several FMAs in registers: without this GCC folds the load into every
  // FMA (memory operands), which makes AVX2 loops load-bound (12 loads per 8 FMAs in the tiles below).
  GC_INLINE void pin() {
#if defined(__GNUC__) && defined(__AVX__) && !defined(__AVX512F__)
    if constexpr (sizeof(vec) == 32)
      for (int n = 0; n < NV; ++n) asm("" : "+x"(v[n]));
#endif
  }
  GC_INLINE void fma(T a, const Block& b) {  // this += a * b
#pragma GCC unroll 8
    for (int n = 0; n < NV; ++n) v[n] += a * b.v[n];
  }
};

// Register tile depth (time steps, or input channels for the weight gradient): blocks of OB
// accumulators filling about REGS vector registers, at most 8 blocks; with the loaded operands they
// must fit the 16 (AVX2) or 32 (AVX-512) registers.
template <typename acc_t, int OB, int REGS>
constexpr int tile_depth() {
  constexpr int t = REGS * GC_VEC_BYTES / int(OB * sizeof(acc_t));
  return t < 1 ? 1 : (t > 8 ? 8 : t);
}

// out[tt][o] = init[o] + sum_k sum_i x[tt + k][i] * w[k][i][o] for tt < TT, o < OB.
// x: the staged input rows (stride cin_g) from time t0 - P on; w: the group's kernel [K][cin_g][cout_g]
// at the block's first output channel. SQ: cin_g == cout_g == OB, known at compile time, so every
// address below is one pointer plus a constant (no register pressure from per-row pointers).
template <int TT, int OB, bool SQ, typename scalar_t, typename acc_t>
GC_INLINE void conv_tile(const acc_t* __restrict x, const acc_t* __restrict w, const acc_t* init, scalar_t* out,
                         int64_t out_stride, int64_t K, int64_t cin_g_, int64_t cout_g_) {
  using Acc = Block<acc_t, OB>;
  const int64_t cin_g = SQ ? OB : cin_g_, cout_g = SQ ? OB : cout_g_;
  const Acc a0 = init ? Acc::load(init) : Acc{};
  Acc acc[TT];
#pragma GCC unroll 16
  for (int tt = 0; tt < TT; ++tt) acc[tt] = a0;
  for (int64_t k = 0; k < K; ++k) {
    const acc_t* xk = x + k * cin_g;
    const acc_t* wk = w + k * cin_g * cout_g;
    for (int64_t i = 0; i < cin_g; ++i) {
      Acc wv = Acc::load(wk + i * cout_g);
      wv.pin();
#pragma GCC unroll 16
      for (int tt = 0; tt < TT; ++tt) acc[tt].fma(xk[tt * cin_g + i], wv);
    }
  }
#pragma GCC unroll 16
  for (int tt = 0; tt < TT; ++tt) acc[tt].store(out + tt * out_stride);
}

// The last n < TT steps of a work item: tiles of TT / 2 steps, then single steps. Packed rows end a
// work item at every run edge, so their tails are common (about half the runs' steps are in them at 3
// runs of ~43 steps per 128); a single-step tile does one weight load per multiply-add.
template <int TT, int OB, bool SQ, typename scalar_t, typename acc_t>
GC_INLINE void conv_tail(int64_t n, const acc_t* x, const acc_t* w, const acc_t* init, scalar_t* out,
                         int64_t out_stride, int64_t K, int64_t cin_g, int64_t cout_g) {
  int64_t tt = 0;
  if constexpr (TT >= 4) {
    constexpr int H = TT / 2;
    for (; tt + H <= n; tt += H)
      conv_tile<H, OB, SQ>(x + tt * cin_g, w, init, out + tt * out_stride, out_stride, K, cin_g, cout_g);
  }
  for (; tt < n; ++tt)
    conv_tile<1, OB, SQ>(x + tt * cin_g, w, init, out + tt * out_stride, out_stride, K, cin_g, cout_g);
}

// Rows t_first .. t_first + n_rows - 1 of sequence b of src [B, T, C] (zeros outside [lo, hi): [0, T), or
// the work item's run of equal segment ids) into dst,
// group-major [G][n_rows][C / G] in the accumulation type. Rows are read whole and in order (streaming,
// which the hardware prefetchers follow; a group's 64-byte slices of rows 3 KiB apart are not), and
// each group's slice comes out contiguous, so the tiles below address it as one pointer plus constants
// with no bounds checks. CG: C / G when known at compile time (0: at run time).
template <int CG, typename scalar_t, typename acc_t>
void stage_rows(const scalar_t* src, acc_t* dst, int64_t b, int64_t T, int64_t C, int64_t G, int64_t t_first,
                int64_t n_rows, int64_t lo, int64_t hi) {
  const int64_t cg = CG > 0 ? CG : C / G;
  for (int64_t j = 0; j < n_rows; ++j) {
    const int64_t t = t_first + j;
    if (t >= lo && t < hi) {
      const scalar_t* row = src + (b * T + t) * C;
      for (int64_t g = 0; g < G; ++g) {
        acc_t* d = dst + (g * n_rows + j) * cg;
        for (int64_t i = 0; i < cg; ++i) d[i] = static_cast<acc_t>(row[g * cg + i]);
      }
    } else {
      for (int64_t g = 0; g < G; ++g) std::fill(dst + (g * n_rows + j) * cg, dst + (g * n_rows + j + 1) * cg, acc_t(0));
    }
  }
}

// Rows lo .. hi - 1 of sequence b of src (already clamped to what the item reads): one contiguous range
// of memory, of which part `part` of `parts` is prefetched into L2. Spread over the G groups' compute
// of one work item, this brings the next item's rows in while the current one computes, so that
// stage_rows finds them in cache instead of waiting on memory.
template <typename scalar_t>
GC_INLINE void prefetch_rows(const scalar_t* src, int64_t b, int64_t T, int64_t C, int64_t lo, int64_t hi,
                             int64_t part, int64_t parts) {
  if (lo >= hi) return;
  const char* base = reinterpret_cast<const char*>(src + (b * T + lo) * C);
  const int64_t bytes = (hi - lo) * C * int64_t(sizeof(scalar_t));
  for (int64_t off = bytes * part / parts / 64 * 64; off < bytes * (part + 1) / parts; off += 64)
    __builtin_prefetch(base + off, 0, 2);
}

// Time steps per work item: at most 64 and at most ~256 KiB of staged floats per row block of `width`
// channels (both for L2), small enough to give each thread ~4 items, with the sequence cut into equal
// chunks (no short remainder), rounded up to a multiple of `multiple`.
inline int64_t chunk_steps(int64_t B, int64_t T, int64_t width, int64_t multiple) {
  const int64_t threads = at::get_num_threads();
  const int64_t most = std::min<int64_t>({64, std::max<int64_t>(1, 65536 / std::max<int64_t>(width, 1)),
                                          std::max<int64_t>(1, (B * T + 4 * threads - 1) / (4 * threads))});
  const int64_t n_chunks = std::max<int64_t>(1, (T + most - 1) / most);
  const int64_t c = std::max<int64_t>(1, (T + n_chunks - 1) / n_chunks);
  return multiple * ((c + multiple - 1) / multiple);
}

// A work item: output steps [t_lo, t_hi) of sequence b, whose taps read input rows in [lo, hi) only
// (zeros outside): [0, T) for whole rows, the step's run of equal segment ids for packed rows. Its halo
// rows are t_lo - P .. t_hi + P - 1, of which [max(t_lo - P, lo), min(t_hi + P, hi)) are read.
struct Item {
  int64_t b, t_lo, t_hi, lo, hi;
};

// Whole rows: item j is chunk j % n_chunks of sequence j / n_chunks (computed, nothing stored).
struct ChunkItems {
  int64_t T, chunk, n_chunks;
  GC_INLINE Item operator()(int64_t j) const {
    const int64_t b = j / n_chunks, t_lo = j % n_chunks * chunk;
    return {b, t_lo, std::min(T, t_lo + chunk), 0, T};
  }
};

// Packed rows: the items listed by split_runs.
struct ListItems {
  const Item* items;
  GC_INLINE Item operator()(int64_t j) const { return items[j]; }
};

// A run of equal contiguous segment ids: steps [lo, hi) of sequence b.
struct Run {
  int64_t b, lo, hi;
};

// [B, T] segment ids (any integer type) -> their runs, in row-major order.
std::vector<Run> find_runs(const at::Tensor& ids) {
  std::vector<Run> runs;
  const int64_t B = ids.size(0), T = ids.size(1);
  AT_DISPATCH_INTEGRAL_TYPES(ids.scalar_type(), "grouped_conv1d_segments", [&] {
    const scalar_t* p = ids.const_data_ptr<scalar_t>();
    for (int64_t b = 0; b < B; ++b) {
      int64_t lo = 0;
      for (int64_t t = 1; t <= T; ++t)
        if (t == T || p[b * T + t] != p[b * T + t - 1]) {
          runs.push_back({b, lo, t});
          lo = t;
        }
    }
  });
  return runs;
}

// Each run cut into ceil(L / chunk) items of equal length rounded up to a multiple of `multiple` (so
// only the run's last item has a partial register tile); chunk is itself a multiple of `multiple`, so
// no item is longer than chunk and none is empty.
std::vector<Item> split_runs(const std::vector<Run>& runs, int64_t chunk, int64_t multiple) {
  std::vector<Item> items;
  items.reserve(runs.size());
  for (const Run& r : runs) {
    const int64_t L = r.hi - r.lo, n = (L + chunk - 1) / chunk;
    const int64_t len = multiple * (((L + n - 1) / n + multiple - 1) / multiple);
    for (int64_t t = r.lo; t < r.hi; t += len) items.push_back({r.b, t, std::min(r.hi, t + len), r.lo, r.hi});
  }
  return items;
}

// out[b, t, g cout_g + o] = bias[..] + sum_k sum_i in[b, t + k - P, g cin_g + i] wt[g][k][i][o]
// (in: [B, T, cin], out: [B, T, cout], wt: [G][K][cin_g][cout_g], bias: [cout] or null), with in = 0
// outside each item's readable rows [lo, hi).
// A work item (items(j), j < n_items, at most `chunk` steps; ChunkItems / ListItems) stages its input rows
// with their K - 1 halo rows (stage_rows), then runs every group's tiles over them, with that group's
// 7 KiB kernel (GroupBERT Base) read from L1/L2.
template <int OB, bool SQ, typename scalar_t, typename acc_t, typename Items>
void conv_items(const scalar_t* in, const acc_t* wt, const acc_t* bias, scalar_t* out, int64_t T, int64_t cin,
                int64_t cout, int64_t G, int64_t K, const Items& items, int64_t n_items, int64_t chunk,
                int64_t item_steps) {
  constexpr int TT = tile_depth<acc_t, OB, 12>();
  const int64_t cin_g = cin / G, cout_g = cout / G, P = K / 2;
  at::parallel_for(0, n_items, grain(item_steps * K * cin * cout_g), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> xs((chunk + K - 1) * cin);
    for (int64_t j = begin; j < end; ++j) {
      const Item it = items(j);
      const int64_t b = it.b, t_lo = it.t_lo, t_hi = it.t_hi;
      const int64_t n_rows = t_hi - t_lo + K - 1;
      stage_rows<SQ ? OB : 0>(in, xs.data(), b, T, cin, G, t_lo - P, n_rows, it.lo, it.hi);
      Item nx{0, 0, 0, 0, 0};  // the next item's rows, prefetched while this one computes
      if (j + 1 < end) nx = items(j + 1);
      const int64_t n_lo = std::max(nx.t_lo - P, nx.lo), n_hi = std::min(nx.t_hi + P, nx.hi);
      for (int64_t g = 0; g < G; ++g) {
        prefetch_rows(in, nx.b, T, cin, n_lo, n_hi, g, G);
        const acc_t* wg = wt + g * K * cin_g * cout_g;
        const acc_t* xg = xs.data() + g * n_rows * cin_g;
        for (int64_t o0 = 0; o0 < cout_g; o0 += OB) {
          const acc_t* init = bias ? bias + g * cout_g + o0 : nullptr;
          for (int64_t t0 = t_lo; t0 < t_hi; t0 += TT) {
            const int64_t n = std::min<int64_t>(TT, t_hi - t0);
            const acc_t* x0 = xg + (t0 - t_lo) * cin_g;
            scalar_t* o = out + (b * T + t0) * cout + g * cout_g + o0;
            if (n == TT) {
              conv_tile<TT, OB, SQ>(x0, wg + o0, init, o, cout, K, cin_g, cout_g);
            } else {
              conv_tail<TT, OB, SQ>(n, x0, wg + o0, init, o, cout, K, cin_g, cout_g);
            }
          }
        }
      }
    }
  });
}

// The convolution over whole rows (runs == null: (sequence, chunk) items) or over the runs of packed rows.
template <int OB, bool SQ, typename scalar_t, typename acc_t>
void conv_channels_last(const scalar_t* in, const acc_t* wt, const acc_t* bias, scalar_t* out, int64_t B,
                        int64_t T, int64_t cin, int64_t cout, int64_t G, int64_t K, const std::vector<Run>* runs) {
  constexpr int TT = tile_depth<acc_t, OB, 12>();  // AVX2, 16 floats: 6 steps = 12 accumulators
  const int64_t chunk = chunk_steps(B, T, cin, TT);
  if (!runs) {
    const int64_t n_chunks = (T + chunk - 1) / chunk;
    conv_items<OB, SQ>(in, wt, bias, out, T, cin, cout, G, K, ChunkItems{T, chunk, n_chunks}, B * n_chunks, chunk,
                       chunk);
  } else {
    const std::vector<Item> items = split_runs(*runs, chunk, TT);
    const int64_t n = static_cast<int64_t>(items.size());
    conv_items<OB, SQ>(in, wt, bias, out, T, cin, cout, G, K, ListItems{items.data()}, n, chunk,
                       (B * T + n - 1) / std::max<int64_t>(n, 1));
  }
}

template <typename scalar_t, typename acc_t>
void conv_dispatch(const scalar_t* in, const acc_t* wt, const acc_t* bias, scalar_t* out, int64_t B,
                   int64_t T, int64_t cin, int64_t cout, int64_t G, int64_t K, const std::vector<Run>* runs) {
  const int64_t cin_g = cin / G, cout_g = cout / G;
  if (cin_g == cout_g) {  // square groups of 16, 8 or 4 channels (GroupBERT: 16): fully unrolled
    switch (cout_g) {
      case 16: return conv_channels_last<16, true>(in, wt, bias, out, B, T, cin, cout, G, K, runs);
      case 8: return conv_channels_last<8, true>(in, wt, bias, out, B, T, cin, cout, G, K, runs);
      case 4: return conv_channels_last<4, true>(in, wt, bias, out, B, T, cin, cout, G, K, runs);
      default: break;
    }
  }
  switch (pick_block(cout_g)) {
    case 16: return conv_channels_last<16, false>(in, wt, bias, out, B, T, cin, cout, G, K, runs);
    case 8: return conv_channels_last<8, false>(in, wt, bias, out, B, T, cin, cout, G, K, runs);
    case 4: return conv_channels_last<4, false>(in, wt, bias, out, B, T, cin, cout, G, K, runs);
    default: return conv_channels_last<1, false>(in, wt, bias, out, B, T, cin, cout, G, K, runs);
  }
}

// dst[ii][o] += sum_{t < n} x[(t + k) cin_g + ii] * gy[t cout_g + o] for ii < IB, o < OB, over staged
// (contiguous, zero-padded) x and gy at the tile's first input / output channel.
template <int IB, int OB, bool SQ, typename acc_t>
GC_INLINE void grad_weight_tile(const acc_t* __restrict x, const acc_t* __restrict gy, int64_t n, int64_t cin_g_,
                                int64_t cout_g_, acc_t* __restrict dst) {
  using Acc = Block<acc_t, OB>;
  const int64_t cin_g = SQ ? OB : cin_g_, cout_g = SQ ? OB : cout_g_;
  Acc acc[IB];
#pragma GCC unroll 16
  for (int ii = 0; ii < IB; ++ii) acc[ii] = Acc::load(dst + ii * cout_g);
  for (int64_t t = 0; t < n; ++t) {
    Acc gv = Acc::load(gy + t * cout_g);
    gv.pin();
#pragma GCC unroll 16
    for (int ii = 0; ii < IB; ++ii) acc[ii].fma(x[t * cin_g + ii], gv);
  }
#pragma GCC unroll 16
  for (int ii = 0; ii < IB; ++ii) acc[ii].store(dst + ii * cout_g);
}

// gwt[g][k][i][o] = sum_b sum_t x[b, t + k - P, g cin_g + i] gy[b, t, g cout_g + o], and, if gbias,
// gbias[o] = sum_b sum_t gy[b, t, o] (both zero-initialised by the caller); and, if gx (only for
// square groups, SQ), the input gradient gx = conv(gy, wflip) as in conv_channels_last, from the same
// staged gy rows (one pass over gy for both gradients).
// The (b, chunk) row blocks are split into one contiguous range per thread, each summing into its own
// partial kernel (the first straight into gwt, the others zeroed buffers added up at the end). A
// block's x and gy rows, with their halos, are staged group-major (stage_rows); each group's slices
// (~4 KiB each at Base) then stay in L1 while all its register tiles sweep them.
// Row blocks are work items as in conv_items (items(r), r < rows): with packed rows x and gy are staged
// as zeros outside the item's run, so the sums above only pair steps of one run.
template <int OB, bool SQ, typename scalar_t, typename acc_t, typename Items>
void backward_items(const scalar_t* x, const scalar_t* gy, const acc_t* wflip, scalar_t* gx, acc_t* gwt,
                    acc_t* gbias, int64_t B, int64_t T, int64_t cin, int64_t cout, int64_t G, int64_t K,
                    const Items& items, int64_t rows, int64_t chunk) {
  constexpr int IB = tile_depth<acc_t, OB, 8>();   // input channels per weight-gradient tile (4 or 8)
  constexpr int TT = tile_depth<acc_t, OB, 12>();  // time steps per input-gradient tile, as in the forward
  const int64_t cin_g = cin / G, cout_g = cout / G, P = K / 2;
  const int64_t wsize = G * K * cin_g * cout_g;
  const int64_t splits = B * T * K * cin * cout_g < 2 * kMinTaskWork
                             ? 1 : std::min<int64_t>(rows, at::get_num_threads());
  const int64_t psize = wsize + (gbias ? cout : 0);  // partial buffer: kernel, then bias
  std::vector<acc_t> partial((splits - 1) * psize, acc_t(0));
  at::parallel_for(0, splits, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> xs((chunk + K - 1) * cin), gs((chunk + K - 1) * cout);
    for (int64_t s = begin; s < end; ++s) {
      acc_t* pw = s == 0 ? gwt : partial.data() + (s - 1) * psize;
      acc_t* pb = !gbias ? nullptr : (s == 0 ? gbias : partial.data() + (s - 1) * psize + wsize);
      for (int64_t r = rows * s / splits; r < rows * (s + 1) / splits; ++r) {
        const Item it = items(r);
        const int64_t b = it.b, c0 = it.t_lo, n = it.t_hi - it.t_lo;
        const int64_t n_rows = n + K - 1;
        stage_rows<SQ ? OB : 0>(x, xs.data(), b, T, cin, G, c0 - P, n_rows, it.lo, it.hi);
        stage_rows<SQ ? OB : 0>(gy, gs.data(), b, T, cout, G, c0 - P, n_rows, it.lo, it.hi);  // with halo for gx
        Item nx{0, 0, 0, 0, 0};  // the next block's rows, prefetched while this one computes
        if (r + 1 < rows * (s + 1) / splits) nx = items(r + 1);
        const int64_t n_lo = std::max(nx.t_lo - P, nx.lo), n_hi = std::min(nx.t_hi + P, nx.hi);
        for (int64_t g = 0; g < G; ++g) {
          prefetch_rows(x, nx.b, T, cin, n_lo, n_hi, g, G);
          prefetch_rows(gy, nx.b, T, cout, n_lo, n_hi, g, G);
          const acc_t* xg = xs.data() + g * n_rows * cin_g;
          const acc_t* gg = gs.data() + (g * n_rows + P) * cout_g;  // the block's own gy rows
          if (gx) {
            const acc_t* wg = wflip + g * K * cout_g * cin_g;
            const acc_t* hg = gs.data() + g * n_rows * cout_g;  // gy rows from c0 - P on
            const acc_t* no_bias = nullptr;
            for (int64_t t0 = c0; t0 < c0 + n; t0 += TT) {
              const int64_t m = std::min<int64_t>(TT, c0 + n - t0);
              scalar_t* o = gx + (b * T + t0) * cin + g * cin_g;
              if (m == TT) {
                conv_tile<TT, OB, SQ>(hg + (t0 - c0) * cout_g, wg, no_bias, o, cin, K, cout_g, cin_g);
              } else {
                conv_tail<TT, OB, SQ>(m, hg + (t0 - c0) * cout_g, wg, no_bias, o, cin, K, cout_g, cin_g);
              }
            }
          }
          acc_t* out = pw + g * K * cin_g * cout_g;
          if (pb) {
            acc_t* gb = pb + g * cout_g;
            for (int64_t j = 0; j < n; ++j)
              for (int64_t o = 0; o < cout_g; ++o) gb[o] += gg[j * cout_g + o];
          }
          for (int64_t o0 = 0; o0 < cout_g; o0 += OB) {
            for (int64_t i0 = 0; i0 < cin_g; i0 += IB) {
              const int64_t ni = std::min<int64_t>(IB, cin_g - i0);
              for (int64_t k = 0; k < K; ++k) {
                acc_t* dst = out + (k * cin_g + i0) * cout_g + o0;
                const acc_t* xk = xg + k * cin_g + i0;
                if (ni == IB) {
                  grad_weight_tile<IB, OB, SQ>(xk, gg + o0, n, cin_g, cout_g, dst);
                } else {
                  for (int64_t ii = 0; ii < ni; ++ii)
                    grad_weight_tile<1, OB, false>(xk + ii, gg + o0, n, cin_g, cout_g, dst + ii * cout_g);
                }
              }
            }
          }
        }
      }
    }
  });
  if (splits > 1) {
    at::parallel_for(0, psize, grain(splits - 1), [&](int64_t begin, int64_t end) {
      for (int64_t s = 0; s < splits - 1; ++s) {
        const acc_t* p = partial.data() + s * psize;
        for (int64_t j = begin; j < end; ++j) (j < wsize ? gwt[j] : gbias[j - wsize]) += p[j];
      }
    });
  }
}

// The backward over whole rows (runs == null: (sequence, chunk) blocks) or over the runs of packed rows.
template <int OB, bool SQ, typename scalar_t, typename acc_t>
void backward_channels_last(const scalar_t* x, const scalar_t* gy, const acc_t* wflip, scalar_t* gx, acc_t* gwt,
                            acc_t* gbias, int64_t B, int64_t T, int64_t cin, int64_t cout, int64_t G, int64_t K,
                            const std::vector<Run>* runs) {
  constexpr int TT = tile_depth<acc_t, OB, 12>();
  TORCH_INTERNAL_ASSERT(!gx || (SQ && cin == cout), "fused input gradient needs square groups");
  const int64_t chunk = chunk_steps(B, T, std::max(cin, cout), gx ? TT : 1);
  if (!runs) {
    const int64_t n_chunks = (T + chunk - 1) / chunk;
    backward_items<OB, SQ>(x, gy, wflip, gx, gwt, gbias, B, T, cin, cout, G, K, ChunkItems{T, chunk, n_chunks},
                           B * n_chunks, chunk);
  } else {
    const std::vector<Item> items = split_runs(*runs, chunk, gx ? TT : 1);
    backward_items<OB, SQ>(x, gy, wflip, gx, gwt, gbias, B, T, cin, cout, G, K, ListItems{items.data()},
                           static_cast<int64_t>(items.size()), chunk);
  }
}

// The weight (and bias) gradient, and the input gradient if gx: fused in one pass for square groups of
// 16, 8 or 4 channels (GroupBERT), otherwise the input gradient as a separate convolution.
template <typename scalar_t, typename acc_t>
void backward_dispatch(const scalar_t* x, const scalar_t* gy, const acc_t* wflip, scalar_t* gx, acc_t* gwt,
                       acc_t* gbias, int64_t B, int64_t T, int64_t cin, int64_t cout, int64_t G, int64_t K,
                       const std::vector<Run>* runs) {
  const int64_t cin_g = cin / G, cout_g = cout / G;
  if (cin_g == cout_g) {
    switch (cout_g) {
      case 16: return backward_channels_last<16, true>(x, gy, wflip, gx, gwt, gbias, B, T, cin, cout, G, K, runs);
      case 8: return backward_channels_last<8, true>(x, gy, wflip, gx, gwt, gbias, B, T, cin, cout, G, K, runs);
      case 4: return backward_channels_last<4, true>(x, gy, wflip, gx, gwt, gbias, B, T, cin, cout, G, K, runs);
      default: break;
    }
  }
  if (gx) conv_dispatch<scalar_t, acc_t>(gy, wflip, nullptr, gx, B, T, cout, cin, G, K, runs);
  const acc_t* no_w = nullptr;
  scalar_t* no_gx = nullptr;
  switch (pick_block(cout_g)) {
    case 16: return backward_channels_last<16, false>(x, gy, no_w, no_gx, gwt, gbias, B, T, cin, cout, G, K, runs);
    case 8: return backward_channels_last<8, false>(x, gy, no_w, no_gx, gwt, gbias, B, T, cin, cout, G, K, runs);
    case 4: return backward_channels_last<4, false>(x, gy, no_w, no_gx, gwt, gbias, B, T, cin, cout, G, K, runs);
    default: return backward_channels_last<1, false>(x, gy, no_w, no_gx, gwt, gbias, B, T, cin, cout, G, K, runs);
  }
}

// grad_bias[o] = sum over all B*T rows of gy[row, o]; parallel over blocks of channels.
template <typename scalar_t, typename acc_t>
void grad_bias_channels_last(const scalar_t* gy, scalar_t* gb, int64_t rows, int64_t cout) {
  constexpr int64_t kBlock = 64;
  at::parallel_for(0, (cout + kBlock - 1) / kBlock, grain(rows * kBlock), [&](int64_t begin, int64_t end) {
    acc_t acc[kBlock];
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t c0 = blk * kBlock, n = std::min(kBlock, cout - c0);
      std::fill(acc, acc + kBlock, acc_t(0));
      for (int64_t r = 0; r < rows; ++r) {
        const scalar_t* g = gy + r * cout + c0;
        for (int64_t j = 0; j < n; ++j) acc[j] += static_cast<acc_t>(g[j]);
      }
      for (int64_t j = 0; j < n; ++j) gb[c0 + j] = static_cast<scalar_t>(acc[j]);
    }
  });
}

// w [cout, cin_g, K] (nn.Conv1d) -> wt [G][K][cin_g][cout_g] in acc_t; flip_transpose gives the
// input-gradient kernel instead: wt[g][k][o][i] = w[g cout_g + o, i, K - 1 - k] ([G][K][cout_g][cin_g]).
template <typename scalar_t, typename acc_t>
std::vector<acc_t> relayout_weight(const scalar_t* w, int64_t cout, int64_t cin_g, int64_t K, int64_t G,
                                   bool flip_transpose) {
  const int64_t cout_g = cout / G;
  std::vector<acc_t> wt(cout * cin_g * K);
  at::parallel_for(0, G, grain(cout_g * cin_g * K), [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g)
      for (int64_t o = 0; o < cout_g; ++o)
        for (int64_t i = 0; i < cin_g; ++i)
          for (int64_t k = 0; k < K; ++k) {
            const acc_t v = static_cast<acc_t>(w[((g * cout_g + o) * cin_g + i) * K + k]);
            if (flip_transpose)
              wt[((g * K + (K - 1 - k)) * cout_g + o) * cin_g + i] = v;
            else
              wt[((g * K + k) * cin_g + i) * cout_g + o] = v;
          }
  });
  return wt;
}

void check_args(const at::Tensor& input, const at::Tensor& weight, int64_t groups, const char* op) {
  TORCH_CHECK(input.dim() == 3, op, ": input must be 3-D [batch, time, channels], got ", input.dim(),
              "-D of shape ", input.sizes());
  TORCH_CHECK(weight.dim() == 3, op, ": weight must be 3-D [out_channels, in_channels / groups, kernel] ",
              "(nn.Conv1d layout), got shape ", weight.sizes());
  TORCH_CHECK(groups >= 1, op, ": groups must be positive, got ", groups);
  const int64_t C = input.size(2), cout = weight.size(0), K = weight.size(2);
  TORCH_CHECK(C % groups == 0, op, ": input channels (", C, ") must be divisible by groups (", groups, ")");
  TORCH_CHECK(cout % groups == 0, op, ": output channels (weight.size(0) = ", cout,
              ") must be divisible by groups (", groups, ")");
  TORCH_CHECK(weight.size(1) == C / groups, op, ": weight.size(1) must be channels / groups = ", C, " / ",
              groups, " = ", C / groups, ", got weight of shape ", weight.sizes());
  TORCH_CHECK(K % 2 == 1, op, ": kernel size must be odd for \"same\" padding K // 2, got ", K);
  TORCH_CHECK(weight.scalar_type() == input.scalar_type(), op, ": weight dtype (", weight.scalar_type(),
              ") must match input dtype (", input.scalar_type(), ")");
  TORCH_CHECK(input.device().is_cpu() && weight.device().is_cpu(), op,
              ": the C++ kernel is CPU-only; got input on ", input.device(), " and weight on ", weight.device());
  const auto dt = input.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16, op,
              ": supported dtypes are float32, float64 and bfloat16, got ", dt);
}

// segment_ids must be [B, T] integers on the CPU; returns their runs.
std::vector<Run> check_segments(const at::Tensor& input, const at::Tensor& segment_ids, const char* op) {
  TORCH_CHECK(segment_ids.dim() == 2 && segment_ids.size(0) == input.size(0) && segment_ids.size(1) == input.size(1),
              op, ": segment_ids must be [batch, time] = [", input.size(0), ", ", input.size(1), "], got shape ",
              segment_ids.sizes());
  const auto dt = segment_ids.scalar_type();
  TORCH_CHECK((dt == at::kLong || dt == at::kInt || dt == at::kShort || dt == at::kChar || dt == at::kByte) &&
                  segment_ids.device().is_cpu(),
              op, ": segment_ids must be an integer (int8/16/32/64 or uint8) CPU tensor, got ", dt, " on ",
              segment_ids.device());
  return find_runs(segment_ids.contiguous());
}

// Forward of both ops: runs == null for whole rows.
at::Tensor conv_forward(const at::Tensor& input_, const at::Tensor& weight_, const c10::optional<at::Tensor>& bias_opt,
                        int64_t groups, const std::vector<Run>* runs, const char* op) {
  const at::Tensor input = input_.contiguous(), weight = weight_.contiguous();
  const int64_t B = input.size(0), T = input.size(1), C = input.size(2);
  const int64_t cout = weight.size(0), K = weight.size(2);
  at::Tensor bias;
  if (bias_opt.has_value() && bias_opt->defined()) {
    bias = bias_opt->contiguous();
    TORCH_CHECK(bias.dim() == 1 && bias.size(0) == cout, op, ": bias must have shape [", cout,
                "], got ", bias.sizes());
    TORCH_CHECK(bias.scalar_type() == input.scalar_type() && bias.device().is_cpu(),
                op, ": bias must be a CPU tensor of the input's dtype (", input.scalar_type(),
                "), got ", bias.scalar_type(), " on ", bias.device());
  }
  at::Tensor out = at::empty({B, T, cout}, input.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, input.scalar_type(), "grouped_conv1d", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    const std::vector<acc_t> wt =
        relayout_weight<scalar_t, acc_t>(weight.const_data_ptr<scalar_t>(), cout, C / groups, K, groups, false);
    std::vector<acc_t> b;
    if (bias.defined()) {
      const scalar_t* bp = bias.const_data_ptr<scalar_t>();
      b.assign(bp, bp + cout);
    }
    conv_dispatch<scalar_t, acc_t>(input.const_data_ptr<scalar_t>(), wt.data(), bias.defined() ? b.data() : nullptr,
                                   out.mutable_data_ptr<scalar_t>(), B, T, C, cout, groups, K, runs);
  });
  return out;
}

at::Tensor grouped_conv1d(const at::Tensor& input, const at::Tensor& weight,
                          const c10::optional<at::Tensor>& bias_opt, int64_t groups) {
  check_args(input, weight, groups, "grouped_conv1d");
  return conv_forward(input, weight, bias_opt, groups, nullptr, "grouped_conv1d");
}

at::Tensor grouped_conv1d_segments(const at::Tensor& input, const at::Tensor& weight,
                                   const c10::optional<at::Tensor>& bias_opt, int64_t groups,
                                   const at::Tensor& segment_ids) {
  check_args(input, weight, groups, "grouped_conv1d_segments");
  const std::vector<Run> runs = check_segments(input, segment_ids, "grouped_conv1d_segments");
  return conv_forward(input, weight, bias_opt, groups, &runs, "grouped_conv1d_segments");
}

// Backward of both ops: runs == null for whole rows.
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_backward(const at::Tensor& grad_output_, const at::Tensor& input_,
                                                             const at::Tensor& weight_, int64_t groups,
                                                             std::array<bool, 3> output_mask,
                                                             const std::vector<Run>* runs, const char* op) {
  const int64_t B = input_.size(0), T = input_.size(1), C = input_.size(2);
  const int64_t cout = weight_.size(0), cin_g = weight_.size(1), K = weight_.size(2);
  TORCH_CHECK(grad_output_.dim() == 3 && grad_output_.size(0) == B && grad_output_.size(1) == T &&
                  grad_output_.size(2) == cout,
              op, ": grad_output must have shape [", B, ", ", T, ", ", cout, "], got ",
              grad_output_.sizes());
  TORCH_CHECK(grad_output_.scalar_type() == input_.scalar_type() && grad_output_.device().is_cpu(),
              op, ": grad_output must be a CPU tensor of the input's dtype (",
              input_.scalar_type(), "), got ", grad_output_.scalar_type(), " on ", grad_output_.device());
  const at::Tensor gy = grad_output_.contiguous(), input = input_.contiguous(), weight = weight_.contiguous();
  // Masked-out gradients are returned as empty [0] tensors (the schema's outputs are not optional).
  at::Tensor grad_input = output_mask[0] ? at::empty({B, T, C}, input.options()) : at::empty({0}, input.options());
  at::Tensor grad_weight = output_mask[1] ? at::empty({cout, cin_g, K}, weight.options())
                                          : at::empty({0}, weight.options());
  at::Tensor grad_bias = output_mask[2] ? at::empty({cout}, weight.options()) : at::empty({0}, weight.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, input.scalar_type(), "grouped_conv1d", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    const scalar_t* gyp = gy.const_data_ptr<scalar_t>();
    const bool want_gx = output_mask[0] && grad_input.numel() > 0;
    const bool want_gw = output_mask[1] && grad_weight.numel() > 0 && B * T > 0;
    std::vector<acc_t> wflip;  // the input gradient's kernel: flipped in time, transposed per group
    if (want_gx && cout > 0)
      wflip = relayout_weight<scalar_t, acc_t>(weight.const_data_ptr<scalar_t>(), cout, cin_g, K, groups, true);
    if (want_gx && cout == 0) grad_input.zero_();
    // Weight and bias gradients come from one pass over the staged rows, with the input gradient too
    // where it is wanted; the input gradient alone is the forward kernel on gy.
    const bool fuse_bias = want_gw && output_mask[2] && grad_bias.numel() > 0;
    scalar_t* gxp = want_gx && cout > 0 ? grad_input.mutable_data_ptr<scalar_t>() : nullptr;
    if (want_gw) {
      const int64_t cout_g = cout / groups, wsize = cout * cin_g * K;
      std::vector<acc_t> gwt(wsize + (fuse_bias ? cout : 0), acc_t(0));
      backward_dispatch<scalar_t, acc_t>(input.const_data_ptr<scalar_t>(), gyp, wflip.data(), gxp, gwt.data(),
                                         fuse_bias ? gwt.data() + wsize : nullptr, B, T, C, cout, groups, K, runs);
      scalar_t* gw = grad_weight.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, groups, grain(cout_g * cin_g * K), [&](int64_t begin, int64_t end) {
        for (int64_t g = begin; g < end; ++g)
          for (int64_t o = 0; o < cout_g; ++o)
            for (int64_t i = 0; i < cin_g; ++i)
              for (int64_t k = 0; k < K; ++k)
                gw[((g * cout_g + o) * cin_g + i) * K + k] =
                    static_cast<scalar_t>(gwt[((g * K + k) * cin_g + i) * cout_g + o]);
      });
      if (fuse_bias) {
        scalar_t* gb = grad_bias.mutable_data_ptr<scalar_t>();
        for (int64_t o = 0; o < cout; ++o) gb[o] = static_cast<scalar_t>(gwt[wsize + o]);
      }
    } else if (output_mask[1] && grad_weight.numel() > 0) {
      grad_weight.zero_();  // no rows (B * T == 0)
    }
    if (gxp && !want_gw)
      conv_dispatch<scalar_t, acc_t>(gyp, wflip.data(), nullptr, gxp, B, T, cout, C, groups, K, runs);
    if (output_mask[2] && grad_bias.numel() > 0 && !fuse_bias)
      grad_bias_channels_last<scalar_t, acc_t>(gyp, grad_bias.mutable_data_ptr<scalar_t>(), B * T, cout);
  });
  return {grad_input, grad_weight, grad_bias};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> grouped_conv1d_backward(const at::Tensor& grad_output,
                                                                       const at::Tensor& input,
                                                                       const at::Tensor& weight, int64_t groups,
                                                                       std::array<bool, 3> output_mask) {
  check_args(input, weight, groups, "grouped_conv1d_backward");
  return conv_backward(grad_output, input, weight, groups, output_mask, nullptr, "grouped_conv1d_backward");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> grouped_conv1d_segments_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& segment_ids,
    int64_t groups, std::array<bool, 3> output_mask) {
  check_args(input, weight, groups, "grouped_conv1d_segments_backward");
  const std::vector<Run> runs = check_segments(input, segment_ids, "grouped_conv1d_segments_backward");
  return conv_backward(grad_output, input, weight, groups, output_mask, &runs, "grouped_conv1d_segments_backward");
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(groupbert, m) {
  m.def("grouped_conv1d(Tensor input, Tensor weight, Tensor? bias, int groups) -> Tensor");
  m.def(
      "grouped_conv1d_backward(Tensor grad_output, Tensor input, Tensor weight, int groups, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
  // Packed rows: segment_ids [B, T] (integers) cut the kernel window at every run of equal ids.
  m.def("grouped_conv1d_segments(Tensor input, Tensor weight, Tensor? bias, int groups, Tensor segment_ids) -> Tensor");
  m.def(
      "grouped_conv1d_segments_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor segment_ids, "
      "int groups, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(groupbert, CPU, m) {
  m.impl("grouped_conv1d", &grouped_conv1d);
  m.impl("grouped_conv1d_backward", &grouped_conv1d_backward);
  m.impl("grouped_conv1d_segments", &grouped_conv1d_segments);
  m.impl("grouped_conv1d_segments_backward", &grouped_conv1d_segments_backward);
}
