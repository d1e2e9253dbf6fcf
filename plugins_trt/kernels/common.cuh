// Helpers shared by the e2edge kernels.
//
// Header-free on purpose: NVRTC on a bare machine (pip cuda-python, no toolkit) has no
// cuda_fp16.h, so fp16 values travel as raw 16-bit patterns and fp16 arithmetic is inline
// PTX. Everything here is valid for sm_70+ (Xavier's sm_72, Orin's sm_87, sm_80, sm_90)
// and for the NVRTC of CUDA 11.4 (JetPack 5) onwards.
#pragma once

typedef unsigned short f16_t;  // IEEE binary16 bit pattern
typedef unsigned int u32;

// ---- conversions ----------------------------------------------------------------------
__device__ __forceinline__ float f16_to_f32(f16_t h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ f16_t f32_to_f16(float f) {
    f16_t h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// half2 (two halves in one 32-bit register, element 0 in the low 16 bits) -> two floats
__device__ __forceinline__ void f16x2_to_f32(u32 v, float& lo, float& hi) {
    f16_t l, h;
    asm("mov.b32 {%0, %1}, %2;" : "=h"(l), "=h"(h) : "r"(v));
    lo = f16_to_f32(l);
    hi = f16_to_f32(h);
}

__device__ __forceinline__ u32 f32x2_to_f16x2(float lo, float hi) {
    return (u32)f32_to_f16(lo) | ((u32)f32_to_f16(hi) << 16);
}

// sixteen floats from a 16-byte aligned address, as four 16-byte loads
__device__ __forceinline__ void ldg_f32x16(const float* p, float (&v)[16]) {
#pragma unroll
    for (int q = 0; q < 4; ++q) {
        const float4 f = __ldg(reinterpret_cast<const float4*>(p) + q);
        v[4 * q] = f.x;
        v[4 * q + 1] = f.y;
        v[4 * q + 2] = f.z;
        v[4 * q + 3] = f.w;
    }
}

// ---- packed half2 arithmetic (sm_53+) -------------------------------------------------
__device__ __forceinline__ u32 hfma2(u32 a, u32 b, u32 c) {
    u32 d;
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

__device__ __forceinline__ u32 hsub2(u32 a, u32 b) {
    u32 d;
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}

__device__ __forceinline__ u32 hmul2(u32 a, u32 b) {
    u32 d;
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}

// byte permute: result byte i = byte sel[i] of the 8-byte value (b:a)
__device__ __forceinline__ u32 prmt(u32 a, u32 b, u32 sel) {
    u32 d;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
    return d;
}

// four signed 8-bit products summed into c (sm_61+)
__device__ __forceinline__ int dp4a(int a, int b, int c) {
    int d;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

// ---- reductions -----------------------------------------------------------------------
// Sums each of N values (N a power of two <= 32) over the warp in N - 1 + 5 - log2(N)
// shuffles instead of 5N: at each of the first log2(N) steps a lane keeps half of its
// values and trades the other half with its partner. Afterwards v[0] of every lane holds
// the warp's total of value index warp_scatter_index<N>(lane).
template <int N>
__device__ __forceinline__ void warp_reduce_scatter(float (&v)[N]) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int step = 0; step < 5; ++step) {
        const int offset = 16 >> step;
        const int half = (N >> step) / 2;  // values traded at this step (0: plain sums)
        if (half == 0) {
            v[0] += __shfl_xor_sync(0xffffffffu, v[0], offset);
            continue;
        }
        const bool upper = (lane & offset) != 0;
#pragma unroll
        for (int j = 0; j < N / 2; ++j) {
            if (j < half) {
                const float keep = upper ? v[j + half] : v[j];
                const float send = upper ? v[j] : v[j + half];
                v[j] = keep + __shfl_xor_sync(0xffffffffu, send, offset);
            }
        }
    }
}

template <int N>
__device__ __forceinline__ int warp_scatter_index(int lane) {
    int index = 0;
    int offset = 16;
#pragma unroll
    for (int n = N; n > 1; n >>= 1, offset >>= 1)
        if (lane & offset) index += n / 2;
    return index;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// ---- the packed 2-bit layout (runtime/ternary_layout.py) ------------------------------
// A 32-bit word holds 16 codes along K, code i in bits 2i..2i+1; value = (code - 2) * scale.
#define TERNARY_ZERO_WORD 0xAAAAAAAAu  // sixteen codes of 2: dequantises to zeros

// Codes i and i+8 of a word as a half2 of (code - 2), exact, in two instructions (i is a
// compile-time constant in every caller's unrolled loop): a code at bit 2j of a half with
// j <= 4 lies inside the 10-bit mantissa of 1024.0 (0x6400), so one LOP3 (mask, OR 0x6400)
// gives 1024 + code * 4^j, and one fma by 4^-j plus -(1024 * 4^-j + 2) leaves code - 2
// (the product is a power-of-two scaling, the sum a small integer: no rounding). Codes
// 5..7 are first moved down by 6 bits (one shift, shared by the three).
__device__ __forceinline__ u32 ternary_pair(u32 word, int i) {
    const int j = i <= 4 ? i : i - 3;
    const u32 src = i <= 4 ? word : word >> 6;
    const u32 biased = (src & (0x00030003u << (2 * j))) | 0x64006400u;
    // 4^-j and -(1024 * 4^-j + 2) as fp16 bit patterns, both halves alike
    const u32 scale = j == 0 ? 0x3C003C00u : j == 1 ? 0x34003400u : j == 2 ? 0x2C002C00u
                    : j == 3 ? 0x24002400u : 0x1C001C00u;
    const u32 bias = j == 0 ? 0xE402E402u : j == 1 ? 0xDC08DC08u : j == 2 ? 0xD420D420u
                   : j == 3 ? 0xCC80CC80u : 0xC600C600u;
    return hfma2(biased, scale, bias);
}

// One code as a float (code - 2): 0x4B000000 is 2^23, whose mantissa ULP is 1.
__device__ __forceinline__ float ternary_value(u32 word, int i) {
    return __int_as_float(0x4B000000u | ((word >> (2 * i)) & 3u)) - 8388610.0f;
}
