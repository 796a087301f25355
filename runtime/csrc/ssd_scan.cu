// CUDA kernels of bmamba::SSDChunkScan v1 (the op and the C interface: ssd_scan.h).
//
// Design
// ------
// The scan is a recurrence in time, so each (batch, head) state s[P][N] must see its T steps in
// order; the parallelism is across batch, heads, the P x N state elements, and (for long T) time
// segments.
//
// * One thread block per (P-tile, head, batch x segment). Each thread owns kStatePerThread = 8
//   elements of one state row s[p][:] in registers; the `lanes` threads of a row (a power of two
//   <= 32, lanes * 8 >= N) sit in the same warp, so y_t[p] = sum_n s[p][n] C_t[n] is a register
//   sum plus log2(lanes) xor-shuffles. A block holds 256 / lanes rows (all of P when it fits).
//   Threads own n in float4 groups interleaved across lanes (ssd_math.h: owned_n), so the
//   per-step reads of B_t and C_t from shared memory are conflict-free 128-bit loads, and the
//   rows of a warp read the same addresses (broadcast).
// * Time is staged `chunk` steps at a time (32, fewer for large N): the block loads B and C
//   [chunk, N] (zero-padded to lanes * 8, so the inner loop has no bounds checks), x [chunk,
//   rows], and computes dt = softplus(dt_raw + dt_bias) and exp(dt * A) once per step, with
//   coalesced global loads (N, resp. the P-tile, contiguous); then every thread runs the chunk's
//   steps from shared memory with no barrier; then y [chunk, rows] (+ D x) is written back
//   coalesced. Two barriers per chunk (after staging, after the steps), none per step. float16 I/O converts on the way in and
//   out; the state and the arithmetic are float32.
// * Cost: per step each thread does 8 state updates and 8 output FMAs; the sequential chain is
//   one FMA per step per element, so a single (batch, head) costs about T * (chunk staging +
//   steps) latency. When batch * H * P-tiles blocks are too few to fill the GPU (small batch,
//   long T: streaming a recording), time is cut into S segments run in parallel in three
//   launches: (1) each segment but the last scans from a zero state (segment 0 from the initial
//   state) and keeps only its final state and its total decay prod exp(dt * A) (a scalar per
//   head: the recurrence is diagonal in time), (2) a small kernel chains the segment states,
//   entering_{s+1} = decay_s * entering_s + local_s, (3) every segment rescans from its entering
//   state and writes y (the last one the final state). About twice the arithmetic, S times the
//   parallelism; the automatic plan (ssd_math.h: auto_segments) only splits when blocks are
//   scarce and segments stay >= 512 steps. The workspace [batch, H, S, P, N] also removes any
//   hazard when final_state aliases initial_state.
// * The single step is the scan with T = 1.
//
// ssd_scan_cpu.cpp replays this exact decomposition (tiles, lanes, chunk staging, shuffle order,
// segments) on the CPU with the same ssd_math.h functions, so tests check it without a GPU.

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>

#include "ssd_math.h"
#include "ssd_scan.h"

