// portable.cuh: the one header every kernel file includes first: the
// platform macros of both builds and the 16-bit element conversions.
//
// The same kernel source compiles two ways:
//   * CUDA mode: NVRTC at run time. No CUDA headers are available there, so
//     this header defines everything it needs itself (fixed-width integers,
//     bf16/f16 storage types and conversions).
//   * SIM mode (-DADAFACE_SIM, g++ as C++20): the CUDA built-ins come from
//     sim/cuda_sim.h, which runs every block's threads as fibers on CPU threads.
//
// Everything architecture-specific (tensor-core mma, ldmatrix, cp.async,
// wgmma) sits behind the small device functions of intrinsics.cuh. See
// kernels/sim/README.md.
#ifndef ADAFACE_PORTABLE_CUH
#define ADAFACE_PORTABLE_CUH

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

#endif  // ADAFACE_PORTABLE_CUH
