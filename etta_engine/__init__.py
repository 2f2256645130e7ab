"""etta_engine: inference and training engine for ETTA-style text-to-audio models.

Public names: ``PRESETS``, ``ModelConfig`` (``.dit``, ``.vae``, ``.text``), ``DiT``, ``VAE``,
``ETTAModel``, ``Pipeline``, ``save``, ``load``, and the ops in ``etta_engine.ops``.
"""

from etta_engine import ops
from etta_engine.checkpoint import CheckpointError, load, save
from etta_engine.config import PRESETS, DiTConfig, ModelConfig, TextConfig, VAEConfig, get_preset
from etta_engine.models.conditioning import Conditioner, DiTConditioning, NumberConditioner
from etta_engine.models.dit import DiT
from etta_engine.models.model import ETTAModel
from etta_engine.models.text import T5TextEncoder
from etta_engine.models.vae import VAE
from etta_engine.pipeline import Audio, Pipeline

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "VAE",
    "Audio",
    "CheckpointError",
    "Conditioner",
    "DiT",
    "DiTConditioning",
    "DiTConfig",
    "ETTAModel",
    "ModelConfig",
    "NumberConditioner",
    "Pipeline",
    "T5TextEncoder",
    "TextConfig",
    "VAEConfig",
    "get_preset",
    "load",
    "ops",
    "save",
]
