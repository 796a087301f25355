"""`bmamba train`: fine-tune for classification or detection (see biomamba.training.train)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .common import fail

# The layouts of biomamba.data.layout and the naming rule of biomamba.data.annotations.TABLE_NAMES,
# written out so that `bmamba --help` does not import them (tests/test_train_formats.py checks them).
DATA_HELP = (
    "Training data. classify: a folder per class (DATA/<class>/*.wav), recordings of none of the "
    "classes in DATA/noise/ (or background/, other/, silence/: BirdNET-Analyzer's names), or a BEANS "
    "CSV (path,label). detect: recordings with an annotation file beside each, the first found of "
    "<stem>.Table.1.selections.txt, <stem>.selections.txt, <stem>.bmamba.selection.table.txt (what "
    "bmamba detect writes), <stem>.txt (Raven table or Audacity labels); or a BEANS JSONL."
)


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        data: Path = typer.Argument(..., help=DATA_HELP),
        task: str = typer.Option(None, help="classify or detect (default: from the data)."),
        valid: Path = typer.Option(None, help="Validation data, same kinds as DATA."),
        split: str = typer.Option(None, help="Classify CSV: train on the rows whose `split` column holds "
                                             "this value (e.g. train)."),
        valid_split: str = typer.Option(None, help="Classify CSV: validate on the rows of --valid (default: "
                                                   "DATA) whose `split` column holds this value."),
        valid_fraction: float = typer.Option(0.2, help="Without --valid: the fraction of recordings held "
                                                       "out for validation (seeded; 0: none)."),
        preset: str = typer.Option("base", help="Model size: tiny, edge or base (ignored with --init)."),
        architecture: str = typer.Option(None, help="biomamba (default), transformer (the baseline), or "
                                                    "biomamba-bidirectional (the pre-training teacher; offline only)."),
        init: Path = typer.Option(None, help="Start from this checkpoint (or run folder): its encoder, a new head."),
        sample_rate: int = typer.Option(None, help="Hz the model reads its audio at: 16000 (default; hears to "
                                                   "8 kHz), 32000 (to 16 kHz, e.g. most insects), any multiple "
                                                   "of 16000 to 384000. With --init: the checkpoint's."),
        freeze_frontend: bool = typer.Option(True, "--freeze-frontend/--no-freeze-frontend",
                                             help="Keep the convolutional front end fixed (as in the paper)."),
        pooling: str = typer.Option("mean", help="Clip pooling for classify: mean or attention."),
        epochs: int = typer.Option(50, help="Passes over the training data."),
        max_steps: int = typer.Option(None, help="Stop after this many optimizer steps in all."),
        batch_size: int = typer.Option(32, help="Items per batch (per process under torchrun)."),
        lr: float = typer.Option(1e-4, help="Learning rate (AdamW)."),
        weight_decay: float = typer.Option(0.0, help="Weight decay of the weight matrices (AdamW: decoupled; 0: plain Adam)."),
        warmup_steps: int = typer.Option(0, help="Linear learning-rate warm-up steps."),
        lr_schedule: str = typer.Option("constant", help="After warm-up: constant, or linear (decay to 0 "
                                                         "at the last step of --epochs / --max-steps)."),
        grad_clip: float = typer.Option(10.0, help="Gradient norm clip (0: none)."),
        crop: str = typer.Option("5s", help="Classify: training clips are random crops of this length "
                                            "(validation: the centred crop); 'none' for whole clips."),
        window: str = typer.Option("2s", help="Detect: window length (BEANS: dcase/enabirds 2s, hiceas/rfcx 10s, gibbons 4s)."),
        hop: str = typer.Option("1s", help="Detect: window hop (BEANS: half the window)."),
        unknown_label: str = typer.Option(None, help="Map labels outside the classes to this one (BEANS enabirds: OTHR)."),
        label_column: str = typer.Option(None, help="Raven column holding the label."),
        background: list[str] = typer.Option(None, help="Augmentation: recordings (files, folders, globs; "
                                                        "repeatable) holding none of the classes, mixed into "
                                                        "training items."),
        background_snr: str = typer.Option("0,20", help="SNR range in dB for --background."),
        background_prob: float = typer.Option(0.5, help="Share of training items that get a background."),
        gain: str = typer.Option(None, help="Augmentation: random gain range in dB, e.g. -6,6."),
        mixup: float = typer.Option(0.0, help="Classify augmentation: mix each training clip with another "
                                              "of its batch, weights ~ Beta(MIXUP, MIXUP), labels mixed "
                                              "alike (e.g. 0.4; 0: off)."),
        out: Path = typer.Option(Path("bmamba-train"), help="Run folder: last/, best/, log.jsonl, args.json."),
        device: str = typer.Option("auto", help="auto, cpu or cuda."),
        amp: str = typer.Option("auto", help="Mixed precision: auto (bf16 on CUDA), bf16, fp16, none."),
        workers: int = typer.Option(None, help="DataLoader worker processes (default: half the cores, at most 4; "
                                               "0: load in the main process)."),
        accumulate: int = typer.Option(1, help="Batches per optimizer step (gradient accumulation): "
                                               "--batch-size 16 --accumulate 4 trains like batch 64."),
        max_skipped_steps: int = typer.Option(10, help="Steps with a non-finite loss or gradient are skipped; "
                                                       "the run stops after more than this many."),
        seed: int = typer.Option(0, help="Seed of initialisation, data order, crops and the validation split."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last/ checkpoint."),
    ) -> None:
        """Fine-tune a model for clip classification or frame-level detection.

        Multi-GPU / multi-node: launch with torchrun (e.g. torchrun --nproc_per_node 4 -m
        biomamba.cli.app train ...); every process reads its share of each epoch.
        """
        from biomamba.runtime.durations import parse_duration
        from biomamba.training.train import TrainConfig, check_options
        from biomamba.training.train import train as run_train

        if not data.exists():
            fail(f"{data}: no such file or folder", usage=True)
        if valid is not None and not valid.exists():
            fail(f"--valid {valid}: no such file or folder", usage=True)
        if init is not None and not init.exists():
            fail(f"--init {init}: no such checkpoint folder", usage=True)
        backgrounds = []
        if background:
            from biomamba.audio import find_audio

            backgrounds, problems = find_audio(background)
            if problems:
                fail("--background " + "; ".join(f"{i}: {why}" for i, why in problems), usage=True)
        try:
            crop_s = None if crop.strip().lower() == "none" else parse_duration(crop)
            snr_db = _pair(background_snr, "--background-snr")
            gain_db = _pair(gain, "--gain") if gain else None
            cfg = TrainConfig(data=data, task=task, valid=valid, valid_fraction=valid_fraction, split=split,
                              valid_split=valid_split, preset=preset,
                              architecture=architecture, init=init, sample_rate=sample_rate,
                              freeze_frontend=freeze_frontend,
                              pooling=pooling, epochs=epochs, max_steps=max_steps, batch_size=batch_size, lr=lr,
                              weight_decay=weight_decay, warmup_steps=warmup_steps,
                              lr_schedule=lr_schedule, grad_clip=grad_clip or None,
                              crop_s=crop_s, window_s=parse_duration(window), hop_s=parse_duration(hop),
                              unknown_label=unknown_label, label_column=label_column, gain_db=gain_db,
                              backgrounds=tuple(backgrounds), background_snr_db=snr_db,
                              background_prob=background_prob, mixup=mixup, out=out, device=device,
                              amp=amp, workers=workers, accumulate=accumulate,
                              max_skipped_steps=max_skipped_steps, seed=seed, resume=resume)
            check_options(cfg)
        except ValueError as e:
            fail(str(e), usage=True)
        run_and_report(run_train, cfg)


def run_and_report(run, cfg) -> None:
    """Run `train` or `pretrain` on its config: a failed run (bad data or --init, NaN, interrupt)
    exits 1 with one line; the result is printed as one JSON line (rank 0 only under torchrun)."""
    from biomamba.checkpoint import CheckpointError
    from biomamba.training.devices import is_main_process
    from biomamba.training.runs import TrainingError

    try:
        result = run(cfg)
    except (TrainingError, CheckpointError, ValueError) as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted")
    if is_main_process():
        typer.echo(json.dumps({k: v for k, v in result.items() if k != "notes"}))


def _pair(text: str, option: str) -> tuple[float, float]:
    """'0,20' -> (0.0, 20.0); ValueError naming the option otherwise."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{option} {text!r}: give two numbers, low,high (e.g. 0,20)") from None
    if lo > hi:
        raise ValueError(f"{option} {text!r}: low is above high")
    return lo, hi
