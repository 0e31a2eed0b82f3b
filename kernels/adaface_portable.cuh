// adaface_portable.cuh: the one header every kernel file includes first.
//
// The same kernel source compiles two ways:
//   * CUDA mode: NVRTC at run time. No CUDA headers are available there, so
//     this header defines everything it needs itself (fixed-width integers,
//     bf16/f16 storage types and conversions).
//   * SIM mode (-DADAFACE_SIM, g++ as C++20): the CUDA built-ins come from
//     sim/cuda_sim.h, which runs every block's threads as fibers on CPU threads.
//
// Everything architecture-specific (tensor-core mma, ldmatrix, cp.async) sits
// behind the small device functions at the end of this file: inline PTX in
// CUDA mode, a simulator implementation following the PTX ISA fragment
// layouts in SIM mode. See kernels/sim/README.md and notes in CONTRACT.md.
#ifndef ADAFACE_PORTABLE_CUH
#define ADAFACE_PORTABLE_CUH

// ---------------------------------------------------------------------------
// Launch geometry record passed to every `_sim` entry. Declared in both modes
// so the Rust mirror (`adaface::sim::SimLaunch`) has one layout to follow.
// ---------------------------------------------------------------------------
struct adaface_sim_launch {
    unsigned grid_x, grid_y, grid_z;
    unsigned block_x, block_y, block_z;
    unsigned shared_bytes;
};

#ifdef ADAFACE_SIM
// ===========================================================================
// SIM mode
// ===========================================================================
#include "sim/cuda_sim.h"

// One kernel instantiation: a per-thread body plus a C ABI entry that runs the
// whole grid on the simulator and returns 0, or non-zero with a message
// available from adaface_sim_last_error().
#define ADAFACE_KERNEL(name, ParamsType, impl_expr)                                       \
    ADAFACE_SIM_HOT static void name##_adaface_sim_body(const void* adaface_raw_params) { \
        const ParamsType& p = *static_cast<const ParamsType*>(adaface_raw_params);        \
        impl_expr;                                                                        \
    }                                                                                     \
    extern "C" int name##_sim(const adaface_sim_launch* launch, const ParamsType* params) { \
        return ::adaface_sim::launch_kernel(#name, launch, &name##_adaface_sim_body, params); \
    }

// Same, with __launch_bounds__ for the CUDA build (ignored by the simulator).
#define ADAFACE_KERNEL_BOUNDS(name, ParamsType, max_threads, min_blocks, impl_expr) \
    ADAFACE_KERNEL(name, ParamsType, impl_expr)

// The block's dynamic shared memory (the launch's shared_bytes), 128-byte aligned.
#define ADAFACE_DYNAMIC_SMEM(type, name) \
    type* name = reinterpret_cast<type*>(::adaface_sim::dynamic_smem())

#define ADAFACE_BITS_TO_FLOAT(u) (::adaface_sim::bits_to_float(u))
#define ADAFACE_FLOAT_TO_BITS(f) (::adaface_sim::float_to_bits(f))

#else
// ===========================================================================
// CUDA mode (NVRTC): self-contained, no includes.
// ===========================================================================
typedef signed char int8_t;
typedef unsigned char uint8_t;
typedef short int16_t;
typedef unsigned short uint16_t;
typedef int int32_t;
typedef unsigned int uint32_t;
// LP64, as <stdint.h> on Linux: the same types the simulator build sees, so
// overload resolution is identical in both modes.
typedef long int64_t;
typedef unsigned long uint64_t;
static_assert(sizeof(int64_t) == 8 && sizeof(uint64_t) == 8, "adaface kernels need LP64");

#ifndef INFINITY
#define INFINITY (__int_as_float(0x7f800000))
#endif
#ifndef NAN
#define NAN (__int_as_float(0x7fffffff))
#endif

#define ADAFACE_KERNEL(name, ParamsType, impl_expr) \
    extern "C" __global__ void name(const ParamsType p) { impl_expr; }

#define ADAFACE_KERNEL_BOUNDS(name, ParamsType, max_threads, min_blocks, impl_expr) \
    extern "C" __global__ void __launch_bounds__(max_threads, min_blocks)            \
        name(const ParamsType p) { impl_expr; }

#define ADAFACE_DYNAMIC_SMEM(type, name)                                        \
    extern __shared__ __align__(128) unsigned char adaface_dynamic_smem_bytes[]; \
    type* name = reinterpret_cast<type*>(adaface_dynamic_smem_bytes)

