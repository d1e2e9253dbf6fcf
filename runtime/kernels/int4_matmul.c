/* e2edge int4 matmul for the CPU: onnxruntime's MatMulNBits (4 bits, block 32, int8
 * activations, accuracy level 4) computed over weights repacked for AVX-512 VNNI.
 *
 * Why: at 2 threads onnxruntime's MatMulNBits kernel streams a decode step's int4
 * weights at about 40 % of the host's read bandwidth (compute-bound on unpacking).
 * Here sixteen output columns share a register: for each block of 32 weights, eight
 * VPDPBUSD instructions (16 columns x 4 products each) take 256 packed bytes, the
 * activation's int8 codes broadcast four at a time, and one float multiply-add per
 * block applies both scales. The arithmetic is MatMulNBits' own (the same int8 codes,
 * the same integer sums, zero point 8), so only float summation order differs.
 *
 * Packed layout (numpy reference: runtime/kernels/int4_reference.py), per group of 16
 * columns g and block b, 256 bytes in 4 chunks c of 64: byte (j * 4 + t) of chunk c
 * holds column 16 g + j's weight 32 b + 4 c + t in its low nibble and weight
 * 32 b + 4 (c + 4) + t in its high nibble. Scales: [g][b][16] floats. Columns past N
 * are padding (code 8, scale 0).
 *
 * Op (onnxruntime's side: ort_custom_op.h): ai.e2edge::MatMulInt4Packed(A float [..., K],
 * B uint8 packed, scales float packed) -> Y float [..., N]; attributes K, N.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define E2_X86 1
#endif

#include "ort_custom_op.h"

#define E2_COLS 16   /* output columns per group */
#define E2_BLOCK 32  /* weights per block along K */
#define E2_GROUP_BYTES 256
#define E2_ROWS 4    /* activation rows computed per pass over the weights */

/* ---- packing (called by the runtime's load-time rewrite through ctypes) ---- */

/* B: MatMulNBits' [N][K/32][16] bytes (element 2i in byte i's low nibble); S: [N][K/32]. */
void e2_int4_pack(const uint8_t *B, const float *S, int64_t N, int64_t K, uint8_t *P, float *PS) {
  const int64_t nb = K / E2_BLOCK, ng = (N + E2_COLS - 1) / E2_COLS;
  for (int64_t g = 0; g < ng; g++) {
    for (int64_t b = 0; b < nb; b++) {
      uint8_t *out = P + (g * nb + b) * E2_GROUP_BYTES;
      float *scales = PS + (g * nb + b) * E2_COLS;
      for (int j = 0; j < E2_COLS; j++) {
        const int64_t n = g * E2_COLS + j;
        const uint8_t *blk = n < N ? B + (n * nb + b) * (E2_BLOCK / 2) : NULL;
        scales[j] = blk ? S[n * nb + b] : 0.0f;
        for (int c = 0; c < 4; c++) {
          for (int t = 0; t < 4; t++) {
            const int lo_k = 4 * c + t, hi_k = 4 * (c + 4) + t;
            uint8_t lo = 8, hi = 8;
            if (blk) {
              lo = (blk[lo_k / 2] >> (4 * (lo_k & 1))) & 15;
              hi = (blk[hi_k / 2] >> (4 * (hi_k & 1))) & 15;
            }
            out[c * 64 + j * 4 + t] = (uint8_t)(lo | (hi << 4));
          }
        }
      }
    }
  }
}

/* ---- activations: MatMulNBits' int8 blocks (scale = max|a| / 127, round half to even) ---- */

typedef struct {
  int8_t *codes;     /* [rows][K] */
  float *scales;     /* [rows][K/32] */
  int32_t *offsets;  /* [rows][K/32]: 8 * sum of the block's codes (the zero point's share) */
} E2Activations;

static void quantize_block_portable(const float *x, int8_t *codes, float *scale, int32_t *offset) {
  float amax = 0.0f;
  for (int i = 0; i < E2_BLOCK; i++) amax = fmaxf(amax, fabsf(x[i]));
  const float s = amax / 127.0f, inverse = s != 0.0f ? 1.0f / s : 0.0f;
  int32_t sum = 0;
  for (int i = 0; i < E2_BLOCK; i++) {
    const int32_t code = (int32_t)nearbyintf(x[i] * inverse);
    codes[i] = (int8_t)code;
    sum += code;
  }
  *scale = s;
  *offset = 8 * sum;
}

