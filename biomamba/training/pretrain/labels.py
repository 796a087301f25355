"""Pre-training labels: the features clustered (phase 1 MFCC, phase 2 a model layer), k-means on
them, and one label file per recording. See `biomamba.training.pretrain`."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ...audio import SAMPLE_RATE, AudioError, iter_audio
from ...model import AudioModel, BioMamba, pad_for_frontend
from ...scoring import frames_for
from ...streaming import CONTEXT, HOP, StreamRunner
from ..devices import Distributed, barrier
from ..kmeans import assign, fit_kmeans, load_centroids, save_centroids
from ..mfcc import FRAME_LENGTH, FRAME_SHIFT, compute_deltas, mfcc_13


def _padded_blocks(path: Path, block_s: float, sample_rate: int) -> Iterator[np.ndarray]:
    """The recording at the model's rate with its 80 zeros of left context in front, in blocks."""
    yield np.zeros(CONTEXT, np.float32)
    yield from iter_audio(path, block_s=block_s, sample_rate=sample_rate)


def _ceps_blocks(path: Path, block_s: float, sample_rate: int) -> Iterator[tuple[torch.Tensor, int]]:
    """(13-d Kaldi MFCC blocks [n, 13] at 100 Hz of the context-padded recording, total samples).
    MFCC frame j reads padded samples [160 j, 160 j + 400); frames are independent, so blocks
    concatenated equal `mfcc_13` of the whole. The sample count comes with the last block."""
    buffer, samples = np.zeros(0, np.float32), -CONTEXT
    for block in _padded_blocks(path, block_s, sample_rate):
        samples += len(block)
        buffer = np.concatenate([buffer, block])
        if len(buffer) < FRAME_LENGTH:
            continue
        n = 1 + (len(buffer) - FRAME_LENGTH) // FRAME_SHIFT
        yield mfcc_13(torch.from_numpy(buffer[: FRAME_SHIFT * (n - 1) + FRAME_LENGTH])), -1
        buffer = buffer[FRAME_SHIFT * n :]
    yield torch.zeros(0, 13), samples


def _with_deltas(ceps: torch.Tensor) -> torch.Tensor:
    """[n, 13] -> [n, 39]: MFCC, deltas, delta-deltas (edges replicated)."""
    c = ceps.T
    d = compute_deltas(c)
    return torch.cat([c, d, compute_deltas(d)], dim=0).T


