// Race check of the kernels under ThreadSanitizer (build.py, tsan=True links this with the
// rewritten ssd_scan.cu and cuda_emu.h built with -fsanitize=thread -DEMU_TSAN). Every CUDA thread
// is a TSan fiber whose only synchronization is what CUDA gives it (barriers, shuffles, launch
// boundaries), so TSan reports any access pair the kernels leave unordered. Runs a few scans on
// random inputs (f32 and f16, one and three time segments, state updated in place); prints
// "scans: N" and exits 0, or TSan reports and exits 66, or 1 on an error code.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "ssd_scan.h"

namespace {

struct Shape {
    int batch, T, H, P, G, N;
};

std::mt19937 g_rng(7);

std::vector<float> randn(size_t n, float scale = 1.0f, float shift = 0.0f) {
    std::normal_distribution<float> dist(shift, scale);
    std::vector<float> v(n);
    for (float& x : v) x = dist(g_rng);
    return v;
}

std::vector<uint16_t> to_half(const std::vector<float>& v) {
    std::vector<uint16_t> out(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
        _Float16 h = static_cast<_Float16>(v[i]);
        __builtin_memcpy(&out[i], &h, 2);
    }
    return out;
}

bool scan(const Shape& s, bool f16, int segments) {
    const size_t nx = (size_t)s.batch * s.T * s.H * s.P, ndt = (size_t)s.batch * s.T * s.H,
                 nbc = (size_t)s.batch * s.T * s.G * s.N, ns = (size_t)s.batch * s.H * s.P * s.N;
    std::vector<float> x = randn(nx), dt = randn(ndt, 1.0f, -4.0f), B = randn(nbc), C = randn(nbc);
    std::vector<float> A(s.H), D = randn(s.H), bias = randn(s.H), state = randn(ns, 3.0f);
    for (float& a : A) a = -0.1f - std::fabs(randn(1)[0]) * 0.3f;
    std::vector<float> y(nx);
    std::vector<uint16_t> xh = to_half(x), dth = to_half(dt), Bh = to_half(B), Ch = to_half(C), yh(nx);
    const size_t bytes = bmamba_ssd_workspace_size(s.batch, s.T, s.H, s.P, s.G, s.N, segments);
    std::vector<float> workspace(bytes / 4 + 1, NAN);
    const void* in[4] = {x.data(), dt.data(), B.data(), C.data()};
    const void* in16[4] = {xh.data(), dth.data(), Bh.data(), Ch.data()};
    const void* const* io = f16 ? in16 : in;
    void* out = f16 ? static_cast<void*>(yh.data()) : static_cast<void*>(y.data());
    const int code = bmamba_ssd_scan_ex(f16 ? BMAMBA_SSD_FLOAT16 : BMAMBA_SSD_FLOAT32, io[0], io[1], A.data(),
                                        io[2], io[3], D.data(), bias.data(), state.data(), out, state.data(),
                                        s.batch, s.T, s.H, s.P, s.G, s.N, bytes ? workspace.data() : nullptr,
                                        bytes, segments, nullptr);
    if (code != BMAMBA_SSD_OK) std::printf("scan failed: %s\n", bmamba_ssd_last_error());
    return code == BMAMBA_SSD_OK;
}

}  // namespace

int main() {
    const Shape shapes[] = {{2, 37, 2, 16, 2, 16}, {1, 70, 2, 32, 1, 32}, {1, 20, 1, 64, 1, 128}, {1, 23, 4, 5, 4, 7}};
    int scans = 0;
    for (const Shape& s : shapes)
        for (bool f16 : {false, true})
            for (int segments : {1, 3}) {
                if (!scan(s, f16, segments)) return 1;
                ++scans;
            }
    std::printf("scans: %d\n", scans);
    return 0;
}
