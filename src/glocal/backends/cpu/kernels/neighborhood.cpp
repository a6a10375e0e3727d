// Fused neighborhood attention on the CPU: forward and backward, two kernel families.
//
// Shapes (every tensor contiguous, grid flattened row-major to N tokens):
//   q [B, N, Hq, Dqk]   k [B, N, Hkv, Dqk]   v [B, N, Hkv, Dv]
//   out [B, N, Hq, Dv]  lse, delta [B, N, Hq]
//
// Per-query kernels (any dtype the dispatch takes, any head dim): forward, backward_dq and
// backward_dkv below. tab [2, 3, 2, Lmax] int32: tab[0][a] holds, per query coordinate x on
// axis a, the first key coordinate and the key count of its window (keys step by the axis's
// dilation); tab[1][a] holds the inverse: per key coordinate, the first query coordinate and
// the count of queries whose windows contain it. geom [6] int64: L0, L1, L2, d0, d1, d2
// (1-D and 2-D grids have leading L = 1). Every query visits exactly the keys of its window,
// so there is no masking (interior and border queries run the same loop, only the bounds
// differ) and dilation is a re-indexing: keys are read at coordinate start + j * d.
// dq is computed per query; dk and dv per key from the inverse windows, so no two threads
// write the same row and no atomics are needed.
//
// Blocked float32 kernels (head dims multiples of 16): forward_blocked and backward_blocked,
// described where they are defined. Both backward families are flash style: P is recomputed
// from the saved lse, nothing of size N^2 exists.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace {

struct Geometry {
  int64_t L[3];
  int64_t d[3];
  const int32_t* start[2][3];
  const int32_t* count[2][3];
};

Geometry make_geometry(const at::Tensor& tab, const std::vector<int64_t>& geom) {
  Geometry g;
  const int64_t lmax = tab.size(3);
  const int32_t* base = tab.data_ptr<int32_t>();
  for (int a = 0; a < 3; ++a) {
    g.L[a] = geom[a];
    g.d[a] = geom[3 + a];
    for (int dir = 0; dir < 2; ++dir) {
      g.start[dir][a] = base + ((dir * 3 + a) * 2 + 0) * lmax;
      g.count[dir][a] = base + ((dir * 3 + a) * 2 + 1) * lmax;
    }
  }
  return g;
}

// Token indices of the window (dir 0) or inverse window (dir 1) of token n.
inline int64_t window_tokens(const Geometry& g, int dir, int64_t n, int64_t* idx) {
  const int64_t x2 = n % g.L[2];
  const int64_t x1 = (n / g.L[2]) % g.L[1];
  const int64_t x0 = n / (g.L[2] * g.L[1]);
  const int64_t s0 = g.start[dir][0][x0], c0 = g.count[dir][0][x0];
  const int64_t s1 = g.start[dir][1][x1], c1 = g.count[dir][1][x1];
  const int64_t s2 = g.start[dir][2][x2], c2 = g.count[dir][2][x2];
  int64_t m = 0;
  for (int64_t j0 = 0; j0 < c0; ++j0) {
    const int64_t row0 = (s0 + j0 * g.d[0]) * g.L[1];
    for (int64_t j1 = 0; j1 < c1; ++j1) {
      const int64_t row = (row0 + s1 + j1 * g.d[1]) * g.L[2] + s2;
      for (int64_t j2 = 0; j2 < c2; ++j2) idx[m++] = row + j2 * g.d[2];
    }
  }
  return m;
}

// D > 0: the head dim is a compile-time constant (lets the compiler unroll and keep
// rows in vector registers); D == 0: runtime length n.
template <typename T, int D>
inline T dot(const T* __restrict a, const T* __restrict b, int64_t n) {
  const int64_t m = D > 0 ? D : n;
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < m; ++i) s += a[i] * b[i];
  return s;
}

template <typename T, int D>
inline void axpy(T* __restrict y, T a, const T* __restrict x, int64_t n) {
  const int64_t m = D > 0 ? D : n;
#pragma omp simd
  for (int64_t i = 0; i < m; ++i) y[i] += a * x[i];
}

template <typename T, int D>
inline void zero(T* y, int64_t n) {
  const int64_t m = D > 0 ? D : n;
  for (int64_t i = 0; i < m; ++i) y[i] = 0;
}

// Queries per parallel task: enough work to amortise scheduling, small enough
// that two threads split even a small grid evenly.
inline int64_t grain(int64_t total, int64_t per_item) {
  const int64_t g = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, per_item));
  return std::min<int64_t>(g, std::max<int64_t>(1, total / (4 * std::max(1, at::get_num_threads()))));
}

template <typename T, int DQ, int DV>
void forward_impl(const T* q, const T* k, const T* v, T* out, T* lse, int64_t B, int64_t N, int64_t Hq,
                  int64_t Hkv, int64_t dq, int64_t dv, const Geometry& g, T scale, int64_t kmax) {
  const int64_t group = Hq / Hkv;
  at::parallel_for(0, B * N, grain(B * N, kmax * Hq * (dq + dv)), [&](int64_t begin, int64_t end) {
    std::vector<int64_t> idx(kmax);
    std::vector<T> s(kmax);
    std::vector<T> acc(dv);
    for (int64_t bn = begin; bn < end; ++bn) {
      const int64_t b = bn / N, n = bn % N;
      const int64_t nk = window_tokens(g, 0, n, idx.data());
      for (int64_t h = 0; h < Hq; ++h) {
        const int64_t hk = h / group;
        const T* qp = q + (bn * Hq + h) * dq;
        const T* kb = k + (b * N * Hkv + hk) * dq;
        const T* vb = v + (b * N * Hkv + hk) * dv;
        T mx = -std::numeric_limits<T>::infinity();
        for (int64_t j = 0; j < nk; ++j) {
          const T x = dot<T, DQ>(qp, kb + idx[j] * Hkv * dq, dq) * scale;
          s[j] = x;
          mx = x > mx ? x : mx;
        }
        T sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < nk; ++j) {
          const T e = std::exp(s[j] - mx);
          s[j] = e;
          sum += e;
        }
        zero<T, DV>(acc.data(), dv);
        for (int64_t j = 0; j < nk; ++j) axpy<T, DV>(acc.data(), s[j], vb + idx[j] * Hkv * dv, dv);
        const T inv = T(1) / sum;
        T* op = out + (bn * Hq + h) * dv;
        for (int64_t i = 0; i < dv; ++i) op[i] = acc[i] * inv;
        lse[bn * Hq + h] = mx + std::log(sum);
      }
    }
  });
}

