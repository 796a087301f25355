// Self-test of the TensorRT plugin library without TensorRT's libraries or a GPU: loads
// libbmamba_trt_plugin.so (the getCreators variant) with dlopen, stands in for libnvinfer's
// getLogger, and drives the creator and the plugin through the calls a builder and a runtime
// make: names, fields, format support, output types and shapes, configure, workspace sizing,
// serialization round trip, clone, and enqueue (which must fail cleanly without a GPU).
//
//   g++ -std=c++17 -isystem <TensorRT>/include -isystem <cuda>/include plugin_selftest.cpp
//       -ldl -rdynamic -o plugin_selftest && ./plugin_selftest build/libbmamba_trt_plugin.so
//
// Prints one line per check and "ALL OK" at the end; exit status 1 on the first failure.
#include <NvInferRuntime.h>
#include <dlfcn.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "../ssd_scan.h"

namespace {

class CollectingLogger : public nvinfer1::ILogger {
public:
    void log(Severity severity, nvinfer1::AsciiChar const* msg) noexcept override {
        if (severity <= Severity::kWARNING) messages.emplace_back(msg);
    }
    std::vector<std::string> messages;
};

CollectingLogger gLogger;

int gFailures = 0;

void check(bool ok, std::string const& what) {
    std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
    if (!ok) ++gFailures;
}

using nvinfer1::DataType;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::TensorFormat;

nvinfer1::Dims dims(std::vector<int64_t> const& v) {
    nvinfer1::Dims d{};
    d.nbDims = static_cast<int32_t>(v.size());
    for (size_t i = 0; i < v.size(); ++i) d.d[i] = v[i];
    return d;
}

// The ten tensors (8 inputs, 2 outputs) for batch in [bmin, bmax], T in [1, tmax].
std::vector<DynamicPluginTensorDesc> descs(DataType io, int64_t bmin, int64_t bmax, int64_t tmax, int64_t H,
                                           int64_t P, int64_t G, int64_t N) {
    struct Spec {
        std::vector<int64_t> lo, hi;
        DataType type;
    };
    std::vector<Spec> specs = {
        {{bmin, 1, H, P}, {bmax, tmax, H, P}, io},          // x
        {{bmin, 1, H}, {bmax, tmax, H}, io},                // dt
        {{H}, {H}, DataType::kFLOAT},                       // A
        {{bmin, 1, G, N}, {bmax, tmax, G, N}, io},          // B
        {{bmin, 1, G, N}, {bmax, tmax, G, N}, io},          // C
        {{H}, {H}, DataType::kFLOAT},                       // D
        {{H}, {H}, DataType::kFLOAT},                       // dt_bias
        {{bmin, H, P, N}, {bmax, H, P, N}, DataType::kFLOAT},  // initial_state
        {{bmin, 1, H, P}, {bmax, tmax, H, P}, io},          // y
        {{bmin, H, P, N}, {bmax, H, P, N}, DataType::kFLOAT},  // final_state
    };
    std::vector<DynamicPluginTensorDesc> out(specs.size());
    for (size_t i = 0; i < specs.size(); ++i) {
        out[i].min = dims(specs[i].lo);
        out[i].max = dims(specs[i].hi);
        out[i].opt = out[i].max;
        out[i].desc.dims = dims(specs[i].hi);
        out[i].desc.type = specs[i].type;
        out[i].desc.format = TensorFormat::kLINEAR;
        out[i].desc.scale = 1.0f;
    }
    return out;
}

bool supportsAll(nvinfer1::IPluginV3OneBuild* build, std::vector<DynamicPluginTensorDesc> const& d) {
    for (int32_t pos = 0; pos < 10; ++pos)
        if (!build->supportsFormatCombination(pos, d.data(), 8, 2)) return false;
    return true;
}

}  // namespace

