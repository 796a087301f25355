"""The training loop that `bmamba train` and `bmamba pretrain` share (`fit`): seeding, the
optimizer's parameter groups and LR schedule, the NaN guard, the progress bar, stop requests,
and checkpoints with resumable state into the run folder (`biomamba.training.runs`).

Exactness of ``--resume``: the data order of an epoch is a function of (seed, epoch) (the
sampler) and every random crop/augmentation a function of (seed, epoch, item) (the datasets), the
RNG states are restored, and a resume in the middle of an epoch skips the batches already done.
So on the CPU, with the same seed, a resumed run gives the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..loading import BEST, LAST
from .devices import Distributed, autocast, barrier
from .runs import (
    LOG_FILE,
    STATE_FILE,
    NonFiniteLossError,
    TrainingError,
    TrainingInterrupted,
    last_checkpoint,
    load_training_state,
    save_training_state,
    write_folder_atomically,
)

# --------------------------------------------------------------------------- seeds, RNG


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002  (the legacy global RNG other code may use)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every global RNG state, in types that ``torch.load(weights_only=True)`` reads back."""
    version, keys, gauss = random.getstate()
    np_state = np.random.get_state()  # noqa: NPY002
    state = {
        "python": [version, list(keys), gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- optimizer


def parameter_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two groups: matrices get ``weight_decay``; biases, norms and the
    SSM's A_log / D / dt_bias (marked ``_no_weight_decay``, as in mamba-ssm) get none."""
    decay, no_decay = [], []
    for p in module.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or getattr(p, "_no_weight_decay", False) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(module: nn.Module, lr: float, weight_decay: float, **adamw) -> torch.optim.AdamW:
    """AdamW over ``parameter_groups``. The decay is decoupled from the gradient (Loshchilov &
    Hutter 2019): a matrix shrinks by lr x weight_decay a step whatever its gradient's scale, where
    Adam's L2 term would be divided by the gradient's running RMS. With weight_decay 0 it is Adam."""
    return torch.optim.AdamW(parameter_groups(module, weight_decay), lr=lr, **adamw)


class WarmupDecay:
    """LR factor at a step: linear warm-up over ``warmup`` steps, then constant (``total`` None)
    or linear decay to 0 at step ``total`` (fairseq's polynomial decay with power 1, HuBERT's).
    A callable object, so the scheduler's state_dict stays plain data."""

    def __init__(self, warmup: int, total: int | None):
        self.warmup, self.total = max(0, int(warmup)), total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.total is None:
            return 1.0
        return max(0.0, (self.total - step) / max(1, self.total - self.warmup))


def optimizer_steps(items: int, batch_size: int, world_size: int, accumulate: int, epochs: int,
                    max_steps: int | None = None) -> int:
    """Optimizer steps `fit` takes over a run: each rank gets ceil(items / world_size) items an
    epoch (DistributedSampler pads), in batches of ``batch_size``, ``accumulate`` batches a step
    (a short last group still steps); at most ``max_steps``."""
    batches = math.ceil(math.ceil(items / world_size) / batch_size)
    total = epochs * math.ceil(batches / accumulate)
    return total if max_steps is None else min(total, max_steps)


# --------------------------------------------------------------------------- progress


class Progress:
    """A rich progress bar per epoch with the running loss and throughput; silent when stderr is
    not a terminal or on ranks other than 0 (the epoch summary lines are printed anyway)."""

    def __init__(self, enabled: bool):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal
        self._bar = None
        self._task = None

    def start(self, description: str, total: int) -> None:
        if not self.enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                 console=self.console, transient=True)
        self._bar.start()
        self._task = self._bar.add_task(description, total=total, info="")

    def update(self, advance: int, info: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=advance, info=info)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def print(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)


# --------------------------------------------------------------------------- sampler


class EpochSampler(Sampler[tuple[int, int]]):
    """This rank's items of an epoch as (epoch, index): DistributedSampler's indices (a permutation
    seeded by seed + epoch, padded to a multiple of the world size, every world_size-th from
    rank), minus the first ``skip`` already trained on (a resume in the middle of an epoch). The
    epoch travels with each index (`EpochItems`), so persistent DataLoader workers, which hold their
    own copy of the dataset, still draw each epoch's crops."""

    def __init__(self, dataset: Dataset, dist: Distributed, shuffle: bool, seed: int):
        self.inner = DistributedSampler(dataset, num_replicas=dist.world_size, rank=dist.rank,
                                        shuffle=shuffle, seed=seed, drop_last=False)
        self.skip = 0
        self.epoch = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.inner.set_epoch(epoch)
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, i) for i in list(self.inner)[self.skip:]])

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.skip)


