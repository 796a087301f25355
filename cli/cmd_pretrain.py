"""`bmamba pretrain`: HuBERT-style masked prediction of k-means labels (see biomamba.training.pretrain)."""

from __future__ import annotations

from pathlib import Path

import typer

from .cmd_train import run_and_report
from .common import fail


def register(app: typer.Typer) -> None:
    @app.command()
    def pretrain(
        audio: list[str] = typer.Argument(..., help="Recordings: files, folders or globs."),
        phase: int = typer.Option(1, help="1: labels from MFCC k-means; 2: from a layer of the --init model."),
        clusters: int = typer.Option(None, help="k-means clusters (default 100 in phase 1, 500 in phase 2)."),
        init: Path = typer.Option(None, help="Start from this checkpoint or run folder (phase 2: the phase-1 run)."),
        labels_from: Path = typer.Option(None, help="Phase 2: the model whose layer gives the labels (default --init)."),
        from_scratch: bool = typer.Option(False, "--from-scratch",
                                          help="Phase 2: train a fresh model on the new labels (HuBERT) "
                                               "instead of continuing from --init."),
        layer: int = typer.Option(None, help="Phase 2: the label layer, 1-based (default the middle one)."),
        recipe: str = typer.Option(None,
                                   help="delayed (the default: causal; a masked frame's label is predicted "
                                        "--delay frames later), causal (the causal model in both phases), "
                                        "future (causal, plus heads predicting the next frames' labels), "
                                        "bidirectional-teacher (phase 1 trains a bidirectional teacher, phase 2 "
                                        "the causal student on its labels), or distill (the same teacher; "
                                        "phase 2 distils its layers into the causal student on every frame). "
                                        "The Transformer baseline takes HuBERT's recipe (leave it out)."),
        architecture: str = typer.Option("biomamba", help="biomamba, or transformer (the baseline, with HuBERT's "
                                                          "recipe as is)."),
        future_frames: int = typer.Option(None, help="Heads predicting labels of frames t+1..t+K (default 4 for "
                                                     "recipe future, else 0)."),
        future_weight: float = typer.Option(1.0, help="Weight of the future-frame loss."),
        delay: int = typer.Option(None, help="Frames between a masked frame and the output that predicts its "
                                             "label (default 10 = 200 ms for recipe delayed, else 0)."),
        preset: str = typer.Option("base", help="Model size: tiny, edge or base (ignored with --init)."),
        sample_rate: int = typer.Option(None, help="Hz the model reads its audio at: 16000 (default), 32000 "
                                                   "(hears to 16 kHz), any multiple of 16000 to 384000. "
                                                   "With --init: the checkpoint's. Frames last 320 samples, "
                                                   "so --delay and --mask-length shrink in seconds."),
        mask_prob: float = typer.Option(0.8, help="Span-start probability times span length (HuBERT 0.8)."),
        mask_length: int = typer.Option(10, help="Masked span length in frames (HuBERT 10)."),
        min_masks: int = typer.Option(2, help="At least this many spans per crop (HuBERT 2)."),
        final_dim: int = typer.Option(256, help="Projection size of the prediction head (HuBERT 256)."),
        temperature: float = typer.Option(0.1, help="Cosine-logit temperature (HuBERT 0.1)."),
        feature_penalty: float = typer.Option(0.0, help="Weight of the CNN feature penalty (HuBERT: 10, which "
                                                       "left small short runs at chance here; see "
                                                       "biomamba.training.pretrain)."),
        cnn_grad_scale: float = typer.Option(0.1, help="Gradient scale of the CNN front end (HuBERT 0.1)."),
        steps: int = typer.Option(100_000, help="Optimizer steps."),
        crop: str = typer.Option("5s", help="Crop length per item (the longest with --min-crop)."),
        min_crop: str = typer.Option(None, help="Random crop lengths: each crop's length drawn between this "
                                                "and --crop (HuBERT: 2s to 15.6s)."),
        batch_size: int = typer.Option(8, help="Crops per batch (per process under torchrun)."),
        lr: float = typer.Option(5e-4, help="Peak learning rate (HuBERT 5e-4)."),
        warmup: float = typer.Option(0.08, help="Warm-up as a fraction of --steps (HuBERT 32k of 400k)."),
        weight_decay: float = typer.Option(0.01, help="AdamW weight decay (HuBERT 0.01)."),
        grad_clip: float = typer.Option(10.0, help="Gradient norm clip (HuBERT 10; 0: none)."),
        save_every: int = typer.Option(2000, help="Also checkpoint last/ every so many steps (0: per epoch only)."),
        kmeans_fraction: float = typer.Option(0.1, help="Fraction of the audio k-means is fitted on (HuBERT 10%)."),
        kmeans_batch: int = typer.Option(10_000, help="Mini-batch size of k-means (HuBERT 10000)."),
        kmeans_init: int = typer.Option(20, help="k-means++ initialisations tried (HuBERT 20)."),
        teacher_chunk: str = typer.Option("30s", help="Phase 2 from a bidirectional teacher: piece length its "
                                                      "features are computed on."),
        labels_only: bool = typer.Option(False, "--labels-only", help="Compute the labels, then stop."),
        out: Path = typer.Option(Path("bmamba-pretrain"), help="Run folder: last/, labels/, log.jsonl, args.json."),
        device: str = typer.Option("auto", help="auto, cpu or cuda."),
        amp: str = typer.Option("auto", help="Mixed precision: auto (bf16 on CUDA), bf16, fp16, none."),
        workers: int = typer.Option(None, help="DataLoader worker processes (default: half the cores, at most 4; "
                                               "0: load in the main process)."),
        accumulate: int = typer.Option(1, help="Batches per optimizer step (gradient accumulation)."),
        max_skipped_steps: int = typer.Option(10, help="Steps with a non-finite loss or gradient are skipped; "
                                                       "the run stops after more than this many."),
        seed: int = typer.Option(0, help="Seed of initialisation, k-means, crops and masks."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last/ checkpoint."),
    ) -> None:
        """Self-supervised pre-training (HuBERT's masked prediction) of a BioMamba encoder.

        The encoder in OUT/last is an ordinary checkpoint: bmamba train --init OUT/last.
        """
        from biomamba.runtime.durations import parse_duration
        from biomamba.training.pretrain.runner import PretrainConfig, check_options
        from biomamba.training.pretrain.runner import pretrain as run_pretrain

        for name, path in (("--init", init), ("--labels-from", labels_from)):
            if path is not None and not path.exists():
                fail(f"{name} {path}: no such checkpoint folder", usage=True)
        try:
            cfg = PretrainConfig(
                audio=list(audio), out=out, phase=phase, clusters=clusters, init=init, labels_from=labels_from,
                from_scratch=from_scratch, layer=layer, recipe=recipe, architecture=architecture,
                future_frames=future_frames,
                future_weight=future_weight, delay=delay, preset=preset, sample_rate=sample_rate, mask_prob=mask_prob, mask_length=mask_length,
                min_masks=min_masks, final_dim=final_dim, temperature=temperature, feature_penalty=feature_penalty,
                cnn_grad_scale=cnn_grad_scale, steps=steps, crop_s=parse_duration(crop),
                min_crop_s=parse_duration(min_crop) if min_crop else None, batch_size=batch_size,
                lr=lr, warmup_fraction=warmup, weight_decay=weight_decay, grad_clip=grad_clip or None,
                save_every=save_every or None, kmeans_fraction=kmeans_fraction, kmeans_batch=kmeans_batch,
                kmeans_init=kmeans_init, teacher_chunk_s=parse_duration(teacher_chunk), labels_only=labels_only,
                device=device, amp=amp, workers=workers, accumulate=accumulate,
                max_skipped_steps=max_skipped_steps, seed=seed, resume=resume)
            check_options(cfg)
        except ValueError as e:
            fail(str(e), usage=True)
        run_and_report(run_pretrain, cfg)
