/* LOCAL STAND-IN (kernels branch) for the portability header owned by the
 * simulator branch: only the CUDA half, enough to compile-check the kernels
 * with NVRTC. Replaced by the simulator branch's file on merge. */
#ifndef ADAFACE_PORTABLE_CUH
#define ADAFACE_PORTABLE_CUH

#ifdef ADAFACE_SIM
#error "the simulator half of adaface_portable.cuh comes from the sim branch"
#endif

typedef signed char int8_t;
typedef int int32_t;
typedef long long int64_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

struct adaface_sim_launch {
    unsigned grid_x, grid_y, grid_z, block_x, block_y, block_z, shared_bytes;
};

#define ADAFACE_KERNEL(name, ParamsType, impl_expr) \
    extern "C" __global__ void name(const ParamsType p) { impl_expr; }

#define ADAFACE_DYNAMIC_SMEM(type, name) extern __shared__ type name[]

struct adaface_bf16 { uint16_t bits; };
struct adaface_f16 { uint16_t bits; };

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(adaface_bf16 v) {
    return __uint_as_float(((uint32_t)v.bits) << 16);
}
__device__ __forceinline__ float to_float(adaface_f16 v) {
    float f;
    asm("{ .reg .f16 h; mov.b16 h, %1; cvt.f32.f16 %0, h; }" : "=f"(f) : "h"(v.bits));
    return f;
}
template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ adaface_bf16 from_float<adaface_bf16>(float v) {
    uint32_t u = __float_as_uint(v);
    adaface_bf16 r;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        r.bits = (uint16_t)((u >> 16) | 0x40u);
    } else {
        r.bits = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
    return r;
}
template <> __device__ __forceinline__ adaface_f16 from_float<adaface_f16>(float v) {
    adaface_f16 r;
    asm("{ .reg .f16 h; cvt.rn.f16.f32 h, %1; mov.b16 %0, h; }" : "=h"(r.bits) : "f"(v));
    return r;
}

#endif
