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

// Input and output positions.
enum : int32_t { kX = 0, kDt, kA, kB, kC, kD, kDtBias, kInitialState, kY, kFinalState };

int32_t deviceSmCount() noexcept {
    int32_t sms = 0;
    return bmamba_ssd_device_sm_count(&sms) == BMAMBA_SSD_OK ? sms : 0;
}

bool fitsInt(int64_t v) { return v >= 0 && v <= INT_MAX; }

// Ranks of the eight inputs.
constexpr int32_t kInputRanks[SSDChunkScanPlugin::kNbInputs] = {4, 3, 1, 4, 4, 1, 1, 4};

}  // namespace

// ---- plugin ----------------------------------------------------------------------------------------

SSDChunkScanPlugin::SSDChunkScanPlugin(int32_t chunk_size, int32_t sm_count)
    : mChunkSize(chunk_size), mSmCount(sm_count) {
    buildFieldsToSerialize();
}

SSDChunkScanPlugin::SSDChunkScanPlugin(SSDChunkScanPlugin const& other)
    : nvinfer1::IPluginV3(), nvinfer1::IPluginV3OneCore(), nvinfer1::IPluginV3OneBuild(),
      nvinfer1::IPluginV3OneRuntime(), mChunkSize(other.mChunkSize), mSmCount(other.mSmCount) {
    buildFieldsToSerialize();
}

void SSDChunkScanPlugin::buildFieldsToSerialize() {
    mFields.clear();
    mFields.emplace_back("chunk_size", &mChunkSize, PluginFieldType::kINT32, 1);
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
    for (int32_t i = 0; i < kNbInputs; ++i) {
        if (in[i].desc.dims.nbDims != kInputRanks[i]) {
            logError("input " + std::to_string(i) + " has rank " + std::to_string(in[i].desc.dims.nbDims) +
                     ", expected " + std::to_string(kInputRanks[i]));
            return -1;
        }
    }
    // Static sizes, where known (-1 = dynamic), must be ones the kernels take.
    int64_t const H = in[kX].max.d[2], P = in[kX].max.d[3], G = in[kB].max.d[2], N = in[kB].max.d[3];
    int const code = bmamba_ssd_check_shape(1, 1, static_cast<int>(std::min<int64_t>(H, INT_MAX)),
                                            static_cast<int>(std::min<int64_t>(P, INT_MAX)),
                                            static_cast<int>(std::min<int64_t>(G, INT_MAX)),
                                            static_cast<int>(std::min<int64_t>(N, INT_MAX)));
    if (code != BMAMBA_SSD_OK) {
        logError(std::string("sizes H=") + std::to_string(H) + " P=" + std::to_string(P) + " G=" +
                 std::to_string(G) + " N=" + std::to_string(N) + ": " + bmamba_ssd_error_string(code));
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
                                          nvinfer1::PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept {
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs) return -1;
    for (int32_t i = 0; i < kNbInputs; ++i)
        if (in[i].dims.nbDims != kInputRanks[i]) return -1;
    return 0;
}

int32_t SSDChunkScanPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
                                    nvinfer1::PluginTensorDesc const* /*outputDesc*/, void const* const* inputs,
                                    void* const* outputs, void* workspace, cudaStream_t stream) noexcept {
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
    // What an ONNX node may carry (onnx-tensorrt passes only listed fields). sm_count is internal:
    // it comes back through getFieldsToSerialize at deserialization.
    mFields.emplace_back("chunk_size", nullptr, PluginFieldType::kINT32, 1);
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
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
        int32_t chunkSize = 0;  // 0: not given
        int32_t smCount = 0;
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
            PluginField const& field = fc->fields[i];
            if (field.name == nullptr || field.data == nullptr || field.length < 1) continue;
            bool const isInt = field.type == PluginFieldType::kINT32;
            if (std::strcmp(field.name, "chunk_size") == 0 && isInt)
                chunkSize = *static_cast<int32_t const*>(field.data);
            else if (std::strcmp(field.name, "sm_count") == 0 && isInt)
                smCount = *static_cast<int32_t const*>(field.data);
        }
        if (chunkSize < 0) {
            logError("chunk_size must be >= 0");
            return nullptr;
        }
        // Building: plan for the GPU we build on. Deserializing: keep the count the build used.
        if (phase == nvinfer1::TensorRTPhase::kBUILD || smCount <= 0) smCount = deviceSmCount();
        return new SSDChunkScanPlugin(chunkSize, smCount);
    } catch (std::exception const& e) {
        logError(std::string("createPlugin failed: ") + e.what());
    }
    return nullptr;
}

}  // namespace trt
}  // namespace bmamba

#if defined(BMAMBA_TRT_STATIC_REGISTRATION)
// Registered when the library is loaded (ctypes.CDLL, trtexec --staticPlugins). The registry keys
// the creator by its own getPluginNamespace(), "bmamba".
using BmambaSSDChunkScanCreator = bmamba::trt::SSDChunkScanPluginCreator;
REGISTER_TENSORRT_PLUGIN(BmambaSSDChunkScanCreator);
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
