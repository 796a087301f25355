"""The `bmamba pretrain` run: its options (`PretrainConfig`) and `pretrain`, which builds the
labels, the model and the data and hands them to the training loop. See `biomamba.training.pretrain`."""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...audio import AudioError, audio_info, find_audio
from ...bidirectional import BidirectionalBioMamba
from ...checkpoint import load_weights
from ...loading import LAST, init_sample_rate, load_model_from, model_from_init
from ...model import AudioModel, BioMamba
from ...presets import PRESETS
from ...streaming import HOP, check_sample_rate
from ...transformer import TransformerBaseline
from ..devices import (
    AMP_CHOICES,
    amp_name,
    echo,
    report_skipped,
    select_amp,
    setup_distributed,
    teardown_distributed,
)
from ..loop import LoopConfig, LoopState, Run, WarmupDecay, fit, make_optimizer, seed_everything
from ..mfcc import FRAME_LENGTH
from ..runs import check_choice, check_out, prepare_out
from .data import PretrainDataset, collate_pretrain
from .labels import KMeansOptions, build_labels, layer_features, mfcc_features
from .objective import DistillModel, PretrainModel, compute_mask

RECIPES = ("causal", "bidirectional-teacher", "future", "delayed", "distill")
# The default for BioMamba (recipes/README.md: "Pre-training recipes compared by linear probes"): the
# recipes probed alike; delayed and future fine-tuned best on InsectSet32, and delayed needs no teacher.
DEFAULT_RECIPE = "delayed"
# recipes whose phase 1 trains the bidirectional teacher (phase 2 then learns from it)
TEACHER_RECIPES = ("bidirectional-teacher", "distill")
# --architecture: names in biomamba.loading.ARCHITECTURES; with "biomamba" the recipe and phase pick
# the bidirectional teacher or the causal BioMamba
ARCHITECTURE_CHOICES = (BioMamba.architecture, TransformerBaseline.architecture)
HEADS_FILE = "heads.safetensors"
DEFAULT_FUTURE_FRAMES = 4
DEFAULT_DELAY_FRAMES = 10    # recipe delayed: 200 ms of latency, one masked span (HuBERT's mask_length)


@dataclass
class PretrainConfig:
    """Arguments of `pretrain` (the CLI's options, same names). Durations in seconds."""

    audio: list = field(default_factory=list)
    out: Path = Path("bmamba-pretrain")
    phase: int = 1
    clusters: int | None = None          # 100 (phase 1), 500 (phase 2)
    init: Path | None = None
    labels_from: Path | None = None      # phase 2: the model whose layer gives labels (default init)
    from_scratch: bool = False           # phase 2: a fresh model (HuBERT), not continuing from init
    layer: int | None = None             # phase 2, 1-based; default n_layers // 2
    recipe: str | None = None            # None: DEFAULT_RECIPE for BioMamba, HuBERT's for the Transformer
    architecture: str = "biomamba"       # or "transformer": the baseline, HuBERT's recipe as is
    future_frames: int | None = None     # default 4 for recipe "future", else 0
    future_weight: float = 1.0
    delay: int | None = None             # frames; default DEFAULT_DELAY_FRAMES for recipe "delayed", else 0
    preset: str = "base"
    sample_rate: int | None = None       # None: 16 kHz, or the init checkpoint's
    mask_prob: float = 0.8
    mask_length: int = 10
    min_masks: int = 2
    final_dim: int = 256
    temperature: float = 0.1
    feature_penalty: float = 0.0         # HuBERT: 10; see the package docstring for why 0 here
    cnn_grad_scale: float = 0.1
    steps: int = 100_000
    crop_s: float = 5.0
    min_crop_s: float | None = None      # random crop lengths in [min_crop_s, crop_s] (None: all crop_s)
    batch_size: int = 8
    lr: float = 5e-4
    warmup_fraction: float = 0.08
    weight_decay: float = 0.01
    grad_clip: float | None = 10.0
    save_every: int | None = 2000
    kmeans_fraction: float = 0.1
    kmeans_batch: int = 10_000
    kmeans_init: int = 20
    teacher_chunk_s: float = 30.0
    labels_only: bool = False
    device: str = "auto"
    amp: str = "auto"
    workers: int | None = None           # None: loop.default_workers()
    accumulate: int = 1                  # batches per optimizer step
    max_skipped_steps: int = 10          # non-finite steps skipped before the run stops
    seed: int = 0
    resume: bool = False


