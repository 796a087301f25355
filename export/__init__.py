"""bmamba export: PyTorch model -> ONNX graphs (portable and plugin variants) -> TensorRT engines.

    from biomamba.export import export_model, build_engine
    folder = export_model("checkpoints/run1", "exported/run1", variant="portable", fp16=False)

Names load lazily (torch only when an export name is used). The onnxruntime custom op lives in
``biomamba.runtime.ort_custom_op`` (export imports runtime, never the other way); its names are
served here too.
"""

_LAZY = {
    "export_model": "onnx_export",
    "ExportError": "onnx_export",
    "check_graph": "onnx_export",
    "graph_stats": "onnx_export",
    "op_counts": "onnx_export",
    "register_onnx_schema": "onnx_export",
    "SUPPORTED_OPSETS": "onnx_export",
    "VARIANTS": "onnx_export",
    "register_ssd_op": "biomamba.runtime.ort_custom_op",
    "ort_compatible": "biomamba.runtime.ort_custom_op",
    "plugin_session": "biomamba.runtime.ort_custom_op",
    "CustomOpUnavailable": "biomamba.runtime.ort_custom_op",
    "build_engine": "trt_build",
    "find_plugin_library": "trt_build",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = _LAZY[name] if "." in _LAZY[name] else f"biomamba.export.{_LAZY[name]}"
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'biomamba.export' has no attribute {name!r}")
