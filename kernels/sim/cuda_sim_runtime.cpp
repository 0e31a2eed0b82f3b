// cuda_sim_runtime.cpp: the simulator's scheduler (fibers, barriers, warp
// collectives, the launch over a pool of OS threads). See README.md here.
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "../portable.cuh"

// Error codes returned by every `_sim` entry (mirrored in src/sim/mod.rs).
#define ADAFACE_SIM_OK 0
#define ADAFACE_SIM_BAD_LAUNCH 1
#define ADAFACE_SIM_SHARED_TOO_LARGE 2
#define ADAFACE_SIM_KERNEL_FAILED 3
#define ADAFACE_SIM_RESOURCES 4

// ---------------------------------------------------------------------------
// Context switch. glibc's swapcontext makes a sigprocmask system call on every
// switch (about 0.4 us here), which dominates a simulated __syncthreads. On
// x86-64 a switch that saves only the callee-saved registers, the stack
// pointer and the SSE/x87 control words costs a few nanoseconds; ucontext
// stays as the portable path and can be forced for comparison.
// ---------------------------------------------------------------------------
#if defined(__x86_64__)
#define ADAFACE_SIM_FAST_SWITCH 1
extern "C" void adaface_sim_switch_x86_64(void** save_sp, void* next_sp) __attribute__((visibility("hidden")));
__asm__(
    ".pushsection .text\n"
    ".globl adaface_sim_switch_x86_64\n"
    ".hidden adaface_sim_switch_x86_64\n"
    ".type adaface_sim_switch_x86_64,@function\n"
    ".p2align 4\n"
    "adaface_sim_switch_x86_64:\n"
    "  pushq %rbp\n"
    "  pushq %rbx\n"
    "  pushq %r12\n"
    "  pushq %r13\n"
    "  pushq %r14\n"
    "  pushq %r15\n"
    "  subq $8, %rsp\n"
    "  stmxcsr (%rsp)\n"
    "  fnstcw 4(%rsp)\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  ldmxcsr (%rsp)\n"
    "  fldcw 4(%rsp)\n"
    "  addq $8, %rsp\n"
    "  popq %r15\n"
    "  popq %r14\n"
    "  popq %r13\n"
    "  popq %r12\n"
    "  popq %rbx\n"
    "  popq %rbp\n"
    "  ret\n"
    ".size adaface_sim_switch_x86_64, .-adaface_sim_switch_x86_64\n"
    ".popsection\n");
#else
#define ADAFACE_SIM_FAST_SWITCH 0
#endif

namespace adaface_sim {
namespace {

constexpr unsigned kMaxBlockThreads = 1024;
constexpr unsigned kMaxBlockX = 1024, kMaxBlockY = 1024, kMaxBlockZ = 64;
constexpr unsigned long long kMaxGridX = 2147483647ull;
constexpr unsigned kMaxGridYZ = 65535;
// Largest dynamic shared memory a block can opt into on sm_90 (227 KiB).
constexpr unsigned kMaxSharedBytes = 232448;

thread_local std::string tl_last_error;

std::atomic<int> g_force_ucontext{-1};  // -1: not read from the environment yet

bool use_ucontext() {
    int v = g_force_ucontext.load(std::memory_order_relaxed);
    if (v < 0) {
        const char* env = std::getenv("ADAFACE_SIM_UCONTEXT");
        v = (env != nullptr && env[0] == '1') ? 1 : 0;
        int expected = -1;
        g_force_ucontext.compare_exchange_strong(expected, v);
        v = g_force_ucontext.load(std::memory_order_relaxed);
    }
    return v == 1 || !ADAFACE_SIM_FAST_SWITCH;
}

size_t env_size(const char* name, size_t fallback, size_t lo, size_t hi) {
    const char* env = std::getenv(name);
    if (env == nullptr || *env == 0) {
        return fallback;
    }
    char* end = nullptr;
    const unsigned long long v = std::strtoull(env, &end, 10);
    if (end == env || *end != 0) {
        return fallback;
    }
    return std::clamp<size_t>((size_t)v, lo, hi);
}

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return std::string(buf);
}

enum class FiberState : uint8_t { Runnable, AtBarrier, AtWarp, Done };

struct PendingCopy {
    void* dst;
    const void* src;
    uint32_t bytes;
    uint32_t src_bytes;
    uint64_t group;
};

struct PendingWgmma {
    uint64_t desc_a;
    uint64_t desc_b;
    float* d;
    int n;
    bool b_mn_major;
    bool accumulate;
    uint64_t group;
};

// One simulated thread: a stack, a saved context and its collective posting.
struct Fiber {
    void* sp = nullptr;
    ucontext_t uc{};
    unsigned char* stack = nullptr;  // usable region, above a guard page
    size_t stack_size = 0;
    unsigned char* mapping = nullptr;
    size_t mapping_size = 0;

