"""etta_engine: inference and training engine for ETTA-style text-to-audio models.

Public names: ``PRESETS``, ``ModelConfig`` (``.dit``, ``.vae``, ``.text``), ``DiT``, ``VAE``,
``ETTAModel``, ``Pipeline``, ``save``, ``load``, and the ops in ``etta_engine.ops``.

The names are imported on first use, so that ``etta_engine.config`` and ``etta_engine.runtime`` (the
generation runtime around exported graphs) import without PyTorch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "ops": "etta_engine.ops",
    "CheckpointError": "etta_engine.checkpoint",
    "load": "etta_engine.checkpoint",
    "save": "etta_engine.checkpoint",
    "PRESETS": "etta_engine.config",
    "DiTConfig": "etta_engine.config",
    "ModelConfig": "etta_engine.config",
    "TextConfig": "etta_engine.config",
    "VAEConfig": "etta_engine.config",
    "get_preset": "etta_engine.config",
    "Conditioner": "etta_engine.models.conditioning",
    "DiTConditioning": "etta_engine.models.conditioning",
    "NumberConditioner": "etta_engine.models.conditioning",
    "DiT": "etta_engine.models.dit",
    "ETTAModel": "etta_engine.models.model",
    "T5TextEncoder": "etta_engine.models.text",
    "VAE": "etta_engine.models.vae",
    "Audio": "etta_engine.pipeline",
    "Pipeline": "etta_engine.pipeline",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'etta_engine' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    value = module if _LAZY[name] == f"etta_engine.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
