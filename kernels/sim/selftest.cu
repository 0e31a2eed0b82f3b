// selftest.cu: small kernels that exercise every part of the simulator
// (and compile with NVRTC like any kernel). Launched by tests/sim_selftest.rs,
// which checks each against a plain Rust computation.
//
// Parameter structs: device addresses as uint64_t, mirrored by hand in the test.
#include "intrinsics.cuh"

#define SELFTEST_PTR(type, field) reinterpret_cast<type*>(p.field)

// ---------------------------------------------------------------------------
// Static shared memory, __syncthreads and its reducing variants.
// ---------------------------------------------------------------------------
struct SelftestBlockSumParams {
    uint64_t input;   // float[gridDim.x * n]
    uint64_t sums;    // float[gridDim.x]
    uint64_t counts;  // int32[gridDim.x * 3]: count(partial > 0), and(partial != 0), or(partial > 8)
    uint32_t n;       // elements per block
    uint32_t pad;
};

__device__ __forceinline__ void selftest_block_sum(const SelftestBlockSumParams& p) {
    __shared__ float buf[1024];
    const float* in = SELFTEST_PTR(const float, input) + (uint64_t)blockIdx.x * p.n;
    const unsigned tid = threadIdx.x;
    float partial = 0.0f;
    for (unsigned i = tid; i < p.n; i += blockDim.x) {
        partial += in[i];
    }
    buf[tid] = partial;
    const int count = __syncthreads_count(partial > 0.0f);
    const int all_nonzero = __syncthreads_and(partial != 0.0f);
    const int any_big = __syncthreads_or(partial > 8.0f);
    unsigned span = 1;
    while (span < blockDim.x) {
        span <<= 1;
    }
    for (unsigned s = span / 2; s > 0; s >>= 1) {
        if (tid < s && tid + s < blockDim.x) {
            buf[tid] += buf[tid + s];
        }
        __syncthreads();
    }
    if (tid == 0) {
        SELFTEST_PTR(float, sums)[blockIdx.x] = buf[0];
        int32_t* c = SELFTEST_PTR(int32_t, counts) + 3 * blockIdx.x;
        c[0] = count;
        c[1] = all_nonzero;
        c[2] = any_big;
    }
}
ADAFACE_KERNEL(selftest_block_sum_f32, SelftestBlockSumParams, (selftest_block_sum(p)))

// ---------------------------------------------------------------------------
// Dynamic shared memory (and cp.async with zero fill into it).
// ---------------------------------------------------------------------------
struct SelftestDynSmemParams {
    uint64_t input;   // float[gridDim.x * blockDim.x]
    uint64_t output;  // float[gridDim.x * blockDim.x]: the block's slice reversed
    uint64_t zfill;   // uint8[gridDim.x * 16]: 16-byte chunk copied with 10 source bytes
    uint64_t align;   // int32[gridDim.x]: 1 when the dynamic shared memory is 128-byte aligned
};

__device__ __forceinline__ void selftest_dyn_smem(const SelftestDynSmemParams& p) {
    ADAFACE_DYNAMIC_SMEM(float, smem);
    const unsigned n = blockDim.x;
    const unsigned t = threadIdx.x;
    const uint64_t base = (uint64_t)blockIdx.x * n;
    smem[t] = SELFTEST_PTR(const float, input)[base + t];
    __syncthreads();
    SELFTEST_PTR(float, output)[base + t] = smem[n - 1 - t];
    __syncthreads();
    // Second use of the same memory: a zero-filling asynchronous copy.
    unsigned char* bytes = reinterpret_cast<unsigned char*>(smem);
    if (t == 0) {
        cp_async_16_zfill(bytes, SELFTEST_PTR(const float, input) + base, 10);
        cp_async_commit();
        cp_async_wait_group<0>();
        unsigned char* out = SELFTEST_PTR(unsigned char, zfill) + 16 * (uint64_t)blockIdx.x;
        for (int i = 0; i < 16; ++i) {
            out[i] = bytes[i];
        }
        SELFTEST_PTR(int32_t, align)[blockIdx.x] = (reinterpret_cast<uint64_t>(smem) % 128) == 0 ? 1 : 0;
    }
}
ADAFACE_KERNEL(selftest_dyn_smem_f32, SelftestDynSmemParams, (selftest_dyn_smem(p)))

