/* e2edge fp32 matmul for the CPU: Y = A B for a constant B [K, N], over B repacked in
 * panels of 16 columns, for AVX-512.
 *
 * Why: a decode step reads every weight once, so its speed is the rate the weights
 * stream in. Here a task is two whole panels, one contiguous run of K x 128 bytes read
 * front to back, handed to onnxruntime's own thread pool (ParallelFor), with no software
 * prefetch (the hardware prefetcher did better alone). Measured end to end against
 * onnxruntime's MatMul (MLAS): the same greedy tokens, decode about 1.1-1.2x faster at 2
 * threads, prefill unchanged (docs/results/2026-12-07-fp32-kernel).
 *
 * Packed layout (numpy reference: runtime/kernels/fp32_reference.py): panel g holds
 * columns 16 g .. 16 g + 15, row by row: P[(g K + k) 16 + j] = B[k][16 g + j]; columns
 * past N are zero. The kernel computes F32_ROWS rows of A against two panels at a time
 * (12 accumulators, one multiply-add chain each, k in order), so every row's sums are
 * formed in the same order whichever path computes it; a portable loop, the same order,
 * elsewhere.
 *
 * Op (onnxruntime's side: ort_custom_op.h): ai.e2edge::MatMulF32Packed(A float [..., K],
 * P float packed) -> Y float [..., N]; attributes K, N.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define F32_X86 1
#endif

#include "ort_custom_op.h"

#define F32_COLS 16  /* columns per panel */
#define F32_ROWS 6   /* rows of A per pass over a panel pair */

/* ---- packing (called by the runtime's load-time rewrite through ctypes) ---- */

void e2_fp32_pack(const float *B, int64_t K, int64_t N, float *P) {
  const int64_t panels = (N + F32_COLS - 1) / F32_COLS;
  for (int64_t g = 0; g < panels; g++)
    for (int64_t k = 0; k < K; k++)
      for (int j = 0; j < F32_COLS; j++) {
        const int64_t n = g * F32_COLS + j;
        P[(g * K + k) * F32_COLS + j] = n < N ? B[k * N + n] : 0.0f;
      }
}

/* ---- the product of rows [0, M) and panels [g, g + count), count 1 or 2 ---- */

static void panels_portable(const float *a, const float *P, int64_t K, int64_t N, float *y,
                            int64_t M, int64_t g, int count) {
  for (int64_t r = 0; r < M; r++) {
    for (int h = 0; h < count; h++) {
      const float *p = P + (g + h) * K * F32_COLS;
      float acc[F32_COLS] = {0};
      for (int64_t k = 0; k < K; k++)
        for (int j = 0; j < F32_COLS; j++) acc[j] = fmaf(a[r * K + k], p[k * F32_COLS + j], acc[j]);
      for (int j = 0; j < F32_COLS && (g + h) * F32_COLS + j < N; j++) y[r * N + (g + h) * F32_COLS + j] = acc[j];
    }
  }
}

#ifdef F32_X86
__attribute__((target("avx512f")))
static inline void block_avx512(const float *a, const float *P, int64_t K, int64_t N, float *y,
                                const int rows, int64_t g, const int two) {
  __m512 c0[F32_ROWS], c1[F32_ROWS];
  for (int r = 0; r < F32_ROWS; r++) c0[r] = c1[r] = _mm512_setzero_ps();
  const float *p0 = P + g * K * F32_COLS, *p1 = p0 + K * F32_COLS;
  for (int64_t k = 0; k < K; k++) {
    const __m512 w0 = _mm512_loadu_ps(p0 + k * F32_COLS);
    const __m512 w1 = two ? _mm512_loadu_ps(p1 + k * F32_COLS) : w0;
    for (int r = 0; r < F32_ROWS; r++) {
      if (r >= rows) break;
      const __m512 x = _mm512_set1_ps(a[r * K + k]);
      c0[r] = _mm512_fmadd_ps(x, w0, c0[r]);
      if (two) c1[r] = _mm512_fmadd_ps(x, w1, c1[r]);
    }
  }
  for (int h = 0; h <= two; h++) {
    const int64_t n0 = (g + h) * F32_COLS;
    const int64_t valid = N - n0 < F32_COLS ? N - n0 : F32_COLS;
    const __mmask16 mask = (__mmask16)((1u << valid) - 1u);
    for (int r = 0; r < F32_ROWS; r++) {
      if (r >= rows) break;
      _mm512_mask_storeu_ps(y + r * N + n0, mask, h ? c1[r] : c0[r]);
    }
  }
}

__attribute__((target("avx512f")))
static void panels_avx512(const float *a, const float *P, int64_t K, int64_t N, float *y,
                          int64_t M, int64_t g, int count) {
  const int two = count == 2;
  for (int64_t r0 = 0; r0 < M; r0 += F32_ROWS) {
    const float *ar = a + r0 * K;
    float *yr = y + r0 * N;
    /* constant row counts, so the compiler unrolls the row loops */
    switch (M - r0 < F32_ROWS ? M - r0 : F32_ROWS) {
      case 1: block_avx512(ar, P, K, N, yr, 1, g, two); break;
      case 2: block_avx512(ar, P, K, N, yr, 2, g, two); break;
      case 3: block_avx512(ar, P, K, N, yr, 3, g, two); break;
      case 4: block_avx512(ar, P, K, N, yr, 4, g, two); break;
      case 5: block_avx512(ar, P, K, N, yr, 5, g, two); break;
      default: block_avx512(ar, P, K, N, yr, 6, g, two); break;
    }
  }
}
#endif

