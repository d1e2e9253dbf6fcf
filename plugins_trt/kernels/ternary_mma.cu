// Packed ternary GEMMs on tensor cores for M >= 16 tokens (image tokens, LLM prefill):
// Y (M, N) = X (M, K) @ dequant(W).T, W in the layout of runtime/ternary_layout.py read as
// 32-bit words (see packed_ternary_matmul.cu for the layout; the same W, S and shape args):
//
//   W      (N, wpr) uint32, 16 codes per word, code i in bits 2i..2i+1; value = code - 2
//   S      (N, n_blocks) float32, n_blocks = wpr >> wpb_log2
//
// sm_80+ only (mma.sync m16n8k16 / m16n8k32, cp.async, ldmatrix): plugins_trt/kernels.py
// loads this file on compute capability >= 8.0; Volta/Xavier and Turing keep
// packed_ternary_matmul.cu. Entry points, one per tile (the *_TILE lines at the bottom,
// which plugins_trt/mma_tiles.py mirrors):
//
//   ternary_mma_f16_<BM>x<BN>        W2A16: fp16 X, fp16 Y, fp32 accumulation
//   ternary_mma_w2a8_{f16,f32}_<BM>x<BN>
//                                    W2A8: X quantised per token to int8 in the prologue
//                                    (the package's QuantizeLinear grid), s8 x s8 -> s32
//
// Both keep the weights packed until registers: a weight tile travels global -> shared as
// packed words (cp.async, a multi-stage pipeline), and each lane decodes the four codes its
// mma fragment needs right before the mma. Scales: when every row of a CTA's N tile has one
// scale for all its blocks (BitNet's absmean, what `e2edge export vit` writes), the sums
// run over the whole K unscaled and each column is scaled once in the epilogue; otherwise
// per block (W2A16: the decoded fragment times the fp16 scale; W2A8: exact s32 sums per
// block, scaled into an fp32 accumulator when the block ends).
//
// Dynamic shared memory: the launcher passes the bytes plugins_trt/mma_tiles.py computes;
// a kernel that gets fewer than its layout needs traps (a launch error, never a silent
// wrong answer).
#include "common.cuh"

// ---- sm_80 PTX --------------------------------------------------------------------------
extern __shared__ __align__(128) unsigned char dyn_smem[];

__device__ __forceinline__ u32 smem_u32(const void* p) {
    u32 r;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
    return r;
}

__device__ __forceinline__ u32 dynamic_smem_bytes() {
    u32 r;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(r));
    return r;
}

__device__ __forceinline__ void trap() { asm volatile("trap;"); }

// src_bytes < size zero-fills the rest (0: a pure zero fill; src must still be a valid address)
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src),
                 "r"(src_bytes));
}

__device__ __forceinline__ void cp_async4(u32 dst, const void* src, int src_bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(dst), "l"(src),
                 "r"(src_bytes));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::); }

template <int PENDING>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(PENDING) : "memory");
}

