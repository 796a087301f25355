"""`bmamba pretrain`: HuBERT-style masked prediction of k-means pseudo-labels.

HuBERT's recipe (fairseq ``examples/hubert``; defaults here are its published ones):

- labels: phase 1 clusters 39-d MFCC (13 + deltas + delta-deltas, `biomamba.mfcc`) into 100
  k-means clusters; phase 2 clusters the features of a chosen layer of the phase-1 model (default
  the middle one: HuBERT used layer 6 of 12) into 500. k-means is `biomamba.kmeans.fit_kmeans`
  (mini-batch, streamed over the files in random order, on a random ``kmeans_fraction`` of them);
  labels are cached per recording as .npy in ``out/labels/<source>-k<K>/``. Layer features are
  RMS-normalised per frame before clustering (HuBERT's post-LN layers are normalised; our pre-norm
  residual stream is not), and they are computed streaming, chunk by chunk with carried state,
  so long recordings take flat memory;
- masking: span starts drawn with probability mask_prob / mask_length per frame (rounded
  randomly), at least ``min_masks`` spans, spans of mask_length frames that may overlap (about
  57 % of frames at 0.8 / 10); masked frames are replaced by a learned embedding before the
  encoder (`compute_mask`). Unlike fairseq we do not trim every row to the batch's smallest
  masked count (``require_same_masks``): spans stay whole;
- loss: the encoder output projected to ``final_dim`` (256), cosine similarity with learned label
  embeddings divided by a temperature (0.1), cross-entropy on the masked frames only; the CNN's
  gradient scaled by 0.1. HuBERT adds a feature penalty (mean square of the CNN features, weight
  10) that keeps the scale of its GroupNorm front end's output down. Here it is an option with
  default 0: our front end has a per-frame LayerNorm and GELU after every conv, so the penalty can
  only be lowered by driving the last layer's activations into GELU's flat negative side, which
  makes the features nearly constant; the front end is then frozen for fine-tuning. On the phoebe
  cross-validation (recipes/README.md) weight 10 left every pre-trained model at chance
  (BioMamba causal 0.12 +- 0.06) and weight 0 did not (0.36 +- 0.09);
- optimisation: AdamW (0.9, 0.98), eps 1e-6, weight decay 0.01, lr 5e-4, linear warm-up over 8 %
  of the steps then linear decay to 0, gradient clip 10.

Our encoder is causal (the streaming contract), so a masked frame is predicted from the past only.
Recipes (``recipe``):

- ``bidirectional-teacher`` (the default): phase 1 trains a bidirectional teacher
  (`BidirectionalBioMamba`: every layer adds a forward and a time-reversed Mamba2, "ExtBiMamba");
  phase 2 clusters the teacher's layer and trains the causal student on those labels (by default
  initialised from the teacher's forward branch and front end). Chosen on the phoebe
  cross-validation (recipes/README.md): fine-tuned accuracy 0.41 +- 0.08 against 0.36 +- 0.09 for
  ``causal``, a gap within the fold-to-fold noise; the teacher costs 13 % more pre-training time;
- ``causal``: the plain recipe above with the causal BioMamba in both phases;
- ``future``: the causal recipe plus ``future_frames`` heads (default 4): head k predicts, from the
  causal state at frame t, the label of frame t + k, on every frame (NEST-RQ-like next-token
  prediction added to the masked loss, weight ``future_weight``).

Phase 2 reads labels from ``labels_from`` (default ``init``) and, unless ``from_scratch``, starts
the model from ``init``. The run folder is `biomamba.trainutil`'s; ``last/`` holds the encoder as
an ordinary checkpoint (task "embed"; `BioMamba.load` and ``bmamba train --init`` take it) plus
``heads.safetensors`` (mask embedding, projections, label embeddings) and the training state.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from . import trainutil as tu
from .audio import SAMPLE_RATE, AudioError, audio_info, find_audio, iter_audio, read_audio
from .checkpoint import load_weights
from .kmeans import assign, fit_kmeans, load_centroids, save_centroids
from .mfcc import FRAME_LENGTH, FRAME_SHIFT, compute_deltas, mfcc_13
from .model import AudioModel, BioMamba, pad_for_frontend, register_architecture
from .presets import PRESETS, ModelConfig
from .streaming import CONTEXT, HOP, FrameBuffer
from .transformer import TransformerBaseline

RECIPES = ("causal", "bidirectional-teacher", "future")
ARCHITECTURES = ("biomamba", "transformer")
HEADS_FILE = "heads.safetensors"
IGNORE = -100  # label of padded frames
DEFAULT_FUTURE_FRAMES = 4


# --------------------------------------------------------------------------- the teacher


@register_architecture
class BidirectionalBioMamba(AudioModel):
    """A non-causal BioMamba for the teacher recipe: every layer adds a forward and a time-reversed
    Mamba2 to the residual stream, x + fwd(norm(x)) + flip(bwd(norm'(flip(x)))) ("ExtBiMamba").
    ``layers`` (forward), ``norm_f`` and the front end have BioMamba's names and shapes, so a
    causal BioMamba can start from them. Whole recordings only: it cannot stream."""

    architecture = "biomamba-bidirectional"

    def __init__(self, config: ModelConfig, task: str = "embed", classes: Sequence[str] = (),
                 pooling: str = "mean", preset: str | None = None):
        super().__init__(config, task, classes, pooling, preset)
        from .model import MambaBlock

        self.layers = nn.ModuleList(MambaBlock(config) for _ in range(config.n_layers))
        self.backward_layers = nn.ModuleList(MambaBlock(config) for _ in range(config.n_layers))
        self.norm_f = nn.RMSNorm(config.d_model, eps=1e-5)

    def encode_layers(self, frames: torch.Tensor, mask: torch.Tensor | None = None):
        """frames [B, T, D], mask [B, T] (valid frames; each row reversed within its own length)
        -> (hidden [B, T, D], per-layer outputs before norm_f)."""
        lengths = (mask.sum(-1) if mask is not None
                   else torch.full((frames.shape[0],), frames.shape[1], device=frames.device))
        index = reverse_index(lengths, frames.shape[1])
        outputs, x = [], frames
        for fwd, bwd in zip(self.layers, self.backward_layers):
            y_fwd, _ = fwd.mixer(fwd.norm(x))
            y_bwd, _ = bwd.mixer(bwd.norm(_gather_time(x, index)))
            x = x + y_fwd + _gather_time(y_bwd, index)
            outputs.append(x)
        return self.norm_f(x), outputs

    def encode(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.encode_layers(frames, mask)[0]


def reverse_index(lengths: torch.Tensor, n: int) -> torch.Tensor:
    """[B, n] time index reversing each row's first lengths[b] frames (padding stays in place)."""
    t = torch.arange(n, device=lengths.device)[None, :]
    return torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)


def _gather_time(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return torch.gather(x, 1, index[..., None].expand_as(x))


# --------------------------------------------------------------------------- masking


def mask_span_starts(n_valid: int, mask_prob: float, mask_length: int, min_masks: int,
                     generator: torch.Generator) -> torch.Tensor:
    """Span starts [n] (int64, distinct) for a row of n_valid frames, as HuBERT draws them:
    n = int(mask_prob * n_valid / mask_length + u), u ~ U[0, 1), at least min_masks, chosen
    without replacement among the starts whose span fits in the row (all of them fewer if the row
    has fewer). A row shorter than a span gets one span from frame 0."""
    if n_valid <= 0:
        return torch.zeros(0, dtype=torch.int64)
    candidates = max(1, n_valid - mask_length + 1)
    u = float(torch.rand((), generator=generator))
    n = max(min_masks, int(mask_prob * n_valid / mask_length + u))
    n = min(n, candidates)
    return torch.randperm(candidates, generator=generator)[:n]


def compute_mask(frame_lengths: torch.Tensor, n_frames: int, mask_prob: float = 0.8, mask_length: int = 10,
                 min_masks: int = 2, generator: torch.Generator | None = None) -> torch.Tensor:
    """Masked frames [B, n_frames] bool: the union of spans [start, start + mask_length) of
    `mask_span_starts`, within each row's valid frames (frame_lengths [B])."""
    generator = generator or torch.Generator().manual_seed(0)
    mask = torch.zeros(len(frame_lengths), n_frames, dtype=torch.bool)
    for b, n_valid in enumerate(frame_lengths.tolist()):
        n_valid = min(int(n_valid), n_frames)
        for s in mask_span_starts(n_valid, mask_prob, mask_length, min_masks, generator).tolist():
            mask[b, s : min(s + mask_length, n_valid)] = True
    return mask


# --------------------------------------------------------------------------- the loss


def cosine_logits(projected: torch.Tensor, label_embeddings: torch.Tensor, temperature: float) -> torch.Tensor:
    """[..., F] x [K, F] -> [..., K]: cosine similarity / temperature (HuBERT's logits)."""
    return F.normalize(projected.float(), dim=-1) @ F.normalize(label_embeddings.float(), dim=-1).T / temperature


def label_loss(projected: torch.Tensor, label_embeddings: torch.Tensor, labels: torch.Tensor,
               select: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Cross-entropy of the cosine logits on the selected frames that have a label.
    projected [B, T, F], labels [B, T] (IGNORE = none), select [B, T] bool.
    Returns (mean loss, number of correct argmax predictions, number of frames scored)."""
    keep = select & (labels != IGNORE)
    n = int(keep.sum())
    if n == 0:
        return projected.sum() * 0.0, torch.zeros((), device=projected.device), 0
    logits = cosine_logits(projected[keep], label_embeddings, temperature)
    target = labels[keep]
    return F.cross_entropy(logits, target), (logits.argmax(-1) == target).sum(), n


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; gradient times ``scale`` backward (fairseq's GradMultiply)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


class PretrainModel(nn.Module):
    """The encoder being pre-trained plus HuBERT's heads.

    forward(audio [B, 80 + 320 T] (with the 80 samples of left context), frame_lengths [B],
    labels [B, T] (IGNORE on padding), mask [B, T] bool) -> {"loss", "masked_loss",
    "future_loss", "penalty", "masked_acc"} (scalars).
    """

    def __init__(self, encoder: AudioModel, n_labels: int, final_dim: int = 256, future_frames: int = 0,
                 temperature: float = 0.1, feature_penalty: float = 0.0, cnn_grad_scale: float = 0.1,
                 future_weight: float = 1.0):
        super().__init__()
        d = encoder.config.d_model
        self.encoder = encoder
        self.mask_embedding = nn.Parameter(torch.empty(d).uniform_())
        self.proj = nn.Linear(d, final_dim)
        self.future_proj = nn.ModuleList(nn.Linear(d, final_dim) for _ in range(future_frames))
        self.label_embeddings = nn.Parameter(torch.empty(n_labels, final_dim).uniform_())
        self.temperature, self.feature_penalty = temperature, feature_penalty
        self.cnn_grad_scale, self.future_weight = cnn_grad_scale, future_weight

    def heads_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("encoder.")}

    def forward(self, audio: torch.Tensor, frame_lengths: torch.Tensor, labels: torch.Tensor,
                mask: torch.Tensor) -> dict[str, torch.Tensor]:
        frontend = self.encoder.frontend
        features = frontend.conv_features(audio)                        # [B, T, C]
        if self.cnn_grad_scale != 1.0:
            features = _ScaleGradient.apply(features, self.cnn_grad_scale)
        valid = torch.arange(features.shape[1], device=audio.device)[None, :] < frame_lengths[:, None]
        penalty = (features.float().pow(2).mean(-1) * valid).sum() / valid.sum().clamp(min=1)
        frames = frontend.project(features)
        frames = torch.where(mask[..., None], self.mask_embedding.to(frames.dtype), frames)
        hidden, _ = self.encoder.encode_layers(frames, valid)
        masked_loss, correct, n = label_loss(self.proj(hidden), self.label_embeddings, labels, mask & valid,
                                             self.temperature)
        future_loss = hidden.new_zeros((), dtype=torch.float32)
        for k, head in enumerate(self.future_proj, start=1):
            # head k at frame t predicts the label of frame t + k (unmasked or not: t cannot see it)
            loss_k, _, _ = label_loss(head(hidden[:, :-k]), self.label_embeddings, labels[:, k:],
                                      valid[:, k:], self.temperature)
            future_loss = future_loss + loss_k / len(self.future_proj)
        loss = masked_loss + self.future_weight * future_loss + self.feature_penalty * penalty
        return {"loss": loss, "masked_loss": masked_loss.detach(), "future_loss": future_loss.detach(),
                "penalty": penalty.detach(), "masked_acc": correct.float() / max(n, 1)}


# --------------------------------------------------------------------------- features for k-means


def _padded_blocks(path: Path, block_s: float) -> Iterator[np.ndarray]:
    """The recording with the model's 80 zeros of left context in front, in blocks."""
    yield np.zeros(CONTEXT, np.float32)
    yield from iter_audio(path, block_s=block_s)


def _ceps_blocks(path: Path, block_s: float) -> Iterator[tuple[torch.Tensor, int]]:
    """(13-d Kaldi MFCC blocks [n, 13] at 100 Hz of the context-padded recording, total samples).
    MFCC frame j reads padded samples [160 j, 160 j + 400); frames are independent, so blocks
    concatenated equal `mfcc_13` of the whole. The sample count comes with the last block."""
    buffer, samples = np.zeros(0, np.float32), -CONTEXT
    for block in _padded_blocks(path, block_s):
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


def mfcc_features(path: str | Path, block_s: float = 30.0) -> Iterator[np.ndarray]:
    """HuBERT's phase-1 features of a recording, one 39-d row per model frame, in blocks
    [n, 39] float32; concatenated they equal `biomamba.mfcc.mfcc_model_frames` of the whole
    recording, with flat memory. Deltas need 4 frames either side (two passes of +-2), so each
    block keeps 4 frames of context and emits a frame once 4 frames follow it."""
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

    for ceps, samples in _ceps_blocks(Path(path), block_s):
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


def _rms_normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True) + 1e-6)).astype(np.float32)