#ifdef E2_X86
__attribute__((target("avx512f,avx512bw,avx512vnni")))
static void quantize_block_vnni(const float *x, int8_t *codes, float *scale, int32_t *offset) {
  const __m512 a = _mm512_loadu_ps(x), b = _mm512_loadu_ps(x + 16);
  const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
  const float s = amax / 127.0f, inverse = s != 0.0f ? 1.0f / s : 0.0f;
  const __m512 k = _mm512_set1_ps(inverse);
  /* cvtps rounds half to even (the default MXCSR mode), as MatMulNBits does */
  const __m512i qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, k));
  const __m512i qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, k));
  _mm_storeu_si128((__m128i *)codes, _mm512_cvtepi32_epi8(qa));
  _mm_storeu_si128((__m128i *)(codes + 16), _mm512_cvtepi32_epi8(qb));
  *scale = s;
  *offset = 8 * _mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb));
}
#endif

static void quantize_rows(const float *a, int64_t rows, int64_t K, E2Activations *q, int fast) {
  const int64_t nb = K / E2_BLOCK;
  for (int64_t r = 0; r < rows; r++) {
    for (int64_t b = 0; b < nb; b++) {
      const float *x = a + r * K + b * E2_BLOCK;
      int8_t *codes = q->codes + r * K + b * E2_BLOCK;
#ifdef E2_X86
      if (fast) {
        quantize_block_vnni(x, codes, &q->scales[r * nb + b], &q->offsets[r * nb + b]);
        continue;
      }
#endif
      (void)fast;
      quantize_block_portable(x, codes, &q->scales[r * nb + b], &q->offsets[r * nb + b]);
    }
  }
}

/* The activations' buffers, one set per thread and grown as needed: a decode step
 * calls the op ~120 times, and malloc/free there is measurable. */
static _Thread_local struct { void *memory; size_t bytes; } scratch;

static int activations_for(int64_t M, int64_t K, E2Activations *q) {
  const int64_t nb = K / E2_BLOCK;
  const size_t codes = (size_t)(M * K + 63) & ~(size_t)63, floats = sizeof(float) * (size_t)(M * nb);
  const size_t bytes = codes + 2 * floats;
  if (bytes > scratch.bytes) {
    void *grown = realloc(scratch.memory, bytes);
    if (!grown) return 1;
    scratch.memory = grown;
    scratch.bytes = bytes;
  }
  q->codes = (int8_t *)scratch.memory;
  q->scales = (float *)((char *)scratch.memory + codes);
  q->offsets = (int32_t *)((char *)scratch.memory + codes + floats);
  return 0;
}

/* ---- the product, groups [g0, g1) of rows [r0, r0 + rows) ---- */

static void groups_portable(const E2Activations *q, const uint8_t *P, const float *PS,
                            int64_t K, int64_t N, float *y, int64_t r0, int rows,
                            int64_t g0, int64_t g1) {
  const int64_t nb = K / E2_BLOCK;
  for (int64_t g = g0; g < g1; g++) {
    for (int r = 0; r < rows; r++) {
      const int8_t *codes = q->codes + (r0 + r) * K;
      float acc[E2_COLS] = {0};
      for (int64_t b = 0; b < nb; b++) {
        const uint8_t *w = P + (g * nb + b) * E2_GROUP_BYTES;
        const float *ws = PS + (g * nb + b) * E2_COLS;
        for (int j = 0; j < E2_COLS; j++) {
          int32_t dot = 0;
          for (int c = 0; c < 4; c++) {
            for (int t = 0; t < 4; t++) {
              const uint8_t byte = w[c * 64 + j * 4 + t];
              dot += (byte & 15) * codes[b * E2_BLOCK + 4 * c + t];
              dot += (byte >> 4) * codes[b * E2_BLOCK + 4 * (c + 4) + t];
            }
          }
          dot -= q->offsets[(r0 + r) * nb + b];
          acc[j] += (float)dot * (ws[j] * q->scales[(r0 + r) * nb + b]);
        }
      }
      for (int j = 0; j < E2_COLS && g * E2_COLS + j < N; j++) y[(r0 + r) * N + g * E2_COLS + j] = acc[j];
    }
  }
}

#ifdef E2_X86
static inline int32_t four_codes(const int8_t *codes) {
  int32_t word;
  memcpy(&word, codes, sizeof word);
  return word;
}