    uint3 tid{0, 0, 0};
    unsigned linear = 0;
    FiberState state = FiberState::Runnable;

    uint32_t coll_mask = 0;
    CollectiveFn coll_fn = nullptr;
    const char* coll_what = nullptr;

    std::vector<PendingCopy> copies;
    uint64_t committed_groups = 0;

    std::vector<PendingWgmma> wgmmas;
    uint64_t wgmma_groups = 0;

    Fiber() = default;
    Fiber(const Fiber&) = delete;
    Fiber& operator=(const Fiber&) = delete;
    ~Fiber() {
        if (mapping != nullptr) {
            munmap(mapping, mapping_size);
        }
    }
};

// Fibers (with their stacks) and the dynamic shared memory of one worker,
// pooled so that stacks are reused across blocks and launches.
struct Arena {
    std::vector<std::unique_ptr<Fiber>> fibers;
    unsigned char* smem = nullptr;
    size_t smem_capacity = 0;

    Arena() = default;
    Arena(const Arena&) = delete;
    Arena& operator=(const Arena&) = delete;
    ~Arena() { std::free(smem); }

    // Makes sure n fibers exist; false if memory ran out.
    bool ensure_fibers(unsigned n) {
        static const size_t page = (size_t)sysconf(_SC_PAGESIZE);
        static const size_t stack_bytes =
            (env_size("ADAFACE_SIM_STACK_KIB", 128, 16, 65536) * 1024 + page - 1) / page * page;
        while (fibers.size() < n) {
            auto f = std::make_unique<Fiber>();
            const size_t total = stack_bytes + page;
            void* m = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (m == MAP_FAILED) {
                return false;
            }
            f->mapping = static_cast<unsigned char*>(m);
            f->mapping_size = total;
            // Guard page below the stack: an overflow faults instead of
            // silently corrupting the neighbouring fiber.
            mprotect(f->mapping, page, PROT_NONE);
            f->stack = f->mapping + page;
            f->stack_size = stack_bytes;
            f->copies.reserve(32);
            if (getcontext(&f->uc) != 0) {
                return false;
            }
            fibers.push_back(std::move(f));
        }
        return true;
    }

    bool ensure_smem(size_t bytes) {
        if (bytes <= smem_capacity) {
            return true;
        }
        const size_t rounded = (bytes + 127) / 128 * 128;
        void* p = std::aligned_alloc(128, rounded);
        if (p == nullptr) {
            return false;
        }
        std::free(smem);
        smem = static_cast<unsigned char*>(p);
        smem_capacity = rounded;
        return true;
    }
};

struct ArenaPool {
    std::mutex mutex;
    std::vector<std::unique_ptr<Arena>> free;

    std::unique_ptr<Arena> acquire() {
        std::lock_guard<std::mutex> lock(mutex);
        if (free.empty()) {
            return std::make_unique<Arena>();
        }
        std::unique_ptr<Arena> a = std::move(free.back());
        free.pop_back();
        return a;
    }
    void release(std::unique_ptr<Arena> a) {
        std::lock_guard<std::mutex> lock(mutex);
        free.push_back(std::move(a));
    }
};

ArenaPool& arena_pool() {
    // Never destroyed: launches may still run on detached threads at exit.
    static ArenaPool* pool = new ArenaPool;
    return *pool;
}

struct Warp {
    uint32_t existing = 0;  // lanes that exist (the last warp may be partial)
    uint32_t arrived = 0;   // lanes waiting in a collective
    uint32_t exited = 0;
    CollectiveSlot slots[32]{};
};

// The state of the block one OS thread is running.
struct Block {
    const char* kernel = nullptr;
    void (*body)(const void*) = nullptr;
    const void* params = nullptr;
    bool ucontext = false;
    Arena* arena = nullptr;

    unsigned nthreads = 0;
    unsigned nwarps = 0;
    Fiber** fibers = nullptr;  // arena fibers, nthreads of them
    std::vector<Fiber*> fiber_list;

    void* main_sp = nullptr;
    ucontext_t main_uc{};

    std::vector<Fiber*> queue;  // ring of runnable fibers
    unsigned queue_head = 0;
    unsigned queue_count = 0;

    unsigned at_barrier = 0;
    int barrier_op = 0;
    int barrier_acc = 0;
    int barrier_result = 0;
    std::vector<Fiber*> barrier_waiters;

    unsigned exited = 0;
    std::vector<Warp> warps;
    unsigned shared_bytes = 0;  // of the launch's dynamic shared memory

