// Sparse gated FFN: Y (M, D) = sum over active neurons j of act(x . Wg[j]) * (x . Wu[j]) * Wd[j]
//
//   X   (M, D)  activations, fp16 or fp32
//   Wg  (F, D)  gate rows, neuron-major      (= gate_proj.weight)
//   Wu  (F, D)  up rows, neuron-major        (= up_proj.weight)
//   Wd  (F, D)  down rows, neuron-major      (= down_proj.weight.T, ONNX MatMul's B)
//   active neurons: positions p < n of either an index list idx[p] (unique neuron ids), or
//   the prefix j = p of saliency-ordered neurons, whose width n may live on the device
//   (`width`, clamped to [0, F]) so one TensorRT engine runs at any width without a sync.
//   The grid is sized for n_active (F when the width is on the device); blocks past the
//   width do no loads, so time scales with the active width.
//
// Two kernels, each reading only the active neurons' rows, once:
//   sparse_ffn_gate_up  one warp per active neuron: gate and up dot products, activation and
//                       product -> H (M, n_active) fp32. Also zeroes Yacc and the counter.
//   sparse_ffn_down     a block = 256 columns x a slice of 64 active neurons; 8 warps split
//                       the slice, reduce in shared memory, then one atomicAdd per column into
//                       Yacc (M, D) fp32. With Y16 given, the last block to finish converts
//                       Yacc to the fp16 output (one launch less at decode).
// Splitting at H is what keeps enough loads in flight: a single kernel would either run one
// block per SM at decode or add an atomic per neuron and column.
//
// activation: 0 = silu (LLaMA), 1 = gelu with the tanh approximation (Gemma).
#include "common.cuh"

#define FFN_THREADS 256
#define FFN_WARPS (FFN_THREADS / 32)
#define DOWN_COLS 256   // columns per down block: 32 lanes x 8
#define DOWN_SLICE 64   // active neurons per down block (8 per warp)

__device__ __forceinline__ void load8(const f16_t* p, float (&v)[8]) {
    const uint4 q = __ldg(reinterpret_cast<const uint4*>(p));
    f16x2_to_f32(q.x, v[0], v[1]);
    f16x2_to_f32(q.y, v[2], v[3]);
    f16x2_to_f32(q.z, v[4], v[5]);
    f16x2_to_f32(q.w, v[6], v[7]);
}

__device__ __forceinline__ void load8(const float* p, float (&v)[8]) {
    const float4 a = __ldg(reinterpret_cast<const float4*>(p));
    const float4 b = __ldg(reinterpret_cast<const float4*>(p) + 1);
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
    v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}

__device__ __forceinline__ float load1(const f16_t* p) { return f16_to_f32(__ldg(p)); }
__device__ __forceinline__ float load1(const float* p) { return __ldg(p); }

__device__ __forceinline__ float activate(float g, int activation) {
    if (activation == 0) return g / (1.0f + expf(-g));
    const float c = 0.7978845608028654f;  // sqrt(2 / pi)
    return 0.5f * g * (1.0f + tanhf(c * (g + 0.044715f * g * g * g)));
}

// Active count n: the host's n_active, capped by F and by the device width when given.
__device__ __forceinline__ int active_count(int n_active, int F, const int* width) {
    int n = min(n_active, F);
    if (width != 0) n = min(n, max(__ldg(width), 0));
    return n;
}

// Neuron id at position p, or -1 for ids out of range (they contribute nothing).
__device__ __forceinline__ int neuron_at(const int* idx, int p, int F) {
    const int j = idx != 0 ? __ldg(idx + p) : p;
    return (j < 0 || j >= F) ? -1 : j;
}