__attribute__((target("avx512f,avx512bw,avx512vnni")))
static inline void groups_vnni_rows(const E2Activations *q, const uint8_t *P, const float *PS,
                                    int64_t K, int64_t N, float *y, int64_t r0, const int rows,
                                    int64_t g0, int64_t g1) {
  const int64_t nb = K / E2_BLOCK;
  const __m512i nibble = _mm512_set1_epi8(15);
  for (int64_t g = g0; g < g1; g++) {
    __m512 acc[E2_ROWS];
    for (int r = 0; r < E2_ROWS; r++) acc[r] = _mm512_setzero_ps();
    const uint8_t *w = P + g * nb * E2_GROUP_BYTES;
    const float *ws = PS + g * nb * E2_COLS;
    for (int64_t b = 0; b < nb; b++, w += E2_GROUP_BYTES, ws += E2_COLS) {
      __m512i low[E2_ROWS], high[E2_ROWS];
      for (int r = 0; r < E2_ROWS; r++) low[r] = high[r] = _mm512_setzero_si512();
      for (int c = 0; c < 4; c++) {
        const __m512i packed = _mm512_loadu_si512((const void *)(w + 64 * c));
        const __m512i lo = _mm512_and_si512(packed, nibble);
        const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(packed, 4), nibble);
        for (int r = 0; r < E2_ROWS; r++) {
          if (r >= rows) break;
          const int8_t *codes = q->codes + (r0 + r) * K + b * E2_BLOCK;
          low[r] = _mm512_dpbusd_epi32(low[r], lo, _mm512_set1_epi32(four_codes(codes + 4 * c)));
          high[r] = _mm512_dpbusd_epi32(high[r], hi, _mm512_set1_epi32(four_codes(codes + 4 * c + 16)));
        }
      }
      const __m512 wscale = _mm512_loadu_ps(ws);
      for (int r = 0; r < E2_ROWS; r++) {
        if (r >= rows) break;
        const int64_t at = (r0 + r) * nb + b;
        const __m512i dot = _mm512_sub_epi32(_mm512_add_epi32(low[r], high[r]),
                                             _mm512_set1_epi32(q->offsets[at]));
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot),
                                 _mm512_mul_ps(wscale, _mm512_set1_ps(q->scales[at])), acc[r]);
      }
    }
    const int64_t n0 = g * E2_COLS;
    const int64_t valid = N - n0 < E2_COLS ? N - n0 : E2_COLS;
    const __mmask16 mask = (__mmask16)((1u << valid) - 1u);
    for (int r = 0; r < E2_ROWS; r++) {
      if (r >= rows) break;
      _mm512_mask_storeu_ps(y + (r0 + r) * N + n0, mask, acc[r]);
    }
  }
}

__attribute__((target("avx512f,avx512bw,avx512vnni")))
static void groups_vnni(const E2Activations *q, const uint8_t *P, const float *PS, int64_t K,
                        int64_t N, float *y, int64_t r0, int rows, int64_t g0, int64_t g1) {
  /* constant row counts, so the compiler unrolls the row loops */
  switch (rows) {
    case 1: groups_vnni_rows(q, P, PS, K, N, y, r0, 1, g0, g1); break;
    case 2: groups_vnni_rows(q, P, PS, K, N, y, r0, 2, g0, g1); break;
    case 3: groups_vnni_rows(q, P, PS, K, N, y, r0, 3, g0, g1); break;
    default: groups_vnni_rows(q, P, PS, K, N, y, r0, 4, g0, g1); break;
  }
}
#endif

/* 1 where this CPU runs the VNNI kernel (the rewrite uses the op only there); 0 where
 * only the portable loop would (correct, slower than onnxruntime's own kernel). */
int e2_int4_fast_path(void) {
#ifdef E2_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vnni");
#else
  return 0;
#endif
}

typedef struct {
  const E2Activations *q;
  const uint8_t *P;
  const float *PS;
  int64_t K, N, M, groups_per_task, groups;
  float *y;
  int fast;
} E2Work;

/* one task: a run of column groups, for every row in passes of E2_ROWS */
static void run_task(void *data, size_t task) {
  const E2Work *w = (const E2Work *)data;
  const int64_t g0 = (int64_t)task * w->groups_per_task;
  const int64_t g1 = g0 + w->groups_per_task < w->groups ? g0 + w->groups_per_task : w->groups;
  for (int64_t r0 = 0; r0 < w->M; r0 += E2_ROWS) {
    const int rows = (int)(w->M - r0 < E2_ROWS ? w->M - r0 : E2_ROWS);
#ifdef E2_X86
    if (w->fast) {
      groups_vnni(w->q, w->P, w->PS, w->K, w->N, w->y, r0, rows, g0, g1);
      continue;
    }
#endif
    groups_portable(w->q, w->P, w->PS, w->K, w->N, w->y, r0, rows, g0, g1);
  }
}

static int64_t task_groups(int64_t groups) {
  /* ~16 tasks or more for onnxruntime's pool to balance, 4+ groups (64 columns) each */
  int64_t per = groups / 16;
  return per < 4 ? 4 : per;
}

