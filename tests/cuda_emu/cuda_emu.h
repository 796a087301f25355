// A CUDA-on-CPU execution harness for testing runtime/csrc/ssd_scan.cu without a GPU.
//
// build.py rewrites ssd_scan.cu mechanically (its CUDA includes become this header, its one
// `extern __shared__` array becomes emu::dynamic_shared(), each __launch_bounds__ becomes a check
// at kernel entry, a `<<<...>>>` launch becomes emu::chevron_launch) and compiles it with g++
// into a shared library that exports the same C interface (ssd_scan.h) plus the emu_* controls
// at the end of this file.
//
// Execution model:
// - Every CUDA thread is a ucontext fiber with its own guarded stack; one block runs at a time,
//   its fibers scheduled cooperatively: each runs until it blocks at a rendezvous or exits.
// - __syncthreads() is a real rendezvous: it releases only when every thread of the block waits
//   at the same call site; a thread that exited, or waits at another __syncthreads, while others
//   wait is a divergent barrier (a fault). __shfl_xor_sync() is a rendezvous of the lanes named
//   in its mask: the caller must be in the mask, every named lane must exist, reach the same call
//   site with the same mask, and its xor partner must be named too. No runnable thread while some
//   wait is a deadlock (a fault).
// - Launch configurations are validated against device limits (grid, block, dynamic shared
//   memory, __launch_bounds__) and fail with the CUDA error a GPU returns: cudaLaunchKernel
//   returns it, and cudaGetLastError() keeps CUDA's per-thread "last error" semantics (a failed
//   launch sets it, a successful one leaves it alone, reading it clears it).
// - Dynamic shared memory is NaN-filled for every block, so is memory from cudaMallocAsync: a
//   read of anything not written first shows up as NaN in the results.
// - Threads (within each scheduling round) and blocks run in forward, reverse or random order
//   (emu_configure): a result that depends on the order reveals a missing barrier.
// - `__half` is _Float16 (IEEE binary16, round to nearest even); the math functions are the host's.
// - With -DEMU_TSAN (and -fsanitize=thread) each fiber is a ThreadSanitizer fiber and barriers,
//   shuffles and launch boundaries are its only synchronization, so TSan reports every data race
//   between CUDA threads (shared and global memory) that the barriers do not order.
#pragma once

#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(EMU_TSAN)
#include <sanitizer/tsan_interface.h>
extern "C" void __tsan_ignore_thread_begin(void);  // in libtsan, not in its header
extern "C" void __tsan_ignore_thread_end(void);
#endif

// ---- CUDA language surface ------------------------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __CUDACC_VER_MAJOR__ 0
#define __CUDACC_VER_MINOR__ 0

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
    unsigned x, y, z;
};
struct alignas(16) float4 {
    float x, y, z, w;
};

using __half = _Float16;
inline float __half2float(__half h) { return static_cast<float>(h); }
inline __half __float2half_rn(float f) { return static_cast<__half>(f); }  // nearest even
template <typename T>
inline T __ldg(const T* p) { return *p; }

// ---- CUDA runtime surface -------------------------------------------------------------------------

enum cudaError_t {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorLaunchOutOfResources = 701,
    cudaErrorLaunchFailure = 719,
    cudaErrorNotSupported = 801,
};
enum cudaDeviceAttr {
    cudaDevAttrMultiProcessorCount = 16,
    cudaDevAttrMemoryPoolsSupported = 115,
};
enum cudaMemcpyKind { cudaMemcpyDeviceToDevice = 3 };
typedef struct CUstream_st* cudaStream_t;

// CUDA's built-in variables: the scheduler sets threadIdx before it switches to a thread.
inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

// A launch's geometry (the emulator's own type).
struct cudaLaunchConfig {
    dim3 grid, block;
    size_t shared_bytes;
};

