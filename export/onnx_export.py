"""BioMamba -> the two ONNX graphs of an export folder (DESIGN.md, "ONNX and TensorRT").

    frontend.onnx   audio [B, 320*T + 80] float32 -> frames [B, T, d_model]
    mamba.onnx      frames [B, T, d_model], conv_state_{i} [B, conv_dim, d_conv-1],
                    ssm_state_{i} [B, H, P, N] (float32) for every layer i
                    -> logits [B, T, C] (models with a head), embeddings [B, T, d_model]
                       (hidden states after norm_f), attention [B, T] (attention pooling only),
                       conv_state_{i}_out, ssm_state_{i}_out

B and T are dynamic. Two variants of the scan inside mamba.onnx:

- ``portable``: the PyTorch model traced as is; ``biomamba.ssd.ssd_chunked`` is written so that this
  gives standard, loop-free ONNX (checked here: no Loop/Scan/CumSum/Einsum node, no -inf).
- ``plugin``: each layer's scan is one ``bmamba::SSDChunkScan`` node (op version 1, attributes
  ``plugin_version`` "1" and ``plugin_namespace`` "bmamba") for the TensorRT plugin of runtime/csrc;
  onnxruntime runs it through ``biomamba.runtime.ort_custom_op``.

``fp16``: weights and frames/logits/embeddings in float16; audio and states stay float32 at the
graph boundary (cast inside), the SSD arithmetic, the norms' statistics and the per-head A, D,
dt_bias stay float32.

We trace with the TorchScript exporter (``dynamo=False``): the torch.export-based exporter, at
opset 17, fails while down-converting from its native opset 18 (a ReduceMean axes adapter in torch
2.13, after the invalid Split of earlier versions), and its custom ops need an onnxscript
translation table, where TorchScript's ``autograd.Function.symbolic`` emits the plugin node
directly. Two symbolic functions are supplied for the duration of an export (see
``_export_symbolics``): ``aten::rms_norm`` (no TorchScript symbolic below opset 23) and
``aten::unflatten`` (the stock one hides the axis from ONNX shape inference, so the exporter falls
back to the traced sizes and freezes batch and time).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import warnings
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from biomamba import __version__
from biomamba.checkpoint import CONFIG, WEIGHTS, file_sha256
from biomamba.loading import load_model
from biomamba.model import BioMamba
from biomamba.runtime.manifest import (
    BATCH_DIM,
    FORMAT,
    FORMAT_VERSION,
    FileEntry,
    Manifest,
    StateSpec,
    write_manifest,
)
from biomamba.ssd import ssd_chunked
from biomamba.streaming import CONTEXT, HOP

SUPPORTED_OPSETS = (17, 18)
VARIANTS = ("portable", "plugin")
FRONTEND_FILE = "frontend.onnx"
MAMBA_FILE = "mamba.onnx"
PLUGIN_DOMAIN = "bmamba"
PLUGIN_OP = "SSDChunkScan"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "bmamba"
FORBIDDEN_PORTABLE_OPS = ("Loop", "Scan", "CumSum", "Einsum", "If")
DEFAULT_THRESHOLD = 0.5


class ExportError(ValueError):
    """An export that cannot be done; the message says why."""


# -- the graphs as modules ------------------------------------------------------------------------


class FrontendGraph(nn.Module):
    """audio [B, 320*T + 80] float32 -> frames [B, T, d_model] in the export dtype."""

    def __init__(self, model: BioMamba, dtype: torch.dtype):
        super().__init__()
        self.frontend, self.dtype = model.frontend, dtype

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.frontend(audio.to(self.dtype))


class MambaGraph(nn.Module):
    """frames [B, T, d_model] + flat states (conv_0, ssm_0, conv_1, ...) -> outputs + new states."""

    def __init__(self, model: BioMamba):
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor, *flat_state: torch.Tensor):
        state = [(flat_state[2 * i], flat_state[2 * i + 1]) for i in range(len(flat_state) // 2)]
        hidden, new_state = self.model.encode_with_state(frames, state)
        outputs = self.model.chunk_outputs(hidden).values()   # the same dict run_chunk returns
        return (*outputs, *(t for pair in new_state for t in pair))


def output_names(model: BioMamba) -> list[str]:
    """Names of mamba.onnx's non-state outputs, in graph order (``BioMamba.output_names``)."""
    return model.output_names()


