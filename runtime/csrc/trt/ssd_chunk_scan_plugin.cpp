// TensorRT IPluginV3 wrapper of the SSD scan kernels; see ssd_chunk_scan_plugin.h for the contract.
//
// Workspace: long sequences with few (batch, head) blocks run in time segments that need a
// float32 workspace (../ssd_scan.cu). Its size depends on the sizes and on the GPU's SM count, so
// the SM count is taken from the device when the plugin is created for the build and serialized
// (field "sm_count"); getWorkspaceSize takes the largest need over the profile's batch range at
// its largest T, and enqueue plans its segments with the same SM count, so the need at enqueue
// never exceeds what TensorRT allocated (the plan never grows when T shrinks).

#include "ssd_chunk_scan_plugin.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <exception>

#include "../ssd_scan.h"

namespace bmamba {
namespace trt {
namespace {

using nvinfer1::DataType;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldType;

nvinfer1::ILoggerFinder* gLoggerFinder = nullptr;

void logError(std::string const& message) noexcept {
    try {
        using namespace nvinfer1;  // getLogger() is in nvinfer1 up to 10.x, global from 11
        ILogger* logger = gLoggerFinder ? gLoggerFinder->findLogger() : getLogger();
        std::string const text = std::string(kPluginNamespace) + "::" + kPluginName + ": " + message;
        if (logger) logger->log(nvinfer1::ILogger::Severity::kERROR, text.c_str());
    } catch (...) {
    }
}


int32_t deviceSmCount() noexcept {
    int32_t sms = 0;
    return bmamba_ssd_device_sm_count(&sms) == BMAMBA_SSD_OK ? sms : 0;
}

bool fitsInt(int64_t v) { return v >= 0 && v <= INT_MAX; }

enum : int32_t { kX = 0, kDt, kA, kB, kC, kD, kDtBias, kInitialState, kY, kFinalState };

// Ranks and names of the eight inputs.
constexpr int32_t kInputRanks[SSDChunkScanPlugin::kNbInputs] = {4, 3, 1, 4, 4, 1, 1, 4};
constexpr char const* kInputNames[SSDChunkScanPlugin::kNbInputs] = {"x", "dt", "A", "B", "C", "D", "dt_bias",
                                                                    "initial_state"};

// Why the eight input shapes do not fit together ("" when they do): every size is compared with
// x [batch, T, H, P] and B [batch, T, G, N]. A kernel given, say, an initial_state of another
// batch or a dt of another H would read and write out of bounds. Negative sizes (dynamic, at
// build time) are not compared.
std::string shapeMismatch(nvinfer1::Dims const* in) {
    for (int32_t i = 0; i < SSDChunkScanPlugin::kNbInputs; ++i)
        if (in[i].nbDims != kInputRanks[i])
            return std::string(kInputNames[i]) + " has rank " + std::to_string(in[i].nbDims) + ", expected " +
                   std::to_string(kInputRanks[i]);
    int64_t const batch = in[kX].d[0], T = in[kX].d[1], H = in[kX].d[2], P = in[kX].d[3];
    int64_t const G = in[kB].d[2], N = in[kB].d[3];
    struct Expected {
        int32_t input, axis;
        int64_t value;
        char const* name;
    };
    Expected const expected[] = {
        {kDt, 0, batch, "batch"}, {kDt, 1, T, "T"},         {kDt, 2, H, "H"},
        {kA, 0, H, "H"},          {kD, 0, H, "H"},          {kDtBias, 0, H, "H"},
        {kB, 0, batch, "batch"},  {kB, 1, T, "T"},          {kC, 0, batch, "batch"},
        {kC, 1, T, "T"},          {kC, 2, G, "G"},          {kC, 3, N, "N"},
        {kInitialState, 0, batch, "batch"}, {kInitialState, 1, H, "H"},
        {kInitialState, 2, P, "P"},         {kInitialState, 3, N, "N"},
    };
    for (Expected const& e : expected) {
        int64_t const got = in[e.input].d[e.axis];
        if (got >= 0 && e.value >= 0 && got != e.value)
            return std::string(kInputNames[e.input]) + " has " + std::to_string(got) + " at axis " +
                   std::to_string(e.axis) + ", but " + e.name + " = " + std::to_string(e.value) + " (from " +
                   (e.name[0] == 'G' || e.name[0] == 'N' ? "B" : "x") + ")";
    }
    return "";
}

// The same for the outputs: y [batch, T, H, P] like x, final_state [batch, H, P, N].
std::string outputMismatch(nvinfer1::Dims const* in, nvinfer1::Dims const* out) {
    nvinfer1::Dims const& x = in[kX];
    nvinfer1::Dims state = in[kInitialState];
    bool same = out[0].nbDims == x.nbDims && out[1].nbDims == state.nbDims;
    for (int32_t k = 0; same && k < x.nbDims; ++k) same = out[0].d[k] == x.d[k];
    for (int32_t k = 0; same && k < state.nbDims; ++k) same = out[1].d[k] == state.d[k];
    return same ? "" : "outputs y and final_state must have the shapes of x and initial_state";
}

// Sizes the kernels take (P, N <= 256, G divides H, ...), checked when all are known.
std::string unsupported(nvinfer1::Dims const* in) {
    int64_t const sizes[6] = {in[kX].d[0], in[kX].d[1], in[kX].d[2], in[kX].d[3], in[kB].d[2], in[kB].d[3]};
    for (int64_t v : sizes)
        if (!fitsInt(v)) return "";  // dynamic (or beyond int: bmamba_ssd_scan_ex refuses it)
    int const code = bmamba_ssd_check_shape(1, 1, static_cast<int>(sizes[2]), static_cast<int>(sizes[3]),
                                            static_cast<int>(sizes[4]), static_cast<int>(sizes[5]));
    if (code == BMAMBA_SSD_OK) return "";
    return "sizes H=" + std::to_string(sizes[2]) + " P=" + std::to_string(sizes[3]) + " G=" + std::to_string(sizes[4]) +
           " N=" + std::to_string(sizes[5]) + ": " + bmamba_ssd_error_string(code);
}

// Every check on concrete input and output shapes (onShapeChange, enqueue); "" when all pass.
std::string runtimeShapeError(nvinfer1::PluginTensorDesc const* in, nvinfer1::PluginTensorDesc const* out) {
    nvinfer1::Dims inDims[SSDChunkScanPlugin::kNbInputs], outDims[SSDChunkScanPlugin::kNbOutputs];
    for (int32_t i = 0; i < SSDChunkScanPlugin::kNbInputs; ++i) inDims[i] = in[i].dims;
    for (int32_t i = 0; i < SSDChunkScanPlugin::kNbOutputs; ++i) outDims[i] = out[i].dims;
    std::string why = shapeMismatch(inDims);
    if (why.empty()) why = outputMismatch(inDims, outDims);
    if (why.empty()) why = unsupported(inDims);
    return why;
}

}  // namespace

// ---- plugin ----------------------------------------------------------------------------------------

SSDChunkScanPlugin::SSDChunkScanPlugin(int32_t sm_count) : mSmCount(sm_count) {
    buildFieldsToSerialize();
}

SSDChunkScanPlugin::SSDChunkScanPlugin(SSDChunkScanPlugin const& other)
    : nvinfer1::IPluginV3(), nvinfer1::IPluginV3OneCore(), nvinfer1::IPluginV3OneBuild(),
      nvinfer1::IPluginV3OneRuntime(), mSmCount(other.mSmCount) {
    buildFieldsToSerialize();
}

void SSDChunkScanPlugin::buildFieldsToSerialize() {
    mFields.clear();
    mFields.emplace_back("sm_count", &mSmCount, PluginFieldType::kINT32, 1);
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
}

nvinfer1::IPluginCapability* SSDChunkScanPlugin::getCapabilityInterface(
    nvinfer1::PluginCapabilityType type) noexcept {
    switch (type) {
        case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
        case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
        case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

nvinfer1::IPluginV3* SSDChunkScanPlugin::clone() noexcept {
    try {
        return new SSDChunkScanPlugin(*this);
    } catch (std::exception const& e) {
        logError(std::string("clone failed: ") + e.what());
    }
    return nullptr;
}

char const* SSDChunkScanPlugin::getPluginName() const noexcept { return kPluginName; }
char const* SSDChunkScanPlugin::getPluginVersion() const noexcept { return kPluginVersion; }
char const* SSDChunkScanPlugin::getPluginNamespace() const noexcept { return kPluginNamespace; }

int32_t SSDChunkScanPlugin::getNbOutputs() const noexcept { return kNbOutputs; }

int32_t SSDChunkScanPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                            nvinfer1::DynamicPluginTensorDesc const* /*out*/,
                                            int32_t nbOutputs) noexcept {
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs) {
        logError("expects 8 inputs and 2 outputs");
        return -1;
    }
    // The shapes as declared (dynamic sizes -1) and at both ends of the optimization profile.
    nvinfer1::Dims declared[kNbInputs], lo[kNbInputs], hi[kNbInputs];
    for (int32_t i = 0; i < kNbInputs; ++i) {
        declared[i] = in[i].desc.dims;
        lo[i] = in[i].min;
        hi[i] = in[i].max;
    }
    try {
        for (nvinfer1::Dims const* dims : {declared, lo, hi}) {
            std::string why = shapeMismatch(dims);
            if (why.empty()) why = unsupported(dims);
            if (!why.empty()) {
                logError("configurePlugin: " + why);
                return -1;
            }
        }
    } catch (std::exception const& e) {
        logError(std::string("configurePlugin: ") + e.what());
        return -1;
    }
    return 0;
}

int32_t SSDChunkScanPlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                                               int32_t nbInputs) const noexcept {
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs) return -1;
    outputTypes[0] = inputTypes[kX];  // y in the I/O dtype
    outputTypes[1] = DataType::kFLOAT;
    return 0;
}