@torch.no_grad()
def layer_features(model: AudioModel, layer: int, path: str | Path, chunk_s: float = 30.0) -> Iterator[np.ndarray]:
    """Output of ``layer`` (1-based) of a model, RMS-normalised per frame, one row per model
    frame, in blocks [n, D] float32. A causal BioMamba runs streaming with carried state (equal to
    a whole run); a model that sees both directions (the bidirectional teacher, the Transformer)
    runs on pieces of ``chunk_s`` seconds each seen whole (a whole number of 20 ms frames)."""
    model.eval()
    device = next(model.parameters()).device
    if not isinstance(model, BioMamba):
        if round(chunk_s * SAMPLE_RATE) % HOP:
            raise ValueError(f"chunk_s {chunk_s} is not a whole number of 20 ms frames")
        for block in iter_audio(path, block_s=chunk_s):
            frames = model.frontend(pad_for_frontend(torch.from_numpy(block).to(device)[None]))
            _, outputs = model.encode_layers(frames)
            yield _rms_normalise(outputs[layer - 1][0].float().cpu().numpy())
        return
    buffer, state = FrameBuffer(), None
    max_frames = max(1, round(chunk_s * SAMPLE_RATE / HOP))

    def run(block: np.ndarray) -> np.ndarray:
        nonlocal state
        frames = model.frontend(torch.from_numpy(block).to(device)[None])
        _, state, outputs = model.encode_with_state(frames, state, return_layers=True)
        return _rms_normalise(outputs[layer - 1][0].float().cpu().numpy())

    for piece in iter_audio(path, block_s=chunk_s):
        buffer.append(piece)
        while (block := buffer.take(max_frames)) is not None:
            yield run(block)
    while (block := buffer.take(max_frames, final=True)) is not None:
        yield run(block)


