"""`bmamba eval`: score a checkpoint on labelled data, BEANS style (see biomamba.training.evaluate)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .common import check_result_path, fail


def register(app: typer.Typer) -> None:
    @app.command(name="eval")
    def eval_(
        checkpoint: Path = typer.Argument(..., help="A checkpoint folder, a train run folder (its best/), or the "
                                                    "name of a model shipped with bmamba (e.g. insectset32)."),
        data: Path = typer.Argument(..., help="Labelled data, same kinds as for bmamba train."),
        split: str = typer.Option(None, help="Classify CSV: only the rows whose `split` column holds this "
                                             "value (e.g. validation)."),
        report: Path = typer.Option(None, help="Write the full results as JSON."),
        plot: Path = typer.Option(None, help="Write a confusion matrix (classify) or precision-recall curves (detect) PNG."),
        onset_tolerance: float = typer.Option(0.5, help="Detect: an event matches a reference whose onset is this "
                                                        "close, in seconds."),
        threshold: float = typer.Option(0.5, help="Detect: frame probability that opens an event."),
        min_duration: float = typer.Option(0.1, help="Detect: shortest event kept, seconds."),
        merge_gap: float = typer.Option(0.2, help="Detect: events closer than this merge, seconds."),
        events: bool = typer.Option(True, "--events/--no-events", help="Detect: also score events on whole recordings."),
        window: str = typer.Option(None, help="Detect: window length (default: the model's training window, else 2s)."),
        hop: str = typer.Option(None, help="Detect: window hop (default: the model's, else 1s)."),
        crop: str = typer.Option(None, help="Classify: centred crop of this length (default: whole clips)."),
        unknown_label: str = typer.Option(None, help="Map labels outside the model's classes to this one."),
        label_column: str = typer.Option(None, help="Raven column holding the label."),
        batch_size: int = typer.Option(8, help="Items per batch."),
        device: str = typer.Option("auto", help="auto, cpu or cuda."),
        amp: str = typer.Option("auto", help="Mixed precision: auto (bf16 on CUDA), bf16, fp16, none."),
        workers: int = typer.Option(0, help="DataLoader worker processes."),
    ) -> None:
        """Accuracy and macro-F1 (classify); BEANS mAP and event precision/recall/F1 (detect)."""
        from biomamba.runtime.durations import parse_duration
        from biomamba.runtime.models import model_folder
        from biomamba.training.evaluate import evaluate, json_safe

        checkpoint = model_folder(checkpoint)

        for name, path in (("CHECKPOINT", checkpoint), ("DATA", data)):
            if not path.exists():
                fail(f"{name} {path}: no such file or folder", usage=True)
        check_result_path(report, "--report", "json")
        check_result_path(plot, "--plot", "figure")
        try:
            window_s = parse_duration(window) if window else None
            hop_s = parse_duration(hop) if hop else None
            crop_s = parse_duration(crop) if crop else None
        except ValueError as e:
            fail(str(e), usage=True)
        try:
            result = evaluate(checkpoint, data, batch_size=batch_size, device=device, amp=amp, crop_s=crop_s,
                              window_s=window_s, hop_s=hop_s, unknown_label=unknown_label,
                              label_column=label_column, events=events, onset_tolerance_s=onset_tolerance,
                              threshold=threshold, min_duration_s=min_duration, merge_gap_s=merge_gap,
                              plot=plot, report=report, workers=workers, split=split)
        except ValueError as e:
            fail(str(e))
        except KeyboardInterrupt:
            fail("interrupted")
        for problem in result.get("unreadable", []):
            typer.secho(f"bmamba: skipped unreadable {problem}", err=True, fg=typer.colors.YELLOW)
        if result.get("unreadable"):
            typer.secho(f"bmamba: {len(result['unreadable'])} unreadable recording(s) skipped", err=True,
                        fg=typer.colors.YELLOW)
        typer.echo(json.dumps(json_safe(_summary(result))))


def _summary(result: dict) -> dict:
    """The headline numbers (the report file holds everything)."""
    keys = ("task", "accuracy", "macro_f1", "n_items", "map", "n_windows")
    out = {k: result[k] for k in keys if k in result}
    if "events" in result:
        out["events"] = {k: result["events"][k] for k in ("precision", "recall", "f1", "tp", "fp", "fn")}
    return out