#define ADAFACE_BITS_TO_FLOAT(u) (__uint_as_float(u))
#define ADAFACE_FLOAT_TO_BITS(f) (__float_as_uint(f))

#endif  // ADAFACE_SIM

// ---------------------------------------------------------------------------
// Element types: 16-bit storage with explicit bit conversions, identical in
// both modes (round to nearest even; NaN stays NaN, quieted, sign and top
// payload bits kept, the same bits as the Rust `half` crate produces).
// ---------------------------------------------------------------------------
struct adaface_bf16 {
    uint16_t bits;
};
struct adaface_f16 {
    uint16_t bits;
};

__device__ __forceinline__ uint16_t adaface_f32_to_bf16_bits(float f) {
    const uint32_t x = ADAFACE_FLOAT_TO_BITS(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        return (uint16_t)((x >> 16) | 0x0040u);  // NaN: keep sign + payload, set quiet bit
    }
    // Round to nearest, ties to even: add 0x7fff plus the lowest kept bit.
    const uint32_t rounded = x + 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(rounded >> 16);
}

__device__ __forceinline__ float adaface_bf16_bits_to_f32(uint16_t h) {
    return ADAFACE_BITS_TO_FLOAT((uint32_t)h << 16);
}

__device__ __forceinline__ uint16_t adaface_f32_to_f16_bits(float f) {
    const uint32_t x = ADAFACE_FLOAT_TO_BITS(f);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t exp = x & 0x7f800000u;
    uint32_t man = x & 0x007fffffu;
    if (exp == 0x7f800000u) {
        // Infinity stays infinity; NaN is quieted, keeping the top payload bits.
        const uint32_t quiet = man != 0 ? 0x0200u : 0u;
        return (uint16_t)(sign | 0x7c00u | quiet | (man >> 13));
    }
    const int32_t half_exp = (int32_t)(exp >> 23) - 127 + 15;
    if (half_exp >= 0x1f) {
        return (uint16_t)(sign | 0x7c00u);  // overflow to infinity
    }
    if (half_exp <= 0) {
        // Subnormal half (or zero): shift the full significand into place.
        const int32_t shift = 14 - half_exp;
        if (shift > 24) {
            return (uint16_t)sign;  // below half of the smallest subnormal
        }
        man |= 0x00800000u;
        uint32_t half_man = man >> shift;
        const uint32_t round_bit = 1u << (shift - 1);
        // Round up when the dropped part is above half, or exactly half with
        // an odd kept part (3 * round_bit - 1 covers the sticky bits and the
        // lowest kept bit).
        if ((man & round_bit) != 0 && (man & (3u * round_bit - 1u)) != 0) {
            half_man += 1;
        }
        return (uint16_t)(sign | half_man);
    }
    const uint32_t out = sign | ((uint32_t)half_exp << 10) | (man >> 13);
    const uint32_t round_bit = 0x1000u;
    if ((man & round_bit) != 0 && (man & (3u * round_bit - 1u)) != 0) {
        return (uint16_t)(out + 1);  // a carry into the exponent is correct rounding
    }
    return (uint16_t)out;
}

__device__ __forceinline__ float adaface_f16_bits_to_f32(uint16_t h) {
    const uint32_t sign = ((uint32_t)h & 0x8000u) << 16;
    const uint32_t exp = (uint32_t)h & 0x7c00u;
    const uint32_t man = (uint32_t)h & 0x03ffu;
    if (exp == 0x7c00u) {
        if (man == 0) {
            return ADAFACE_BITS_TO_FLOAT(sign | 0x7f800000u);
        }
        return ADAFACE_BITS_TO_FLOAT(sign | 0x7fc00000u | (man << 13));
    }
    if (exp == 0) {
        if (man == 0) {
            return ADAFACE_BITS_TO_FLOAT(sign);
        }
        // Subnormal: normalise. value = man * 2^-24, highest set bit p.
        int32_t p = 9;
        while (((man >> p) & 1u) == 0) {
            --p;
        }
        const uint32_t e = (uint32_t)(p - 24 + 127);
        const uint32_t m = (man << (23 - p)) & 0x007fffffu;
        return ADAFACE_BITS_TO_FLOAT(sign | (e << 23) | m);
    }
    return ADAFACE_BITS_TO_FLOAT(sign | (((exp >> 10) - 15u + 127u) << 23) | (man << 13));
}

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(adaface_bf16 x) { return adaface_bf16_bits_to_f32(x.bits); }
__device__ __forceinline__ float to_float(adaface_f16 x) { return adaface_f16_bits_to_f32(x.bits); }

