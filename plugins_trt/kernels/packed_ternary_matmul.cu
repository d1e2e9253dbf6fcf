// Packed ternary matmul: Y (M, N) = X (M, K) @ dequant(W).T, W in the MatMulNBits bits=2
// layout of runtime/ternary_layout.py, read as 32-bit words:
//
//   W      (N, wpr) uint32, wpr = K_pad / 16 words per row, 16 codes per word, code i of a
//          word in bits 2i..2i+1 (4 codes per byte, low bits first, little-endian words)
//   S      (N, n_blocks) float32 scales, n_blocks = wpr >> wpb_log2, where 2^wpb_log2 =
//          block_size / 16 words per block (block_size is a power of two)
//   dequant(code) = (code - 2) * S[n, block]
//
// Entry points (extern "C", launched by plugins_trt/kernels.py):
//   ternary_gemv_{f16,f32}_m{1,2,4,8}   decode path, M <= 8 tokens per block (grid.y walks
//                                       further chunks of MT tokens), fp32 accumulation
//   quantize_int8_{f16,f32}             per-token absmax int8 activations for W2A8
//   ternary_gemv_w2a8_{f16,f32}_m*      W2A8 path: int8 activations, dp4a, int32 per word
//   ternary_gemm_f16                    tiled path for prefill / image tokens, tensor cores
//                                       through the sm_70 WMMA PTX, fp32 accumulation
//   ternary_gemm_f32                    tiled path for fp32 activations (CUDA cores)
#include "common.cuh"

#define GEMV_THREADS 128
#define GEMV_WARPS (GEMV_THREADS / 32)

// ---- activation loads -----------------------------------------------------------------
// Sixteen halves x[16j .. 16j+15] of one row as pairs (x_i, x_{i+8}), i = 0..7: the order in
// which ternary_pair() hands out codes. Elements at or past K read as zero.
__device__ __forceinline__ void load_x_pairs(const f16_t* __restrict__ x, int j, int K,
                                             u32 (&xp)[8]) {
    const int k0 = 16 * j;
    if (k0 + 16 <= K && (K & 7) == 0) {  // whole group, 16-byte aligned rows
        const uint4 a = __ldg(reinterpret_cast<const uint4*>(x + k0));
        const uint4 b = __ldg(reinterpret_cast<const uint4*>(x + k0 + 8));
        xp[0] = prmt(a.x, b.x, 0x5410);
        xp[1] = prmt(a.x, b.x, 0x7632);
        xp[2] = prmt(a.y, b.y, 0x5410);
        xp[3] = prmt(a.y, b.y, 0x7632);
        xp[4] = prmt(a.z, b.z, 0x5410);
        xp[5] = prmt(a.z, b.z, 0x7632);
        xp[6] = prmt(a.w, b.w, 0x5410);
        xp[7] = prmt(a.w, b.w, 0x7632);
    } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const u32 lo = k0 + i < K ? __ldg(x + k0 + i) : 0u;
            const u32 hi = k0 + i + 8 < K ? __ldg(x + k0 + i + 8) : 0u;
            xp[i] = lo | (hi << 16);
        }
    }
}

__device__ __forceinline__ void load_x16(const float* __restrict__ x, int j, int K,
                                         float (&xv)[16]) {
    const int k0 = 16 * j;
    if (k0 + 16 <= K && (K & 3) == 0) {
        ldg_f32x16(x + k0, xv);
    } else {
#pragma unroll
        for (int i = 0; i < 16; ++i) xv[i] = k0 + i < K ? __ldg(x + k0 + i) : 0.0f;
    }
}

__device__ __forceinline__ void store_out(f16_t* y, float v) { *y = f32_to_f16(v); }
__device__ __forceinline__ void store_out(float* y, float v) { *y = v; }
__device__ __forceinline__ float load_in(const f16_t* x) { return f16_to_f32(__ldg(x)); }
__device__ __forceinline__ float load_in(const float* x) { return __ldg(x); }