RESUME_KEYS = ("audio", "phase", "clusters", "init", "labels_from", "layer", "recipe", "architecture", "future_frames",
               "delay", "preset", "mask_prob", "mask_length", "crop_s", "min_crop_s", "batch_size", "seed", "steps",
               "sample_rate")


def _weights_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def _readable(inputs: Sequence, notes: list[str], sample_rate: int) -> tuple[list[Path], list[float]]:
    """(recordings that can be read, their durations in s); problems go into ``notes``."""
    files, problems = find_audio([str(i) for i in inputs])
    notes += [f"{i}: {r}" for i, r in problems]
    good, durations = [], []
    for f in files:
        try:
            info = audio_info(f)
            if info.duration_s * sample_rate < FRAME_LENGTH:
                raise AudioError(f, "shorter than 25 ms")
            good.append(f)
            durations.append(info.duration_s)
        except AudioError as e:
            notes.append(f"skipped {e}")
    return good, durations


def _phase1_model(cfg: PretrainConfig, device: torch.device) -> AudioModel:
    """Phase 2's source of labels or targets: ``labels_from``, else ``init`` (frozen, eval mode)."""
    source = cfg.labels_from or cfg.init
    if source is None:
        raise ValueError("phase 2 needs the phase-1 model: pass --init (or --labels-from)")
    model = load_model_from(source, device).eval().requires_grad_(False)
    rate = init_sample_rate(cfg.init, cfg.sample_rate)
    if model.sample_rate != rate:   # its labels or targets would be of other sounds
        raise ValueError(f"--labels-from {source} reads {model.sample_rate} Hz audio, the model being "
                         f"trained {rate} Hz; use a label model of the same rate")
    return model