namespace emu {

// Device limits of the GPUs the kernels target (sm_80 .. sm_90); the shared-memory limit is the
// default without a cudaFuncSetAttribute opt-in.
struct Limits {
    unsigned max_threads_per_block = 1024;
    unsigned max_block[3] = {1024, 1024, 64};
    unsigned max_grid[3] = {2147483647u, 65535, 65535};
    size_t max_shared_bytes = 48 * 1024;
    int sm_count = 132;
};

enum Order { kForward = 0, kReverse = 1, kRandom = 2 };

struct Stats {
    long launches = 0, blocks = 0, threads = 0, barriers = 0, shuffles = 0;
};

enum class State { kReady, kBarrier, kShuffle, kDone };

struct Fiber {
    ucontext_t ctx;
    char* stack = nullptr;  // mmap'ed, lowest page a guard
    size_t stack_bytes = 0;
    uint3 idx{};
    unsigned linear = 0;
    State state = State::kReady;
    int site = 0;           // line of the __syncthreads / shuffle it waits at
    unsigned mask = 0;      // shuffle mask
    int lane_mask = 0;      // xor operand
    uint64_t shuffles = 0;  // shuffles done (TSan: which of two sync objects)
    uint64_t value = 0;     // shuffle operand bits in, result bits out
    void* tsan = nullptr;
};

inline Limits g_limits;
inline int g_thread_order = kForward, g_block_order = kForward;
inline std::mt19937_64 g_rng(1);
inline Stats g_stats;
inline cudaError_t g_last_error = cudaSuccess;  // cudaGetLastError's per-thread state
inline std::string g_fault;                     // first fault of the last failed launch

// The launch in progress.
inline std::vector<Fiber> g_fibers;
inline Fiber* g_current = nullptr;
inline ucontext_t g_scheduler;
inline void* g_scheduler_tsan = nullptr;
inline char* g_shared = nullptr;
inline size_t g_shared_bytes = 0;
inline uint64_t g_barrier_gen = 0;
inline std::function<void()> g_body;
// TSan sync objects: of the launch's end, and per block (fresh memory, so that nothing carries
// over from the previous block): two barrier generations, then two per warp for shuffles.
inline char g_launch_sync[8];
inline char* g_block_sync = nullptr;

inline void tsan_release(void* p) {
#if defined(EMU_TSAN)
    __tsan_release(p);
#else
    (void)p;
#endif
}
inline void tsan_acquire(void* p) {
#if defined(EMU_TSAN)
    __tsan_acquire(p);
#else
    (void)p;
#endif
}

// Emulator bookkeeping that TSan must not see as the CUDA threads' accesses (the scheduler's, and
// the fibers' inside a rendezvous). Only the kernels' own accesses are checked.
inline void tsan_ignore(bool on) {
#if defined(EMU_TSAN)
    if (on)
        __tsan_ignore_thread_begin();
    else
        __tsan_ignore_thread_end();
#else
    (void)on;
#endif
}
struct Untracked {
    Untracked() { tsan_ignore(true); }
    ~Untracked() { tsan_ignore(false); }
};

inline void* barrier_sync(uint64_t gen) { return g_block_sync + 8 * (gen & 1); }
inline void* warp_sync(unsigned warp, uint64_t shuffles) { return g_block_sync + 16 + 16 * warp + 8 * (shuffles & 1); }

// Back to the scheduler from the current fiber (no happens-before: only rendezvous synchronize).
inline void yield_to_scheduler() {
    Fiber* f = g_current;
#if defined(EMU_TSAN)
    __tsan_switch_to_fiber(g_scheduler_tsan, __tsan_switch_to_fiber_no_sync);
#endif
    swapcontext(&f->ctx, &g_scheduler);
}

// A fault ends the launch: the fiber never resumes.
[[noreturn]] inline void fault(const std::string& what) {
#if defined(EMU_TSAN)
    std::fprintf(stderr, "emulator fault: %s\n", what.c_str());  // a TSan run stops here
    std::fflush(stderr);
    _exit(3);
#endif
    if (g_fault.empty()) g_fault = what;
    yield_to_scheduler();
    std::abort();  // unreachable: a faulted launch is abandoned
}

inline std::string where(const Fiber& f) {
    char text[96];
    std::snprintf(text, sizeof text, "block (%u,%u,%u) thread (%u,%u,%u)", ::blockIdx.x, ::blockIdx.y,
                  ::blockIdx.z, f.idx.x, f.idx.y, f.idx.z);
    return text;
}

inline unsigned block_threads() { return ::blockDim.x * ::blockDim.y * ::blockDim.z; }

// The fibers of the block in progress (g_fibers keeps the largest block's count).
struct ActiveFibers {
    Fiber* begin() const { return g_fibers.data(); }
    Fiber* end() const { return g_fibers.data() + block_threads(); }
};

// ---- rendezvous -----------------------------------------------------------------------------------

inline void syncthreads(int site) {
    Fiber* f = g_current;
    uint64_t gen;
    {
        Untracked untracked;
        gen = g_barrier_gen;
    }
    tsan_release(barrier_sync(gen));
    {
        Untracked untracked;
        ++g_stats.barriers;
        f->state = State::kBarrier;
        f->site = site;
        yield_to_scheduler();  // the scheduler releases the barrier (or faults)
    }
    tsan_acquire(barrier_sync(gen));
}

template <typename T>
T shfl_xor(unsigned mask, T v, int lane_mask, int width, int site) {
    static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
    Fiber* f = g_current;
    uint64_t warp_shuffles;
    {
        Untracked untracked;
        warp_shuffles = f->shuffles++;
    }
    tsan_release(warp_sync(f->linear / 32, warp_shuffles));
    Untracked untracked;
    ++g_stats.shuffles;
    unsigned const lane = f->linear % 32, warp0 = f->linear - lane;
    if (width != 32) fault(where(*f) + ": __shfl_xor_sync with width != 32 is not emulated");
    if (!(mask >> lane & 1u))
        fault(where(*f) + ": __shfl_xor_sync at line " + std::to_string(site) + " with a mask that omits the caller");
    unsigned const partner = lane ^ (unsigned)lane_mask;
    if (partner >= 32 || !(mask >> partner & 1u))
        fault(where(*f) + ": __shfl_xor_sync at line " + std::to_string(site) + ": partner lane " +
              std::to_string(partner) + " is not in the mask (partial mask)");
    for (unsigned l = 0; l < 32; ++l)
        if ((mask >> l & 1u) && warp0 + l >= block_threads())
            fault(where(*f) + ": __shfl_xor_sync mask names lane " + std::to_string(l) +
                  ", which does not exist (partial warp)");
    f->state = State::kShuffle;
    f->site = site;
    f->mask = mask;
    f->lane_mask = lane_mask;
    f->value = 0;
    memcpy(&f->value, &v, sizeof(T));
    // Complete the rendezvous when every named lane is here; check they agree.
    bool all = true;
    for (unsigned l = 0; l < 32 && all; ++l) {
        if (!(mask >> l & 1u)) continue;
        Fiber const& o = g_fibers[warp0 + l];
        if (o.state == State::kShuffle && (o.site != site || o.mask != mask))
            fault(where(*f) + ": divergent __shfl_xor_sync: line " + std::to_string(site) + " mask " +
                  std::to_string(mask) + " meets line " + std::to_string(o.site) + " mask " + std::to_string(o.mask));
        all = o.state == State::kShuffle;
    }
    if (all) {
        uint64_t in[32];
        for (unsigned l = 0; l < 32; ++l) in[l] = g_fibers[warp0 + l].value;
        for (unsigned l = 0; l < 32; ++l) {
            if (!(mask >> l & 1u)) continue;
            Fiber& o = g_fibers[warp0 + l];
            o.value = in[l ^ (unsigned)o.lane_mask];
            o.state = State::kReady;
        }
    } else {
        yield_to_scheduler();
    }
    T out;
    memcpy(&out, &f->value, sizeof(T));
    tsan_acquire(warp_sync(f->linear / 32, warp_shuffles));
    return out;
}

// ---- launch ---------------------------------------------------------------------------------------

inline void fiber_entry() {
    g_body();
    tsan_release(g_launch_sync);
    {
        Untracked untracked;
        g_current->state = State::kDone;
    }
    yield_to_scheduler();
    std::abort();  // unreachable
}

inline void ensure_stack(Fiber& f, size_t bytes) {
    if (f.stack_bytes >= bytes) return;
    long const page = sysconf(_SC_PAGESIZE);
    if (f.stack) munmap(f.stack, f.stack_bytes + page);
    void* p = mmap(nullptr, bytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) std::abort();
    mprotect(p, page, PROT_NONE);  // a stack overflow faults instead of corrupting the next stack
    f.stack = static_cast<char*>(p);
    f.stack_bytes = bytes;
}

inline std::vector<unsigned> ordering(unsigned n, int order) {
    std::vector<unsigned> v(n);
    for (unsigned i = 0; i < n; ++i) v[i] = order == kReverse ? n - 1 - i : i;
    if (order == kRandom) std::shuffle(v.begin(), v.end(), g_rng);
    return v;
}

// Releases the barrier when every thread waits at the same one; else the fault that explains why not.
inline bool try_release_barrier() {
    Fiber const* first = nullptr;
    for (Fiber const& f : ActiveFibers{}) {
        if (f.state == State::kReady || f.state == State::kShuffle) return false;
        if (f.state == State::kBarrier && !first) first = &f;
    }
    if (!first) return false;
    for (Fiber const& f : ActiveFibers{}) {
        if (f.state == State::kDone) {
            g_fault = "divergent __syncthreads: " + where(f) + " exited while " + where(*first) +
                      " waits at line " + std::to_string(first->site);
            return false;
        }
        if (f.site != first->site) {
            g_fault = "divergent __syncthreads: " + where(f) + " waits at line " + std::to_string(f.site) + ", " +
                      where(*first) + " at line " + std::to_string(first->site);
            return false;
        }
    }
    for (Fiber& f : ActiveFibers{}) f.state = State::kReady;
    ++g_barrier_gen;
    return true;
}

inline std::string describe_deadlock() {
    std::string text = "deadlock: no thread can run;";
    int shown = 0;
    for (Fiber const& f : ActiveFibers{}) {
        if (f.state == State::kDone || shown == 4) continue;
        ++shown;
        text += " " + where(f) + (f.state == State::kBarrier ? " at __syncthreads line " : " at __shfl_xor_sync line ") +
                std::to_string(f.site) + ";";
    }
    return text;
}

// Runs one block to completion; false (with g_fault set) on a fault.
inline bool run_block(size_t stack_bytes) {
    unsigned const n = block_threads();
    // Fresh NaN-filled shared memory per block (malloc: TSan forgets the previous block's accesses).
    g_shared = static_cast<char*>(aligned_alloc(16, (g_shared_bytes + 15) / 16 * 16 + 16));
    memset(g_shared, 0xff, g_shared_bytes);
    g_block_sync = static_cast<char*>(calloc(2 + 2 * ((n + 31) / 32), 8));
    for (unsigned i = 0; i < n; ++i) {
        Fiber& f = g_fibers[i];
        ensure_stack(f, stack_bytes);
        long const page = sysconf(_SC_PAGESIZE);
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack + page;
        f.ctx.uc_stack.ss_size = f.stack_bytes;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, fiber_entry, 0);
        f.linear = i;
        f.idx = uint3{i % ::blockDim.x, (i / ::blockDim.x) % ::blockDim.y, i / (::blockDim.x * ::blockDim.y)};
        f.state = State::kReady;
        f.shuffles = 0;
#if defined(EMU_TSAN)
        f.tsan = __tsan_create_fiber(0);
#endif
    }
    bool ok = true;
    for (;;) {
        bool ran = false;
        for (unsigned i : ordering(n, g_thread_order)) {
            Fiber& f = g_fibers[i];
            if (f.state != State::kReady) continue;
            g_current = &f;
            ::threadIdx = f.idx;
#if defined(EMU_TSAN)
            // Into a thread: what the host did before the launch happens before it (the
            // scheduler itself is untracked and acquires nothing from the threads while the
            // launch runs); back to the scheduler: no synchronization.
            __tsan_switch_to_fiber(f.tsan, 0);
#endif
            swapcontext(&g_scheduler, &f.ctx);
            g_current = nullptr;
            ran = true;
            if (!g_fault.empty()) break;
        }
        if (!g_fault.empty()) {
            ok = false;
            break;
        }
        if (std::all_of(g_fibers.begin(), g_fibers.begin() + n, [](Fiber const& f) { return f.state == State::kDone; }))
            break;
        if (try_release_barrier()) continue;
        if (!g_fault.empty()) {
            ok = false;
            break;
        }
        if (!ran) {
            g_fault = describe_deadlock();
            ok = false;
            break;
        }
    }
#if defined(EMU_TSAN)
    for (unsigned i = 0; i < n; ++i) __tsan_destroy_fiber(g_fibers[i].tsan);
#endif
    free(g_shared);
    free(g_block_sync);
    g_shared = nullptr;
    g_block_sync = nullptr;
    return ok;
}