def mfcc_features(path: str | Path, block_s: float = 30.0, sample_rate: int = SAMPLE_RATE) -> Iterator[np.ndarray]:
    """HuBERT's phase-1 features of a recording, one 39-d row per model frame, in blocks
    [n, 39] float32; concatenated they equal `biomamba.training.mfcc.mfcc_model_frames` of the whole
    recording, with flat memory. Deltas need 4 frames either side (two passes of +-2), so each
    block keeps 4 frames of context and emits a frame once 4 frames follow it.

    The recording is decoded at the model's ``sample_rate``; the MFCC counts samples (400-sample
    windows, 160-sample shift, two per model frame), so at 32 kHz it is the MFCC of the recording
    played at half speed: its mel bands reach 16 kHz instead of 8."""
    held, n_context, emitted_100hz = None, 0, 0
    picked = 0
    last_row = None

    def pick(feats: torch.Tensor) -> np.ndarray:
        nonlocal emitted_100hz, picked, last_row
        first = (-emitted_100hz) % 2          # model frame t is MFCC frame 2t
        rows = feats[first::2].numpy().astype(np.float32)
        emitted_100hz += len(feats)
        picked += len(rows)
        if len(rows):
            last_row = rows[-1]
        return rows

    for ceps, samples in _ceps_blocks(Path(path), block_s, sample_rate):
        if samples >= 0:  # end of the recording: emit the rest, then pad to the model's frames
            if held is not None and len(held) > n_context:
                rows = pick(_with_deltas(held)[n_context:])
                if len(rows):
                    yield rows
            total = -(-samples // HOP)
            if last_row is None:
                raise AudioError(path, "too short for MFCC features (under 400 samples)")
            if total > picked:
                yield np.repeat(last_row[None], total - picked, axis=0)
            return
        held = ceps if held is None else torch.cat([held, ceps])
        ready = len(held) - 4 - n_context
        if ready <= 0:
            continue
        rows = pick(_with_deltas(held)[n_context : n_context + ready])
        if len(rows):
            yield rows
        keep = max(0, n_context + ready - 4)
        held, n_context = held[keep:], min(4, n_context + ready)


def rms_normalise(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """[..., D] over its root mean square on D, in x's dtype (math in at least float32). The
    normalisation of layer features: phase-2 label features here, distillation targets in
    `objective.DistillModel`."""
    wide = x.to(torch.promote_types(x.dtype, torch.float32))
    return (wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rms_normalise(x: np.ndarray) -> np.ndarray:
    """`rms_normalise` of a numpy block [n, D], in float64, returned as float32."""
    return rms_normalise(torch.from_numpy(np.asarray(x, dtype=np.float64))).float().numpy()


@torch.no_grad()
def layer_features(model: AudioModel, layer: int, path: str | Path, chunk_s: float = 30.0) -> Iterator[np.ndarray]:
    """Output of ``layer`` (1-based) of a model, RMS-normalised per frame, one row per model
    frame, in blocks [n, D] float32. A causal BioMamba runs streaming with carried state (equal to
    a whole run); a model that sees both directions (the bidirectional teacher, the Transformer)
    runs on pieces of ``chunk_s`` seconds each seen whole (a whole number of frames). The recording
    is decoded at the model's rate."""
    model.eval()
    device = next(model.parameters()).device
    rate = model.sample_rate
    if not isinstance(model, BioMamba):
        if round(chunk_s * rate) % HOP:
            raise ValueError(f"chunk_s {chunk_s} is not a whole number of {HOP}-sample frames at {rate} Hz")
        for block in iter_audio(path, block_s=chunk_s, sample_rate=rate):
            frames = model.frontend(pad_for_frontend(torch.from_numpy(block).to(device)[None]))
            _, outputs = model.encode_layers(frames)
            yield _rms_normalise(outputs[layer - 1][0].float().cpu().numpy())
        return

    def run_chunk(block: np.ndarray, state):   # the streaming core's backend interface
        frames = model.frontend(torch.from_numpy(block).to(device))
        _, state, outputs = model.encode_with_state(frames, state, return_layers=True)
        return {"layer": outputs[layer - 1].float().cpu().numpy()}, state

    runner = StreamRunner(run_chunk, None, frames_for(chunk_s, rate))
    for piece in iter_audio(path, block_s=chunk_s, sample_rate=rate):
        out = runner.push(piece)
        if len(out.get("layer", ())):
            yield _rms_normalise(out["layer"])
    out = runner.flush()
    if len(out.get("layer", ())):
        yield _rms_normalise(out["layer"])


class _FileFeatures:
    """A re-iterable stream of feature blocks over some recordings, interleaved: blocks are taken
    in turn from ``open_files`` recordings at a time (the next recording, in the order given,
    takes the place of one that ends), so that k-means's shuffle buffer holds pieces of many
    recordings, not one or two long ones (a 10-minute recording is 30,000 frames)."""

    def __init__(self, files: Sequence[Path], features: Callable[[Path], Iterator[np.ndarray]],
                 open_files: int = 16):
        self.files, self.features, self.open_files = list(files), features, max(1, open_files)

    def __iter__(self) -> Iterator[np.ndarray]:
        waiting = iter(self.files)
        active = [iter(self.features(f)) for f in itertools.islice(waiting, self.open_files)]
        while active:
            for stream in list(active):
                block = next(stream, None)
                if block is not None:
                    yield block
                    continue
                active.remove(stream)
                following = next(waiting, None)
                if following is not None:
                    active.append(iter(self.features(following)))


@dataclass
class KMeansOptions:
    """HuBERT: MiniBatchKMeans, batch 10,000, on a random 10 % of the utterances."""

    fraction: float = 0.1
    min_frames_per_cluster: int = 20   # ... but at least this many frames per cluster when there are
    batch_size: int = 10_000
    n_init: int = 20
    seed: int = 0


def choose_kmeans_files(files: Sequence[Path], frames: Sequence[int], k: int, opts: KMeansOptions) -> list[Path]:
    """Recordings to fit k-means on, in random (seeded) order: enough to hold ``fraction`` of all
    frames and at least ``min_frames_per_cluster * k`` frames (or all of them)."""
    order = np.random.default_rng(opts.seed).permutation(len(files))
    want = min(sum(frames), max(opts.fraction * sum(frames), opts.min_frames_per_cluster * k))
    chosen, held = [], 0
    for i in order:
        if held >= want:
            break
        chosen.append(files[i])
        held += frames[i]
    return chosen


def build_labels(files: Sequence[Path], frames: Sequence[int], features: Callable[[Path], Iterator[np.ndarray]],
                 k: int, folder: Path, source: str, opts: KMeansOptions,
                 dist: Distributed = Distributed(), log: Callable[[str], None] = print) -> list[Path]:
    """Fit k-means (rank 0) and write one label file per recording (every rank its share):
    ``folder/NNNNNN.npy`` [frames] int16/int32, ``folder/centroids.npy``, and ``folder/index.json``
    (the files, the feature source, k) last, as the mark that the labels are complete. An index
    that matches is reused (a resumed run does not cluster again)."""
    folder = Path(folder)
    index = {"source": source, "k": k, "files": [str(f) for f in files], "kmeans": asdict(opts)}
    paths = [folder / f"{i:06d}.npy" for i in range(len(files))]
    index_file = folder / "index.json"
    if index_file.is_file() and json.loads(index_file.read_text()) == index:
        return paths
    if dist.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        index_file.unlink(missing_ok=True)
        chosen = choose_kmeans_files(files, frames, k, opts)
        log(f"bmamba pretrain: k-means, {k} clusters on {source} features of {len(chosen)} of "
            f"{len(files)} recordings")
        # the initial centres from a uniform sample of all the chosen recordings (an extra pass),
        # not from the first ones: with reassignment 0 a centre never leaves where it starts
        centroids = fit_kmeans(_FileFeatures(chosen, features), k, seed=opts.seed,
                               batch_size=max(opts.batch_size, k), n_init=opts.n_init, reservoir_init=True)
        save_centroids(folder / "centroids.npy", centroids)
    barrier(dist)
    centroids = load_centroids(folder / "centroids.npy")
    dtype = np.int16 if k <= np.iinfo(np.int16).max else np.int32
    for i in range(dist.rank, len(files), dist.world_size):
        labels = [assign(block, centroids) for block in features(files[i])]
        with open(paths[i], "wb") as f:
            np.save(f, np.concatenate(labels).astype(dtype), allow_pickle=False)
    barrier(dist)
    if dist.is_main:
        index_file.write_text(json.dumps(index, indent=1) + "\n")
    barrier(dist)
    return paths
