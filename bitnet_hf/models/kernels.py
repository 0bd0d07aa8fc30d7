"""Fast CPU kernels for packed BitNet linears, JIT-compiled on first use, with a correct fallback everywhere.

Kernels (``BITNET_HF_KERNEL`` forces one; ``auto``, the default, takes the first that works here):

* ``vnni``: AVX-512 VNNI (``vpdpbusd``) ternary matmul straight on transformers' 2-bit layout. Each byte of the
  packed matrix holds rows ``r, r + R, r + 2R, r + 3R`` of one column (``R = ceil(out / 4)``), so one 64-byte load
  unpacks (two shifts and a mask) into 64 columns of 4 output rows, multiplied with 64 int8 activations. The 2-bit
  code is ``w + 1`` in {0, 1, 2}, an unsigned byte, exactly what ``vpdpbusd`` wants: ``sum((w + 1) x) - sum(x)`` is
  the ternary dot product. No repacking, no extra memory: the file layout is the kernel layout.
* ``avx2``: the same with ``vpmaddubsw`` / ``vpmaddwd`` on 32 columns.

  Both are matrix-vector loops, best for decoding (one to a few rows of ``x``). From 128 rows on (prefill,
  batches) they instead unpack the weight to int8 a 4 MB chunk at a time and multiply with oneDNN's int8 GEMM
  (``torch._int_mm``), which reuses each weight load across many rows: 0.6-1.06x the time of bf16 ``F.linear`` at
  128-2048 rows here (``benchmarks/many_rows.py``).
* ``int4pack``: no compiler needed: the ternary weights stored exactly as int4 (2x the packed size) through
  PyTorch's ``_weight_int4pack_mm_for_cpu``, fed the dequantized int8 activations. Fast only for bfloat16 inputs
  of a few rows: ``PackedBitLinear`` gives it those alone (``INT4PACK_MAX_ROWS``) and the rest to ``torch``.
* ``torch``: unpack and ``F.linear`` at every call (``PackedBitLinear``'s reference forward; any device).

Exactness. ``vnni`` and ``avx2`` quantize the activations exactly as :func:`quantize_activations` does (same float32
operations, round half to even) and compute the same integer dot products ``xq . wq`` as the reference, on either
route; they then scale in float32: ``y = float(dot) * ((absmax / 127) * weight_scale) (+ bias)``, with one
``weight_scale`` per tensor or per output row, rounded once to the input dtype. Scales per group of input columns
(``--scale group``) are applied per group inside the dot product, ``y = sum_g float(dot_g) * ((absmax / 127) *
scale_g)`` in float32, on the matrix-vector loops only, for any number of rows. So they equal that expression of the
integer reference bit for bit; against the ``torch`` path (which rounds ``xq * absmax / 127`` and ``wq * s`` to the
input dtype before a float matmul) they differ by float rounding only. ``int4pack`` multiplies the same dequantized
values as the ``torch`` path, in another summation order.

The library also serves the ``int4_exact_top`` output head (``QuantizedLMHead``): :func:`int4_rows` (AVX-512 VNNI,
an int4 matrix with one scale and offset per 128 columns, ranking the vocabulary) and :func:`exact_top` (AVX2, each token's
top logits recomputed from the stored rows).

The C++ source below is compiled with ``torch.utils.cpp_extension.load_inline`` into
``$BITNET_HF_CACHE/kernels`` (default ``~/.cache/bitnet_hf/kernels``), once per source version; later processes
load the cached library in a fraction of a second. ISA-specific functions carry ``target`` attributes and are
called only after a CPUID check, so the library is portable. No compiler, a read-only cache, or a CPU without the
instructions each give one warning and the next kernel, never a crash.

This file only imports torch, transformers and its own folder: it travels into saved checkpoints as remote code.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

KERNELS = ("vnni", "avx2", "int4pack", "torch")
ENV_VAR = "BITNET_HF_KERNEL"
_ISA = {"avx2": 1, "vnni": 2}

_SOURCE = r"""
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>
#include <cmath>
#include <algorithm>
#include <cstring>
#include <cerrno>
#include <functional>
#include <vector>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace {

constexpr int kAvx2 = 1;
constexpr int kVnni = 2;
constexpr int64_t kPrefetchBytes = 4096;  // how far ahead the VNNI loop prefetches weights
// From this many rows of x on (prefill, batches), the int8 GEMM of oneDNN on unpacked weights beats the GEMV loops
// below (benchmarks/many_rows.py); it works on kUnpackedChunkBytes of unpacked weights and kTokenChunk rows at a time.
constexpr int64_t kIntMmRows = 128;
constexpr int64_t kUnpackedChunkBytes = int64_t(4) << 20;
constexpr int64_t kTokenChunk = 256;

bool isa_supported(int64_t isa) {
  __builtin_cpu_init();
  if (isa == kAvx2) return __builtin_cpu_supports("avx2");
  if (isa == kVnni) return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
                           && __builtin_cpu_supports("avx512vnni");
  return false;
}

// Per-token absmax int8 quantization, the float32 operations of quantize_activations():
// xq = clamp(round(127 * x / (absmax + 1e-5)), -128, 127), round half to even. Rows padded with zeros to Kp.
// Eight lanes at a time (AVX2: every C++ kernel has it); the same IEEE operations, so the same values as the
// scalar tail.
__attribute__((target("avx2")))
inline __m256 load8(const float* x) { return _mm256_loadu_ps(x); }

__attribute__((target("avx2")))
inline __m256 load8(const at::BFloat16* x) {  // bf16 -> float32 is exact: the bits, shifted
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

template <typename T>
__attribute__((target("avx2")))
void quantize_rows(const T* x, int64_t M, int64_t K, int64_t Kp, int8_t* xq, float* absmax, int32_t* xsum) {
  const __m256 sign = _mm256_set1_ps(-0.f), c127 = _mm256_set1_ps(127.f);
  const __m256 lo = _mm256_set1_ps(-128.f), hi = _mm256_set1_ps(127.f);
  const int64_t K8 = K / 8 * 8;
  for (int64_t m = 0; m < M; ++m) {
    const T* row = x + m * K;
    __m256 vmax = _mm256_setzero_ps();
    for (int64_t k = 0; k < K8; k += 8) vmax = _mm256_max_ps(_mm256_andnot_ps(sign, load8(row + k)), vmax);
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, vmax);
    float amax = 0.f;
    for (float v : lanes) amax = std::max(amax, v);
    for (int64_t k = K8; k < K; ++k) amax = std::max(amax, std::fabs(static_cast<float>(row[k])));
    const float denom = amax + 1e-5f;
    const __m256 vdenom = _mm256_set1_ps(denom);
    int8_t* q = xq + m * Kp;
    __m256i vsum = _mm256_setzero_si256();
    for (int64_t k = 0; k < K8; k += 8) {
      __m256 v = _mm256_div_ps(_mm256_mul_ps(c127, load8(row + k)), vdenom);
      v = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m256i i32 = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, lo), hi));
      vsum = _mm256_add_epi32(vsum, i32);
      const __m128i i16 = _mm_packs_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(q + k), _mm_packs_epi16(i16, i16));
    }
    alignas(32) int32_t sums[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(sums), vsum);
    int32_t sum = 0;
    for (int32_t v : sums) sum += v;
    for (int64_t k = K8; k < K; ++k) {
      float v = std::nearbyint((127.f * static_cast<float>(row[k])) / denom);
      v = std::min(std::max(v, -128.f), 127.f);
      q[k] = static_cast<int8_t>(v);
      sum += q[k];
    }
    std::memset(q + K, 0, Kp - K);
    absmax[m] = amax;
    xsum[m] = sum;
  }
}