def _label_source(cfg: PretrainConfig, device: torch.device, sample_rate: int):
    """(name, features(path) callable, label layer or None) for the phase."""
    if cfg.phase == 1:
        return "mfcc", functools.partial(mfcc_features, sample_rate=sample_rate), None
    model = _phase1_model(cfg, device)
    n = len(model.layers)
    layer = cfg.layer if cfg.layer is not None else max(1, n // 2)
    if not 1 <= layer <= n:
        raise ValueError(f"--layer {layer}: the label model has layers 1..{n}")

    def features(path: Path) -> Iterator[np.ndarray]:
        return layer_features(model, layer, path, cfg.teacher_chunk_s)

    return f"{model.architecture}-layer{layer}-{_weights_digest(model)}", features, layer


def _build_encoder(cfg: PretrainConfig, sample_rate: int) -> AudioModel:
    """The model to train: the Transformer baseline (``architecture="transformer"``, HuBERT's own
    recipe); else phase 1 of the teacher recipe trains the bidirectional teacher, everything else a
    causal BioMamba. From ``init`` (its encoder) unless there is none or phase 2 asks for a fresh one."""
    if cfg.architecture == TransformerBaseline.architecture:
        cls = TransformerBaseline
    elif cfg.recipe in TEACHER_RECIPES and cfg.phase == 1:
        cls = BidirectionalBioMamba
    else:
        cls = BioMamba
    if cfg.init is None or (cfg.phase == 2 and cfg.from_scratch):
        return cls.from_preset(cfg.preset, task="embed", sample_rate=sample_rate)
    return model_from_init(cfg.init, "embed", [], architecture=cls.architecture)


def check_options(cfg: PretrainConfig) -> None:
    """Raise ValueError naming the first option out of its range."""
    if cfg.recipe is not None:
        check_choice("--recipe", cfg.recipe, RECIPES)
    check_choice("--architecture", cfg.architecture, ARCHITECTURE_CHOICES)
    if cfg.architecture == "transformer" and cfg.recipe in ("future", "delayed", "distill"):
        raise ValueError(f"--recipe {cfg.recipe} is for the causal BioMamba; the Transformer baseline takes "
                         "HuBERT's own recipe (leave --recipe out)")
    check_choice("--phase", cfg.phase, (1, 2))
    check_choice("--amp", cfg.amp, AMP_CHOICES)
    check_choice("--preset", cfg.preset, tuple(PRESETS))
    if cfg.sample_rate is not None:
        check_sample_rate(cfg.sample_rate, "--sample-rate")
    if not 0 < cfg.mask_prob <= 1 or cfg.mask_length < 1 or cfg.min_masks < 0:
        raise ValueError("need 0 < --mask-prob <= 1, --mask-length >= 1, --min-masks >= 0")
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.lr <= 0 or (cfg.clusters is not None and cfg.clusters < 2):
        raise ValueError("need --steps >= 1, --batch-size >= 1, --lr > 0, --clusters >= 2")
    if not 0 < cfg.kmeans_fraction <= 1:
        raise ValueError(f"--kmeans-fraction must be in (0, 1], got {cfg.kmeans_fraction}")
    if cfg.min_crop_s is not None and not 0 < cfg.min_crop_s <= cfg.crop_s:
        raise ValueError(f"--min-crop must be in (0, --crop], got {cfg.min_crop_s} with --crop {cfg.crop_s}")
    if cfg.delay is not None and cfg.delay < 0:
        raise ValueError(f"--delay must be >= 0 frames, got {cfg.delay}")
    if _distilling(cfg) and cfg.labels_only:
        raise ValueError("--recipe distill has no labels in phase 2 (it learns the teacher's layers): "
                         "leave --labels-only out")
    if cfg.accumulate < 1 or cfg.max_skipped_steps < 0:
        raise ValueError("--accumulate must be >= 1 and --max-skipped-steps >= 0")
    check_out(cfg.out, cfg.resume)


def _distilling(cfg: PretrainConfig) -> bool:
    return cfg.recipe == "distill" and cfg.phase == 2


def pretrain(cfg: PretrainConfig) -> dict:
    """Pre-train as the module docstring says; the run folder is ``cfg.out``.

    Returns {"out", "last", "labels", "steps", "label_source", "clusters", "notes", "final": the
    last epoch's log line}. Raises ValueError (bad arguments or data), CheckpointError,
    TrainingError (NaN loss, interrupt: last/ saved).
    """
    cfg = PretrainConfig(**{**asdict(cfg), "out": Path(cfg.out)})
    check_options(cfg)
    if cfg.recipe is None and cfg.architecture == BioMamba.architecture:
        cfg.recipe = DEFAULT_RECIPE
    future = cfg.future_frames if cfg.future_frames is not None else (
        DEFAULT_FUTURE_FRAMES if cfg.recipe == "future" else 0)
    delay = cfg.delay if cfg.delay is not None else (DEFAULT_DELAY_FRAMES if cfg.recipe == "delayed" else 0)
    if (future or delay) and cfg.phase == 1 and cfg.recipe in TEACHER_RECIPES:
        raise ValueError("future-frame heads and a delay need a causal encoder; the phase-1 teacher is bidirectional")
    if (future or delay) and _distilling(cfg):
        raise ValueError("the distillation has no label heads: --future-frames and --delay do not apply")
    k = None if _distilling(cfg) else cfg.clusters or (100 if cfg.phase == 1 else 500)
    dist, device = setup_distributed(cfg.device)
    try:
        run = Run(device, select_amp(cfg.amp, device), dist)
        notes: list[str] = []
        rate = init_sample_rate(cfg.init, cfg.sample_rate)
        files, durations = _readable(cfg.audio, notes, rate)
        report_skipped(dist, notes)
        if not files:
            raise ValueError(f"no readable recordings in {', '.join(map(str, cfg.audio)) or 'the inputs'}")
        args = {**asdict(cfg), "audio": [str(f) for f in files], "future_frames": future, "delay": delay,
                "clusters": k, "sample_rate": rate}
        prepare_out(cfg.out, cfg.resume, args, dist, RESUME_KEYS)
        frames = [max(1, int(d * rate) // HOP) for d in durations]
        if _distilling(cfg):   # targets come from the teacher on the fly: no k-means
            teacher = _phase1_model(cfg, device)
            name, layer, labels_dir, label_files = f"distill-{teacher.architecture}-{_weights_digest(teacher)}", None, None, None
        else:
            name, features, layer = _label_source(cfg, device, rate)
            labels_dir = cfg.out / "labels" / f"{name}-k{k}"
            label_files = build_labels(files, frames, features, k, labels_dir, name,
                                       KMeansOptions(cfg.kmeans_fraction, batch_size=cfg.kmeans_batch,
                                                     n_init=cfg.kmeans_init, seed=cfg.seed),
                                       dist, lambda s: echo(dist, s))
        result = {"out": str(cfg.out), "labels": labels_dir and str(labels_dir), "label_source": name,
                  "clusters": k, "notes": notes}
        if cfg.labels_only:
            return result

        seed_everything(cfg.seed)
        encoder = _build_encoder(cfg, rate)
        if _distilling(cfg):
            model = DistillModel(encoder, teacher, cfg.cnn_grad_scale, cfg.feature_penalty).to(device)
        else:
            model = PretrainModel(encoder, k, cfg.final_dim, future, cfg.temperature, cfg.feature_penalty,
                                  cfg.cnn_grad_scale, cfg.future_weight, delay).to(device)
        optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, betas=(0.9, 0.98), eps=1e-6)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, WarmupDecay(round(cfg.warmup_fraction * cfg.steps), cfg.steps))
        dataset = PretrainDataset(files, label_files, cfg.crop_s, cfg.seed, cfg.min_crop_s, frames, rate)
        batches_per_epoch = max(1, math.ceil(math.ceil(len(dataset) / dist.world_size) / cfg.batch_size))
        # The Transformer sees both sides already: teacher and student are one model, HuBERT's recipe.
        recipe = "hubert" if cfg.architecture == "transformer" else cfg.recipe
        info = {"phase": cfg.phase, "recipe": recipe, "clusters": k, "label_source": name,
                "label_layer": layer, "future_frames": future, "delay": delay, "mask_prob": cfg.mask_prob,
                "mask_length": cfg.mask_length, "final_dim": cfg.final_dim, "temperature": cfg.temperature}

        def save(folder: Path, progress: dict) -> None:
            from safetensors.torch import save_file

            model.encoder.save(folder, pretraining={**info, **progress})
            save_file({k: v.detach().contiguous().cpu() for k, v in model.heads_state_dict().items()},
                      str(folder / HEADS_FILE))

        def load(folder: Path) -> None:
            from safetensors.torch import load_file

            model.encoder.load_state_dict(load_weights(folder))
            model.load_state_dict({**{f"encoder.{k}": v for k, v in model.encoder.state_dict().items()},
                                   **load_file(str(folder / HEADS_FILE))})

        def loss_fn(net, batch: dict, state: LoopState):
            if _distilling(cfg):
                out = net(batch["audio"], batch["frame_lengths"])
                return out["loss"], {k: float(out[k]) for k in ("l1", "cosine", "penalty")}
            seed = int(np.random.SeedSequence([cfg.seed, state.global_step, dist.rank]).generate_state(1)[0])
            mask = compute_mask(batch["frame_lengths"].cpu(), batch["labels"].shape[1], cfg.mask_prob,
                                cfg.mask_length, cfg.min_masks, torch.Generator().manual_seed(seed))
            out = net(batch["audio"], batch["frame_lengths"], batch["labels"], mask.to(device))
            return out["loss"], {k: float(out[k]) for k in ("masked_loss", "future_loss", "penalty", "masked_acc")}

        loop = LoopConfig(out=cfg.out, epochs=math.ceil(cfg.steps / batches_per_epoch),
                             batch_size=cfg.batch_size, seed=cfg.seed, max_steps=cfg.steps, workers=cfg.workers,
                             grad_clip=cfg.grad_clip, save_every=cfg.save_every, resume=cfg.resume,
                             accumulate=cfg.accumulate, max_skipped_steps=cfg.max_skipped_steps,
                             what="pretrain")
        echo(dist, f"bmamba pretrain: phase {cfg.phase}, recipe {recipe}, {type(encoder).__name__} "
                      f"{encoder.num_parameters():,} parameters, {len(files)} recordings, {len(dataset)} crops "
                      f"of {cfg.crop_s:g} s, {f'{k} clusters' if k else 'teacher layers as targets'}, {cfg.steps} steps, {device}, amp {amp_name(run.amp)}")
        state = fit(run, loop, model, optimizer, scheduler, dataset, collate_pretrain, loss_fn, save, load,
                       items_per_batch=lambda b: float(b["frame_lengths"].sum()) * HOP / rate)
        return {**result, "last": str(cfg.out / LAST), "steps": state.global_step,
                "final": state.history[-1] if state.history else {}}
    finally:
        teardown_distributed(dist)
