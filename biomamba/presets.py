"""Model sizes. Preset names are part of the interface (DESIGN.md, "The model").

- ``tiny``: for tests; exercises ngroups > 1.
- ``edge``: a CPU field device; the front end's first layers at 16 kHz dominate the cost, so it gets
  a slim front end (see the README for measured speeds).
- ``base``: paper scale, about the parameter count of AVES / HuBERT-base (the Transformer baseline).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace


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