int32_t SSDChunkScanPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                                            nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/,
                                            nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                                            nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept {
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || inputs[kX].nbDims != 4 || inputs[kB].nbDims != 4) {
        logError("getOutputShapes: expects x [B,T,H,P] and B [B,T,G,N]");
        return -1;
    }
    outputs[0] = inputs[kX];  // y [B, T, H, P]
    outputs[1].nbDims = 4;    // final_state [B, H, P, N]
    outputs[1].d[0] = inputs[kX].d[0];
    outputs[1].d[1] = inputs[kX].d[2];
    outputs[1].d[2] = inputs[kX].d[3];
    outputs[1].d[3] = inputs[kB].d[3];
    return 0;
}

bool SSDChunkScanPlugin::supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut,
                                                   int32_t nbInputs, int32_t nbOutputs) noexcept {
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || pos < 0 || pos >= kNbInputs + kNbOutputs) return false;
    nvinfer1::PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != nvinfer1::TensorFormat::kLINEAR) return false;
    switch (pos) {
        case kX: return desc.type == DataType::kFLOAT || desc.type == DataType::kHALF;
        case kDt:
        case kB:
        case kC:
        case kY: return desc.type == inOut[kX].desc.type;  // the I/O dtype, decided at pos 0
        default: return desc.type == DataType::kFLOAT;      // A, D, dt_bias, both states
    }
}