// dq_i = scale * sum_j P_ij (dO_i . v_j - delta_i) k_j, with P_ij = exp(scale q_i.k_j - lse_i).
template <typename T, int DQ, int DV>
void backward_dq_impl(const T* q, const T* k, const T* v, const T* dout, const T* lse, const T* delta, T* dqo,
                      int64_t B, int64_t N, int64_t Hq, int64_t Hkv, int64_t dq, int64_t dv, const Geometry& g,
                      T scale, int64_t kmax) {
  const int64_t group = Hq / Hkv;
  at::parallel_for(0, B * N, grain(B * N, kmax * Hq * (2 * dq + dv)), [&](int64_t begin, int64_t end) {
    std::vector<int64_t> idx(kmax);
    std::vector<T> acc(dq);
    for (int64_t bn = begin; bn < end; ++bn) {
      const int64_t b = bn / N, n = bn % N;
      const int64_t nk = window_tokens(g, 0, n, idx.data());
      for (int64_t h = 0; h < Hq; ++h) {
        const int64_t hk = h / group;
        const T* qp = q + (bn * Hq + h) * dq;
        const T* gp = dout + (bn * Hq + h) * dv;
        const T* kb = k + (b * N * Hkv + hk) * dq;
        const T* vb = v + (b * N * Hkv + hk) * dv;
        const T l = lse[bn * Hq + h], dl = delta[bn * Hq + h];
        zero<T, DQ>(acc.data(), dq);
        for (int64_t j = 0; j < nk; ++j) {
          const T* kp = kb + idx[j] * Hkv * dq;
          const T p = std::exp(dot<T, DQ>(qp, kp, dq) * scale - l);
          const T ds = p * (dot<T, DV>(gp, vb + idx[j] * Hkv * dv, dv) - dl);
          axpy<T, DQ>(acc.data(), ds, kp, dq);
        }
        T* op = dqo + (bn * Hq + h) * dq;
        for (int64_t i = 0; i < dq; ++i) op[i] = acc[i] * scale;
      }
    }
  });
}

// Per key j (and kv head): dv_j = sum_i P_ij dO_i, dk_j = scale * sum_i P_ij (dO_i . v_j - delta_i) q_i,
// over the queries i (of every query head in the GQA group) whose windows contain j.
template <typename T, int DQ, int DV>
void backward_dkv_impl(const T* q, const T* k, const T* v, const T* dout, const T* lse, const T* delta, T* dko,
                       T* dvo, int64_t B, int64_t N, int64_t Hq, int64_t Hkv, int64_t dq, int64_t dv,
                       const Geometry& g, T scale, int64_t qmax) {
  const int64_t group = Hq / Hkv;
  at::parallel_for(0, B * N, grain(B * N, qmax * Hq * (2 * dq + 2 * dv)), [&](int64_t begin, int64_t end) {
    std::vector<int64_t> idx(qmax);
    std::vector<T> acck(dq), accv(dv);
    for (int64_t bm = begin; bm < end; ++bm) {
      const int64_t b = bm / N, m = bm % N;
      const int64_t nq = window_tokens(g, 1, m, idx.data());
      for (int64_t hk = 0; hk < Hkv; ++hk) {
        const T* kp = k + (bm * Hkv + hk) * dq;
        const T* vp = v + (bm * Hkv + hk) * dv;
        zero<T, DQ>(acck.data(), dq);
        zero<T, DV>(accv.data(), dv);
        for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
          for (int64_t i = 0; i < nq; ++i) {
            const int64_t row = (b * N + idx[i]) * Hq + h;
            const T* qp = q + row * dq;
            const T* gp = dout + row * dv;
            const T p = std::exp(dot<T, DQ>(qp, kp, dq) * scale - lse[row]);
            axpy<T, DV>(accv.data(), p, gp, dv);
            const T ds = p * (dot<T, DV>(gp, vp, dv) - delta[row]);
            axpy<T, DQ>(acck.data(), ds, qp, dq);
          }
        }
        T* ko = dko + (bm * Hkv + hk) * dq;
        T* vo = dvo + (bm * Hkv + hk) * dv;
        for (int64_t i = 0; i < dq; ++i) ko[i] = acck[i] * scale;
        for (int64_t i = 0; i < dv; ++i) vo[i] = accv[i];
      }
    }
  });
}

// Calls fn.template operator()<DQ, DV>() with the head dims as constants when both are a common size.
template <typename F>
void dispatch_dims(int64_t dq, int64_t dv, F&& fn) {
  if (dq == 64 && dv == 64) return fn(std::integral_constant<int, 64>{});
  if (dq == 32 && dv == 32) return fn(std::integral_constant<int, 32>{});
  if (dq == 128 && dv == 128) return fn(std::integral_constant<int, 128>{});
  if (dq == 16 && dv == 16) return fn(std::integral_constant<int, 16>{});
  return fn(std::integral_constant<int, 0>{});
}