def state_specs(model: BioMamba) -> list[StateSpec]:
    """The carried state of every layer, in graph input order: conv_state_i then ssm_state_i."""
    specs = []
    for i, layer in enumerate(model.layers):
        m = layer.mixer
        specs.append(StateSpec(f"conv_state_{i}", (BATCH_DIM, m.conv_dim, m.d_conv - 1)))
        specs.append(StateSpec(f"ssm_state_{i}", (BATCH_DIM, m.nheads, m.headdim, m.d_state)))
    return specs


# -- the plugin node ------------------------------------------------------------------------------


class SSDChunkScanFunction(torch.autograd.Function):
    """Runs ``ssd_chunked`` in PyTorch; exports as one ``bmamba::SSDChunkScan`` node."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, dt_bias, initial_state, chunk_size: int):
        return ssd_chunked(x, dt, A, B, C, D, dt_bias, initial_state, chunk_size)

    @staticmethod
    def symbolic(g, x, dt, A, B, C, D, dt_bias, initial_state, chunk_size):
        y, final_state = g.op(f"{PLUGIN_DOMAIN}::{PLUGIN_OP}", x, dt, A, B, C, D, dt_bias, initial_state,
                              plugin_version_s=PLUGIN_VERSION, plugin_namespace_s=PLUGIN_NAMESPACE,
                              outputs=2)
        # Keep the dtypes and the head sizes, never a traced batch or time size.
        y.setType(_with_dynamic_leading(x.type(), 2))
        final_state.setType(_with_dynamic_leading(initial_state.type(), 1))
        return y, final_state


def _with_dynamic_leading(tensor_type, n_dynamic: int):
    sizes = tensor_type.varyingSizes()
    if sizes is None:
        return tensor_type
    return tensor_type.with_sizes([None] * n_dynamic + list(sizes[n_dynamic:]))


def plugin_scan(chunk_size: int):
    """A ``Mamba2.scan_override`` emitting the plugin node, with the op's float32 parameters."""

    def scan(x, dt, A, B, C, D, dt_bias, ssm_state):
        return SSDChunkScanFunction.apply(x, dt, A.float(), B, C, D.float(), dt_bias.float(),
                                          ssm_state.float(), chunk_size)

    return scan


def register_onnx_schema() -> None:
    """Teach onnx's checker and shape inference the op ``bmamba::SSDChunkScan`` v1 (idempotent)."""
    import onnx
    from onnx.defs import OpSchema

    if onnx.defs.has(PLUGIN_OP, PLUGIN_DOMAIN):
        return
    param = OpSchema.FormalParameter
    io, f32 = "T", "tensor(float)"
    schema = OpSchema(
        PLUGIN_OP, PLUGIN_DOMAIN, 1,
        "The SSD chunk scan of Mamba2 (see biomamba/ssd.py); y includes D*x.",
        inputs=[param("x", io), param("dt", io), param("A", f32), param("B", io), param("C", io),
                param("D", f32), param("dt_bias", f32), param("initial_state", f32)],
        outputs=[param("y", io), param("final_state", f32)],
        type_constraints=[(io, ["tensor(float)", "tensor(float16)"], "I/O dtype")],
        attributes=[OpSchema.Attribute("plugin_version", OpSchema.AttrType.STRING, "op version", required=False),
                    OpSchema.Attribute("plugin_namespace", OpSchema.AttrType.STRING, "plugin namespace",
                                       required=False)],
    )

    def infer(ctx):
        ctx.set_output_type(0, ctx.get_input_type(0))     # y: dtype and shape of x
        ctx.set_output_type(1, ctx.get_input_type(7))     # final_state: as initial_state

    schema.set_type_and_shape_inference_function(infer)
    onnx.defs.register_schema(schema)


# -- symbolic functions for the TorchScript exporter ---------------------------------------------


