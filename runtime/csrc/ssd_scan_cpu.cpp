// The CPU twin of ssd_scan.cu: a test device, not a product path.
//
// It replays the GPU decomposition step by step with plain loops (P-tiles of `rows` rows, `lanes`
// threads per row each owning kStatePerThread elements, time staged `chunk` steps at a time into
// zero-padded "shared" buffers, the xor-shuffle reduction order, the three-pass time segments)
// and calls the same ssd_math.h functions for every formula and index, so that comparing it with
// biomamba/ssd.py on a CPU checks the math and the indexing the kernels run. Built as
// libbmamba_ssd_cpu.so with the C interface of ssd_scan.h, each name suffixed `_cpu`, no stream
// argument; host pointers. float16 I/O is IEEE half bits, rounded like __float2half_rn.

#include <stdint.h>

#include <string>
#include <vector>

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

struct F32 {
    using T = float;
    static float load(const float* p) { return *p; }
    static float store(float v) { return v; }
};
struct F16 {
    using T = uint16_t;
    static float load(const uint16_t* p) { return half_bits_to_float(*p); }
    static uint16_t store(float v) { return float_to_half_bits(v); }
};

enum class Pass { kLocal, kOutput };

struct Call {
    const void *x, *dt, *B, *C;
    const float *A, *D, *dt_bias, *initial_state;
    void* y;
    float* final_state;
    float* workspace;
    Dims d;
};