void check_inputs(const std::vector<at::Tensor>& ts) {
  for (const auto& t : ts) {
    TORCH_CHECK(t.is_contiguous(), "glocal cpu kernels take contiguous tensors");
    TORCH_CHECK(t.device().is_cpu(), "glocal cpu kernels take CPU tensors");
  }
}

std::vector<at::Tensor> forward(at::Tensor q, at::Tensor k, at::Tensor v, at::Tensor tab, std::vector<int64_t> geom,
                                double scale, int64_t kmax, bool nan_fill) {
  check_inputs({q, k, v, tab});
  const int64_t B = q.size(0), N = q.size(1), Hq = q.size(2), dq = q.size(3), Hkv = k.size(2), dv = v.size(3);
  auto out = at::empty({B, N, Hq, dv}, q.options());
  auto lse = at::empty({B, N, Hq}, q.options());
  if (nan_fill) {  // tests: an element the kernel fails to write stays NaN
    out.fill_(NAN);
    lse.fill_(NAN);
  }
  const Geometry g = make_geometry(tab, geom);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "glocal_na_forward", [&] {
    dispatch_dims(dq, dv, [&](auto c) {
      constexpr int D = decltype(c)::value;
      forward_impl<scalar_t, D, D>(q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                                   out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(), B, N, Hq, Hkv, dq, dv, g,
                                   static_cast<scalar_t>(scale), kmax);
    });
  });
  return {out, lse};
}

std::vector<at::Tensor> backward(at::Tensor q, at::Tensor k, at::Tensor v, at::Tensor dout, at::Tensor lse,
                                 at::Tensor delta, at::Tensor tab, std::vector<int64_t> geom, double scale,
                                 int64_t kmax, int64_t qmax, bool nan_fill) {
  check_inputs({q, k, v, dout, lse, delta, tab});
  const int64_t B = q.size(0), N = q.size(1), Hq = q.size(2), dq = q.size(3), Hkv = k.size(2), dv = v.size(3);
  auto dqo = at::empty_like(q);
  auto dko = at::empty_like(k);
  auto dvo = at::empty_like(v);
  if (nan_fill) {
    dqo.fill_(NAN);
    dko.fill_(NAN);
    dvo.fill_(NAN);
  }
  const Geometry g = make_geometry(tab, geom);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "glocal_na_backward", [&] {
    dispatch_dims(dq, dv, [&](auto c) {
      constexpr int D = decltype(c)::value;
      const auto s = static_cast<scalar_t>(scale);
      backward_dq_impl<scalar_t, D, D>(q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                                       dout.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(),
                                       delta.data_ptr<scalar_t>(), dqo.data_ptr<scalar_t>(), B, N, Hq, Hkv, dq, dv,
                                       g, s, kmax);
      backward_dkv_impl<scalar_t, D, D>(q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                                        dout.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(),
                                        delta.data_ptr<scalar_t>(), dko.data_ptr<scalar_t>(),
                                        dvo.data_ptr<scalar_t>(), B, N, Hq, Hkv, dq, dv, g, s, qmax);
    });
  });
  return {dqo, dko, dvo};
}


// ---------------------------------------------------------------------------------------------
// Blocked float32 forward for head dims that are multiples of 16.
//
// Tokens are addressed in dilation-group order ("permuted" coordinates: per axis, the members
// of group 0, then group 1, ...), where every window is a contiguous run on every axis. A block
// is QB consecutive queries along the last permuted axis (one row, one dilation group); they
// share their key rows on the leading axes, and on the last axis the union of their runs is
// one contiguous span of W keys. K is copied once, transposed and in permuted order
// (kt[d][token]), so 16 consecutive keys of the span are one vector: the scores of QB queries
// against 16 keys take D vector loads and QB·D fused multiply-adds with a broadcast query
// element, with no horizontal sums. Each query then takes the softmax over its own part of the
// span (a per-query column range, identical on every row, so rows need no mask), and
// out = P·V runs 16 output columns at a time over the span's keys.
// QB is 8 when the last axis's kernel is at most 9 (the span fits one vector), else 16.

typedef float v16f __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));

inline v16f vload(const float* p) { return *reinterpret_cast<const v16u*>(p); }
inline void vstore(float* p, v16f x) { *reinterpret_cast<v16u*>(p) = x; }

// Runs fn(begin, end) over [0, n) in pieces of `piece` items, handed out from a shared counter:
// on a busy machine a descheduled thread then delays only its current piece, not a fixed half.
template <typename F>
void dynamic_for(int64_t n, int64_t piece, const F& fn) {
  std::atomic<int64_t> next{0};
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (n + piece - 1) / piece));
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (;;) {
      const int64_t begin = next.fetch_add(piece);
      if (begin >= n) break;
      fn(begin, std::min(n, begin + piece));
    }
  });
}

struct BlockGeometry {
  int64_t L[3];
  const int32_t* kstart[3];  // per permuted query coordinate: first key (permuted) of its run
  const int32_t* kcount[3];
  const int64_t* orig;       // permuted flat token -> original flat token
  const int32_t* bstart;     // blocks along the last permuted axis
  const int32_t* bcount;
  int64_t nblocks;
  // Work order: blocks are grouped in strips of bps consecutive blocks (about 64 tokens of the
  // last axis); a strip is swept over all rows of the middle axis before the next strip, so the
  // K and V rows a thread touches stay in its L2 cache even on wide grids.
  int64_t bps = 1, nstrips = 1;

  void set_strips(int64_t qb) {
    bps = std::max<int64_t>(1, 64 / qb);
    nstrips = (nblocks + bps - 1) / bps;
  }