    bool failed = false;
    std::string message;

    // Each fiber is queued at most once, so nthreads slots suffice.
    void push(Fiber* f) {
        unsigned tail = queue_head + queue_count;
        if (tail >= nthreads) {
            tail -= nthreads;
        }
        queue[tail] = f;
        ++queue_count;
    }
    Fiber* pop() {
        Fiber* f = queue[queue_head];
        if (++queue_head == nthreads) {
            queue_head = 0;
        }
        --queue_count;
        return f;
    }
};

thread_local Block* tl_block = nullptr;
thread_local Fiber* tl_fiber = nullptr;

// Switches from `from` (nullptr: the worker's own context) to `to` (nullptr:
// back to the worker). Returns when something switches back to `from`.
void jump(Block& b, Fiber* from, Fiber* to) {
    tl_fiber = to;
    if (to != nullptr) {
        tl_thread_idx = to->tid;
    }
    if (b.ucontext) {
        swapcontext(from != nullptr ? &from->uc : &b.main_uc, to != nullptr ? &to->uc : &b.main_uc);
    } else {
#if ADAFACE_SIM_FAST_SWITCH
        adaface_sim_switch_x86_64(from != nullptr ? &from->sp : &b.main_sp, to != nullptr ? to->sp : b.main_sp);
#endif
    }
}

std::string where(const Block& b, const Fiber* f) {
    std::string s = format("kernel %s, block (%u,%u,%u)", b.kernel, tl_block_idx.x, tl_block_idx.y, tl_block_idx.z);
    if (f != nullptr) {
        s += format(", thread (%u,%u,%u)", f->tid.x, f->tid.y, f->tid.z);
    }
    return s;
}

[[noreturn]] void abort_block(Block& b, Fiber* f, const std::string& what) {
    if (!b.failed) {
        b.failed = true;
        b.message = where(b, f) + ": " + what;
    }
    jump(b, f, nullptr);
    __builtin_unreachable();
}

void report_deadlock(Block& b) {
    unsigned at_warp = 0;
    const char* warp_what = nullptr;
    for (unsigned i = 0; i < b.nthreads; ++i) {
        if (b.fibers[i]->state == FiberState::AtWarp) {
            ++at_warp;
            warp_what = b.fibers[i]->coll_what;
        }
    }
    b.failed = true;
    b.message = where(b, nullptr) +
                format(": deadlock: %u of %u threads wait at __syncthreads, %u wait in warp collectives%s%s%s, "
                       "%u have exited (a barrier or collective that not every thread reaches)",
                       b.at_barrier, b.nthreads, at_warp, warp_what ? " (e.g. " : "", warp_what ? warp_what : "",
                       warp_what ? ")" : "", b.exited);
}

// Leaves the current fiber for the next runnable one; when none is left the
// block is finished, or deadlocked if some fiber still waits.
void run_next(Block& b, Fiber* from) {
    if (b.queue_count > 0) {
        Fiber* to = b.pop();
        jump(b, from, to);
        return;
    }
    if (b.exited < b.nthreads) {
        report_deadlock(b);
    }
    jump(b, from, nullptr);
}

void flush_copies(Fiber* f, size_t count) {
    for (size_t i = 0; i < count; ++i) {
        const PendingCopy& c = f->copies[i];
        std::memcpy(c.dst, c.src, c.src_bytes);
        std::memset(static_cast<unsigned char*>(c.dst) + c.src_bytes, 0, c.bytes - c.src_bytes);
    }
    f->copies.erase(f->copies.begin(), f->copies.begin() + (ptrdiff_t)count);
}

[[noreturn]] void fiber_finish(Block& b, Fiber* f) {
    flush_copies(f, f->copies.size());
    if (!f->wgmmas.empty()) {
        abort_block(b, f, "the thread exits with wgmma operations it never waited for");
    }
    f->state = FiberState::Done;
    ++b.exited;
    b.warps[f->linear >> 5].exited |= 1u << (f->linear & 31);
    run_next(b, f);
    __builtin_unreachable();  // nothing switches back to a finished fiber
}

[[noreturn]] void fiber_entry() {
    Block& b = *tl_block;
    Fiber* f = tl_fiber;
    try {
        b.body(b.params);
    } catch (...) {
        abort_block(b, f, "a C++ exception escaped the kernel");
    }
    fiber_finish(b, f);
}

void init_fiber_context(Block& b, Fiber* f) {
    if (b.ucontext) {
        f->uc.uc_stack.ss_sp = f->stack;
        f->uc.uc_stack.ss_size = f->stack_size;
        f->uc.uc_link = nullptr;
        makecontext(&f->uc, (void (*)())fiber_entry, 0);
        return;
    }
#if ADAFACE_SIM_FAST_SWITCH
    // Initial frame for adaface_sim_switch_x86_64: control words, r15..rbp,
    // then the return address fiber_entry at a 16-byte aligned slot, so that
    // fiber_entry starts with the stack alignment of a normal call.
    uintptr_t top = (uintptr_t)(f->stack + f->stack_size) & ~(uintptr_t)15;
    uint64_t* s = reinterpret_cast<uint64_t*>(top);
    uint32_t mxcsr = 0;
    uint16_t fpcw = 0;
    __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
    __asm__ volatile("fnstcw %0" : "=m"(fpcw));
    s[-1] = 0;                                   // fiber_entry never returns
    s[-2] = (uint64_t)(uintptr_t)&fiber_entry;  // ret target
    for (int i = 3; i <= 8; ++i) {
        s[-i] = 0;  // rbp, rbx, r12, r13, r14, r15
    }
    s[-9] = (uint64_t)mxcsr | ((uint64_t)fpcw << 32);
    f->sp = &s[-9];
#endif
}

// Runs one block to completion on the calling OS thread; false on failure.
bool run_block(Block& b, unsigned long long linear_block, unsigned shared_bytes) {
    const dim3 g = tl_grid_dim;
    tl_block_idx.x = (unsigned)(linear_block % g.x);
    tl_block_idx.y = (unsigned)((linear_block / g.x) % g.y);
    tl_block_idx.z = (unsigned)(linear_block / ((unsigned long long)g.x * g.y));
    if (shared_bytes > 0) {
        // Shared memory starts as garbage on a GPU: make reads before writes visible.
        std::memset(b.arena->smem, 0xff, shared_bytes);
    }
    const dim3 bd = tl_block_dim;
    for (unsigned i = 0; i < b.nthreads; ++i) {
        Fiber* f = b.fibers[i];
        f->tid = uint3{i % bd.x, (i / bd.x) % bd.y, i / (bd.x * bd.y)};
        f->linear = i;
        f->state = FiberState::Runnable;
        f->coll_mask = 0;
        f->coll_fn = nullptr;
        f->copies.clear();
        f->committed_groups = 0;
        f->wgmmas.clear();
        f->wgmma_groups = 0;
        init_fiber_context(b, f);
    }
    for (unsigned w = 0; w < b.nwarps; ++w) {
        const unsigned lanes = std::min(32u, b.nthreads - 32 * w);
        b.warps[w].existing = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1);
        b.warps[w].arrived = 0;
        b.warps[w].exited = 0;
    }
    // Any order is a valid schedule; alternating it between blocks makes a
    // missing __syncthreads show up as a wrong result more often.
    b.queue_head = 0;
    b.queue_count = 0;
    const bool reverse = (linear_block & 1) != 0;
    for (unsigned i = 0; i < b.nthreads; ++i) {
        b.push(b.fibers[reverse ? b.nthreads - 1 - i : i]);
    }
    b.at_barrier = 0;
    b.barrier_waiters.clear();
    b.exited = 0;
    b.shared_bytes = shared_bytes;
    b.failed = false;
    b.message.clear();
    jump(b, nullptr, b.pop());
    tl_fiber = nullptr;
    return !b.failed;
}

