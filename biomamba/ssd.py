"""The SSD (state-space duality) scan of Mamba2, in one place.

Every form here computes the same thing, the op ``bmamba::SSDChunkScan`` of DESIGN.md:

    dt_t  = softplus(dt_raw_t + dt_bias)                          [B, H]
    h_t   = exp(dt_t * A) * h_{t-1}  +  dt_t * x_t (outer) B_t     [B, H, P, N]
    y_t   = h_t . C_t  +  D * x_t                                  [B, H, P]

with head h reading group g = h // (H // G) of B and C. Shapes (B batch, T time, H heads, P head
dim, G groups, N state size):

    x [B, T, H, P]   dt [B, T, H] (raw)   A [H] (negative)   B, C [B, T, G, N]
    D [H]   dt_bias [H]   state [B, H, P, N]  ->  y [B, T, H, P], final state [B, H, P, N]

Three forms, each taking an initial state and returning the final one:

- ``ssd_recurrent``: the naive per-step recurrence. Slow; the oracle for tests.
- ``ssd_chunked``: the chunked "SSD" form of the Mamba2 paper (arXiv 2405.21060, section 6) as in
  mamba-ssm's ``ssd_minimal.py``: exact attention-like matmuls inside chunks of ``chunk_size``
  steps, and a recurrence over chunk states between them. Used for training and for long chunks.
  It is also what the portable ONNX export traces, so it is written export-safe: no CumSum (a
  MatMul with a constant triangular matrix instead), no Einsum, no -inf (exp(min(a, 0)) times a
  0/1 mask), and no Python loop over time.
- ``ssd_step``: one time step, for token-by-token streaming.

The state and the arithmetic are float32 for float32/float16/bfloat16 inputs (half-precision states
drift over hours), float64 for float64 inputs (the tests' reference), whatever the autocast: under
bf16/fp16 autocast (training with --amp) the matmuls below would otherwise run in half precision
(segment sums, cumulative sums and the states passed between chunks with relative errors of about
1e-2), so the scans switch autocast off for their own arithmetic (``float_arithmetic``).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def compute_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64 (test references); everything else is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def float_arithmetic(fn):
    """Run ``fn`` (a scan taking x first) with autocast off on x's device, so that its arithmetic
    stays in the compute dtype. Outside autocast (inference, export tracing) it adds nothing."""

    @functools.wraps(fn)
    def wrapper(x, *args, **kwargs):
        if not torch.is_autocast_enabled(x.device.type):
            return fn(x, *args, **kwargs)
        with torch.autocast(x.device.type, enabled=False):
            return fn(x, *args, **kwargs)

    return wrapper


def discretize(dt_raw: Tensor, dt_bias: Tensor) -> Tensor:
    """Step sizes dt = softplus(dt_raw + dt_bias), [..., H], in the compute dtype."""
    dtype = compute_dtype(dt_raw)
    return F.softplus(dt_raw.to(dtype) + dt_bias.to(dtype))


def expand_groups(bc: Tensor, n_heads: int) -> Tensor:
    """[..., G, N] -> [..., H, N]: head h reads group h // (H // G) (mamba-ssm's layout)."""
    groups = bc.shape[-2]
    if n_heads % groups:
        raise ValueError(f"heads ({n_heads}) must be a multiple of groups ({groups})")
    # A gather with a constant index, not repeat_interleave: the TorchScript ONNX exporter freezes
    # the traced batch and time sizes into repeat_interleave's Tile, which breaks dynamic shapes.
    group_of_head = torch.arange(n_heads, device=bc.device) // (n_heads // groups)
    return bc.index_select(-2, group_of_head)


def _initial_state(x: Tensor, n: int, state: Tensor | None) -> Tensor:
    b, _, h, p = x.shape
    if state is None:
        return torch.zeros(b, h, p, n, dtype=compute_dtype(x), device=x.device)
    return state.to(compute_dtype(x))


