"""The Mamba2 mixer, in plain PyTorch, with mamba-ssm's parameter names and shapes.

``Mamba2`` here and ``mamba_ssm.modules.mamba2.Mamba2`` have interchangeable state_dicts for the
same arguments (see DESIGN.md, "The model"). Unlike mamba-ssm, every call takes the carried state
``(conv_state, ssm_state)`` and returns the new one, so a recording can be processed in chunks with
results identical to a whole-recording run.

    conv_state [B, conv_dim, d_conv - 1]   the last xBC inputs before the causal conv
    ssm_state  [B, H, P, N]                the SSD state

Both are float32 (float64 when the model runs in float64, for tests against references).

with d_inner = expand * d_model, H = d_inner / headdim, P = headdim, N = d_state, G = ngroups,
conv_dim = d_inner + 2 * G * N.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .ssd import compute_dtype, ssd_chunked, ssd_step

MixerState = tuple[torch.Tensor, torch.Tensor]


class RMSNormGated(nn.Module):
    """norm(y * silu(z)) * weight, the RMS taken over groups of ``group_size`` channels.

    mamba-ssm's ``RMSNormGated`` with norm_before_gate=False and group_size = d_inner / ngroups.
    """

    def __init__(self, dim: int, group_size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.group_size, self.eps = group_size, eps

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """y, z [..., dim] -> [..., dim]."""
        dtype, work = y.dtype, compute_dtype(y)
        g = (y.to(work) * F.silu(z.to(work))).unflatten(-1, (-1, self.group_size))
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        return (g.flatten(-2) * self.weight.to(work)).to(dtype)


class Mamba2(nn.Module):
    """One Mamba2 mixer: in_proj -> causal depthwise conv -> SSD scan -> gated RMSNorm -> out_proj.

    Args mirror ``mamba_ssm.modules.mamba2.Mamba2`` (same defaults). ``use_kernels`` lets a CUDA
    run dispatch the scan to mamba-ssm's Triton kernel when it is installed; the pure-PyTorch
    ``ssd_chunked`` is the reference and the only path on a CPU.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        chunk_size: int = 256,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        bias: bool = False,
        conv_bias: bool = True,
        use_kernels: bool = True,
    ):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        if self.d_inner % headdim:
            raise ValueError(f"expand * d_model ({self.d_inner}) must be a multiple of headdim ({headdim})")
        self.headdim, self.nheads, self.ngroups = headdim, self.d_inner // headdim, ngroups
        if self.nheads % ngroups:
            raise ValueError(f"heads ({self.nheads}) must be a multiple of ngroups ({ngroups})")
        self.chunk_size, self.use_kernels = chunk_size, use_kernels
        # An exporter may swap the scan for another implementation of the same op (e.g. the ONNX
        # custom node of the plugin variant): scan_override(x, dt, A, B, C, D, dt_bias, ssm_state)
        # -> (y, final_state), same shapes as biomamba.ssd.ssd_chunked.
        self.scan_override = None
        self.conv_dim = self.d_inner + 2 * ngroups * d_state

        # Rows of in_proj, in order: z (d_inner), xBC (conv_dim), dt (nheads).
        self.in_proj = nn.Linear(d_model, self.d_inner + self.conv_dim + self.nheads, bias=bias)
        # Depthwise and causal; no padding here because the carried conv_state is the left padding.
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, bias=conv_bias)

        # dt_bias = softplus^-1 of a log-uniform dt in [dt_min, dt_max] (mamba-ssm's init).
        dt = torch.exp(torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads).uniform_(*A_init_range)))
        self.D = nn.Parameter(torch.ones(self.nheads))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True

        self.norm = RMSNormGated(self.d_inner, group_size=self.d_inner // ngroups)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def initial_state(self, batch: int = 1, device=None) -> MixerState:
        """Zero state: conv_state [B, conv_dim, d_conv-1], ssm_state [B, H, P, N], float32."""
        return (
            torch.zeros(batch, self.conv_dim, self.d_conv - 1, device=device),
            torch.zeros(batch, self.nheads, self.headdim, self.d_state, device=device),
        )

    def _split_xbc(self, xBC: torch.Tensor):
        """[..., conv_dim] -> x [..., H, P], B [..., G, N], C [..., G, N]."""
        gn = self.ngroups * self.d_state
        x, B, C = torch.split(xBC, [self.d_inner, gn, gn], dim=-1)
        return (
            x.unflatten(-1, (self.nheads, self.headdim)),
            B.unflatten(-1, (self.ngroups, self.d_state)),
            C.unflatten(-1, (self.ngroups, self.d_state)),
        )

    def forward(self, u: torch.Tensor, state: MixerState | None = None):
        """u [B, L, d_model] -> (y [B, L, d_model], new state). state=None starts from zeros."""
        batch, length, _ = u.shape
        conv_state, ssm_state = state if state is not None else self.initial_state(batch, u.device)
        z, xBC, dt = torch.split(self.in_proj(u), [self.d_inner, self.conv_dim, self.nheads], dim=-1)

        # Causal conv over [carried inputs | this chunk's inputs]; the last d_conv-1 inputs carry on.
        xBC = torch.cat([conv_state.to(xBC.dtype), xBC.transpose(1, 2)], dim=-1)
        # A copy, not a view: a view would keep this chunk's whole xBC [B, conv_dim, L] alive for as
        # long as the state is carried (24 layers x 11 MB for a 30 s chunk of the base preset).
        new_conv_state = xBC[:, :, xBC.shape[-1] - (self.d_conv - 1):].to(compute_dtype(u)).clone()
        xBC = F.silu(self.conv1d(xBC)).transpose(1, 2)             # [B, L, conv_dim]

        x, B, C = self._split_xbc(xBC)
        A = -torch.exp(self.A_log.to(compute_dtype(u)))
        y, new_ssm_state = self._scan(x, dt, A, B, C, ssm_state)
        y = self.norm(y.reshape(batch, length, self.d_inner), z)
        return self.out_proj(y), (new_conv_state, new_ssm_state)

    def _scan(self, x, dt, A, B, C, ssm_state):
        if self.scan_override is not None:
            return self.scan_override(x, dt, A, B, C, self.D, self.dt_bias, ssm_state)
        if self.use_kernels and x.is_cuda and _mamba_ssm_scan() is not None:
            y, final = _mamba_ssm_scan()(
                x, dt, A, B, C, self.chunk_size, D=self.D.float(), dt_bias=self.dt_bias.float(),
                initial_states=ssm_state.float(), dt_softplus=True, return_final_states=True,
            )
            return y, final.float()
        return ssd_chunked(x, dt, A, B, C, self.D, self.dt_bias, ssm_state, self.chunk_size)

    def step(self, u: torch.Tensor, state: MixerState):
        """One time step: u [B, d_model] -> (y [B, d_model], new state)."""
        conv_state, ssm_state = state
        z, xBC, dt = torch.split(self.in_proj(u), [self.d_inner, self.conv_dim, self.nheads], dim=-1)
        window = torch.cat([conv_state.to(xBC.dtype), xBC[..., None]], dim=-1)   # [B, conv_dim, d_conv]
        xBC = (window * self.conv1d.weight[:, 0]).sum(-1)
        if self.conv1d.bias is not None:
            xBC = xBC + self.conv1d.bias
        x, B, C = self._split_xbc(F.silu(xBC))
        A = -torch.exp(self.A_log.to(compute_dtype(u)))
        y, ssm_state = ssd_step(x, dt, A, B, C, self.D, self.dt_bias, ssm_state)
        y = self.norm(y.reshape(u.shape[0], self.d_inner), z)
        return self.out_proj(y), (window[:, :, 1:].to(compute_dtype(u)), ssm_state)


_KERNEL = None


def _mamba_ssm_scan():
    """mamba-ssm's ``mamba_chunk_scan_combined`` if importable (CUDA only), else None."""
    global _KERNEL
    if _KERNEL is None:
        try:
            from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
        except Exception:  # not installed, or no CUDA extension: our reference path is used
            mamba_chunk_scan_combined = False
        _KERNEL = mamba_chunk_scan_combined
    return _KERNEL or None
