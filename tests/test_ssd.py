"""The chunked SSD and the single step against the naive recurrence (the oracle)."""

import pytest
import torch

from biomamba.ssd import ssd_chunked, ssd_recurrent, ssd_step


def random_inputs(b, t, h, p, g, n, dtype, seed, nonzero_state=True):
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    x, dt, B, C = r(b, t, h, p), r(b, t, h), r(b, t, g, n), r(b, t, g, n)
    A = -torch.exp(torch.rand(h, generator=gen, dtype=torch.float64) * 3)    # -1 .. -20
    D, dt_bias = r(h), r(h) - 1.0
    state = r(b, h, p, n) if nonzero_state else None
    cast = (lambda v: v.to(dtype)) if dtype != torch.float64 else (lambda v: v)
    args = [cast(v) for v in (x, dt, A, B, C, D, dt_bias)]
    return args, (cast(state) if state is not None else None)


def rel_err(a, ref):
    return float((a.detach().double() - ref).abs().max() / ref.abs().max())


# (batch, length, heads, headdim, groups, state size, chunk size): lengths off the chunk grid,
# shorter than one chunk, exactly one chunk, many chunks; several groups.
SHAPES = [
    (1, 1, 2, 4, 1, 3, 8),
    (2, 7, 4, 8, 2, 16, 8),
    (2, 64, 4, 8, 4, 16, 64),
    (1, 100, 6, 5, 3, 7, 16),
    (3, 333, 8, 16, 2, 32, 64),
    (1, 1000, 4, 8, 1, 16, 256),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("nonzero_state", [True, False])
def test_chunked_equals_recurrence_float64(shape, nonzero_state):
    *dims, chunk = shape
    args, s0 = random_inputs(*dims, torch.float64, seed=sum(shape), nonzero_state=nonzero_state)
    y_ref, s_ref = ssd_recurrent(*args, s0)
    y, s = ssd_chunked(*args, s0, chunk_size=chunk)
    assert y.dtype == torch.float64 and s.dtype == torch.float64
    assert (y - y_ref).abs().max() <= 1e-10 * max(1.0, float(y_ref.abs().max()))
    assert (s - s_ref).abs().max() <= 1e-10 * max(1.0, float(s_ref.abs().max()))


@pytest.mark.parametrize("shape", SHAPES)
def test_chunked_float32_close_to_float64_recurrence(shape):
    *dims, chunk = shape
    args64, s64 = random_inputs(*dims, torch.float64, seed=7 + sum(shape))
    y_ref, s_ref = ssd_recurrent(*args64, s64)
    args32 = [v.float() for v in args64]
    y, s = ssd_chunked(*args32, s64.float(), chunk_size=chunk)
    assert y.dtype == torch.float32 and s.dtype == torch.float32
    assert rel_err(y, y_ref) <= 1e-5
    assert rel_err(s, s_ref) <= 1e-5


def test_step_equals_recurrence():
    args, s0 = random_inputs(2, 5, 4, 8, 2, 16, torch.float64, seed=3)
    x, dt, A, B, C, D, dt_bias = args
    y_ref, s_ref = ssd_recurrent(*args, s0)
    state = s0
    for t in range(x.shape[1]):
        y, state = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], D, dt_bias, state)
        assert torch.allclose(y, y_ref[:, t], rtol=0, atol=1e-12)
    assert torch.allclose(state, s_ref, rtol=0, atol=1e-12)


def test_step_matches_hand_computation():
    """One step written out with plain loops over every index (groups, heads, state)."""
    args, s0 = random_inputs(1, 1, 4, 3, 2, 5, torch.float64, seed=11)
    x, dt, A, B, C, D, dt_bias = args
    y, s = ssd_step(x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D, dt_bias, s0)
    for h in range(4):
        g = h // 2                                   # 4 heads over 2 groups
        d = torch.nn.functional.softplus(dt[0, 0, h] + dt_bias[h])
        for p in range(3):
            acc = 0.0
            for n in range(5):
                hn = torch.exp(d * A[h]) * s0[0, h, p, n] + d * x[0, 0, h, p] * B[0, 0, g, n]
                assert abs(float(s[0, h, p, n] - hn)) < 1e-12
                acc += hn * C[0, 0, g, n]
            assert abs(float(y[0, h, p] - (acc + D[h] * x[0, 0, h, p]))) < 1e-12