@float_arithmetic
def ssd_recurrent(x, dt, A, B, C, D, dt_bias, initial_state=None):
    """The naive recurrence, one step at a time (the oracle). Shapes as in the module docstring."""
    state = _initial_state(x, B.shape[-1], initial_state)
    ys = []
    for t in range(x.shape[1]):
        y, state = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], D, dt_bias, state)
        ys.append(y)
    if not ys:  # T == 0
        return x.new_zeros(x.shape), state
    return torch.stack(ys, dim=1), state


@float_arithmetic
def ssd_step(x, dt, A, B, C, D, dt_bias, state):
    """One step. x [B, H, P], dt [B, H] (raw), B, C [B, G, N], state [B, H, P, N] float32.

    Returns y [B, H, P] (dtype of x) and the new state [B, H, P, N] (float32, or float64 for float64 x).
    """
    n_heads, dtype = x.shape[1], compute_dtype(x)
    xf, state = x.to(dtype), state.to(dtype)
    dt = discretize(dt, dt_bias)                                   # [B, H]
    Bh = expand_groups(B.to(dtype), n_heads)                       # [B, H, N]
    Ch = expand_groups(C.to(dtype), n_heads)
    decay = torch.exp(dt * A.to(dtype))                            # [B, H]
    state = decay[..., None, None] * state + (dt[..., None] * xf)[..., None] * Bh[:, :, None, :]
    y = (state @ Ch[..., None]).squeeze(-1) + D.to(dtype)[:, None] * xf
    return y.to(x.dtype), state


def tril_ones(n: int, like: Tensor, strict: bool = False) -> Tensor:
    """[n, n] lower-triangular 0/1 matrix (diagonal included unless strict), dtype/device of like."""
    i = torch.arange(n, device=like.device)
    mask = i[:, None] > i[None, :] if strict else i[:, None] >= i[None, :]
    return mask.to(like.dtype)


def segsum(a: Tensor) -> Tensor:
    """Segment sums, [..., T] -> [..., T, T]: out[..., i, j] = a[j+1] + ... + a[i] for i >= j.

    Summing each segment directly (rather than subtracting two long cumulative sums) keeps float32
    exact enough over thousands of steps. Entries above the diagonal are 0 and must be masked by the
    caller. Written as a MatMul with triangular matrices, not CumSum, so that it exports cleanly.
    """
    n = a.shape[-1]
    terms = a[..., :, None] * tril_ones(n, a, strict=True)        # [..., k, j] = a_k if k > j
    return tril_ones(n, a) @ terms                                 # sum over j < k <= i


def decay_matrix(a: Tensor) -> Tensor:
    """exp(segsum(a)) on and below the diagonal, 0 above: [..., T] -> [..., T, T].

    a = dt * A <= 0, so segsum <= 0; the min(., 0) only guards half precision against overflow.
    """
    n = a.shape[-1]
    return torch.exp(torch.clamp(segsum(a), max=0.0)) * tril_ones(n, a)