// Sum the per-thread partials acc[R][MT] over the block and write Y[m0 + m, n0 + r].
template <int MT, int R, typename OutT>
__device__ __forceinline__ void gemv_block_store(float (&acc)[R][MT], OutT* __restrict__ Y,
                                                 const float* __restrict__ token_scale,
                                                 int m0, int mt, int n0, int N) {
    __shared__ float red[GEMV_WARPS][R * MT];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    float v[R * MT];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int m = 0; m < MT; ++m) v[r * MT + m] = acc[r][m];
    warp_reduce_scatter<R * MT>(v);
    if ((lane & (32 / (R * MT) - 1)) == 0) red[warp][warp_scatter_index<R * MT>(lane)] = v[0];
    __syncthreads();
    if (threadIdx.x < R * MT) {
        const int r = threadIdx.x / MT;
        const int m = threadIdx.x % MT;
        const int n = n0 + r;
        if (n < N && m < mt) {
            float total = 0.0f;
#pragma unroll
            for (int w = 0; w < GEMV_WARPS; ++w) total += red[w][threadIdx.x];
            if (token_scale != 0) total *= token_scale[m0 + m];
            store_out(Y + (size_t)(m0 + m) * N + n, total);
        }
    }
}

// ---- GEMV, fp16 activations (W2A16) ----------------------------------------------------
// Block: R output rows x MT tokens; its 128 threads split the K words of those rows. Per
// word the 8 (code - 2) pairs are exact in fp16, so x * value is exact; the 8-term partial
// per half lane is summed in fp16, then scaled and accumulated in fp32.
template <int MT, int R>
__device__ __forceinline__ void ternary_gemv_f16(const f16_t* __restrict__ X,
                                                 const u32* __restrict__ W,
                                                 const float* __restrict__ S,
                                                 f16_t* __restrict__ Y, int M, int K, int N,
                                                 int wpr, int wpb_log2) {
    const int n0 = blockIdx.x * R;
    const int m0 = blockIdx.y * MT;
    const int mt = min(MT, M - m0);
    const int n_blocks = wpr >> wpb_log2;
    const int kw = min(wpr, (K + 15) >> 4);  // words past kw hold padding codes only
    X += (size_t)m0 * K;

    float acc[R][MT];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int m = 0; m < MT; ++m) acc[r][m] = 0.0f;

    // One token (decode): nothing to reuse a decoded word for, so each word is decoded where
    // it is used, which keeps the registers (and so the blocks per SM) for more loads in flight.
#pragma unroll(MT == 1 ? 1 : 2)
    for (int j = threadIdx.x; j < kw; j += GEMV_THREADS) {
        u32 word[R];
        u32 v[MT == 1 ? 1 : R][8];
        float s[R];
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const int n = n0 + r;
            word[r] = n < N ? __ldg(W + (size_t)n * wpr + j) : TERNARY_ZERO_WORD;
            s[r] = n < N ? __ldg(S + (size_t)n * n_blocks + (j >> wpb_log2)) : 0.0f;
            if (MT > 1) {
#pragma unroll
                for (int i = 0; i < 8; ++i) v[MT == 1 ? 0 : r][i] = ternary_pair(word[r], i);
            }
        }
#pragma unroll
        for (int m = 0; m < MT; ++m) {
            if (m < mt) {
                u32 xp[8];
                load_x_pairs(X + (size_t)m * K, j, K, xp);
#pragma unroll
                for (int r = 0; r < R; ++r) {
                    u32 h = 0u;
#pragma unroll
                    for (int i = 0; i < 8; ++i)
                        h = hfma2(xp[i], MT == 1 ? ternary_pair(word[r], i) : v[MT == 1 ? 0 : r][i], h);
                    float lo, hi;
                    f16x2_to_f32(h, lo, hi);
                    acc[r][m] = fmaf(s[r], lo + hi, acc[r][m]);
                }
            }
        }
    }
    gemv_block_store<MT, R>(acc, Y, (const float*)0, m0, mt, n0, N);
}

// ---- GEMV, fp32 activations ------------------------------------------------------------
template <int MT, int R>
__device__ __forceinline__ void ternary_gemv_f32(const float* __restrict__ X,
                                                 const u32* __restrict__ W,
                                                 const float* __restrict__ S,
                                                 float* __restrict__ Y, int M, int K, int N,
                                                 int wpr, int wpb_log2) {
    const int n0 = blockIdx.x * R;
    const int m0 = blockIdx.y * MT;
    const int mt = min(MT, M - m0);
    const int n_blocks = wpr >> wpb_log2;
    const int kw = min(wpr, (K + 15) >> 4);
    X += (size_t)m0 * K;

    float acc[R][MT];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int m = 0; m < MT; ++m) acc[r][m] = 0.0f;

    for (int j = threadIdx.x; j < kw; j += GEMV_THREADS) {
        u32 word[R];
        float s[R];
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const int n = n0 + r;
            word[r] = n < N ? __ldg(W + (size_t)n * wpr + j) : TERNARY_ZERO_WORD;
            s[r] = n < N ? __ldg(S + (size_t)n * n_blocks + (j >> wpb_log2)) : 0.0f;
        }