// Four 8x8 b16 matrices: lanes 8i..8i+7 give the row addresses of matrix i, and r[i] is the
// lane's share of matrix i: with lane l pointing at row (l & 15), column block (l >> 4) of a
// 16 x 16-half (or 16 x 32-byte) tile, r is exactly mma's A fragment {a0, a1, a2, a3}.
__device__ __forceinline__ void ldmatrix_x4(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

__device__ __forceinline__ void mma_f16(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma_s8(int (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ u32 f32_to_f16x2_splat(float s) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %1;" : "=r"(r) : "f"(s));
    return r;
}

__device__ __forceinline__ float to_f32(const f16_t* p) { return f16_to_f32(__ldg(p)); }
__device__ __forceinline__ float to_f32(const float* p) { return __ldg(p); }
__device__ __forceinline__ void write_out(f16_t* p, float v) { *p = f32_to_f16(v); }
__device__ __forceinline__ void write_out(float* p, float v) { *p = v; }
__device__ __forceinline__ void write_pair(f16_t* p, float a, float b) {
    *reinterpret_cast<u32*>(p) = f32x2_to_f16x2(a, b);
}
__device__ __forceinline__ void write_pair(float* p, float a, float b) {
    *reinterpret_cast<float2*>(p) = make_float2(a, b);
}

// Do all of rows n0..n0+rows-1 (those < N) have one scale for every block? CTA-wide (it
// is also a barrier): decides the scaling scheme of the whole N tile.
__device__ __forceinline__ bool uniform_row_scales(const float* __restrict__ S, int n0, int rows,
                                                   int N, int n_blocks) {
    int differs = 0;
    for (int idx = threadIdx.x; idx < rows * n_blocks; idx += blockDim.x) {
        const int r = idx / n_blocks, b = idx - r * n_blocks, n = n0 + r;
        if (b > 0 && n < N) {
            const float* row = S + (size_t)n * n_blocks;
            differs |= __ldg(row + b) != __ldg(row);
        }
    }
    return __syncthreads_or(differs) == 0;
}

// The scale of column n that a uniform tile (or a W2A8 tail) multiplies by: its last block
// holding real codes; 0 past N.
__device__ __forceinline__ float column_scale(const float* __restrict__ S, int n, int N,
                                              int n_blocks, int last_block) {
    return n < N ? __ldg(S + (size_t)n * n_blocks + last_block) : 0.0f;
}

struct Operands {
    const u32* W;
    const float* S;
    int M, K, N, wpr, wpb_log2, n_blocks;
    bool w_vec;  // rows of W are whole 16-byte chunks: wpr % 4 == 0 and W 16-byte aligned
};

// ---- W2A16: fp16 activations ------------------------------------------------------------
// A stage covers 64 of K: the X tile (BM, 64) fp16 as rows of eight 16-byte chunks, chunk c
// of row r stored at c ^ (r & 7) (ldmatrix reads 8 rows of one chunk: 8 distinct banks);
// the weight tile (BN, 4 words) packed; when the tile's scales differ per block, one scale
// per (row, word). Warp tile (WARP_M, WARP_N) = MT m16 x NT n8 fragments.
template <int BM_, int BN_, int WM_, int WN_, int STAGES_>
struct W2A16Tile {
    static constexpr int BM = BM_, BN = BN_, WM = WM_, WN = WN_, STAGES = STAGES_;
    static constexpr int THREADS = 32 * WM * WN;
    static constexpr int WARP_M = BM / WM, WARP_N = BN / WN;
    static constexpr int MT = WARP_M / 16, NT = WARP_N / 8;
    static constexpr int A_BYTES = BM * 128;  // 64 halves per row
    static constexpr int W_BYTES = BN * 16;   // 4 words per row
    static constexpr int S_BYTES = BN * 16;   // 4 scales per row
    static constexpr int STAGE_BYTES = A_BYTES + W_BYTES + S_BYTES;
    static constexpr int SMEM_BYTES = STAGES * STAGE_BYTES;
    static constexpr int LDC = BN + 8;  // halves per row of the staged output tile
    static_assert(WARP_M % 16 == 0 && WARP_N % 8 == 0, "warp tile is whole fragments");
    static_assert((BM * 8) % THREADS == 0, "X chunks split evenly over the threads");
    static_assert(BM * LDC * 2 <= SMEM_BYTES, "the output tile fits the pipeline's memory");
};

template <class T, bool UNIFORM>
__device__ __forceinline__ void w2a16_load(unsigned char* stage, const f16_t* __restrict__ X,
                                           bool x_vec, const Operands& op, int m0, int n0,
                                           int kt) {
    const int tid = threadIdx.x;
    const int k0 = 64 * kt, w0 = 4 * kt;
    unsigned char* As = stage;
    unsigned char* Ws = stage + T::A_BYTES;
    unsigned char* Ss = Ws + T::W_BYTES;
#pragma unroll
    for (int it = 0; it < T::BM * 8 / T::THREADS; ++it) {
        const int idx = tid + it * T::THREADS;
        const int r = idx >> 3, c = idx & 7;
        const int m = m0 + r, k = k0 + 8 * c;
        unsigned char* dst = As + r * 128 + ((c ^ (r & 7)) << 4);
        if (x_vec) {  // K % 8 == 0: a chunk is wholly inside K or wholly outside
            const bool in = m < op.M && k < op.K;
            cp_async16(smem_u32(dst), in ? X + (size_t)m * op.K + k : X, in ? 16 : 0);
        } else {
            u32 h[8];
#pragma unroll
            for (int e = 0; e < 8; ++e)
                h[e] = m < op.M && k + e < op.K ? (u32)__ldg(X + (size_t)m * op.K + k + e) : 0u;
            *reinterpret_cast<uint4*>(dst) = make_uint4(h[0] | h[1] << 16, h[2] | h[3] << 16,
                                                        h[4] | h[5] << 16, h[6] | h[7] << 16);
        }
    }
    if (op.w_vec) {
        for (int r = tid; r < T::BN; r += T::THREADS) {
            const int n = n0 + r;
            const bool in = n < op.N && w0 < op.wpr;
            cp_async16(smem_u32(Ws + r * 16), in ? op.W + (size_t)n * op.wpr + w0 : op.W,
                       in ? 16 : 0);
        }
    } else {
        for (int idx = tid; idx < T::BN * 4; idx += T::THREADS) {
            const int r = idx >> 2, n = n0 + r, w = w0 + (idx & 3);
            const bool in = n < op.N && w < op.wpr;
            cp_async4(smem_u32(Ws + 4 * idx), in ? op.W + (size_t)n * op.wpr + w : op.W,
                      in ? 4 : 0);
        }
    }
    if (!UNIFORM) {
        for (int idx = tid; idx < T::BN * 4; idx += T::THREADS) {
            const int r = idx >> 2, n = n0 + r, w = w0 + (idx & 3);
            const bool in = n < op.N && w < op.wpr;
            cp_async4(smem_u32(Ss + 4 * idx),
                      in ? op.S + (size_t)n * op.n_blocks + (w >> op.wpb_log2) : op.S, in ? 4 : 0);
        }
    }
}

// One stage: 4 k16 steps. Lane (g = lane / 4, t = lane % 4) holds B fragment column g and
// rows {2t, 2t+1} (b0), {2t+8, 2t+9} (b1) of the 16 k a word covers: the word shifted by
// 4t puts codes 2t, 2t+1 at positions 0, 1 and codes 2t+8, 2t+9 at 8, 9, which
// ternary_pair() turns into exact fp16 (value, value') pairs; two byte permutes reorder
// them into b0 and b1. Each decoded fragment serves MT mmas.
template <class T, bool UNIFORM>
__device__ __forceinline__ void w2a16_compute(float (&acc)[T::MT][T::NT][4],
                                              const unsigned char* stage) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm = warp / T::WN, wn = warp % T::WN;
    const int g = lane >> 2, t = lane & 3;
    const u32 a_base = smem_u32(stage);
    const unsigned char* Ws = stage + T::A_BYTES;
    const unsigned char* Ss = Ws + T::W_BYTES;
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
        u32 a[T::MT][4];
#pragma unroll
        for (int i = 0; i < T::MT; ++i) {
            const int row = wm * T::WARP_M + i * 16 + (lane & 15);
            const int chunk = 2 * ks + (lane >> 4);
            ldmatrix_x4(a[i], a_base + row * 128 + ((chunk ^ (row & 7)) << 4));
        }
#pragma unroll
        for (int j = 0; j < T::NT; ++j) {
            const int nl = wn * T::WARP_N + j * 8 + g;
            const u32 x = *reinterpret_cast<const u32*>(Ws + nl * 16 + ks * 4) >> (4 * t);
            u32 pa = ternary_pair(x, 0);  // (v[2t], v[2t+8])
            u32 pb = ternary_pair(x, 1);  // (v[2t+1], v[2t+9])
            if (!UNIFORM) {  // code x scale is exact: the scale itself is rounded to fp16
                const float s = *reinterpret_cast<const float*>(Ss + nl * 16 + ks * 4);
                const u32 s2 = f32_to_f16x2_splat(s);
                pa = hmul2(pa, s2);
                pb = hmul2(pb, s2);
            }
            const u32 b0 = prmt(pa, pb, 0x5410);  // (v[2t], v[2t+1])
            const u32 b1 = prmt(pa, pb, 0x7632);  // (v[2t+8], v[2t+9])
#pragma unroll
            for (int i = 0; i < T::MT; ++i) mma_f16(acc[i][j], a[i], b0, b1);
        }
    }
}

template <class T, bool UNIFORM>
__device__ __forceinline__ void w2a16_mainloop(float (&acc)[T::MT][T::NT][4],
                                               const f16_t* __restrict__ X, bool x_vec,
                                               const Operands& op, int m0, int n0,
                                               int k_tiles) {
#pragma unroll
    for (int s = 0; s < T::STAGES - 1; ++s) {
        if (s < k_tiles)
            w2a16_load<T, UNIFORM>(dyn_smem + s * T::STAGE_BYTES, X, x_vec, op, m0, n0, s);
        cp_async_commit();  // empty groups too: the wait below counts groups
    }
    for (int kt = 0; kt < k_tiles; ++kt) {
        cp_async_wait<T::STAGES - 2>();  // stage kt has landed (for this thread) ...
        __syncthreads();                 // ... for all; and stage kt - 1 is no longer read
        const int next = kt + T::STAGES - 1;
        if (next < k_tiles)
            w2a16_load<T, UNIFORM>(dyn_smem + (next % T::STAGES) * T::STAGE_BYTES, X, x_vec, op,
                                   m0, n0, next);
        cp_async_commit();
        w2a16_compute<T, UNIFORM>(acc, dyn_smem + (kt % T::STAGES) * T::STAGE_BYTES);
    }
    cp_async_wait<0>();
    __syncthreads();
}

template <class T>
__device__ __forceinline__ void ternary_mma_f16(const f16_t* __restrict__ X,
                                                const u32* __restrict__ W,
                                                const float* __restrict__ S,
                                                f16_t* __restrict__ Y, int M, int K, int N,
                                                int wpr, int wpb_log2) {
    if (dynamic_smem_bytes() < (u32)T::SMEM_BYTES) trap();
    const int m0 = blockIdx.y * T::BM, n0 = blockIdx.x * T::BN;
    const int n_blocks = wpr >> wpb_log2;
    const int kw = min(wpr, (K + 15) >> 4);  // words past kw hold padding codes only
    const int k_tiles = (kw + 3) >> 2;
    const Operands op = {W, S, M, K, N, wpr, wpb_log2, n_blocks,
                         (wpr & 3) == 0 && ((size_t)W & 15) == 0};
    const bool x_vec = (K & 7) == 0 && ((size_t)X & 15) == 0;
    const bool uniform = uniform_row_scales(S, n0, T::BN, N, n_blocks);

    float acc[T::MT][T::NT][4];
#pragma unroll
    for (int i = 0; i < T::MT; ++i)
#pragma unroll
        for (int j = 0; j < T::NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;
    if (uniform)
        w2a16_mainloop<T, true>(acc, X, x_vec, op, m0, n0, k_tiles);
    else
        w2a16_mainloop<T, false>(acc, X, x_vec, op, m0, n0, k_tiles);

    // Epilogue: fragments (scaled per column when uniform) -> fp16 tile in smem -> 16-byte rows.
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm = warp / T::WN, wn = warp % T::WN;
    const int g = lane >> 2, t = lane & 3;
    const int last_block = (kw - 1) >> wpb_log2;
    f16_t* Cs = reinterpret_cast<f16_t*>(dyn_smem);  // (BM, LDC)
#pragma unroll
    for (int j = 0; j < T::NT; ++j) {
        const int c = wn * T::WARP_N + j * 8 + 2 * t;
        const float s0 = uniform ? column_scale(S, n0 + c, N, n_blocks, last_block) : 1.0f;
        const float s1 = uniform ? column_scale(S, n0 + c + 1, N, n_blocks, last_block) : 1.0f;
#pragma unroll
        for (int i = 0; i < T::MT; ++i) {
            const int r = wm * T::WARP_M + i * 16 + g;
            *reinterpret_cast<u32*>(Cs + r * T::LDC + c) =
                f32x2_to_f16x2(acc[i][j][0] * s0, acc[i][j][1] * s1);
            *reinterpret_cast<u32*>(Cs + (r + 8) * T::LDC + c) =
                f32x2_to_f16x2(acc[i][j][2] * s0, acc[i][j][3] * s1);
        }
    }
    __syncthreads();
    const bool y_vec = (N & 7) == 0 && ((size_t)Y & 15) == 0;
    constexpr int CHUNKS = T::BN / 8;
    for (int idx = threadIdx.x; idx < T::BM * CHUNKS; idx += T::THREADS) {
        const int r = idx / CHUNKS, c = idx % CHUNKS;
        const int m = m0 + r, n = n0 + 8 * c;
        if (m >= M || n >= N) continue;
        const uint4 v = *reinterpret_cast<const uint4*>(Cs + r * T::LDC + 8 * c);
        f16_t* dst = Y + (size_t)m * N + n;
        if (y_vec) {
            *reinterpret_cast<uint4*>(dst) = v;
        } else {
            const u32 h[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int e = 0; e < 8; ++e)
                if (n + e < N) dst[e] = (f16_t)(h[e >> 1] >> (16 * (e & 1)));
        }
    }
}

// ---- W2A8: int8 activations quantised in the prologue -----------------------------------
// The package's grid (runtime/activation_grid.py, ONNX QuantizeLinear with zero point 128):
//   step = max(max|x|, 1e-5) / 127 per token, q = saturate(round_half_even(x / step)).
// A CTA quantises its BM rows into shared memory once per K chunk (all of K when it fits:
// then every N tile the CTA walks reuses them) and streams the packed weights through a
// cp.async pipeline, 128 of K (8 words) per stage, 4 k32 mma steps.
//
// The k order inside each group of 16 is chosen so that the weights decode with one byte
// permute: B fragment lane (g, t) holds k-slots 4t..4t+3, and (word >> (16 (t >> 1) +
// 2 (t & 1))) & 0x3333 holds in nibble j code 8 (t >> 1) + (t & 1) + 2j, which prmt turns
// into (code - 2) as a signed byte through the table 0x0100FFFE. So the activations are
// stored with slot 4t + j of each 16-byte group holding element 8 (t >> 1) + (t & 1) + 2j.
#define ACT_EPS 1e-5f
#define ACT_LEVELS 127.0f
#define TERNARY_S8_TABLE 0x0100FFFEu  // byte c = c - 2 as int8: codes 0..3 -> -2, -1, 0, 1

template <int BM_, int BN_, int WM_, int WN_, int STAGES_>
struct W2A8Tile {
    static constexpr int BM = BM_, BN = BN_, WM = WM_, WN = WN_, STAGES = STAGES_;
    static constexpr int THREADS = 32 * WM * WN, WARPS = WM * WN;
    static constexpr int WARP_M = BM / WM, WARP_N = BN / WN;
    static constexpr int MT = WARP_M / 16, NT = WARP_N / 8;
    static constexpr int STEP_BYTES = BM * 8;  // step and 1 / step per row
    static constexpr int W_ROW = 48;           // 32 bytes of words + 16 of padding: 8-byte
                                               // reads of 8 rows hit distinct banks
    static constexpr int W_BYTES = BN * W_ROW;
    static constexpr int S_BYTES = BN * 16;  // one scale per (row, k32 step)
    static constexpr int STAGE_BYTES = W_BYTES + S_BYTES;
    static_assert(WARP_M % 16 == 0 && WARP_N % 8 == 0, "warp tile is whole fragments");
    __host__ __device__ static constexpr int smem_bytes(int kchunk) {
        return STEP_BYTES + BM * kchunk + STAGES * STAGE_BYTES;
    }
};

// x / step rounded half to even, saturated to int8. x * (1 / step) is within 2^-16 of
// x / step (|x / step| <= 127.5 and two roundings), so away from a .5 boundary its rounding
// is that of the correctly rounded quotient; within 2^-12 of one, divide as ONNX does.
__device__ __forceinline__ int quantize_one(float x, float step, float inv) {
    const float p = x * inv;
    float r = rintf(p);
    if (fabsf(p - r) > 0.5f - 2.44140625e-4f) r = rintf(x / step);
    return (int)fminf(fmaxf(r, -128.0f), 127.0f);
}

__device__ __forceinline__ u32 pack_s8x4(int a, int b, int c, int d) {
    return prmt(prmt((u32)a, (u32)b, 0x0040), prmt((u32)c, (u32)d, 0x0040), 0x5410);
}

// 16 consecutive elements of row m from k (zeros past M and K) as floats
__device__ __forceinline__ void load_group16(const f16_t* __restrict__ X, int m, int k, int M,
                                             int K, bool x_vec, float (&v)[16]) {
    if (m < M && x_vec && k + 16 <= K) {
        const uint4* p = reinterpret_cast<const uint4*>(X + (size_t)m * K + k);
        const uint4 a = __ldg(p), b = __ldg(p + 1);
        const u32 h[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
        for (int e = 0; e < 8; ++e) f16x2_to_f32(h[e], v[2 * e], v[2 * e + 1]);
    } else {
#pragma unroll
        for (int e = 0; e < 16; ++e)
            v[e] = m < M && k + e < K ? to_f32(X + (size_t)m * K + k + e) : 0.0f;
    }
}

__device__ __forceinline__ void load_group16(const float* __restrict__ X, int m, int k, int M,
                                             int K, bool x_vec, float (&v)[16]) {
    if (m < M && x_vec && k + 16 <= K) {
        ldg_f32x16(X + (size_t)m * K + k, v);
    } else {
#pragma unroll
        for (int e = 0; e < 16; ++e)
            v[e] = m < M && k + e < K ? to_f32(X + (size_t)m * K + k + e) : 0.0f;
    }
}

// max |x| over one aligned 16-byte load
__device__ __forceinline__ float absmax16(const f16_t* p) {
    const uint4 q = __ldg(reinterpret_cast<const uint4*>(p));
    const u32 h[4] = {q.x, q.y, q.z, q.w};
    float m = 0.0f;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        float lo, hi;
        f16x2_to_f32(h[e], lo, hi);
        m = fmaxf(m, fmaxf(fabsf(lo), fabsf(hi)));
    }
    return m;
}

__device__ __forceinline__ float absmax16(const float* p) {
    const float4 f = __ldg(reinterpret_cast<const float4*>(p));
    return fmaxf(fmaxf(fabsf(f.x), fabsf(f.y)), fmaxf(fabsf(f.z), fabsf(f.w)));
}

// steps[r] = step, steps[BM + r] = 1 / step of token m0 + r: one warp per row.
template <class T, typename InT>
__device__ __forceinline__ void w2a8_steps(float* steps, const InT* __restrict__ X, int M,
                                           int K, int m0, bool x_vec) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    constexpr int PER_LOAD = 16 / sizeof(InT);  // elements per 16-byte load
    for (int r = warp; r < T::BM; r += T::WARPS) {
        const int m = m0 + r;
        float amax = 0.0f;
        if (m < M) {
            const InT* row = X + (size_t)m * K;
            if (x_vec) {  // K % PER_LOAD == 0 and the rows 16-byte aligned
                for (int k = PER_LOAD * lane; k < K; k += 32 * PER_LOAD)
                    amax = fmaxf(amax, absmax16(row + k));
            } else {
                for (int k = lane; k < K; k += 32) amax = fmaxf(amax, fabsf(to_f32(row + k)));
            }
        }
        amax = warp_max(amax);
        if (lane == 0) {
            const float step = fmaxf(amax, ACT_EPS) / ACT_LEVELS;  // IEEE division, as ONNX's Div
            steps[r] = step;
            steps[T::BM + r] = 1.0f / step;
        }
    }
}

// Rows m0.. of X, k in [kbase, kbase + 16 * groups), quantised into As (BM, kchunk) int8:
// group i of row r at 16-byte chunk i ^ (r & 7), in the slot order described above.
template <class T, typename InT>
__device__ __forceinline__ void w2a8_quantize(unsigned char* As, int kchunk, const float* steps,
                                              const InT* __restrict__ X, bool x_vec, int M,
                                              int K, int m0, int kbase, int groups) {
    for (int idx = threadIdx.x; idx < T::BM * groups; idx += T::THREADS) {
        const int r = idx / groups, gi = idx - r * groups;
        float v[16];
        load_group16(X, m0 + r, kbase + 16 * gi, M, K, x_vec, v);
        const float step = steps[r], inv = steps[T::BM + r];
        int q[16];
#pragma unroll
        for (int e = 0; e < 16; ++e) q[e] = quantize_one(v[e], step, inv);
        const uint4 out = make_uint4(pack_s8x4(q[0], q[2], q[4], q[6]),     // t = 0
                                     pack_s8x4(q[1], q[3], q[5], q[7]),     // t = 1
                                     pack_s8x4(q[8], q[10], q[12], q[14]),  // t = 2
                                     pack_s8x4(q[9], q[11], q[13], q[15])); // t = 3
        *reinterpret_cast<uint4*>(As + r * kchunk + ((gi ^ (r & 7)) << 4)) = out;
    }
}

template <class T, bool UNIFORM>
__device__ __forceinline__ void w2a8_load(unsigned char* stage, const Operands& op, int n0,
                                          int kt) {
    const int tid = threadIdx.x;
    const int w0 = 8 * kt;
    unsigned char* Ws = stage;
    unsigned char* Ss = stage + T::W_BYTES;
    if (op.w_vec) {
        for (int idx = tid; idx < T::BN * 2; idx += T::THREADS) {
            const int r = idx >> 1, n = n0 + r, w = w0 + 4 * (idx & 1);
            const bool in = n < op.N && w < op.wpr;
            cp_async16(smem_u32(Ws + r * T::W_ROW + 16 * (idx & 1)),
                       in ? op.W + (size_t)n * op.wpr + w : op.W, in ? 16 : 0);
        }
    } else {
        for (int idx = tid; idx < T::BN * 8; idx += T::THREADS) {
            const int r = idx >> 3, n = n0 + r, w = w0 + (idx & 7);
            const bool in = n < op.N && w < op.wpr;
            cp_async4(smem_u32(Ws + r * T::W_ROW + 4 * (idx & 7)),
                      in ? op.W + (size_t)n * op.wpr + w : op.W, in ? 4 : 0);
        }
    }
    if (!UNIFORM) {  // the scale of k32 step q: blocks are >= 32 wide, so one per step
        for (int idx = tid; idx < T::BN * 4; idx += T::THREADS) {
            const int r = idx >> 2, n = n0 + r, w = w0 + 2 * (idx & 3);
            const bool in = n < op.N && w < op.wpr;
            cp_async4(smem_u32(Ss + 4 * idx),
                      in ? op.S + (size_t)n * op.n_blocks + (w >> op.wpb_log2) : op.S, in ? 4 : 0);
        }
    }
}

// One stage: 4 k32 steps over A chunks [chunk0, chunk0 + 8) of the resident rows.
template <class T, bool UNIFORM>
__device__ __forceinline__ void w2a8_compute(int (&iacc)[T::MT][T::NT][4],
                                             float (&facc)[T::MT][T::NT][4],
                                             const unsigned char* stage, u32 a_base,
                                             int kchunk, int chunk0, int w0, int wpb_log2) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm = warp / T::WN, wn = warp % T::WN;
    const int g = lane >> 2, t = lane & 3;
    const int shift = 16 * (t >> 1) + 2 * (t & 1);
    const unsigned char* Ws = stage;
    const float* Ss = reinterpret_cast<const float*>(stage + T::W_BYTES);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
        u32 a[T::MT][4];
#pragma unroll
        for (int i = 0; i < T::MT; ++i) {
            const int row = wm * T::WARP_M + i * 16 + (lane & 15);
            const int chunk = chunk0 + 2 * q + (lane >> 4);
            ldmatrix_x4(a[i], a_base + row * kchunk + ((chunk ^ (row & 7)) << 4));
        }
#pragma unroll
        for (int j = 0; j < T::NT; ++j) {
            const int nl = wn * T::WARP_N + j * 8 + g;
            const uint2 w = *reinterpret_cast<const uint2*>(Ws + nl * T::W_ROW + 8 * q);
            const u32 b0 = prmt(TERNARY_S8_TABLE, 0u, (w.x >> shift) & 0x3333u);
            const u32 b1 = prmt(TERNARY_S8_TABLE, 0u, (w.y >> shift) & 0x3333u);
#pragma unroll
            for (int i = 0; i < T::MT; ++i) mma_s8(iacc[i][j], a[i], b0, b1);
        }
        // a block ends with this step: fold its exact sums into the fp32 accumulator
        if (!UNIFORM && ((w0 + 2 * q + 2) & ((1 << wpb_log2) - 1)) == 0) {
#pragma unroll
            for (int j = 0; j < T::NT; ++j) {
                const int c = wn * T::WARP_N + j * 8 + 2 * t;
                const float s0 = Ss[4 * c + q], s1 = Ss[4 * (c + 1) + q];
#pragma unroll
                for (int i = 0; i < T::MT; ++i) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        facc[i][j][e] = fmaf((float)iacc[i][j][e], e & 1 ? s1 : s0, facc[i][j][e]);
                        iacc[i][j][e] = 0;
                    }
                }
            }
        }
    }
}

