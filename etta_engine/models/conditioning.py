"""Conditioning: the number conditioners (``seconds_start``, ``seconds_total``) and the assembly
of the DiT's inputs from encoded text and numbers.

Memory = concat(text tokens (B, L, D), one token per number) with mask = text mask plus ones;
global conditioning = concat of the number embeddings (B, n * D). See ../shared/spec/ETTA.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn as nn

from etta_engine._validation import check_bool_mask, check_tensor
from etta_engine.config import ModelConfig
from etta_engine.ops._dispatch import fp32_region


class DiTConditioning(NamedTuple):
    """The conditioning inputs of :class:`etta_engine.DiT`."""

    context: torch.Tensor  # (B, L + n_numbers, D)
    context_mask: torch.Tensor  # (B, L + n_numbers) bool
    global_cond: torch.Tensor  # (B, n_numbers * D)


class NumberConditioner(nn.Module):
    """A number in [0, max_value] -> (B, dim): ``x = value / max_value``, learned Fourier features
    ``[x, sin(2 pi x w), cos(2 pi x w)]`` (1 + fourier_dim values), then ``Linear(fourier_dim + 1, dim)``."""

    def __init__(self, dim: int, fourier_dim: int, max_value: float) -> None:
        super().__init__()
        self.max_value = max_value
        self.fourier_weight = nn.Parameter(torch.randn(fourier_dim // 2))
        self.proj = nn.Linear(fourier_dim + 1, dim)

    def forward(self, values: torch.Tensor) -> torch.Tensor:  # values (B,)
        with fp32_region(values.device):
            x = values.float().clamp(0.0, self.max_value)[:, None] / self.max_value  # (B, 1)
            f = 2.0 * math.pi * x * self.fourier_weight.float()[None, :]  # (B, F/2)
            features = torch.cat((x, f.sin(), f.cos()), dim=-1)  # (B, F + 1)
        return self.proj(features.to(self.proj.weight.dtype))


class Conditioner(nn.Module):
    """Builds :class:`DiTConditioning` from text embeddings and the number values."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.keys = cfg.number_keys
        self.max_value = cfg.max_seconds
        self.numbers = nn.ModuleDict(
            {key: NumberConditioner(cfg.text.dim, cfg.number_fourier_dim, cfg.max_seconds) for key in cfg.number_keys}
        )

    def number_tensor(self, key: str, values, batch: int, device: torch.device) -> torch.Tensor:
        """``values`` (a float, a sequence of B floats or a (B,) tensor) as a checked fp32 tensor (B,) on ``device``.

        Numbers given on the host are checked there and uploaded without a device sync."""
        v = torch.as_tensor(values, dtype=torch.float32)
        if v.ndim == 0:
            v = v.expand(batch)
        if v.shape != (batch,):
            raise ValueError(
                f"{key} must be a number or have {batch} values (one per prompt), got shape {tuple(v.shape)}"
            )
        bad = ~torch.isfinite(v) | (v < 0) | (v > self.max_value)
        if bad.any():
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"{key}={v[i].item():g} is outside [0, {self.max_value:g}]")
        return v.to(device, non_blocking=True)

    def forward(
        self,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        numbers: dict[str, float | Sequence[float] | torch.Tensor],
    ) -> DiTConditioning:
        """text (B, L, D), text_mask (B, L) bool, numbers {key: values} for every key in ``self.keys``."""
        check_tensor("text", text, 3)
        B, L, _ = text.shape
        check_bool_mask("text_mask", text_mask, (B, L))
        missing, unknown = set(self.keys) - set(numbers), set(numbers) - set(self.keys)
        if missing or unknown:
            raise ValueError(f"numbers must have exactly the keys {list(self.keys)}; got {sorted(numbers)}")
        embeds = [self.numbers[k](self.number_tensor(k, numbers[k], B, text.device)) for k in self.keys]  # (B, D) each
        tokens = torch.stack(embeds, dim=1).to(text.dtype)  # (B, n, D)
        context = torch.cat((text, tokens), dim=1)  # (B, L + n, D)
        context_mask = torch.cat((text_mask, text_mask.new_ones(B, len(self.keys))), dim=1)
        global_cond = torch.cat(embeds, dim=-1)  # (B, n D)
        return DiTConditioning(context, context_mask, global_cond)
