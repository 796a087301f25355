// Kernels with one defect each, for tests/test_cuda_emu.py::test_harness_detects_faults: the
// harness must refuse or stop each with the fault a GPU would show (or hang on). Kernel 0 is
// correct. run_kernel(id) returns the cudaError_t of the launch; emu_fault() says why.
#include "cuda_emu.h"

namespace {

float g_out[4096];

__global__ void correct(float* out) {
    const unsigned t = threadIdx.x;
    float v = (float)t;
    __syncthreads();
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    out[t] = v;
}

__global__ void barrier_in_divergent_branches(float*) {
    if (threadIdx.x < 16)
        __syncthreads();
    else
        __syncthreads();
}

__global__ void barrier_after_an_early_exit(float*) {
    if (threadIdx.x == 0) return;
    __syncthreads();
}

__global__ void shuffle_partner_outside_the_mask(float* out) {
    if (threadIdx.x < 16) out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, 1.0f, 16);
}

__global__ void full_mask_in_a_partial_warp(float* out) {
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

__global__ void shuffle_against_a_barrier(float* out) {
    if (threadIdx.x % 32 < 16)
        out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
    else
        __syncthreads();
}

__global__ void bounded_to_64_threads(float* out) {
    ::emu::launch_bounds(64);  // what build.py makes of __launch_bounds__(64)
    out[threadIdx.x] = 1.0f;
}

cudaError_t launch(void (*kernel)(float*), dim3 grid, dim3 block) {
    float* out = g_out;
    void* args[] = {&out};
    return cudaLaunchKernel(kernel, grid, block, args);
}

}  // namespace

extern "C" __attribute__((visibility("default"))) int run_kernel(int id) {
    switch (id) {
        case 0: return launch(correct, dim3(2), dim3(64));
        case 1: return launch(barrier_in_divergent_branches, dim3(1), dim3(32));
        case 2: return launch(barrier_after_an_early_exit, dim3(1), dim3(32));
        case 3: return launch(shuffle_partner_outside_the_mask, dim3(1), dim3(32));
        case 4: return launch(full_mask_in_a_partial_warp, dim3(1), dim3(48));
        case 5: return launch(shuffle_against_a_barrier, dim3(1), dim3(64));
        case 6: return launch(bounded_to_64_threads, dim3(1), dim3(128));
        case 7: return launch(correct, dim3(1), dim3(2048));
        case 8: return launch(correct, dim3(1, 70000), dim3(32));
    }
    return -1;
}