// Sums of (w + 1) * x for the 4 rows held by packed row `w` (length K) and T tokens: out[t * 4 + plane].
// Accumulators are named variables, not arrays: GCC keeps arrays of vectors on the stack.
#define BITNET_VNNI_TOKEN(t)                                                  \
  if constexpr (T > t) {                                                      \
    const __m512i x = _mm512_loadu_si512(xq + t * Kp + k);                    \
    a##t##0 = _mm512_dpbusd_epi32(a##t##0, p0, x);                            \
    a##t##1 = _mm512_dpbusd_epi32(a##t##1, p1, x);                            \
    a##t##2 = _mm512_dpbusd_epi32(a##t##2, p2, x);                            \
    a##t##3 = _mm512_dpbusd_epi32(a##t##3, p3, x);                            \
  }
#define BITNET_VNNI_STORE(t) \
  if constexpr (T > t) reduce4_512(a##t##0, a##t##1, a##t##2, a##t##3, out + t * 4);

__attribute__((target("avx512f,avx512bw")))
inline void reduce4_512(__m512i a0, __m512i a1, __m512i a2, __m512i a3, int32_t* out) {
  const __m512i b0 = _mm512_add_epi32(_mm512_unpacklo_epi32(a0, a1), _mm512_unpackhi_epi32(a0, a1));
  const __m512i b1 = _mm512_add_epi32(_mm512_unpacklo_epi32(a2, a3), _mm512_unpackhi_epi32(a2, a3));
  const __m512i c = _mm512_add_epi32(_mm512_unpacklo_epi64(b0, b1), _mm512_unpackhi_epi64(b0, b1));
  const __m256i d = _mm256_add_epi32(_mm512_castsi512_si256(c), _mm512_extracti64x4_epi64(c, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out),
                   _mm_add_epi32(_mm256_castsi256_si128(d), _mm256_extracti128_si256(d, 1)));
}

template <int T>
__attribute__((target("avx512f,avx512bw,avx512vnni")))
inline void ternary_dots_vnni(const uint8_t* w, int64_t K, const int8_t* xq, int64_t Kp, int32_t* out) {
  const __m512i mask2 = _mm512_set1_epi8(3);
  __m512i a00 = _mm512_setzero_si512(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00,
          a13 = a00, a20 = a00, a21 = a00, a22 = a00, a23 = a00, a30 = a00, a31 = a00, a32 = a00, a33 = a00;
  for (int64_t k = 0; k < K; k += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(w + k + kPrefetchBytes), _MM_HINT_T0);
    const __m512i v = K - k >= 64 ? _mm512_loadu_si512(w + k)
                                  : _mm512_maskz_loadu_epi8((__mmask64(1) << (K - k)) - 1, w + k);
    const __m512i p0 = _mm512_and_si512(v, mask2);
    const __m512i p1 = _mm512_and_si512(_mm512_srli_epi16(v, 2), mask2);
    const __m512i p2 = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask2);
    const __m512i p3 = _mm512_and_si512(_mm512_srli_epi16(v, 6), mask2);
    BITNET_VNNI_TOKEN(0) BITNET_VNNI_TOKEN(1) BITNET_VNNI_TOKEN(2) BITNET_VNNI_TOKEN(3)
  }
  BITNET_VNNI_STORE(0) BITNET_VNNI_STORE(1) BITNET_VNNI_STORE(2) BITNET_VNNI_STORE(3)
}

#define BITNET_AVX2_TOKEN(t)                                                                     \
  if constexpr (T > t) {                                                                         \
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + t * Kp + k));     \
    a##t##0 = _mm256_add_epi32(a##t##0, _mm256_madd_epi16(_mm256_maddubs_epi16(p0, x), ones));  \
    a##t##1 = _mm256_add_epi32(a##t##1, _mm256_madd_epi16(_mm256_maddubs_epi16(p1, x), ones));  \
    a##t##2 = _mm256_add_epi32(a##t##2, _mm256_madd_epi16(_mm256_maddubs_epi16(p2, x), ones));  \
    a##t##3 = _mm256_add_epi32(a##t##3, _mm256_madd_epi16(_mm256_maddubs_epi16(p3, x), ones));  \
  }
#define BITNET_AVX2_STORE(t) \
  if constexpr (T > t) reduce4_256(a##t##0, a##t##1, a##t##2, a##t##3, out + t * 4);

__attribute__((target("avx2")))
inline void reduce4_256(__m256i a0, __m256i a1, __m256i a2, __m256i a3, int32_t* out) {
  const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out),
                   _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1)));
}

// (w + 1) * x pairs fit int16 in vpmaddubsw: |2 * 2 * 128| < 2^15. At most 2 tokens: 16 ymm registers.
template <int T>
__attribute__((target("avx2")))
inline void ternary_dots_avx2(const uint8_t* w, int64_t K, const int8_t* xq, int64_t Kp, int32_t* out) {
  static_assert(T <= 2, "AVX2 has registers for 2 tokens");
  const __m256i mask2 = _mm256_set1_epi8(3);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i a00 = _mm256_setzero_si256(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00,
          a13 = a00;
  alignas(32) uint8_t tail[32];
  for (int64_t k = 0; k < K; k += 32) {
    __m256i v;
    if (K - k >= 32) {
      v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k));
    } else {
      std::memset(tail, 0, 32);
      std::memcpy(tail, w + k, K - k);
      v = _mm256_load_si256(reinterpret_cast<const __m256i*>(tail));
    }
    const __m256i p0 = _mm256_and_si256(v, mask2);
    const __m256i p1 = _mm256_and_si256(_mm256_srli_epi16(v, 2), mask2);
    const __m256i p2 = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask2);
    const __m256i p3 = _mm256_and_si256(_mm256_srli_epi16(v, 6), mask2);
    BITNET_AVX2_TOKEN(0) BITNET_AVX2_TOKEN(1)
  }
  BITNET_AVX2_STORE(0) BITNET_AVX2_STORE(1)
}