  // item -> (block, middle-axis row, first-axis row, batch); false for the padding of the last strip
  bool decode(int64_t item, int64_t& blk, int64_t& p1, int64_t& p0, int64_t& b) const {
    const int64_t j = item % bps;
    p1 = (item / bps) % L[1];
    const int64_t strip = (item / (bps * L[1])) % nstrips;
    p0 = (item / (bps * L[1] * nstrips)) % L[0];
    b = item / (bps * L[1] * nstrips * L[0]);
    blk = strip * bps + j;
    return blk < nblocks;
  }

  // The keys of block blk (at rows p0, p1 of the leading axes, batch b): one span of W keys on
  // the last axis for each of the R key rows of the leading axes. Fills rows[r] (permuted flat
  // token of the span start), token_rows[r] (its row in the [B, N, Hkv, D] inputs; keys of a
  // dilation group are d2 tokens apart), and per lane the query token and its [lo, hi) inside
  // the span. Padding lanes repeat the last query; with empty_padding their range is empty (the
  // backward: they must add nothing to dk and dv). Returns R.
  int64_t block_keys(int64_t blk, int64_t p0, int64_t p1, int64_t b, int64_t N, int64_t Hkv, int qb,
                     bool empty_padding, int64_t* rows, int64_t* token_rows, int64_t* qtok, float* lo,
                     float* hi, int64_t& W) const {
    const int64_t first = bstart[blk], nq = bcount[blk];
    const int64_t u0 = kstart[2][first];
    W = kstart[2][first + nq - 1] + kcount[2][first + nq - 1] - u0;
    int64_t R = 0;
    for (int64_t j0 = 0; j0 < kcount[0][p0]; ++j0)
      for (int64_t j1 = 0; j1 < kcount[1][p1]; ++j1) {
        rows[R] = ((kstart[0][p0] + j0) * L[1] + kstart[1][p1] + j1) * L[2] + u0;
        token_rows[R] = (b * N + orig[rows[R]]) * Hkv;
        ++R;
      }
    for (int i = 0; i < qb; ++i) {
      const int64_t p2 = first + (i < nq ? i : nq - 1);
      qtok[i] = orig[(p0 * L[1] + p1) * L[2] + p2];
      lo[i] = static_cast<float>(kstart[2][p2] - u0);
      hi[i] = (i < nq || !empty_padding) ? lo[i] + static_cast<float>(kcount[2][p2]) : lo[i];
    }
    return R;
  }
};

typedef int32_t v16i __attribute__((vector_size(64)));