def _rms_norm_symbolic(g, x, normalized_shape, weight, eps):
    """aten::rms_norm decomposed, statistics in float32 (a float16 sum of squares overflows at 256)."""
    from torch.onnx import symbolic_helper as sh

    n_axes = len(sh._get_const(normalized_shape, "is", "normalized_shape"))
    eps = sh._maybe_get_const(eps, "f")
    eps = float(torch.finfo(torch.float32).eps) if eps is None or sh._is_value(eps) else float(eps)
    half = x.type().scalarType() == "Half"
    xf = g.op("Cast", x, to_i=1) if half else x                      # 1 = FLOAT
    axes = list(range(-n_axes, 0))
    squares = g.op("Mul", xf, xf)
    if g.opset >= 18:
        mean = g.op("ReduceMean", squares, g.op("Constant", value_t=torch.tensor(axes)), keepdims_i=1)
    else:
        mean = g.op("ReduceMean", squares, axes_i=axes, keepdims_i=1)
    rms = g.op("Sqrt", g.op("Add", mean, g.op("Constant", value_t=torch.tensor(eps, dtype=torch.float32))))
    y = g.op("Div", xf, rms)
    if not sh._is_none(weight):
        y = g.op("Mul", y, g.op("Cast", weight, to_i=1) if half else weight)
    return g.op("Cast", y, to_i=10) if half else y                   # 10 = FLOAT16


def _unflatten_symbolic(g, x, dim, sizes):
    """aten::unflatten as a Reshape whose kept axes ONNX shape inference can follow."""
    from torch.onnx import symbolic_helper as sh

    rank = sh._get_tensor_rank(x)
    dim = sh._get_const(dim, "i", "dim") % rank
    sizes = sh._get_const(sizes, "is", "sizes")
    shape = g.op("Shape", x)

    def dims(start, end):
        return g.op("Slice", shape, g.op("Constant", value_t=torch.tensor([start])),
                    g.op("Constant", value_t=torch.tensor([end])))

    parts = [dims(0, dim)] if dim > 0 else []
    parts.append(g.op("Constant", value_t=torch.tensor(sizes, dtype=torch.int64)))
    if dim + 1 < rank:
        parts.append(dims(dim + 1, rank))
    return g.op("Reshape", x, g.op("Concat", *parts, axis_i=0))


@contextlib.contextmanager
def _export_symbolics(opset: int):
    from torch.onnx import register_custom_op_symbolic, unregister_custom_op_symbolic

    table = {"aten::rms_norm": _rms_norm_symbolic, "aten::unflatten": _unflatten_symbolic}
    for name, fn in table.items():
        register_custom_op_symbolic(name, fn, opset)
    try:
        yield
    finally:
        for name in table:
            unregister_custom_op_symbolic(name, opset)


def _trace_to_onnx(module: nn.Module, args: tuple, path: Path, input_names: list[str],
                   output_names: list[str], dynamic_axes: dict, opset: int, plugin: bool = False) -> None:
    with _export_symbolics(opset), warnings.catch_warnings():
        # TracerWarnings come from shape checks in the model that hold for every input we export for.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(path), dynamo=False, opset_version=opset, input_names=input_names,
            output_names=output_names, dynamic_axes=dynamic_axes, do_constant_folding=True,
            custom_opsets={PLUGIN_DOMAIN: 1} if plugin else None,   # only where SSDChunkScan nodes are
        )


# -- loading --------------------------------------------------------------------------------------


def load_exportable(checkpoint_or_model) -> tuple[BioMamba, Path | None]:
    """(model, checkpoint folder or None). Raises ExportError for models that cannot stream."""
    source = None
    if isinstance(checkpoint_or_model, nn.Module):
        model = checkpoint_or_model
    else:
        source = Path(checkpoint_or_model)
        if source.is_file():
            source = source.parent
        model = load_model(source)        # CheckpointError (a ValueError) names the path and reason
    if not isinstance(model, BioMamba):
        arch = getattr(model, "architecture", type(model).__name__)
        where = f"{source}: " if source is not None else ""
        kind = "a Transformer baseline" if arch == "transformer" else f"a {arch!r} model"
        raise ExportError(f"{where}holds {kind}, which attends over the whole recording and cannot "
                          "stream chunk by chunk; only BioMamba models can be exported")
    return model, source


def _prepare(model: BioMamba, fp16: bool) -> BioMamba:
    """A copy in eval mode, in the export dtype; A_log, D, dt_bias stay float32 (the op's contract)."""
    model = copy.deepcopy(model).float().eval()
    if fp16:
        model.half()
        for layer in model.layers:
            for name in ("A_log", "D", "dt_bias"):
                getattr(layer.mixer, name).data = getattr(layer.mixer, name).data.float()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# -- export ---------------------------------------------------------------------------------------


