"""Where a training run executes: the device, mixed precision (AMP), and DDP under torchrun.

DDP: under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) `setup_distributed` joins the
process group (nccl on CUDA, gloo on CPU), every rank reads its shard of each epoch
(DistributedSampler), gradients are averaged across ranks, and only rank 0 writes files, logs and
shows progress (`echo`). Validation runs on rank 0 while the others wait.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import sys
from dataclasses import dataclass

import torch

AMP_CHOICES = ("auto", "bf16", "fp16", "none")
DEVICE_CHOICES = ("auto", "cpu", "cuda")


def amp_name(dtype: torch.dtype | None) -> str:
    return {None: "none", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


# --------------------------------------------------------------------------- device, AMP


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' (CUDA when visible, else CPU), 'cpu', 'cuda' or 'cuda:N'. Raises ValueError when CUDA
    is asked for and absent. Under DDP on CUDA each rank takes GPU ``local_rank``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is visible to torch")
        return torch.device(name if ":" in name else f"cuda:{local_rank}")
    if name != "cpu":
        raise ValueError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    return torch.device("cpu")


def select_amp(name: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: 'auto' is bf16 on a CUDA device that supports it, fp16 on older CUDA
    devices, none on the CPU; 'bf16' (CPU or CUDA), 'fp16' (CUDA only), 'none'."""
    if name not in AMP_CHOICES:
        raise ValueError(f"unknown --amp {name!r}; choose one of {', '.join(AMP_CHOICES)}")
    if name == "none" or (name == "auto" and device.type != "cuda"):
        return None
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name == "fp16" and device.type != "cuda":
        raise ValueError("--amp fp16 needs a CUDA device (use bf16 or none on the CPU)")
    return torch.bfloat16 if name == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The autocast context of a run (a no-op without AMP)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)

# --------------------------------------------------------------------------- DDP


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in a torchrun job (rank 0 of 1 when not under torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str = "auto") -> tuple[Distributed, torch.device]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else a single process.

    Backend nccl on CUDA, gloo on CPU. The timeout is long (6 h): rank 0 may fit k-means or
    validate while the other ranks wait at a barrier.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(), select_device(device_name)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                             timeout=datetime.timedelta(hours=6))
    return Distributed(rank, world, local_rank), device


def teardown_distributed(dist: Distributed) -> None:
    """Leave the process group cleanly.

    The DDP wrapper keeps the Gloo group alive through its reducer; if that wrapper is only freed at
    interpreter exit, Gloo's worker threads are destroyed while joinable and the process aborts
    ("terminate called without an active exception", about one run in four here). So the wrapper is
    collected first, and all ranks meet before the group goes. Called from a ``finally`` block:
    while an exception is on its way out the ranks may not all get here, so there is no barrier
    then (it would wait out the 6 h timeout) and torchrun stops the other ranks instead.
    """
    if dist.enabled and torch.distributed.is_initialized():
        gc.collect()
        if sys.exc_info()[0] is None:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def barrier(dist: Distributed) -> None:
    if dist.enabled:
        torch.distributed.barrier()


# --------------------------------------------------------------------------- rank-0 output


def echo(dist: Distributed, text: str) -> None:
    """A line on stderr from rank 0."""
    if dist.is_main:
        print(text, file=sys.stderr, flush=True)


def report_skipped(dist: Distributed, notes: list[str]) -> None:
    """Each note about a skipped input on stderr (rank 0), then their count."""
    for note in notes:
        echo(dist, f"bmamba: {note}")
    if notes:
        echo(dist, f"bmamba: {len(notes)} input(s) skipped")


def is_main_process() -> bool:
    """True unless this is a torchrun worker of rank > 0 (for printing from the CLI)."""
    return os.environ.get("RANK", "0") == "0"
