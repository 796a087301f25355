"""`bmamba bench`: memory and speed against the Transformer baseline and across lengths."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .common import check_result_path, fail, parse_list


def register(app: typer.Typer) -> None:
    @app.command()
    def bench(
        lengths: str = typer.Option("5,60,300,1000", help="Recording lengths in seconds, comma-separated."),
        models: str = typer.Option("biomamba,transformer", help="Models: biomamba, transformer."),
        preset: str = typer.Option("base", help="Model size: tiny, edge or base."),
        device: str = typer.Option("cpu", help="cpu or cuda."),
        plot: Path = typer.Option(None, help="Write a PNG of peak memory against length."),
        report: Path = typer.Option(None, help="Write the results as JSON."),
        timeout: float = typer.Option(3600.0, help="Seconds allowed per point before it is abandoned."),
    ) -> None:
        """Peak memory and time of one forward pass for each model and recording length.

        Every point runs in a fresh process. BioMamba runs twice per length: the whole recording in
        one pass, and in the exact long-recording mode (what detect and predict run: 30 s chunks
        with carried state, each blocked inside; the same numbers within 1e-5).
        """
        from rich.console import Console
        from rich.table import Table

        from biomamba.bench import SERIES, by_length, device_name, measure
        from biomamba.bench import plan as make_plan
        from biomamba.bench import plot as make_plot
        from biomamba.presets import get_preset

        try:
            get_preset(preset)
            length_list = [float(x) for x in parse_list(lengths)]
        except ValueError as e:
            fail(str(e), usage=True)
        model_list = parse_list(models)
        for m in model_list:
            if m not in ("biomamba", "transformer"):
                fail(f"unknown model {m!r}; choose biomamba and/or transformer", usage=True)
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                fail("--device cuda: no CUDA device is visible to torch", usage=True)
        check_result_path(report, "--report", "json")
        check_result_path(plot, "--plot", "figure")

        console = Console(stderr=True)
        result = {"device": device_name(device), "preset": preset, "rows": []}
        points = make_plan(model_list, length_list)
        with console.status("") as status:
            for i, (model, mode, length) in enumerate(points, 1):
                status.update(f"[{i}/{len(points)}] {model} {mode} {length:g} s")
                row = measure(model, mode, length, preset, device, timeout)
                result["rows"].append(row)
                console.log(_row_text(row))

        title = f"bmamba bench -- preset {preset}, {result['device']}"
        peak = "max CUDA MB allocated" if device.startswith("cuda") else "peak resident MB"
        table = Table(title=f"{title}: {peak}")
        series = [name for (m, _), name in SERIES.items() if m in model_list]
        for col in ["length (s)", *series, "exact / transformer"]:
            table.add_column(col, justify="right")
        for r in by_length(result):
            table.add_row(f"{r['length_s']:g}", *(_fmt(r.get(name)) for name in series),
                          _fmt(r["exact / transformer"]))
        Console().print(table)

        parts = Table(title=f"{title}: what each peak is made of (MB; seconds are wall time)")
        for col in ("model", "mode", "length (s)", "peak", "runtime", "weights", "before the pass",
                    "added by the pass", "seconds", "x real time"):
            parts.add_column(col, justify="right" if col not in ("model", "mode") else "left")
        for r in result["rows"]:
            parts.add_row(r["model"], r["mode"], f"{r['length_s']:g}", _fmt(r.get("peak_mb")),
                          _fmt(r.get("runtime_mb")), _fmt(r.get("weights_mb")), _fmt(r.get("base_mb")),
                          _fmt(r.get("forward_mb")), _fmt(r.get("seconds")),
                          r.get("error") or _fmt(r.get("x_realtime")))
        Console().print(parts)
        if report:
            report.write_text(json.dumps(result, indent=2) + "\n")
        if plot:
            make_plot(result, plot)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:g}"


def _row_text(r: dict) -> str:
    if r.get("error"):
        return f"{r['model']} {r['mode']} {r['length_s']:g} s: {r['error']}"
    return f"{r['model']} {r['mode']} {r['length_s']:g} s: peak {r['peak_mb']:g} MB, {r['seconds']:g} s"
