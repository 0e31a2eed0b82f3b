// cuda_sim.h: the CUDA built-ins on CPU threads, for the SIM build of the
// kernels (g++ -std=c++20 -DADAFACE_SIM -x c++). Never seen by NVRTC.
//
// Execution model (details and rationale in kernels/sim/README.md):
//   * a launch spreads its blocks over a few OS threads (the caller included);
//   * one OS thread runs one block at a time; the block's threads are fibers
//     (user-space stacks) that switch only at __syncthreads and at warp
//     collectives, so a barrier costs a few fiber switches instead of the
//     ~0.2 ms an OS-thread barrier costs on a 2-core machine;
//   * __shared__ is `static thread_local`: per OS thread, hence per block;
//   * threadIdx/blockIdx/blockDim/gridDim are thread-locals that the
//     scheduler rewrites on every fiber switch;
//   * a block that can no longer make progress (a barrier some thread never
//     reaches, a warp collective some lane never joins) fails the launch with
//     a message; it never hangs.
#ifndef ADAFACE_CUDA_SIM_H
#define ADAFACE_CUDA_SIM_H

#ifndef ADAFACE_SIM
#error "cuda_sim.h is only for the simulator build (-DADAFACE_SIM)"
#endif

#include <bit>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

// ---------------------------------------------------------------------------
// Launch geometry record passed to every `_sim` entry. The Rust mirror
// (`adaface::sim::SimLaunch`) follows this layout.
// ---------------------------------------------------------------------------
struct adaface_sim_launch {
    unsigned grid_x, grid_y, grid_z;
    unsigned block_x, block_y, block_z;
    unsigned shared_bytes;
};

// Kernel bodies are compiled twice on x86-64: for x86-64-v3 (AVX2, FMA) and
// for the baseline, picked at load time by the CPU. Without it every fmaf is
// a call into the C library's generic entry, which dominated simulated time.
// `flatten` inlines the kernel's device functions into the body so that they
// get the same treatment. build.rs passes -ffp-contract=off, so both clones
// round every operation the same way and results do not depend on the CPU.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ADAFACE_SIM_HOT __attribute__((flatten, target_clones("arch=x86-64-v3", "default")))
#define ADAFACE_SIM_FAST_MATH_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define ADAFACE_SIM_HOT __attribute__((flatten))
#define ADAFACE_SIM_FAST_MATH_CLONES
#endif

