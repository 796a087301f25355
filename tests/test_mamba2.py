"""The Mamba2 mixer: mamba-ssm's parameter layout, carried state, single step."""

import pytest
import torch

from biomamba.mamba2 import Mamba2, RMSNormGated
from conftest import perturb_


# mamba_ssm.modules.mamba2.Mamba2's parameters, written from its documented layout (its code can't
# run here): d_inner = expand*d_model, nheads = d_inner/headdim, conv_dim = d_inner + 2*G*N,
# in_proj rows = 2*d_inner + 2*G*N + nheads (z, xBC, dt), depthwise conv1d with bias, per-head
# dt_bias/A_log/D, RMSNormGated weight [d_inner], out_proj without bias.
def mamba_ssm_layout(d_model, d_state=128, d_conv=4, expand=2, headdim=64, ngroups=1):
    d_inner = expand * d_model
    nheads = d_inner // headdim
    conv_dim = d_inner + 2 * ngroups * d_state
    return {
        "in_proj.weight": (2 * d_inner + 2 * ngroups * d_state + nheads, d_model),
        "conv1d.weight": (conv_dim, 1, d_conv),
        "conv1d.bias": (conv_dim,),
        "dt_bias": (nheads,),
        "A_log": (nheads,),
        "D": (nheads,),
        "norm.weight": (d_inner,),
        "out_proj.weight": (d_model, d_inner),
    }


@pytest.mark.parametrize("kwargs", [
    dict(d_model=768),                                               # mamba-ssm defaults
    dict(d_model=192, d_state=32, headdim=32),
    dict(d_model=64, d_state=16, headdim=16, ngroups=2),
    dict(d_model=96, d_state=8, d_conv=3, expand=1, headdim=24, ngroups=4),
])
def test_state_dict_matches_mamba_ssm(kwargs):
    ours = {k: tuple(v.shape) for k, v in Mamba2(**kwargs).state_dict().items()}
    assert ours == mamba_ssm_layout(**kwargs)


def test_init_follows_mamba_ssm():
    m = Mamba2(256, d_state=16, headdim=32)
    dt = torch.nn.functional.softplus(m.dt_bias)
    assert ((dt >= 1e-3 * 0.999) & (dt <= 0.1 * 1.001)).all()
    A = torch.exp(m.A_log)
    assert ((A >= 1) & (A <= 16)).all()
    assert torch.equal(m.D, torch.ones_like(m.D))


def make(ngroups=2, seed=0):
    torch.manual_seed(seed)
    m = Mamba2(32, d_state=8, headdim=8, ngroups=ngroups, chunk_size=8).double().eval()
    return perturb_(m, 0.1, seed)


def test_chunks_with_state_equal_whole():
    m = make()
    u = torch.randn(2, 53, 32, dtype=torch.float64)
    y_all, (c_all, s_all) = m(u)
    state, ys = None, []
    for a, b in [(0, 1), (1, 3), (3, 20), (20, 53)]:       # pieces shorter than d_conv - 1 too
        y, state = m(u[:, a:b], state)
        ys.append(y)
    assert torch.allclose(torch.cat(ys, 1), y_all, atol=1e-12, rtol=0)
    assert torch.allclose(state[0].double(), c_all.double(), atol=1e-12, rtol=0)
    assert torch.allclose(state[1], s_all, atol=1e-12, rtol=0)


def test_step_equals_forward():
    m = make()
    u = torch.randn(2, 12, 32, dtype=torch.float64)
    y_all, _ = m(u)
    conv, ssm = m.initial_state(2)
    state = (conv.double(), ssm.double())
    for t in range(12):
        y, state = m.step(u[:, t], state)
        assert torch.allclose(y, y_all[:, t], atol=1e-12, rtol=0)


def test_conv_is_causal_and_state_is_last_inputs():
    """Changing a later input never changes an earlier output; conv_state = last d_conv-1 xBC inputs."""
    m = make()
    u = torch.randn(1, 10, 32, dtype=torch.float64)
    v = u.clone()
    v[:, 6:] += 1.0
    assert torch.allclose(m(u)[0][:, :6], m(v)[0][:, :6], atol=1e-13, rtol=0)
    _, (conv_state, _) = m(u)
    xBC = m.in_proj(u)[..., m.d_inner: m.d_inner + m.conv_dim]
    assert torch.allclose(conv_state.double(), xBC[0, -3:].T[None].double(), atol=1e-6)


def test_gated_rmsnorm_groups():
    norm = RMSNormGated(8, group_size=4).double()
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 9.0))
    y, z = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    g = y * z * torch.sigmoid(z)
    expect = torch.cat([g[:, :4] / g[:, :4].pow(2).mean(-1, keepdim=True).add(1e-5).sqrt(),
                        g[:, 4:] / g[:, 4:].pow(2).mean(-1, keepdim=True).add(1e-5).sqrt()], -1)
    assert torch.allclose(norm(y, z), expect * torch.arange(1.0, 9.0, dtype=torch.float64), atol=1e-12)


def test_bad_arguments():
    with pytest.raises(ValueError, match="headdim"):
        Mamba2(30, headdim=16)
    with pytest.raises(ValueError, match="ngroups"):
        Mamba2(32, headdim=16, ngroups=3)


def _mamba_ssm_on_cuda():
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        import mamba_ssm  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"mamba-ssm not importable ({type(e).__name__})"
    return None


@pytest.mark.gpu
@pytest.mark.skipif(_mamba_ssm_on_cuda() is not None, reason=str(_mamba_ssm_on_cuda()))
def test_same_output_as_mamba_ssm_on_cuda():
    from mamba_ssm.modules.mamba2 import Mamba2 as TheirMamba2

    kwargs = dict(d_model=256, d_state=64, headdim=32, ngroups=1, chunk_size=64)
    ours = Mamba2(**kwargs, use_kernels=False).cuda()
    theirs = TheirMamba2(**kwargs).cuda()
    theirs.load_state_dict(ours.state_dict())
    u = torch.randn(2, 500, 256, device="cuda")
    with torch.no_grad():
        y_ours, _ = ours(u)
        y_theirs = theirs(u)
    assert (y_ours - y_theirs).abs().max() <= 1e-3 * y_theirs.abs().max()
    ours.use_kernels = True   # our block dispatching to their scan kernel gives the same numbers
    with torch.no_grad():
        y_kernel, _ = ours(u)
    assert (y_kernel - y_ours).abs().max() <= 1e-3 * y_ours.abs().max()