// What one thread block of scan_kernel<IO, pass> computes, for block (p_tile, h, b, s).
template <typename IO, Pass kPass>
void run_block(const Call& c, const Plan& plan, int64_t p_tile, int64_t h, int64_t b, int64_t s) {
    using T = typename IO::T;
    constexpr bool kWritesY = kPass == Pass::kOutput;
    const Dims& d = c.d;
    const int L = plan.lanes, NP = plan.state_pad, R = plan.rows, K = plan.chunk, S = plan.segments;
    if (kPass == Pass::kLocal && s == S - 1) return;
    const int64_t p0 = p_tile * R;
    const int64_t g = group_of_head(d, h);
    int64_t t0, t1;
    segment_bounds(d.T, plan.segment_steps, s, &t0, &t1);

    std::vector<float> sB((size_t)K * NP), sC((size_t)K * NP), sX((size_t)K * R), sY((size_t)K * R);
    std::vector<float> sDt(K), sDecay(K);

    const float* start = nullptr;
    if (kPass == Pass::kLocal) {
        if (s == 0 && c.initial_state) start = c.initial_state + state_index(d, b, h, 0, 0);
    } else if (S == 1) {
        if (c.initial_state) start = c.initial_state + state_index(d, b, h, 0, 0);
    } else {
        start = c.workspace + ws_state_index(d, S, b, h, s);
    }
    // st[(row * L + lane) * kStatePerThread + j]: the registers of thread (row, lane).
    std::vector<float> st((size_t)R * L * kStatePerThread);
    for (int row = 0; row < R; ++row)
        for (int lane = 0; lane < L; ++lane)
            for (int j = 0; j < kStatePerThread; ++j) {
                const int64_t p = p0 + row;
                const int n = owned_n(lane, L, j);
                st[((size_t)row * L + lane) * kStatePerThread + j] =
                    (start && p < d.P && n < d.N) ? start[p * d.N + n] : 0.0f;
            }

    const T* x = static_cast<const T*>(c.x);
    const T* dt = static_cast<const T*>(c.dt);
    const T* Bm = static_cast<const T*>(c.B);
    const T* Cm = static_cast<const T*>(c.C);
    T* y = static_cast<T*>(c.y);
    const float A_h = c.A[h], D_h = c.D[h], bias_h = c.dt_bias[h];
    float decay_total = 1.0f;
    std::vector<float> acc(L);

    for (int64_t tc = t0; tc < t1; tc += K) {
        const int steps = (int)((t1 - tc) < K ? (t1 - tc) : K);
        for (int i = 0; i < steps * NP; ++i) {
            const int k = i / NP, n = i - k * NP;
            float bv = 0.0f, cv = 0.0f;
            if (n < d.N) {
                const int64_t idx = bc_index(d, b, tc + k, g, n);
                bv = IO::load(Bm + idx);
                if (kWritesY) cv = IO::load(Cm + idx);
            }
            sB[i] = bv;
            sC[i] = cv;
        }
        for (int i = 0; i < steps * R; ++i) {
            const int k = i / R, r = i - k * R;
            const int64_t pp = p0 + r;
            sX[i] = pp < d.P ? IO::load(x + x_index(d, b, tc + k, h, pp)) : 0.0f;
        }
        for (int k = 0; k < steps; ++k) {
            const float dtv = step_size(IO::load(dt + dt_index(d, b, tc + k, h)), bias_h);
            sDt[k] = dtv;
            sDecay[k] = step_decay(dtv, A_h);
        }

        for (int k = 0; k < steps; ++k) {
            const float decay = sDecay[k];
            for (int row = 0; row < R; ++row) {
                const float dt_x = sDt[k] * sX[k * R + row];
                for (int lane = 0; lane < L; ++lane) {
                    float* regs = &st[((size_t)row * L + lane) * kStatePerThread];
                    for (int j = 0; j < kStatePerThread; ++j)
                        regs[j] = state_update(regs[j], decay, dt_x, sB[k * NP + owned_n(lane, L, j)]);
                    if (kWritesY) {
                        float a = 0.0f;
                        for (int j = 0; j < kStatePerThread; ++j)
                            a = output_accumulate(a, regs[j], sC[k * NP + owned_n(lane, L, j)]);
                        acc[lane] = a;
                    }
                }
                if (kWritesY) {
                    // __shfl_xor_sync butterfly: every lane adds its partner's value, offsets L/2 .. 1.
                    for (int offset = L >> 1; offset > 0; offset >>= 1) {
                        std::vector<float> prev(acc);
                        for (int lane = 0; lane < L; ++lane) acc[lane] = prev[lane] + prev[lane ^ offset];
                    }
                    sY[k * R + row] = acc[0];
                }
            }
        }
        if (kPass == Pass::kLocal)
            for (int k = 0; k < steps; ++k) decay_total *= sDecay[k];

        if (kWritesY) {
            for (int i = 0; i < steps * R; ++i) {
                const int k = i / R, r = i - k * R;
                const int64_t pp = p0 + r;
                if (pp < d.P) y[x_index(d, b, tc + k, h, pp)] = IO::store(output_value(sY[i], D_h, sX[i]));
            }
        }
    }

    float* dst = nullptr;
    if (kPass == Pass::kLocal)
        dst = c.workspace + ws_state_index(d, S, b, h, s + 1);
    else if (s == S - 1)
        dst = c.final_state + state_index(d, b, h, 0, 0);
    if (dst) {
        for (int row = 0; row < R; ++row)
            for (int lane = 0; lane < L; ++lane)
                for (int j = 0; j < kStatePerThread; ++j) {
                    const int64_t p = p0 + row;
                    const int n = owned_n(lane, L, j);
                    if (p < d.P && n < d.N) dst[p * d.N + n] = st[((size_t)row * L + lane) * kStatePerThread + j];
                }
    }
    if (kPass == Pass::kLocal && p_tile == 0) c.workspace[ws_decay_index(d, S, b, h, s)] = decay_total;
}

template <typename IO, Pass kPass>
void run_grid(const Call& c, const Plan& plan) {
    // Blocks run in an arbitrary order on a GPU; here the segment index varies fastest on purpose,
    // so that a block reading what another one of the same launch writes would show up in tests.
    for (int64_t p_tile = 0; p_tile < plan.p_tiles; ++p_tile)
        for (int64_t h = 0; h < c.d.H; ++h)
            for (int64_t b = 0; b < c.d.batch; ++b)
                for (int64_t s = plan.segments - 1; s >= 0; --s) run_block<IO, kPass>(c, plan, p_tile, h, b, s);
}