namespace bmamba {
namespace ssd {
namespace {

thread_local std::string g_last_error;

int fail(int code, const std::string& detail) {
    g_last_error = detail;
    return code;
}

int cuda_fail(cudaError_t err, const char* what) {
    return fail(BMAMBA_SSD_ERR_CUDA, std::string(what) + ": " + cudaGetErrorName(err) + ": " +
                                         cudaGetErrorString(err));
}

// Loads of I/O tensors as float, stores from float.
template <typename IO>
struct Io;
template <>
struct Io<float> {
    static __device__ __forceinline__ float load(const float* p) { return __ldg(p); }
    static __device__ __forceinline__ float store(float v) { return v; }
};
template <>
struct Io<__half> {
    static __device__ __forceinline__ float load(const __half* p) { return __half2float(p[0]); }
    static __device__ __forceinline__ __half store(float v) { return __float2half_rn(v); }
};

struct Args {
    const void* x;
    const void* dt;
    const void* B;
    const void* C;
    const float* A;
    const float* D;
    const float* dt_bias;
    const float* initial_state;  // may be null: zeros
    void* y;
    float* final_state;
    float* workspace;  // segments > 1 only
    Dims d;
    int lanes, state_pad, rows, chunk, segments;
    int64_t segment_steps;
};

enum class Pass {
    kLocal,   // segments 0 .. S-2: final state and total decay of the segment, no y
    kOutput,  // every segment from its entering state: y, and the final state of the last
};

template <typename IO, Pass kPass>
__global__ void __launch_bounds__(kMaxThreads) scan_kernel(const Args a) {
    constexpr bool kWritesY = kPass == Pass::kOutput;
    const Dims d = a.d;
    const int L = a.lanes, NP = a.state_pad, R = a.rows, K = a.chunk, S = a.segments;
    const int tid = threadIdx.x, n_threads = blockDim.x;
    const int lane = tid & (L - 1), row = tid / L;
    const int64_t h = blockIdx.y;
    const int64_t b = blockIdx.z / S, s = blockIdx.z % S;
    if (kPass == Pass::kLocal && s == S - 1) return;  // its local state is never needed
    const int64_t p0 = (int64_t)blockIdx.x * R, p = p0 + row;
    const bool row_valid = p < d.P;
    const int64_t g = group_of_head(d, h);
    int64_t t0, t1;
    segment_bounds(d.T, a.segment_steps, s, &t0, &t1);

    extern __shared__ float4 shared4[];
    float* sB = reinterpret_cast<float*>(shared4);  // [K][NP]
    float* sC = sB + K * NP;                        // [K][NP]
    float* sX = sC + K * NP;                        // [K][R]
    float* sY = sX + K * R;                         // [K][R]
    float* sDt = sY + K * R;                        // [K]
    float* sDecay = sDt + K;                        // [K]

    // The state entering this segment.
    const float* start = nullptr;
    if (kPass == Pass::kLocal) {
        if (s == 0 && a.initial_state) start = a.initial_state + state_index(d, b, h, 0, 0);
    } else if (S == 1) {
        if (a.initial_state) start = a.initial_state + state_index(d, b, h, 0, 0);
    } else {
        start = a.workspace + ws_state_index(d, S, b, h, s);
    }
    float st[kStatePerThread];
#pragma unroll
    for (int j = 0; j < kStatePerThread; ++j) {
        const int n = owned_n(lane, L, j);
        st[j] = (start && row_valid && n < d.N) ? start[p * d.N + n] : 0.0f;
    }

    const IO* x = static_cast<const IO*>(a.x);
    const IO* dt = static_cast<const IO*>(a.dt);
    const IO* Bm = static_cast<const IO*>(a.B);
    const IO* Cm = static_cast<const IO*>(a.C);
    IO* y = static_cast<IO*>(a.y);
    const float A_h = a.A[h], D_h = a.D[h], bias_h = a.dt_bias[h];
    float decay_total = 1.0f;  // thread 0, kLocal

    for (int64_t tc = t0; tc < t1; tc += K) {
        const int steps = (int)((t1 - tc) < K ? (t1 - tc) : K);
        // Stage the chunk: B, C rows zero-padded to NP; x of this block's rows; dt and decay.
        for (int i = tid; i < steps * NP; i += n_threads) {
            const int k = i / NP, n = i - k * NP;
            float bv = 0.0f, cv = 0.0f;
            if (n < d.N) {
                const int64_t idx = bc_index(d, b, tc + k, g, n);
                bv = Io<IO>::load(Bm + idx);
                if (kWritesY) cv = Io<IO>::load(Cm + idx);
            }
            sB[i] = bv;
            if (kWritesY) sC[i] = cv;
        }
        for (int i = tid; i < steps * R; i += n_threads) {
            const int k = i / R, r = i - k * R;
            const int64_t pp = p0 + r;
            sX[i] = pp < d.P ? Io<IO>::load(x + x_index(d, b, tc + k, h, pp)) : 0.0f;
        }
        for (int k = tid; k < steps; k += n_threads) {
            const float dtv = step_size(Io<IO>::load(dt + dt_index(d, b, tc + k, h)), bias_h);
            sDt[k] = dtv;
            sDecay[k] = step_decay(dtv, A_h);
        }
        __syncthreads();

        for (int k = 0; k < steps; ++k) {
            const float decay = sDecay[k];
            const float dt_x = sDt[k] * sX[k * R + row];
            const float4* b4 = reinterpret_cast<const float4*>(sB + k * NP);
#pragma unroll
            for (int q = 0; q < kStatePerThread / 4; ++q) {
                const float4 bv = b4[lane + L * q];
                st[4 * q + 0] = state_update(st[4 * q + 0], decay, dt_x, bv.x);
                st[4 * q + 1] = state_update(st[4 * q + 1], decay, dt_x, bv.y);
                st[4 * q + 2] = state_update(st[4 * q + 2], decay, dt_x, bv.z);
                st[4 * q + 3] = state_update(st[4 * q + 3], decay, dt_x, bv.w);
            }
            if (kWritesY) {
                const float4* c4 = reinterpret_cast<const float4*>(sC + k * NP);
                float acc = 0.0f;
#pragma unroll
                for (int q = 0; q < kStatePerThread / 4; ++q) {
                    const float4 cv = c4[lane + L * q];
                    acc = output_accumulate(acc, st[4 * q + 0], cv.x);
                    acc = output_accumulate(acc, st[4 * q + 1], cv.y);
                    acc = output_accumulate(acc, st[4 * q + 2], cv.z);
                    acc = output_accumulate(acc, st[4 * q + 3], cv.w);
                }
                // Every thread of the block is here (padding rows included): full-warp shuffles.
                for (int offset = L >> 1; offset > 0; offset >>= 1)
                    acc += __shfl_xor_sync(0xffffffffu, acc, offset);
                if (lane == 0) sY[k * R + row] = acc;
            }
        }
        if (kPass == Pass::kLocal && tid == 0)
            for (int k = 0; k < steps; ++k) decay_total *= sDecay[k];
        __syncthreads();

        // No barrier after the write-back: the next chunk's staging writes sX[i] from the same
        // thread that read it here (same i loop), and sY only after its first barrier.
        if (kWritesY) {
            for (int i = tid; i < steps * R; i += n_threads) {
                const int k = i / R, r = i - k * R;
                const int64_t pp = p0 + r;
                if (pp < d.P)
                    y[x_index(d, b, tc + k, h, pp)] = Io<IO>::store(output_value(sY[i], D_h, sX[i]));
            }
        }
    }

    float* dst = nullptr;
    if (kPass == Pass::kLocal)
        dst = a.workspace + ws_state_index(d, S, b, h, s + 1);
    else if (s == S - 1)
        dst = a.final_state + state_index(d, b, h, 0, 0);
    if (dst && row_valid) {
#pragma unroll
        for (int j = 0; j < kStatePerThread; ++j) {
            const int n = owned_n(lane, L, j);
            if (n < d.N) dst[p * d.N + n] = st[j];
        }
    }
    if (kPass == Pass::kLocal && tid == 0 && blockIdx.x == 0)
        a.workspace[ws_decay_index(d, S, b, h, s)] = decay_total;
}

// Pass 2: slot 0 <- the initial state; slot 1 already holds the state after segment 0; then
// slot s <- decay_{s-1} * slot_{s-1} + local_{s-1} in place, for s = 2 .. S-1.
__global__ void combine_kernel(const Args a) {
    const Dims d = a.d;
    const int S = a.segments;
    const int64_t PN = d.P * d.N;
    const int64_t e = (int64_t)blockIdx.y * blockDim.x + threadIdx.x;
    if (e >= PN) return;
    const int64_t b = blockIdx.x / d.H, h = blockIdx.x % d.H;
    float* slots = a.workspace + ws_state_index(d, S, b, h, 0);
    slots[e] = a.initial_state ? a.initial_state[state_index(d, b, h, 0, 0) + e] : 0.0f;
    float entering = slots[PN + e];
    for (int s = 2; s < S; ++s) {
        entering = segment_combine(a.workspace[ws_decay_index(d, S, b, h, s - 1)], entering,
                                   slots[s * PN + e]);
        slots[s * PN + e] = entering;
    }
}

int sm_count(int* out) {
    int device = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err != cudaSuccess) return cuda_fail(err, "cudaGetDevice");
    err = cudaDeviceGetAttribute(out, cudaDevAttrMultiProcessorCount, device);
    if (err != cudaSuccess) return cuda_fail(err, "cudaDeviceGetAttribute(MultiProcessorCount)");
    return BMAMBA_SSD_OK;
}

struct Call {
    int dtype;
    const void *x, *dt, *B, *C;
    const float *A, *D, *dt_bias, *initial_state;
    void* y;
    float* final_state;
    Dims d;
};

int validate(const Call& c) {
    int code = check_shape(c.d.batch, c.d.T, c.d.H, c.d.P, c.d.G, c.d.N);
    if (code != BMAMBA_SSD_OK)
        return fail(code, std::string(error_string(code)) + ": batch=" + std::to_string(c.d.batch) +
                              " T=" + std::to_string(c.d.T) + " H=" + std::to_string(c.d.H) +
                              " P=" + std::to_string(c.d.P) + " G=" + std::to_string(c.d.G) +
                              " N=" + std::to_string(c.d.N));
    if (c.dtype != BMAMBA_SSD_FLOAT32 && c.dtype != BMAMBA_SSD_FLOAT16)
        return fail(BMAMBA_SSD_ERR_UNSUPPORTED, "unknown dtype code " + std::to_string(c.dtype));
    const char* missing = "";
    code = check_pointers(c.d, c.x, c.dt, c.A, c.B, c.C, c.D, c.dt_bias, c.y, c.final_state, &missing);
    if (code != BMAMBA_SSD_OK) return fail(code, std::string("NULL pointer for ") + missing);
    return BMAMBA_SSD_OK;
}

// Launches a kernel and returns the launch's own status. (cudaGetLastError() after a <<<...>>>
// launch would also report, and clear, an error left on this thread by unrelated earlier work.)
// cudaLaunchKernel, not cudaLaunchKernelEx: the latter needs CUDA 11.8, JetPack 5 has 11.4.
template <typename Kernel>
cudaError_t launch_kernel(Kernel* kernel, dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
                          const Args& a) {
    void* args[] = {const_cast<Args*>(&a)};
    return cudaLaunchKernel(kernel, grid, block, args, shared_bytes, stream);
}

template <typename IO>
int launch(const Call& c, const Plan& plan, float* workspace, cudaStream_t stream) {
    const Dims& d = c.d;
    const size_t state_bytes = (size_t)(d.batch * d.H * d.P * d.N) * sizeof(float);
    if (d.batch == 0) return BMAMBA_SSD_OK;
    if (d.T == 0) {  // no steps: the final state is the initial one
        cudaError_t err = cudaSuccess;
        if (!c.initial_state)
            err = cudaMemsetAsync(c.final_state, 0, state_bytes, stream);
        else if (c.initial_state != c.final_state)
            err = cudaMemcpyAsync(c.final_state, c.initial_state, state_bytes,
                                  cudaMemcpyDeviceToDevice, stream);
        return err == cudaSuccess ? BMAMBA_SSD_OK : cuda_fail(err, "copying the state (T = 0)");
    }
    Args a{c.x, c.dt, c.B, c.C, c.A, c.D, c.dt_bias, c.initial_state, c.y, c.final_state, workspace,
           d, plan.lanes, plan.state_pad, plan.rows, plan.chunk, plan.segments, plan.segment_steps};
    const dim3 block(plan.threads);
    const dim3 grid(plan.p_tiles, (unsigned)d.H, (unsigned)(d.batch * plan.segments));
    cudaError_t err = cudaSuccess;
    if (plan.segments > 1) {
        err = launch_kernel(scan_kernel<IO, Pass::kLocal>, grid, block, plan.shared_bytes, stream, a);
        if (err != cudaSuccess) return cuda_fail(err, "launching the segment pass");
        const int64_t PN = d.P * d.N;
        const dim3 combine_grid((unsigned)(d.batch * d.H), (unsigned)((PN + 255) / 256));
        err = launch_kernel(combine_kernel, combine_grid, dim3(256), 0, stream, a);
        if (err != cudaSuccess) return cuda_fail(err, "launching the segment combine");
    }
    err = launch_kernel(scan_kernel<IO, Pass::kOutput>, grid, block, plan.shared_bytes, stream, a);
    if (err != cudaSuccess) return cuda_fail(err, "launching the scan");
    return BMAMBA_SSD_OK;
}

int dispatch(const Call& c, const Plan& plan, float* workspace, cudaStream_t stream) {
    if (c.dtype == BMAMBA_SSD_FLOAT16) return launch<__half>(c, plan, workspace, stream);
    return launch<float>(c, plan, workspace, stream);
}

// The automatic plan with a stream-ordered workspace of our own (one segment if none is had).
int run_owning_workspace(const Call& c, cudaStream_t stream) {
    g_last_error.clear();
    int code = validate(c);
    if (code != BMAMBA_SSD_OK) return code;
    Plan plan = block_plan(c.d);
    int sms = 0;
    code = sm_count(&sms);
    if (code != BMAMBA_SSD_OK) return code;
    int segments = c.d.batch > 0 && c.d.T > 0 ? auto_segments(c.d, sms) : 1;
    void* workspace = nullptr;
    if (segments > 1) {
        int device = 0, pools = 0;
        cudaGetDevice(&device);
        cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, device);
        cudaError_t err = cudaErrorNotSupported;
        if (pools) err = cudaMallocAsync(&workspace, workspace_bytes_for(c.d, segments), stream);
        if (err != cudaSuccess) {  // not sticky: fall back to one segment
            // Only our own failed allocation is cleared from the thread's last-error state.
            if (pools) (void)cudaGetLastError();
            workspace = nullptr;
            segments = 1;
        }
    }
    set_segments(plan, c.d, segments);
    code = dispatch(c, plan, static_cast<float*>(workspace), stream);
    if (workspace) {
        cudaError_t err = cudaFreeAsync(workspace, stream);
        if (err != cudaSuccess && code == BMAMBA_SSD_OK) code = cuda_fail(err, "cudaFreeAsync");
    }
    return code;
}

Call make_call(int dtype, const void* x, const void* dt, const float* A, const void* B, const void* C,
               const float* D, const float* dt_bias, const float* initial_state, void* y,
               float* final_state, int batch, int T, int H, int P, int G, int N) {
    Call c{};
    c.dtype = dtype;
    c.x = x, c.dt = dt, c.B = B, c.C = C, c.A = A, c.D = D, c.dt_bias = dt_bias;
    c.initial_state = initial_state, c.y = y, c.final_state = final_state;
    c.d = Dims{batch, T, H, P, G, N};
    return c;
}

#define BMAMBA_STR2(...) #__VA_ARGS__
#define BMAMBA_STR(...) BMAMBA_STR2(__VA_ARGS__)

}  // namespace
}  // namespace ssd
}  // namespace bmamba

