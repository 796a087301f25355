"""bmamba export: graph structure, metadata, manifest, errors, and the command line."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
import torch
import typer
from typer.testing import CliRunner

from biomamba import BioMamba, TransformerBaseline
from biomamba.checkpoint import CheckpointError
from biomamba.export.onnx_export import (
    ExportError,
    check_graph,
    export_model,
    graph_stats,
    register_onnx_schema,
)
from biomamba.runtime.durations import DurationError, parse_duration
from biomamba.runtime.manifest import read_manifest
from conftest import perturb_

CLASSES = ["frog", "bird", "insect"]


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = perturb_(BioMamba.from_preset("tiny", task="detect", classes=CLASSES), 0.05).eval()
    return model.save(tmp_path_factory.mktemp("ckpt") / "run1")


@pytest.fixture(scope="module")
def exports(checkpoint, tmp_path_factory):
    """(variant, fp16) -> export folder, each exported once for the module."""
    cache = {}

    def get(variant: str, fp16: bool = False):
        if (variant, fp16) not in cache:
            out = tmp_path_factory.mktemp(f"{variant}{'16' if fp16 else '32'}")
            cache[variant, fp16] = export_model(checkpoint, out, variant=variant, fp16=fp16, chunk_s=7.3)
        return cache[variant, fp16]

    return get


def load(folder, name="mamba.onnx"):
    return onnx.load(str(folder / name))


def dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def elem_type(value_info):
    return value_info.type.tensor_type.elem_type


# -- graph structure --------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["portable", "plugin"])
def test_graphs_pass_checker_and_strict_shape_inference(exports, variant):
    folder = exports(variant)
    register_onnx_schema()
    for name in ("frontend.onnx", "mamba.onnx"):
        onnx.checker.check_model(str(folder / name), full_check=True)
        onnx.shape_inference.infer_shapes(load(folder, name), strict_mode=True)


def test_portable_graph_is_loop_free_and_finite(exports):
    proto = load(exports("portable"))
    ops = {n.op_type for n in proto.graph.node}
    assert not ops & {"Loop", "Scan", "CumSum", "Einsum", "If", "SSDChunkScan"}
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
    for tensor in proto.graph.initializer:
        a = onnx.numpy_helper.to_array(tensor)
        assert a.dtype.kind != "f" or np.isfinite(a).all(), tensor.name
    for node in proto.graph.node:
        if node.op_type == "Constant":
            a = onnx.numpy_helper.to_array(node.attribute[0].t)
            assert a.dtype.kind != "f" or np.isfinite(a).all(), node.name


def test_plugin_graph_has_one_scan_node_per_layer(exports, checkpoint):
    proto = load(exports("plugin"))
    n_layers = BioMamba.load(checkpoint).config.n_layers
    scans = [n for n in proto.graph.node if n.op_type == "SSDChunkScan"]
    assert len(scans) == n_layers
    for node in scans:
        assert node.domain == "bmamba"
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs == {"plugin_version": b"1", "plugin_namespace": b"bmamba"}
        assert len(node.input) == 8 and len(node.output) == 2
    assert {(o.domain, o.version) for o in proto.opset_import} >= {("bmamba", 1), ("", 17)}
    assert not proto.functions
    # No decomposed scan left behind: the triangular matmuls of ssd_chunked are gone.
    assert not any(n.op_type == "Clip" for n in proto.graph.node)


def test_plugin_scan_inputs_have_the_op_dtypes(exports):
    register_onnx_schema()
    for fp16, io in ((False, onnx.TensorProto.FLOAT), (True, onnx.TensorProto.FLOAT16)):
        proto = onnx.shape_inference.infer_shapes(load(exports("plugin", fp16)), strict_mode=True)
        types = {v.name: elem_type(v) for v in [*proto.graph.value_info, *proto.graph.input]}
        types.update({t.name: t.data_type for t in proto.graph.initializer})
        for node in (n for n in proto.graph.node if n.op_type == "SSDChunkScan"):
            got = [types[name] for name in node.input]
            f32 = onnx.TensorProto.FLOAT
            assert got == [io, io, f32, io, io, f32, f32, f32]


@pytest.mark.parametrize("fp16", [False, True])
def test_graph_inputs_and_outputs(exports, checkpoint, fp16):
    folder = exports("portable", fp16)
    model = BioMamba.load(checkpoint)
    io = onnx.TensorProto.FLOAT16 if fp16 else onnx.TensorProto.FLOAT
    f32 = onnx.TensorProto.FLOAT

    front = load(folder, "frontend.onnx").graph
    assert [i.name for i in front.input] == ["audio"] and elem_type(front.input[0]) == f32
    assert dims(front.input[0]) == ["batch", "samples"]
    assert [o.name for o in front.output] == ["frames"] and elem_type(front.output[0]) == io
    assert dims(front.output[0]) == ["batch", "frames", model.config.d_model]

    graph = load(folder).graph
    inputs = {i.name: i for i in graph.input}
    outputs = {o.name: o for o in graph.output}
    assert dims(inputs["frames"]) == ["batch", "frames", model.config.d_model]
    assert elem_type(inputs["frames"]) == io
    for i, layer in enumerate(model.layers):
        m = layer.mixer
        expected = {f"conv_state_{i}": ["batch", m.conv_dim, m.d_conv - 1],
                    f"ssm_state_{i}": ["batch", m.nheads, m.headdim, m.d_state]}
        for name, shape in expected.items():
            assert dims(inputs[name]) == shape and elem_type(inputs[name]) == f32
            assert dims(outputs[name + "_out"]) == shape and elem_type(outputs[name + "_out"]) == f32
    assert dims(outputs["logits"]) == ["batch", "frames", len(CLASSES)]
    assert dims(outputs["embeddings"]) == ["batch", "frames", model.config.d_model]
    assert elem_type(outputs["logits"]) == io and elem_type(outputs["embeddings"]) == io
    assert len(inputs) == 1 + 2 * len(model.layers)


def test_fp16_weights_are_half(exports):
    folder = exports("portable", True)
    initializers = [*load(folder).graph.initializer, *load(folder, "frontend.onnx").graph.initializer]
    matrices = [t for t in initializers if len(t.dims) >= 2 and np.prod(t.dims) > 64]
    assert len(matrices) >= 13          # 7 front-end convs + projection, 2 x (in, conv, out), head
    assert all(t.data_type == onnx.TensorProto.FLOAT16 for t in matrices), \
        [t.name for t in matrices if t.data_type != onnx.TensorProto.FLOAT16]
    # float32 vectors are allowed (the per-head A, D, dt_bias; norm weights the graph upcasts),
    # but only holding float16 values: the weights themselves went through float16.
    for t in initializers:
        if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) > 64:
            a = onnx.numpy_helper.to_array(t)
            assert np.array_equal(a.astype(np.float16).astype(np.float32), a), t.name


def test_export_without_a_head_has_no_logits(tmp_path):
    model = perturb_(BioMamba.from_preset("tiny", task="embed")).eval()
    folder = export_model(model, tmp_path / "embed")
    outputs = [o.name for o in load(folder).graph.output]
    assert outputs[0] == "embeddings" and "logits" not in outputs
    assert read_manifest(folder).outputs == ("embeddings",)


# -- metadata and manifest ------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["portable", "plugin"])
def test_metadata_carries_the_contract(exports, checkpoint, variant):
    folder = exports(variant)
    model = BioMamba.load(checkpoint)
    for name in ("frontend.onnx", "mamba.onnx"):
        meta = {p.key: p.value for p in load(folder, name).metadata_props}
        assert meta["hop"] == "320" and meta["context"] == "80" and meta["sample_rate"] == "16000"
        assert meta["chunk_frames"] == str(round(7.3 * 50))
        assert meta["n_layers"] == str(model.config.n_layers)
        assert json.loads(meta["classes"]) == CLASSES
        assert meta["task"] == "detect" and meta["preset"] == "tiny" and meta["variant"] == variant
        assert meta["source_sha256"] == sha256(checkpoint / "model.safetensors")
        states = json.loads(meta["states"])
        assert [s["name"] for s in states][:2] == ["conv_state_0", "ssm_state_0"]
        assert all(s["dtype"] == "float32" and s["shape"][0] == "batch" for s in states)
        assert meta["bmamba_version"]


def test_manifest_and_the_copied_checkpoint(exports, checkpoint):
    folder = exports("portable")
    m = read_manifest(folder, verify_hashes=True)
    assert (m.preset, m.task, m.classes, m.variant, m.precision, m.opset) == \
        ("tiny", "detect", tuple(CLASSES), "portable", "fp32", 17)
    assert (m.hop, m.context, m.sample_rate, m.chunk_frames) == (320, 80, 16000, 365)
    assert m.thresholds == {c: 0.5 for c in CLASSES}
    assert m.graphs["mamba"].sha256 == sha256(folder / "mamba.onnx")
    assert m.source_sha256 == sha256(checkpoint / "model.safetensors")
    raw = json.loads((folder / "model.json").read_text())
    assert raw["states"][1] == {"name": "ssm_state_0", "shape": ["batch", 8, 16, 16], "dtype": "float32"}
    original, copy = BioMamba.load(checkpoint), BioMamba.load(folder)
    for (k, a), (_, b) in zip(original.state_dict().items(), copy.state_dict().items()):
        assert torch.equal(a, b), k


def test_opset_18(checkpoint, tmp_path):
    folder = export_model(checkpoint, tmp_path / "o18", opset=18)
    for name in ("frontend.onnx", "mamba.onnx"):
        proto = load(folder, name)
        assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [18]
        check_graph(folder / name, variant="portable", n_layers=0)
    assert read_manifest(folder).opset == 18


def test_graph_stats(exports):
    stats = graph_stats(exports("plugin") / "mamba.onnx")
    assert stats["ops"]["bmamba::SSDChunkScan"] == 2
    assert stats["nodes"] == sum(stats["ops"].values()) and stats["bytes"] > 0


def test_check_graph_rejects_a_loop(tmp_path):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3])
    graph = onnx.helper.make_graph([onnx.helper.make_node("CumSum", ["x", "axis"], ["y"])], "g", [x], [y],
                                   [onnx.numpy_helper.from_array(np.array(0, np.int64), "axis")])
    path = tmp_path / "cumsum.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ExportError, match="CumSum"):
        check_graph(path, variant="portable", n_layers=0)


# -- errors ------------------------------------------------------------------------------------------------


def test_bad_checkpoint_path(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        export_model(tmp_path / "missing", tmp_path / "out")


def test_transformer_checkpoint_is_refused(tmp_path):
    path = TransformerBaseline.from_preset("tiny", classes=["a"]).save(tmp_path / "tf")
    with pytest.raises(ExportError, match="Transformer baseline.*cannot stream"):
        export_model(path, tmp_path / "out")


@pytest.mark.parametrize("opset", [13, 16, 19])
def test_unsupported_opset(checkpoint, tmp_path, opset):
    with pytest.raises(ExportError, match=f"opset {opset} is not supported; choose one of 17, 18"):
        export_model(checkpoint, tmp_path / "out", opset=opset)


def test_unknown_variant(checkpoint, tmp_path):
    with pytest.raises(ExportError, match="unknown variant 'fast'"):
        export_model(checkpoint, tmp_path / "out", variant="fast")


# -- durations -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [("30s", 30.0), ("2m", 120.0), ("1500", 1500.0), ("7.3s", 7.3),
                                           (" 1.5 m ", 90.0), ("0.5", 0.5), (45, 45.0)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text, message", [("1500f", "frames are not accepted"), ("100 frames", "frames"),
                                           ("2h", "unit 'h'"), ("0", "positive"), ("-3s", "not a duration"),
                                           ("abc", "not a duration"), ("", "not a duration"),
                                           ("30ms", "unit 'ms'")])
def test_parse_duration_rejects(text, message):
    with pytest.raises(DurationError, match=message) as info:
        parse_duration(text, name="--chunk")
    assert str(info.value).startswith("--chunk: ")


# -- command line ---------------------------------------------------------------------------------------


@pytest.fixture
def cli():
    from biomamba.cli import cmd_export

    app = typer.Typer()
    cmd_export.register(app)

    @app.callback()
    def main():  # a group, so that `export` is named as in `bmamba export`
        pass

    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["export", *map(str, args)])


def test_cli_exports(cli, checkpoint, tmp_path):
    result = cli(checkpoint, "--out", tmp_path / "e", "--variant", "plugin", "--chunk", "2m", "--opset", "18")
    assert result.exit_code == 0, result.output
    m = read_manifest(tmp_path / "e")
    assert (m.variant, m.opset, m.chunk_frames) == ("plugin", 18, 6000)
    assert "mamba.onnx" in result.output


def test_cli_out_holding_someone_elses_files_is_refused(cli, checkpoint, tmp_path):
    # A folder with its own config.json (or another checkpoint's weights) would be overwritten.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"mine": 1}\n')
    result = cli(checkpoint, "--out", mine)
    assert result.exit_code == 2, result.output
    assert f"--out {mine} holds config.json, and it is neither an earlier export nor the checkpoint" in \
        " ".join(result.stderr.split())
    assert (mine / "config.json").read_text() == '{"mine": 1}\n' and not (mine / "mamba.onnx").exists()
    (tmp_path / "f").write_text("x")
    assert cli(checkpoint, "--out", tmp_path / "f").exit_code == 2
    # an earlier export, a folder with other files only, and the checkpoint itself are fine
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.md").write_text("notes\n")
    for out in (tmp_path / "e", tmp_path / "e", tmp_path / "notes"):
        assert cli(checkpoint, "--out", out).exit_code == 0
    assert (tmp_path / "notes" / "README.md").read_text() == "notes\n"


def test_cli_default_out_folder(cli, checkpoint):
    result = cli(checkpoint)
    assert result.exit_code == 0, result.output
    assert read_manifest(checkpoint.with_name(checkpoint.name + "-export")).variant == "portable"


@pytest.mark.parametrize("args, code, message", [
    (["--opset", "19"], 2, "--opset 19 is not supported; use 17 or 18"),
    (["--chunk", "1500f"], 2, "frames are not accepted"),
    (["--variant", "fast"], 2, "choose portable or plugin"),
    (["--trt", "--variant", "portable"], 2, "--trt builds engines from the plugin variant"),
    (["--no-onnx"], 2, "nothing to do"),
])
def test_cli_usage_errors(cli, checkpoint, tmp_path, args, code, message):
    result = cli(checkpoint, "--out", tmp_path / "e", *args)
    assert result.exit_code == code
    assert message in result.stderr
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1


def test_cli_bad_checkpoint_path(cli, tmp_path):
    result = cli(tmp_path / "nope")
    assert result.exit_code == 2
    assert f"{tmp_path / 'nope'}: no such checkpoint folder" in result.stderr


def test_cli_transformer_checkpoint(cli, tmp_path):
    path = TransformerBaseline.from_preset("tiny", classes=["a"]).save(tmp_path / "tf")
    result = cli(path, "--out", tmp_path / "e")
    assert result.exit_code == 1
    assert "Transformer baseline" in result.stderr and "Traceback" not in result.output


def test_cli_not_a_checkpoint(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    result = cli(tmp_path / "empty", "--out", tmp_path / "e")
    assert result.exit_code == 1
    assert "not a bmamba checkpoint" in result.stderr


def test_cli_trt_missing(cli, checkpoint, tmp_path):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorrt is installed: the missing-TensorRT message cannot be shown")
    result = cli(checkpoint, "--out", tmp_path / "e", "--trt")
    assert result.exit_code == 1
    assert "pip install tensorrt" in result.stderr and "JetPack" in result.stderr
    assert not (tmp_path / "e").exists()       # failed before any export work
