// intrinsics.cuh: the architecture-specific device functions the kernels
// call: tensor-core mma, ldmatrix, cp.async, 16-byte shared loads and the
// Hopper wgmma family. CUDA mode: inline PTX, defined here. SIM mode: the
// simulator's implementations in sim/intrinsics_sim.cuh, which follow the
// PTX ISA fragment layouts.
#ifndef ADAFACE_INTRINSICS_CUH
#define ADAFACE_INTRINSICS_CUH

#include "portable.cuh"

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
#include "sim/intrinsics_sim.cuh"
#else  // CUDA mode

// A vector access of `bytes` at p: the hardware faults when p is not aligned
// to the access size; the simulator checks it here (nothing on the GPU).
__device__ __forceinline__ void adaface_check_aligned(const void*, uint32_t) {}

// 2^x on the special-function unit (ex2.approx.ftz.f32: about 2 ulp, a
// result below the normal range flushed to +0, 2^-inf = +0). The softmax
// exponentials of the flash epilogues call it with log2(e) folded into one
// fma, where expf costs a range reduction of five more instructions.
__device__ __forceinline__ float adaface_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

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

/* wgmma_m64nNk16_bf16<Chunks, BMnMajor>(d, ...): the same product with
 * N = 64 Chunks (64 to 256) in one instruction, the accumulator given as
 * Chunks rows of 32 (d[j] holds the n8 blocks 8j .. 8j + 7, so the register
 * order is m64n64's, chunk after chunk). For an MN-major B the 64-element
 * groups along N lie the descriptor's leading byte offset apart. One wide
 * product reads the A tile once where Chunks m64n64 products read it Chunks
 * times. The operand lists are built from pieces of 32 registers. */
#define ADAFACE_WG_R32_0 \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define ADAFACE_WG_R32_1 \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define ADAFACE_WG_R32_2 \
    "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, " \
    "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95"
#define ADAFACE_WG_R32_3 \
    "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, " \
    "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
#define ADAFACE_WG_ACC32(d, c) \
    "+f"((d)[c][0]), "+f"((d)[c][1]), "+f"((d)[c][2]), "+f"((d)[c][3]), "+f"((d)[c][4]), "+f"((d)[c][5]), \
    "+f"((d)[c][6]), "+f"((d)[c][7]), "+f"((d)[c][8]), "+f"((d)[c][9]), "+f"((d)[c][10]), "+f"((d)[c][11]), \
    "+f"((d)[c][12]), "+f"((d)[c][13]), "+f"((d)[c][14]), "+f"((d)[c][15]), "+f"((d)[c][16]), "+f"((d)[c][17]), \
    "+f"((d)[c][18]), "+f"((d)[c][19]), "+f"((d)[c][20]), "+f"((d)[c][21]), "+f"((d)[c][22]), "+f"((d)[c][23]), \
    "+f"((d)[c][24]), "+f"((d)[c][25]), "+f"((d)[c][26]), "+f"((d)[c][27]), "+f"((d)[c][28]), "+f"((d)[c][29]), \
    "+f"((d)[c][30]), "+f"((d)[c][31])

template <int Chunks, bool BMnMajor, int Rows>
__device__ __forceinline__ void wgmma_m64nNk16_bf16(float (&d)[Rows][32], uint64_t desc_a, uint64_t desc_b,
                                                    bool accumulate = true) {
    static_assert(Chunks >= 1 && Chunks <= 4 && Chunks <= Rows, "N = 64 .. 256");
#ifdef ADAFACE_HAS_WGMMA
    if constexpr (Chunks == 1) {
        wgmma_m64n64k16_bf16<BMnMajor>(d[0], desc_a, desc_b, accumulate);
    } else if constexpr (Chunks == 2) {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %67, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" ADAFACE_WG_R32_0 ", " ADAFACE_WG_R32_1
                     "}, %64, %65, p, 1, 1, 0, %66;\n}\n"
                     : ADAFACE_WG_ACC32(d, 0), ADAFACE_WG_ACC32(d, 1)
                     : "l"(desc_a), "l"(desc_b), "n"(BMnMajor ? 1 : 0), "r"(accumulate ? 1 : 0));
    } else if constexpr (Chunks == 3) {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %99, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n192k16.f32.bf16.bf16 {" ADAFACE_WG_R32_0 ", " ADAFACE_WG_R32_1
                     ", " ADAFACE_WG_R32_2
                     "}, %96, %97, p, 1, 1, 0, %98;\n}\n"
                     : ADAFACE_WG_ACC32(d, 0), ADAFACE_WG_ACC32(d, 1), ADAFACE_WG_ACC32(d, 2)
                     : "l"(desc_a), "l"(desc_b), "n"(BMnMajor ? 1 : 0), "r"(accumulate ? 1 : 0));
    } else if constexpr (Chunks == 4) {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %131, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {" ADAFACE_WG_R32_0 ", " ADAFACE_WG_R32_1
                     ", " ADAFACE_WG_R32_2 ", " ADAFACE_WG_R32_3
                     "}, %128, %129, p, 1, 1, 0, %130;\n}\n"
                     : ADAFACE_WG_ACC32(d, 0), ADAFACE_WG_ACC32(d, 1), ADAFACE_WG_ACC32(d, 2),
                       ADAFACE_WG_ACC32(d, 3)
                     : "l"(desc_a), "l"(desc_b), "n"(BMnMajor ? 1 : 0), "r"(accumulate ? 1 : 0));
    }
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

#endif  // ADAFACE_INTRINSICS_CUH