// Stands in for libnvinfer's logger (the plugin falls back to it when no ILoggerFinder is set).
extern "C" __attribute__((visibility("default"))) nvinfer1::ILogger* getLogger() noexcept { return &gLogger; }

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s path/to/libbmamba_trt_plugin.so\n", argv[0]);
        return 2;
    }
    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        std::fprintf(stderr, "dlopen failed: %s\n", dlerror());
        return 1;
    }
    using GetCreators = nvinfer1::IPluginCreatorInterface* const* (*)(int32_t&);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    check(getCreators != nullptr && dlsym(lib, "setLoggerFinder") != nullptr, "exports getCreators and setLoggerFinder");
    if (!getCreators) return 1;
    using PlanSegments = int (*)(int, int, int, int, int, int, int);
    using WorkspaceSize = size_t (*)(int, int, int, int, int, int, int);
    auto planSegments = reinterpret_cast<PlanSegments>(dlsym(lib, "bmamba_ssd_plan_segments"));
    auto workspaceSize = reinterpret_cast<WorkspaceSize>(dlsym(lib, "bmamba_ssd_workspace_size"));
    check(planSegments && workspaceSize, "embeds the kernels' C interface");

    int32_t nbCreators = 0;
    nvinfer1::IPluginCreatorInterface* const* creators = getCreators(nbCreators);
    check(nbCreators == 1 && creators && creators[0], "one creator");
    check(std::strcmp(creators[0]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0, "creator is IPluginCreatorV3One");
    auto* creator = static_cast<nvinfer1::IPluginCreatorV3One*>(creators[0]);
    check(std::strcmp(creator->getPluginName(), "SSDChunkScan") == 0 && std::strcmp(creator->getPluginVersion(), "1") == 0 &&
              std::strcmp(creator->getPluginNamespace(), "bmamba") == 0,
          "creator is bmamba::SSDChunkScan version 1");
    nvinfer1::PluginFieldCollection const* names = creator->getFieldNames();
    check(names && names->nbFields == 1 && std::strcmp(names->fields[0].name, "chunk_size") == 0 &&
              names->fields[0].type == nvinfer1::PluginFieldType::kINT32,
          "creator lists the optional INT32 field chunk_size");

    // Build phase, as the ONNX parser creates it.
    int32_t chunk = 64;
    nvinfer1::PluginField field("chunk_size", &chunk, nvinfer1::PluginFieldType::kINT32, 1);
    nvinfer1::PluginFieldCollection fc{1, &field};
    nvinfer1::IPluginV3* plugin = creator->createPlugin("scan0", &fc, nvinfer1::TensorRTPhase::kBUILD);
    check(plugin != nullptr, "createPlugin(kBUILD)");
    if (!plugin) return 1;
    auto* core = static_cast<nvinfer1::IPluginV3OneCore*>(plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kCORE));
    auto* build = static_cast<nvinfer1::IPluginV3OneBuild*>(plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<nvinfer1::IPluginV3OneRuntime*>(plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME));
    check(core && build && runtime, "core, build and runtime capabilities");
    check(std::strcmp(core->getPluginName(), "SSDChunkScan") == 0 && std::strcmp(core->getPluginNamespace(), "bmamba") == 0 &&
              std::strcmp(core->getPluginVersion(), "1") == 0,
          "plugin name, version and namespace match the creator");
    check(build->getNbOutputs() == 2, "two outputs");

    DataType in32[8], in16[8], out[2];
    std::fill(in32, in32 + 8, DataType::kFLOAT);
    std::fill(in16, in16 + 8, DataType::kFLOAT);
    in16[0] = in16[1] = in16[3] = in16[4] = DataType::kHALF;
    check(build->getOutputDataTypes(out, 2, in32, 8) == 0 && out[0] == DataType::kFLOAT && out[1] == DataType::kFLOAT,
          "output types for float32 I/O: y float32, state float32");
    check(build->getOutputDataTypes(out, 2, in16, 8) == 0 && out[0] == DataType::kHALF && out[1] == DataType::kFLOAT,
          "output types for float16 I/O: y float16, state float32");

    auto f32 = descs(DataType::kFLOAT, 1, 4, 100000, 24, 64, 1, 128);
    auto f16 = descs(DataType::kHALF, 1, 4, 100000, 24, 64, 1, 128);
    check(supportsAll(build, f32), "supports float32 I/O");
    check(supportsAll(build, f16), "supports float16 I/O with float32 A, D, dt_bias, states");
    auto bad = f16;
    bad[1].desc.type = DataType::kFLOAT;
    check(!build->supportsFormatCombination(1, bad.data(), 8, 2), "rejects dt float32 when x is float16");
    bad = f16;
    bad[2].desc.type = DataType::kHALF;
    check(!build->supportsFormatCombination(2, bad.data(), 8, 2), "rejects A in float16");
    bad = f16;
    bad[7].desc.type = DataType::kHALF;
    check(!build->supportsFormatCombination(7, bad.data(), 8, 2), "rejects a float16 initial state");
    bad = f16;
    bad[8].desc.type = DataType::kFLOAT;
    check(!build->supportsFormatCombination(8, bad.data(), 8, 2), "rejects y float32 when x is float16");
    bad = f32;
    bad[0].desc.type = DataType::kINT8;
    check(!build->supportsFormatCombination(0, bad.data(), 8, 2), "rejects int8 x");
    bad = f32;
    bad[0].desc.format = TensorFormat::kCHW32;
    check(!build->supportsFormatCombination(0, bad.data(), 8, 2), "rejects non-linear formats");

    check(build->configurePlugin(f32.data(), 8, f32.data() + 8, 2) == 0, "configurePlugin accepts the base preset's sizes");
    auto wrong = descs(DataType::kFLOAT, 1, 4, 1000, 6, 64, 4, 128);
    check(build->configurePlugin(wrong.data(), 8, wrong.data() + 8, 2) != 0, "configurePlugin rejects G=4 not dividing H=6");
    wrong = descs(DataType::kFLOAT, 1, 4, 1000, 8, 300, 1, 16);
    check(build->configurePlugin(wrong.data(), 8, wrong.data() + 8, 2) != 0, "configurePlugin rejects P=300 > 256");
    wrong = f32;
    wrong[1].desc.dims = dims({4, 1000});
    check(build->configurePlugin(wrong.data(), 8, wrong.data() + 8, 2) != 0, "configurePlugin rejects a rank-2 dt");

    // getOutputShapes only forwards the input expressions: distinct fake pointers stand for them.
    static char tokens[16];
    auto expr = [](int i) { return reinterpret_cast<nvinfer1::IDimensionExpr const*>(&tokens[i]); };
    nvinfer1::DimsExprs inputs[8]{}, outputs[2]{};
    int const ranks[8] = {4, 3, 1, 4, 4, 1, 1, 4};
    for (int i = 0; i < 8; ++i) inputs[i].nbDims = ranks[i];
    for (int k = 0; k < 4; ++k) inputs[0].d[k] = expr(k);      // x: B T H P
    for (int k = 0; k < 4; ++k) inputs[3].d[k] = expr(4 + k);  // B: B T G N
    alignas(8) char builderStorage[64]{};
    auto& exprBuilder = *reinterpret_cast<nvinfer1::IExprBuilder*>(builderStorage);
    int32_t rc = build->getOutputShapes(inputs, 8, nullptr, 0, outputs, 2, exprBuilder);
    check(rc == 0 && outputs[0].nbDims == 4 && outputs[0].d[0] == expr(0) && outputs[0].d[1] == expr(1) &&
              outputs[0].d[2] == expr(2) && outputs[0].d[3] == expr(3),
          "y has x's shape [B, T, H, P]");
    check(outputs[1].nbDims == 4 && outputs[1].d[0] == expr(0) && outputs[1].d[1] == expr(2) && outputs[1].d[2] == expr(3) &&
              outputs[1].d[3] == expr(7),
          "final_state is [B, H, P, N] from x and B");

    // Serialization round trip: the runtime plugin is created from getFieldsToSerialize.
    nvinfer1::PluginFieldCollection const* serial = runtime->getFieldsToSerialize();
    bool hasChunk = false, hasSm = false;
    for (int32_t i = 0; serial && i < serial->nbFields; ++i) {
        if (std::strcmp(serial->fields[i].name, "chunk_size") == 0)
            hasChunk = *static_cast<int32_t const*>(serial->fields[i].data) == 64;
        if (std::strcmp(serial->fields[i].name, "sm_count") == 0) hasSm = true;
    }
    check(hasChunk && hasSm, "serializes chunk_size (64) and sm_count");

    // A runtime plugin planned for a 132-SM GPU: the workspace must cover every size in the profile.
    int32_t smCount = 132;
    nvinfer1::PluginField runtimeFields[2] = {
        nvinfer1::PluginField("chunk_size", &chunk, nvinfer1::PluginFieldType::kINT32, 1),
        nvinfer1::PluginField("sm_count", &smCount, nvinfer1::PluginFieldType::kINT32, 1)};
    nvinfer1::PluginFieldCollection runtimeFc{2, runtimeFields};
    nvinfer1::IPluginV3* planned = creator->createPlugin("scan0", &runtimeFc, nvinfer1::TensorRTPhase::kRUNTIME);
    check(planned != nullptr, "createPlugin(kRUNTIME) from serialized fields");
    auto* plannedBuild = static_cast<nvinfer1::IPluginV3OneBuild*>(planned->getCapabilityInterface(nvinfer1::PluginCapabilityType::kBUILD));
    struct Profile {
        int bmin, bmax, tmax, H, P, G, N;
    };
    Profile const profiles[] = {{1, 4, 100000, 24, 64, 1, 128}, {1, 64, 20000, 12, 32, 1, 32}, {1, 8, 5000, 8, 16, 2, 16},
                                {2, 3, 512, 8, 16, 2, 16}};
    bool covered = true, someSegmented = false;
    for (Profile const& p : profiles) {
        auto d = descs(DataType::kFLOAT, p.bmin, p.bmax, p.tmax, p.H, p.P, p.G, p.N);
        size_t const allocated = plannedBuild->getWorkspaceSize(d.data(), 8, d.data() + 8, 2);
        for (int b = p.bmin; b <= p.bmax; ++b)
            for (int T : {1, 7, 511, 512, 1023, 4096, 9999, 20000, 65536, 100000}) {
                if (T > p.tmax) continue;
                int const segments = planSegments(b, T, p.H, p.P, p.G, p.N, smCount);
                size_t const need = workspaceSize(b, T, p.H, p.P, p.G, p.N, segments);
                someSegmented = someSegmented || segments > 1;
                if (need > allocated) {
                    covered = false;
                    std::printf("     batch %d T %d needs %zu > %zu\n", b, T, need, allocated);
                }
            }
    }
    check(covered && someSegmented, "getWorkspaceSize covers the plan of every batch and T in the profile");

    nvinfer1::IPluginV3* copy = plugin->clone();
    check(copy != nullptr && std::strcmp(static_cast<nvinfer1::IPluginV3OneCore*>(
                                             copy->getCapabilityInterface(nvinfer1::PluginCapabilityType::kCORE))
                                             ->getPluginNamespace(),
                                         "bmamba") == 0,
          "clone");
    nvinfer1::IPluginV3* attached = runtime->attachToContext(nullptr);
    check(attached != nullptr, "attachToContext");

    // enqueue without a GPU: an error code and a logged reason, no crash.
    nvinfer1::PluginTensorDesc in[8], outDesc[2];
    for (int i = 0; i < 8; ++i) in[i] = f32[i].desc;
    for (int i = 0; i < 2; ++i) outDesc[i] = f32[8 + i].desc;
    in[0].dims = dims({1, 10, 24, 64});
    in[1].dims = dims({1, 10, 24});
    in[3].dims = in[4].dims = dims({1, 10, 1, 128});
    in[7].dims = dims({1, 24, 64, 128});
    check(runtime->onShapeChange(in, 8, outDesc, 2) == 0, "onShapeChange");
    static float buffer[16];
    void const* inPtrs[8];
    void* outPtrs[2] = {buffer, buffer};
    for (auto& p : inPtrs) p = buffer;
    size_t const before = gLogger.messages.size();
    using DeviceSmCount = int (*)(int*);
    auto deviceSmCount = reinterpret_cast<DeviceSmCount>(dlsym(lib, "bmamba_ssd_device_sm_count"));
    int sms = 0;
    bool const haveGpu = deviceSmCount && deviceSmCount(&sms) == BMAMBA_SSD_OK;
    if (!haveGpu) {
        rc = runtime->enqueue(in, outDesc, inPtrs, outPtrs, nullptr, nullptr);
        check(rc != 0 && gLogger.messages.size() > before, "enqueue without a GPU fails with a logged reason");
        if (gLogger.messages.size() > before) std::printf("     logged: %s\n", gLogger.messages.back().c_str());
    }

    delete attached;
    delete copy;
    delete planned;
    delete plugin;
    if (gFailures)
        std::printf("%d FAILED\n", gFailures);
    else
        std::printf("ALL OK\n");
    return gFailures ? 1 : 0;
}