// ---------------------------------------------------------------------------
// Every shuffle and vote, full and partial warps, split masks, 64-bit values.
// ---------------------------------------------------------------------------
#define SELFTEST_WARP_RESULTS 12
struct SelftestWarpParams {
    uint64_t input;  // int32[total threads]
    uint64_t out;    // int32[total threads * SELFTEST_WARP_RESULTS]
    uint64_t out64;  // int64[total threads * 2]: a double (as bits) and an int64
};

__device__ __forceinline__ void selftest_warp(const SelftestWarpParams& p) {
    const unsigned tid = threadIdx.x;
    const uint64_t gid = (uint64_t)blockIdx.x * blockDim.x + tid;
    const int v = SELFTEST_PTR(const int32_t, input)[gid];
    const unsigned lane = tid & 31u;
    const unsigned lanes = min(32u, blockDim.x - (tid & ~31u));
    const unsigned mask = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
    int32_t* out = SELFTEST_PTR(int32_t, out) + gid * SELFTEST_WARP_RESULTS;
    out[0] = __shfl_sync(mask, v, (int)((lane * 7 + 3) % lanes));
    out[1] = __shfl_sync(mask, v, (int)lane + 5, 8);
    out[2] = __shfl_up_sync(mask, v, 3, 16);
    out[3] = __shfl_down_sync(mask, v, 5, 16);
    out[4] = __shfl_xor_sync(mask, v, 13);
    out[5] = __shfl_xor_sync(mask, v, 4, 8);
    __syncwarp(mask);
    out[6] = (int32_t)__ballot_sync(mask, v & 1);
    out[7] = __any_sync(mask, v % 7 == 0);
    out[8] = __all_sync(mask, v % 5 != 0);
    out[9] = __all_sync(mask, v != -2147483647 - 1);
    // Two halves of a warp in different collectives at the same time.
    if (lane < 16) {
        out[10] = __shfl_xor_sync(mask & 0x0000ffffu, v, 1);
    } else {
        out[10] = __shfl_down_sync(mask & 0xffff0000u, v, 2, 16);
    }
    // A warp sum by butterfly (the pattern kernels use for reductions).
    int sum = v;
    for (int offset = 16; offset > 0; offset >>= 1) {
        if ((unsigned)offset < lanes) {
            sum += __shfl_xor_sync(mask, sum, offset, (int)lanes);
        }
    }
    out[11] = sum;
    // 64-bit payloads.
    const double d = (double)v * 0.5 + 1.0e10;
    const double d2 = __shfl_xor_sync(mask, d, 2);
    const long long w = ((long long)v << 32) | (long long)lane;
    const long long w2 = __shfl_down_sync(mask, w, 1, (int)lanes);
    int64_t* out64 = SELFTEST_PTR(int64_t, out64) + 2 * gid;
    out64[0] = __double_as_longlong(d2);
    out64[1] = w2;
}
ADAFACE_KERNEL(selftest_warp_i32, SelftestWarpParams, (selftest_warp(p)))

// ---------------------------------------------------------------------------
// Atomics across blocks and on shared memory; the last-block pattern.
// ---------------------------------------------------------------------------
struct SelftestAtomicsParams {
    uint64_t ints;       // int32[8]: count, sum gid, sub 2 each, max, min, cas +3, exch, or
    uint64_t uints;      // uint32[2]: sum gid % 7, and
    uint64_t ull;        // uint64[3]: sum gid << 20, max, cas +5
    uint64_t floats;     // float[1]: sum of gid % 16 (exact)
    uint64_t partials;   // float[gridDim.x]
    uint64_t ticket;     // uint32[1]
    uint64_t total;      // float[2]: the last block's sum of partials, the block that wrote it
};

