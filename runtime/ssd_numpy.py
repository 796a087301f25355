"""The SSD scan (op ``bmamba::SSDChunkScan`` v1) in numpy: a torch-free CPU implementation.

It runs the plugin variant of an export under onnxruntime (through the custom op registered by
``biomamba.runtime.ort_custom_op``), and serves as an oracle written independently of the PyTorch
code in ``biomamba/ssd.py``. The op, per batch b and head h reading group g = h // (H / G)::

    dt_t = softplus(dt_raw_t + dt_bias)
    s_t  = exp(dt_t * A) * s_{t-1} + dt_t * x_t (outer) B_t        s [P, N]
    y_t  = s_t . C_t + D * x_t

Shapes: x [B, T, H, P], dt [B, T, H] (raw), A, D, dt_bias [H], B, C [B, T, G, N],
initial_state [B, H, P, N] -> y [B, T, H, P] (dtype of x), final_state [B, H, P, N] float32.

The form here walks over chunks of ``chunk`` steps one after the other, carrying the state, and
does the work inside a chunk with batched matrix products over all (batch, head) pairs at once:
within a chunk, with cumulative log-decays a_i = sum_{k<=i} dt_k A,

    y_i = sum_{j<=i} exp(a_i - a_j) (C_i . B_j) dt_j x_j   +   exp(a_i) C_i . s_in
    s_out = exp(a_L) s_in + sum_j exp(a_L - a_j) dt_j x_j (outer) B_j
"""

from __future__ import annotations

import numpy as np

DEFAULT_CHUNK = 64


def softplus(v: np.ndarray) -> np.ndarray:
    """log(1 + exp(v)), overflow-free."""
    return np.logaddexp(np.float32(0), v)


def ssd_scan(x, dt, A, B, C, D, dt_bias, initial_state=None, chunk: int = DEFAULT_CHUNK):
    """The chunk scan; see the module docstring for the op and the shapes. Computes in float32."""
    batch, length, heads, head_dim = x.shape
    groups, n_state = B.shape[-2:]
    if heads % groups:
        raise ValueError(f"heads ({heads}) must be a multiple of groups ({groups})")
    f32 = np.float32
    group_of_head = np.arange(heads) // (heads // groups)

    state = (np.zeros((batch, heads, head_dim, n_state), f32) if initial_state is None
             else np.array(initial_state, f32))                          # [b, h, p, n], a copy
    dt = softplus(dt.astype(f32) + dt_bias.astype(f32))                 # [b, t, h]
    A, D = A.astype(f32), D.astype(f32)
    # Time-major per (batch, head) so each chunk is a contiguous slice of batched matrices.
    xdt = (x.astype(f32) * dt[..., None]).transpose(0, 2, 1, 3)         # [b, h, t, p]
    log_decay = (dt * A).transpose(0, 2, 1)                              # [b, h, t]
    Bg = B.astype(f32).transpose(0, 2, 1, 3)                             # [b, g, t, n]
    Cg = C.astype(f32).transpose(0, 2, 1, 3)

    y = np.empty((batch, heads, length, head_dim), f32)
    for start in range(0, length, chunk):
        end = min(start + chunk, length)
        a = np.cumsum(log_decay[:, :, start:end], axis=-1)               # [b, h, l]
        Bc, Cc = Bg[:, :, start:end], Cg[:, :, start:end]                # [b, g, l, n]
        Xc = xdt[:, :, start:end]                                        # [b, h, l, p]

        # Inside the chunk: decays exp(a_i - a_j) for j <= i (the upper triangle would overflow).
        diff = a[..., :, None] - a[..., None, :]                         # [b, h, l, l]
        causal = np.tril(np.ones(diff.shape[-2:], bool))
        decay = np.exp(np.where(causal, diff, -np.inf))
        scores = (Cc @ Bc.transpose(0, 1, 3, 2))[:, group_of_head]       # C_i . B_j, [b, h, l, l]
        y_chunk = (scores * decay) @ Xc                                  # [b, h, l, p]

        # The state entering the chunk, seen by each step.
        Ch = Cc[:, group_of_head]                                        # [b, h, l, n]
        y_chunk += np.exp(a)[..., None] * (Ch @ state.transpose(0, 1, 3, 2))
        y[:, :, start:end] = y_chunk

        # The state leaving the chunk.
        to_end = np.exp(a[..., -1:] - a)                                 # [b, h, l]
        Bh = Bc[:, group_of_head]                                        # [b, h, l, n]
        state = (np.exp(a[..., -1])[..., None, None] * state
                 + (Xc * to_end[..., None]).transpose(0, 1, 3, 2) @ Bh)

    y = y.transpose(0, 2, 1, 3) + D[:, None] * x.astype(f32)            # [b, t, h, p]
    return y.astype(x.dtype, copy=False), state.astype(f32, copy=False)