inline cudaError_t fail_launch(cudaError_t err, const std::string& why) {
    g_fault = why;
    g_last_error = err;
    return err;
}

inline cudaError_t launch(const cudaLaunchConfig& c, std::function<void()> body) {
    Untracked untracked;
    g_fault.clear();
    dim3 const gr = c.grid, bl = c.block;
    unsigned const gdims[3] = {gr.x, gr.y, gr.z}, bdims[3] = {bl.x, bl.y, bl.z};
    for (int k = 0; k < 3; ++k) {
        if (gdims[k] == 0 || gdims[k] > g_limits.max_grid[k])
            return fail_launch(cudaErrorInvalidConfiguration, "grid dimension " + std::to_string(k) + " = " +
                                                                  std::to_string(gdims[k]) + " out of range");
        if (bdims[k] == 0 || bdims[k] > g_limits.max_block[k])
            return fail_launch(cudaErrorInvalidConfiguration, "block dimension " + std::to_string(k) + " = " +
                                                                  std::to_string(bdims[k]) + " out of range");
    }
    if ((uint64_t)bl.x * bl.y * bl.z > g_limits.max_threads_per_block)
        return fail_launch(cudaErrorInvalidConfiguration, "more than max_threads_per_block threads");
    if (c.shared_bytes > g_limits.max_shared_bytes)
        return fail_launch(cudaErrorInvalidValue, std::to_string(c.shared_bytes) +
                                                      " bytes of dynamic shared memory exceed the device limit " +
                                                      std::to_string(g_limits.max_shared_bytes));
    ++g_stats.launches;
    ::gridDim = gr;
    ::blockDim = bl;
    g_shared_bytes = c.shared_bytes;
    g_body = std::move(body);
    unsigned const n = block_threads();
    if (g_fibers.size() < n) g_fibers.resize(n);
#if defined(EMU_TSAN)
    g_scheduler_tsan = __tsan_get_current_fiber();
    size_t const stack_bytes = 1 << 20;
#else
    size_t const stack_bytes = 64 << 10;
#endif
    uint64_t const blocks = (uint64_t)gr.x * gr.y * gr.z;
    if (blocks > (1u << 24)) return fail_launch(cudaErrorInvalidValue, "too many blocks to emulate");
    for (unsigned linear : ordering((unsigned)blocks, g_block_order)) {
        ::blockIdx = uint3{linear % gr.x, (linear / gr.x) % gr.y, linear / (gr.x * gr.y)};
        ++g_stats.blocks;
        g_stats.threads += n;
        if (!run_block(stack_bytes)) {
            g_last_error = g_fault.rfind("launch of ", 0) == 0 ? cudaErrorLaunchOutOfResources : cudaErrorLaunchFailure;
            return g_last_error;
        }
    }
    tsan_acquire(g_launch_sync);  // the launch's work happens before what the host does next
    return cudaSuccess;
}

