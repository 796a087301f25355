"""`bmamba export`: a checkpoint -> an export folder (ONNX graphs, optionally TensorRT engines)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from .common import fail


def default_out_dir(checkpoint: Path) -> Path:
    """Next to the checkpoint: ``runs/run1`` -> ``runs/run1-export``."""
    folder = checkpoint.parent if checkpoint.is_file() else checkpoint
    if not folder.name:  # "." or "..": name the folder itself
        folder = folder.resolve()
    return folder.with_name(folder.name + "-export")


def register(app: typer.Typer) -> None:
    @app.command()
    def export(
        checkpoint: Path = typer.Argument(..., help="Checkpoint folder (model.safetensors + config.json), "
                                          "or a train run folder (its best/, else last/)."),
        out: Path = typer.Option(None, help="Export folder (default: CHECKPOINT-export next to it)."),
        onnx: bool = typer.Option(True, "--onnx/--no-onnx", help="Write the ONNX graphs (--no-onnx --trt: "
                                  "build engines from an existing export in --out)."),
        trt: bool = typer.Option(False, "--trt", help="Also build TensorRT engines (plugin variant; run "
                                 "this on the GPU that will run them)."),
        fp16: bool = typer.Option(False, "--fp16", help="float16 weights and activations (state stays float32)."),
        variant: str = typer.Option(None, help="portable (standard ONNX ops) or plugin (SSDChunkScan "
                                    "nodes for TensorRT). Default: portable, plugin with --trt."),
        chunk: str = typer.Option("30s", help="Default audio per model call: 30s, 2m, or plain seconds."),
        plugin_lib: Path = typer.Option(None, "--plugin-lib", help="libbmamba_trt_plugin.so (default: "
                                        "$BMAMBA_TRT_PLUGIN, build/, /usr/local/lib)."),
        opset: int = typer.Option(17, help="ONNX opset: 17 or 18."),
    ) -> None:
        """Export a BioMamba checkpoint to ONNX (and TensorRT) for `bmamba detect --model`."""
        from biomamba.checkpoint import CONFIG, WEIGHTS
        from biomamba.info import run_checkpoint
        from biomamba.runtime.durations import DurationError, parse_duration

        try:
            chunk_s = parse_duration(chunk, name="--chunk")
        except DurationError as e:
            fail(str(e), usage=True)
        if opset not in (17, 18):
            fail(f"--opset {opset} is not supported; use 17 or 18", usage=True)
        if variant is None:
            variant = "plugin" if trt else "portable"
        if variant not in ("portable", "plugin"):
            fail(f"--variant {variant!r}: choose portable or plugin", usage=True)
        if trt and variant != "plugin":
            fail("--trt builds engines from the plugin variant; drop --variant portable", usage=True)
        if not onnx and not trt:
            fail("nothing to do: --no-onnx without --trt", usage=True)
        if not checkpoint.exists():
            fail(f"{checkpoint}: no such checkpoint folder", usage=True)
        if checkpoint.is_file() and checkpoint.name not in (CONFIG, WEIGHTS):
            fail(f"{checkpoint}: a file, not a checkpoint; give the folder that holds {WEIGHTS} and "
                 f"{CONFIG} (bmamba train writes them to RUN/best/ and RUN/last/)", usage=True)
        out_dir = out if out is not None else default_out_dir(checkpoint)
        checkpoint = run_checkpoint(checkpoint) or checkpoint  # a run folder: its best/, as eval takes
        if trt:
            _check_trt(plugin_lib)      # before minutes of export work

        if onnx:
            _check_out(out_dir, checkpoint)
            _export_onnx(checkpoint, out_dir, variant, fp16, opset, chunk_s)
        if trt:
            _build_trt(out_dir if (onnx or out is not None) else checkpoint, plugin_lib)


# What an export writes into its folder, over files of these names.
EXPORT_FILES = ("config.json", "model.safetensors", "model.json", "frontend.onnx", "mamba.onnx")


def _check_out(out_dir: Path, checkpoint: Path) -> None:
    """--out may be new, empty, an earlier export (its model.json, or the graphs of one that
    stopped before writing it), the checkpoint itself, or a folder holding none of `EXPORT_FILES`:
    a stranger's config.json there -- or another checkpoint, whose weights would be replaced by
    these -- is refused (bad usage, said before the export)."""
    if out_dir.exists() and not out_dir.is_dir():
        fail(f"--out {out_dir} is a file; name a folder", usage=True)
    if not out_dir.is_dir() or os.path.realpath(out_dir) == os.path.realpath(checkpoint):
        return
    if any((out_dir / name).is_file() for name in ("model.json", "frontend.onnx", "mamba.onnx")):
        return   # an earlier export, finished or not
    taken = [name for name in EXPORT_FILES if os.path.lexists(out_dir / name)]
    if taken:
        fail(f"--out {out_dir} holds {', '.join(taken)}, and it is neither an earlier export nor the "
             "checkpoint: the export would replace them. Choose a new or empty folder", usage=True)


def _export_onnx(checkpoint: Path, out_dir: Path, variant: str, fp16: bool, opset: int, chunk_s: float) -> None:
    try:
        from biomamba.checkpoint import CheckpointError
        from biomamba.export.onnx_export import ExportError, export_model, graph_stats
    except ImportError as e:
        fail(f"exporting needs the training extras ({e.name} is missing): pip install 'bmamba[train]'")
    try:
        folder = export_model(checkpoint, out_dir, variant=variant, fp16=fp16, opset=opset, chunk_s=chunk_s)
    except (CheckpointError, ExportError) as e:
        fail(str(e))
    except OSError as e:
        fail(f"{out_dir}: cannot write the export ({e.strerror or e})")
    precision = "fp16" if fp16 else "fp32"
    typer.echo(f"exported {checkpoint} -> {folder} ({variant}, {precision}, opset {opset})")
    for name in ("frontend.onnx", "mamba.onnx"):
        stats = graph_stats(folder / name)
        typer.echo(f"  {name}: {stats['bytes'] / 2**20:.1f} MiB, {stats['nodes']} nodes")


def _check_trt(plugin_lib: Path | None) -> None:
    from biomamba.runtime.backend_trt import (
        TensorRTUnavailable,
        find_plugin_library,
        import_tensorrt,
    )

    try:
        import_tensorrt()
        find_plugin_library(plugin_lib)
    except TensorRTUnavailable as e:
        fail(str(e))


def _build_trt(folder: Path, plugin_lib: Path | None) -> None:
    from biomamba.runtime.manifest import ManifestError

    try:
        from biomamba.export.trt_build import EngineBuildError, build_engine
        from biomamba.runtime.backend_trt import TensorRTUnavailable
    except ImportError as e:
        fail(f"building engines needs the training extras ({e.name} is missing): pip install 'bmamba[train]'")
    try:
        build_engine(folder, plugin_lib=plugin_lib)   # the export's precision
    except (TensorRTUnavailable, ManifestError) as e:
        fail(str(e))
    except EngineBuildError as e:
        fail(str(e))
    typer.echo(f"built TensorRT engines in {folder} (frontend.engine, mamba.engine)")