// ---- kernel 1: gate, up, activation, product ----------------------------------------------
// grid (ceil(n_active / 8), ceil(M / TOK)); block 256 = 8 warps, warp w -> position 8 bx + w
template <typename T, int TOK>
__device__ __forceinline__ void sparse_ffn_gate_up(
    const T* __restrict__ X, const T* __restrict__ Wg, const T* __restrict__ Wu,
    const int* __restrict__ idx, const int* __restrict__ width, int n_active,
    float* __restrict__ H, float* __restrict__ Yacc, unsigned int* __restrict__ counter, int M,
    int D, int F, int activation) {
    const int block = blockIdx.y * gridDim.x + blockIdx.x;
    const size_t stride = (size_t)gridDim.x * gridDim.y * FFN_THREADS;
    for (size_t i = (size_t)block * FFN_THREADS + threadIdx.x; i < (size_t)M * D; i += stride)
        Yacc[i] = 0.0f;  // the down kernel accumulates into it
    if (block == 0 && threadIdx.x == 0 && counter != 0) *counter = 0u;

    const int lane = threadIdx.x & 31;
    const int p = blockIdx.x * FFN_WARPS + (threadIdx.x >> 5);
    if (p >= active_count(n_active, F, width)) return;  // whole warp: no block sync follows
    const int m0 = blockIdx.y * TOK;
    const int mt = min(TOK, M - m0);
    const int j = neuron_at(idx, p, F);
    X += (size_t)m0 * D;

    float g[TOK], u[TOK];
#pragma unroll
    for (int m = 0; m < TOK; ++m) g[m] = u[m] = 0.0f;
    if (j >= 0) {
        const T* gate_row = Wg + (size_t)j * D;
        const T* up_row = Wu + (size_t)j * D;
        if ((D & 7) == 0) {  // rows 16-byte aligned: 8-wide loads, 4 iterations in flight
#pragma unroll 4
            for (int c = lane * 8; c < D; c += 256) {
                float wg[8], wu[8];
                load8(gate_row + c, wg);
                load8(up_row + c, wu);
#pragma unroll
                for (int m = 0; m < TOK; ++m) {
                    if (m < mt) {
                        float xv[8];
                        load8(X + (size_t)m * D + c, xv);
#pragma unroll
                        for (int e = 0; e < 8; ++e) {
                            g[m] = fmaf(xv[e], wg[e], g[m]);
                            u[m] = fmaf(xv[e], wu[e], u[m]);
                        }
                    }
                }
            }
        } else {
            for (int c = lane; c < D; c += 32) {
                const float wg = load1(gate_row + c), wu = load1(up_row + c);
#pragma unroll
                for (int m = 0; m < TOK; ++m) {
                    if (m < mt) {
                        const float xv = load1(X + (size_t)m * D + c);
                        g[m] = fmaf(xv, wg, g[m]);
                        u[m] = fmaf(xv, wu, u[m]);
                    }
                }
            }
        }
#pragma unroll
        for (int m = 0; m < TOK; ++m) {
            if (m < mt) {
                g[m] = warp_sum(g[m]);
                u[m] = warp_sum(u[m]);
            }
        }
    }
    if (lane == 0) {
#pragma unroll
        for (int m = 0; m < TOK; ++m)
            if (m < mt) H[(size_t)(m0 + m) * n_active + p] = j >= 0 ? activate(g[m], activation) * u[m] : 0.0f;
    }
}

