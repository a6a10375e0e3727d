// Block-routed attention (MoBA) for a few query rows over a long key cache: decoding.
//
// Each query row (batch b, kv head hk) attends the keys of its selected blocks, read in place from
// the cache through its strides (nothing of the cache is copied or converted): per block one pass
// of dot products into a score buffer, then an online-softmax update of (max, sum, acc). Rows run
// in parallel (ATen's thread pool); a row's work is count * block_size * (D + D_v) multiply-adds.
// The result is exactly the contract of glocal.backends.reference.block_sparse for those rows.
//
// Inputs (float32): q [B, T_q, H_q, D] (contiguous), k [B, T, H_kv, D] and v [B, T, H_kv, D_v] (any
// strides with a unit stride on the last axis), selection [B, H_q, T_q, n_blocks] bool (contiguous).
// Query t sits at position T - T_q + t; causal rows attend keys up to it. Row r = (b * T_q + t) * H_q
// + h reads kv head h / (H_q / H_kv). Returns (out [R, D_v], lse [R]); a row that attends nothing
// gets out 0 and lse -inf.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

inline float dot(const float* a, const float* b, int64_t n) {
  // Sixteen independent partial sums: the compiler keeps them in one vector register.
  float part[16] = {0.f};
  int64_t d = 0;
  for (; d + 16 <= n; d += 16) {
    for (int i = 0; i < 16; ++i) part[i] += a[d + i] * b[d + i];
  }
  float total = 0.f;
  for (int i = 0; i < 16; ++i) total += part[i];
  for (; d < n; ++d) total += a[d] * b[d];
  return total;
}

constexpr int64_t kAhead = 24;  // rows fetched ahead of the one being read

inline void prefetch_row(const float* row, int64_t n) {
  for (int64_t d = 0; d < n; d += 16) __builtin_prefetch(row + d, 0, 1);
}

}  // namespace

std::vector<at::Tensor> moba_decode(at::Tensor q, at::Tensor k, at::Tensor v, at::Tensor selection,
                                    int64_t block_size, double scale, bool causal, bool nan_fill) {
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat,
              "moba_decode takes float32 tensors");
  TORCH_CHECK(selection.scalar_type() == at::kBool, "moba_decode takes a bool selection");
  TORCH_CHECK(q.is_contiguous() && selection.is_contiguous(), "moba_decode takes contiguous q and selection");
  TORCH_CHECK(k.stride(3) == 1 && v.stride(3) == 1, "moba_decode takes k and v with a unit last stride");
  const int64_t Tq = q.size(1), Hq = q.size(2), D = q.size(3), R = q.size(0) * Tq * Hq;
  const int64_t T = k.size(1), group = Hq / k.size(2), Dv = v.size(3), nb = selection.size(3);
  auto out = at::empty({R, Dv}, q.options());
  auto lse = at::empty({R}, q.options());
  if (nan_fill) {
    out.fill_(NAN);
    lse.fill_(NAN);
  }
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  const bool* sp = selection.data_ptr<bool>();
  float* op = out.data_ptr<float>();
  float* lp = lse.data_ptr<float>();
  const int64_t ks0 = k.stride(0), ks1 = k.stride(1), ks2 = k.stride(2);
  const int64_t vs0 = v.stride(0), vs1 = v.stride(1), vs2 = v.stride(2);
  const float s = static_cast<float>(scale);
  const float inf = std::numeric_limits<float>::infinity();
  at::parallel_for(0, R, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(block_size), acc(Dv);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t h = r % Hq, t = (r / Hq) % Tq, b = r / (Hq * Tq), hk = h / group;
      const int64_t limit = causal ? T - Tq + t + 1 : T;
      const bool* picked = sp + ((b * Hq + h) * Tq + t) * nb;
      const float* qr = qp + r * D;
      const float* kb = kp + b * ks0 + hk * ks2;
      const float* vb = vp + b * vs0 + hk * vs2;
      float m = -inf, l = 0.f;
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t j = 0; j < nb; ++j) {
        if (!picked[j]) continue;
        const int64_t start = j * block_size, stop = std::min(start + block_size, limit);
        if (stop <= start) continue;
        float top = -inf;
        for (int64_t y = start; y < stop; ++y) {
          // The rows of one head are H_kv * D apart in a heads-last cache: the hardware prefetcher loses
          // them at every page, so fetch a few rows ahead.
          prefetch_row(kb + (y + kAhead) * ks1, D);
          const float x = dot(qr, kb + y * ks1, D) * s;
          scores[y - start] = x;
          top = std::max(top, x);
        }
        const float m_new = std::max(m, top);
        const float alpha = std::exp(m - m_new);  // m = -inf: exp(-inf) = 0, acc and l are 0 anyway
        l *= alpha;
        for (int64_t e = 0; e < Dv; ++e) acc[e] *= alpha;
        for (int64_t y = start; y < stop; ++y) {
          const float p = std::exp(scores[y - start] - m_new);
          l += p;
          prefetch_row(vb + (y + kAhead) * vs1, Dv);
          const float* vr = vb + y * vs1;
          for (int64_t e = 0; e < Dv; ++e) acc[e] += p * vr[e];
        }
        m = m_new;
      }
      float* orow = op + r * Dv;
      if (l > 0.f) {
        for (int64_t e = 0; e < Dv; ++e) orow[e] = acc[e] / l;
        lp[r] = m + std::log(l);
      } else {
        for (int64_t e = 0; e < Dv; ++e) orow[e] = 0.f;
        lp[r] = -inf;
      }
    }
  });
  return {out, lse};
}
