// intrinsics_sim.cuh: the simulator's implementations of the device
// functions of ../intrinsics.cuh (SIM mode only; NVRTC never sees this file).
// mma.sync and ldmatrix run as warp collectives, cp.async copies are deferred
// to the matching wait, and wgmma products to theirs (cuda_sim_runtime.cpp).
#ifndef ADAFACE_INTRINSICS_SIM_CUH
#define ADAFACE_INTRINSICS_SIM_CUH

#ifndef ADAFACE_SIM
#error "intrinsics_sim.cuh is only for the simulator build (-DADAFACE_SIM)"
#endif

#include "../portable.cuh"

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

// A vector access of `bytes` at p: fails the launch where the hardware would
// fault (p not aligned to the access size), which host loads and stores
// would otherwise forgive.
__device__ __forceinline__ void adaface_check_aligned(const void* p, uint32_t bytes) {
    adaface_sim::check_aligned(p, bytes);
}

// 2^x as ex2.approx.ftz.f32 gives it: a result below the normal range is
// flushed to +0 (the host's exp2f is within the instruction's 2 ulp).
__device__ __forceinline__ float adaface_exp2(float x) {
    const float y = exp2f(x);
    return y < 1.17549435e-38f ? 0.0f : y;
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

template <int Chunks, bool BMnMajor, int Rows>
__device__ __forceinline__ void wgmma_m64nNk16_bf16(float (&d)[Rows][32], uint64_t desc_a, uint64_t desc_b,
                                                    bool accumulate = true) {
    static_assert(Chunks >= 1 && Chunks <= 4 && Chunks <= Rows, "N = 64 .. 256");
    adaface_sim::wgmma_issue(desc_a, desc_b, &d[0][0], 64 * Chunks, BMnMajor, accumulate);
}

#endif  // ADAFACE_INTRINSICS_SIM_CUH