// exp on 16 lanes: 2^n · p(r) with n = round(x / ln 2), r = x - n ln 2 split in two parts for
// accuracy, p a degree-6 Taylor polynomial (relative error < 2e-7 on |r| <= ln2 / 2).
// Inputs below -87 give 0 (exp underflows there anyway), so -inf lanes are exact zeros.
inline v16f vexp(v16f x) {
  const v16f lo = x < -87.0f ? v16f{} + 1.0f : v16f{};
  x = x < -87.0f ? v16f{} - 87.0f : x;
  x = x > 88.0f ? v16f{} + 88.0f : x;
  const v16f magic = v16f{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const v16f n = (x * 1.44269504088896341f + magic) - magic;
  const v16f r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  v16f p = v16f{} + (1.0f / 720);
  p = p * r + (1.0f / 120);
  p = p * r + (1.0f / 24);
  p = p * r + (1.0f / 6);
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const v16i bits = (__builtin_convertvector(n, v16i) + 127) << 23;
  const v16f scale2n = reinterpret_cast<const v16f&>(bits);
  const v16f e = p * scale2n;
  return lo != 0 ? v16f{} : e;
}

inline float hmax(v16f x) {
  float m = x[0];
  for (int i = 1; i < 16; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

inline float hsum(v16f x) {
  float s = 0;
  for (int i = 0; i < 16; ++i) s += x[i];
  return s;
}

// The rows of a block's QB tokens (each `width` contiguous floats, all heads), transposed so that
// dst[c * QB + i] = scale * rows[qtok[i]][c]: the block's queries side by side for the vector loops.
template <int QB>
inline void pack_block(const float* rows, const int64_t* qtok, int64_t width, float scale, float* dst) {
  for (int i = 0; i < QB; ++i) {
    const float* src = rows + qtok[i] * width;
    for (int64_t c = 0; c < width; ++c) dst[c * QB + i] = src[c] * scale;
  }
}

template <int QB>
void forward_blocked_impl(const float* q, const float* kt, const float* v, float* out, float* lse, int64_t B,
                          int64_t N, int64_t npad, int64_t Hq, int64_t Hkv, int64_t dq, int64_t dv,
                          const BlockGeometry& g, float scale, int64_t rmax, int64_t wmax, int64_t d2) {
  const int64_t group = Hq / Hkv;
  const int64_t L1 = g.L[1];
  const int64_t items = B * g.L[0] * g.nstrips * L1 * g.bps;
  const int64_t wpad = (wmax + 15) / 16 * 16;
  const float ninf = -std::numeric_limits<float>::infinity();
  v16f lane;
  for (int i = 0; i < 16; ++i) lane[i] = static_cast<float>(i);
  dynamic_for(items, std::max<int64_t>(1, items / (16 * std::max(1, at::get_num_threads()))), [&](int64_t begin, int64_t end) {
    std::vector<float> S(static_cast<size_t>(QB) * rmax * wpad);   // scores S[i][r][w]
    std::vector<float> P(static_cast<size_t>(QB) * rmax * wpad);   // probabilities P[r][w][i]
    std::vector<float> qblk(static_cast<size_t>(QB) * Hq * dq);    // queries packed qblk[h][d][i]
    std::vector<int64_t> rows(rmax), vrow(rmax);
    for (int64_t item = begin; item < end; ++item) {
      int64_t blk, p1, p0, b;
      if (!g.decode(item, blk, p1, p0, b)) continue;
      int64_t qtok[QB], W;
      float lo[QB], hi[QB];
      const int64_t R = g.block_keys(blk, p0, p1, b, N, Hkv, QB, false, rows.data(), vrow.data(), qtok, lo, hi, W);
      const int64_t nq = g.bcount[blk], nchunk = (W + 15) / 16;
      // pack the block's queries of every head, reading each token's heads as one contiguous row
      pack_block<QB>(q + b * N * Hq * dq, qtok, Hq * dq, scale, qblk.data());
      for (int64_t h = 0; h < Hq; ++h) {
        const int64_t hk = h / group;
        const float* ktb = kt + (b * Hkv + hk) * dq * npad;
        for (int64_t r = 0; r < R; ++r) {
          for (int64_t c = 0; c < nchunk; ++c) {
            v16f acc[QB];
#pragma GCC unroll 16
            for (int i = 0; i < QB; ++i) acc[i] = v16f{};
            const float* kp = ktb + rows[r] + c * 16;
            const float* qd = qblk.data() + h * dq * QB;
            for (int64_t d = 0; d < dq; ++d, qd += QB) {
              const v16f kv = vload(kp + d * npad);
#pragma GCC unroll 16
              for (int i = 0; i < QB; ++i) acc[i] += qd[i] * kv;
            }
#pragma GCC unroll 16
            for (int i = 0; i < QB; ++i) vstore(&S[(i * rmax + r) * wpad + c * 16], acc[i]);
          }
        }
        // softmax per query over its columns [lo, hi) of every row; other columns get P = 0
        float inv[QB];
        for (int i = 0; i < QB; ++i) {
          v16f vmax = v16f{} + ninf;
          for (int64_t r = 0; r < R; ++r)
            for (int64_t c = 0; c < nchunk; ++c) {
              const v16f w = lane + static_cast<float>(c * 16);
              const v16f x = vload(&S[(i * rmax + r) * wpad + c * 16]);
              const v16f m = (w >= lo[i] && w < hi[i]) ? x : v16f{} + ninf;
              vmax = m > vmax ? m : vmax;
            }
          const float mx = hmax(vmax);
          v16f vsum = v16f{};
          for (int64_t r = 0; r < R; ++r)
            for (int64_t c = 0; c < nchunk; ++c) {
              const v16f w = lane + static_cast<float>(c * 16);
              const v16f x = vload(&S[(i * rmax + r) * wpad + c * 16]);
              const v16f e = (w >= lo[i] && w < hi[i]) ? vexp(x - mx) : v16f{};
              vsum += e;
              float* pt = &P[((r * wpad) + c * 16) * QB + i];
              for (int l = 0; l < 16; ++l) pt[l * QB] = e[l];
            }
          const float sum = hsum(vsum);
          inv[i] = 1.0f / sum;
          if (i < nq) lse[(b * N + qtok[i]) * Hq + h] = mx + std::log(sum);
        }
        // out = P V, 16 output columns at a time
        const int64_t vstep = d2 * Hkv * dv;
        for (int64_t c = 0; c < dv; c += 16) {
          v16f acc[QB];
#pragma GCC unroll 16
          for (int i = 0; i < QB; ++i) acc[i] = v16f{};
          for (int64_t r = 0; r < R; ++r) {
            const float* vp = v + (vrow[r] + hk) * dv + c;
            const float* pr = &P[r * wpad * QB];
            for (int64_t w = 0; w < W; ++w, vp += vstep, pr += QB) {
              const v16f vv = vload(vp);
#pragma GCC unroll 16
              for (int i = 0; i < QB; ++i) acc[i] += pr[i] * vv;
            }
          }
          for (int i = 0; i < nq; ++i) vstore(out + ((b * N + qtok[i]) * Hq + h) * dv + c, acc[i] * inv[i]);
        }
      }
    }
  });
}

// A fresh large buffer costs a page fault per 4 KiB page on first touch, which on a VM takes
// as long as the attention itself at 256x256 tokens. Buffers of 8 MiB and more are therefore
// placed on a 2 MiB boundary and marked for transparent huge pages (512x fewer faults); the
// returned tensor is a view of a slightly larger allocation.
at::Tensor big_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t n = 1;
  for (auto x : sizes) n *= x;
  const int64_t elem = static_cast<int64_t>(c10::elementSize(c10::typeMetaToScalarType(options.dtype())));
  const int64_t huge = 1 << 21;
  if (n * elem < 4 * huge) return at::empty(sizes, options);
#ifdef __linux__
  auto flat = at::empty({n + huge / elem}, options);
  const auto base = reinterpret_cast<uintptr_t>(flat.data_ptr());
  const auto aligned = (base + huge - 1) & ~static_cast<uintptr_t>(huge - 1);
  madvise(reinterpret_cast<void*>(aligned), static_cast<size_t>(n * elem / huge * huge), MADV_HUGEPAGE);
  return flat.narrow(0, static_cast<int64_t>(aligned - base) / elem, n).view(sizes);
#else
  return at::empty(sizes, options);
#endif
}

// kt[b][hk][d][p] = k[b][orig[p]][hk][d], padded by 16 tokens so a vector load may run past the end.
at::Tensor transpose_keys(const at::Tensor& k, const int64_t* orig, int64_t npad) {
  const int64_t B = k.size(0), N = k.size(1), Hkv = k.size(2), D = k.size(3);
  auto kt = big_empty({B, Hkv, D, npad}, k.options());
  kt.narrow(3, N, npad - N).zero_();  // vector loads may run into the padding: keep it finite
  const float* src = k.data_ptr<float>();
  float* dst = kt.data_ptr<float>();
  const int64_t tiles = (N + 15) / 16;
  at::parallel_for(0, B * Hkv * tiles, 16, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item % tiles, bh = item / tiles, b = bh / Hkv, hk = bh % Hkv;
      // 16 tokens at a time, so every store of a head-dim row is one contiguous 64-byte line
      const int64_t p0 = t * 16, np = std::min<int64_t>(16, N - p0);
      const float* rows[16];
      for (int64_t j = 0; j < np; ++j) rows[j] = src + ((b * N + orig[p0 + j]) * Hkv + hk) * D;
      float* col = dst + bh * D * npad + p0;
      for (int64_t d = 0; d < D; ++d, col += npad)
        for (int64_t j = 0; j < np; ++j) col[j] = rows[j][d];
    }
  });
  return kt;
}