def export_model(checkpoint_or_model, out_dir: str | os.PathLike, *, variant: str = "portable",
                 fp16: bool = False, opset: int = 17, chunk_s: float = 30.0) -> Path:
    """Export a BioMamba checkpoint folder (or model) into ``out_dir``; returns ``out_dir``.

    Writes frontend.onnx, mamba.onnx, model.json (see ``biomamba.runtime.manifest``), and copies
    the weights and config.json so that ``BioMamba.load(out_dir)`` works. ``chunk_s`` is the
    default chunk length (seconds) recorded for runtimes. Each graph is checked with
    ``onnx.checker`` (full check) and strict shape inference.
    """
    _require_onnx()
    if variant not in VARIANTS:
        raise ExportError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if opset not in SUPPORTED_OPSETS:
        raise ExportError(f"opset {opset} is not supported; choose one of "
                          f"{', '.join(map(str, SUPPORTED_OPSETS))}")
    model, source = load_exportable(checkpoint_or_model)
    rate = model.sample_rate
    chunk_frames = int(round(chunk_s * rate / HOP)) if np.isfinite(chunk_s) else 0
    if chunk_frames < 1:
        raise ExportError(f"chunk length {chunk_s!r} s is shorter than one frame ({HOP / rate} s)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.json").unlink(missing_ok=True)     # a half-written export never looks complete

    _copy_checkpoint(model, source, out)
    source_sha = file_sha256(out / WEIGHTS)

    dtype = torch.float16 if fp16 else torch.float32
    net = _prepare(model, fp16)
    if variant == "plugin":
        register_onnx_schema()
        for layer in net.layers:
            layer.mixer.scan_override = plugin_scan(layer.mixer.chunk_size)

    specs = state_specs(net)
    outputs = output_names(net)
    # Trace with a batch of 2 and a length that is not a whole number of scan chunks, so that no
    # size is mistaken for a constant and the padding branch of ssd_chunked is taken.
    batch, frames = 2, 2 * max(layer.mixer.chunk_size for layer in net.layers) + 3
    audio = torch.randn(batch, HOP * frames + CONTEXT)

    frontend_path, mamba_path = out / FRONTEND_FILE, out / MAMBA_FILE
    _trace_to_onnx(FrontendGraph(net, dtype), (audio,), frontend_path, ["audio"], ["frames"],
                   {"audio": {0: BATCH_DIM, 1: "samples"}, "frames": {0: BATCH_DIM, 1: "frames"}}, opset)

    states = [torch.zeros(s.concrete_shape(batch)) for s in specs]
    frame_input = torch.randn(batch, frames, net.config.d_model, dtype=dtype)
    time_axes = {name: {0: BATCH_DIM, 1: "frames"} for name in ["frames", *outputs]}
    state_axes = {name: {0: BATCH_DIM} for s in specs for name in (s.name, s.output_name)}
    _trace_to_onnx(MambaGraph(net), (frame_input, *states), mamba_path,
                   ["frames", *(s.name for s in specs)], [*outputs, *(s.output_name for s in specs)],
                   {**time_axes, **state_axes}, opset, plugin=variant == "plugin")

    manifest = Manifest(
        preset=model.preset, task=model.task, classes=tuple(model.classes), sample_rate=rate,
        hop=HOP, context=CONTEXT, chunk_frames=chunk_frames,
        thresholds={c: DEFAULT_THRESHOLD for c in model.classes}, variant=variant,
        precision="fp16" if fp16 else "fp32", opset=opset, d_model=model.config.d_model,
        n_layers=len(model.layers), graphs={}, states=tuple(specs), outputs=tuple(outputs),
        source_sha256=source_sha, bmamba_version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    for name, path in (("frontend", frontend_path), ("mamba", mamba_path)):
        _write_metadata(path, name, manifest)
        check_graph(path, variant=variant if name == "mamba" else "portable",
                    n_layers=manifest.n_layers if name == "mamba" else 0)
    graphs = {name: FileEntry(path.name, file_sha256(path))
              for name, path in (("frontend", frontend_path), ("mamba", mamba_path))}
    write_manifest(out, manifest.with_changes(graphs=graphs))
    return out


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ExportError("exporting needs the onnx package: pip install 'bmamba[train]'") from None


def _copy_checkpoint(model: BioMamba, source: Path | None, out: Path) -> None:
    """Put model.safetensors + config.json in the export folder (copy, or save an in-memory model)."""
    if source is None:
        model.save(out)
        return
    for name in (WEIGHTS, CONFIG):
        src, dst = source / name, out / name
        if dst.exists() and dst.samefile(src):
            continue
        tmp = dst.with_name(name + ".tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def graph_metadata(manifest: Manifest, graph: str) -> dict[str, str]:
    """The contract written into each graph's metadata_props (strings; JSON for lists)."""
    return {
        "bmamba_format": f"{FORMAT}/{FORMAT_VERSION}", "graph": graph,
        "bmamba_version": manifest.bmamba_version, "preset": str(manifest.preset), "task": manifest.task,
        "classes": json.dumps(list(manifest.classes)), "sample_rate": str(manifest.sample_rate),
        "hop": str(manifest.hop), "context": str(manifest.context),
        "chunk_frames": str(manifest.chunk_frames), "n_layers": str(manifest.n_layers),
        "d_model": str(manifest.d_model), "states": json.dumps([s.to_dict() for s in manifest.states]),
        "outputs": json.dumps(list(manifest.outputs)), "variant": manifest.variant,
        "precision": manifest.precision, "source_sha256": manifest.source_sha256,
    }


def _set_state_output_shapes(proto, states) -> None:
    """Declare the state outputs' static sizes (the tracer leaves the conv state's width symbolic,
    as it comes from a slice with a computed start)."""
    shapes = {s.output_name: s.shape for s in states}
    for output in proto.graph.output:
        if output.name in shapes:
            for dim, size in zip(output.type.tensor_type.shape.dim, shapes[output.name]):
                if isinstance(size, int):
                    dim.Clear()
                    dim.dim_value = size
                else:
                    dim.dim_param = size


def _write_metadata(path: Path, graph: str, manifest: Manifest) -> None:
    import onnx

    proto = onnx.load(str(path))
    _set_state_output_shapes(proto, manifest.states)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, graph_metadata(manifest, graph))
    proto.producer_name, proto.producer_version = "bmamba", __version__
    proto.doc_string = f"bmamba {graph} graph ({manifest.variant}, {manifest.precision})"
    onnx.save(proto, str(path))


# -- checks and statistics ------------------------------------------------------------------------


def op_counts(path: str | os.PathLike) -> Counter:
    """Node count per op type (``domain::op`` outside the default domain) of an ONNX file."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return Counter(f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                   for n in proto.graph.node)


def non_finite_constants(proto) -> list[str]:
    """Names of initializers and Constant nodes holding inf or NaN."""
    from onnx import numpy_helper

    bad = [t.name for t in proto.graph.initializer
           if numpy_helper.to_array(t).dtype.kind == "f" and not np.isfinite(numpy_helper.to_array(t)).all()]
    for node in proto.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.HasField("t"):
                    a = numpy_helper.to_array(attr.t)
                    if a.dtype.kind == "f" and not np.isfinite(a).all():
                        bad.append(node.name or node.output[0])
    return bad


def check_graph(path: str | os.PathLike, *, variant: str, n_layers: int) -> None:
    """onnx.checker (full) + strict shape inference + the variant's structure. Raises ExportError."""
    import onnx

    register_onnx_schema()
    path = Path(path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
        onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"{path}: invalid ONNX graph ({e})") from None
    proto = onnx.load(str(path))
    counts = op_counts(path)
    forbidden = sorted(op for op in counts if op in FORBIDDEN_PORTABLE_OPS)
    if forbidden:
        raise ExportError(f"{path}: holds {forbidden} nodes; the graph must be loop-free")
    bad = non_finite_constants(proto)
    if bad:
        raise ExportError(f"{path}: constants with inf/NaN ({bad[:3]})")
    scans = [n for n in proto.graph.node if n.op_type == PLUGIN_OP]
    if variant == "portable" and scans:
        raise ExportError(f"{path}: portable graph holds {PLUGIN_OP} nodes")
    if variant == "plugin":
        if len(scans) != n_layers or any(n.domain != PLUGIN_DOMAIN for n in scans):
            raise ExportError(f"{path}: expected {n_layers} {PLUGIN_DOMAIN}::{PLUGIN_OP} nodes, "
                              f"found {len(scans)}")
        if any(f.name == PLUGIN_OP for f in proto.functions):
            raise ExportError(f"{path}: carries a local function named {PLUGIN_OP} (TensorRT's parser "
                              "might pick it over the plugin)")


def graph_stats(path: str | os.PathLike) -> dict:
    """Size in bytes, node count and op histogram of an ONNX file (for reports)."""
    counts = op_counts(path)
    return {"bytes": Path(path).stat().st_size, "nodes": sum(counts.values()), "ops": dict(counts)}