using namespace bmamba::ssd;

extern "C" {

const char* bmamba_ssd_version(void) { return BMAMBA_SSD_OP_VERSION; }

const char* bmamba_ssd_build_info(void) {
#if defined(__CUDA_ARCH_LIST__)
    return "cuda " BMAMBA_STR(__CUDACC_VER_MAJOR__) "." BMAMBA_STR(__CUDACC_VER_MINOR__) "; archs " BMAMBA_STR(__CUDA_ARCH_LIST__);
#else
    return "cuda " BMAMBA_STR(__CUDACC_VER_MAJOR__) "." BMAMBA_STR(__CUDACC_VER_MINOR__);
#endif
}

const char* bmamba_ssd_error_string(int code) { return error_string(code); }

const char* bmamba_ssd_last_error(void) { return g_last_error.c_str(); }

int bmamba_ssd_device_sm_count(int* out) {
    g_last_error.clear();
    int sms = 0;
    const int code = sm_count(&sms);
    if (out) *out = code == BMAMBA_SSD_OK ? sms : 0;
    return code;
}

int bmamba_ssd_check_shape(int batch, int T, int H, int P, int G, int N) {
    return check_shape(batch, T, H, P, G, N);
}

int bmamba_ssd_scan_f32(const float* x, const float* dt, const float* A, const float* B, const float* C,
                        const float* D, const float* dt_bias, const float* initial_state, float* y,
                        float* final_state, int batch, int T, int H, int P, int G, int N,
                        bmamba_stream_t stream) {
    return run_owning_workspace(make_call(BMAMBA_SSD_FLOAT32, x, dt, A, B, C, D, dt_bias, initial_state,
                                          y, final_state, batch, T, H, P, G, N),
                                stream);
}

int bmamba_ssd_scan_f16(const uint16_t* x, const uint16_t* dt, const float* A, const uint16_t* B,
                        const uint16_t* C, const float* D, const float* dt_bias,
                        const float* initial_state, uint16_t* y, float* final_state, int batch, int T,
                        int H, int P, int G, int N, bmamba_stream_t stream) {
    return run_owning_workspace(make_call(BMAMBA_SSD_FLOAT16, x, dt, A, B, C, D, dt_bias, initial_state,
                                          y, final_state, batch, T, H, P, G, N),
                                stream);
}

int bmamba_ssd_step_f32(const float* x, const float* dt, const float* A, const float* B, const float* C,
                        const float* D, const float* dt_bias, const float* state, float* y,
                        float* new_state, int batch, int H, int P, int G, int N, bmamba_stream_t stream) {
    return bmamba_ssd_scan_f32(x, dt, A, B, C, D, dt_bias, state, y, new_state, batch, 1, H, P, G, N,
                               stream);
}

int bmamba_ssd_step_f16(const uint16_t* x, const uint16_t* dt, const float* A, const uint16_t* B,
                        const uint16_t* C, const float* D, const float* dt_bias, const float* state,
                        uint16_t* y, float* new_state, int batch, int H, int P, int G, int N,
                        bmamba_stream_t stream) {
    return bmamba_ssd_scan_f16(x, dt, A, B, C, D, dt_bias, state, y, new_state, batch, 1, H, P, G, N,
                               stream);
}

size_t bmamba_ssd_workspace_size(int batch, int T, int H, int P, int G, int N, int n_segments) {
    if (check_shape(batch, T, H, P, G, N) != BMAMBA_SSD_OK) return 0;
    Dims d{batch, T, H, P, G, N};
    int segments = n_segments;
    if (segments <= 0) segments = bmamba_ssd_plan_segments(batch, T, H, P, G, N, 0);
    return workspace_bytes_for(d, segments);
}

int bmamba_ssd_plan_segments(int batch, int T, int H, int P, int G, int N, int sms) {
    if (check_shape(batch, T, H, P, G, N) != BMAMBA_SSD_OK) return 1;
    if (sms <= 0 && sm_count(&sms) != BMAMBA_SSD_OK) return 1;
    return auto_segments(Dims{batch, T, H, P, G, N}, sms);
}

int bmamba_ssd_scan_ex(int dtype, const void* x, const void* dt, const float* A, const void* B,
                       const void* C, const float* D, const float* dt_bias, const float* initial_state,
                       void* y, float* final_state, int batch, int T, int H, int P, int G, int N,
                       void* workspace, size_t workspace_bytes, int n_segments, bmamba_stream_t stream) {
    g_last_error.clear();
    const Call c = make_call(dtype, x, dt, A, B, C, D, dt_bias, initial_state, y, final_state, batch, T,
                             H, P, G, N);
    int code = validate(c);
    if (code != BMAMBA_SSD_OK) return code;
    Plan plan = block_plan(c.d);
    int segments = 1;
    if (n_segments > 0) {
        segments = n_segments;
        if ((int64_t)batch * segments > 65535)
            return fail(BMAMBA_SSD_ERR_UNSUPPORTED, "batch * n_segments exceeds 65535");
        const size_t need = workspace_bytes_for(c.d, segments);
        if (need > 0 && (workspace == nullptr || workspace_bytes < need))
            return fail(BMAMBA_SSD_ERR_WORKSPACE, "n_segments=" + std::to_string(segments) + " needs " +
                                                      std::to_string(need) + " workspace bytes, got " +
                                                      std::to_string(workspace ? workspace_bytes : 0));
    } else if (workspace != nullptr && batch > 0 && T > 0) {
        int sms = 0;
        code = sm_count(&sms);
        if (code != BMAMBA_SSD_OK) return code;
        segments = fit_segments(c.d, auto_segments(c.d, sms), workspace_bytes);
    }
    set_segments(plan, c.d, segments);
    return dispatch(c, plan, static_cast<float*>(workspace), stream);
}

}  // extern "C"