Block& current_block() {
    Block* b = tl_block;
    if (b == nullptr || tl_fiber == nullptr) {
        std::fprintf(stderr, "adaface sim: a device built-in was called outside a simulated kernel\n");
        std::abort();
    }
    return *b;
}

int set_error(int code, std::string message) {
    tl_last_error = std::move(message);
    return code;
}

}  // namespace

// ---------------------------------------------------------------------------
// Device-side entry points used by cuda_sim.h.
// ---------------------------------------------------------------------------
int block_barrier(int op, int predicate) {
    Block& b = current_block();
    Fiber* f = tl_fiber;
    const int p = predicate != 0 ? 1 : 0;
    if (b.at_barrier == 0) {
        b.barrier_op = op;
        b.barrier_acc = op == 2 ? 1 : 0;
    } else if (b.barrier_op != op) {
        abort_block(b, f, "threads of one block meet different kinds of __syncthreads");
    }
    switch (op) {
        case 1: b.barrier_acc += p; break;
        case 2: b.barrier_acc &= p; break;
        case 3: b.barrier_acc |= p; break;
        default: break;
    }
    ++b.at_barrier;
    if (b.at_barrier == b.nthreads) {
        b.barrier_result = b.barrier_acc;
        b.at_barrier = 0;
        for (Fiber* w : b.barrier_waiters) {
            w->state = FiberState::Runnable;
            b.push(w);
        }
        b.barrier_waiters.clear();
        return b.barrier_result;
    }
    f->state = FiberState::AtBarrier;
    b.barrier_waiters.push_back(f);
    run_next(b, f);
    // No later barrier can complete before this thread reaches it, so the
    // result is still this barrier's.
    return b.barrier_result;
}