template <class T, bool UNIFORM>
__device__ __forceinline__ void w2a8_mainloop(int (&iacc)[T::MT][T::NT][4],
                                              float (&facc)[T::MT][T::NT][4],
                                              unsigned char* stages, u32 a_base, int kchunk,
                                              const Operands& op, int n0, int kt0, int kt1) {
#pragma unroll
    for (int s = 0; s < T::STAGES - 1; ++s) {
        if (kt0 + s < kt1) w2a8_load<T, UNIFORM>(stages + s * T::STAGE_BYTES, op, n0, kt0 + s);
        cp_async_commit();
    }
    for (int kt = kt0; kt < kt1; ++kt) {
        cp_async_wait<T::STAGES - 2>();
        __syncthreads();  // also publishes the quantised rows before the first step
        const int next = kt + T::STAGES - 1;
        if (next < kt1)
            w2a8_load<T, UNIFORM>(stages + ((next - kt0) % T::STAGES) * T::STAGE_BYTES, op, n0,
                                  next);
        cp_async_commit();
        w2a8_compute<T, UNIFORM>(iacc, facc, stages + ((kt - kt0) % T::STAGES) * T::STAGE_BYTES,
                                 a_base, kchunk, 8 * (kt - kt0), 8 * kt, op.wpb_log2);
    }
    cp_async_wait<0>();
    __syncthreads();
}