// ---------------------------------------------------------------------------
// Vector types of the CUDA built-in variables.
// ---------------------------------------------------------------------------
struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
};
// The CUDA vector types kernels use for wide loads (same sizes and alignment).
struct alignas(8) uint2 {
    unsigned int x, y;
};
struct alignas(16) uint4 {
    unsigned int x, y, z, w;
};
struct alignas(8) int2 {
    int x, y;
};
struct alignas(16) int4 {
    int x, y, z, w;
};
struct alignas(8) float2 {
    float x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(16) double2 {
    double x, y;
};
inline uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
inline int2 make_int2(int x, int y) { return int2{x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline double2 make_double2(double x, double y) { return double2{x, y}; }

namespace adaface_sim {
// Tensor-core instructions executed (one per warp-wide mma), summed over all
// launches in the process: tests read it through adaface_sim_mma_count() to
// prove that the bf16/f16 kernels take the mma path.
inline unsigned long long mma_executed = 0;

// Per OS thread: the block being run and the fiber being run. The scheduler
// updates tl_thread_idx on every switch; a fiber never migrates between OS
// threads, so the addresses of these thread-locals are stable for it.
inline thread_local uint3 tl_thread_idx{0, 0, 0};
inline thread_local uint3 tl_block_idx{0, 0, 0};
inline thread_local dim3 tl_block_dim{1, 1, 1};
inline thread_local dim3 tl_grid_dim{1, 1, 1};
inline thread_local unsigned char* tl_dynamic_smem = nullptr;

// One lane's part in a warp collective: its input and where its result goes
// (both live on the lane's own fiber stack while it waits).
struct CollectiveSlot {
    const void* in;
    void* out;
};
// Run by the last lane to arrive, for every lane of `mask`.
using CollectiveFn = void (*)(const CollectiveSlot* slots, uint32_t mask);

// Runs a whole grid; returns 0 or an error code (message: adaface_sim_last_error()).
int launch_kernel(const char* name, const adaface_sim_launch* launch, void (*body)(const void*), const void* params);

// Every lane of `mask` (which must contain the caller) calls with the same
// mask and fn; the last to arrive runs fn for all, then all continue.
void warp_collective(uint32_t mask, CollectiveFn fn, const void* in, void* out, const char* what);

// __syncthreads and its reducing variants: op 0 plain, 1 count, 2 and, 3 or.
int block_barrier(int op, int predicate);

// Fails the launch with a message and leaves the block (never returns).
[[noreturn]] void fail(const char* what);

// Warpgroup tensor-core products (wgmma, sm_90a) executed, one per
// warpgroup and instruction; tests read it through adaface_sim_wgmma_count().
inline unsigned long long wgmma_executed = 0;

// Deferred wgmma.mma_async m64nNk16 (bf16 in, f32 accumulate) with both
// operands in dynamic shared memory, described by 128-byte-swizzle matrix
// descriptors; B is MN-major (N contiguous) when b_mn_major, else K-major.
// The calling thread's N/2 accumulators `d` (its fragment of the 64 x N
// tile) are updated (accumulate) or overwritten at the matching wgmma_wait,
// reading shared memory then:
// a kernel that overwrites an operand or reads `d` before the wait gets a
// wrong result here too.
void wgmma_issue(uint64_t desc_a, uint64_t desc_b, float* d, int n, bool b_mn_major, bool accumulate);
void wgmma_commit();
void wgmma_wait(int pending_groups_allowed);
// Offset of p in the block's dynamic shared memory: the simulator's shared
// address space for descriptors (fails the launch if p lies outside it).
uint32_t smem_offset(const void* p);

// Deferred copies behind cp_async_16 and friends.
void cp_async(void* dst, const void* src, uint32_t bytes, uint32_t src_bytes);
// Fails the launch unless p is aligned to `bytes` (a vector load or store).
void check_aligned(const void* p, uint32_t bytes);
void cp_async_commit();
// pending_groups_allowed < 0: complete every copy, committed or not (cp.async.wait_all).
void cp_async_wait(int pending_groups_allowed);

inline unsigned char* dynamic_smem() { return tl_dynamic_smem; }

inline float bits_to_float(uint32_t u) { return std::bit_cast<float>(u); }
inline uint32_t float_to_bits(float f) { return std::bit_cast<uint32_t>(f); }

inline unsigned lane_id() {
    return (tl_thread_idx.x + tl_block_dim.x * (tl_thread_idx.y + tl_block_dim.y * tl_thread_idx.z)) & 31u;
}

// --- shuffles and votes -----------------------------------------------------
enum class ShflKind : uint32_t { Idx, Up, Down, Xor };
struct ShflIn {
    uint64_t value;
    int32_t arg;
    int32_t width;
    ShflKind kind;
};
struct VoteIn {
    int predicate;
};
void shuffle_execute(const CollectiveSlot* slots, uint32_t mask);
void ballot_execute(const CollectiveSlot* slots, uint32_t mask);
void syncwarp_execute(const CollectiveSlot* slots, uint32_t mask);

template <typename T>
inline T shuffle(uint32_t mask, T var, int arg, int width, ShflKind kind, const char* what) {
    static_assert(std::is_trivially_copyable_v<T> && (sizeof(T) == 4 || sizeof(T) == 8),
                  "shuffles move 32- or 64-bit values");
    ShflIn in{0, arg, width, kind};
    std::memcpy(&in.value, &var, sizeof(T));
    uint64_t out = 0;
    warp_collective(mask, &shuffle_execute, &in, &out, what);
    T r;
    std::memcpy(&r, &out, sizeof(T));
    return r;
}

inline uint32_t ballot(uint32_t mask, int predicate, const char* what) {
    VoteIn in{predicate};
    uint32_t out = 0;
    warp_collective(mask, &ballot_execute, &in, &out, what);
    return out;
}

// --- atomics (sequentially consistent: the simulator's blocks are real
// threads, and this also gives __threadfence patterns their meaning) ---------
template <typename T>
inline T atomic_add(T* address, T val) {
    return __atomic_fetch_add(address, val, __ATOMIC_SEQ_CST);
}
template <typename T, typename F>
inline T atomic_update_float(T* address, F update) {
    using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
    Bits* raw = reinterpret_cast<Bits*>(address);
    Bits old_bits = __atomic_load_n(raw, __ATOMIC_SEQ_CST);
    for (;;) {
        const T old_value = std::bit_cast<T>(old_bits);
        const Bits new_bits = std::bit_cast<Bits>(update(old_value));
        if (__atomic_compare_exchange_n(raw, &old_bits, new_bits, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
            return old_value;
        }
    }
}
template <typename T, typename F>
inline T atomic_update_int(T* address, F update) {
    T old_value = __atomic_load_n(address, __ATOMIC_SEQ_CST);
    while (!__atomic_compare_exchange_n(address, &old_value, update(old_value), false, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST)) {
    }
    return old_value;
}

}  // namespace adaface_sim

// ---------------------------------------------------------------------------
// Qualifiers.
// `__device__` expands to nothing: a device function defined in a header that
// several kernel files include must be `__forceinline__`, `inline`, `static`
// or a template (as it must be for a single NVRTC translation unit anyway).
// ---------------------------------------------------------------------------
#define __device__
#define __host__
#define __global__
#define __forceinline__ inline __attribute__((always_inline))
#define __shared__ static thread_local
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// __restrict__ is already a GNU C++ keyword. __noinline__ is left undefined:
// libstdc++ spells __attribute__((__noinline__)) and a macro would break it.

// Built-in variables (read-only).
#define threadIdx (static_cast<const uint3&>(::adaface_sim::tl_thread_idx))
#define blockIdx (static_cast<const uint3&>(::adaface_sim::tl_block_idx))
#define blockDim (static_cast<const dim3&>(::adaface_sim::tl_block_dim))
#define gridDim (static_cast<const dim3&>(::adaface_sim::tl_grid_dim))
#define warpSize (::adaface_sim::warp_size())
namespace adaface_sim {
inline int warp_size() { return 32; }
}  // namespace adaface_sim

// ---------------------------------------------------------------------------
// Synchronisation.
// ---------------------------------------------------------------------------
inline void __syncthreads() { (void)::adaface_sim::block_barrier(0, 0); }
inline int __syncthreads_count(int predicate) { return ::adaface_sim::block_barrier(1, predicate); }
inline int __syncthreads_and(int predicate) { return ::adaface_sim::block_barrier(2, predicate); }
inline int __syncthreads_or(int predicate) { return ::adaface_sim::block_barrier(3, predicate); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    ::adaface_sim::warp_collective(mask, &::adaface_sim::syncwarp_execute, nullptr, nullptr, "__syncwarp");
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
[[noreturn]] inline void __trap() { ::adaface_sim::fail("__trap() called"); }

// ---------------------------------------------------------------------------
// Warp shuffles and votes (width: a power of two up to 32, as in CUDA).
// ---------------------------------------------------------------------------
template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
    return ::adaface_sim::shuffle(mask, var, src_lane, width, ::adaface_sim::ShflKind::Idx, "__shfl_sync");
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
    return ::adaface_sim::shuffle(mask, var, (int)delta, width, ::adaface_sim::ShflKind::Up, "__shfl_up_sync");
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
    return ::adaface_sim::shuffle(mask, var, (int)delta, width, ::adaface_sim::ShflKind::Down, "__shfl_down_sync");
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
    return ::adaface_sim::shuffle(mask, var, lane_mask, width, ::adaface_sim::ShflKind::Xor, "__shfl_xor_sync");
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
    return ::adaface_sim::ballot(mask, predicate, "__ballot_sync");
}
inline int __any_sync(unsigned mask, int predicate) {
    return ::adaface_sim::ballot(mask, predicate, "__any_sync") != 0;
}
inline int __all_sync(unsigned mask, int predicate) {
    return ::adaface_sim::ballot(mask, predicate, "__all_sync") == mask;
}

// ---------------------------------------------------------------------------
// Atomics (on any address: global or shared).
// ---------------------------------------------------------------------------
inline int atomicAdd(int* a, int v) { return ::adaface_sim::atomic_add(a, v); }
inline unsigned atomicAdd(unsigned* a, unsigned v) { return ::adaface_sim::atomic_add(a, v); }
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
    return ::adaface_sim::atomic_add(a, v);
}
inline float atomicAdd(float* a, float v) {
    return ::adaface_sim::atomic_update_float(a, [v](float old) { return old + v; });
}
inline double atomicAdd(double* a, double v) {
    return ::adaface_sim::atomic_update_float(a, [v](double old) { return old + v; });
}
inline int atomicSub(int* a, int v) { return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicSub(unsigned* a, unsigned v) { return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST); }
inline int atomicMax(int* a, int v) {
    return ::adaface_sim::atomic_update_int(a, [v](int old) { return old > v ? old : v; });
}
inline unsigned atomicMax(unsigned* a, unsigned v) {
    return ::adaface_sim::atomic_update_int(a, [v](unsigned old) { return old > v ? old : v; });
}
inline unsigned long long atomicMax(unsigned long long* a, unsigned long long v) {
    return ::adaface_sim::atomic_update_int(a, [v](unsigned long long old) { return old > v ? old : v; });
}
inline long long atomicMax(long long* a, long long v) {
    return ::adaface_sim::atomic_update_int(a, [v](long long old) { return old > v ? old : v; });
}
inline long long atomicMin(long long* a, long long v) {
    return ::adaface_sim::atomic_update_int(a, [v](long long old) { return old < v ? old : v; });
}
inline int atomicMin(int* a, int v) {
    return ::adaface_sim::atomic_update_int(a, [v](int old) { return old < v ? old : v; });
}
inline unsigned atomicMin(unsigned* a, unsigned v) {
    return ::adaface_sim::atomic_update_int(a, [v](unsigned old) { return old < v ? old : v; });
}
inline unsigned long long atomicMin(unsigned long long* a, unsigned long long v) {
    return ::adaface_sim::atomic_update_int(a, [v](unsigned long long old) { return old < v ? old : v; });
}
inline int atomicCAS(int* a, int compare, int val) {
    __atomic_compare_exchange_n(a, &compare, val, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return compare;
}
inline unsigned atomicCAS(unsigned* a, unsigned compare, unsigned val) {
    __atomic_compare_exchange_n(a, &compare, val, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return compare;
}
inline unsigned long long atomicCAS(unsigned long long* a, unsigned long long compare, unsigned long long val) {
    __atomic_compare_exchange_n(a, &compare, val, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return compare;
}
inline int atomicExch(int* a, int v) { return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicExch(unsigned* a, unsigned v) { return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST); }
inline unsigned long long atomicExch(unsigned long long* a, unsigned long long v) {
    return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);
}
inline float atomicExch(float* a, float v) {
    return std::bit_cast<float>(__atomic_exchange_n(reinterpret_cast<uint32_t*>(a), std::bit_cast<uint32_t>(v),
                                                    __ATOMIC_SEQ_CST));
}
inline int atomicOr(int* a, int v) { return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicOr(unsigned* a, unsigned v) { return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST); }
inline int atomicAnd(int* a, int v) { return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicAnd(unsigned* a, unsigned v) { return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST); }

// ---------------------------------------------------------------------------
// Math and bit intrinsics (f32). The standard ones (expf, logf, sqrtf, acosf,
// cosf, sinf, fmaxf, fminf, fabsf, fmaf, ...) come from <cmath>.
// ---------------------------------------------------------------------------
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : (x == x ? x : 0.0f)); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline long long __double_as_longlong(double x) { return std::bit_cast<long long>(x); }
inline double __longlong_as_double(long long x) { return std::bit_cast<double>(x); }
inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
inline int __float2int_rz(float x) { return (int)x; }
inline int __float2int_rd(float x) { return (int)floorf(x); }
inline int __float2int_ru(float x) { return (int)ceilf(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned __brev(unsigned x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    x = ((x >> 8) & 0x00ff00ffu) | ((x & 0x00ff00ffu) << 8);
    return (x >> 16) | (x << 16);
}
template <typename T>
inline T __ldg(const T* p) {
    return *p;
}
// CUDA's integer min/max overloads.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }

#endif  // ADAFACE_CUDA_SIM_H