inline void* dynamic_shared_bytes() { return g_shared; }
template <typename T>
T* dynamic_shared() {
    return reinterpret_cast<T*>(dynamic_shared_bytes());
}

// First statement of a kernel declared with __launch_bounds__(max_threads) (inserted by build.py):
// a larger block fails the launch before any thread runs further.
inline void launch_bounds(long max_threads) {
    if (block_threads() > (unsigned long)max_threads)
        fault("launch of " + std::to_string(block_threads()) + " threads exceeds __launch_bounds__(" +
              std::to_string(max_threads) + ")");
}

}  // namespace emu

// ---- the CUDA names the kernels and their host code use --------------------------------------------


inline void __syncthreads(int site = __builtin_LINE()) { emu::syncthreads(site); }
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, int site = __builtin_LINE()) {
    return emu::shfl_xor(mask, v, lane_mask, width, site);
}

namespace emu {
template <typename... Params, size_t... I>
std::tuple<std::decay_t<Params>...> unpack(void** args, std::index_sequence<I...>) {
    return std::tuple<std::decay_t<Params>...>(*static_cast<std::decay_t<Params>*>(args[I])...);
}
}  // namespace emu

// CUDA's typed cudaLaunchKernel: the arguments are copied at launch, as CUDA does.
template <typename... Params>
cudaError_t cudaLaunchKernel(void (*kernel)(Params...), dim3 grid, dim3 block, void** args, size_t shared_bytes = 0,
                             cudaStream_t stream = nullptr) {
    (void)stream;  // one stream: launches run in order, each to completion
    auto params = emu::unpack<Params...>(args, std::index_sequence_for<Params...>{});
    cudaLaunchConfig config{grid, block, shared_bytes};
    return emu::launch(config, [kernel, params]() { std::apply(kernel, params); });
}