template <typename T>
struct adaface_from_float;
template <>
struct adaface_from_float<float> {
    static __device__ __forceinline__ float convert(float x) { return x; }
};
template <>
struct adaface_from_float<adaface_bf16> {
    static __device__ __forceinline__ adaface_bf16 convert(float x) {
        adaface_bf16 r;
        r.bits = adaface_f32_to_bf16_bits(x);
        return r;
    }
};
template <>
struct adaface_from_float<adaface_f16> {
    static __device__ __forceinline__ adaface_f16 convert(float x) {
        adaface_f16 r;
        r.bits = adaface_f32_to_f16_bits(x);
        return r;
    }
};

// from_float<T>(x): float to float, adaface_bf16 or adaface_f16 (round to nearest even).
template <typename T>
__device__ __forceinline__ T from_float(float x) {
    return adaface_from_float<T>::convert(x);
}

// Two 16-bit values in one 32-bit register, `lo` in the low half (the order
// the mma fragments use: lower column / row index in the low half).
__device__ __forceinline__ uint32_t adaface_pack2(uint16_t lo, uint16_t hi) {
    return (uint32_t)lo | ((uint32_t)hi << 16);
}

// ---------------------------------------------------------------------------
// Tensor cores: mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32
//
// Per-lane fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16 with
// floating point type"); g = lane >> 2, t = lane % 4:
//   A (16x16, row-major), a[r] holds two elements, low half first:
//     a[0] = A[g    ][2t, 2t+1]     a[1] = A[g + 8][2t, 2t+1]
//     a[2] = A[g    ][2t+8, 2t+9]   a[3] = A[g + 8][2t+8, 2t+9]
//   B (16x8, "col": indexed B[k][n]):
//     b[0] = B[2t, 2t+1][g]         b[1] = B[2t+8, 2t+9][g]
//   C, D (16x8 f32):
//     c[0], c[1] = C[g][2t, 2t+1]   c[2], c[3] = C[g + 8][2t, 2t+1]
// D = A * B + C. All 32 lanes of the warp must call it together (converged).
// In SIM mode the warp's lanes exchange fragments and the last lane to
// arrive computes the whole 16x8 tile with f32 fused multiply-adds in k order
// (the hardware's internal accumulation order may round differently).
// ---------------------------------------------------------------------------
#ifdef ADAFACE_SIM

namespace adaface_sim {
struct MmaIn {
    uint32_t a[4];
    uint32_t b[2];
    float c[4];
};
struct MmaOut {
    float d[4];
};
template <bool IsBf16>
inline float mma_element(uint16_t bits) {
    return IsBf16 ? adaface_bf16_bits_to_f32(bits) : adaface_f16_bits_to_f32(bits);
}
template <bool IsBf16>
ADAFACE_SIM_FAST_MATH_CLONES inline void mma_m16n8k16_execute(const CollectiveSlot* slots, uint32_t /*mask*/) {
    __atomic_fetch_add(&mma_executed, 1ull, __ATOMIC_SEQ_CST);
    float A[16][16];
    float B[16][8];
    float C[16][8];
    for (int lane = 0; lane < 32; ++lane) {
        const MmaIn& in = *static_cast<const MmaIn*>(slots[lane].in);
        const int g = lane >> 2;
        const int t = lane & 3;
        for (int r = 0; r < 4; ++r) {
            const int row = g + ((r & 1) ? 8 : 0);
            const int col = 2 * t + ((r & 2) ? 8 : 0);
            A[row][col] = mma_element<IsBf16>((uint16_t)(in.a[r] & 0xffffu));
            A[row][col + 1] = mma_element<IsBf16>((uint16_t)(in.a[r] >> 16));
        }
        for (int r = 0; r < 2; ++r) {
            const int k = 2 * t + (r ? 8 : 0);
            B[k][g] = mma_element<IsBf16>((uint16_t)(in.b[r] & 0xffffu));
            B[k + 1][g] = mma_element<IsBf16>((uint16_t)(in.b[r] >> 16));
        }
        for (int i = 0; i < 4; ++i) {
            C[g + ((i & 2) ? 8 : 0)][2 * t + (i & 1)] = in.c[i];
        }
    }
    for (int lane = 0; lane < 32; ++lane) {
        MmaOut& out = *static_cast<MmaOut*>(slots[lane].out);
        const int g = lane >> 2;
        const int t = lane & 3;
        for (int i = 0; i < 4; ++i) {
            const int row = g + ((i & 2) ? 8 : 0);
            const int col = 2 * t + (i & 1);
            float acc = C[row][col];
            for (int k = 0; k < 16; ++k) {
                acc = fmaf(A[row][k], B[k][col], acc);
            }
            out.d[i] = acc;
        }
    }
}
template <bool IsBf16>
inline void mma_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
    MmaIn in;
    for (int i = 0; i < 4; ++i) {
        in.a[i] = a[i];
        in.c[i] = c[i];
    }
    in.b[0] = b[0];
    in.b[1] = b[1];
    MmaOut out;
    warp_collective(0xffffffffu, &mma_m16n8k16_execute<IsBf16>, &in, &out, "mma.m16n8k16");
    for (int i = 0; i < 4; ++i) {
        d[i] = out.d[i];
    }
}