__device__ __forceinline__ int selftest_hash(uint64_t gid) { return (int)((gid * 7919u) % 10007u) - 5000; }

__device__ __forceinline__ void selftest_atomics(const SelftestAtomicsParams& p) {
    __shared__ int block_count;
    __shared__ float block_sum;
    __shared__ int is_last;
    const unsigned tid = threadIdx.x;
    const uint64_t gid = (uint64_t)blockIdx.x * blockDim.x + tid;
    if (tid == 0) {
        block_count = 0;
        block_sum = 0.0f;
    }
    __syncthreads();
    int32_t* ints = SELFTEST_PTR(int32_t, ints);
    uint32_t* uints = SELFTEST_PTR(uint32_t, uints);
    unsigned long long* ull = SELFTEST_PTR(unsigned long long, ull);
    atomicAdd(&ints[0], 1);
    atomicAdd(&ints[1], (int)gid);
    atomicSub(&ints[2], 2);
    atomicMax(&ints[3], selftest_hash(gid));
    atomicMin(&ints[4], selftest_hash(gid));
    int old = ints[5];
    for (;;) {
        const int seen = atomicCAS(&ints[5], old, old + 3);
        if (seen == old) {
            break;
        }
        old = seen;
    }
    atomicExch(&ints[6], (int)gid);
    atomicOr(&ints[7], 1 << (gid % 31));
    atomicAdd(&uints[0], (unsigned)(gid % 7));
    atomicAnd(&uints[1], ~(1u << (gid % 29)));
    atomicAdd(&ull[0], (unsigned long long)gid << 20);
    atomicMax(&ull[1], (unsigned long long)gid * 1000003ull);
    unsigned long long old64 = ull[2];
    for (;;) {
        const unsigned long long seen = atomicCAS(&ull[2], old64, old64 + 5);
        if (seen == old64) {
            break;
        }
        old64 = seen;
    }
    atomicAdd(SELFTEST_PTR(float, floats), (float)(gid % 16));
    // Shared-memory atomics, then one partial per block.
    atomicAdd(&block_count, 1);
    atomicAdd(&block_sum, (float)(gid % 16));
    __syncthreads();
    if (tid == 0) {
        SELFTEST_PTR(float, partials)[blockIdx.x] = block_sum + (float)block_count;
        __threadfence();
        const unsigned ticket = atomicAdd(SELFTEST_PTR(unsigned, ticket), 1u);
        is_last = ticket == gridDim.x - 1 ? 1 : 0;
    }
    __syncthreads();
    if (is_last && tid == 0) {
        __threadfence();
        const volatile float* partials = SELFTEST_PTR(const volatile float, partials);
        float total = 0.0f;
        for (unsigned b = 0; b < gridDim.x; ++b) {
            total += partials[b];
        }
        SELFTEST_PTR(float, total)[0] = total;
        SELFTEST_PTR(float, total)[1] = (float)blockIdx.x;
    }
}
ADAFACE_KERNEL(selftest_atomics_mixed, SelftestAtomicsParams, (selftest_atomics(p)))

// ---------------------------------------------------------------------------
// 2D/3D grids and blocks: every thread writes its coordinates.
// ---------------------------------------------------------------------------
struct SelftestGridParams {
    uint64_t out;  // uint32[blocks * threads * 8]
};

__device__ __forceinline__ void selftest_grid(const SelftestGridParams& p) {
    const uint64_t block = blockIdx.x + (uint64_t)gridDim.x * (blockIdx.y + (uint64_t)gridDim.y * blockIdx.z);
    const unsigned threads = blockDim.x * blockDim.y * blockDim.z;
    const unsigned thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    uint32_t* o = SELFTEST_PTR(uint32_t, out) + (block * threads + thread) * 8;
    o[0] = blockIdx.x;
    o[1] = blockIdx.y;
    o[2] = blockIdx.z;
    o[3] = threadIdx.x;
    o[4] = threadIdx.y;
    o[5] = threadIdx.z;
    o[6] = blockDim.x * 10000u + blockDim.y * 100u + blockDim.z;
    o[7] = gridDim.x * 10000u + gridDim.y * 100u + gridDim.z + (unsigned)warpSize * 1000000u;
}
ADAFACE_KERNEL(selftest_grid_u32, SelftestGridParams, (selftest_grid(p)))