// Dot products of one packed row with tokens [0, nt), nt <= 4 (vnni) or 2 (avx2): out[t * 4 + plane].
inline void ternary_dots(int isa, int64_t nt, const uint8_t* w, int64_t K, const int8_t* xq, int64_t Kp,
                         int32_t* out) {
  if (isa == kVnni) {
    if (nt == 4) ternary_dots_vnni<4>(w, K, xq, Kp, out);
    else if (nt == 3) ternary_dots_vnni<3>(w, K, xq, Kp, out);
    else if (nt == 2) ternary_dots_vnni<2>(w, K, xq, Kp, out);
    else ternary_dots_vnni<1>(w, K, xq, Kp, out);
  } else {
    if (nt == 2) ternary_dots_avx2<2>(w, K, xq, Kp, out);
    else ternary_dots_avx2<1>(w, K, xq, Kp, out);
  }
}

template <typename T>
void store(T* out, float v) { *out = static_cast<T>(v); }

// sums[m * groups + g]: the sum of xq[m, g * G, (g + 1) * G), for M rows of Kp values.
std::vector<int32_t> group_sums(const int8_t* xq, int64_t M, int64_t Kp, int64_t groups, int64_t G) {
  std::vector<int32_t> sums(M * groups);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < groups; ++g) {
      int32_t s = 0;
      for (int64_t k = g * G; k < (g + 1) * G; ++k) s += xq[m * Kp + k];
      sums[m * groups + g] = s;
    }
  return sums;
}

// One packed row (K bytes) as the int8 ternary values of one of its 2-bit fields (`shift` 0, 2, 4, 6): each byte
// holds w + 1 of 4 output rows.
__attribute__((target("avx2")))
void unpack_field(const uint8_t* src, int64_t K, int shift, int8_t* dst) {
  const __m256i mask2 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
  const __m128i count = _mm_cvtsi32_si128(shift);
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    const __m256i v = _mm256_srl_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + k)), count);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k), _mm256_sub_epi8(_mm256_and_si256(v, mask2), one));
  }
  for (; k < K; ++k) dst[k] = static_cast<int8_t>(((src[k] >> shift) & 3) - 1);
}

