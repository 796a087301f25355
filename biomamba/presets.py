"""Model sizes. Preset names are part of the interface (DESIGN.md, "The model").

- ``tiny``: for tests; exercises ngroups > 1.
- ``edge``: a CPU field device; the front end's first layers at 16 kHz dominate the cost, so it gets
  a slim front end (see the README for measured speeds).
- ``base``: paper scale, about the parameter count of AVES / HuBERT-base (the Transformer baseline).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

# Bounds on every size (inclusive), checked before anything is built: a config.json is data from
# a file, and `n_layers: 1000000000` must be a clear error, not hours of allocation. Each bound is
# far above any preset (``base`` is the largest) and below what one machine could hold.
LIMITS: dict[str, tuple[int, int]] = {
    "frontend_channels": (1, 4096),
    "d_model": (1, 8192),
    "n_layers": (1, 256),
    "d_state": (1, 1024),
    "headdim": (1, 1024),
    "expand": (1, 16),
    "ngroups": (1, 1024),
    "d_conv": (1, 64),
    "chunk_size": (1, 4096),
    "tf_layers": (0, 256),
    "tf_heads": (1, 1024),
    "tf_ffn": (1, 65536),
    "tf_pos_conv_kernel": (1, 4096),
    "tf_pos_conv_groups": (1, 4096),
}
MAX_PARAMETERS = 1_000_000_000
"""The most parameters a config may describe (4 GB of float32; ``base`` has about 90 million)."""


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of a BioMamba encoder (and of the Transformer baseline built at the same preset)."""

    frontend_channels: int
    d_model: int
    n_layers: int
    d_state: int = 128
    headdim: int = 64
    expand: int = 2
    ngroups: int = 1
    d_conv: int = 4
    chunk_size: int = 64
    dropout: float = 0.0
    # Transformer baseline at this preset (AVES/HuBERT-base at `base`).
    tf_layers: int = 12
    tf_heads: int = 12
    tf_ffn: int = 3072
    tf_pos_conv_kernel: int = 128
    tf_pos_conv_groups: int = 16

    def __post_init__(self):
        problems = config_problems(self)
        if problems:
            raise ValueError("; ".join(problems))

    def approx_parameters(self) -> int:
        """The weight count of the larger of the two encoders, to within a few percent (the
        projections of every layer; the front end and norms are small beside them)."""
        d_inner = self.expand * self.d_model
        heads = d_inner // self.headdim
        mamba = self.n_layers * self.d_model * (3 * d_inner + 2 * self.ngroups * self.d_state + heads)
        transformer = self.tf_layers * self.d_model * (4 * self.d_model + 2 * self.tf_ffn)
        return max(mamba, transformer)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**d)

    def with_overrides(self, **overrides) -> ModelConfig:
        return replace(self, **overrides)


def config_problems(config: ModelConfig) -> list[str]:
    """What is wrong with a config's numbers ("n_layers = 1000000000 is outside 1..256"), or []."""
    out = []
    for key, (low, high) in LIMITS.items():
        value = getattr(config, key)
        if isinstance(value, bool) or not isinstance(value, int):
            out.append(f"{key} = {value!r} is not a whole number")
        elif not low <= value <= high:
            out.append(f"{key} = {value} is outside {low}..{high}")
    dropout = config.dropout
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        out.append(f"dropout = {dropout!r} is not a number in [0, 1)")
    if not out and config.approx_parameters() > MAX_PARAMETERS:
        out.append(f"the sizes describe about {config.approx_parameters():,} parameters, more than "
                   f"the {MAX_PARAMETERS:,} accepted")
    return out


PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(frontend_channels=32, d_model=64, n_layers=2, d_state=16, headdim=16,
                        ngroups=2, chunk_size=16, tf_layers=1, tf_heads=2, tf_ffn=256,
                        tf_pos_conv_kernel=16, tf_pos_conv_groups=4),
    "edge": ModelConfig(frontend_channels=48, d_model=128, n_layers=4, d_state=32, headdim=32,
                        chunk_size=32, tf_layers=2, tf_heads=2, tf_ffn=512,
                        tf_pos_conv_kernel=64, tf_pos_conv_groups=16),
    "base": ModelConfig(frontend_channels=512, d_model=768, n_layers=24, d_state=128, headdim=64,
                        chunk_size=64),
}


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
