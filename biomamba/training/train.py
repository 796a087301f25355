"""`bmamba train`: fine-tune for clip classification or frame-level detection.

- classify: clips with one label (a folder per class, or a BEANS CSV); the model's clip logits
  (frame logits mean-pooled over the clip, or attention-pooled) against the label, cross-entropy.
  Training clips are random crops of ``crop_s`` (zero-padded when shorter); validation clips the
  centred crop. Validation metric: accuracy (BEANS's), macro-F1 reported too. With ``mixup``
  each training clip is mixed with another of its batch (`mixup_classification_loss`).
- detect: fixed windows of annotated recordings (a BEANS JSONL, or a folder of recordings with
  Raven/Audacity tables), BEANS's windows; per-frame binary cross-entropy of the frame logits
  against the 20 ms frame targets (`biomamba.data.frame_targets`), on the frames that hold audio.
  Validation metric: BEANS mAP over windows, a window scored by its largest frame probability.

Models start from a preset (random init) or from ``init``, any bmamba checkpoint (a pre-training
run's encoder included): its encoder weights are loaded and, when the task or classes differ, a
new head is made. The model reads audio at ``sample_rate`` (16 kHz by default; 32 kHz hears to
16 kHz, see `biomamba.streaming.check_sample_rate`); a model from ``init`` keeps the checkpoint's
rate, and every dataset decodes at the model's rate. The convolutional front end is frozen by default (as in the paper, and as
wav2vec2/HuBERT fine-tuning freeze their feature encoder): its conv layers get no gradient and
stay in eval mode; the projection to d_model (LayerNorm + Linear) still trains.

A classification CSV with a `split` column (InsectSet32's files.csv) is read a split at a time:
``split`` selects the training rows, ``valid_split`` the validation rows (of ``valid``, default the
same CSV). Without either of ``valid`` / ``valid_split``, ``valid_fraction`` of the recordings is
held out, chosen with the seed:
classification per class; detection by recording, or, with a single recording, its last
``valid_fraction`` of windows (windows overlapping the boundary are dropped).

The loop (resume, NaN guard) is `biomamba.training.loop`, the run folder `biomamba.training.runs`,
devices and DDP `biomamba.training.devices`; ``init`` is `biomamba.loading.model_from_init`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..audio import SAMPLE_RATE
from ..checkpoint import load_weights
from ..data import ClassificationDataset, collate_padded
from ..loading import ARCHITECTURES, BEST, LAST, architecture, init_sample_rate, model_from_init
from ..model import AudioModel, BioMamba
from ..presets import PRESETS
from ..streaming import check_sample_rate
from .devices import (
    AMP_CHOICES,
    amp_name,
    echo,
    report_skipped,
    select_amp,
    setup_distributed,
    teardown_distributed,
)
from .evaluate import (
    CheckedDetectionDataset,
    classification_items,
    classification_scores,
    classify_batches,
    detection_scores,
    infer_task,
    window_batches,
)
from .loop import (
    LoopConfig,
    Run,
    WarmupDecay,
    default_workers,
    fit,
    make_optimizer,
    optimizer_steps,
    seed_everything,
)
from .runs import check_choice, check_out, prepare_out

LR_SCHEDULES = ("constant", "linear")
# args.json keys that must not change when a run is resumed
RESUME_KEYS = ("data", "task", "preset", "architecture", "batch_size", "seed", "crop_s", "window_s",
               "hop_s", "valid", "valid_fraction", "pooling", "freeze_frontend", "split", "valid_split",
               "lr_schedule", "sample_rate", "mixup")


@dataclass
class TrainConfig:
    """Arguments of `train` (the CLI's options, same names). Durations in seconds."""

    data: Path
    out: Path = Path("bmamba-train")
    task: str | None = None              # None: from the data (see evaluate.infer_task)
    valid: Path | None = None
    valid_fraction: float = 0.2
    split: str | None = None             # classify CSV: only the rows whose `split` column is this
    valid_split: str | None = None       # ... and of --valid (e.g. InsectSet32: train / validation)
    preset: str = "base"
    architecture: str | None = None      # None: biomamba, or the init checkpoint's
    init: Path | None = None
    sample_rate: int | None = None       # None: 16 kHz, or the init checkpoint's
    freeze_frontend: bool = True
    pooling: str = "mean"
    epochs: int = 50                     # BEANS
    max_steps: int | None = None
    batch_size: int = 32                 # BEANS
    lr: float = 1e-4                     # BEANS picks from {1e-5, 5e-5, 1e-4} on validation
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"        # or "linear": decay to 0 at the run's last step
    grad_clip: float | None = 10.0
    crop_s: float | None = 5.0
    window_s: float = 2.0                # BEANS dcase / enabirds
    hop_s: float = 1.0
    unknown_label: str | None = None
    label_column: str | None = None
    # training augmentation: random gain (lo, hi) dB; background recordings (holding none of the
    # classes) mixed in with probability background_prob at an SNR drawn from background_snr_db
    gain_db: tuple[float, float] | None = None
    backgrounds: tuple = ()
    background_snr_db: tuple[float, float] = (0.0, 20.0)
    background_prob: float = 0.5
    mixup: float = 0.0                   # classify: Beta(mixup, mixup) mixing of clip pairs; 0: off
    device: str = "auto"
    amp: str = "auto"
    workers: int | None = None           # None: loop.default_workers()
    accumulate: int = 1                  # batches per optimizer step
    max_skipped_steps: int = 10          # non-finite steps skipped before the run stops
    seed: int = 0
    resume: bool = False


class _Subset(Dataset):
    """Some items of a dataset, forwarding set_epoch (torch's Subset does not)."""

    def __init__(self, dataset, indices: list[int]):
        self.dataset, self.indices = dataset, list(indices)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[self.indices[i]]


# --------------------------------------------------------------------------- data


def _held_out(n: int, fraction: float) -> int:
    """How many of n to hold out: round(fraction * n), at least 1 and at most n - 1 when n >= 2."""
    if fraction <= 0 or n < 2:
        return 0
    return min(n - 1, max(1, round(fraction * n)))


def split_classification(labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, valid) item indices: per class, a seeded random ``fraction`` of its recordings."""
    rng = np.random.default_rng(seed)
    train, valid = [], []
    for c in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == c]
        idx = [idx[j] for j in rng.permutation(len(idx))]
        k = _held_out(len(idx), fraction)
        valid += idx[:k]
        train += idx[k:]
    return sorted(train), sorted(valid)


def split_detection(dataset: CheckedDetectionDataset, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, valid) window indices: whole recordings held out (seeded); a single recording is
    split by position (its last ``fraction`` of windows; those crossing the boundary dropped)."""
    paths = sorted({str(w.path) for w in dataset.windows})
    if len(paths) >= 2:
        rng = np.random.default_rng(seed)
        held = {paths[j] for j in rng.permutation(len(paths))[: _held_out(len(paths), fraction)]}
        valid = [i for i, w in enumerate(dataset.windows) if str(w.path) in held]
        return [i for i, w in enumerate(dataset.windows) if str(w.path) not in held], valid
    if fraction <= 0:
        return list(range(len(dataset.windows))), []
    length = dataset.windows[0].length_s
    boundary = length * (1 - fraction)
    train = [i for i, w in enumerate(dataset.windows) if w.start_s + dataset.window_s <= boundary]
    valid = [i for i, w in enumerate(dataset.windows) if w.start_s >= boundary]
    if not train or not valid:
        raise ValueError(f"{dataset.windows[0].path}: too short to hold out {fraction:.0%} for "
                         "validation by position; pass --valid or --valid-fraction 0")
    return train, valid


def build_datasets(cfg: TrainConfig, task: str, sample_rate: int = SAMPLE_RATE):
    """(train dataset, valid dataset or None, classes, notes) for a config; audio at ``sample_rate``."""
    notes = []
    augment = dict(gain_db=cfg.gain_db, backgrounds=list(cfg.backgrounds), snr_db=cfg.background_snr_db,
                   background_prob=cfg.background_prob,   # used by training datasets only (train=True)
                   sample_rate=sample_rate)
    if task == "classify":
        items, bad = classification_items(Path(cfg.data), cfg.split)
        notes += [f"skipped unreadable {p}: {r}" for p, r in bad]
        if not items:
            raise ValueError(f"{cfg.data}: no readable recordings ({len(bad)} unreadable)")

        def make(listing, train: bool, classes=None):
            return ClassificationDataset(listing, classes=classes, unknown_label=cfg.unknown_label,
                                         crop_s=cfg.crop_s, train=train, seed=cfg.seed, **augment)

        full_train = make(items, True)
        classes = full_train.classes
        valid_source = cfg.valid if cfg.valid is not None else (cfg.data if cfg.valid_split else None)
        if valid_source is not None:
            v_items, v_bad = classification_items(Path(valid_source), cfg.valid_split)
            notes += [f"skipped unreadable {p}: {r}" for p, r in v_bad]
            valid = make(v_items, False, classes)
            if valid.classes != classes:
                raise ValueError(f"{valid_source}: labels not in the training classes {classes}")
            return full_train, valid, classes, notes
        train_idx, valid_idx = split_classification([y for _, y in full_train.items], cfg.valid_fraction, cfg.seed)
        valid = _Subset(make(items, False, classes), valid_idx) if valid_idx else None
        return _Subset(full_train, train_idx), valid, classes, notes

    if cfg.split is not None or cfg.valid_split is not None:
        raise ValueError("--split / --valid-split select rows of a classification CSV, not of detection data")

    def make_det(source, train: bool, classes=None):
        ds = CheckedDetectionDataset(Path(source), window_s=cfg.window_s, hop_s=cfg.hop_s, classes=classes,
                                     unknown_label=cfg.unknown_label, label_column=cfg.label_column,
                                     train=train, seed=cfg.seed, **augment)
        notes.extend(f"skipped unreadable {p}: {r}" for p, r in ds.unreadable)
        notes.extend(f"skipped {p}: no annotation table next to it" for p in ds.skipped)
        return ds

    full_train = make_det(cfg.data, True)
    classes = full_train.classes
    if cfg.valid is not None:
        return full_train, make_det(cfg.valid, False, classes), classes, notes
    train_idx, valid_idx = split_detection(full_train, cfg.valid_fraction, cfg.seed)
    valid = _Subset(make_det(cfg.data, False, classes), valid_idx) if valid_idx else None
    return _Subset(full_train, train_idx), valid, classes, notes


# --------------------------------------------------------------------------- model


def build_model(cfg: TrainConfig, task: str, classes: list[str], sample_rate: int = SAMPLE_RATE) -> AudioModel:
    if cfg.init is not None:
        return model_from_init(cfg.init, task, classes, cfg.pooling, cfg.architecture)
    model_class = architecture(cfg.architecture or BioMamba.architecture)
    return model_class.from_preset(cfg.preset, task=task, classes=classes, pooling=cfg.pooling,
                                   sample_rate=sample_rate)


def freeze_frontend(model: AudioModel) -> None:
    """No gradient for the front end's conv layers (they also stay in eval mode: see train_mode)."""
    model.frontend.conv.requires_grad_(False)


# --------------------------------------------------------------------------- losses


def classification_loss(net, batch: dict, state) -> tuple[torch.Tensor, dict]:
    """Cross-entropy of the clip logits. batch: collate_padded classification batch."""
    logits = net(batch["audio"], batch["lengths"])["clip_logits"].float()
    loss = F.cross_entropy(logits, batch["labels"])
    return loss, {"acc": float((logits.argmax(-1) == batch["labels"]).float().mean())}


def mixup_classification_loss(alpha: float, seed: int = 0):
    """The loss of classification mixup (Zhang et al. 2018, "mixup: Beyond Empirical Risk
    Minimization"; BirdNET-Analyzer's trainer has it too): each clip i of the batch is mixed with
    clip perm[i], audio lam_i * x_i + (1 - lam_i) * x_perm[i] with lam_i ~ Beta(alpha, alpha), and
    its loss is the same mixture of the two labels' cross-entropies. The draws come from a
    generator keyed by (seed, optimizer step, skipped steps, batch within the step, rank), not
    from torch's global one (which DataLoader iterators also draw from), so a resumed run draws
    what the straight run drew.

    The mixed clip holds audio as long as the longer of the two (the shorter is zero-padded);
    "acc" counts the label with the larger weight.
    """
    calls = {"key": None, "n": 0}    # batches seen in the current optimizer step (--accumulate)

    def loss_fn(net, batch: dict, state) -> tuple[torch.Tensor, dict]:
        audio, lengths, labels = batch["audio"], batch["lengths"], batch["labels"]
        key = (state.global_step, state.skipped_steps)
        calls["n"] = calls["n"] + 1 if calls["key"] == key else 0
        calls["key"] = key
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        rng = np.random.default_rng([seed, *key, calls["n"], rank])
        lam = torch.as_tensor(rng.beta(alpha, alpha, len(labels)), dtype=audio.dtype, device=audio.device)  # (B,)
        perm = torch.as_tensor(rng.permutation(len(labels)), device=audio.device)                           # (B,)
        mixed = lam[:, None] * audio + (1 - lam[:, None]) * audio[perm]
        logits = net(mixed, torch.maximum(lengths, lengths[perm]))["clip_logits"].float()
        loss = (lam * F.cross_entropy(logits, labels, reduction="none")
                + (1 - lam) * F.cross_entropy(logits, labels[perm], reduction="none")).mean()
        main = torch.where(lam >= 0.5, labels, labels[perm])
        return loss, {"acc": float((logits.argmax(-1) == main).float().mean())}

    return loss_fn


def detection_loss(net, batch: dict, state) -> tuple[torch.Tensor, dict]:
    """Frame-level BCE averaged over the frames that hold audio and over classes."""
    logits = net(batch["audio"], batch["lengths"])["frame_logits"].float()
    mask = (torch.arange(logits.shape[1], device=logits.device)[None, :]
            < batch["frame_lengths"][:, None]).to(logits.dtype)[..., None]
    bce = F.binary_cross_entropy_with_logits(logits, batch["frame_targets"], reduction="none")
    return (bce * mask).sum() / (mask.sum() * logits.shape[-1]).clamp(min=1), {}


# --------------------------------------------------------------------------- train


def check_options(cfg: TrainConfig) -> None:
    """Raise ValueError naming the first option out of its range."""
    check_choice("--task", cfg.task, ("classify", "detect"))
    check_choice("--architecture", cfg.architecture, tuple(ARCHITECTURES))
    check_choice("--pooling", cfg.pooling, ("mean", "attention"))
    check_choice("--amp", cfg.amp, AMP_CHOICES)
    check_choice("--preset", cfg.preset, tuple(PRESETS))
    check_choice("--lr-schedule", cfg.lr_schedule, LR_SCHEDULES)
    if cfg.sample_rate is not None:
        check_sample_rate(cfg.sample_rate, "--sample-rate")
    if not 0 <= cfg.mixup <= 100:
        raise ValueError(f"--mixup is a Beta distribution's alpha in (0, 100] (0: off), got {cfg.mixup}")
    if cfg.mixup and cfg.task == "detect":
        raise ValueError("--mixup mixes labelled clips: it is for --task classify")
    if cfg.accumulate < 1 or cfg.max_skipped_steps < 0:
        raise ValueError("--accumulate must be >= 1 and --max-skipped-steps >= 0")
    if cfg.batch_size < 1 or cfg.epochs < 1 or cfg.lr <= 0:
        raise ValueError("--batch-size, --epochs and --lr must be positive")
    if not 0 <= cfg.valid_fraction < 1:
        raise ValueError(f"--valid-fraction must be in [0, 1), got {cfg.valid_fraction}")
    check_out(cfg.out, cfg.resume)


def train(cfg: TrainConfig) -> dict:
    """Fine-tune as the module docstring says; checkpoints in ``cfg.out`` (see `biomamba.training.runs`).

    Returns {"out", "best", "last", "best_metric", "metric", "epochs", "steps", "notes"}.
    Raises ValueError (bad arguments or data), CheckpointError (bad --init), TrainingError
    (NaN loss, interrupt: last/ saved).
    """
    cfg = TrainConfig(**{**asdict(cfg), "data": Path(cfg.data), "out": Path(cfg.out)})
    check_options(cfg)
    dist, device = setup_distributed(cfg.device)
    try:
        run = Run(device, select_amp(cfg.amp, device), dist)
        task = cfg.task or infer_task(cfg.data)
        if cfg.mixup and task != "classify":
            raise ValueError(f"{cfg.data}: detection data; --mixup is for clip classification")
        rate = init_sample_rate(cfg.init, cfg.sample_rate)
        args = {**asdict(cfg), "task": task, "sample_rate": rate}
        # a linear decay ends at the planned last step: a resumed run must plan the same one
        keys = RESUME_KEYS + (("epochs", "max_steps") if cfg.lr_schedule == "linear" else ())
        prepare_out(cfg.out, cfg.resume, args, dist, keys)
        train_set, valid_set, classes, notes = build_datasets(cfg, task, rate)
        report_skipped(dist, notes)
        seed_everything(cfg.seed)
        model = build_model(cfg, task, classes, rate).to(device)
        if cfg.freeze_frontend:
            freeze_frontend(model)
        optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
        total = None
        if cfg.lr_schedule == "linear":
            total = optimizer_steps(len(train_set), cfg.batch_size, dist.world_size, cfg.accumulate,
                                    cfg.epochs, cfg.max_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupDecay(cfg.warmup_steps, total))
        metric = "accuracy" if task == "classify" else "map"
        training_info = {"task": task, "data": str(cfg.data), "crop_s": cfg.crop_s, "window_s": cfg.window_s,
                         "hop_s": cfg.hop_s, "unknown_label": cfg.unknown_label, "seed": cfg.seed}

        def train_mode() -> None:
            model.train()
            if cfg.freeze_frontend:
                model.frontend.conv.eval()

        def save(folder: Path, info: dict) -> None:
            model.save(folder, training={**training_info, **info})

        def load(folder: Path) -> None:
            model.load_state_dict(load_weights(folder, device="cpu"))

        validate = None
        if valid_set is not None:
            loader = DataLoader(valid_set, batch_size=cfg.batch_size, collate_fn=collate_padded,
                                num_workers=default_workers() if cfg.workers is None else cfg.workers)

            def validate() -> dict:
                if task == "classify":
                    labels, probs, loss = classify_batches(model, loader, run)
                    scores = classification_scores(labels, probs, classes)
                    return {"loss": loss, "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"]}
                scores, targets, loss = window_batches(model, loader, run)
                return {"loss": loss, "map": detection_scores(scores, targets, classes)["map"]}

        loop = LoopConfig(out=cfg.out, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed,
                             max_steps=cfg.max_steps, workers=cfg.workers, grad_clip=cfg.grad_clip,
                             accumulate=cfg.accumulate, max_skipped_steps=cfg.max_skipped_steps,
                             metric=metric if valid_set is not None else None, resume=cfg.resume)
        echo(dist, f"bmamba train: {task}, {len(classes)} classes, {len(train_set)} training items, "
                      f"{len(valid_set) if valid_set is not None else 0} validation items, "
                      f"{model.num_parameters():,} parameters, {device}, amp {amp_name(run.amp)}, "
                      f"{dist.world_size} process(es)")
        started = time.time()
        loss_fn = detection_loss
        if task == "classify":
            loss_fn = mixup_classification_loss(cfg.mixup, cfg.seed) if cfg.mixup else classification_loss
        state = fit(run, loop, model, optimizer, scheduler, train_set, collate_padded, loss_fn,
                       save, load, validate, train_mode,
                       items_per_batch=lambda b: float(b["lengths"].sum()) / rate)
        return {"out": str(cfg.out), "last": str(cfg.out / LAST),
                "best": str(cfg.out / BEST) if state.best_epoch else None,
                "metric": metric, "best_metric": state.best_metric, "best_epoch": state.best_epoch,
                "epochs": state.epoch, "steps": state.global_step, "seconds": time.time() - started,
                "notes": notes}
    finally:
        teardown_distributed(dist)