void combine(const Call& c, const Plan& plan) {
    const Dims& d = c.d;
    const int S = plan.segments;
    const int64_t PN = d.P * d.N;
    for (int64_t b = 0; b < d.batch; ++b)
        for (int64_t h = 0; h < d.H; ++h) {
            float* slots = c.workspace + ws_state_index(d, S, b, h, 0);
            for (int64_t e = 0; e < PN; ++e) {
                slots[e] = c.initial_state ? c.initial_state[state_index(d, b, h, 0, 0) + e] : 0.0f;
                float entering = slots[PN + e];
                for (int s = 2; s < S; ++s) {
                    entering = segment_combine(c.workspace[ws_decay_index(d, S, b, h, s - 1)], entering,
                                               slots[s * PN + e]);
                    slots[s * PN + e] = entering;
                }
            }
        }
}

template <typename IO>
int run(int dtype, const void* x, const void* dt, const float* A, const void* B, const void* C,
        const float* D, const float* dt_bias, const float* initial_state, void* y, float* final_state,
        int batch, int T, int H, int P, int G, int N, int n_segments) {
    g_last_error.clear();
    (void)dtype;
    const Dims d{batch, T, H, P, G, N};
    int code = check_shape(batch, T, H, P, G, N);
    if (code != BMAMBA_SSD_OK)
        return fail(code, std::string(error_string(code)) + ": batch=" + std::to_string(batch) + " T=" +
                              std::to_string(T) + " H=" + std::to_string(H) + " P=" + std::to_string(P) +
                              " G=" + std::to_string(G) + " N=" + std::to_string(N));
    const char* missing = "";
    code = check_pointers(d, x, dt, A, B, C, D, dt_bias, y, final_state, &missing);
    if (code != BMAMBA_SSD_OK) return fail(code, std::string("NULL pointer for ") + missing);
    if (batch == 0) return BMAMBA_SSD_OK;
    const int64_t state_elems = d.batch * d.H * d.P * d.N;
    if (T == 0) {
        if (initial_state != final_state)
            for (int64_t i = 0; i < state_elems; ++i) final_state[i] = initial_state ? initial_state[i] : 0.0f;
        return BMAMBA_SSD_OK;
    }
    Plan plan = block_plan(d);
    int segments = n_segments > 0 ? n_segments : auto_segments(d, kTwinSmCount);
    if ((int64_t)batch * segments > 65535)
        return fail(BMAMBA_SSD_ERR_UNSUPPORTED, "batch * n_segments exceeds 65535");
    set_segments(plan, d, segments);
    std::vector<float> workspace(plan.workspace_bytes / sizeof(float));
    Call c{x, dt, B, C, A, D, dt_bias, initial_state, y, final_state, workspace.data(), d};
    if (plan.segments > 1) {
        run_grid<IO, Pass::kLocal>(c, plan);
        combine(c, plan);
    }
    run_grid<IO, Pass::kOutput>(c, plan);
    return BMAMBA_SSD_OK;
}

}  // namespace
}  // namespace ssd
}  // namespace bmamba

using namespace bmamba::ssd;

