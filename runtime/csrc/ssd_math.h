// The per-element math, the index arithmetic and the work plan of the SSD scan, shared by the CUDA
// kernels (ssd_scan.cu) and their CPU twin (ssd_scan_cpu.cpp), so that the twin checks on any CPU,
// against biomamba/ssd.py, exactly the formulas and the indexing the GPU runs.
//
// C++17, header-only, no CUDA header needed: under nvcc every function is __host__ __device__.
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ssd_scan.h"

#if defined(__CUDACC__)
#define BMAMBA_HD __host__ __device__ __forceinline__
#else
#define BMAMBA_HD inline
#endif

namespace bmamba {
namespace ssd {

// ---- work decomposition constants (see ssd_scan.cu for the design) ----------------------------

// State elements s[p][n] each thread keeps in registers: two float4 groups of one row.
constexpr int kStatePerThread = 8;
// Largest thread block.
constexpr int kMaxThreads = 256;
// Shared memory a block may use for its staged time steps (under the 48 KiB default).
constexpr size_t kSharedBudget = 44 * 1024;
// Time steps staged in shared memory at once, at most.
constexpr int kMaxChunk = 32;
// A time segment is worth its second pass only when it is this long.
constexpr int64_t kMinSegmentSteps = 512;
// Upper bound on segments per (batch, head).
constexpr int kMaxSegments = 256;
// Blocks per SM the automatic plan aims for before it splits time into segments.
constexpr int kTargetBlocksPerSM = 4;
// The SM count the CPU twin's automatic plan pretends to have (an H100 SXM).
constexpr int kTwinSmCount = 132;

// ---- sizes and index arithmetic (int64: batch * T * H * P passes 2^31 at long T) --------------

struct Dims {
    int64_t batch, T, H, P, G, N;
};

// x, y [batch, T, H, P]
BMAMBA_HD int64_t x_index(const Dims& d, int64_t b, int64_t t, int64_t h, int64_t p) {
    return ((b * d.T + t) * d.H + h) * d.P + p;
}
// dt [batch, T, H]
BMAMBA_HD int64_t dt_index(const Dims& d, int64_t b, int64_t t, int64_t h) {
    return (b * d.T + t) * d.H + h;
}
// B, C [batch, T, G, N]
BMAMBA_HD int64_t bc_index(const Dims& d, int64_t b, int64_t t, int64_t g, int64_t n) {
    return ((b * d.T + t) * d.G + g) * d.N + n;
}
// initial_state, final_state [batch, H, P, N]
BMAMBA_HD int64_t state_index(const Dims& d, int64_t b, int64_t h, int64_t p, int64_t n) {
    return ((b * d.H + h) * d.P + p) * d.N + n;
}
// Head h reads group h / (H / G) of B and C (mamba-ssm's layout; biomamba.ssd.expand_groups).
BMAMBA_HD int64_t group_of_head(const Dims& d, int64_t h) { return h / (d.H / d.G); }

// Workspace of the segmented scan: per (b, h), S state slots [S][P][N] (slot s = the state
// entering segment s), then per (b, h) S decays (product of exp(dt*A) over segment s).
BMAMBA_HD int64_t ws_state_index(const Dims& d, int64_t S, int64_t b, int64_t h, int64_t s) {
    return ((b * d.H + h) * S + s) * d.P * d.N;
}
BMAMBA_HD int64_t ws_decay_offset(const Dims& d, int64_t S) {
    int64_t states = d.batch * d.H * S * d.P * d.N;
    return (states + 63) / 64 * 64;  // 256-byte aligned
}
BMAMBA_HD int64_t ws_decay_index(const Dims& d, int64_t S, int64_t b, int64_t h, int64_t s) {
    return ws_decay_offset(d, S) + (b * d.H + h) * S + s;
}

// ---- per-element math ----------------------------------------------------------------------------

// torch.nn.functional.softplus (beta 1, threshold 20).
BMAMBA_HD float softplus(float v) { return v > 20.0f ? v : log1pf(expf(v)); }

// Step size dt = softplus(dt_raw + dt_bias) and per-step decay exp(dt * A) (A < 0).
BMAMBA_HD float step_size(float dt_raw, float dt_bias) { return softplus(dt_raw + dt_bias); }
BMAMBA_HD float step_decay(float dt, float a) { return expf(dt * a); }

// s <- decay * s + (dt * x) * B, one state element; fmaf so host and device round alike.
BMAMBA_HD float state_update(float s, float decay, float dt_x, float b) {
    return fmaf(decay, s, dt_x * b);
}
// Partial output sum: acc + s * C.
BMAMBA_HD float output_accumulate(float acc, float s, float c) { return fmaf(s, c, acc); }
// y = (sum over n of s * C) + D * x.
BMAMBA_HD float output_value(float state_dot_c, float d, float x) { return fmaf(d, x, state_dot_c); }
// State entering the next segment: decay_of_segment * entering + local (the segment's own input).
BMAMBA_HD float segment_combine(float segment_decay, float entering, float local) {
    return fmaf(segment_decay, entering, local);
}

// Which n a thread owns: lane `lane` of the `lanes` threads sharing a row holds, for
// j = 0 .. kStatePerThread-1, the element n = 4 * (lane + lanes * (j / 4)) + j % 4. Groups of four
// consecutive n (one float4) interleaved across lanes: conflict-free 128-bit shared-memory loads.
BMAMBA_HD int owned_n(int lane, int lanes, int j) { return 4 * (lane + lanes * (j / 4)) + (j % 4); }

// ---- IEEE half <-> float (the twin's f16 I/O; the GPU uses cuda_fp16's intrinsics, same rounding)

inline float half_bits_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    uint32_t bits;
    if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
        float v = ldexpf((float)mantissa, -24);
        memcpy(&bits, &v, 4);
        bits |= sign;
    } else if (exponent == 31) {  // inf or nan
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else {
        bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    }
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

// Round to nearest, ties to even (what __float2half does).
inline uint16_t float_to_half_bits(float f) {
    uint32_t bits;
    memcpy(&bits, &f, 4);
    uint16_t sign = (uint16_t)((bits >> 16) & 0x8000u);
    uint32_t magnitude = bits & 0x7fffffffu;
    if (magnitude >= 0x7f800000u)  // inf stays inf, nan stays a (quiet) nan
        return (uint16_t)(sign | 0x7c00u | (magnitude > 0x7f800000u ? 0x200u | ((magnitude >> 13) & 0x3ffu) : 0u));
    if (magnitude >= 0x477ff000u)  // >= 65520 rounds to infinity
        return (uint16_t)(sign | 0x7c00u);
    if (magnitude < 0x38800000u) {  // below 2^-14: a subnormal half, in units of 2^-24
        float scaled;
        memcpy(&scaled, &magnitude, 4);
        return (uint16_t)(sign | (uint16_t)nearbyintf(ldexpf(scaled, 24)));
    }
    uint32_t rounded = magnitude + 0xfffu + ((magnitude >> 13) & 1u);
    return (uint16_t)(sign | ((rounded - 0x38000000u) >> 13));
}

// ---- shape checks and the work plan -------------------------------------------------------------

inline int check_shape(int64_t batch, int64_t T, int64_t H, int64_t P, int64_t G, int64_t N) {
    if (batch < 0 || T < 0 || H < 1 || P < 1 || G < 1 || N < 1) return BMAMBA_SSD_ERR_BAD_SHAPE;
    if (H % G != 0) return BMAMBA_SSD_ERR_BAD_SHAPE;
    if (P > BMAMBA_SSD_MAX_HEADDIM || N > BMAMBA_SSD_MAX_STATE) return BMAMBA_SSD_ERR_UNSUPPORTED;
    if (H > 65535 || batch > 65535) return BMAMBA_SSD_ERR_UNSUPPORTED;
    return BMAMBA_SSD_OK;
}

// The pointers one call needs: none when batch is 0; final_state alone when T is 0; else every
// tensor but the optional initial_state.
inline int check_pointers(const Dims& d, const void* x, const void* dt, const void* A, const void* B,
                          const void* C, const void* D, const void* dt_bias, const void* y,
                          const void* final_state, const char** missing) {
    if (d.batch == 0) return BMAMBA_SSD_OK;
    const void* ptrs[] = {final_state, x, dt, A, B, C, D, dt_bias, y};
    const char* names[] = {"final_state", "x", "dt", "A", "B", "C", "D", "dt_bias", "y"};
    int needed = d.T == 0 ? 1 : 9;
    for (int i = 0; i < needed; ++i) {
        if (ptrs[i] == nullptr) {
            *missing = names[i];
            return BMAMBA_SSD_ERR_NULL_POINTER;
        }
    }
    return BMAMBA_SSD_OK;
}

inline const char* error_string(int code) {
    switch (code) {
        case BMAMBA_SSD_OK: return "ok";
        case BMAMBA_SSD_ERR_NULL_POINTER: return "a required tensor pointer is NULL";
        case BMAMBA_SSD_ERR_BAD_SHAPE: return "bad sizes (negative or zero sizes, or G does not divide H)";
        case BMAMBA_SSD_ERR_UNSUPPORTED:
            return "unsupported sizes or dtype (P and N at most 256, H and batch at most 65535, dtype f32/f16)";
        case BMAMBA_SSD_ERR_CUDA: return "a CUDA call failed";
        case BMAMBA_SSD_ERR_WORKSPACE: return "workspace too small for the forced segment count";
        default: return "unknown bmamba_ssd error code";
    }
}

struct Plan {
    int lanes;        // threads sharing one state row s[p][:] (a power of two <= 32)
    int state_pad;    // row length in shared memory, lanes * kStatePerThread >= N (zero padded)
    int rows;         // state rows (values of p) per block
    int threads;      // rows * lanes, a multiple of 32
    int p_tiles;      // blocks along P: ceil(P / rows)
    int chunk;        // time steps staged in shared memory at once
    int segments;     // time segments per (batch, head)
    int64_t segment_steps;  // ceil(T / segments)
    size_t shared_bytes;    // dynamic shared memory per block
    size_t workspace_bytes; // 0 for one segment
};

inline int next_pow2(int v) {
    int p = 1;
    while (p < v) p <<= 1;
    return p;
}

inline size_t shared_bytes_for(int chunk, int state_pad, int rows) {
    // B and C rows, x and y per row, dt and decay per step.
    return sizeof(float) * (size_t)chunk * (2 * (size_t)state_pad + 2 * (size_t)rows + 2);
}

inline size_t workspace_bytes_for(const Dims& d, int segments) {
    if (segments <= 1) return 0;
    int64_t floats = ws_decay_offset(d, segments) + d.batch * d.H * segments;
    return (size_t)floats * sizeof(float);
}

// The thread-block geometry for these sizes; segments left at 1.
inline Plan block_plan(const Dims& d) {
    Plan p{};
    int per_row = (int)((d.N + kStatePerThread - 1) / kStatePerThread);
    p.lanes = next_pow2(per_row);
    p.state_pad = p.lanes * kStatePerThread;
    int rows = kMaxThreads / p.lanes;
    if (d.P < rows) rows = (int)d.P;
    p.threads = (rows * p.lanes + 31) / 32 * 32;  // whole warps: shuffles need every lane
    p.rows = p.threads / p.lanes;
    p.p_tiles = (int)((d.P + p.rows - 1) / p.rows);
    p.chunk = kMaxChunk;
    while (p.chunk > 1 && shared_bytes_for(p.chunk, p.state_pad, p.rows) > kSharedBudget) p.chunk /= 2;
    p.shared_bytes = shared_bytes_for(p.chunk, p.state_pad, p.rows);
    p.segments = 1;
    p.segment_steps = d.T;
    p.workspace_bytes = 0;
    return p;
}

inline void set_segments(Plan& p, const Dims& d, int segments) {
    if (segments < 1) segments = 1;
    p.segments = segments;
    p.segment_steps = (d.T + segments - 1) / segments;
    p.workspace_bytes = workspace_bytes_for(d, segments);
}

// Segments the automatic plan picks: one, unless the (batch, head, P-tile) blocks alone leave the
// GPU short of kTargetBlocksPerSM blocks per SM and T is long enough to split into segments of at
// least kMinSegmentSteps steps.
inline int auto_segments(const Dims& d, int sm_count) {
    Plan p = block_plan(d);
    int64_t blocks = d.batch * d.H * p.p_tiles;
    int64_t target = (int64_t)kTargetBlocksPerSM * (sm_count > 0 ? sm_count : 1);
    if (blocks == 0 || blocks >= target) return 1;
    int64_t want = (target + blocks - 1) / blocks;
    int64_t by_length = d.T / kMinSegmentSteps;
    int64_t by_grid = d.batch > 0 ? 65535 / d.batch : 1;
    int64_t s = want;
    if (s > by_length) s = by_length;
    if (s > kMaxSegments) s = kMaxSegments;
    if (s > by_grid) s = by_grid;
    return s < 1 ? 1 : (int)s;
}

// The largest automatic segment count whose workspace fits in `workspace_bytes`.
inline int fit_segments(const Dims& d, int wanted, size_t workspace_bytes) {
    int s = wanted;
    while (s > 1 && workspace_bytes_for(d, s) > workspace_bytes) s = s / 2;
    return s < 1 ? 1 : s;
}

// Segment s covers time steps [t0, t1) (possibly empty when forced to many segments).
BMAMBA_HD void segment_bounds(int64_t T, int64_t segment_steps, int64_t s, int64_t* t0, int64_t* t1) {
    int64_t begin = s * segment_steps;
    int64_t end = begin + segment_steps;
    *t0 = begin < T ? begin : T;
    *t1 = end < T ? end : T;
}

}  // namespace ssd
}  // namespace bmamba