def test_chunked_split_in_time_equals_one_call():
    """Carrying the final state into the next call continues the scan exactly."""
    args, s0 = random_inputs(2, 150, 4, 8, 2, 16, torch.float64, seed=5)
    y_all, s_all = ssd_chunked(*args, s0, chunk_size=16)
    cuts = [0, 1, 37, 38, 100, 150]
    state, ys = s0, []
    for a, b in zip(cuts[:-1], cuts[1:]):
        part = [v[:, a:b] if v.dim() > 1 else v for v in args]
        y, state = ssd_chunked(*part, state, chunk_size=16)
        ys.append(y)
    assert torch.allclose(torch.cat(ys, 1), y_all, rtol=0, atol=1e-11)
    assert torch.allclose(state, s_all, rtol=0, atol=1e-11)


def test_long_sequence_strong_decay_stays_finite():
    """Thousands of steps with fast decay: no overflow, no NaN (the segment sums stay direct)."""
    args, s0 = random_inputs(1, 4000, 2, 4, 1, 8, torch.float32, seed=9)
    args[1] = args[1] + 4.0   # large dt: strong decay per step
    y, s = ssd_chunked(*args, s0, chunk_size=64)
    assert torch.isfinite(y).all() and torch.isfinite(s).all()


def test_half_inputs_keep_float32_state():
    args, s0 = random_inputs(1, 40, 4, 8, 2, 16, torch.float32, seed=2)
    half = [v.half() if v.dim() > 1 else v for v in args]
    y, s = ssd_chunked(*half, s0, chunk_size=16)
    assert y.dtype == torch.float16 and s.dtype == torch.float32


# --------------------------------------------------------------------------- mixed precision

@pytest.mark.parametrize("shape", [(2, 200, 4, 8, 2, 16, 64), (1, 333, 8, 16, 2, 32, 64)])
def test_chunked_runs_float32_under_bf16_autocast(shape):
    """Under bf16 autocast the SSD still computes in float32 (its promise): segment sums, cumulative
    sums and the states passed between chunks would otherwise go through bf16 matmuls (relative
    errors of about 1e-2). Oracle: the float64 recurrence; the bound is float32's."""
    *dims, chunk = shape
    args64, s64 = random_inputs(*dims, torch.float64, seed=11 + sum(shape))
    y_ref, s_ref = ssd_recurrent(*args64, s64)
    args32 = [v.float() for v in args64]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, s = ssd_chunked(*args32, s64.float(), chunk_size=chunk)
    assert y.dtype == torch.float32 and s.dtype == torch.float32
    assert rel_err(y, y_ref) <= 1e-5
    assert rel_err(s, s_ref) <= 1e-5


def test_step_runs_float32_under_bf16_autocast():
    args64, s64 = random_inputs(2, 1, 4, 8, 2, 16, torch.float64, seed=5)
    x, dt, A, B, C, D, dt_bias = args64
    y_ref, s_ref = ssd_step(x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D, dt_bias, s64)
    f = [v.float() for v in (x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D, dt_bias)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, s = ssd_step(*f, s64.float())
    assert s.dtype == torch.float32
    assert rel_err(y, y_ref) <= 1e-5 and rel_err(s, s_ref) <= 1e-5


def test_mamba2_state_float32_under_bf16_autocast(monkeypatch):
    """The whole mixer under autocast: its projections may run in bf16, but the scan's carried state
    must match a float64 scan of the same (bf16-rounded) scan inputs, not drift like a bf16 scan."""
    from biomamba import mamba2
    from biomamba.mamba2 import Mamba2

    torch.manual_seed(0)
    mixer = Mamba2(32, d_state=16, headdim=8, chunk_size=16)
    u = torch.randn(2, 150, 32)
    seen = {}

    def capture(x, dt, A, B, C, D, dt_bias, state, chunk_size):
        seen["inputs"] = [v.detach().clone() for v in (x, dt, A, B, C, D, dt_bias, state)]
        return ssd_chunked(x, dt, A, B, C, D, dt_bias, state, chunk_size)

    monkeypatch.setattr(mamba2, "ssd_chunked", capture)   # the mixer's own path, inputs recorded
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, (_, state) = mixer(u)
    assert state.dtype == torch.float32
    x, dt, A, B, C, D, dt_bias, s0 = (v.double() for v in seen["inputs"])
    _, s_ref = ssd_recurrent(x, dt, A, B, C, D, dt_bias, s0)
    assert rel_err(state, s_ref) <= 1e-5
