"""The SSD's own checks: the oracle (`ssd_recurrent`) and the step against a hand computation,
and properties of the chunked form. Every implementation against the oracle is
tests/test_ssd_conformance.py."""

import pytest
import torch

from biomamba.ssd import ssd_chunked, ssd_recurrent, ssd_step


def random_inputs(b, t, h, p, g, n, dtype, seed):
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    x, dt, B, C = r(b, t, h, p), r(b, t, h), r(b, t, g, n), r(b, t, g, n)
    A = -torch.exp(torch.rand(h, generator=gen, dtype=torch.float64) * 3)    # -1 .. -20
    D, dt_bias = r(h), r(h) - 1.0
    state = r(b, h, p, n)
    cast = (lambda v: v.to(dtype)) if dtype != torch.float64 else (lambda v: v)
    args = [cast(v) for v in (x, dt, A, B, C, D, dt_bias)]
    return args, cast(state)


@pytest.mark.parametrize("form", ["ssd_step", "ssd_recurrent"])
def test_one_step_matches_hand_computation(form):
    """One step written out with plain loops over every index (groups, heads, state): checks the
    oracle of the conformance table itself, and the single step."""
    args, s0 = random_inputs(1, 1, 4, 3, 2, 5, torch.float64, seed=11)
    x, dt, A, B, C, D, dt_bias = args
    if form == "ssd_step":
        y, s = ssd_step(x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D, dt_bias, s0)
    else:
        y, s = ssd_recurrent(*args, s0)
        y = y[:, 0]
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


def test_long_sequence_strong_decay_stays_finite():
    """Thousands of steps with fast decay: no overflow, no NaN (the segment sums stay direct)."""
    args, s0 = random_inputs(1, 4000, 2, 4, 1, 8, torch.float32, seed=9)
    args[1] = args[1] + 4.0   # large dt: strong decay per step
    y, s = ssd_chunked(*args, s0, chunk_size=64)
    assert torch.isfinite(y).all() and torch.isfinite(s).all()


def rel_err(a, ref):
    return float((a.detach().double() - ref).abs().max() / ref.abs().max())


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