void warp_collective(uint32_t mask, CollectiveFn fn, const void* in, void* out, const char* what) {
    Block& b = current_block();
    Fiber* f = tl_fiber;
    const unsigned lane = f->linear & 31;
    const unsigned warp_base = f->linear & ~31u;
    Warp& w = b.warps[f->linear >> 5];
    const uint32_t bit = 1u << lane;
    if ((mask & bit) == 0) {
        abort_block(b, f, format("%s: mask 0x%08x leaves out the calling lane %u", what, mask, lane));
    }
    if ((mask & ~w.existing) != 0) {
        abort_block(b, f,
                    format("%s: mask 0x%08x names lanes past the end of the block (lanes of this warp: 0x%08x)", what,
                           mask, w.existing));
    }
    if ((mask & w.exited) != 0) {
        abort_block(b, f, format("%s: mask 0x%08x names lanes that have exited (0x%08x)", what, mask, mask & w.exited));
    }
    f->coll_mask = mask;
    f->coll_fn = fn;
    f->coll_what = what;
    w.slots[lane] = CollectiveSlot{in, out};
    w.arrived |= bit;
    if ((w.arrived & mask) != mask) {
        f->state = FiberState::AtWarp;
        run_next(b, f);
        return;
    }
    for (uint32_t m = mask; m != 0; m &= m - 1) {
        const Fiber* g = b.fibers[warp_base + (unsigned)__builtin_ctz(m)];
        if (g->coll_mask != mask || g->coll_fn != fn) {
            abort_block(b, f,
                        format("%s with mask 0x%08x meets lane %u in %s with mask 0x%08x", what, mask,
                               g->linear & 31, g->coll_what, g->coll_mask));
        }
    }
    fn(w.slots, mask);
    w.arrived &= ~mask;
    for (uint32_t m = mask & ~bit; m != 0; m &= m - 1) {
        Fiber* g = b.fibers[warp_base + (unsigned)__builtin_ctz(m)];
        g->state = FiberState::Runnable;
        b.push(g);
    }
}

void fail(const char* what) {
    Block& b = current_block();
    abort_block(b, tl_fiber, what);
}

void shuffle_execute(const CollectiveSlot* slots, uint32_t mask) {
    for (uint32_t m = mask; m != 0; m &= m - 1) {
        const int lane = __builtin_ctz(m);
        const ShflIn& in = *static_cast<const ShflIn*>(slots[lane].in);
        const int width = in.width;
        if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
            fail("shuffle width must be a power of two from 1 to 32");
        }
        const int seg_start = lane & ~(width - 1);
        const int seg_end = seg_start + width - 1;
        int src = lane;
        switch (in.kind) {
            case ShflKind::Idx: src = seg_start + (in.arg & (width - 1)); break;
            case ShflKind::Up: src = lane - in.arg >= seg_start ? lane - in.arg : lane; break;
            case ShflKind::Down: src = lane + in.arg <= seg_end ? lane + in.arg : lane; break;
            case ShflKind::Xor: {
                const int j = lane ^ in.arg;
                src = (j >= 0 && j <= seg_end) ? j : lane;
                break;
            }
        }
        if (((mask >> src) & 1u) == 0) {
            // CUDA leaves the value undefined; the simulator refuses it.
            fail("shuffle reads a lane that is not in the mask");
        }
        *static_cast<uint64_t*>(slots[lane].out) = static_cast<const ShflIn*>(slots[src].in)->value;
    }
}

void ballot_execute(const CollectiveSlot* slots, uint32_t mask) {
    uint32_t bits = 0;
    for (uint32_t m = mask; m != 0; m &= m - 1) {
        const int lane = __builtin_ctz(m);
        if (static_cast<const VoteIn*>(slots[lane].in)->predicate != 0) {
            bits |= 1u << lane;
        }
    }
    for (uint32_t m = mask; m != 0; m &= m - 1) {
        *static_cast<uint32_t*>(slots[__builtin_ctz(m)].out) = bits;
    }
}

void syncwarp_execute(const CollectiveSlot*, uint32_t) {}