// ---------------------------------------------------------------------------
// Tensor cores: D = A * B + C for M x K row-major A, B given as N x K
// (row n holds column n of B, the layout of the class weights) or as
// K x N row-major, C and D M x N row-major f32. One warp per 16 x 8 tile.
// mode 0: fragments loaded from global memory by the documented layout;
// mode 1: A and B staged in shared memory by cp.async, read by ldmatrix;
// mode 2: as 1, but B staged K x N and read by ldmatrix .trans.
// ---------------------------------------------------------------------------
struct SelftestMmaParams {
    uint64_t a;     // uint16[M * K]
    uint64_t b_nk;  // uint16[N * K]
    uint64_t b_kn;  // uint16[K * N]
    uint64_t c;     // float[M * N]
    uint64_t d;     // float[M * N]
    uint32_t m, n, k;
    uint32_t mode;
};

template <bool IsBf16>
__device__ __forceinline__ void selftest_mma(const SelftestMmaParams& p) {
    // Per warp: A tile 16x16 (512 B), B tile 8x16 or 16x8 (256 B).
    ADAFACE_DYNAMIC_SMEM(uint16_t, smem);
    const unsigned warp = threadIdx.x >> 5;
    const unsigned lane = threadIdx.x & 31u;
    const unsigned g = lane >> 2;
    const unsigned t = lane & 3u;
    const unsigned tiles_n = p.n / 8;
    const unsigned tile = blockIdx.x * (blockDim.x >> 5) + warp;
    if (tile >= (p.m / 16) * tiles_n) {
        return;  // whole warps only: no collective is left waiting
    }
    const unsigned m0 = (tile / tiles_n) * 16;
    const unsigned n0 = (tile % tiles_n) * 8;
    const uint16_t* A = SELFTEST_PTR(const uint16_t, a);
    const uint16_t* Bnk = SELFTEST_PTR(const uint16_t, b_nk);
    const uint16_t* Bkn = SELFTEST_PTR(const uint16_t, b_kn);
    const float* C = SELFTEST_PTR(const float, c);
    float acc[4];
    for (int i = 0; i < 4; ++i) {
        acc[i] = C[(uint64_t)(m0 + g + ((i & 2) ? 8 : 0)) * p.n + n0 + 2 * t + (i & 1)];
    }
    uint16_t* As = smem + warp * 384;  // 16 x 16
    uint16_t* Bs = As + 256;           // 8 x 16 (N x K) or 16 x 8 (K x N)
    for (unsigned k0 = 0; k0 < p.k; k0 += 16) {
        uint32_t a[4];
        uint32_t b[2];
        if (p.mode == 0) {
            for (int r = 0; r < 4; ++r) {
                const uint64_t row = m0 + g + ((r & 1) ? 8 : 0);
                const uint64_t col = k0 + 2 * t + ((r & 2) ? 8 : 0);
                a[r] = adaface_pack2(A[row * p.k + col], A[row * p.k + col + 1]);
            }
            for (int r = 0; r < 2; ++r) {
                const uint64_t kk = k0 + 2 * t + (r ? 8 : 0);
                b[r] = adaface_pack2(Bnk[(uint64_t)(n0 + g) * p.k + kk], Bnk[(uint64_t)(n0 + g) * p.k + kk + 1]);
            }
        } else {
            // Stage: A has 32 chunks of 16 bytes (one per lane), B has 16.
            {
                const unsigned row = lane >> 1;
                const unsigned half = (lane & 1u) * 8;
                cp_async_16(As + row * 16 + half, A + (uint64_t)(m0 + row) * p.k + k0 + half);
            }
            if (lane < 16) {
                if (p.mode == 1) {
                    const unsigned row = lane >> 1;
                    const unsigned half = (lane & 1u) * 8;
                    cp_async_16(Bs + row * 16 + half, Bnk + (uint64_t)(n0 + row) * p.k + k0 + half);
                } else {
                    cp_async_16(Bs + lane * 8, Bkn + (uint64_t)(k0 + lane) * p.n + n0);
                }
            }
            cp_async_commit();
            cp_async_wait_all();
            __syncwarp();
            // Lane L gives row L % 8 of matrix L / 8.
            const unsigned mat = lane >> 3;
            const unsigned r8 = lane & 7u;
            ldmatrix_x4(a, As + (r8 + ((mat & 1u) ? 8 : 0)) * 16 + ((mat & 2u) ? 8 : 0));
            uint32_t bb[4];
            if (p.mode == 1) {
                ldmatrix_x4(bb, Bs + r8 * 16 + ((mat & 1u) ? 8 : 0));
            } else {
                ldmatrix_x4_trans(bb, Bs + (r8 + ((mat & 1u) ? 8 : 0)) * 8);
            }
            b[0] = bb[0];
            b[1] = bb[1];
            __syncwarp();
        }
        float d[4];
        if (IsBf16) {
            mma_m16n8k16_bf16_f32(d, a, b, acc);
        } else {
            mma_m16n8k16_f16_f32(d, a, b, acc);
        }
        for (int i = 0; i < 4; ++i) {
            acc[i] = d[i];
        }
    }
    float* D = SELFTEST_PTR(float, d);
    for (int i = 0; i < 4; ++i) {
        D[(uint64_t)(m0 + g + ((i & 2) ? 8 : 0)) * p.n + n0 + 2 * t + (i & 1)] = acc[i];
    }
}
ADAFACE_KERNEL(selftest_mma_bf16, SelftestMmaParams, (selftest_mma<true>(p)))
ADAFACE_KERNEL(selftest_mma_f16, SelftestMmaParams, (selftest_mma<false>(p)))