/* 1 where this CPU runs the AVX-512 kernel (the rewrite uses the op only there); 0 where
 * only the portable loop would (correct, slower than onnxruntime's own MatMul). */
int e2_fp32_fast_path(void) {
#ifdef F32_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f");
#else
  return 0;
#endif
}

typedef struct {
  const float *a, *P;
  int64_t K, N, M, panels;
  float *y;
  int fast;
} F32Work;

/* one task: panel pair `task` (the last may be a single panel), every row */
static void run_pair(void *data, size_t task) {
  const F32Work *w = (const F32Work *)data;
  const int64_t g = 2 * (int64_t)task;
  const int count = g + 1 < w->panels ? 2 : 1;
#ifdef F32_X86
  if (w->fast) {
    panels_avx512(w->a, w->P, w->K, w->N, w->y, w->M, g, count);
    return;
  }
#endif
  panels_portable(w->a, w->P, w->K, w->N, w->y, w->M, g, count);
}

/* The whole product for M rows, single-threaded (tests and the reference check).
 * fast: 1 = the AVX-512 kernel (only where e2_fp32_fast_path()), 0 = the portable loop. */
int e2_fp32_matmul(const float *a, int64_t M, int64_t K, const float *P, int64_t N, float *y, int fast) {
  if (fast && !e2_fp32_fast_path()) return 1;
  F32Work work = {a, P, K, N, M, (N + F32_COLS - 1) / F32_COLS, y, fast};
  for (int64_t task = 0; 2 * task < work.panels; task++) run_pair(&work, (size_t)task);
  return 0;
}

/* ---------------- the onnxruntime op ---------------- */

static OrtStatus *create_kernel(const E2CustomOp *op, const OrtApi *api, const OrtKernelInfo *info, void **out) {
  (void)op;
  int64_t K = 0, N = 0;
  E2_TRY(e2_k_and_n(api, info, &K, &N));
  if (K <= 0 || N <= 0)
    return e2_fail(api, E2_ORT_INVALID_ARGUMENT, "MatMulF32Packed: K and N must be positive");
  E2Kernel *kernel = malloc(sizeof(E2Kernel));
  if (!kernel) return e2_fail(api, E2_ORT_FAIL, "MatMulF32Packed: out of memory");
  kernel->api = api; kernel->K = K; kernel->N = N; kernel->fast = e2_fp32_fast_path();
  *out = kernel;
  return NULL;
}

static OrtStatus *compute(void *opaque, OrtKernelContext *context) {
  const E2Kernel *kernel = (const E2Kernel *)opaque;
  const OrtApi *api = kernel->api;
  int64_t dims[2][E2_MAX_RANK];
  size_t rank[2];
  void *data[2];
  E2_TRY(e2_inputs(api, context, 2, dims, rank, data));
  const int64_t K = kernel->K, N = kernel->N, panels = (N + F32_COLS - 1) / F32_COLS;
  int64_t packed = 1, M = 1;
  for (size_t d = 0; d < rank[1]; d++) packed *= dims[1][d];
  if (rank[0] < 1 || dims[0][rank[0] - 1] != K)
    return e2_fail(api, E2_ORT_INVALID_ARGUMENT, "MatMulF32Packed: A's last dimension is not K");
  if (packed != panels * K * F32_COLS)
    return e2_fail(api, E2_ORT_INVALID_ARGUMENT, "MatMulF32Packed: packed weights do not match K and N");
  float *y = NULL;
  E2_TRY(e2_matmul_output(api, context, dims[0], rank[0], N, &y, &M));
  if (M == 0) return NULL;
  F32Work work = {(const float *)data[0], (const float *)data[1], K, N, M, panels, y, kernel->fast};
  return e2_parallel_for(api, context, run_pair, (size_t)((panels + 1) / 2), &work);
}

static const char *op_name(const E2CustomOp *op) { (void)op; return "MatMulF32Packed"; }
static size_t input_count(const E2CustomOp *op) { (void)op; return 2; }
static void *create_kernel_v1(const E2CustomOp *op, const OrtApi *api, const OrtKernelInfo *info) {
  void *kernel = NULL;
  return create_kernel(op, api, info, &kernel) ? NULL : kernel;
}
static void compute_v1(void *kernel, OrtKernelContext *context) { (void)compute(kernel, context); }

static const E2CustomOp MATMUL_F32_PACKED = {
  16, create_kernel_v1, op_name, e2_cpu_provider, e2_float_type, input_count, e2_float_type, e2_one_count,
  compute_v1, e2_destroy_kernel, e2_required, e2_required, e2_default_memory, e2_one, e2_one, e2_one, e2_one,
  create_kernel, compute,
};

const E2CustomOp *e2_fp32_op(void) { return &MATMUL_F32_PACKED; }