// Grid: (CTAs along N, M / BM). A CTA walks N tiles blockIdx.x, blockIdx.x + gridDim.x, ...
// kchunk: K bytes of quantised rows resident at once (a multiple of 128).
template <class T, typename InT, typename OutT>
__device__ __forceinline__ void ternary_mma_w2a8(const InT* __restrict__ X,
                                                 const u32* __restrict__ W,
                                                 const float* __restrict__ S,
                                                 OutT* __restrict__ Y, int M, int K, int N,
                                                 int wpr, int wpb_log2, int kchunk) {
    if (kchunk <= 0 || (kchunk & 127) != 0 || wpb_log2 < 1 ||
        dynamic_smem_bytes() < (u32)T::smem_bytes(kchunk))
        trap();
    float* steps = reinterpret_cast<float*>(dyn_smem);
    unsigned char* As = dyn_smem + T::STEP_BYTES;
    unsigned char* stages = As + T::BM * kchunk;
    const u32 a_base = smem_u32(As);
    const int m0 = blockIdx.y * T::BM;
    const int n_blocks = wpr >> wpb_log2;
    const int kw = min(wpr, (K + 15) >> 4);
    const int k_tiles = (kw + 7) >> 3;  // 8 words per stage
    const int tiles_per_chunk = kchunk >> 7;
    const int n_chunks = (k_tiles + tiles_per_chunk - 1) / tiles_per_chunk;
    const int n_tiles = (N + T::BN - 1) / T::BN;
    const int last_block = (kw - 1) >> wpb_log2;
    const Operands op = {W, S, M, K, N, wpr, wpb_log2, n_blocks,
                         (wpr & 3) == 0 && ((size_t)W & 15) == 0};
    const bool x_vec = (K & (16 / (int)sizeof(InT) - 1)) == 0 && ((size_t)X & 15) == 0;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm = warp / T::WN, wn = warp % T::WN;
    const int g = lane >> 2, t = lane & 3;

    w2a8_steps<T>(steps, X, M, K, m0, x_vec);
    for (int nt = blockIdx.x; nt < n_tiles; nt += gridDim.x) {
        const int n0 = nt * T::BN;
        const bool uniform = uniform_row_scales(S, n0, T::BN, N, n_blocks);  // a barrier too
        int iacc[T::MT][T::NT][4];
        float facc[T::MT][T::NT][4];
#pragma unroll
        for (int i = 0; i < T::MT; ++i)
#pragma unroll
            for (int j = 0; j < T::NT; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    iacc[i][j][e] = 0;
                    facc[i][j][e] = 0.0f;
                }
        for (int c = 0; c < n_chunks; ++c) {
            const int kt0 = c * tiles_per_chunk, kt1 = min(k_tiles, kt0 + tiles_per_chunk);
            if (n_chunks > 1 || nt == (int)blockIdx.x) {  // these rows are not resident yet
                __syncthreads();  // the previous chunk's readers are done
                w2a8_quantize<T>(As, kchunk, steps, X, x_vec, M, K, m0, 128 * kt0, 8 * (kt1 - kt0));
            }
            if (uniform)
                w2a8_mainloop<T, true>(iacc, facc, stages, a_base, kchunk, op, n0, kt0, kt1);
            else
                w2a8_mainloop<T, false>(iacc, facc, stages, a_base, kchunk, op, n0, kt0, kt1);
        }
        // Epilogue: the sums not yet scaled (all of them when uniform, the last block's
        // otherwise) times the column's scale, then times the token's step.
        const bool y_pair = (N & 1) == 0 && ((size_t)Y & (2 * sizeof(OutT) - 1)) == 0;
#pragma unroll
        for (int j = 0; j < T::NT; ++j) {
            const int n = n0 + wn * T::WARP_N + j * 8 + 2 * t;
            const float s0 = column_scale(S, n, N, n_blocks, last_block);
            const float s1 = column_scale(S, n + 1, N, n_blocks, last_block);
#pragma unroll
            for (int i = 0; i < T::MT; ++i) {
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int r = wm * T::WARP_M + i * 16 + g + 8 * h;
                    const int m = m0 + r;
                    if (m >= M || n >= N) continue;
                    const int e = 2 * h;  // accumulator pair of row m: columns n, n + 1
                    const float y0 = fmaf((float)iacc[i][j][e], s0, facc[i][j][e]) * steps[r];
                    const float y1 =
                        fmaf((float)iacc[i][j][e + 1], s1, facc[i][j][e + 1]) * steps[r];
                    OutT* dst = Y + (size_t)m * N + n;  // n is even
                    if (y_pair) {
                        write_pair(dst, y0, y1);
                    } else {
                        write_out(dst, y0);
                        if (n + 1 < N) write_out(dst + 1, y1);
                    }
                }
            }
        }
    }
}