// y[m, n] = float(sum_k xq[m, k] * wq[n, k]) * ((absmax[m] / 127) * scale[n]) (+ bias[n]), for each weight of
// `weights` (uint8, transformers' packed layout) read with the same activations; `scales[i]` points at one float
// per tensor (scale_strides[i] == 0) or one per output row (1). With `groups` > 1 (every weight of the call alike)
// row n has one scale per group of K / groups input columns, scale[n * groups + g] (scale_strides[i] == groups):
// y[m, n] = sum_g float(sum_{k in g} xq[m, k] * wq[n, k]) * ((absmax[m] / 127) * scale[n, g]) (+ bias[n]), summed
// in group order, on the matrix-vector route only. One parallel loop over all packed rows of all weights.
template <typename T>
std::vector<at::Tensor> ternary_linear_impl(const at::Tensor& x, const std::vector<at::Tensor>& weights,
                                           const std::vector<const float*>& scales,
                                           const std::vector<int64_t>& scale_strides,
                                           const std::vector<std::optional<at::Tensor>>& biases,
                                           const std::vector<int64_t>& out_features, int64_t groups, int isa) {
  const int64_t M = x.size(0), K = x.size(1);
  const int64_t Kp = (K + 63) / 64 * 64;
  // One spare row: a group's last 64-byte activation load may run past its token's row (its weights are masked).
  const at::Tensor xq_rows = at::empty({M + 1, Kp}, x.options().dtype(at::kChar)).narrow(0, 0, M);
  int8_t* const xq = xq_rows.data_ptr<int8_t>();
  std::vector<float> absmax(M);
  std::vector<int32_t> xsum(M);
  at::parallel_for(0, M, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, K)), [&](int64_t begin, int64_t end) {
    quantize_rows(x.data_ptr<T>() + begin * K, end - begin, K, Kp, xq + begin * Kp, absmax.data() + begin,
                  xsum.data() + begin);
  });
  // The sum of xq over each group of G input columns of each row: xsum itself when the whole row is one group.
  const int64_t G = K / groups;
  const std::vector<int32_t> gsum = groups > 1 ? group_sums(xq, M, Kp, groups, G) : std::vector<int32_t>();
  const int32_t* const sums = groups > 1 ? gsum.data() : xsum.data();

  const size_t n = weights.size();
  std::vector<at::Tensor> outs;
  std::vector<int64_t> first_row(n + 1, 0);  // flattened packed-row index where each weight starts
  for (size_t i = 0; i < n; ++i) {
    outs.push_back(at::empty({M, out_features[i]}, x.options()));
    first_row[i + 1] = first_row[i] + weights[i].size(0);
  }
  if (M >= kIntMmRows && groups == 1) {
    // Many rows (prefill, batches): oneDNN's int8 GEMM (at::_int_mm) on the weight unpacked to int8, a chunk of
    // packed rows [r0, r1) at a time: the same integer dot products, so the same outputs bit for bit. The chunk's
    // output rows are its 2-bit fields' segments [j R + r0, j R + r1) (those < N), unpacked one after the other.
    // The workspaces (at most 4 MB each) are reused between calls: fresh ones would cost a page fault per 4 KB at
    // every call.
    thread_local std::vector<int8_t> unpacked;
    thread_local std::vector<int32_t> dots;
    for (size_t i = 0; i < n; ++i) {
      const int64_t N = out_features[i], R = weights[i].size(0);
      // packed rows a chunk: at most kUnpackedChunkBytes of int8 weights, and of int32 dots for kTokenChunk rows
      const int64_t chunk = std::min({R, std::max<int64_t>(1, kUnpackedChunkBytes / (4 * K)),
                                      kUnpackedChunkBytes / (16 * kTokenChunk)});
      unpacked.resize(4 * chunk * K);
      dots.resize(kTokenChunk * 4 * chunk);
      int8_t* const wbuf = unpacked.data();  // thread_local names would mean the worker threads' own copies
      int32_t* const dbuf = dots.data();
      const float* scale = scales[i];
      const int64_t scale_stride = scale_strides[i];
      const T* bias = biases[i].has_value() ? biases[i]->data_ptr<T>() : nullptr;
      T* y = outs[i].data_ptr<T>();
      for (int64_t r0 = 0; r0 < R; r0 += chunk) {
        const int64_t r1 = std::min(R, r0 + chunk);
        int64_t segment[5] = {0};  // field j's rows sit at [segment[j], segment[j + 1]) of the unpacked chunk
        for (int64_t j = 0; j < 4; ++j) segment[j + 1] = segment[j] + std::clamp<int64_t>(N - j * R, r0, r1) - r0;
        const int64_t cols = segment[4];
        const uint8_t* w = weights[i].data_ptr<uint8_t>() + r0 * K;
        at::parallel_for(0, 4 * (r1 - r0), std::max<int64_t>(1, 16384 / K), [&](int64_t begin, int64_t end) {
          for (int64_t t = begin; t < end; ++t) {  // t = j * (r1 - r0) + (r - r0)
            const int64_t j = t / (r1 - r0), r = t % (r1 - r0);
            if (segment[j] + r < segment[j + 1])
              unpack_field(w + r * K, K, 2 * static_cast<int>(j), wbuf + (segment[j] + r) * K);
          }
        });
        const at::Tensor wq = at::from_blob(wbuf, {cols, K}, xq_rows.options());
        for (int64_t m0 = 0; m0 < M; m0 += kTokenChunk) {
          const int64_t mc = std::min(kTokenChunk, M - m0);
          at::Tensor d = at::from_blob(dbuf, {mc, cols}, xq_rows.options().dtype(at::kInt));
          at::_int_mm_out(d, xq_rows.narrow(0, m0, mc).narrow(1, 0, K), wq.t());
          at::parallel_for(0, mc, std::max<int64_t>(1, 16384 / cols), [&](int64_t begin, int64_t end) {
            for (int64_t m = begin; m < end; ++m) {
              const float step = absmax[m0 + m] / 127.f;
              T* ym = y + (m0 + m) * N;
              for (int64_t j = 0; j < 4; ++j) {
                const int32_t* dm = dbuf + m * cols + segment[j];
                const int64_t first = j * R + r0;  // output row of the segment's first column
                for (int64_t c = 0; c < segment[j + 1] - segment[j]; ++c) {
                  float v = static_cast<float>(dm[c]) * (step * scale[(first + c) * scale_stride]);
                  if (bias) v = v + static_cast<float>(bias[first + c]);
                  store(ym + first + c, v);
                }
              }
            }
          });
        }
      }
    }
    return outs;
  }
  const int64_t total_rows = first_row[n];
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, K * M / 64));
  const int64_t tokens = isa == kVnni ? 4 : 2;
  // Below kIntMmRows rows, more than kTokenBlock of them (short prompts, small batches): tokens in blocks, so that a
  // block's activations stay in L2 while the thread's weight rows stream past them once per block.
  constexpr int64_t kTokenBlock = 64;
  at::parallel_for(0, total_rows, grain, [&](int64_t begin, int64_t end) {
    int32_t dots[16];
    for (int64_t mb = 0; mb < M; mb += kTokenBlock) {
      const int64_t me = std::min(M, mb + kTokenBlock);
      size_t i = 0;
      for (int64_t flat = begin; flat < end; ++flat) {
        while (flat >= first_row[i + 1]) ++i;
        const int64_t r = flat - first_row[i], R = weights[i].size(0), N = out_features[i];
        const uint8_t* w = weights[i].data_ptr<uint8_t>() + r * K;
        const float* scale = scales[i];
        const int64_t scale_stride = scale_strides[i];
        const T* bias = biases[i].has_value() ? biases[i]->data_ptr<T>() : nullptr;
        T* y = outs[i].data_ptr<T>();
        for (int64_t m0 = mb; m0 < me; m0 += tokens) {
          const int64_t nt = std::min<int64_t>(tokens, me - m0);
          // One float32 term per group (one in all without group scales), summed in group order.
          float acc[16];
          for (int64_t g = 0; g < groups; ++g) {
            ternary_dots(isa, nt, w + g * G, G, xq + m0 * Kp + g * G, Kp, dots);
            for (int64_t t = 0; t < nt; ++t) {
              const float step = absmax[m0 + t] / 127.f;
              for (int64_t j = 0; j < 4 && j * R + r < N; ++j) {
                const float term = static_cast<float>(dots[t * 4 + j] - sums[(m0 + t) * groups + g])
                                   * (step * scale[(j * R + r) * scale_stride + g]);
                acc[t * 4 + j] = g == 0 ? term : acc[t * 4 + j] + term;
              }
            }
          }
          for (int64_t t = 0; t < nt; ++t)
            for (int64_t j = 0; j < 4 && j * R + r < N; ++j) {
              float v = acc[t * 4 + j];
              if (bias) v = v + static_cast<float>(bias[j * R + r]);
              store(y + (m0 + t) * N + j * R + r, v);
            }
        }
      }
    }
  });
  return outs;
}

std::vector<at::Tensor> ternary_linear(const at::Tensor& x, at::TensorList weights, at::TensorList scales,
                                       const c10::List<std::optional<at::Tensor>>& biases,
                                       at::IntArrayRef out_features, int64_t isa) {
  TORCH_CHECK(isa == kAvx2 || isa == kVnni, "bitnet_hf::ternary_linear: unknown isa ", isa);
  TORCH_CHECK(isa_supported(isa), "bitnet_hf::ternary_linear: this CPU lacks the instructions of isa ", isa);
  TORCH_CHECK(x.dim() == 2 && x.device().is_cpu(), "bitnet_hf::ternary_linear: x must be a 2-D CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "bitnet_hf::ternary_linear: x must be float32 or bfloat16");
  const size_t n = weights.size();
  TORCH_CHECK(n > 0 && scales.size() == n && biases.size() == n && out_features.size() == n,
              "bitnet_hf::ternary_linear: weights, scales, biases and out_features must have the same length");
  const at::Tensor xc = x.contiguous();
  std::vector<at::Tensor> ws;
  std::vector<at::Tensor> ss;  // float32, contiguous: kept alive for the pointers below
  std::vector<const float*> sp;
  std::vector<int64_t> strides;
  std::vector<std::optional<at::Tensor>> bs;
  std::vector<int64_t> ns(out_features.begin(), out_features.end());
  int64_t groups = 1;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& w = weights[i];
    TORCH_CHECK(w.scalar_type() == at::kByte && w.dim() == 2 && w.size(1) == x.size(1) && w.device().is_cpu(),
                "bitnet_hf::ternary_linear: weight ", i, " must be a uint8 CPU tensor (ceil(out / 4), in)");
    TORCH_CHECK(w.size(0) == (ns[i] + 3) / 4, "bitnet_hf::ternary_linear: weight ", i, " has ", w.size(0),
                " packed rows for ", ns[i], " outputs");
    const int64_t count = scales[i].numel();
    const bool grouped = count > ns[i] && count % ns[i] == 0 && x.size(1) % (count / ns[i]) == 0
                         && x.size(1) / (count / ns[i]) % 32 == 0;
    TORCH_CHECK(scales[i].device().is_cpu() && (count == 1 || count == ns[i] || grouped),
                "bitnet_hf::ternary_linear: scale ", i, " must hold one number, one per output row or one per group "
                "of a multiple of 32 input columns of each row on the CPU; it holds ", count);
    const int64_t g = count == 1 ? 1 : count / ns[i];
    TORCH_CHECK(i == 0 || g == groups, "bitnet_hf::ternary_linear: weights of one call must share their scale groups");
    groups = g;
    ws.push_back(w.contiguous());
    ss.push_back(scales[i].to(at::kFloat).contiguous());
    sp.push_back(ss.back().data_ptr<float>());
    strides.push_back(count == 1 ? 0 : groups);
    std::optional<at::Tensor> b = biases.get(i);
    if (b.has_value()) {
      TORCH_CHECK(b->numel() == ns[i] && b->device().is_cpu(), "bitnet_hf::ternary_linear: bias ", i, " has ",
                  b->numel(), " values for ", ns[i], " outputs");
      b = b->to(x.scalar_type()).contiguous();
    }
    bs.push_back(b);
  }
  if (x.scalar_type() == at::kFloat) return ternary_linear_impl<float>(xc, ws, sp, strides, bs, ns, groups, int(isa));
  return ternary_linear_impl<at::BFloat16>(xc, ws, sp, strides, bs, ns, groups, int(isa));
}

