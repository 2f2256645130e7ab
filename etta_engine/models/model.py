"""The complete text-to-audio model: DiT, VAE, number conditioners and text encoder."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn as nn

from etta_engine.config import ModelConfig, get_preset
from etta_engine.models.conditioning import Conditioner, DiTConditioning
from etta_engine.models.dit import DiT
from etta_engine.models.text import T5TextEncoder
from etta_engine.models.vae import VAE


class ETTAModel(nn.Module):
    """DiT + VAE + conditioner (+ text encoder).

    When ``cfg.text.pretrained`` is None the text encoder is a random T5 built here and saved with
    the model; otherwise it is loaded separately (:meth:`load_text_encoder`) and never saved.
    """

    def __init__(self, cfg: ModelConfig, text_encoder: T5TextEncoder | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.dit = DiT(cfg.dit)
        self.vae = VAE(cfg.vae)
        self.conditioner = Conditioner(cfg)
        if text_encoder is None and cfg.text.pretrained is None:
            text_encoder = T5TextEncoder.random(cfg.text)
        self.text_encoder = text_encoder

    @classmethod
    def from_preset(cls, name: str, seed: int = 0) -> ETTAModel:
        """The preset's model with random weights drawn from ``seed`` (the same weights on every machine)."""
        cfg = get_preset(name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(cfg)

    @property
    def saves_text_encoder(self) -> bool:
        """True if the text encoder's weights belong in this model's checkpoint."""
        return self.cfg.text.pretrained is None

    def load_text_encoder(self, path: str | os.PathLike | None = None) -> T5TextEncoder:
        """Load the pretrained T5 named by the config (or at ``path``) onto this model's device."""
        device = next(self.dit.parameters()).device
        self.text_encoder = T5TextEncoder.from_pretrained(self.cfg.text, path).to(device)
        return self.text_encoder

    def condition(
        self,
        prompts: Sequence[str],
        seconds_start: float | Sequence[float] | torch.Tensor = 0.0,
        seconds_total: float | Sequence[float] | torch.Tensor = 10.0,
        truncate: bool = False,
        padding: str = "max_length",
        cuda_graph: bool | str = False,
    ) -> DiTConditioning:
        """Encode prompts and seconds into the DiT's conditioning inputs (``padding`` and ``cuda_graph``: see
        :meth:`T5TextEncoder.forward`)."""
        if self.text_encoder is None:
            raise RuntimeError(
                f"model {self.cfg.name!r} has no text encoder loaded: call load_text_encoder(path) with a local "
                f"directory holding {self.cfg.text.pretrained}"
            )
        text, mask = self.text_encoder(prompts, truncate=truncate, padding=padding, cuda_graph=cuda_graph)
        dtype = next(self.conditioner.parameters()).dtype
        numbers = {"seconds_start": seconds_start, "seconds_total": seconds_total}
        return self.conditioner(text.to(dtype), mask, numbers)
