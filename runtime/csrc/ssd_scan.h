/*
 * bmamba SSD scan: the plain C interface of the CUDA kernels for the op bmamba::SSDChunkScan v1.
 *
 * The op (DESIGN.md, "ONNX and TensorRT"; Python reference: biomamba/ssd.py), per batch b and head h,
 * with group g = h / (H / G):
 *
 *     dt_t   = softplus(dt_raw_t + dt_bias[h])            torch's softplus: v > 20 ? v : log1p(exp(v))
 *     s_t    = exp(dt_t * A[h]) * s_{t-1} + dt_t * x_t[p] * B_t[g][n]          state s [P, N]
 *     y_t[p] = sum_n s_t[p][n] * C_t[g][n] + D[h] * x_t[p]
 *
 * Tensors are contiguous, row-major, on the GPU:
 *
 *     x [batch, T, H, P]   dt [batch, T, H] (raw)   B, C [batch, T, G, N]       I/O dtype
 *     y [batch, T, H, P]                                                        I/O dtype
 *     A, D, dt_bias [H]    initial_state, final_state [batch, H, P, N]          always float32
 *
 * The I/O dtype is float32 (`_f32`) or float16 (`_f16`, IEEE half passed as uint16_t bits); the
 * arithmetic and the state are float32 in both. initial_state may be NULL (zeros), and may be the
 * same buffer as final_state (in-place streaming). Every element of y and final_state is written.
 * The single step (`bmamba_ssd_step_*`) is the scan with T = 1 and the time axis dropped.
 *
 * Limits: 1 <= P <= 256 and 1 <= N <= 256 (BMAMBA_SSD_ERR_UNSUPPORTED otherwise), G divides H,
 * H <= 65535 and batch <= 65535 (CUDA grid limits), batch >= 0 and T >= 0. Every function
 * returns a code (BMAMBA_SSD_OK = 0) and never aborts; bmamba_ssd_error_string() names the code and
 * bmamba_ssd_last_error() gives the detail of the last failure on the calling thread.
 *
 * Launches are asynchronous on `stream` (a cudaStream_t; NULL is the legacy default stream).
 * Nothing here depends on TensorRT or on C++; the header needs no CUDA header either.
 */
#ifndef BMAMBA_SSD_SCAN_H
#define BMAMBA_SSD_SCAN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define BMAMBA_SSD_API __declspec(dllexport)
#else
#define BMAMBA_SSD_API __attribute__((visibility("default")))
#endif

/* The op version this library implements (plugin_version of the ONNX node). */
#define BMAMBA_SSD_OP_VERSION "1"
#define BMAMBA_SSD_MAX_HEADDIM 256
#define BMAMBA_SSD_MAX_STATE 256

/* Return codes. */
#define BMAMBA_SSD_OK 0
#define BMAMBA_SSD_ERR_NULL_POINTER 1  /* a required tensor pointer is NULL */
#define BMAMBA_SSD_ERR_BAD_SHAPE 2     /* negative or zero sizes, G does not divide H */
#define BMAMBA_SSD_ERR_UNSUPPORTED 3   /* P or N above 256, grid limits, unknown dtype */
#define BMAMBA_SSD_ERR_CUDA 4          /* a CUDA call or kernel launch failed (see last_error) */
#define BMAMBA_SSD_ERR_WORKSPACE 5     /* n_segments > 1 forced with too small a workspace */

/* I/O dtypes for bmamba_ssd_scan_ex. */
#define BMAMBA_SSD_FLOAT32 0
#define BMAMBA_SSD_FLOAT16 1

/* Same type as cudaStream_t (typedef struct CUstream_st* cudaStream_t), without the CUDA header. */
typedef struct CUstream_st* bmamba_stream_t;

/* "1": the op version. */
BMAMBA_SSD_API const char* bmamba_ssd_version(void);
/* What the library was built with, e.g. "cuda 13.0; archs 80,90". */
BMAMBA_SSD_API const char* bmamba_ssd_build_info(void);
/* A static description of a return code. */
BMAMBA_SSD_API const char* bmamba_ssd_error_string(int code);
/* Detail of the last failure on this thread ("" if none). */
BMAMBA_SSD_API const char* bmamba_ssd_last_error(void);
/* The SM count of the current CUDA device: BMAMBA_SSD_OK, or BMAMBA_SSD_ERR_CUDA with the reason
 * (no device, no driver) in bmamba_ssd_last_error(). */