#pragma unroll
        for (int m = 0; m < MT; ++m) {
            if (m < mt) {
                float xv[16];
                load_x16(X + (size_t)m * K, j, K, xv);
#pragma unroll
                for (int r = 0; r < R; ++r) {
                    float partial = 0.0f;
#pragma unroll
                    for (int i = 0; i < 16; ++i)
                        partial = fmaf(xv[i], ternary_value(word[r], i), partial);
                    acc[r][m] = fmaf(s[r], partial, acc[r][m]);
                }
            }
        }
    }
    gemv_block_store<MT, R>(acc, Y, (const float*)0, m0, mt, n0, N);
}

// ---- W2A8: int8 activations, one absmax scale per token (BitNet's W2A8) ---------------
// Xq (M, K_pad) int8, permuted within each group of 16 so that int32 lane i of the group
// holds x[i], x[4+i], x[8+i], x[12+i]: the bytes of (word >> 2i) & 0x03030303 are codes
// i, 4+i, 8+i, 12+i, so four dp4a give sum(code * x) for the word.
template <typename InT>
__device__ __forceinline__ void quantize_int8(const InT* __restrict__ X,
                                              signed char* __restrict__ Xq,
                                              float* __restrict__ token_scale, int K,
                                              int K_pad) {
    __shared__ float red[32];
    const int m = blockIdx.x;
    const InT* x = X + (size_t)m * K;
    float amax = 0.0f;
    for (int k = threadIdx.x; k < K; k += blockDim.x) amax = fmaxf(amax, fabsf(load_in(x + k)));
    amax = warp_max(amax);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = amax;
    __syncthreads();
    if (threadIdx.x < 32) {
        float v = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.0f;
        v = warp_max(v);
        if (threadIdx.x == 0) red[0] = v;
    }
    __syncthreads();
    amax = red[0];
    if (threadIdx.x == 0) token_scale[m] = amax / 127.0f;
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    for (int p = threadIdx.x; p < K_pad; p += blockDim.x) {
        const int r = p & 15;
        const int k = (p & ~15) + 4 * (r & 3) + (r >> 2);
        float q = 0.0f;
        if (k < K) q = fminf(fmaxf(rintf(load_in(x + k) * inv), -127.0f), 127.0f);
        Xq[(size_t)m * K_pad + p] = (signed char)(int)q;
    }
}

template <int MT, int R, typename OutT>
__device__ __forceinline__ void ternary_gemv_w2a8(const signed char* __restrict__ Xq,
                                                  const float* __restrict__ token_scale,
                                                  const u32* __restrict__ W,
                                                  const float* __restrict__ S,
                                                  OutT* __restrict__ Y, int M, int K, int N,
                                                  int wpr, int wpb_log2) {
    const int n0 = blockIdx.x * R;
    const int m0 = blockIdx.y * MT;
    const int mt = min(MT, M - m0);
    const int n_blocks = wpr >> wpb_log2;
    const int kw = min(wpr, (K + 15) >> 4);
    const int K_pad = wpr * 16;
    Xq += (size_t)m0 * K_pad;

    float acc[R][MT];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int m = 0; m < MT; ++m) acc[r][m] = 0.0f;

#pragma unroll 2
    for (int j = threadIdx.x; j < kw; j += GEMV_THREADS) {
        int q[R][4];
        float s[R];
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const int n = n0 + r;
            const u32 word = n < N ? __ldg(W + (size_t)n * wpr + j) : TERNARY_ZERO_WORD;
            s[r] = n < N ? __ldg(S + (size_t)n * n_blocks + (j >> wpb_log2)) : 0.0f;
#pragma unroll
            for (int i = 0; i < 4; ++i) q[r][i] = (int)((word >> (2 * i)) & 0x03030303u);
        }