// Blocked float32 backward: the forward's blocks, recomputing P from the saved lse.
// Per block and head: S = Q K^T and dP = dO V^T with the transposed copies kt, vt (same
// kernel as the forward's scores), then dS = P (dP - delta) on each query's own columns,
// dq = scale · dS K (written once: a query belongs to one block), and dk += scale · dS^T Q,
// dv += P^T dO scattered to the block's keys. Blocks near each other share keys, so blocks run
// in phases (below) in which no two threads write the same key: no atomics, no per-thread copies.
template <int QB>
void backward_blocked_impl(const float* q, const float* k, const float* v, const float* kt, const float* vt,
                           const float* dout, const float* lse, const float* delta, float* dqo, float* dko,
                           float* dvo, int64_t B, int64_t N, int64_t npad, int64_t Hq,
                           int64_t Hkv, int64_t dq, int64_t dv, const BlockGeometry& g, float scale, int64_t rmax,
                           int64_t wmax, int64_t d2) {
  const int64_t group = Hq / Hkv;
  const int64_t L1 = g.L[1], L2 = g.L[2];
  const int64_t items = B * g.L[0] * g.nstrips * L1 * g.bps;
  const int64_t wpad = (wmax + 15) / 16 * 16;
  v16f lane;
  for (int i = 0; i < 16; ++i) lane[i] = static_cast<float>(i);
  auto process = [&](int64_t begin, int64_t end) {
    float* dkt = dko;
    float* dvt = dvo;
    std::vector<float> S(static_cast<size_t>(QB) * rmax * wpad), DP(S.size());
    std::vector<float> PT(S.size()), DST(S.size());  // [r][w][i]
    std::vector<float> qblk(static_cast<size_t>(QB) * Hq * dq), gblk(static_cast<size_t>(QB) * Hq * dv);
    std::vector<int64_t> rows(rmax), krow(rmax);
    for (int64_t item = begin; item < end; ++item) {
      int64_t blk, p1, p0, b;
      if (!g.decode(item, blk, p1, p0, b)) continue;
      int64_t qtok[QB], W;
      float lo[QB], hi[QB];
      const int64_t R = g.block_keys(blk, p0, p1, b, N, Hkv, QB, true, rows.data(), krow.data(), qtok, lo, hi, W);
      const int64_t nq = g.bcount[blk], nchunk = (W + 15) / 16;
      pack_block<QB>(q + b * N * Hq * dq, qtok, Hq * dq, scale, qblk.data());
      pack_block<QB>(dout + b * N * Hq * dv, qtok, Hq * dv, 1.0f, gblk.data());
      for (int64_t h = 0; h < Hq; ++h) {
        const int64_t hk = h / group;
        // S = (scale Q) K^T and dP = dO V^T, both [i][r][w]
        for (int pass = 0; pass < 2; ++pass) {
          const int64_t dd = pass == 0 ? dq : dv;
          const float* tb = pass == 0 ? kt + (b * Hkv + hk) * dq * npad : vt + (b * Hkv + hk) * dv * npad;
          const float* pk = pass == 0 ? qblk.data() + h * dq * QB : gblk.data() + h * dv * QB;
          float* dst = pass == 0 ? S.data() : DP.data();
          for (int64_t r = 0; r < R; ++r) {
            for (int64_t c = 0; c < nchunk; ++c) {
              v16f acc[QB];
#pragma GCC unroll 16
              for (int i = 0; i < QB; ++i) acc[i] = v16f{};
              const float* kp = tb + rows[r] + c * 16;
              const float* qd = pk;
              for (int64_t d = 0; d < dd; ++d, qd += QB) {
                const v16f kv = vload(kp + d * npad);
#pragma GCC unroll 16
                for (int i = 0; i < QB; ++i) acc[i] += qd[i] * kv;
              }
#pragma GCC unroll 16
              for (int i = 0; i < QB; ++i) vstore(&dst[(i * rmax + r) * wpad + c * 16], acc[i]);
            }
          }
        }
        // P = exp(S - lse), dS = scale · P (dP - delta) on each query's columns, stored [r][w][i]
        for (int i = 0; i < QB; ++i) {
          const int64_t row = (b * N + qtok[i]) * Hq + h;
          const float l = lse[row], dl = delta[row];
          for (int64_t r = 0; r < R; ++r)
            for (int64_t c = 0; c < nchunk; ++c) {
              const v16f w = lane + static_cast<float>(c * 16);
              const v16f x = vload(&S[(i * rmax + r) * wpad + c * 16]);
              const v16f dp = vload(&DP[(i * rmax + r) * wpad + c * 16]);
              const v16f pv = (w >= lo[i] && w < hi[i]) ? vexp(x - l) : v16f{};
              const v16f ds = pv * (dp - dl) * scale;
              float* pt = &PT[((r * wpad) + c * 16) * QB + i];
              float* st = &DST[((r * wpad) + c * 16) * QB + i];
              for (int lz = 0; lz < 16; ++lz) {
                pt[lz * QB] = pv[lz];
                st[lz * QB] = ds[lz];
              }
            }
        }
        const int64_t kstep = d2 * Hkv * dq, vstep = d2 * Hkv * dv;
        // dq_i = sum over keys of dS K
        for (int64_t c = 0; c < dq; c += 16) {
          v16f acc[QB];
#pragma GCC unroll 16
          for (int i = 0; i < QB; ++i) acc[i] = v16f{};
          for (int64_t r = 0; r < R; ++r) {
            const float* kp = k + (krow[r] + hk) * dq + c;
            const float* sr = &DST[r * wpad * QB];
            for (int64_t w = 0; w < W; ++w, kp += kstep, sr += QB) {
              const v16f kv = vload(kp);
#pragma GCC unroll 16
              for (int i = 0; i < QB; ++i) acc[i] += sr[i] * kv;
            }
          }
          for (int i = 0; i < nq; ++i) vstore(dqo + ((b * N + qtok[i]) * Hq + h) * dq + c, acc[i]);
        }
        // dk_key += sum_i dS q_i, dv_key += sum_i P dO_i, into this thread's buffers
        for (int pass = 0; pass < 2; ++pass) {
          const int64_t dd = pass == 0 ? dq : dv;
          const int64_t step = pass == 0 ? kstep : vstep;
          const float* src = pass == 0 ? q : dout;
          const float* coef = pass == 0 ? DST.data() : PT.data();
          float* acc_buf = pass == 0 ? dkt : dvt;
          for (int64_t c = 0; c < dd; c += 16) {
            v16f rowv[QB];
            for (int i = 0; i < QB; ++i) rowv[i] = vload(src + ((b * N + qtok[i]) * Hq + h) * dd + c);
            for (int64_t r = 0; r < R; ++r) {
              float* out_row = acc_buf + (krow[r] + hk) * dd + c;
              const float* cr = coef + r * wpad * QB;
              for (int64_t w = 0; w < W; ++w, out_row += step, cr += QB) {
                v16f a0 = v16f{}, a1 = v16f{};
#pragma GCC unroll 16
                for (int i = 0; i < QB; i += 2) {
                  a0 += cr[i] * rowv[i];
                  a1 += cr[i + 1] * rowv[i + 1];
                }
                vstore(out_row, vload(out_row) + a0 + a1);
              }
            }
          }
        }
      }
    }
  };

  // Phases instead of atomics: the items are cut into C chunks in order; chunk c writes keys in
  // [lo_c, hi_c). Chunks c and c + P for the smallest P that keeps every such pair disjoint run
  // in the same phase, in parallel; phases run one after another.
  auto span = [&](int64_t item, int64_t& lo, int64_t& hi) -> bool {
    int64_t blk, p1, p0, b;
    if (!g.decode(item, blk, p1, p0, b)) return false;
    const int64_t first = g.bstart[blk], nq = g.bcount[blk];
    const int64_t u0 = g.kstart[2][first];
    const int64_t u1 = g.kstart[2][first + nq - 1] + g.kcount[2][first + nq - 1];
    const int64_t e0 = g.kstart[0][p0] + g.kcount[0][p0] - 1, e1 = g.kstart[1][p1] + g.kcount[1][p1] - 1;
    lo = b * N + (static_cast<int64_t>(g.kstart[0][p0]) * L1 + g.kstart[1][p1]) * L2 + u0;
    hi = b * N + (e0 * L1 + e1) * L2 + u1;
    return true;
  };
  // Every phase ends in a barrier, so the chunk count C is the one (of 16T, 8T, 4T, 2T) that
  // needs the fewest phases; within a phase chunks are handed out dynamically.
  const int64_t T = std::max(1, at::get_num_threads());
  std::vector<int64_t> item_lo(items), item_hi(items);
  std::vector<char> item_ok(items);
  for (int64_t item = 0; item < items; ++item) item_ok[item] = span(item, item_lo[item], item_hi[item]);
  int64_t bestC = 1, bestP = 1;
  std::vector<int64_t> cb;
  for (int64_t mult : {16, 8, 4, 2}) {
    const int64_t C = std::max<int64_t>(1, std::min<int64_t>(items, mult * T));
    std::vector<int64_t> lo(C, std::numeric_limits<int64_t>::max()), hi(C, std::numeric_limits<int64_t>::min());
    for (int64_t c = 0; c < C; ++c)
      for (int64_t item = items * c / C; item < items * (c + 1) / C; ++item)
        if (item_ok[item]) {
          lo[c] = std::min(lo[c], item_lo[item]);
          hi[c] = std::max(hi[c], item_hi[item]);
        }
    int64_t P = 1;
    for (;; ++P) {
      bool ok = true;
      for (int64_t c = 0; c < C && ok; ++c)
        for (int64_t c2 = c + P; c2 < C && ok; c2 += P) ok = !(lo[c] < hi[c2] && lo[c2] < hi[c]);
      if (ok || P >= C) break;
    }
    if (cb.empty() || P < bestP) {
      bestC = C;
      bestP = P;
      cb.assign(C + 1, 0);
      for (int64_t c = 0; c <= C; ++c) cb[c] = items * c / C;
    }
  }
  for (int64_t phase = 0; phase < bestP; ++phase) {
    const int64_t n = (bestC - phase + bestP - 1) / bestP;
    dynamic_for(n, 1, [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) process(cb[phase + j * bestP], cb[phase + j * bestP + 1]);
    });
  }
}

