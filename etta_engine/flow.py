"""Flow matching (rectified flow / OT-CFM) and the v-diffusion alternative.

Conventions (../shared/spec/ETTA.md): flow time t in [0, 1], t = 1 is pure noise and t = 0 is data;
``x_t = (1 - t) x0 + t noise`` and the network predicts ``v = noise - x0``, so ``dx/dt = v``.

v-diffusion (the paper's alternative objective) uses the cosine schedule
``x_t = alpha x0 + sigma noise`` with ``alpha = cos(pi t / 2)``, ``sigma = sin(pi t / 2)`` and
predicts ``v = alpha noise - sigma x0``. :func:`velocity_from_v_prediction` turns such a model into
a rectified-flow velocity function, so the same schedules and solvers sample both.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _bcast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """t (B,) -> (B, 1, ..., 1) broadcastable against x."""
    return t.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)


# ------------------------------------------------------------------ rectified flow / OT-CFM


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 - t) x0 + t noise``; x0, noise (B, ...), t (B,)."""
    tb = _bcast(t, x0)
    return (1 - tb) * x0 + tb * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity of the straight path, ``noise - x0`` (constant in t)."""
    return noise - x0


def flow_matching_loss(prediction: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """MSE between the predicted velocity and ``noise - x0`` (the official objective)."""
    return F.mse_loss(prediction.float(), velocity_target(x0, noise).float())


def x0_from_velocity(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The data estimate implied by a velocity: ``x0 = x_t - t v``."""
    return x_t - _bcast(t, x_t) * v


# ------------------------------------------------------------------ t samplers


def sample_t_logit_normal(
    batch: int,
    mean: float = 0.0,
    std: float = 1.0,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``t = sigmoid(n)``, n ~ N(mean, std^2): ETTA's training distribution (mean 0, std 1). (batch,) fp32."""
    if not std > 0:
        raise ValueError(f"std={std} must be positive")
    n = torch.randn(batch, generator=generator, device=device) * std + mean
    return torch.sigmoid(n)


def sample_t_uniform(
    batch: int, *, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """t ~ U(0, 1), (batch,) fp32."""
    return torch.rand(batch, generator=generator, device=device)


# ------------------------------------------------------------------ v-diffusion (cosine schedule)


def vdiffusion_alpha_sigma(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``alpha = cos(pi t / 2)``, ``sigma = sin(pi t / 2)``."""
    phi = t * (math.pi / 2)
    return torch.cos(phi), torch.sin(phi)


def vdiffusion_interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = alpha x0 + sigma noise``."""
    alpha, sigma = (_bcast(a, x0) for a in vdiffusion_alpha_sigma(t))
    return alpha * x0 + sigma * noise


def vdiffusion_target(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The v-prediction target ``alpha noise - sigma x0``."""
    alpha, sigma = (_bcast(a, x0) for a in vdiffusion_alpha_sigma(t))
    return alpha * noise - sigma * x0


def vdiffusion_loss(prediction: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(prediction.float(), vdiffusion_target(x0, noise, t).float())


def velocity_from_v_prediction(v_model: VelocityFn) -> VelocityFn:
    """A v-diffusion model as a rectified-flow velocity function.

    At flow time s and state x (on the straight path), the cosine-schedule state with the same
    signal-to-noise ratio has angle ``phi = atan2(s, 1 - s)`` and is ``x (cos phi + sin phi)``. The model's
    v there gives ``x0 = alpha x_vd - sigma v`` and ``noise = sigma x_vd + alpha v``, hence the flow
    velocity ``noise - x0``. The map is exact, so every solver and schedule serves both objectives.
    """

    def velocity(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        phi = torch.atan2(s.float(), 1 - s.float())  # (B,)
        alpha, sigma = torch.cos(phi), torch.sin(phi)
        x_vd = x * _bcast(alpha + sigma, x)
        v = v_model(x_vd, phi * (2 / math.pi))
        a, sg = _bcast(alpha, x), _bcast(sigma, x)
        x0 = a * x_vd - sg * v
        noise = sg * x_vd + a * v
        return noise - x0

    return velocity