// ldmatrix.m8n8.x4(.trans).b16: lanes 8i..8i+7 give the row addresses of
// matrix i. Without .trans lane L receives row L/4, columns 2(L%4), 2(L%4)+1
// of each matrix; with .trans it receives rows 2(L%4), 2(L%4)+1 of column L/4.
struct LdmatrixIn {
    const unsigned char* row;
};
struct LdmatrixOut {
    uint32_t r[4];
};
template <bool Trans>
inline void ldmatrix_x4_execute(const CollectiveSlot* slots, uint32_t /*mask*/) {
    for (int lane = 0; lane < 32; ++lane) {
        LdmatrixOut& out = *static_cast<LdmatrixOut*>(slots[lane].out);
        for (int m = 0; m < 4; ++m) {
            if (!Trans) {
                const LdmatrixIn& src = *static_cast<const LdmatrixIn*>(slots[8 * m + (lane >> 2)].in);
                uint32_t v;
                __builtin_memcpy(&v, src.row + 4 * (lane & 3), 4);
                out.r[m] = v;
            } else {
                uint16_t h[2];
                for (int j = 0; j < 2; ++j) {
                    const LdmatrixIn& src =
                        *static_cast<const LdmatrixIn*>(slots[8 * m + 2 * (lane & 3) + j].in);
                    __builtin_memcpy(&h[j], src.row + 2 * (lane >> 2), 2);
                }
                out.r[m] = adaface_pack2(h[0], h[1]);
            }
        }
    }
}
template <bool Trans>
inline void ldmatrix_x4(uint32_t r[4], const void* smem_row) {
    LdmatrixIn in{static_cast<const unsigned char*>(smem_row)};
    LdmatrixOut out;
    warp_collective(0xffffffffu, &ldmatrix_x4_execute<Trans>, &in, &out,
                    Trans ? "ldmatrix.x4.trans" : "ldmatrix.x4");
    for (int i = 0; i < 4; ++i) {
        r[i] = out.r[i];
    }
}
}  // namespace adaface_sim

__device__ __forceinline__ void mma_m16n8k16_bf16_f32(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                      const float c[4]) {
    adaface_sim::mma_m16n8k16<true>(d, a, b, c);
}
__device__ __forceinline__ void mma_m16n8k16_f16_f32(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                     const float c[4]) {
    adaface_sim::mma_m16n8k16<false>(d, a, b, c);
}
// Each lane passes the address (in shared memory) of one 16-byte row.
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* smem_row) {
    adaface_sim::ldmatrix_x4<false>(r, smem_row);
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* smem_row) {
    adaface_sim::ldmatrix_x4<true>(r, smem_row);
}
// cp.async: in the simulator the copies are deferred until the matching
// wait, so a kernel that reads the destination too early sees stale data
// here too.
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src) {
    adaface_sim::cp_async(smem_dst, gmem_src, 16, 16);
}
// Copies src_bytes (0..16) and zero-fills the rest of the 16 bytes.
__device__ __forceinline__ void cp_async_16_zfill(void* smem_dst, const void* gmem_src, uint32_t src_bytes) {
    adaface_sim::cp_async(smem_dst, gmem_src, 16, src_bytes);
}
__device__ __forceinline__ void cp_async_commit() { adaface_sim::cp_async_commit(); }
__device__ __forceinline__ void cp_async_wait_all() { adaface_sim::cp_async_wait(-1); }
// Waits until at most n committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait_group() {
    adaface_sim::cp_async_wait(N);
}