namespace emu {
// What build.py makes of `kernel<<<grid, block, shared, stream>>>(args...)`. The statement has
// no value: a failed launch is seen only through cudaGetLastError(), as on a GPU.
template <typename... Params, typename... Args>
void chevron_launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t,
                    Args&&... args) {
    std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
    launch(cudaLaunchConfig{grid, block, shared_bytes}, [kernel, params]() { std::apply(kernel, params); });
}
}  // namespace emu

inline cudaError_t cudaGetLastError() {
    cudaError_t const e = emu::g_last_error;
    emu::g_last_error = cudaSuccess;
    return e;
}
inline cudaError_t cudaPeekAtLastError() { return emu::g_last_error; }
inline const char* cudaGetErrorName(cudaError_t e) {
    switch (e) {
        case cudaSuccess: return "cudaSuccess";
        case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
        case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
        case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
        case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
        case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
        case cudaErrorNotSupported: return "cudaErrorNotSupported";
    }
    return "cudaErrorUnknown";
}
inline const char* cudaGetErrorString(cudaError_t e) {
    return e == cudaSuccess ? "no error" : emu::g_fault.empty() ? "emulated error" : emu::g_fault.c_str();
}
inline cudaError_t cudaGetDevice(int* device) {
    *device = 0;
    return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int /*device*/) {
    switch (attr) {
        case cudaDevAttrMultiProcessorCount: *value = emu::g_limits.sm_count; return cudaSuccess;
        case cudaDevAttrMemoryPoolsSupported: *value = 1; return cudaSuccess;
    }
    return emu::g_last_error = cudaErrorInvalidValue;
}
inline cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) {
    *p = std::malloc(bytes ? bytes : 1);
    if (!*p) return emu::g_last_error = cudaErrorMemoryAllocation;
    memset(*p, 0xff, bytes);  // NaN: a read before a write shows
    return cudaSuccess;
}
inline cudaError_t cudaFreeAsync(void* p, cudaStream_t) {
    std::free(p);
    return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) {
    memset(p, value, bytes);
    return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t) {
    memmove(dst, src, bytes);
    return cudaSuccess;
}