extern "C" {

BMAMBA_SSD_API const char* bmamba_ssd_version_cpu(void) { return BMAMBA_SSD_OP_VERSION; }

BMAMBA_SSD_API const char* bmamba_ssd_build_info_cpu(void) { return "cpu twin (" __VERSION__ ")"; }

BMAMBA_SSD_API const char* bmamba_ssd_error_string_cpu(int code) { return error_string(code); }

BMAMBA_SSD_API const char* bmamba_ssd_last_error_cpu(void) { return g_last_error.c_str(); }

BMAMBA_SSD_API int bmamba_ssd_check_shape_cpu(int batch, int T, int H, int P, int G, int N) {
    return check_shape(batch, T, H, P, G, N);
}

BMAMBA_SSD_API int bmamba_ssd_scan_f32_cpu(const float* x, const float* dt, const float* A, const float* B,
                                           const float* C, const float* D, const float* dt_bias,
                                           const float* initial_state, float* y, float* final_state,
                                           int batch, int T, int H, int P, int G, int N) {
    return run<F32>(BMAMBA_SSD_FLOAT32, x, dt, A, B, C, D, dt_bias, initial_state, y, final_state, batch, T,
                    H, P, G, N, 0);
}

BMAMBA_SSD_API int bmamba_ssd_scan_f16_cpu(const uint16_t* x, const uint16_t* dt, const float* A,
                                           const uint16_t* B, const uint16_t* C, const float* D,
                                           const float* dt_bias, const float* initial_state, uint16_t* y,
                                           float* final_state, int batch, int T, int H, int P, int G, int N) {
    return run<F16>(BMAMBA_SSD_FLOAT16, x, dt, A, B, C, D, dt_bias, initial_state, y, final_state, batch, T,
                    H, P, G, N, 0);
}

BMAMBA_SSD_API int bmamba_ssd_step_f32_cpu(const float* x, const float* dt, const float* A, const float* B,
                                           const float* C, const float* D, const float* dt_bias,
                                           const float* state, float* y, float* new_state, int batch, int H,
                                           int P, int G, int N) {
    return bmamba_ssd_scan_f32_cpu(x, dt, A, B, C, D, dt_bias, state, y, new_state, batch, 1, H, P, G, N);
}

BMAMBA_SSD_API int bmamba_ssd_step_f16_cpu(const uint16_t* x, const uint16_t* dt, const float* A,
                                           const uint16_t* B, const uint16_t* C, const float* D,
                                           const float* dt_bias, const float* state, uint16_t* y,
                                           float* new_state, int batch, int H, int P, int G, int N) {
    return bmamba_ssd_scan_f16_cpu(x, dt, A, B, C, D, dt_bias, state, y, new_state, batch, 1, H, P, G, N);
}

BMAMBA_SSD_API size_t bmamba_ssd_workspace_size_cpu(int batch, int T, int H, int P, int G, int N,
                                                    int n_segments) {
    if (check_shape(batch, T, H, P, G, N) != BMAMBA_SSD_OK) return 0;
    const Dims d{batch, T, H, P, G, N};
    return workspace_bytes_for(d, n_segments > 0 ? n_segments : auto_segments(d, kTwinSmCount));
}

// sm_count <= 0: kTwinSmCount.
BMAMBA_SSD_API int bmamba_ssd_plan_segments_cpu(int batch, int T, int H, int P, int G, int N, int sm_count) {
    if (check_shape(batch, T, H, P, G, N) != BMAMBA_SSD_OK) return 1;
    return auto_segments(Dims{batch, T, H, P, G, N}, sm_count > 0 ? sm_count : kTwinSmCount);
}

// As bmamba_ssd_scan_ex, with the workspace allocated inside; n_segments 0 = the automatic plan
// for a GPU of kTwinSmCount SMs.
BMAMBA_SSD_API int bmamba_ssd_scan_ex_cpu(int dtype, const void* x, const void* dt, const float* A,
                                          const void* B, const void* C, const float* D, const float* dt_bias,
                                          const float* initial_state, void* y, float* final_state, int batch,
                                          int T, int H, int P, int G, int N, int n_segments) {
    if (dtype == BMAMBA_SSD_FLOAT32)
        return run<F32>(dtype, x, dt, A, B, C, D, dt_bias, initial_state, y, final_state, batch, T, H, P, G,
                        N, n_segments);
    if (dtype == BMAMBA_SSD_FLOAT16)
        return run<F16>(dtype, x, dt, A, B, C, D, dt_bias, initial_state, y, final_state, batch, T, H, P, G,
                        N, n_segments);
    return fail(BMAMBA_SSD_ERR_UNSUPPORTED, "unknown dtype code " + std::to_string(dtype));
}

}  // extern "C"
