"""Run the plugin variant (``bmamba::SSDChunkScan`` nodes) under onnxruntime, on the CPU.

The op's computation is ``biomamba.runtime.ssd_numpy.ssd_scan``; this module only registers it as
an onnxruntime custom op through onnxruntime-extensions' Python ops (``pip install
onnxruntime-extensions``). Torch-free: the runtime imports it for plugin exports.

onnxruntime-extensions serves Python ops in one domain only, ``ai.onnx.contrib``, and types each
op's inputs when it is defined. So ``ort_compatible`` rewrites, in a copy of the model in memory,
each ``bmamba::SSDChunkScan`` node into ``ai.onnx.contrib::SSDChunkScan``; the file on disk keeps
the op TensorRT's parser expects. Python ops take no float16 tensors (onnxruntime-extensions
aborts the process on one), so in a float16 graph the copy casts x, dt, B, C to float32 before the
node and y back to float16 after it: the op's arithmetic is float32 by contract, so this computes
the same numbers as a float16-I/O kernel. This is a test and fallback path (every call copies its
tensors through Python lists); on a CPU the portable variant is the fast one.
"""

from __future__ import annotations

import os

PLUGIN_DOMAIN = "bmamba"
PLUGIN_OP = "SSDChunkScan"
ORT_DOMAIN = "ai.onnx.contrib"          # onnxruntime_extensions.default_opset_domain()
ORT_OP = "SSDChunkScan"
HALF_IO_INPUTS = (0, 1, 3, 4)            # x, dt, B, C: the op's inputs in the I/O dtype
INSTALL_HINT = ("the plugin variant runs under onnxruntime only through onnxruntime-extensions: "
                "pip install onnxruntime-extensions onnx (or export the portable variant)")

_REGISTERED = False


class CustomOpUnavailable(RuntimeError):
    """onnxruntime-extensions or onnx is missing; the message says what to install."""


def register_ssd_op() -> str:
    """Define the Python ops (once per process); return the library path for SessionOptions."""
    global _REGISTERED
    try:
        from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op
    except ImportError:
        raise CustomOpUnavailable(INSTALL_HINT) from None
    if not _REGISTERED:
        from .ssd_numpy import ssd_scan

        f32 = PyCustomOpDef.dt_float
        attrs = {"plugin_version": PyCustomOpDef.dt_string, "plugin_namespace": PyCustomOpDef.dt_string}

        @onnx_op(op_type=ORT_OP, inputs=[f32] * 8, outputs=[f32, f32], attrs=attrs)
        def ssd_chunk_scan(x, dt, A, B, C, D, dt_bias, initial_state, **_attrs):
            return ssd_scan(x, dt, A, B, C, D, dt_bias, initial_state)

        _REGISTERED = True
    return get_library_path()


def ort_compatible(model, *, fp16: bool):
    """A copy of the ONNX model (ModelProto or path) with the scan nodes in onnxruntime-extensions' domain."""
    try:
        import onnx
    except ImportError:
        raise CustomOpUnavailable(INSTALL_HINT) from None
    proto = onnx.load(os.fspath(model)) if isinstance(model, str | os.PathLike) else model
    proto = type(proto).FromString(proto.SerializeToString())      # never touch the caller's model
    nodes = []
    for node in proto.graph.node:
        if node.domain != PLUGIN_DOMAIN or node.op_type != PLUGIN_OP:
            nodes.append(node)
            continue
        node.domain, node.op_type = ORT_DOMAIN, ORT_OP
        if not fp16:
            nodes.append(node)
            continue
        tag = node.name or node.output[0]
        for i in HALF_IO_INPUTS:
            cast = f"{tag}/in{i}_float"
            nodes.append(onnx.helper.make_node("Cast", [node.input[i]], [cast], to=onnx.TensorProto.FLOAT))
            node.input[i] = cast
        y = node.output[0]
        node.output[0] = f"{tag}/y_float"
        nodes.append(node)
        nodes.append(onnx.helper.make_node("Cast", [node.output[0]], [y], to=onnx.TensorProto.FLOAT16))
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    imports = [o for o in proto.opset_import if o.domain not in (PLUGIN_DOMAIN, ORT_DOMAIN)]
    del proto.opset_import[:]
    proto.opset_import.extend([*imports, onnx.helper.make_operatorsetid(ORT_DOMAIN, 1)])
    return proto


def plugin_session(model, sess_options=None, providers=None, *, fp16: bool):
    """An onnxruntime InferenceSession for a plugin-variant graph (path or ModelProto)."""
    import onnxruntime as ort

    library = register_ssd_op()
    options = sess_options if sess_options is not None else ort.SessionOptions()
    options.register_custom_ops_library(library)
    proto = ort_compatible(model, fp16=fp16)
    return ort.InferenceSession(proto.SerializeToString(), options,
                                providers=providers or ["CPUExecutionProvider"])