void cp_async(void* dst, const void* src, uint32_t bytes, uint32_t src_bytes) {
    Block& b = current_block();
    Fiber* f = tl_fiber;
    if (src_bytes > bytes) {
        abort_block(b, f, format("cp.async: src_bytes %u exceeds the copy size %u", src_bytes, bytes));
    }
    // The hardware faults on a source or destination not aligned to the
    // copy size (PTX ISA, cp.async); so does the simulator.
    if ((uintptr_t)dst % bytes != 0 || (uintptr_t)src % bytes != 0) {
        abort_block(b, f, format("cp.async: %u-byte copy from %p to %p is not %u-byte aligned", bytes, src, dst, bytes));
    }
    f->copies.push_back(PendingCopy{dst, src, bytes, src_bytes, f->committed_groups});
}

void check_aligned(const void* p, uint32_t bytes) {
    if ((uintptr_t)p % bytes != 0) {
        abort_block(current_block(), tl_fiber,
                    format("a %u-byte vector access at %p is not %u-byte aligned", bytes, p, bytes));
    }
}

void cp_async_commit() {
    (void)current_block();
    ++tl_fiber->committed_groups;
}

void cp_async_wait(int pending_groups_allowed) {
    (void)current_block();
    Fiber* f = tl_fiber;
    if (pending_groups_allowed < 0) {
        flush_copies(f, f->copies.size());
        return;
    }
    // Complete every committed group but the newest `pending_groups_allowed`.
    const uint64_t allowed = (uint64_t)pending_groups_allowed;
    const uint64_t limit = f->committed_groups > allowed ? f->committed_groups - allowed : 0;
    size_t n = 0;
    while (n < f->copies.size() && f->copies[n].group < limit) {
        ++n;
    }
    flush_copies(f, n);
}

// ---------------------------------------------------------------------------
// wgmma (sm_90a warpgroup products), deferred to the matching wait.
// ---------------------------------------------------------------------------
uint32_t smem_offset(const void* p) {
    Block& b = current_block();
    const unsigned char* base = tl_dynamic_smem;
    const unsigned char* q = static_cast<const unsigned char*>(p);
    if (base == nullptr || q < base || q >= base + b.shared_bytes) {
        abort_block(b, tl_fiber, format("shared address of %p: not in the block's dynamic shared memory", p));
    }
    return (uint32_t)(q - base);
}

namespace {
// Field checks of a matrix descriptor; only what the kernels use is modelled
// (128-byte swizzle, base offset 0), anything else fails the launch.
void check_descriptor(Block& b, Fiber* f, uint64_t desc, const char* which) {
    const uint64_t reserved = (3ull << 14) | (3ull << 30) | (7ull << 46) | (0x3ffull << 52);
    if ((desc >> 62) != 1 || ((desc >> 49) & 7) != 0 || (desc & reserved) != 0) {
        abort_block(b, f,
                    format("wgmma: descriptor %s 0x%016llx is not a 128-byte-swizzle descriptor with base "
                           "offset 0 (the only layout the simulator models)",
                           which, (unsigned long long)desc));
    }
}

// Byte offset in shared memory of element (mn, k) of an operand: the
// canonical 128-byte-swizzle layouts of the PTX ISA (8 rows of 128 bytes per
// 1024-byte atom; 16-byte chunk index XORed with the row within the atom,
// taken from the address bits, so atoms must be 1024-byte aligned).
//   K-major (K contiguous): start + (mn / 8) SBO + (mn % 8) 128 + 2 k
//   MN-major (MN contiguous): start + (mn / 64) LBO + (k / 8) SBO + (k % 8) 128 + 2 (mn % 64)
uint32_t operand_offset(uint64_t desc, int mn, int k, bool mn_major) {
    const uint32_t start = (uint32_t)(desc & 0x3fff) << 4;
    const uint32_t lbo = (uint32_t)((desc >> 16) & 0x3fff) << 4;
    const uint32_t sbo = (uint32_t)((desc >> 32) & 0x3fff) << 4;
    const uint32_t off = mn_major ? start + (uint32_t)(mn / 64) * lbo + (uint32_t)(k / 8) * sbo +
                                        (uint32_t)(k % 8) * 128 + (uint32_t)(mn % 64) * 2
                                  : start + (uint32_t)(mn / 8) * sbo + (uint32_t)(mn % 8) * 128 + (uint32_t)k * 2;
    return off ^ (((off >> 7) & 7u) << 4);
}

ADAFACE_SIM_FAST_MATH_CLONES void run_wgmma(Block& b, Fiber* f, const PendingWgmma& w) {
    const unsigned char* smem = tl_dynamic_smem;
    auto load = [&](uint32_t off) {
        if (off + 2 > b.shared_bytes) {
            abort_block(b, f, format("wgmma: operand byte %u past the %u bytes of shared memory", off, b.shared_bytes));
        }
        uint16_t bits;
        std::memcpy(&bits, smem + off, 2);
        return std::bit_cast<float>((uint32_t)bits << 16);
    };
    // This thread's fragment of the 64 x N accumulator: warp q of the
    // warpgroup holds rows 16q + g and 16q + g + 8, lane (g, t) = (l / 4, l % 4)
    // columns 8j + 2t and 8j + 2t + 1 of every n8 block j, in that order.
    const int q = (int)((f->linear >> 5) & 3);
    const int lane = (int)(f->linear & 31);
    const int g = lane >> 2;
    const int t = lane & 3;
    float a[2][16];
    for (int h = 0; h < 2; ++h) {
        for (int k = 0; k < 16; ++k) {
            a[h][k] = load(operand_offset(w.desc_a, 16 * q + g + 8 * h, k, false));
        }
    }
    for (int i = 0; i < w.n / 2; ++i) {
        const int h = (i >> 1) & 1;
        const int col = 8 * (i >> 2) + 2 * t + (i & 1);
        float acc = w.accumulate ? w.d[i] : 0.0f;
        for (int k = 0; k < 16; ++k) {
            acc = fmaf(a[h][k], load(operand_offset(w.desc_b, col, k, w.b_mn_major)), acc);
        }
        w.d[i] = acc;
    }
}

void flush_wgmmas(Block& b, Fiber* f, size_t count) {
    for (size_t i = 0; i < count; ++i) {
        run_wgmma(b, f, f->wgmmas[i]);
    }
    f->wgmmas.erase(f->wgmmas.begin(), f->wgmmas.begin() + (ptrdiff_t)count);
}
}  // namespace