// ---- controls for the tests (C ABI) -----------------------------------------------------------------

#define EMU_API extern "C" __attribute__((visibility("default")))

// Thread and block orders (emu::Order), and the seed of the random ones.
EMU_API void emu_configure(int thread_order, int block_order, unsigned long long seed) {
    emu::g_thread_order = thread_order;
    emu::g_block_order = block_order;
    emu::g_rng.seed(seed);
}
// Device limits: dynamic shared memory per block, SM count.
EMU_API void emu_set_limits(unsigned long long max_shared_bytes, int sm_count) {
    emu::g_limits.max_shared_bytes = max_shared_bytes;
    emu::g_limits.sm_count = sm_count;
}
// The fault of the last failed launch ("" if none).
EMU_API const char* emu_fault(void) { return emu::g_fault.c_str(); }
// Leaves an error in cudaGetLastError's state, as unrelated earlier work would.
EMU_API void emu_set_last_error(int code) { emu::g_last_error = static_cast<cudaError_t>(code); }
EMU_API int emu_peek_last_error(void) { return emu::g_last_error; }
// Counters since the library was loaded: launches, blocks, threads, barriers, shuffles.
EMU_API void emu_stats(long long* out) {
    out[0] = emu::g_stats.launches;
    out[1] = emu::g_stats.blocks;
    out[2] = emu::g_stats.threads;
    out[3] = emu::g_stats.barriers;
    out[4] = emu::g_stats.shuffles;
}