class _FileFeatures:
    """A re-iterable stream of feature blocks over some recordings, in the order given."""

    def __init__(self, files: Sequence[Path], features: Callable[[Path], Iterator[np.ndarray]]):
        self.files, self.features = list(files), features

    def __iter__(self) -> Iterator[np.ndarray]:
        for f in self.files:
            yield from self.features(f)


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
                 dist: tu.Distributed = tu.Distributed(), log: Callable[[str], None] = print) -> list[Path]:
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
        centroids = fit_kmeans(_FileFeatures(chosen, features), k, seed=opts.seed,
                               batch_size=max(opts.batch_size, k), n_init=opts.n_init)
        save_centroids(folder / "centroids.npy", centroids)
    tu.barrier(dist)
    centroids = load_centroids(folder / "centroids.npy")
    dtype = np.int16 if k <= np.iinfo(np.int16).max else np.int32
    for i in range(dist.rank, len(files), dist.world_size):
        labels = [assign(block, centroids) for block in features(files[i])]
        with open(paths[i], "wb") as f:
            np.save(f, np.concatenate(labels).astype(dtype), allow_pickle=False)
    tu.barrier(dist)
    if dist.is_main:
        index_file.write_text(json.dumps(index, indent=1) + "\n")
    tu.barrier(dist)
    return paths