// One 16-byte load from (16-byte aligned) shared memory into four words.
__device__ __forceinline__ void adaface_ld_shared_16(uint32_t out[4], const void* p) {
    __builtin_memcpy(out, p, 16);
}

// wgmma (sm_90a). See the CUDA-mode definitions for the contract; here the
// products are deferred to the matching wait (cuda_sim_runtime.cpp).
__device__ __forceinline__ uint32_t adaface_smem_addr(const void* p) { return adaface_sim::smem_offset(p); }
__device__ __forceinline__ void fence_proxy_async_shared() {}
__device__ __forceinline__ void wgmma_fence() {}
__device__ __forceinline__ void wgmma_commit() { adaface_sim::wgmma_commit(); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
    adaface_sim::wgmma_wait(N);
}
template <int N>
__device__ __forceinline__ void wgmma_fence_operands(float (&)[N]) {}
template <bool BMnMajor>
__device__ __forceinline__ void wgmma_m64n32k16_bf16(float (&d)[16], uint64_t desc_a, uint64_t desc_b,
                                                     bool accumulate = true) {
    adaface_sim::wgmma_issue(desc_a, desc_b, d, 32, BMnMajor, accumulate);
}
template <bool BMnMajor>
__device__ __forceinline__ void wgmma_m64n64k16_bf16(float (&d)[32], uint64_t desc_a, uint64_t desc_b,
                                                     bool accumulate = true) {
    adaface_sim::wgmma_issue(desc_a, desc_b, d, 64, BMnMajor, accumulate);
}

#else  // CUDA mode

// One 16-byte load from (16-byte aligned) shared memory into four words
// (one LDS.128).
__device__ __forceinline__ void adaface_ld_shared_16(uint32_t out[4], const void* p) {
    const uint4 v = *reinterpret_cast<const uint4*>(p);
    out[0] = v.x;
    out[1] = v.y;
    out[2] = v.z;
    out[3] = v.w;
}

__device__ __forceinline__ uint32_t adaface_smem_addr(const void* p) {
    uint32_t addr;
    asm("{ .reg .u64 a64; cvta.to.shared.u64 a64, %1; cvt.u32.u64 %0, a64; }" : "=r"(addr) : "l"(p));
    return addr;
}

__device__ __forceinline__ void mma_m16n8k16_bf16_f32(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                      const float c[4]) {
#if __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
#else
    (void)d; (void)a; (void)b; (void)c;
    __trap();
#endif
}

__device__ __forceinline__ void mma_m16n8k16_f16_f32(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                     const float c[4]) {
#if __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
#else
    (void)d; (void)a; (void)b; (void)c;
    __trap();
#endif
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* smem_row) {
#if __CUDA_ARCH__ >= 750
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(adaface_smem_addr(smem_row)));
#else
    (void)r; (void)smem_row;
    __trap();
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* smem_row) {
#if __CUDA_ARCH__ >= 750
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(adaface_smem_addr(smem_row)));
#else
    (void)r; (void)smem_row;
    __trap();
#endif
}

__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src) {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(adaface_smem_addr(smem_dst)), "l"(gmem_src)
                 : "memory");
#else
    *reinterpret_cast<uint4*>(smem_dst) = *reinterpret_cast<const uint4*>(gmem_src);
#endif
}

__device__ __forceinline__ void cp_async_16_zfill(void* smem_dst, const void* gmem_src, uint32_t src_bytes) {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(adaface_smem_addr(smem_dst)),
                 "l"(gmem_src), "r"(src_bytes)
                 : "memory");
#else
    unsigned char* d = reinterpret_cast<unsigned char*>(smem_dst);
    const unsigned char* s = reinterpret_cast<const unsigned char*>(gmem_src);
    for (uint32_t i = 0; i < 16; ++i) {
        d[i] = i < src_bytes ? s[i] : 0;
    }
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void cp_async_wait_all() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait_group() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