class EpochItems(Dataset):
    """A dataset indexed by (epoch, index): sets the epoch of the dataset it wraps (in whichever
    process, worker or main, makes the item) before getting the item."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        if hasattr(self.dataset, "set_epoch") and getattr(self, "_epoch", None) != epoch:
            self.dataset.set_epoch(epoch)
            self._epoch = epoch
        return self.dataset[index]


def default_workers() -> int:
    """DataLoader workers when none are asked for: half the cores (at most 4), so that decoding
    and cropping overlap the model; 0 on a single core or where worker processes cannot start
    (no multiprocessing, e.g. some sandboxes)."""
    import multiprocessing
    import os

    try:
        multiprocessing.get_context()
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    except (OSError, ValueError, NotImplementedError):
        return 0
    return min(4, cores // 2)


def _groups(loader, n: int) -> Iterator[list]:
    """Consecutive batches in groups of n (the last group of an epoch may be shorter)."""
    group = []
    for batch in loader:
        group.append(batch)
        if len(group) == n:
            yield group
            group = []
    if group:
        yield group


# --------------------------------------------------------------------------- stop requests


class _StopRequest:
    """SIGINT / SIGTERM set a flag; the loop finishes its step, saves and stops. A second Ctrl-C
    while the flag is set stops at once (Python's default handler)."""

    def __init__(self):
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self):
        if _in_main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# --------------------------------------------------------------------------- the loop


@dataclass
class LoopConfig:
    """How `fit` runs. ``epochs``: passes over the training set; ``max_steps``: stop after this
    many optimizer steps in all (whichever comes first). ``metric``: the validation key that picks
    ``best/`` (higher is better). ``save_every``: also checkpoint every so many steps.
    ``accumulate``: batches of ``batch_size`` per optimizer step (gradients summed, each batch's
    loss divided by the number of batches in the step: equal to one step on their union).
    ``max_skipped_steps``: a step whose loss or gradient is not finite is skipped (no update; a
    bf16 batch can overflow once in a long run); the run stops with NonFiniteLossError when more
    than this many were skipped in all. ``workers``: DataLoader processes (None:
    `default_workers`), kept alive across epochs."""

    out: Path
    epochs: int
    batch_size: int
    seed: int = 0
    max_steps: int | None = None
    workers: int | None = 0
    accumulate: int = 1
    max_skipped_steps: int = 10
    grad_clip: float | None = None
    metric: str | None = None
    save_every: int | None = None
    shuffle: bool = True
    resume: bool = False
    what: str = "train"


@dataclass
class LoopState:
    """Counters saved in training_state.pt."""

    epoch: int = 0               # the epoch in progress (or next to start)
    step_in_epoch: int = 0       # optimizer steps done in that epoch
    global_step: int = 0
    skipped_steps: int = 0       # steps skipped for a non-finite loss or gradient
    best_metric: float | None = None
    best_epoch: int | None = None
    history: list = field(default_factory=list)


@dataclass
class Run:
    """What a command sets up once and hands to `fit`: device, AMP dtype, DDP position."""

    device: torch.device
    amp: torch.dtype | None
    dist: Distributed

    def autocast(self):
        return autocast(self.device, self.amp)


LossFn = Callable[[nn.Module, dict, LoopState], tuple[torch.Tensor, dict[str, float]]]


