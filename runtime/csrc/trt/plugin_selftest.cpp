// Self-test of the TensorRT plugin library without TensorRT's libraries or a GPU: loads
// libbmamba_trt_plugin.so (the getCreators variant) with dlopen, stands in for libnvinfer's
// getLogger, and drives the creator and the plugin through the calls a builder and a runtime
// make: names, fields, format support, output types and shapes, configure, shape checks,
// workspace sizing, serialization round trip, clone, and enqueue (which must refuse mismatched
// shapes, and fail cleanly without a GPU). Given the static-registration library too, it loads it
// with a stand-in plugin registry and checks the creator is registered under "bmamba".
//
//   g++ -std=c++17 -isystem <TensorRT>/include -isystem <cuda>/include plugin_selftest.cpp
//       -ldl -rdynamic -o plugin_selftest
//   ./plugin_selftest build/libbmamba_trt_plugin.so [build/libbmamba_trt_plugin_static.so]
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

// Stands in for libnvinfer's plugin registry: records what the static library registers.
class RecordingRegistry : public nvinfer1::IPluginRegistry {
public:
    bool registerCreator(nvinfer1::IPluginCreatorInterface& creator, nvinfer1::AsciiChar const* const ns) noexcept override {
        creators.push_back(&creator);
        namespaces.emplace_back(ns ? ns : "(null)");
        return true;
    }
    std::vector<nvinfer1::IPluginCreatorInterface*> creators;
    std::vector<std::string> namespaces;

    // The rest is never called by the plugin.
    void setErrorRecorder(nvinfer1::IErrorRecorder* const) noexcept override {}
    nvinfer1::IErrorRecorder* getErrorRecorder() const noexcept override { return nullptr; }
    bool isParentSearchEnabled() const override { return false; }
    void setParentSearchEnabled(bool const) override {}
    PluginLibraryHandle loadLibrary(nvinfer1::AsciiChar const*) noexcept override { return nullptr; }
    void deregisterLibrary(PluginLibraryHandle) noexcept override {}
    nvinfer1::IPluginCreatorInterface* const* getAllCreators(int32_t* const n) const noexcept override {
        *n = 0;
        return nullptr;
    }
    nvinfer1::IPluginCreatorInterface* getCreator(nvinfer1::AsciiChar const* const, nvinfer1::AsciiChar const* const,
                                                  nvinfer1::AsciiChar const* const) noexcept override {
        return nullptr;
    }
    bool deregisterCreator(nvinfer1::IPluginCreatorInterface const&) noexcept override { return false; }
    nvinfer1::IPluginResource* acquirePluginResource(nvinfer1::AsciiChar const*, nvinfer1::IPluginResource*) noexcept override {
        return nullptr;
    }
    int32_t releasePluginResource(nvinfer1::AsciiChar const*) noexcept override { return 0; }
#if NV_TENSORRT_MAJOR > 10 || NV_TENSORRT_MINOR >= 10
    nvinfer1::IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const n) noexcept override {
        *n = 0;
        return nullptr;
    }
#endif
#if NV_TENSORRT_MAJOR < 11  // the IPluginCreator (V2) methods, deprecated in 10, removed in 11
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    bool registerCreator(nvinfer1::IPluginCreator&, nvinfer1::AsciiChar const* const) noexcept override { return false; }
    nvinfer1::IPluginCreator* const* getPluginCreatorList(int32_t* const n) const noexcept override {
        *n = 0;
        return nullptr;
    }
    nvinfer1::IPluginCreator* getPluginCreator(nvinfer1::AsciiChar const* const, nvinfer1::AsciiChar const* const,
                                               nvinfer1::AsciiChar const* const) noexcept override {
        return nullptr;
    }
    bool deregisterCreator(nvinfer1::IPluginCreator const&) noexcept override { return false; }
#pragma GCC diagnostic pop
#endif
};

RecordingRegistry gRegistry;

int gFailures = 0;

void check(bool ok, std::string const& what) {
    std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
    if (!ok) ++gFailures;
}

using nvinfer1::DataType;
using nvinfer1::DynamicPluginTensorDesc;

constexpr char const* kInputNames[8] = {"x", "dt", "A", "B", "C", "D", "dt_bias", "initial_state"};
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
extern "C" __attribute__((visibility("default"))) nvinfer1::IPluginRegistry* getPluginRegistry() noexcept {
    return &gRegistry;
}