// An int4 matrix with one scale and one offset per group of 128 columns, w[n, k] ~ scale[n, g] * q + low[n, g] with
// q in [0, 16): row n is Kp / 2 bytes (Kp = in padded to 128), each 64-byte chunk one group, column g * 128 + i in
// the low nibble of byte i and g * 128 + 64 + i in its high one. For T tokens, in float32:
// out[t] = sum_g scale[g] * dot_g(q, xq[t]) + low[g] * sum_g(xq[t]), where gsum16[t * groups + g] = sum_g(xq[t]) / 16
// (the 16 lanes each add one sixteenth: exact, a power of two).
template <int T>
__attribute__((target("avx512f,avx512bw,avx512vnni")))
inline void int4_dots(const uint8_t* w, int64_t groups, const int8_t* xq, int64_t Kp, const float* scale_low,
                      const float* gsum16, float* out) {
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  __m512 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    _mm_prefetch(reinterpret_cast<const char*>(w + g * 64 + kPrefetchBytes), _MM_HINT_T0);
    const __m512i v = _mm512_loadu_si512(w + g * 64);
    const __m512i q0 = _mm512_and_si512(v, low4), q1 = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
    const __m512 scale = _mm512_set1_ps(scale_low[2 * g]), low = _mm512_set1_ps(scale_low[2 * g + 1]);
    for (int t = 0; t < T; ++t) {
      const int8_t* x = xq + t * Kp + g * 128;
      __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q0, _mm512_loadu_si512(x));
      dot = _mm512_dpbusd_epi32(dot, q1, _mm512_loadu_si512(x + 64));
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[t]);
      acc[t] = _mm512_fmadd_ps(low, _mm512_set1_ps(gsum16[t * groups + g]), acc[t]);
    }
  }
  for (int t = 0; t < T; ++t) out[t] = _mm512_reduce_add_ps(acc[t]);
}

// y (M, N) in x's dtype: y[m, n] = (absmax[m] / 127) * int4_dots(row n, xq[m]), x quantized per token as the
// ternary kernels do; rows of the matrix in parallel, up to 4 tokens a pass over them.
template <typename T>
at::Tensor int4_rows_impl(const at::Tensor& x, const at::Tensor& packed, const float* scale_low) {
  const int64_t M = x.size(0), K = x.size(1), N = packed.size(0), Kp = packed.size(1) * 2, groups = Kp / 128;
  at::Tensor out = at::empty({M, N}, x.options());
  std::vector<int8_t> xq(M * Kp);
  std::vector<float> absmax(M), gsum16(M * groups);
  std::vector<int32_t> xsum(M);
  quantize_rows(x.data_ptr<T>(), M, K, Kp, xq.data(), absmax.data(), xsum.data());
  const std::vector<int32_t> gsum = group_sums(xq.data(), M, Kp, groups, 128);
  for (size_t i = 0; i < gsum.size(); ++i) gsum16[i] = static_cast<float>(gsum[i]) / 16.f;
  const uint8_t* w = packed.data_ptr<uint8_t>();
  T* y = out.data_ptr<T>();
  at::parallel_for(0, N, 256, [&](int64_t begin, int64_t end) {
    float dots[4];
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
      const int64_t nt = std::min<int64_t>(4, M - m0);
      const int8_t* xm = xq.data() + m0 * Kp;
      const float* gm = gsum16.data() + m0 * groups;
      for (int64_t n = begin; n < end; ++n) {
        const uint8_t* row = w + n * (Kp / 2);
        const float* sl = scale_low + n * groups * 2;
        if (nt == 4) int4_dots<4>(row, groups, xm, Kp, sl, gm, dots);
        else if (nt == 3) int4_dots<3>(row, groups, xm, Kp, sl, gm, dots);
        else if (nt == 2) int4_dots<2>(row, groups, xm, Kp, sl, gm, dots);
        else int4_dots<1>(row, groups, xm, Kp, sl, gm, dots);
        for (int64_t t = 0; t < nt; ++t) store(y + (m0 + t) * N + n, (absmax[m0 + t] / 127.f) * dots[t]);
      }
    }
  });
  return out;
}

at::Tensor int4_rows(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale_low) {
  TORCH_CHECK(isa_supported(kVnni), "bitnet_hf::int4_rows: this CPU lacks AVX-512 VNNI");
  TORCH_CHECK(x.dim() == 2 && x.device().is_cpu() && (x.scalar_type() == at::kFloat
              || x.scalar_type() == at::kBFloat16), "bitnet_hf::int4_rows: x must be 2-D float32 or bfloat16 on CPU");
  TORCH_CHECK(packed.dim() == 2 && packed.scalar_type() == at::kByte && packed.size(1) % 64 == 0
              && packed.size(1) * 2 >= x.size(1) && packed.size(1) * 2 < x.size(1) + 128,
              "bitnet_hf::int4_rows: packed must be uint8 (N, in padded to 128 / 2)");
  TORCH_CHECK(scale_low.scalar_type() == at::kFloat && scale_low.dim() == 3 && scale_low.size(0) == packed.size(0)
              && scale_low.size(1) == packed.size(1) / 64 && scale_low.size(2) == 2,
              "bitnet_hf::int4_rows: scale_low must be float32 (N, in padded to 128 / 128, 2)");
  const at::Tensor xc = x.contiguous(), w = packed.contiguous(), sl = scale_low.contiguous();
  if (x.scalar_type() == at::kFloat) return int4_rows_impl<float>(xc, w, sl.data_ptr<float>());
  return int4_rows_impl<at::BFloat16>(xc, w, sl.data_ptr<float>());
}