// ---------------------------------------------------------------------------
// bf16 / f16 conversions.
// ---------------------------------------------------------------------------
struct SelftestConvertParams {
    uint64_t floats;      // float[n]
    uint64_t bf16_bits;   // uint16[n]: from_float<adaface_bf16>
    uint64_t f16_bits;    // uint16[n]: from_float<adaface_f16>
    uint64_t bits;        // uint16[n]: raw patterns to decode
    uint64_t bf16_value;  // float[n]: to_float(adaface_bf16{bits})
    uint64_t f16_value;   // float[n]: to_float(adaface_f16{bits})
    uint32_t n;
    uint32_t pad;
};

__device__ __forceinline__ void selftest_convert(const SelftestConvertParams& p) {
    const uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= p.n) {
        return;
    }
    const float x = SELFTEST_PTR(const float, floats)[i];
    SELFTEST_PTR(uint16_t, bf16_bits)[i] = from_float<adaface_bf16>(x).bits;
    SELFTEST_PTR(uint16_t, f16_bits)[i] = from_float<adaface_f16>(x).bits;
    const uint16_t h = SELFTEST_PTR(const uint16_t, bits)[i];
    adaface_bf16 b;
    b.bits = h;
    adaface_f16 f;
    f.bits = h;
    SELFTEST_PTR(float, bf16_value)[i] = to_float(b);
    SELFTEST_PTR(float, f16_value)[i] = from_float<float>(to_float(f));
}
ADAFACE_KERNEL(selftest_convert_all, SelftestConvertParams, (selftest_convert(p)))

// ---------------------------------------------------------------------------
// Many barriers (correctness of repeated rendezvous, and the cost number).
// ---------------------------------------------------------------------------
struct SelftestBarrierLoopParams {
    uint64_t out;  // uint32[gridDim.x * blockDim.x]
    uint32_t iters;
    uint32_t pad;
};