BMAMBA_SSD_API int bmamba_ssd_device_sm_count(int* sm_count);
/* Checks sizes only: BMAMBA_SSD_OK, _BAD_SHAPE or _UNSUPPORTED. */
BMAMBA_SSD_API int bmamba_ssd_check_shape(int batch, int T, int H, int P, int G, int N);

/* The chunk scan, float32 I/O. */
BMAMBA_SSD_API int bmamba_ssd_scan_f32(const float* x, const float* dt, const float* A,
                                       const float* B, const float* C, const float* D,
                                       const float* dt_bias, const float* initial_state,
                                       float* y, float* final_state, int batch, int T, int H,
                                       int P, int G, int N, bmamba_stream_t stream);

/* The chunk scan, float16 I/O (x, dt, B, C, y are IEEE half bits; the rest float32). */
BMAMBA_SSD_API int bmamba_ssd_scan_f16(const uint16_t* x, const uint16_t* dt, const float* A,
                                       const uint16_t* B, const uint16_t* C, const float* D,
                                       const float* dt_bias, const float* initial_state,
                                       uint16_t* y, float* final_state, int batch, int T, int H,
                                       int P, int G, int N, bmamba_stream_t stream);

/* One step: x [batch, H, P], dt [batch, H], B, C [batch, G, N], y [batch, H, P]; state as above. */
BMAMBA_SSD_API int bmamba_ssd_step_f32(const float* x, const float* dt, const float* A,
                                       const float* B, const float* C, const float* D,
                                       const float* dt_bias, const float* state, float* y,
                                       float* new_state, int batch, int H, int P, int G, int N,
                                       bmamba_stream_t stream);
BMAMBA_SSD_API int bmamba_ssd_step_f16(const uint16_t* x, const uint16_t* dt, const float* A,
                                       const uint16_t* B, const uint16_t* C, const float* D,
                                       const float* dt_bias, const float* state, uint16_t* y,
                                       float* new_state, int batch, int H, int P, int G, int N,
                                       bmamba_stream_t stream);

/*
 * Long sequences with few (batch, head) pairs are split into time segments that run in parallel
 * (see ssd_scan.cu). That needs a float32 workspace; the functions above allocate it themselves
 * (stream-ordered) and fall back to one segment when they cannot. bmamba_ssd_scan_ex takes the
 * workspace from the caller (TensorRT's), and n_segments: 0 = automatic (reduced to what the
 * workspace holds; a NULL workspace means one segment), k > 0 = exactly k segments (the workspace
 * must then hold bmamba_ssd_workspace_size(..., k), else BMAMBA_SSD_ERR_WORKSPACE).
 *
 * bmamba_ssd_plan_segments: the automatic segment count for these sizes on a GPU of sm_count SMs
 * (sm_count <= 0: the current device; 1 if it cannot be queried). It never decreases as T grows.
 * bmamba_ssd_workspace_size: bytes for n_segments (0: the automatic count on the current device);
 * 0 for one segment or bad sizes.
 */
BMAMBA_SSD_API int bmamba_ssd_plan_segments(int batch, int T, int H, int P, int G, int N,
                                            int sm_count);
BMAMBA_SSD_API size_t bmamba_ssd_workspace_size(int batch, int T, int H, int P, int G, int N,
                                                int n_segments);
BMAMBA_SSD_API int bmamba_ssd_scan_ex(int dtype, const void* x, const void* dt, const float* A,
                                      const void* B, const void* C, const float* D,
                                      const float* dt_bias, const float* initial_state, void* y,
                                      float* final_state, int batch, int T, int H, int P, int G,
                                      int N, void* workspace, size_t workspace_bytes,
                                      int n_segments, bmamba_stream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* BMAMBA_SSD_SCAN_H */