// Order-preserving key of a value: a larger value has a larger key (NaN aside); branch-free, so loops vectorize.
inline uint32_t key_of_bits(uint32_t b) { return b ^ (uint32_t(int32_t(b) >> 31) | 0x80000000u); }
inline uint32_t order_key(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  return key_of_bits(b);
}
inline uint32_t order_key(at::BFloat16 v) { return key_of_bits(uint32_t(v.x) << 16); }  // its float's bits
inline uint32_t order_key(at::Half v) { return order_key(static_cast<float>(v)); }

// The k largest of v[0, n) (k <= n), ties to the lower index, into ids[0, k). The maximum of each block of 256
// values first: the k-th largest of those maxima is at most the k-th largest value, so only the blocks whose maximum
// reaches it can hold one of the k, and only their values are compared.
template <typename T>
__attribute__((target("avx2")))
void top_indices(const T* v, int64_t n, int64_t k, int64_t* ids) {
  constexpr int64_t kBlock = 256;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<uint32_t> block_max(blocks);
  for (int64_t b = 0; b < blocks; ++b) {
    uint32_t m = 0;
    for (int64_t i = b * kBlock, end = std::min(n, i + kBlock); i < end; ++i)
      m = std::max(m, order_key(v[i]));
    block_max[b] = m;
  }
  uint32_t threshold = 0;
  if (blocks > k) {
    std::vector<uint32_t> maxima(block_max);
    std::nth_element(maxima.begin(), maxima.begin() + (k - 1), maxima.end(), std::greater<uint32_t>());
    threshold = maxima[k - 1];
  }
  std::vector<std::pair<uint32_t, int64_t>> candidates;  // (key, index) of every value >= threshold
  for (int64_t b = 0; b < blocks; ++b) {
    if (block_max[b] < threshold) continue;
    for (int64_t i = b * kBlock, end = std::min(n, i + kBlock); i < end; ++i) {
      const uint32_t key = order_key(v[i]);
      if (key >= threshold) candidates.emplace_back(key, i);
    }
  }
  std::partial_sort(candidates.begin(), candidates.begin() + k, candidates.end(),
                    [](const std::pair<uint32_t, int64_t>& a, const std::pair<uint32_t, int64_t>& b) {
                      return a.first > b.first || (a.first == b.first && a.second < b.second);
                    });
  for (int64_t j = 0; j < k; ++j) ids[j] = candidates[j].second;
}

// sum(w[i] * x[i]) in float32, eight lanes at a time, the lanes then added in order.
template <typename T>
__attribute__((target("avx2")))
float dot(const T* w, const float* x, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  const int64_t n8 = n / 8 * 8;
  for (int64_t i = 0; i < n8; i += 8) acc = _mm256_add_ps(acc, _mm256_mul_ps(load8(w + i), _mm256_loadu_ps(x + i)));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  float sum = 0.f;
  for (float v : lanes) sum += v;
  for (int64_t i = n8; i < n; ++i) sum += static_cast<float>(w[i]) * x[i];
  return sum;
}

// Rows ids of the (rows, cols) matrix of dtype stored at byte offset of the file path, read with pread (through the
// page cache, into the returned tensor only); inode is the file's when the model loaded.
at::Tensor read_file_rows(const at::Tensor& ids, const std::string& path, int64_t inode, int64_t offset, int64_t rows,
                          int64_t cols, at::ScalarType dtype) {
  at::Tensor out = at::empty({ids.numel(), cols}, at::TensorOptions().dtype(dtype));
  const int64_t row_bytes = cols * int64_t(at::elementSize(dtype));
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  TORCH_CHECK(fd >= 0, "cannot open ", path, " (", std::strerror(errno), "); load the model again");
  struct Closer { int fd; ~Closer() { ::close(fd); } } closer{fd};
  struct stat st;
  TORCH_CHECK(::fstat(fd, &st) == 0 && int64_t(st.st_ino) == inode,
              path, " was replaced after the model was loaded from it; load the model again");
  const int64_t* id = ids.data_ptr<int64_t>();
  char* dst = static_cast<char*>(out.data_ptr());
  for (int64_t i = 0; i < ids.numel(); ++i) {
    TORCH_CHECK(id[i] >= 0 && id[i] < rows, "index ", id[i], " out of range of the ", rows, " stored rows");
    TORCH_CHECK(::pread(fd, dst + i * row_bytes, row_bytes, offset + id[i] * row_bytes) == row_bytes,
                path, " is shorter than when the model was loaded from it; load the model again");
  }
  return out;
}