namespace {

// The static-registration library registers its creator when loaded, under "bmamba".
void checkStaticRegistration(char const* path) {
    void* lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    check(lib != nullptr, std::string("dlopen static-registration library") + (lib ? "" : std::string(": ") + dlerror()));
    if (!lib) return;
    check(gRegistry.creators.size() == 1, "static library registers one creator when loaded");
    if (gRegistry.creators.size() != 1) return;
    auto* creator = static_cast<nvinfer1::IPluginCreatorV3One*>(gRegistry.creators[0]);
    check(gRegistry.namespaces[0] == "bmamba" && std::strcmp(creator->getPluginNamespace(), "bmamba") == 0 &&
              std::strcmp(creator->getPluginName(), "SSDChunkScan") == 0,
          "static registration is under the namespace \"bmamba\" (registered: \"" + gRegistry.namespaces[0] + "\")");
}

// Expects `call` to fail with a logged message containing `text`.
template <typename Call>
void expectRefused(Call call, std::string const& text, std::string const& what) {
    size_t const before = gLogger.messages.size();
    int32_t const rc = call();
    bool const logged = gLogger.messages.size() > before && gLogger.messages.back().find(text) != std::string::npos;
    check(rc != 0 && logged, what);
    if (gLogger.messages.size() > before) std::printf("     logged: %s\n", gLogger.messages.back().c_str());
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2 && argc != 3) {
        std::fprintf(stderr, "usage: %s path/to/libbmamba_trt_plugin.so [path/to/libbmamba_trt_plugin_static.so]\n",
                     argv[0]);
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
    check(names && names->nbFields == 0, "creator lists no fields (the ONNX node carries only plugin_version and "
                                         "plugin_namespace)");

    // Build phase, as the ONNX parser creates it: no fields.
    nvinfer1::PluginFieldCollection fc{0, nullptr};
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
    // Sizes that disagree with x [B,T,H,P] and B [B,T,G,N], each of which would let the kernels
    // read or write out of bounds: {input, axis, value}.
    struct Bad {
        int input, axis;
        int64_t value;
        char const* what;
    };
    Bad const bads[] = {{7, 0, 8, "initial_state with a larger batch"}, {7, 1, 12, "initial_state with another H"},
                        {7, 2, 32, "initial_state with another P"},     {7, 3, 64, "initial_state with another N"},
                        {1, 2, 12, "dt with another H"},                {2, 0, 25, "A with another H"},
                        {5, 0, 23, "D with another H"},                 {6, 0, 12, "dt_bias with another H"},
                        {4, 3, 64, "C with another N"},                 {4, 2, 2, "C with another G"},
                        {4, 0, 8, "C with a larger batch"},             {3, 1, 50000, "B with another T"}};
    for (Bad const& b : bads) {
        wrong = f32;
        wrong[b.input].max.d[b.axis] = b.value;
        wrong[b.input].desc.dims.d[b.axis] = b.value;
        if (b.input == 2 || b.input == 5 || b.input == 6) wrong[b.input].min.d[b.axis] = b.value;
        expectRefused([&] { return build->configurePlugin(wrong.data(), 8, wrong.data() + 8, 2); },
                      "configurePlugin: " + std::string(kInputNames[b.input]), std::string("configurePlugin rejects ") + b.what);
    }

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
    check(serial && serial->nbFields == 1 && std::strcmp(serial->fields[0].name, "sm_count") == 0,
          "serializes sm_count only");

    // A runtime plugin planned for a 132-SM GPU: the workspace must cover every size in the profile.
    int32_t smCount = 132;
    nvinfer1::PluginField runtimeFields[1] = {
        nvinfer1::PluginField("sm_count", &smCount, nvinfer1::PluginFieldType::kINT32, 1)};
    nvinfer1::PluginFieldCollection runtimeFc{1, runtimeFields};
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
    outDesc[0].dims = in[0].dims;
    outDesc[1].dims = in[7].dims;
    check(runtime->onShapeChange(in, 8, outDesc, 2) == 0, "onShapeChange");
    static float buffer[16];
    void const* inPtrs[8];
    void* outPtrs[2] = {buffer, buffer};
    for (auto& p : inPtrs) p = buffer;
    // Concrete shapes that disagree: refused at shape change and in enqueue (before any launch,
    // GPU or not), with the reason logged.
    struct Mismatch {
        int input, axis;
        int64_t value;
        char const* text;
    };
    Mismatch const mismatches[] = {{7, 0, 2, "initial_state"}, {1, 1, 11, "dt"}, {4, 3, 64, "C"}, {6, 0, 25, "dt_bias"},
                                   {8, 1, 11, "outputs"}, {9, 0, 2, "outputs"}};
    for (Mismatch const& m : mismatches) {
        nvinfer1::PluginTensorDesc badIn[8], badOut[2];
        std::copy(in, in + 8, badIn);
        std::copy(outDesc, outDesc + 2, badOut);
        nvinfer1::PluginTensorDesc& t = m.input < 8 ? badIn[m.input] : badOut[m.input - 8];
        t.dims.d[m.axis] = m.value;
        std::string const what = std::string(m.text) + " dimension " + std::to_string(m.axis) + " = " + std::to_string(m.value);
        expectRefused([&] { return runtime->onShapeChange(badIn, 8, badOut, 2); }, std::string("onShapeChange: ") + m.text,
                      "onShapeChange refuses " + what);
        expectRefused([&] { return runtime->enqueue(badIn, badOut, inPtrs, outPtrs, nullptr, nullptr); },
                      std::string("enqueue: ") + m.text, "enqueue refuses " + what);
    }
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
    if (argc == 3) checkStaticRegistration(argv[2]);
    if (gFailures)
        std::printf("%d FAILED\n", gFailures);
    else
        std::printf("ALL OK\n");
    return gFailures ? 1 : 0;
}