__device__ __forceinline__ void selftest_barrier_loop(const SelftestBarrierLoopParams& p) {
    __shared__ uint32_t s[1024];
    const unsigned n = blockDim.x;
    const unsigned tid = threadIdx.x;
    uint32_t acc = tid + 7u * blockIdx.x;
    for (uint32_t it = 0; it < p.iters; ++it) {
        s[tid] = acc;
        __syncthreads();
        acc = acc * 31u + s[(tid + 1) % n];
        __syncthreads();
    }
    SELFTEST_PTR(uint32_t, out)[(uint64_t)blockIdx.x * n + tid] = acc;
}
ADAFACE_KERNEL(selftest_barrier_loop_u32, SelftestBarrierLoopParams, (selftest_barrier_loop(p)))

// ---------------------------------------------------------------------------
// wgmma (one warpgroup, K = 64, N = 256): A (64 x 64) and B (256 x 64,
// given N x K) are stored by plain stores in the 128-byte-swizzle layout
// (8-row x 64-element atoms of 1024 bytes, 16-byte chunk c of row r at chunk
// c ^ (r % 8), atoms column after column, 8 per column), B K-major (mode 0)
// or MN-major (modes 1, 2); D = A . B^T (64 x 256) comes back in the
// documented accumulator layout. Modes 0 and 1 issue four m64n64k16 per
// 16-deep step, mode 2 one m64n256k16, whose 64-column groups the
// descriptor's leading byte offset (one atom column, 8192 bytes) separates.
// ---------------------------------------------------------------------------
struct SelftestWgmmaParams {
    uint64_t a;     // uint16[64 * 64], row-major M x K
    uint64_t b_nk;  // uint16[256 * 64], row-major N x K
    uint64_t d;     // float[64 * 256], M x N
    uint32_t mode;
    uint32_t pad;
};

// Element (r, c) of a swizzled tile of at most 64 rows where c >= 64 (and
// of any number of rows where c < 64).
__device__ __forceinline__ int selftest_swizzled(int r, int c) {
    return (((c >> 6) * 8 + (r >> 3)) << 9) + ((r & 7) << 6) + ((((c >> 3) & 7) ^ (r & 7)) << 3) + (c & 7);
}

__device__ __forceinline__ void selftest_wgmma(const SelftestWgmmaParams& p) {
    ADAFACE_DYNAMIC_SMEM(unsigned char, raw);
    unsigned char* base = raw + ((1024u - (adaface_smem_addr(raw) & 1023u)) & 1023u);
    uint16_t* As = (uint16_t*)base;
    uint16_t* Bs = As + 64 * 64;
    const uint16_t* A = SELFTEST_PTR(const uint16_t, a);
    const uint16_t* B = SELFTEST_PTR(const uint16_t, b_nk);
    for (unsigned e = threadIdx.x; e < 64 * 64; e += blockDim.x) As[selftest_swizzled((int)(e / 64), (int)(e % 64))] = A[e];
    for (unsigned e = threadIdx.x; e < 256 * 64; e += blockDim.x) {
        const int n = (int)(e / 64), k = (int)(e % 64);
        // K-major keeps rows = n, MN-major rows = k.
        Bs[p.mode == 0 ? selftest_swizzled(n, k) : selftest_swizzled(k, n)] = B[e];
    }
    fence_proxy_async_shared();
    __syncthreads();
    float acc[4][32];
    wgmma_fence();
    const uint32_t a0 = adaface_smem_addr(As), b0 = adaface_smem_addr(Bs);
    for (uint32_t ks = 0; ks < 4; ++ks) {
        const uint64_t da = adaface_wgmma_desc(a0 + 32 * ks, 16, 1024);
        if (p.mode == 2) {
            wgmma_m64nNk16_bf16<4, true>(acc, da, adaface_wgmma_desc(b0 + 2048 * ks, 8192, 1024), ks > 0);
            continue;
        }
        for (uint32_t j = 0; j < 4; ++j) {
            if (p.mode == 0) {
                wgmma_m64n64k16_bf16<false>(acc[j], da, adaface_wgmma_desc(b0 + 8192 * j + 32 * ks, 16, 1024), ks > 0);
            } else {
                wgmma_m64n64k16_bf16<true>(acc[j], da, adaface_wgmma_desc(b0 + 8192 * j + 2048 * ks, 8192, 1024),
                                           ks > 0);
            }
        }
    }
    wgmma_commit();
    wgmma_wait<0>();
    for (int j = 0; j < 4; ++j) wgmma_fence_operands(acc[j]);
    const unsigned q = (threadIdx.x >> 5) & 3u, lane = threadIdx.x & 31u, g = lane >> 2, t = lane & 3u;
    float* D = SELFTEST_PTR(float, d);
    for (int j = 0; j < 4; ++j)
        for (int i = 0; i < 32; ++i) {
            const unsigned row = 16 * q + g + 8 * ((i >> 1) & 1);
            const unsigned col = 64 * j + 8 * (i >> 2) + 2 * t + (i & 1);
            D[row * 256 + col] = acc[j][i];
        }
}
ADAFACE_KERNEL(selftest_wgmma_bf16, SelftestWgmmaParams, (selftest_wgmma(p)))