size_t SSDChunkScanPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                                            nvinfer1::DynamicPluginTensorDesc const* /*outputs*/,
                                            int32_t /*nbOutputs*/) const noexcept {
    if (nbInputs != kNbInputs || mSmCount <= 0) return 0;
    nvinfer1::Dims const& lo = inputs[kX].min;
    nvinfer1::Dims const& hi = inputs[kX].max;
    int64_t const T = hi.d[1], H = hi.d[2], P = hi.d[3], G = inputs[kB].max.d[2], N = inputs[kB].max.d[3];
    if (!fitsInt(T) || !fitsInt(H) || !fitsInt(P) || !fitsInt(G) || !fitsInt(N) || !fitsInt(hi.d[0])) return 0;
    // The need is not monotone in the batch size (more batch, fewer segments): take the largest.
    size_t bytes = 0;
    int64_t const first = std::max<int64_t>(lo.d[0], 1), last = std::min<int64_t>(hi.d[0], 65535);
    for (int64_t batch = first; batch <= last; ++batch) {
        int const segments = bmamba_ssd_plan_segments(static_cast<int>(batch), static_cast<int>(T),
                                                      static_cast<int>(H), static_cast<int>(P),
                                                      static_cast<int>(G), static_cast<int>(N), mSmCount);
        bytes = std::max(bytes, bmamba_ssd_workspace_size(static_cast<int>(batch), static_cast<int>(T),
                                                          static_cast<int>(H), static_cast<int>(P),
                                                          static_cast<int>(G), static_cast<int>(N), segments));
    }
    return bytes;
}