/* ---------------------------------------------------------------------------
 * wgmma (Hopper warpgroup products), compiled only for sm_90a, where NVRTC
 * defines __CUDA_ARCH_FEAT_SM90_ALL; elsewhere the functions trap (the host
 * plan never picks a wgmma kernel there).
 *
 * wgmma_m64nNk16_bf16<BMnMajor>(d, desc_a, desc_b): the warpgroup (4 warps,
 * 128 consecutive threads, all calling together) computes D += A . B with
 * A 64 x 16 (K-major) and B 16 x N (K-major, or MN-major when BMnMajor),
 * both in shared memory behind 128-byte-swizzle descriptors
 * (adaface_wgmma_desc); with accumulate = false, D = A . B (the old d is
 * ignored, so it need not be zeroed while other products are in flight).
 * Thread (warp q of the warpgroup, lane g * 4 + t)
 * holds d[4j + 2h + e] = D[16q + g + 8h][8j + 2t + e]: per n8 block the
 * mma.m16n8k16 accumulator layout. The product is asynchronous: issue
 * between wgmma_fence() and wgmma_commit(); read d only after
 * wgmma_wait<n>() and wgmma_fence_operands(d). Operands written by ordinary
 * stores or cp.async need fence_proxy_async_shared() before the barrier that
 * publishes them to the warpgroup.
 * ------------------------------------------------------------------------- */
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define ADAFACE_HAS_WGMMA 1
#endif

__device__ __forceinline__ void fence_proxy_async_shared() {
#ifdef ADAFACE_HAS_WGMMA
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_fence() {
#ifdef ADAFACE_HAS_WGMMA
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#ifdef ADAFACE_HAS_WGMMA
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
#ifdef ADAFACE_HAS_WGMMA
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
/* Keeps the compiler from moving accumulator reads and writes across the
 * asynchronous product (the registers are in flight between issue and wait). */
template <int N>
__device__ __forceinline__ void wgmma_fence_operands(float (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
template <bool BMnMajor>
__device__ __forceinline__ void wgmma_m64n32k16_bf16(float (&d)[16], uint64_t desc_a, uint64_t desc_b,
                                                     bool accumulate = true) {
#ifdef ADAFACE_HAS_WGMMA
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %19, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7,"
        "%8, %9, %10, %11, %12, %13, %14, %15"
        "}, %16, %17, p, 1, 1, 0, %18;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
          "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
          "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "l"(desc_a), "l"(desc_b), "n"(BMnMajor ? 1 : 0), "r"(accumulate ? 1 : 0));
#else
    (void)d; (void)desc_a; (void)desc_b; (void)accumulate;
    __trap();
#endif
}
template <bool BMnMajor>
__device__ __forceinline__ void wgmma_m64n64k16_bf16(float (&d)[32], uint64_t desc_a, uint64_t desc_b,
                                                     bool accumulate = true) {
#ifdef ADAFACE_HAS_WGMMA
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %35, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7,"
        "%8, %9, %10, %11, %12, %13, %14, %15,"
        "%16, %17, %18, %19, %20, %21, %22, %23,"
        "%24, %25, %26, %27, %28, %29, %30, %31"
        "}, %32, %33, p, 1, 1, 0, %34;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
          "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
          "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
          "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
          "+f"(d[30]), "+f"(d[31])
        : "l"(desc_a), "l"(desc_b), "n"(BMnMajor ? 1 : 0), "r"(accumulate ? 1 : 0));
#else
    (void)d; (void)desc_a; (void)desc_b; (void)accumulate;
    __trap();
#endif
}

#endif  // ADAFACE_SIM

/* 64-bit wgmma shared-memory matrix descriptor for the 128-byte swizzle
 * (both builds): start address >> 4 in bits 0-13, leading byte offset >> 4
 * in bits 16-29, stride byte offset >> 4 in bits 32-45, base offset 0 in
 * bits 49-51, layout 1 (128B swizzle) in bits 62-63. For K-major operands
 * SBO is the stride between 8-row groups (LBO unused); for MN-major ones
 * SBO is the stride between 8-deep K groups and LBO the stride between
 * 64-element groups along MN. `addr` is a shared-space address
 * (adaface_smem_addr), 16-byte aligned; swizzle atoms must be 1024-byte aligned. */
__device__ __forceinline__ uint64_t adaface_wgmma_desc(uint32_t addr, uint32_t lbo_bytes, uint32_t sbo_bytes) {
    return (uint64_t)((addr & 0x3ffffu) >> 4) | ((uint64_t)((lbo_bytes & 0x3ffffu) >> 4) << 16) |
           ((uint64_t)((sbo_bytes & 0x3ffffu) >> 4) << 32) | (1ull << 62);
}

#endif  // ADAFACE_PORTABLE_CUH
