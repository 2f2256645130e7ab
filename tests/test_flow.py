"""Flow matching: interpolation, targets, t samplers, and the v-diffusion objective served by the same solvers."""

from __future__ import annotations

import math

import pytest
import torch

from etta_engine import flow
from etta_engine import sampling as S


def test_interpolation_endpoints_and_velocity_is_the_time_derivative():
    g = torch.Generator().manual_seed(0)
    x0, noise = (
        torch.randn(3, 4, 5, generator=g, dtype=torch.float64),
        torch.randn(3, 4, 5, generator=g, dtype=torch.float64),
    )
    assert torch.equal(flow.interpolate(x0, noise, torch.zeros(3, dtype=torch.float64)), x0)
    assert torch.equal(flow.interpolate(x0, noise, torch.ones(3, dtype=torch.float64)), noise)
    t, eps = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64), 1e-6
    derivative = (flow.interpolate(x0, noise, t + eps) - flow.interpolate(x0, noise, t - eps)) / (2 * eps)
    assert torch.allclose(derivative, flow.velocity_target(x0, noise))
    x_t = flow.interpolate(x0, noise, t)
    assert torch.allclose(flow.x0_from_velocity(x_t, flow.velocity_target(x0, noise), t), x0)
    pred = torch.zeros_like(x0)
    assert flow.flow_matching_loss(pred, x0, noise).item() == pytest.approx(((noise - x0) ** 2).mean().item())


def test_logit_normal_and_uniform_samplers():
    g = torch.Generator().manual_seed(0)
    t = flow.sample_t_logit_normal(200_000, mean=0.3, std=0.8, generator=g)
    assert t.shape == (200_000,) and t.dtype == torch.float32 and ((t > 0) & (t < 1)).all()
    logit = torch.log(t / (1 - t))
    assert logit.mean().item() == pytest.approx(0.3, abs=0.01) and logit.std().item() == pytest.approx(0.8, abs=0.01)
    u = flow.sample_t_uniform(200_000, generator=g)
    assert 0 <= u.min() and u.max() < 1 and u.mean().item() == pytest.approx(0.5, abs=0.005)
    with pytest.raises(ValueError, match="std=0 must be positive"):
        flow.sample_t_logit_normal(4, std=0)


def test_vdiffusion_path_and_target():
    g = torch.Generator().manual_seed(1)
    x0, noise = (torch.randn(2, 3, 4, generator=g, dtype=torch.float64) for _ in range(2))
    zero, one = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    assert torch.allclose(flow.vdiffusion_interpolate(x0, noise, zero), x0)
    assert torch.allclose(flow.vdiffusion_interpolate(x0, noise, one), noise)
    # v is the derivative of the path with respect to the angle phi = pi t / 2
    t, eps = torch.tensor([0.3, 0.7], dtype=torch.float64), 1e-6
    dphi = (flow.vdiffusion_interpolate(x0, noise, t + eps) - flow.vdiffusion_interpolate(x0, noise, t - eps)) / (
        2 * eps * math.pi / 2
    )
    assert torch.allclose(dphi, flow.vdiffusion_target(x0, noise, t), atol=1e-8)


def test_v_prediction_converts_to_the_exact_flow_velocity():
    """For a single data point the exact v-model and the exact rectified-flow velocity are known in
    closed form; the conversion must map one onto the other."""
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(1, 3, 6, generator=g, dtype=torch.float64)

    def exact_v(x_vd: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = (a.reshape(-1, 1, 1) for a in flow.vdiffusion_alpha_sigma(t))
        noise = (x_vd - alpha * x0) / sigma
        return alpha * noise - sigma * x0

    velocity = flow.velocity_from_v_prediction(exact_v)
    s = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    noise = torch.randn(3, 3, 6, generator=g, dtype=torch.float64)
    x = flow.interpolate(x0.expand(3, -1, -1), noise, s)
    assert torch.allclose(velocity(x, s), flow.velocity_target(x0, noise), atol=1e-10)


def test_the_same_solvers_sample_a_v_prediction_model():
    """A Gaussian data distribution N(mu, s^2): the exact v-model, converted, is integrated by the
    ordinary solvers to the exact ODE solution x(0) = mu + s x(1)."""
    mu, sd = 0.7, 0.5

    def exact_v(x_vd: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = (a.reshape(-1, 1, 1).to(x_vd.dtype) for a in flow.vdiffusion_alpha_sigma(t))
        var = alpha**2 * sd**2 + sigma**2
        r = (x_vd - alpha * mu) / var
        e_x0 = mu + alpha * sd**2 * r
        e_noise = sigma * r
        return alpha * e_noise - sigma * e_x0

    x1 = torch.linspace(-2.5, 2.5, 12, dtype=torch.float64).reshape(2, 1, 6)
    result = S.sample(flow.velocity_from_v_prediction(exact_v), x1, solver="rk4", nfe=200)
    assert torch.allclose(result.x, mu + sd * x1, atol=1e-6)