// ---- kernel 2: down projection of the active rows ------------------------------------------
// grid (ceil(D / 256), ceil(n_active / 64), ceil(M / TOK)); block 256 = 8 warps
template <typename T, int TOK>
__device__ __forceinline__ void sparse_ffn_down(
    const float* __restrict__ H, const T* __restrict__ Wd, const int* __restrict__ idx,
    const int* __restrict__ width, int n_active, float* __restrict__ Yacc, f16_t* __restrict__ Y16,
    unsigned int* __restrict__ counter, int M, int D, int F) {
    __shared__ float red[FFN_WARPS][TOK][DOWN_COLS];
    __shared__ bool last_block;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int n = active_count(n_active, F, width);
    const int c0 = blockIdx.x * DOWN_COLS;
    const int p_begin = blockIdx.y * DOWN_SLICE;
    const int p_end = min(p_begin + DOWN_SLICE, n);
    const int m0 = blockIdx.z * TOK;
    const int mt = min(TOK, M - m0);
    const bool vec = (D & 7) == 0;

    float acc[TOK][8];
#pragma unroll
    for (int m = 0; m < TOK; ++m)
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[m][e] = 0.0f;
    const int c = vec ? c0 + lane * 8 : c0 + lane;  // this lane's first column
#pragma unroll 4
    for (int p = p_begin + warp; p < p_end; p += FFN_WARPS) {
        const int j = neuron_at(idx, p, F);
        if (j < 0) continue;
        float w[8];
        if (vec) {
            if (c < D) load8(Wd + (size_t)j * D + c, w);
            else
#pragma unroll
                for (int e = 0; e < 8; ++e) w[e] = 0.0f;
        } else {
#pragma unroll
            for (int e = 0; e < 8; ++e) w[e] = c + 32 * e < D ? load1(Wd + (size_t)j * D + c + 32 * e) : 0.0f;
        }
#pragma unroll
        for (int m = 0; m < TOK; ++m) {
            const float h = m < mt ? H[(size_t)(m0 + m) * n_active + p] : 0.0f;
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[m][e] = fmaf(h, w[e], acc[m][e]);
        }
    }
#pragma unroll
    for (int m = 0; m < TOK; ++m)
#pragma unroll
        for (int e = 0; e < 8; ++e) red[warp][m][vec ? lane * 8 + e : lane + 32 * e] = acc[m][e];
    __syncthreads();
    const int col = c0 + threadIdx.x;
    if (p_begin < p_end && col < D) {
        for (int m = 0; m < mt; ++m) {
            float total = 0.0f;
#pragma unroll
            for (int w = 0; w < FFN_WARPS; ++w) total += red[w][m][threadIdx.x];
            atomicAdd(Yacc + (size_t)(m0 + m) * D + col, total);
        }
    }
    if (Y16 == 0) return;
    // fp16 output: the last block to finish converts the whole accumulator
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned int blocks = gridDim.x * gridDim.y * gridDim.z;
        last_block = atomicAdd(counter, 1u) == blocks - 1;
    }
    __syncthreads();
    if (last_block) {
        const volatile float* acc_all = Yacc;  // written by other blocks' atomics: skip L1
        for (int i = threadIdx.x; i < M * D; i += FFN_THREADS) Y16[i] = f32_to_f16(acc_all[i]);
    }
}

#define GATE_UP_VARIANT(NAME, T, TOK)                                                        \
    extern "C" __global__ void __launch_bounds__(FFN_THREADS)                                \
    NAME(const T* X, const T* Wg, const T* Wu, const int* idx, const int* width,             \
         int n_active, float* H, float* Yacc, unsigned int* counter, int M, int D, int F,    \
         int activation) {                                                                   \
        sparse_ffn_gate_up<T, TOK>(X, Wg, Wu, idx, width, n_active, H, Yacc, counter, M, D, \
                                   F, activation);                                           \
    }

#define DOWN_VARIANT(NAME, T, TOK)                                                           \
    extern "C" __global__ void __launch_bounds__(FFN_THREADS)                                \
    NAME(const float* H, const T* Wd, const int* idx, const int* width, int n_active,        \
         float* Yacc, f16_t* Y16, unsigned int* counter, int M, int D, int F) {              \
        sparse_ffn_down<T, TOK>(H, Wd, idx, width, n_active, Yacc, Y16, counter, M, D, F);   \
    }

GATE_UP_VARIANT(sparse_ffn_gate_up_f16_t1, f16_t, 1)
GATE_UP_VARIANT(sparse_ffn_gate_up_f16_t8, f16_t, 8)
GATE_UP_VARIANT(sparse_ffn_gate_up_f32_t1, float, 1)
GATE_UP_VARIANT(sparse_ffn_gate_up_f32_t8, float, 8)
DOWN_VARIANT(sparse_ffn_down_f16_t1, f16_t, 1)
DOWN_VARIANT(sparse_ffn_down_f16_t4, f16_t, 4)
DOWN_VARIANT(sparse_ffn_down_f32_t1, float, 1)
DOWN_VARIANT(sparse_ffn_down_f32_t4, float, 4)

// fp32 accumulator -> fp16 output, n elements (for outputs too large for the last block)
extern "C" __global__ void __launch_bounds__(256)
f32_to_f16(const float* __restrict__ src, f16_t* __restrict__ dst, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        dst[i] = f32_to_f16(src[i]);
}