#pragma unroll
        for (int m = 0; m < MT; ++m) {
            if (m < mt) {
                const int4 xq = __ldg(reinterpret_cast<const int4*>(Xq + (size_t)m * K_pad) + j);
                const int ones = 0x01010101;
                const int xsum = dp4a(xq.x, ones, dp4a(xq.y, ones, dp4a(xq.z, ones, dp4a(xq.w, ones, 0))));
#pragma unroll
                for (int r = 0; r < R; ++r) {
                    const int dot = dp4a(q[r][0], xq.x, dp4a(q[r][1], xq.y,
                                    dp4a(q[r][2], xq.z, dp4a(q[r][3], xq.w, 0))));
                    acc[r][m] = fmaf(s[r], (float)(dot - 2 * xsum), acc[r][m]);
                }
            }
        }
    }
    gemv_block_store<MT, R>(acc, Y, token_scale, m0, mt, n0, N);
}

// ---- tiled path, fp16: tensor cores via the sm_70 WMMA PTX (no mma.h needed) -----------
#define TILE 64
#define TILE_K 64
#define LDS (TILE_K + 8)  // halves per smem row: 144 bytes keeps 32-byte fragment alignment
#define LDC (TILE + 4)    // floats per row of the accumulator tile

__device__ __forceinline__ void wmma_load_a(u32 (&a)[8], const f16_t* p, int ldm) {
    asm volatile(
        "wmma.load.a.sync.aligned.row.m16n16k16.f16 {%0,%1,%2,%3,%4,%5,%6,%7}, [%8], %9;"
        : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3]), "=r"(a[4]), "=r"(a[5]), "=r"(a[6]),
          "=r"(a[7])
        : "l"(p), "r"(ldm)
        : "memory");
}

__device__ __forceinline__ void wmma_load_b_col(u32 (&b)[8], const f16_t* p, int ldm) {
    asm volatile(
        "wmma.load.b.sync.aligned.col.m16n16k16.f16 {%0,%1,%2,%3,%4,%5,%6,%7}, [%8], %9;"
        : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3]), "=r"(b[4]), "=r"(b[5]), "=r"(b[6]),
          "=r"(b[7])
        : "l"(p), "r"(ldm)
        : "memory");
}