// ---------------------------------------------------------------------------
// Broken kernels the simulator must reject with a launch error (never
// launched on a GPU: there they would hang or be undefined).
// mode 0: divergent __syncthreads; 1: shuffle mask without the caller;
// 2: two halves of a warp in different collectives with the full mask;
// 3: __trap(); 4: a lane exits before a full-warp shuffle; 5: a wgmma
// descriptor without the 128-byte swizzle; 6: a thread exits with a wgmma
// it never waited for; 7: wgmma in a block that is not whole warpgroups;
// 8: an 8-byte vector store at an address that is only 4-byte aligned.
// ---------------------------------------------------------------------------
struct SelftestBrokenParams {
    uint64_t out;  // int32[blockDim.x]
    uint32_t mode;
    uint32_t pad;
};

__device__ __forceinline__ void selftest_broken(const SelftestBrokenParams& p) {
    const unsigned tid = threadIdx.x;
    int32_t* out = SELFTEST_PTR(int32_t, out);
    int v = (int)tid;
    if (p.mode == 0) {
        if (tid < 16) {
            __syncthreads();
        }
    } else if (p.mode == 1) {
        v = __shfl_sync(0xfffffffeu, v, 1);
    } else if (p.mode == 2) {
        if ((tid & 31u) < 16) {
            v = __shfl_xor_sync(0xffffffffu, v, 1);
        } else {
            v = (int)__ballot_sync(0xffffffffu, v & 1);
        }
    } else if (p.mode == 3) {
        if (tid == 5) {
            __trap();
        }
    } else if (p.mode == 4) {
        if (tid == 3) {
            return;
        }
        v = __shfl_down_sync(0xffffffffu, v, 1);
    } else if (p.mode == 8) {
        if (tid == 0) {
            int32_t* at = ((uint64_t)out % 8 == 0) ? out + 1 : out;
            adaface_check_aligned(at, 8);
            *reinterpret_cast<float2*>(at) = make_float2(1.0f, 2.0f);
        }
    } else {
        float acc[16];
        const uint64_t desc = adaface_wgmma_desc(0, 16, 1024);
        wgmma_fence();
        wgmma_m64n32k16_bf16<false>(acc, p.mode == 5 ? desc & ~(3ull << 62) : desc, desc, false);
        wgmma_commit();
        if (p.mode != 6) {
            wgmma_wait<0>();
        }
    }
    out[tid] = v;
}
ADAFACE_KERNEL(selftest_broken_i32, SelftestBrokenParams, (selftest_broken(p)))