void wgmma_issue(uint64_t desc_a, uint64_t desc_b, float* d, int n, bool b_mn_major, bool accumulate) {
    Block& b = current_block();
    Fiber* f = tl_fiber;
    if (b.nthreads % 128 != 0) {
        abort_block(b, f, format("wgmma: a block of %u threads is not made of whole warpgroups", b.nthreads));
    }
    if (n < 8 || n > 256 || n % 8 != 0) {
        abort_block(b, f, format("wgmma: N = %d is not a multiple of 8 in [8, 256]", n));
    }
    check_descriptor(b, f, desc_a, "A");
    check_descriptor(b, f, desc_b, "B");
    if (f->linear % 128 == 0) {
        __atomic_fetch_add(&wgmma_executed, 1ull, __ATOMIC_SEQ_CST);
    }
    f->wgmmas.push_back(PendingWgmma{desc_a, desc_b, d, n, b_mn_major, accumulate, f->wgmma_groups});
}

void wgmma_commit() {
    (void)current_block();
    ++tl_fiber->wgmma_groups;
}

void wgmma_wait(int pending_groups_allowed) {
    Block& b = current_block();
    Fiber* f = tl_fiber;
    const uint64_t allowed = (uint64_t)pending_groups_allowed;
    const uint64_t limit = f->wgmma_groups > allowed ? f->wgmma_groups - allowed : 0;
    size_t n = 0;
    while (n < f->wgmmas.size() && f->wgmmas[n].group < limit) {
        ++n;
    }
    flush_wgmmas(b, f, n);
}

