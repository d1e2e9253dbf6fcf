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

// Codes i and i+8 of a word as a half2 of (code - 2), exact: OR-ing a code into the
// mantissa of 1024.0 (0x6400) gives 1024 + code, and subtracting 1026 leaves code - 2.
__device__ __forceinline__ u32 ternary_pair(u32 word, int i) {
    const u32 biased = ((word >> (2 * i)) & 0x00030003u) | 0x64006400u;
    return hsub2(biased, 0x64026402u);
}

// One code as a float (code - 2): 0x4B000000 is 2^23, whose mantissa ULP is 1.
__device__ __forceinline__ float ternary_value(u32 word, int i) {
    return __int_as_float(0x4B000000u | ((word >> (2 * i)) & 3u)) - 8388610.0f;
}