@float_arithmetic
def ssd_chunked(x, dt, A, B, C, D, dt_bias, initial_state=None, chunk_size: int = 64):
    """The chunked SSD form. Shapes as in the module docstring; any T (padded to whole chunks).

    Follows ``ssd_minimal_discrete`` (mamba-ssm) step by step, with the four parts named as there
    (one function each, so that each step's temporaries are freed when it returns): 1. intra-chunk
    outputs (the diagonal blocks), 2. each chunk's final state from its own inputs, 3. the recurrence
    over chunks (the initial state enters here), 4. the contribution of the state entering each
    chunk to that chunk's outputs.

    Layout: [b, g, k, c, l, ...] = batch, group, head within the group, chunk, step in the chunk, so
    that the matmuls run over the trailing axes and B, C (shared by the k heads of a group) are
    multiplied once per group, not once per head. States are held as [n, p] inside (transposed)
    so that no input needs transposing for step 2.
    """
    batch, length, n_heads, head_dim = x.shape
    n_groups, n_state, dtype = B.shape[-2], B.shape[-1], compute_dtype(x)
    if n_heads % n_groups:
        raise ValueError(f"heads ({n_heads}) must be a multiple of groups ({n_groups})")
    k = n_heads // n_groups
    state0 = _initial_state(x, n_state, initial_state)

    # Pad to whole chunks with dt = 0: a padded step neither decays nor feeds the state. (Always
    # pad, even by 0, so that a traced graph handles every length.)
    pad = (-length) % chunk_size
    dt = F.pad(discretize(dt, dt_bias), (0, 0, 0, pad))                 # [b, t, h]
    xf, Bp, Cp = (F.pad(v.to(dtype), (0, 0, 0, 0, 0, pad)) for v in (x, B, C))
    n_chunks = (length + pad) // chunk_size

    X = (xf * dt[..., None]).reshape(batch, n_chunks, chunk_size, n_groups, k, head_dim)
    X = X.permute(0, 3, 4, 1, 2, 5)                                     # dt-weighted input, [b, g, k, c, l, p]
    a = (dt * A.to(dtype)).reshape(batch, n_chunks, chunk_size, n_groups, k).permute(0, 3, 4, 1, 2)
    Bc = Bp.reshape(batch, n_chunks, chunk_size, n_groups, n_state).permute(0, 3, 1, 2, 4)[:, :, None]
    Cc = Cp.reshape(batch, n_chunks, chunk_size, n_groups, n_state).permute(0, 3, 1, 2, 4)[:, :, None]
    a_cum = a @ tril_ones(chunk_size, a).T                              # cumsum in chunk, [b, g, k, c, l]

    y = _intra_chunk(X, a, Bc, Cc)                                      # 1.
    entering, final = _pass_states(state0, _chunk_states(X, a_cum, Bc), a_cum)   # 2. and 3.
    y = y + _state_outputs(Cc, entering, a_cum)                         # 4.

    y = y.permute(0, 3, 4, 1, 2, 5).reshape(batch, n_chunks * chunk_size, n_heads, head_dim)
    y = y[:, :length] + D.to(dtype)[:, None] * xf[:, :length]
    # The final state is copied out of the states of all chunks: as a view it would keep them all
    # ([b, h, c+1, n, p], 20 MB per layer for a 30 s chunk of the base preset) alive with the state.
    return y.to(x.dtype), final.reshape(batch, n_heads, head_dim, n_state).clone()


def _intra_chunk(X, a, Bc, Cc):
    """1. Diagonal blocks: y_i = sum_{j<=i} (C_i . B_j) exp(a_{j+1..i}) X_j -> [b, g, k, c, l, p]."""
    CB = Cc @ Bc.transpose(-1, -2)                                      # [b, g, 1, c, l(i), l(j)]
    return (CB * decay_matrix(a)) @ X


def _chunk_states(X, a_cum, Bc):
    """2. Each chunk's final state from its own inputs: sum_j exp(a_{j+1..end}) B_j X_j^T -> [b, g, k, c, n, p]."""
    decay_to_end = torch.exp(a_cum[..., -1:] - a_cum)                   # [b, g, k, c, l]
    return Bc.transpose(-1, -2) @ (X * decay_to_end[..., None])


def _pass_states(state0, local_states, a_cum):
    """3. The recurrence over chunks, as one matmul: the state entering chunk z (z = 0..c) is
    sum_{j<=z} exp(a_{chunks j+1..z}) S_j, with S_0 the initial state [b, h, p, n].

    Returns the state entering each chunk [b, g, k, c, n, p] and the final state [b, g, k, p, n].
    """
    b, g, k = local_states.shape[:3]
    s0 = state0.reshape(b, g, k, *state0.shape[2:]).transpose(-1, -2)[:, :, :, None]
    states = torch.cat([s0, local_states], dim=3)                       # [b, g, k, c+1, n, p]
    decay_chunks = decay_matrix(F.pad(a_cum[..., -1], (1, 0)))          # [b, g, k, c+1, c+1]
    entering = (decay_chunks @ states.flatten(-2)).reshape(states.shape)
    return entering[:, :, :, :-1], entering[:, :, :, -1].transpose(-1, -2)


def _state_outputs(Cc, entering, a_cum):
    """4. State -> output inside each chunk: exp(a_{1..i}) C_i . h_in -> [b, g, k, c, l, p]."""
    return (Cc @ entering) * torch.exp(a_cum)[..., None]