// logits (n, V) with, in each row, its k largest values replaced by the exact products of x's row with those rows of
// weight (V, cols): rows read from the file path (at byte offset, inode checked) or, where path is empty, from
// weight itself. Products in float32, rounded once to the logits' dtype. Needs AVX2.
at::Tensor exact_top(const at::Tensor& logits, const at::Tensor& x, const at::Tensor& weight, const std::string& path,
                     int64_t inode, int64_t offset, int64_t k) {
  TORCH_CHECK(logits.dim() == 2 && x.dim() == 2 && weight.dim() == 2 && logits.size(0) == x.size(0)
              && weight.size(0) == logits.size(1) && weight.size(1) == x.size(1),
              "bitnet_hf::exact_top: logits (n, V), x (n, in) and weight (V, in) do not match");
  TORCH_CHECK(logits.device().is_cpu() && x.device().is_cpu(), "bitnet_hf::exact_top: CPU tensors only");
  TORCH_CHECK(isa_supported(kAvx2), "bitnet_hf::exact_top: this CPU lacks AVX2");
  const int64_t n = logits.size(0), vocab = logits.size(1);
  k = std::min(k, vocab);
  at::Tensor out = logits.clone(at::MemoryFormat::Contiguous);
  if (n == 0 || k <= 0) return out;
  const int64_t cols = x.size(1);
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  at::Tensor ids = at::empty({n, k}, at::kLong);
  const int64_t* id = ids.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, out.scalar_type(), "exact_top", [&] {
    scalar_t* y = out.data_ptr<scalar_t>();
    for (int64_t r = 0; r < n; ++r) top_indices(y + r * vocab, vocab, k, ids.data_ptr<int64_t>() + r * k);
    at::Tensor rows = path.empty() ? weight.index_select(0, ids.view(-1))
        : read_file_rows(ids, path, inode, offset, vocab, cols, weight.scalar_type());
    if (rows.scalar_type() != at::kFloat && rows.scalar_type() != at::kBFloat16) rows = rows.to(at::kFloat);
    for (int64_t r = 0; r < n; ++r)
      for (int64_t j = 0; j < k; ++j) {
        const int64_t i = r * k + j;
        const float* xr = xf.data_ptr<float>() + r * cols;
        const float v = rows.scalar_type() == at::kFloat ? dot(rows.data_ptr<float>() + i * cols, xr, cols)
                                                         : dot(rows.data_ptr<at::BFloat16>() + i * cols, xr, cols);
        y[r * vocab + id[i]] = static_cast<scalar_t>(v);
      }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(BITNET_NAMESPACE, m) {
  m.def("isa_supported(int isa) -> bool", &isa_supported);
  m.def("ternary_linear(Tensor x, Tensor[] weights, Tensor[] scales, Tensor?[] biases, int[] out_features, "
        "int isa) -> Tensor[]");
  m.def("int4_rows(Tensor x, Tensor packed, Tensor scale_low) -> Tensor");
  m.def("exact_top(Tensor logits, Tensor x, Tensor weight, str path, int inode, int offset, int k) -> Tensor");
}

TORCH_LIBRARY_IMPL(BITNET_NAMESPACE, CPU, m) {
  m.impl("ternary_linear", &ternary_linear);
  m.impl("int4_rows", &int4_rows);
  m.impl("exact_top", &exact_top);
}
"""


def cache_dir() -> Path:
    """Where the compiled kernels live: ``$BITNET_HF_CACHE/kernels`` (default ``~/.cache/bitnet_hf/kernels``)."""
    return Path(os.environ.get("BITNET_HF_CACHE", Path.home() / ".cache" / "bitnet_hf")) / "kernels"


_DIGEST = hashlib.sha256((_SOURCE + torch.__version__).encode()).hexdigest()[:12]
_NAMESPACE = f"bitnet_hf_{_DIGEST}"
_state: dict[str, object] = {"kernel": None, "library": None}


def _build_library() -> None:
    """Compile (or load the cached build of) the C++ kernels; raises with the reason when that is impossible."""
    from torch.utils import cpp_extension

    build = cache_dir() / _NAMESPACE
    library = build / f"{_NAMESPACE}.so"
    if library.is_file():
        try:
            torch.ops.load_library(str(library))
            _register_fake()
            return
        except OSError:
            pass  # a broken file from an interrupted build: build again
    build.mkdir(parents=True, exist_ok=True)
    if not os.access(build, os.W_OK):
        raise PermissionError(f"{build} is not writable")
    cpp_extension.load_inline(
        _NAMESPACE, [_SOURCE.replace("BITNET_NAMESPACE", _NAMESPACE)], build_directory=str(build),
        extra_cflags=["-O3", "-fopenmp", "-ffp-contract=off"], extra_ldflags=["-fopenmp"],
        is_python_module=False, no_implicit_headers=True,
    )
    _register_fake()


def _register_fake() -> None:
    """Shapes of the ops' outputs for ``torch.compile`` (fake tensors), so a compiled model keeps the op."""

    def fake(x: torch.Tensor, weights: list[torch.Tensor], scales: list[torch.Tensor],
             biases: list[torch.Tensor | None], out_features: list[int], isa: int) -> list[torch.Tensor]:
        return [x.new_empty(x.shape[0], n) for n in out_features]

    torch.library.register_fake(f"{_NAMESPACE}::ternary_linear", fake)
    torch.library.register_fake(f"{_NAMESPACE}::int4_rows",
                                lambda x, packed, scale_low: x.new_empty(x.shape[0], packed.shape[0]))
    torch.library.register_fake(f"{_NAMESPACE}::exact_top",
                                lambda logits, x, weight, path, inode, offset, k: logits.new_empty(logits.shape))


def _library_error() -> str | None:
    """None once the C++ kernels are loaded, else why they cannot be (the build is tried once per process)."""
    if _state["library"] is None:
        try:
            _build_library()
            _state["library"] = ""
        except Exception as error:  # noqa: BLE001 - a compiler, a file system or a linker: any failure means fallback
            _state["library"] = f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error) else ''}"
    return _state["library"] or None


def cpu_supports(kernel: str) -> bool:
    """Whether this CPU has the instructions of ``kernel`` (``vnni`` or ``avx2``); needs the compiled library."""
    return bool(getattr(torch.ops, _NAMESPACE).isa_supported(_ISA[kernel]))


def _unavailable(kernel: str) -> str | None:
    """Why ``kernel`` cannot run here, or None."""
    if kernel in _ISA:
        error = _library_error()
        if error is not None:
            return f"the C++ kernels could not be built or loaded ({error})"
        if not cpu_supports(kernel):
            return {"vnni": "this CPU lacks AVX-512 VNNI", "avx2": "this CPU lacks AVX2"}[kernel]
    if kernel == "int4pack" and not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
        return f"torch {torch.__version__} has no _weight_int4pack_mm_for_cpu"
    return None


def select_kernel(requested: str | None = None) -> str:
    """Choose the kernel of packed linears on CPU for this process and return it.

    ``requested`` (default: ``$BITNET_HF_KERNEL``, else ``auto``) is one of ``auto`` (the best that works here),
    ``vnni``, ``avx2``, ``int4pack``, ``torch``. A kernel that cannot run here gives one warning and the next one of
    that list: ``torch`` always runs. Called by the first packed forward on CPU; call it again to change the choice.
    """
    requested = (requested or os.environ.get(ENV_VAR) or "auto").strip().lower()
    if requested not in ("auto", *KERNELS):
        warnings.warn(f"{ENV_VAR}={requested!r} is not one of auto, {', '.join(KERNELS)}; using auto",
                      RuntimeWarning, stacklevel=2)
        requested = "auto"
    candidates = KERNELS if requested == "auto" else KERNELS[KERNELS.index(requested):]
    reasons = []
    for kernel in candidates:
        reason = _unavailable(kernel)
        if reason is None:
            break
        reasons.append(f"{kernel}: {reason}")
    if reasons:
        warnings.warn(f"bitnet-hf: packed linears fall back to the {kernel!r} kernel ({'; '.join(reasons)}); "
                      "results stay correct, only slower", RuntimeWarning, stacklevel=2)
    logger.info("bitnet-hf: packed linears on CPU use the %r kernel (requested %r)", kernel, requested)
    _state["kernel"] = kernel
    return kernel