std::vector<at::Tensor> backward_blocked(at::Tensor q, at::Tensor k, at::Tensor v, at::Tensor dout, at::Tensor lse,
                                         at::Tensor delta, at::Tensor ptab, at::Tensor orig, at::Tensor blocks,
                                         std::vector<int64_t> lengths, double scale, int64_t qb, int64_t rmax,
                                         int64_t wmax, bool nan_fill) {
  check_inputs({q, k, v, dout, lse, delta, ptab, orig, blocks});
  TORCH_CHECK(q.scalar_type() == at::kFloat, "backward_blocked takes float32");
  const int64_t B = q.size(0), N = q.size(1), Hq = q.size(2), dq = q.size(3), Hkv = k.size(2), dv = v.size(3);
  TORCH_CHECK(dq % 16 == 0 && dv % 16 == 0, "backward_blocked takes head dims that are multiples of 16");
  auto dqo = big_empty(q.sizes(), q.options());
  if (nan_fill) dqo.fill_(NAN);
  BlockGeometry g;
  const int64_t lmax = ptab.size(2);
  const int32_t* tb = ptab.data_ptr<int32_t>();
  for (int a = 0; a < 3; ++a) {
    g.L[a] = lengths[a];
    g.kstart[a] = tb + (a * 2 + 0) * lmax;
    g.kcount[a] = tb + (a * 2 + 1) * lmax;
  }
  g.orig = orig.data_ptr<int64_t>();
  g.nblocks = blocks.size(1);
  g.bstart = blocks.data_ptr<int32_t>();
  g.bcount = g.bstart + g.nblocks;
  g.bps = g.nblocks;  // row-major work order: each chunk's keys stay in a narrow band
  g.nstrips = 1;
  const int64_t npad = N + 16;
  auto kt = transpose_keys(k, g.orig, npad);
  auto vt = transpose_keys(v, g.orig, npad);
  auto dko = big_empty(k.sizes(), k.options()).zero_();
  auto dvo = big_empty(v.sizes(), v.options()).zero_();
  const auto s = static_cast<float>(scale);
#define GLOCAL_BWD(QBV)                                                                                         \
  backward_blocked_impl<QBV>(q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(), kt.data_ptr<float>(), \
                             vt.data_ptr<float>(), dout.data_ptr<float>(), lse.data_ptr<float>(),                 \
                             delta.data_ptr<float>(), dqo.data_ptr<float>(), dko.data_ptr<float>(),               \
                             dvo.data_ptr<float>(), B, N, npad, Hq, Hkv, dq, dv, g, s, rmax, wmax, lengths[3])
  if (qb == 16) {
    GLOCAL_BWD(16);
  } else {
    TORCH_CHECK(qb == 8, "backward_blocked takes blocks of 8 or 16 queries");
    GLOCAL_BWD(8);
  }
#undef GLOCAL_BWD
  return {dqo, dko, dvo};
}

