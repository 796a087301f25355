// TensorRT plugin for bmamba::SSDChunkScan v1: a thin IPluginV3 wrapper around the C interface of
// the CUDA kernels (../ssd_scan.h).
//
// ONNX node: op_type "SSDChunkScan", domain "bmamba", attributes plugin_version "1" and
// plugin_namespace "bmamba", nothing else (the kernels pick their own tiling; the creator lists no
// fields, so the ONNX parser has none to miss).
//
// Inputs (linear layout):  0 x [B,T,H,P]  1 dt [B,T,H]  2 A [H]  3 B [B,T,G,N]  4 C [B,T,G,N]
//                          5 D [H]  6 dt_bias [H]  7 initial_state [B,H,P,N]
// Outputs:                 0 y [B,T,H,P]  1 final_state [B,H,P,N]
// x, dt, B, C and y share one dtype, float32 or float16; A, D, dt_bias and both states are float32.
// Batch and T may be dynamic; H, P, G, N are read at enqueue time too (any values the kernels take).
// Every size is checked against x and B (configurePlugin, onShapeChange and again in enqueue): a
// mismatch is an error, never an out-of-bounds access.
//
// Two libraries are built from this source (CMakeLists.txt), because IPluginRegistry::loadLibrary
// fails when the library's creators are already registered, which static registration would do:
// - libbmamba_trt_plugin.so: entry points getCreators / setLoggerFinder, no static registration;
//   for trt.get_plugin_registry().load_library(path), trtexec --dynamicPlugins and
//   --setPluginsToSerialize (the engine carries the library).
// - libbmamba_trt_plugin_static.so (BMAMBA_TRT_STATIC_REGISTRATION): registered under the
//   namespace "bmamba" when the library is loaded (ctypes.CDLL(path), trtexec --staticPlugins).
// Either way the creator is found as ("SSDChunkScan", "1", "bmamba").
//
// Written against TensorRT 10.3 (JetPack 6) and compile-checked against 10.3 and 11.1 headers; only
// API present since 10.0 is used (IPluginV3OneBuild v1, not the 10.3+ BuildV2 aliasing interface).
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <string>
#include <vector>

namespace bmamba {
namespace trt {

constexpr char const* kPluginName = "SSDChunkScan";
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "bmamba";

class SSDChunkScanPlugin final : public nvinfer1::IPluginV3,
                                 public nvinfer1::IPluginV3OneCore,
                                 public nvinfer1::IPluginV3OneBuild,
                                 public nvinfer1::IPluginV3OneRuntime {
public:
    // sm_count: SMs of the GPU the workspace is planned for (0: plan a single time segment).
    explicit SSDChunkScanPlugin(int32_t sm_count);
    SSDChunkScanPlugin(SSDChunkScanPlugin const& other);
    SSDChunkScanPlugin& operator=(SSDChunkScanPlugin const&) = delete;
    ~SSDChunkScanPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                            nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
                               nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                            nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs,
                            nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                            nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                   int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                            nvinfer1::DynamicPluginTensorDesc const* outputs,
                            int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
                          nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                    void const* const* inputs, void* const* outputs, void* workspace,
                    cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

    static constexpr int32_t kNbInputs = 8;
    static constexpr int32_t kNbOutputs = 2;

private:
    void buildFieldsToSerialize();

    int32_t mSmCount;    // serialized, so enqueue plans exactly what getWorkspaceSize sized
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

class SSDChunkScanPluginCreator final : public nvinfer1::IPluginCreatorV3One {
public:
    SSDChunkScanPluginCreator();
    ~SSDChunkScanPluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                      nvinfer1::TensorRTPhase phase) noexcept override;

private:
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

}  // namespace trt
}  // namespace bmamba