def active_kernel() -> str | None:
    """The kernel chosen for this process, or None before the first packed forward on CPU."""
    return _state["kernel"]  # type: ignore[return-value]


def cpu_kernel() -> str:
    """The chosen kernel, choosing it on first use."""
    kernel = _state["kernel"]
    return kernel if kernel is not None else select_kernel()  # type: ignore[return-value]


def ternary_linear(x: torch.Tensor, layers: list, kernel: str) -> list[torch.Tensor]:
    """``y_i = layer_i(x)`` for packed linears ``layers`` that read the same ``x`` (float32 / bfloat16, CPU), in one
    call of the ``vnni`` or ``avx2`` kernel: the activations are quantized once."""
    op = _state.get("op") or _state.setdefault("op", getattr(torch.ops, _NAMESPACE).ternary_linear)
    lead = x.shape[:-1]
    outs = op(x.reshape(-1, x.shape[-1]), [m.weight for m in layers], [m.weight_scale for m in layers],  # type: ignore[operator]
              [m.bias for m in layers], [m.out_features for m in layers], _ISA[kernel])
    return [y.view(*lead, y.shape[-1]) for y in outs]


def exact_top(logits: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, source: tuple[str, int, int] | None,
              k: int) -> torch.Tensor:
    """``logits`` (n, V) with each row's ``k`` largest values (ties to the lower index) replaced by the exact products
    of ``x`` (n, in) with those rows of ``weight`` (V, in), in one C++ call (a block-maximum top-k, then the rows read
    with ``pread`` from ``source``, the file's (path, inode, byte offset) of the matrix, or taken from ``weight``
    where None; products summed in float32, rounded once to the logits' dtype). Needs the C++ library and AVX2
    (``vnni`` / ``avx2`` chosen)."""
    op = _state.get("exact_top") or _state.setdefault("exact_top", getattr(torch.ops, _NAMESPACE).exact_top)
    path, inode, offset = source or ("", 0, 0)
    return op(logits, x, weight, path, inode, offset, k)  # type: ignore[operator]


def int4_rows_weight(weight: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` (out, in) as the int4 matrix of :func:`int4_rows`: per group of 128 columns of a row, 16 levels from
    its min to its max, ``w ~ scale * q + low``; ``packed`` uint8 (out, in padded to 128 / 2), each 64 bytes one
    group (column ``128 g + i`` in the low nibble of byte ``i``, ``128 g + 64 + i`` in the high one), ``scale_low``
    float32 (out, groups, 2). Padding columns (code 0) take no part in a group's range. Computed ``chunk`` rows at a
    time (no float32 copy of the whole matrix)."""
    out_features, in_features = weight.shape
    padded = in_features + -in_features % 128
    packed = torch.empty(out_features, padded // 2, dtype=torch.uint8)
    scale_low = torch.empty(out_features, padded // 128, 2, dtype=torch.float32)
    for start in range(0, out_features, chunk):
        w = torch.nn.functional.pad(weight[start:start + chunk].float(), (0, padded - in_features))
        groups = w.view(w.shape[0], -1, 128)
        real = (torch.arange(padded) < in_features).view(1, -1, 128)
        low = torch.where(real, groups, torch.inf).amin(dim=-1)
        scale = ((torch.where(real, groups, -torch.inf).amax(dim=-1) - low) / 15).clamp(min=1e-12)
        q = ((groups - low[..., None]) / scale[..., None]).round().clamp(0, 15).where(real, 0).to(torch.uint8)
        q = q.view(-1, padded // 128, 2, 64)
        packed[start:start + chunk] = (q[:, :, 0] | (q[:, :, 1] << 4)).view(-1, padded // 2)
        scale_low[start:start + chunk] = torch.stack([scale, low], dim=-1)
    return packed, scale_low


def int4_rows(x: torch.Tensor, packed: torch.Tensor, scale_low: torch.Tensor) -> torch.Tensor:
    """``x @ W.T`` (any leading shape, float32 / bfloat16) for ``W`` held as :func:`int4_rows_weight` makes it, in one
    call of the AVX-512 VNNI kernel: ``x`` quantized per token to int8 as the ternary kernels do, integer dot products
    with the 4-bit codes per group, then ``(absmax / 127) * sum_g (scale_g * dot_g + low_g * sum_g(x_q))`` in float32.
    Needs ``vnni``."""
    op = _state.get("int4_rows") or _state.setdefault("int4_rows", getattr(torch.ops, _NAMESPACE).int4_rows)
    y = op(x.reshape(-1, x.shape[-1]), packed, scale_low)  # type: ignore[operator]
    return y.view(*x.shape[:-1], packed.shape[0])


def int4pack_weight(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Ternary ``q`` (out, in) as PyTorch's CPU int4pack weight and its scales/zeros for ``dtype`` activations:
    rows padded to a multiple of 16 and columns to 32 (zero weights), groups of 32 columns, each value
    ``(q + 8 - 8) * scale`` exactly as the ``torch`` path's ``(q * scale).to(dtype)``. ``scale``: one per tensor
    ``(1,)``, per row ``(out, 1)`` or per group of a multiple of 32 columns ``(out, groups)``."""
    out_features, in_features = q.shape
    n_pad, k_pad = -out_features % 16, -in_features % 32
    q = torch.nn.functional.pad(q.to(torch.int32) + 8, (0, k_pad, 0, n_pad), value=8)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    groups = q.shape[1] // 32
    per_row = scale.float().reshape(scale.shape[0] if scale.dim() > 1 else 1, -1).expand(out_features, -1)
    scales_zeros = torch.zeros(groups, q.shape[0], 2, dtype=dtype)
    scales_zeros[:, :out_features, 0] = per_row.repeat_interleave(groups // per_row.shape[1], dim=1).t().to(dtype)
    return packed, scales_zeros


def int4pack_linear(x: torch.Tensor, packed: torch.Tensor, scales_zeros: torch.Tensor, out_features: int
                    ) -> torch.Tensor:
    """``x @ W.T`` through ``_weight_int4pack_mm_for_cpu`` (``x`` already dequantized, any leading shape)."""
    rows = x.reshape(-1, x.shape[-1])
    k_pad = scales_zeros.shape[0] * 32 - rows.shape[1]
    if k_pad:
        rows = torch.nn.functional.pad(rows, (0, k_pad))
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows.contiguous(), packed, 32, scales_zeros)
    return y[:, :out_features].reshape(*x.shape[:-1], out_features)