// ---- extern "C" entry points --------------------------------------------------------------
// W2A16_TILE / W2A8_TILE(BM, BN, warps along M, warps along N, pipeline stages): the table
// plugins_trt/mma_tiles.py reads; a test keeps the two in step.
// minBlocks 1: the accumulators (and W2A8's second set) want more than 128 registers; a
// tighter bound makes ptxas spill.
#define W2A16_TILE(BM, BN, WM, WN, STAGES)                                                  \
    extern "C" __global__ void __launch_bounds__(32 * WM * WN, 1)                           \
        ternary_mma_f16_##BM##x##BN(const f16_t* X, const u32* W, const float* S, f16_t* Y, \
                                    int M, int K, int N, int wpr, int wpb_log2) {           \
        ternary_mma_f16<W2A16Tile<BM, BN, WM, WN, STAGES>>(X, W, S, Y, M, K, N, wpr,        \
                                                           wpb_log2);                       \
    }

#define W2A8_TILE(BM, BN, WM, WN, STAGES)                                                   \
    extern "C" __global__ void __launch_bounds__(32 * WM * WN, 1)                           \
        ternary_mma_w2a8_f16_##BM##x##BN(const f16_t* X, const u32* W, const float* S,      \
                                         f16_t* Y, int M, int K, int N, int wpr,            \
                                         int wpb_log2, int kchunk) {                        \
        ternary_mma_w2a8<W2A8Tile<BM, BN, WM, WN, STAGES>>(X, W, S, Y, M, K, N, wpr,        \
                                                           wpb_log2, kchunk);               \
    }                                                                                       \
    extern "C" __global__ void __launch_bounds__(32 * WM * WN, 1)                           \
        ternary_mma_w2a8_f32_##BM##x##BN(const float* X, const u32* W, const float* S,      \
                                         float* Y, int M, int K, int N, int wpr,            \
                                         int wpb_log2, int kchunk) {                        \
        ternary_mma_w2a8<W2A8Tile<BM, BN, WM, WN, STAGES>>(X, W, S, Y, M, K, N, wpr,        \
                                                           wpb_log2, kchunk);               \
    }

W2A16_TILE(128, 128, 2, 4, 4)
W2A16_TILE(128, 64, 2, 2, 4)
W2A16_TILE(64, 128, 1, 4, 4)
W2A16_TILE(64, 64, 2, 2, 4)
W2A16_TILE(32, 128, 1, 4, 4)

W2A8_TILE(128, 128, 2, 4, 3)
W2A8_TILE(128, 64, 2, 2, 4)
W2A8_TILE(64, 128, 1, 4, 4)
W2A8_TILE(64, 64, 2, 2, 4)
W2A8_TILE(32, 128, 1, 4, 4)
