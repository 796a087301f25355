"""Pre-training objective: HuBERT's span masking, the cosine-logit label loss, and the model
that wraps the encoder with its heads (`PretrainModel`). See `biomamba.training.pretrain`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...model import AudioModel
from .data import IGNORE
from .labels import rms_normalise


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


def student_frames(encoder: AudioModel, audio: torch.Tensor, frame_lengths: torch.Tensor,
                   cnn_grad_scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The front end's part of every recipe: audio [B, 80 + 320 T] -> (frames [B, T, D], valid
    [B, T] bool, penalty: HuBERT's mean square of the CNN features over the valid frames). The CNN's
    gradient is scaled by ``cnn_grad_scale`` (HuBERT 0.1)."""
    frontend = encoder.frontend
    features = frontend.conv_features(audio)                            # [B, T, C]
    if cnn_grad_scale != 1.0:
        features = _ScaleGradient.apply(features, cnn_grad_scale)
    valid = torch.arange(features.shape[1], device=audio.device)[None, :] < frame_lengths[:, None]
    penalty = (features.float().pow(2).mean(-1) * valid).sum() / valid.sum().clamp(min=1)
    return frontend.project(features), valid, penalty


class EncoderWithHeads(nn.Module):
    """An ``encoder`` being pre-trained plus heads that exist only for pre-training; a run saves
    the encoder as a checkpoint and the rest (`heads_state_dict`) beside it."""

    def heads_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("encoder.")}


class PretrainModel(EncoderWithHeads):
    """The encoder being pre-trained plus HuBERT's heads.

    forward(audio [B, 80 + 320 T] (with the 80 samples of left context), frame_lengths [B],
    labels [B, T] (IGNORE on padding), mask [B, T] bool) -> {"loss", "masked_loss",
    "future_loss", "penalty", "masked_acc"} (scalars).

    ``delay`` d > 0 (the ``delayed`` recipe): the label of a masked frame t is predicted from the
    encoder's output at frame t + d, so a causal encoder has seen d frames after t (up to the end of
    a masked span when d >= the span length) and streams with a fixed latency of d frames; masked
    frames within d of a crop's end are not scored.
    """

    def __init__(self, encoder: AudioModel, n_labels: int, final_dim: int = 256, future_frames: int = 0,
                 temperature: float = 0.1, feature_penalty: float = 0.0, cnn_grad_scale: float = 0.1,
                 future_weight: float = 1.0, delay: int = 0):
        super().__init__()
        d = encoder.config.d_model
        self.encoder = encoder
        self.mask_embedding = nn.Parameter(torch.empty(d).uniform_())
        self.proj = nn.Linear(d, final_dim)
        self.future_proj = nn.ModuleList(nn.Linear(d, final_dim) for _ in range(future_frames))
        self.label_embeddings = nn.Parameter(torch.empty(n_labels, final_dim).uniform_())
        self.temperature, self.feature_penalty = temperature, feature_penalty
        self.cnn_grad_scale, self.future_weight, self.delay = cnn_grad_scale, future_weight, delay

    def forward(self, audio: torch.Tensor, frame_lengths: torch.Tensor, labels: torch.Tensor,
                mask: torch.Tensor) -> dict[str, torch.Tensor]:
        frames, valid, penalty = student_frames(self.encoder, audio, frame_lengths, self.cnn_grad_scale)
        frames = torch.where(mask[..., None], self.mask_embedding.to(frames.dtype), frames)
        hidden, _ = self.encoder.encode_layers(frames, valid)
        d = self.delay
        # output at t + d against the label of t; d = 0 is HuBERT's output at t
        masked_loss, correct, n = label_loss(self.proj(hidden[:, d:]), self.label_embeddings,
                                             labels[:, : labels.shape[1] - d], mask[:, : mask.shape[1] - d]
                                             & valid[:, d:], self.temperature)
        future_loss = hidden.new_zeros((), dtype=torch.float32)
        for k, head in enumerate(self.future_proj, start=1):
            # head k at frame t predicts the label of frame t + k (unmasked or not: t cannot see it)
            loss_k, _, _ = label_loss(head(hidden[:, :-k]), self.label_embeddings, labels[:, k:],
                                      valid[:, k:], self.temperature)
            future_loss = future_loss + loss_k / len(self.future_proj)
        loss = masked_loss + self.future_weight * future_loss + self.feature_penalty * penalty
        return {"loss": loss, "masked_loss": masked_loss.detach(), "future_loss": future_loss.detach(),
                "penalty": penalty.detach(), "masked_acc": correct.float() / max(n, 1)}


def distill_loss(predicted: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """DistilHuBERT's loss of one head, over the valid frames: mean |predicted - target| minus
    log sigmoid(cosine(predicted, target)). predicted, target [B, T, D], valid [B, T] bool.
    Returns (loss, mean L1, mean cosine)."""
    p, t = predicted[valid].float(), target[valid].float()
    if len(p) == 0:
        zero = predicted.sum() * 0.0
        return zero, zero.detach(), zero.detach()
    l1 = (p - t).abs().mean()
    cosine = F.cosine_similarity(p, t, dim=-1)
    return l1 - F.logsigmoid(cosine).mean(), l1.detach(), cosine.mean().detach()


class DistillModel(EncoderWithHeads):
    """The ``distill`` recipe's phase 2: a causal student learns, on every frame, the layers of a
    frozen teacher that saw the whole crop (DistilHuBERT, Chang et al. 2022: one linear head per
    teacher layer on the student's last hidden state, L1 - log sigmoid(cosine), weight 1 each).

    forward(audio [B, 80 + 320 T], frame_lengths [B]) -> {"loss", "l1", "cosine", "penalty"}
    (scalars; l1 and cosine are means over the heads). Targets: teacher layer l's output [B, T, D_t],
    RMS-normalised per frame (the residual stream's scale grows with depth; the cosine term is
    scale-free and the L1 term then is too). The teacher is held outside the module tree: it is
    neither trained, nor saved with the heads, nor wrapped by DDP.
    """

    def __init__(self, encoder: AudioModel, teacher: AudioModel, cnn_grad_scale: float = 0.1,
                 feature_penalty: float = 0.0):
        super().__init__()
        self.encoder = encoder
        self._teacher = [teacher.eval().requires_grad_(False)]
        d, d_teacher = encoder.config.d_model, teacher.config.d_model
        self.heads = nn.ModuleList(nn.Linear(d, d_teacher) for _ in range(len(teacher.layers)))
        self.cnn_grad_scale, self.feature_penalty = cnn_grad_scale, feature_penalty

    def forward(self, audio: torch.Tensor, frame_lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        teacher = self._teacher[0]
        frames, valid, penalty = student_frames(self.encoder, audio, frame_lengths, self.cnn_grad_scale)
        with torch.no_grad():
            _, targets = teacher.encode_layers(teacher.frontend(audio), valid)
        hidden, _ = self.encoder.encode_layers(frames, valid)
        loss, l1, cosine = penalty.new_zeros(()), 0.0, 0.0
        for head, target in zip(self.heads, targets):
            loss_l, l1_l, cosine_l = distill_loss(head(hidden), rms_normalise(target), valid)
            loss, l1, cosine = loss + loss_l, l1 + l1_l, cosine + cosine_l
        n = len(self.heads)
        return {"loss": loss + self.feature_penalty * penalty, "l1": l1 / n, "cosine": cosine / n,
                "penalty": penalty.detach()}