# --------------------------------------------------------------------------- data


class PretrainDataset(Dataset):
    """Crops of recordings with their frame labels.

    A recording of F label frames gives max(1, F // crop_frames) items; each item is a random
    crop of crop_frames frames (the whole recording when shorter), drawn from (seed, epoch, item).
    Items: (audio float32 [80 + 320 T]: the crop with its 80 samples of left context, zeros at the
    recording's start and past its end; labels int64 [T]).
    """

    def __init__(self, files: Sequence[Path], label_files: Sequence[Path], crop_s: float, seed: int = 0):
        self.files, self.label_files = list(files), list(label_files)
        self.frames = [int(np.load(p, mmap_mode="r").shape[0]) for p in self.label_files]
        self.durations = [audio_info(f).duration_s for f in self.files]
        self.crop = max(1, int(round(crop_s * SAMPLE_RATE / HOP)))
        self.items = [i for i, n in enumerate(self.frames) for _ in range(max(1, n // self.crop))]
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.items[index]
        total = self.frames[f]
        n = min(total, self.crop)
        start = int(np.random.default_rng((self.seed, self.epoch, index)).integers(0, total - n + 1))
        begin, end = start * HOP - CONTEXT, (start + n) * HOP
        offset = max(begin, 0) / SAMPLE_RATE
        duration = None if end / SAMPLE_RATE >= self.durations[f] else end / SAMPLE_RATE - offset
        audio = read_audio(self.files[f], offset_s=offset, duration_s=duration)[: end - max(begin, 0)]
        out = np.zeros(CONTEXT + n * HOP, np.float32)
        out[max(0, -begin) : max(0, -begin) + len(audio)] = audio
        labels = np.asarray(np.load(self.label_files[f], mmap_mode="r")[start : start + n], dtype=np.int64)
        return torch.from_numpy(out), torch.from_numpy(labels)


def collate_pretrain(batch) -> dict[str, torch.Tensor]:
    """-> {"audio" [B, 80 + 320 T_max], "labels" [B, T_max] (IGNORE past each end), "frame_lengths" [B]}."""
    t_max = max(len(labels) for _, labels in batch)
    audio = torch.zeros(len(batch), CONTEXT + t_max * HOP)
    labels = torch.full((len(batch), t_max), IGNORE, dtype=torch.int64)
    for b, (a, y) in enumerate(batch):
        audio[b, : len(a)] = a
        labels[b, : len(y)] = y
    return {"audio": audio, "labels": labels,
            "frame_lengths": torch.tensor([len(y) for _, y in batch], dtype=torch.int64)}


# --------------------------------------------------------------------------- pretrain


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
    recipe: str = "bidirectional-teacher"
    architecture: str = "biomamba"       # or "transformer": the baseline, HuBERT's recipe as is
    future_frames: int | None = None     # default 4 for recipe "future", else 0
    future_weight: float = 1.0
    preset: str = "base"
    mask_prob: float = 0.8
    mask_length: int = 10
    min_masks: int = 2
    final_dim: int = 256
    temperature: float = 0.1
    feature_penalty: float = 0.0         # HuBERT: 10; collapses our LayerNorm front end (see above)
    cnn_grad_scale: float = 0.1
    steps: int = 100_000
    crop_s: float = 5.0
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
    workers: int = 0
    seed: int = 0
    resume: bool = False


RESUME_KEYS = ("audio", "phase", "clusters", "init", "labels_from", "layer", "recipe", "architecture", "future_frames",
               "preset", "mask_prob", "mask_length", "crop_s", "batch_size", "seed", "steps")


def _weights_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def _readable(inputs: Sequence, notes: list[str]) -> tuple[list[Path], list[float]]:
    """(recordings that can be read, their durations in s); problems go into ``notes``."""
    files, problems = find_audio([str(i) for i in inputs])
    notes += [f"{i}: {r}" for i, r in problems]
    good, durations = [], []
    for f in files:
        try:
            info = audio_info(f)
            if info.duration_s * SAMPLE_RATE < FRAME_LENGTH:
                raise AudioError(f, "shorter than 25 ms")
            good.append(f)
            durations.append(info.duration_s)
        except AudioError as e:
            notes.append(f"skipped {e}")
    return good, durations


def _label_source(cfg: PretrainConfig, device: torch.device):
    """(name, features(path) callable, label model or None) for the phase."""
    if cfg.phase == 1:
        return "mfcc", mfcc_features, None
    source = cfg.labels_from or cfg.init
    if source is None:
        raise ValueError("phase 2 needs the phase-1 model: pass --init (or --labels-from)")
    model = tu.load_model_from(source, device).eval()
    n = len(model.layers)
    layer = cfg.layer if cfg.layer is not None else max(1, n // 2)
    if not 1 <= layer <= n:
        raise ValueError(f"--layer {layer}: the label model has layers 1..{n}")

    def features(path: Path) -> Iterator[np.ndarray]:
        return layer_features(model, layer, path, cfg.teacher_chunk_s)

    return f"{model.architecture}-layer{layer}-{_weights_digest(model)}", features, layer


def _build_encoder(cfg: PretrainConfig) -> AudioModel:
    """The model to train: the Transformer baseline (``architecture="transformer"``, HuBERT's own
    recipe); else phase 1 of the teacher recipe trains the bidirectional teacher, everything else a
    causal BioMamba. From ``init`` (its encoder) unless there is none or phase 2 asks for a fresh one."""
    if cfg.architecture == "transformer":
        arch, cls = "transformer", TransformerBaseline
    elif cfg.recipe == "bidirectional-teacher" and cfg.phase == 1:
        arch, cls = "biomamba-bidirectional", BidirectionalBioMamba
    else:
        arch, cls = "biomamba", BioMamba
    if cfg.init is None or (cfg.phase == 2 and cfg.from_scratch):
        return cls.from_preset(cfg.preset, task="embed")
    from .train import model_from_init

    return model_from_init(cfg.init, "embed", [], architecture=arch)


def check_options(cfg: PretrainConfig) -> None:
    """Raise ValueError naming the first option out of its range."""
    tu.check_choice("--recipe", cfg.recipe, RECIPES)
    tu.check_choice("--architecture", cfg.architecture, ARCHITECTURES)
    if cfg.architecture == "transformer" and cfg.recipe == "future":
        raise ValueError("--recipe future is for the causal BioMamba; the Transformer baseline takes HuBERT's "
                         "own recipe (leave --recipe out)")
    tu.check_choice("--phase", cfg.phase, (1, 2))
    tu.check_choice("--amp", cfg.amp, tu.AMP_CHOICES)
    tu.check_choice("--preset", cfg.preset, tuple(PRESETS))
    if not 0 < cfg.mask_prob <= 1 or cfg.mask_length < 1 or cfg.min_masks < 0:
        raise ValueError("need 0 < --mask-prob <= 1, --mask-length >= 1, --min-masks >= 0")
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.lr <= 0 or (cfg.clusters is not None and cfg.clusters < 2):
        raise ValueError("need --steps >= 1, --batch-size >= 1, --lr > 0, --clusters >= 2")
    if not 0 < cfg.kmeans_fraction <= 1:
        raise ValueError(f"--kmeans-fraction must be in (0, 1], got {cfg.kmeans_fraction}")


def pretrain(cfg: PretrainConfig) -> dict:
    """Pre-train as the module docstring says; the run folder is ``cfg.out``.

    Returns {"out", "last", "labels", "steps", "label_source", "clusters", "notes", "final": the
    last epoch's log line}. Raises ValueError (bad arguments or data), CheckpointError,
    TrainingError (NaN loss, interrupt: last/ saved).
    """
    cfg = PretrainConfig(**{**asdict(cfg), "out": Path(cfg.out)})
    check_options(cfg)
    future = cfg.future_frames if cfg.future_frames is not None else (
        DEFAULT_FUTURE_FRAMES if cfg.recipe == "future" else 0)
    if future and cfg.phase == 1 and cfg.recipe == "bidirectional-teacher":
        raise ValueError("future-frame heads need a causal encoder; the phase-1 teacher is bidirectional")
    k = cfg.clusters or (100 if cfg.phase == 1 else 500)
    dist, device = tu.setup_distributed(cfg.device)
    try:
        run = tu.Run(device, tu.select_amp(cfg.amp, device), dist)
        notes: list[str] = []
        files, durations = _readable(cfg.audio, notes)
        tu.report_skipped(dist, notes)
        if not files:
            raise ValueError(f"no readable recordings in {', '.join(map(str, cfg.audio)) or 'the inputs'}")
        args = {**asdict(cfg), "audio": [str(f) for f in files], "future_frames": future, "clusters": k}
        tu.prepare_out(cfg.out, cfg.resume, args, dist, RESUME_KEYS)
        name, features, layer = _label_source(cfg, device)
        frames = [max(1, int(d * SAMPLE_RATE) // HOP) for d in durations]
        labels_dir = cfg.out / "labels" / f"{name}-k{k}"
        label_files = build_labels(files, frames, features, k, labels_dir, name,
                                   KMeansOptions(cfg.kmeans_fraction, batch_size=cfg.kmeans_batch,
                                                 n_init=cfg.kmeans_init, seed=cfg.seed),
                                   dist, lambda s: tu.echo(dist, s))
        result = {"out": str(cfg.out), "labels": str(labels_dir), "label_source": name, "clusters": k,
                  "notes": notes}
        if cfg.labels_only:
            return result

        tu.seed_everything(cfg.seed)
        encoder = _build_encoder(cfg)
        model = PretrainModel(encoder, k, cfg.final_dim, future, cfg.temperature, cfg.feature_penalty,
                              cfg.cnn_grad_scale, cfg.future_weight).to(device)
        optimizer = torch.optim.AdamW(tu.parameter_groups(model, cfg.weight_decay), lr=cfg.lr,
                                      betas=(0.9, 0.98), eps=1e-6)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, tu.WarmupDecay(round(cfg.warmup_fraction * cfg.steps), cfg.steps))
        dataset = PretrainDataset(files, label_files, cfg.crop_s, cfg.seed)
        batches_per_epoch = max(1, math.ceil(math.ceil(len(dataset) / dist.world_size) / cfg.batch_size))
        # The Transformer sees both sides already: teacher and student are one model, HuBERT's recipe.
        recipe = "hubert" if cfg.architecture == "transformer" else cfg.recipe
        info = {"phase": cfg.phase, "recipe": recipe, "clusters": k, "label_source": name,
                "label_layer": layer, "future_frames": future, "mask_prob": cfg.mask_prob,
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

        def loss_fn(net, batch: dict, state: tu.LoopState):
            seed = int(np.random.SeedSequence([cfg.seed, state.global_step, dist.rank]).generate_state(1)[0])
            mask = compute_mask(batch["frame_lengths"].cpu(), batch["labels"].shape[1], cfg.mask_prob,
                                cfg.mask_length, cfg.min_masks, torch.Generator().manual_seed(seed))
            out = net(batch["audio"], batch["frame_lengths"], batch["labels"], mask.to(device))
            return out["loss"], {k: float(out[k]) for k in ("masked_loss", "future_loss", "penalty", "masked_acc")}

        loop = tu.LoopConfig(out=cfg.out, epochs=math.ceil(cfg.steps / batches_per_epoch),
                             batch_size=cfg.batch_size, seed=cfg.seed, max_steps=cfg.steps, workers=cfg.workers,
                             grad_clip=cfg.grad_clip, save_every=cfg.save_every, resume=cfg.resume,
                             what="pretrain")
        tu.echo(dist, f"bmamba pretrain: phase {cfg.phase}, recipe {recipe}, {type(encoder).__name__} "
                      f"{encoder.num_parameters():,} parameters, {len(files)} recordings, {len(dataset)} crops "
                      f"of {cfg.crop_s:g} s, {k} clusters, {cfg.steps} steps, {device}, amp {tu.amp_name(run.amp)}")
        state = tu.fit(run, loop, model, optimizer, scheduler, dataset, collate_pretrain, loss_fn, save, load,
                       items_per_batch=lambda b: float(b["frame_lengths"].sum()) * HOP / SAMPLE_RATE)
        return {**result, "last": str(cfg.out / tu.LAST), "steps": state.global_step,
                "final": state.history[-1] if state.history else {}}
    finally:
        tu.teardown_distributed(dist)