std::vector<at::Tensor> forward_blocked(at::Tensor q, at::Tensor k, at::Tensor v, at::Tensor ptab, at::Tensor orig,
                                        at::Tensor blocks, std::vector<int64_t> lengths, double scale, int64_t qb,  // lengths: L0, L1, L2, d2
                                        int64_t rmax, int64_t wmax, bool nan_fill) {
  check_inputs({q, k, v, ptab, orig, blocks});
  TORCH_CHECK(q.scalar_type() == at::kFloat, "forward_blocked takes float32");
  const int64_t B = q.size(0), N = q.size(1), Hq = q.size(2), dq = q.size(3), Hkv = k.size(2), dv = v.size(3);
  TORCH_CHECK(dq % 16 == 0 && dv % 16 == 0, "forward_blocked takes head dims that are multiples of 16");
  auto out = big_empty({B, N, Hq, dv}, q.options());
  if (nan_fill) out.fill_(NAN);
  auto lse = nan_fill ? at::full({B, N, Hq}, NAN, q.options()) : at::empty({B, N, Hq}, q.options());
  BlockGeometry g;
  const int64_t lmax = ptab.size(2);
  const int32_t* tb = ptab.data_ptr<int32_t>();
  for (int a = 0; a < 3; ++a) {
    g.L[a] = lengths[a];
    g.kstart[a] = tb + (a * 2 + 0) * lmax;
    g.kcount[a] = tb + (a * 2 + 1) * lmax;
  }
  g.orig = orig.data_ptr<int64_t>();
  g.nblocks = blocks.size(1);
  g.bstart = blocks.data_ptr<int32_t>();
  g.bcount = g.bstart + g.nblocks;
  g.set_strips(qb);
  const int64_t npad = N + 16;
  auto kt = transpose_keys(k, g.orig, npad);
  const auto s = static_cast<float>(scale);
  if (qb == 16) {
    forward_blocked_impl<16>(q.data_ptr<float>(), kt.data_ptr<float>(), v.data_ptr<float>(), out.data_ptr<float>(),
                             lse.data_ptr<float>(), B, N, npad, Hq, Hkv, dq, dv, g, s, rmax, wmax, lengths[3]);
  } else {
    TORCH_CHECK(qb == 8, "forward_blocked takes blocks of 8 or 16 queries");
    forward_blocked_impl<8>(q.data_ptr<float>(), kt.data_ptr<float>(), v.data_ptr<float>(), out.data_ptr<float>(),
                            lse.data_ptr<float>(), B, N, npad, Hq, Hkv, dq, dv, g, s, rmax, wmax, lengths[3]);
  }
  return {out, lse};
}

}  // namespace

// Defined in block_sparse.cpp (one extension, several sources).
std::vector<at::Tensor> moba_decode(at::Tensor q, at::Tensor k, at::Tensor v, at::Tensor selection,
                                    int64_t block_size, double scale, bool causal, bool nan_fill);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("moba_decode", &moba_decode, "block-routed attention of a few query rows over a cache: (out, lse)");
  m.def("forward", &forward, "neighborhood attention forward: (out, lse)");
  m.def("forward_blocked", &forward_blocked, "blocked float32 forward: (out, lse)");
  m.def("backward_blocked", &backward_blocked, "blocked float32 backward: (dq, dk, dv)");
  m.def("backward", &backward, "neighborhood attention backward: (dq, dk, dv)");
}
