"""bmamba: BioMamba, a Mamba2 audio model for bioacoustics, from training to field deployment.

Importing this package is cheap (no torch): the model classes load torch on first use, so that
``import biomamba.runtime`` on a field device costs numpy + onnxruntime only.

    import biomamba
    m = biomamba.BioMamba.from_preset("edge", task="detect", classes=["call"])
    probs = m.predict(audio)          # audio: 1-D float32 numpy at 16 kHz -> [frames, classes]
"""

__version__ = "0.1.0"

_LAZY = {
    "BioMamba": ("biomamba.model", "BioMamba"),
    "AudioModel": ("biomamba.model", "AudioModel"),
    "load_model": ("biomamba.loading", "load_model"),
    "TransformerBaseline": ("biomamba.transformer", "TransformerBaseline"),
    "Mamba2": ("biomamba.mamba2", "Mamba2"),
    "ModelConfig": ("biomamba.presets", "ModelConfig"),
    "PRESETS": ("biomamba.presets", "PRESETS"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'biomamba' has no attribute {name!r}")