// ---------------------------------------------------------------------------
// The launch.
// ---------------------------------------------------------------------------
int launch_kernel(const char* name, const adaface_sim_launch* launch, void (*body)(const void*), const void* params) {
    tl_last_error.clear();
    if (launch == nullptr || params == nullptr) {
        return set_error(ADAFACE_SIM_BAD_LAUNCH, format("kernel %s: null launch or parameter pointer", name));
    }
    const adaface_sim_launch L = *launch;
    const unsigned long long threads = (unsigned long long)L.block_x * L.block_y * L.block_z;
    if (L.block_x == 0 || L.block_y == 0 || L.block_z == 0 || L.block_x > kMaxBlockX || L.block_y > kMaxBlockY ||
        L.block_z > kMaxBlockZ || threads > kMaxBlockThreads) {
        return set_error(ADAFACE_SIM_BAD_LAUNCH,
                         format("kernel %s: invalid block (%u,%u,%u): each dimension at least 1, at most "
                                "(1024,1024,64), at most 1024 threads",
                                name, L.block_x, L.block_y, L.block_z));
    }
    if (L.grid_x == 0 || L.grid_y == 0 || L.grid_z == 0 || L.grid_x > kMaxGridX || L.grid_y > kMaxGridYZ ||
        L.grid_z > kMaxGridYZ) {
        return set_error(ADAFACE_SIM_BAD_LAUNCH,
                         format("kernel %s: invalid grid (%u,%u,%u): each dimension at least 1, at most "
                                "(2^31-1,65535,65535)",
                                name, L.grid_x, L.grid_y, L.grid_z));
    }
    if (L.shared_bytes > kMaxSharedBytes) {
        return set_error(ADAFACE_SIM_SHARED_TOO_LARGE,
                         format("kernel %s: %u bytes of dynamic shared memory requested, at most %u available",
                                name, L.shared_bytes, kMaxSharedBytes));
    }
    const unsigned long long blocks = (unsigned long long)L.grid_x * L.grid_y * L.grid_z;
    const size_t hw = std::max(1u, std::thread::hardware_concurrency());
    const size_t max_workers = env_size("ADAFACE_SIM_THREADS", hw, 1, 1024);
    const size_t workers = (size_t)std::min<unsigned long long>(blocks, max_workers);
    const bool ucontext = use_ucontext();

    std::atomic<unsigned long long> next_block{0};
    std::atomic<bool> stop{false};
    std::mutex error_mutex;
    int error_code = ADAFACE_SIM_OK;
    std::string error_message;
    auto record = [&](int code, std::string msg) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (error_code == ADAFACE_SIM_OK) {
            error_code = code;
            error_message = std::move(msg);
        }
        stop.store(true);
    };

    auto work = [&]() {
        std::unique_ptr<Arena> arena;
        try {
            arena = arena_pool().acquire();
            Block b;
            b.kernel = name;
            b.body = body;
            b.params = params;
            b.ucontext = ucontext;
            b.arena = arena.get();
            b.nthreads = (unsigned)threads;
            b.nwarps = (b.nthreads + 31) / 32;
            if (!arena->ensure_fibers(b.nthreads) || !arena->ensure_smem(L.shared_bytes)) {
                record(ADAFACE_SIM_RESOURCES, format("kernel %s: out of memory for fiber stacks", name));
                arena_pool().release(std::move(arena));
                return;
            }
            b.fiber_list.resize(b.nthreads);
            for (unsigned i = 0; i < b.nthreads; ++i) {
                b.fiber_list[i] = arena->fibers[i].get();
            }
            b.fibers = b.fiber_list.data();
            b.queue.assign(b.nthreads, nullptr);
            b.barrier_waiters.reserve(b.nthreads);
            b.warps.assign(b.nwarps, Warp{});

            tl_block = &b;
            tl_block_dim = dim3(L.block_x, L.block_y, L.block_z);
            tl_grid_dim = dim3(L.grid_x, L.grid_y, L.grid_z);
            tl_dynamic_smem = L.shared_bytes > 0 ? arena->smem : nullptr;
            while (!stop.load(std::memory_order_relaxed)) {
                const unsigned long long i = next_block.fetch_add(1);
                if (i >= blocks) {
                    break;
                }
                if (!run_block(b, i, L.shared_bytes)) {
                    record(ADAFACE_SIM_KERNEL_FAILED, b.message);
                    break;
                }
            }
            tl_block = nullptr;
            tl_dynamic_smem = nullptr;
        } catch (const std::bad_alloc&) {
            tl_block = nullptr;
            record(ADAFACE_SIM_RESOURCES, format("kernel %s: out of memory", name));
        }
        if (arena) {
            arena_pool().release(std::move(arena));
        }
    };

    std::vector<std::thread> pool;
    for (size_t i = 1; i < workers; ++i) {
        try {
            pool.emplace_back(work);
        } catch (...) {
            break;  // fewer workers is fine: the caller's thread works too
        }
    }
    work();
    for (std::thread& t : pool) {
        t.join();
    }
    if (error_code != ADAFACE_SIM_OK) {
        return set_error(error_code, std::move(error_message));
    }
    return ADAFACE_SIM_OK;
}

}  // namespace adaface_sim

// ---------------------------------------------------------------------------
// C ABI for the Rust side (src/sim/mod.rs).
// ---------------------------------------------------------------------------
extern "C" const char* adaface_sim_last_error() { return adaface_sim::tl_last_error.c_str(); }

// 1: switch fibers with ucontext even where a faster switch exists; 0: default.
extern "C" void adaface_sim_force_ucontext(int on) { adaface_sim::g_force_ucontext.store(on != 0 ? 1 : 0); }

// 1 when the fast (non-ucontext) switch is compiled in.
extern "C" int adaface_sim_has_fast_switch() { return ADAFACE_SIM_FAST_SWITCH; }

extern "C" unsigned long long adaface_sim_mma_count() {
    return __atomic_load_n(&adaface_sim::mma_executed, __ATOMIC_SEQ_CST);
}

extern "C" unsigned long long adaface_sim_wgmma_count() {
    return __atomic_load_n(&adaface_sim::wgmma_executed, __ATOMIC_SEQ_CST);
}