__device__ __forceinline__ void wmma_mma(float (&d)[8], const u32 (&a)[8], const u32 (&b)[8]) {
    asm volatile(
        "wmma.mma.sync.aligned.row.col.m16n16k16.f32.f32 "
        "{%0,%1,%2,%3,%4,%5,%6,%7}, {%8,%9,%10,%11,%12,%13,%14,%15}, "
        "{%16,%17,%18,%19,%20,%21,%22,%23}, {%0,%1,%2,%3,%4,%5,%6,%7};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
          "+f"(d[7])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(a[4]), "r"(a[5]), "r"(a[6]),
          "r"(a[7]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(b[4]), "r"(b[5]),
          "r"(b[6]), "r"(b[7]));
}

__device__ __forceinline__ void wmma_store_row(float* p, const float (&d)[8], int ldm) {
    asm volatile(
        "wmma.store.d.sync.aligned.row.m16n16k16.f32 [%0], {%1,%2,%3,%4,%5,%6,%7,%8}, %9;"
        :
        : "l"(p), "f"(d[0]), "f"(d[1]), "f"(d[2]), "f"(d[3]), "f"(d[4]), "f"(d[5]), "f"(d[6]),
          "f"(d[7]), "r"(ldm)
        : "memory");
}

// Block: a 64 x 64 tile of Y; 4 warps, each a 32 x 32 quarter (2 x 2 fragments). Per K step
// the X tile is copied to smem and the W tile is dequantised to fp16 (value * scale, the
// scale rounded to fp16) in the column-major B layout WMMA reads.
extern "C" __global__ void __launch_bounds__(128)
ternary_gemm_f16(const f16_t* __restrict__ X, const u32* __restrict__ W,
                 const float* __restrict__ S, f16_t* __restrict__ Y, int M, int K, int N,
                 int wpr, int wpb_log2) {
    __shared__ __align__(32) unsigned char smem[2 * TILE * LDS * sizeof(f16_t)];
    f16_t* As = reinterpret_cast<f16_t*>(smem);  // (TILE, TILE_K) X tile, row-major
    f16_t* Bs = As + TILE * LDS;                  // (TILE, TILE_K): row n = W[n, k0:k0+64]
    float* Cs = reinterpret_cast<float*>(smem);   // (TILE, TILE) after the K loop

    const int tid = threadIdx.x;
    const int warp = tid >> 5;
    const int wm = warp >> 1, wn = warp & 1;
    const int m0 = blockIdx.y * TILE, n0 = blockIdx.x * TILE;
    const int n_blocks = wpr >> wpb_log2;
    const int kw = min(wpr, (K + 15) >> 4);
    const bool x_aligned = (K & 7) == 0;

    float acc[2][2][8];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[i][j][e] = 0.0f;

    for (int k0 = 0; k0 < kw * 16; k0 += TILE_K) {
#pragma unroll
        for (int it = 0; it < 4; ++it) {  // X tile: 512 chunks of 8 halves
            const int idx = tid + 128 * it;
            const int row = idx >> 3, c8 = idx & 7;
            const int m = m0 + row, k = k0 + c8 * 8;
            uint4 chunk = make_uint4(0u, 0u, 0u, 0u);
            if (m < M) {
                const f16_t* src = X + (size_t)m * K + k;
                if (x_aligned && k + 8 <= K) {
                    chunk = __ldg(reinterpret_cast<const uint4*>(src));
                } else {
                    u32 h[8];
#pragma unroll
                    for (int e = 0; e < 8; ++e) h[e] = k + e < K ? __ldg(src + e) : 0u;
                    chunk = make_uint4(h[0] | h[1] << 16, h[2] | h[3] << 16, h[4] | h[5] << 16,
                                       h[6] | h[7] << 16);
                }
            }
            *reinterpret_cast<uint4*>(As + row * LDS + c8 * 8) = chunk;
        }
#pragma unroll
        for (int it = 0; it < 2; ++it) {  // W tile: 256 words, dequantised
            const int idx = tid + 128 * it;
            const int row = idx >> 2, q = idx & 3;
            const int n = n0 + row, jw = (k0 >> 4) + q;
            u32 word = TERNARY_ZERO_WORD;
            float scale = 0.0f;
            if (n < N && jw < wpr) {
                word = __ldg(W + (size_t)n * wpr + jw);
                scale = __ldg(S + (size_t)n * n_blocks + (jw >> wpb_log2));
            }
            const u32 s2 = f32x2_to_f16x2(scale, scale);
            u32 o[8];
#pragma unroll
            for (int t = 0; t < 4; ++t) {
                const u32 pa = hmul2(ternary_pair(word, 2 * t), s2);      // (v[2t], v[2t+8])
                const u32 pb = hmul2(ternary_pair(word, 2 * t + 1), s2);  // (v[2t+1], v[2t+9])
                o[t] = prmt(pa, pb, 0x5410);                              // (v[2t], v[2t+1])
                o[4 + t] = prmt(pa, pb, 0x7632);                          // (v[2t+8], v[2t+9])
            }
            uint4* dst = reinterpret_cast<uint4*>(Bs + row * LDS + q * 16);
            dst[0] = make_uint4(o[0], o[1], o[2], o[3]);
            dst[1] = make_uint4(o[4], o[5], o[6], o[7]);
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TILE_K; kk += 16) {
            u32 a[2][8], b[2][8];
#pragma unroll
            for (int i = 0; i < 2; ++i) wmma_load_a(a[i], As + (wm * 32 + i * 16) * LDS + kk, LDS);
#pragma unroll
            for (int j = 0; j < 2; ++j)
                wmma_load_b_col(b[j], Bs + (wn * 32 + j * 16) * LDS + kk, LDS);
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 2; ++j) wmma_mma(acc[i][j], a[i], b[j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j)
            wmma_store_row(Cs + (wm * 32 + i * 16) * LDC + wn * 32 + j * 16, acc[i][j], LDC);
    __syncthreads();
    for (int e = tid; e < TILE * TILE; e += 128) {
        const int row = e / TILE, col = e % TILE;
        const int m = m0 + row, n = n0 + col;
        if (m < M && n < N) Y[(size_t)m * N + n] = f32_to_f16(Cs[row * LDC + col]);
    }
}

// ---- tiled path, fp32: 64 x 64 tile, 256 threads of 4 x 4 outputs, one word per K step --
extern "C" __global__ void __launch_bounds__(256)
ternary_gemm_f32(const float* __restrict__ X, const u32* __restrict__ W,
                 const float* __restrict__ S, float* __restrict__ Y, int M, int K, int N,
                 int wpr, int wpb_log2) {
    __shared__ float As[16][TILE + 4];  // As[k][m]
    __shared__ float Bs[16][TILE + 4];  // Bs[k][n], dequantised
    const int tid = threadIdx.x;
    const int tx = tid & 15, ty = tid >> 4;
    const int m0 = blockIdx.y * TILE, n0 = blockIdx.x * TILE;
    const int n_blocks = wpr >> wpb_log2;
    const int kw = min(wpr, (K + 15) >> 4);

    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    for (int jw = 0; jw < kw; ++jw) {
        const int k0 = 16 * jw;
#pragma unroll
        for (int it = 0; it < 4; ++it) {
            const int idx = tid + 256 * it;
            const int row = idx >> 4, kc = idx & 15;
            const int m = m0 + row, k = k0 + kc;
            As[kc][row] = (m < M && k < K) ? __ldg(X + (size_t)m * K + k) : 0.0f;
        }
        if (tid < TILE) {
            const int n = n0 + tid;
            u32 word = TERNARY_ZERO_WORD;
            float scale = 0.0f;
            if (n < N) {
                word = __ldg(W + (size_t)n * wpr + jw);
                scale = __ldg(S + (size_t)n * n_blocks + (jw >> wpb_log2));
            }
#pragma unroll
            for (int i = 0; i < 16; ++i) Bs[i][tid] = ternary_value(word, i) * scale;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < 16; ++kk) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = As[kk][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int m = m0 + ty + 16 * i;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int n = n0 + tx + 16 * j;
            if (m < M && n < N) Y[(size_t)m * N + n] = acc[i][j];
        }
    }
}

// ---- extern "C" entry points -----------------------------------------------------------
extern "C" __global__ void __launch_bounds__(256)
quantize_int8_f16(const f16_t* X, signed char* Xq, float* token_scale, int K, int K_pad) {
    quantize_int8(X, Xq, token_scale, K, K_pad);
}

extern "C" __global__ void __launch_bounds__(256)
quantize_int8_f32(const float* X, signed char* Xq, float* token_scale, int K, int K_pad) {
    quantize_int8(X, Xq, token_scale, K, K_pad);
}

// GEMV_VARIANTS(MT, R): tokens per block and output rows per block. plugins_trt/kernels.py
// holds the same table (GEMV_ROWS_PER_BLOCK); a test keeps the two in step.
#define GEMV_VARIANTS(MT, R)                                                                 \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS) ternary_gemv_f16_m##MT(       \
        const f16_t* X, const u32* W, const float* S, f16_t* Y, int M, int K, int N,         \
        int wpr, int wpb_log2) {                                                             \
        ternary_gemv_f16<MT, R>(X, W, S, Y, M, K, N, wpr, wpb_log2);                         \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS) ternary_gemv_f32_m##MT(       \
        const float* X, const u32* W, const float* S, float* Y, int M, int K, int N,         \
        int wpr, int wpb_log2) {                                                             \
        ternary_gemv_f32<MT, R>(X, W, S, Y, M, K, N, wpr, wpb_log2);                         \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS) ternary_gemv_w2a8_f16_m##MT(  \
        const signed char* Xq, const float* token_scale, const u32* W, const float* S,       \
        f16_t* Y, int M, int K, int N, int wpr, int wpb_log2) {                              \
        ternary_gemv_w2a8<MT, R>(Xq, token_scale, W, S, Y, M, K, N, wpr, wpb_log2);          \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS) ternary_gemv_w2a8_f32_m##MT(  \
        const signed char* Xq, const float* token_scale, const u32* W, const float* S,       \
        float* Y, int M, int K, int N, int wpr, int wpb_log2) {                              \
        ternary_gemv_w2a8<MT, R>(Xq, token_scale, W, S, Y, M, K, N, wpr, wpb_log2);          \
    }

GEMV_VARIANTS(1, 4)
GEMV_VARIANTS(2, 4)
GEMV_VARIANTS(4, 2)
GEMV_VARIANTS(8, 2)