int32_t SSDChunkScanPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
                                          nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept {
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs) {
        logError("onShapeChange: expects 8 inputs and 2 outputs");
        return -1;
    }
    try {
        std::string const why = runtimeShapeError(in, out);
        if (!why.empty()) {
            logError("onShapeChange: " + why);
            return -1;
        }
    } catch (std::exception const& e) {
        logError(std::string("onShapeChange: ") + e.what());
        return -1;
    }
    return 0;
}

int32_t SSDChunkScanPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
                                    nvinfer1::PluginTensorDesc const* outputDesc, void const* const* inputs,
                                    void* const* outputs, void* workspace, cudaStream_t stream) noexcept {
    try {  // checked again here: nothing out of bounds even if onShapeChange's answer was ignored
        std::string const why = runtimeShapeError(inputDesc, outputDesc);
        if (!why.empty()) {
            logError("enqueue: " + why);
            return -1;
        }
    } catch (std::exception const& e) {
        logError(std::string("enqueue: ") + e.what());
        return -1;
    }
    nvinfer1::Dims const& x = inputDesc[kX].dims;
    nvinfer1::Dims const& b = inputDesc[kB].dims;
    if (!fitsInt(x.d[0]) || !fitsInt(x.d[1]) || !fitsInt(x.d[2]) || !fitsInt(x.d[3]) || !fitsInt(b.d[2]) ||
        !fitsInt(b.d[3])) {
        logError("enqueue: sizes out of range");
        return -1;
    }
    int const batch = static_cast<int>(x.d[0]), T = static_cast<int>(x.d[1]), H = static_cast<int>(x.d[2]);
    int const P = static_cast<int>(x.d[3]), G = static_cast<int>(b.d[2]), N = static_cast<int>(b.d[3]);
    int const dtype = inputDesc[kX].type == DataType::kHALF ? BMAMBA_SSD_FLOAT16 : BMAMBA_SSD_FLOAT32;
    // The same plan getWorkspaceSize sized (same SM count, T and batch within the profile).
    int segments = 1;
    size_t bytes = 0;
    if (workspace != nullptr && mSmCount > 0) {
        segments = bmamba_ssd_plan_segments(batch, T, H, P, G, N, mSmCount);
        bytes = bmamba_ssd_workspace_size(batch, T, H, P, G, N, segments);
    }
    if (bytes == 0) segments = 1;
    int const code = bmamba_ssd_scan_ex(
        dtype, inputs[kX], inputs[kDt], static_cast<float const*>(inputs[kA]), inputs[kB], inputs[kC],
        static_cast<float const*>(inputs[kD]), static_cast<float const*>(inputs[kDtBias]),
        static_cast<float const*>(inputs[kInitialState]), outputs[0], static_cast<float*>(outputs[1]), batch, T, H,
        P, G, N, bytes ? workspace : nullptr, bytes, segments, reinterpret_cast<bmamba_stream_t>(stream));
    if (code != BMAMBA_SSD_OK) {
        logError(std::string("enqueue: ") + bmamba_ssd_error_string(code) + ": " + bmamba_ssd_last_error());
        return -1;
    }
    return 0;
}