def fit(
    run: Run,
    cfg: LoopConfig,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    dataset: Dataset,
    collate: Callable,
    loss_fn: LossFn,
    save: Callable[[Path, dict], None],
    load: Callable[[Path], None],
    validate: Callable[[], dict] | None = None,
    train_mode: Callable[[], None] | None = None,
    items_per_batch: Callable[[dict], float] | None = None,
) -> LoopState:
    """Train ``module`` and checkpoint into ``cfg.out``.

    loss_fn(net, batch, state) -> (scalar loss, {name: float} stats), called under autocast with
    ``net`` the module (DDP-wrapped under torchrun: call ``net(...)``, not ``module``, so that
    gradients are averaged). save(folder, info) writes the model into a folder (info: epochs_done,
    step, metrics, for config.json); load(folder) reads the weights back (``--resume``).
    validate() -> metrics dict (rank 0 only). train_mode() puts the module in training mode
    (e.g. with a frozen front end kept in eval mode); default ``module.train()``.
    items_per_batch(batch) -> seconds of audio in the batch, for the throughput shown.

    Raises NonFiniteLossError (last/ keeps the last good checkpoint), TrainingInterrupted
    (last/ saved at the current step). Returns the final LoopState.
    """
    dist, out = run.dist, Path(cfg.out)
    train_mode = train_mode or module.train
    state = LoopState()
    scaler = torch.amp.GradScaler(run.device.type, enabled=run.amp == torch.float16)
    if cfg.resume:
        folder = last_checkpoint(out)
        if folder is None:
            raise TrainingError(f"--resume: {out} holds no {LAST}/{STATE_FILE} to resume from")
        saved = load_training_state(folder)
        load(folder)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        set_rng_state(saved["rng"])
        state = LoopState(**saved["loop"])
    net = module
    if dist.enabled:
        net = nn.parallel.DistributedDataParallel(
            module, device_ids=[run.device.index] if run.device.type == "cuda" else None)

    if cfg.accumulate < 1 or cfg.max_skipped_steps < 0:
        raise ValueError("accumulate must be >= 1 and max_skipped_steps >= 0")
    workers = default_workers() if cfg.workers is None else cfg.workers
    sampler = EpochSampler(dataset, dist, cfg.shuffle, cfg.seed)
    loader = DataLoader(EpochItems(dataset), batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate,
                        num_workers=workers, pin_memory=run.device.type == "cuda",
                        persistent_workers=workers > 0)
    progress = Progress(dist.is_main)
    params = [p for p in module.parameters() if p.requires_grad]

    def checkpoint(target: str, metrics: dict | None = None) -> None:
        if not dist.is_main:
            return
        info = {"epochs_done": state.epoch, "step": state.global_step, "metrics": metrics or {}}

        def write(folder: Path) -> None:
            save(folder, info)
            save_training_state(folder, {
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "rng": rng_state(), "loop": asdict(state)})

        write_folder_atomically(out / target, write)

    def done() -> bool:
        return cfg.max_steps is not None and state.global_step >= cfg.max_steps

    with _StopRequest() as stop:
        while state.epoch < cfg.epochs and not done():
            epoch = state.epoch
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            sampler.set_epoch(epoch, skip=state.step_in_epoch * cfg.batch_size * cfg.accumulate)
            train_mode()
            started, sums, count, good, items = time.time(), {}, 0, 0, 0.0
            steps_left = math.ceil(len(loader) / cfg.accumulate)
            progress.start(f"{cfg.what} epoch {epoch + 1}/{cfg.epochs}", steps_left)
            try:
                for group in _groups(loader, cfg.accumulate):
                    optimizer.zero_grad(set_to_none=True)
                    losses, step_stats = [], {}
                    for i, batch in enumerate(group):
                        batch = {k: v.to(run.device, non_blocking=True) if torch.is_tensor(v) else v
                                 for k, v in batch.items()}
                        # DDP averages gradients on the group's last backward only
                        sync = not dist.enabled or i == len(group) - 1
                        with contextlib.nullcontext() if sync else net.no_sync():
                            with run.autocast():
                                loss, stats = loss_fn(net, batch, state)
                            scaler.scale(loss / len(group)).backward()
                        losses.append(loss.detach().float())
                        for k, v in stats.items():
                            step_stats[k] = step_stats.get(k, 0.0) + float(v) / len(group)
                        items += items_per_batch(batch) if items_per_batch else len(next(iter(batch.values())))
                    mean_loss, stop_now = _reduce_loss_and_stop(torch.stack(losses).mean(), stop.requested,
                                                                dist, run.device)
                    bad = None if math.isfinite(mean_loss) else f"the {cfg.what} loss became {mean_loss}"
                    if bad is None:
                        scaler.unscale_(optimizer)
                        norm = (nn.utils.clip_grad_norm_(params, cfg.grad_clip) if cfg.grad_clip
                                else _grad_norm(params))
                        if not scaler.is_enabled() and not torch.isfinite(norm):
                            bad = f"the gradient became {float(norm)}"
                    if bad is None:
                        scaler.step(optimizer)
                        scaler.update()
                        scheduler.step()
                        good += 1
                        for k, v in {"loss": mean_loss, **step_stats}.items():
                            sums[k] = sums.get(k, 0.0) + float(v)
                    else:
                        optimizer.zero_grad(set_to_none=True)
                        state.skipped_steps += 1
                        where = (f"at epoch {epoch + 1}, step {state.step_in_epoch + 1} of the epoch "
                                 f"(step {state.global_step + 1} in all)")
                        if state.skipped_steps > cfg.max_skipped_steps:
                            raise NonFiniteLossError(
                                f"{bad} {where}; {state.skipped_steps} non-finite step(s), more than the "
                                f"{cfg.max_skipped_steps} a run may skip (--max-skipped-steps): stopped, and "
                                f"{out / LAST} keeps the last good checkpoint "
                                f"(try a lower --lr or --grad-clip, --amp none, or check the data)")
                        progress.print(f"skipped a step: {bad} {where} "
                                       f"({state.skipped_steps} of at most {cfg.max_skipped_steps})")
                    # a skipped step still moves the data position (resume stays exact), not the schedule
                    state.step_in_epoch += 1
                    state.global_step += 1
                    count += 1
                    rate = items / max(time.time() - started, 1e-9)
                    unit = "audio-s/s" if items_per_batch else "items/s"
                    shown = f"loss {sums['loss'] / good:.4f}" if good else "loss -"
                    progress.update(1, f"{shown}  {rate:.1f} {unit}")
                    if stop_now:
                        raise TrainingInterrupted("stop requested")
                    if cfg.save_every and state.global_step % cfg.save_every == 0:
                        checkpoint(LAST)
                    if done():
                        break
            except TrainingInterrupted:
                progress.stop()
                checkpoint(LAST)
                raise TrainingInterrupted(
                    f"interrupted at epoch {epoch + 1}, step {state.step_in_epoch} of the epoch; "
                    f"saved {out / LAST}; continue with --resume") from None
            except NonFiniteLossError:
                progress.stop()
                raise
            except Exception:
                progress.stop()
                if stop.requested:  # e.g. a DataLoader worker killed by the same Ctrl-C
                    checkpoint(LAST)
                    raise TrainingInterrupted(
                        f"interrupted at epoch {epoch + 1}; saved {out / LAST}; continue with --resume") from None
                raise
            progress.stop()
            epoch_complete = count == steps_left  # else max_steps stopped it part-way
            metrics = validate() if (validate is not None and dist.is_main) else {}
            barrier(dist)
            line = {"epoch": epoch + 1, "step": state.global_step,
                    **{f"train_{k}": v / max(good, 1) for k, v in sums.items()},
                    **({"skipped_steps": count - good} if count > good else {}),
                    **{f"valid_{k}": v for k, v in metrics.items() if isinstance(v, int | float)},
                    "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.time() - started, 3)}
            state.history.append(line)
            improved = False
            if cfg.metric and cfg.metric in metrics:
                value = float(metrics[cfg.metric])
                if state.best_metric is None or value > state.best_metric:
                    state.best_metric, state.best_epoch, improved = value, epoch + 1, True
            if epoch_complete:
                state.epoch += 1
                state.step_in_epoch = 0
            if dist.is_main:
                with open(out / LOG_FILE, "a") as f:
                    f.write(json.dumps(line) + "\n")
                progress.print(_summary(line))
            checkpoint(LAST, metrics)
            if improved:
                checkpoint(BEST, metrics)
            if _any_rank(stop.requested, dist, run.device) and state.epoch < cfg.epochs and not done():
                raise TrainingInterrupted(f"interrupted after epoch {epoch + 1}; saved {out / LAST}; "
                                          "continue with --resume")
    return state


def _grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return torch.stack(grads).norm() if grads else torch.zeros(())


def _any_rank(flag: bool, dist: Distributed, device: torch.device) -> bool:
    """True on every rank when ``flag`` is True on any."""
    if not dist.enabled:
        return flag
    t = torch.tensor([float(flag)], device=device)
    torch.distributed.all_reduce(t)
    return bool(t[0] > 0)


def _reduce_loss_and_stop(loss: torch.Tensor, stop: bool, dist: Distributed,
                          device: torch.device) -> tuple[float, bool]:
    """The loss averaged over ranks (NaN on one rank is NaN on all) and whether any rank was asked
    to stop: every rank gets the same answer, so all stop at the same step."""
    if not dist.enabled:
        return float(loss.detach()), stop
    t = torch.tensor([float(loss.detach()), float(stop)], device=device, dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return float(t[0]) / dist.world_size, bool(t[1] > 0)


def _summary(line: dict) -> str:
    parts = [f"epoch {line['epoch']}", f"step {line['step']}"]
    parts += [f"{k} {v:.4f}" for k, v in line.items() if k.startswith(("train_", "valid_")) and isinstance(v, float)]
    parts.append(f"{line['seconds']:.1f}s")
    return "  ".join(parts)