/* The whole product for M rows, single-threaded (tests and the reference check).
 * fast: 1 = the VNNI kernel (only where e2_int4_fast_path()), 0 = the portable loop. */
int e2_int4_matmul(const float *a, int64_t M, int64_t K, const uint8_t *P, const float *PS,
                   int64_t N, float *y, int fast) {
  if (K % E2_BLOCK != 0 || (fast && !e2_int4_fast_path())) return 1;
  E2Activations q;
  if (activations_for(M, K, &q)) return 2;
  quantize_rows(a, M, K, &q, fast);
  const int64_t groups = (N + E2_COLS - 1) / E2_COLS;
  E2Work work = {&q, P, PS, K, N, M, groups, groups, y, fast};
  run_task(&work, 0);
  return 0;
}

/* ---------------- the onnxruntime op ---------------- */

static OrtStatus *create_kernel(const E2CustomOp *op, const OrtApi *api, const OrtKernelInfo *info, void **out) {
  (void)op;
  int64_t K = 0, N = 0;
  E2_TRY(e2_k_and_n(api, info, &K, &N));
  if (K <= 0 || N <= 0 || K % E2_BLOCK != 0)
    return e2_fail(api, E2_ORT_INVALID_ARGUMENT, "MatMulInt4Packed: K must be a positive multiple of 32 and N positive");
  E2Kernel *kernel = malloc(sizeof(E2Kernel));
  if (!kernel) return e2_fail(api, E2_ORT_FAIL, "MatMulInt4Packed: out of memory");
  kernel->api = api; kernel->K = K; kernel->N = N; kernel->fast = e2_int4_fast_path();
  *out = kernel;
  return NULL;
}

static OrtStatus *compute(void *opaque, OrtKernelContext *context) {
  const E2Kernel *kernel = (const E2Kernel *)opaque;
  const OrtApi *api = kernel->api;
  int64_t dims[3][E2_MAX_RANK];
  size_t rank[3];
  void *data[3];
  E2_TRY(e2_inputs(api, context, 3, dims, rank, data));
  const int64_t K = kernel->K, N = kernel->N, nb = K / E2_BLOCK, groups = (N + E2_COLS - 1) / E2_COLS;
  int64_t packed = 1, scales = 1, M = 1;
  for (size_t d = 0; d < rank[1]; d++) packed *= dims[1][d];
  for (size_t d = 0; d < rank[2]; d++) scales *= dims[2][d];
  if (rank[0] < 1 || dims[0][rank[0] - 1] != K)
    return e2_fail(api, E2_ORT_INVALID_ARGUMENT, "MatMulInt4Packed: A's last dimension is not K");
  if (packed != groups * nb * E2_GROUP_BYTES || scales != groups * nb * E2_COLS)
    return e2_fail(api, E2_ORT_INVALID_ARGUMENT, "MatMulInt4Packed: packed weights do not match K and N");
  float *y = NULL;
  E2_TRY(e2_matmul_output(api, context, dims[0], rank[0], N, &y, &M));
  if (M == 0) return NULL;
  E2Activations q;
  if (activations_for(M, K, &q)) return e2_fail(api, E2_ORT_FAIL, "MatMulInt4Packed: out of memory");
  quantize_rows((const float *)data[0], M, K, &q, kernel->fast);
  const int64_t per = task_groups(groups);
  E2Work work = {&q, (const uint8_t *)data[1], (const float *)data[2], K, N, M, per, groups, y, kernel->fast};
  return e2_parallel_for(api, context, run_task, (size_t)((groups + per - 1) / per), &work);
}

static const char *op_name(const E2CustomOp *op) { (void)op; return "MatMulInt4Packed"; }
static int input_type(const E2CustomOp *op, size_t i) { (void)op; return i == 1 ? E2_UINT8 : E2_FLOAT; }
static size_t input_count(const E2CustomOp *op) { (void)op; return 3; }
static void *create_kernel_v1(const E2CustomOp *op, const OrtApi *api, const OrtKernelInfo *info) {
  void *kernel = NULL;
  return create_kernel(op, api, info, &kernel) ? NULL : kernel;
}
static void compute_v1(void *kernel, OrtKernelContext *context) { (void)compute(kernel, context); }

static const E2CustomOp MATMUL_INT4_PACKED = {
  16, create_kernel_v1, op_name, e2_cpu_provider, input_type, input_count, e2_float_type, e2_one_count,
  compute_v1, e2_destroy_kernel, e2_required, e2_required, e2_default_memory, e2_one, e2_one, e2_one, e2_one,
  create_kernel, compute,
};

const E2CustomOp *e2_int4_op(void) { return &MATMUL_INT4_PACKED; }