nvinfer1::IPluginV3* SSDChunkScanPlugin::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept {
    return clone();  // no per-context resources
}

nvinfer1::PluginFieldCollection const* SSDChunkScanPlugin::getFieldsToSerialize() noexcept {
    return &mFieldCollection;
}

// ---- creator ---------------------------------------------------------------------------------------

SSDChunkScanPluginCreator::SSDChunkScanPluginCreator() {
    // No field comes from the ONNX node (the parser warns for every listed field a node lacks):
    // its attributes plugin_version and plugin_namespace are the parser's own. sm_count is
    // internal and comes back through getFieldsToSerialize at deserialization.
    mFieldCollection.nbFields = 0;
    mFieldCollection.fields = nullptr;
}

char const* SSDChunkScanPluginCreator::getPluginName() const noexcept { return kPluginName; }
char const* SSDChunkScanPluginCreator::getPluginVersion() const noexcept { return kPluginVersion; }
char const* SSDChunkScanPluginCreator::getPluginNamespace() const noexcept { return kPluginNamespace; }

nvinfer1::PluginFieldCollection const* SSDChunkScanPluginCreator::getFieldNames() noexcept {
    return &mFieldCollection;
}

nvinfer1::IPluginV3* SSDChunkScanPluginCreator::createPlugin(char const* /*name*/,
                                                             nvinfer1::PluginFieldCollection const* fc,
                                                             nvinfer1::TensorRTPhase phase) noexcept {
    try {
        int32_t smCount = 0;
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
            PluginField const& field = fc->fields[i];
            if (field.name == nullptr || field.data == nullptr || field.length < 1) continue;
            if (std::strcmp(field.name, "sm_count") == 0 && field.type == PluginFieldType::kINT32)
                smCount = *static_cast<int32_t const*>(field.data);
        }
        // Building: plan for the GPU we build on. Deserializing: keep the count the build used.
        if (phase == nvinfer1::TensorRTPhase::kBUILD || smCount <= 0) smCount = deviceSmCount();
        return new SSDChunkScanPlugin(smCount);
    } catch (std::exception const& e) {
        logError(std::string("createPlugin failed: ") + e.what());
    }
    return nullptr;
}

}  // namespace trt
}  // namespace bmamba

#if defined(BMAMBA_TRT_STATIC_REGISTRATION)
// Registered when the library is loaded (ctypes.CDLL, trtexec --staticPlugins), under the
// plugin's namespace. (REGISTER_TENSORRT_PLUGIN would register it under the empty namespace,
// where neither the ONNX node nor an engine looks for "bmamba".)
namespace {
struct StaticRegistration {
    StaticRegistration() {
        static bmamba::trt::SSDChunkScanPluginCreator creator;
        nvinfer1::IPluginRegistry* registry = getPluginRegistry();
        if (registry == nullptr || !registry->registerCreator(creator, bmamba::trt::kPluginNamespace))
            bmamba::trt::logError("could not register the plugin creator");
    }
};
StaticRegistration const gStaticRegistration;
}  // namespace
#else
// Entry points of a plugin shared library: IPluginRegistry::loadLibrary (Python
// trt.get_plugin_registry().load_library) and trtexec --dynamicPlugins.
// TENSORRTAPI is empty outside TensorRT's own build; the library is built with hidden visibility.
#define BMAMBA_TRT_EXPORT __attribute__((visibility("default")))

extern "C" BMAMBA_TRT_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
    bmamba::trt::gLoggerFinder = finder;
}

extern "C" BMAMBA_TRT_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
    static bmamba::trt::SSDChunkScanPluginCreator creator;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator};
    nbCreators = 1;
    return creators;
}
#endif
