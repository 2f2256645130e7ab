"""Schedules, solvers (convergence orders, NFE budgets, no host syncs) and the velocity wrappers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from etta_engine import sampling as S

# An analytic, nonlinear, time-dependent flow: dx/dt = cos(3t) sin(x), solved exactly by
# tan(x(t)/2) = tan(x(1)/2) exp((sin(3t) - sin(3)) / 3).
W = 3.0


def analytic_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.cos(W * t.reshape(-1, 1, 1).to(x.dtype)) * torch.sin(x)


def analytic_solution(x1: torch.Tensor, t: float) -> torch.Tensor:
    return 2 * torch.atan(torch.tan(x1 / 2) * math.exp((math.sin(W * t) - math.sin(W)) / W))


X1 = torch.linspace(-3, 3, 16, dtype=torch.float64).reshape(2, 1, 8)  # the state at t = 1 ("noise")


def error_at_zero(solver: str, steps: int) -> float:
    ts = S.uniform_schedule(steps, dtype=torch.float64)
    x = S.SOLVERS[solver].fn(analytic_velocity, X1, ts)
    return float((x - analytic_solution(X1, 0.0)).abs().max())


@pytest.mark.parametrize(
    ("solver", "steps", "order"),
    [
        ("euler", [16, 32, 64, 128], 1.0),
        ("heun", [32, 64, 128, 256], 2.0),
        ("midpoint", [32, 64, 128, 256], 2.0),
        ("rk4", [16, 32, 64, 128], 4.0),
    ],
)
def test_convergence_order(solver, steps, order):
    errors = [error_at_zero(solver, n) for n in steps]
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]  # error ~ C h^order, h = 1 / steps
    assert abs(slope - order) < 0.3, (errors, slope)


def test_dpmpp_2m_is_second_order_and_beats_euler_at_low_nfe():
    steps = [32, 64, 128, 256]
    errors = [error_at_zero("dpmpp_2m", n) for n in steps]
    assert -np.polyfit(np.log(steps), np.log(errors), 1)[0] > 1.8
    for n in (8, 16):
        assert error_at_zero("dpmpp_2m", n) < error_at_zero("euler", n) / 4


def test_adaptive_reference_solver_is_accurate_and_counts_its_calls():
    result = S.sample(analytic_velocity, X1, solver="dopri5", nfe=5000, rtol=1e-10, atol=1e-10)
    assert float((result.x - analytic_solution(X1, 0.0)).abs().max()) < 1e-8
    assert 7 <= result.nfe < 5000
    with pytest.raises(S.BudgetExceeded, match="more than max_nfe=20"):
        S.sample(analytic_velocity, X1, solver="dopri5", nfe=20, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("solver", sorted(set(S.SOLVERS) - {"dopri5"}))
@pytest.mark.parametrize("nfe", [1, 2, 3, 4, 5, 7, 8, 12])
def test_nfe_budget_is_respected_exactly(solver, nfe):
    expected = {
        "euler": nfe,
        "dpmpp_2m": nfe,
        "heun": 2 * ((nfe + 1) // 2) - 1,  # the last step, to t = 0, is Euler
        "midpoint": 2 * (nfe // 2),
        "rk4": 4 * (nfe // 4),
    }[solver]
    calls = []
    velocity = lambda x, t: calls.append(t) or analytic_velocity(x, t)
    if expected == 0:
        with pytest.raises(ValueError, match=f"solver '{solver}' needs nfe >= "):
            S.sample(velocity, X1, solver=solver, nfe=nfe)
        return
    result = S.sample(velocity, X1, solver=solver, nfe=nfe)
    assert result.nfe == len(calls) == expected <= nfe
    assert all(t.shape == (X1.shape[0],) for t in calls)


@pytest.mark.parametrize("solver", sorted(set(S.SOLVERS) - {"dopri5"}))
def test_no_host_sync_inside_the_step_loop(solver):
    """The state lives on the meta device, which has no data: any .item(), float() or Python branch on
    a value computed from it inside the loop would raise."""
    x = torch.empty(2, 3, 5, device="meta")
    ts = S.logsnr_schedule(6)

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x * 0.5 + t.to(x.device).reshape(-1, 1, 1)

    out = S.SOLVERS[solver].fn(velocity, x, ts)
    assert out.device.type == "meta" and out.shape == x.shape
    guided = S.cfg(lambda x2, t2: x2 * 2, 3.0, rescale=0.5, interval=(0.2, 0.8))
    guided = S.inpaint(guided, x, x, torch.zeros(1, 1, 5, dtype=torch.bool, device="meta"))
    chain = S.autoguidance(guided, velocity, 2.0)
    out = S.SOLVERS[solver].fn(lambda x, t: chain(x, t.to("meta")), x, ts)
    assert out.device.type == "meta"


# ------------------------------------------------------------------ schedules


@pytest.mark.parametrize("name", sorted(S.SCHEDULES))
@pytest.mark.parametrize("steps", [1, 2, 7, 50])
def test_schedules_run_from_one_to_zero(name, steps):
    ts = S.SCHEDULES[name](steps)
    assert ts.shape == (steps + 1,) and ts[0] == 1.0 and ts[-1] == 0.0
    assert (ts[1:] < ts[:-1]).all()


def test_schedule_formulas():
    u = S.uniform_schedule(10, dtype=torch.float64)
    assert torch.allclose(u, torch.linspace(1, 0, 11, dtype=torch.float64))
    shifted = S.shifted_schedule(10, dtype=torch.float64, shift=3.0)
    assert torch.allclose(shifted, 3 * u / (1 + 2 * u))
    t = S.logsnr_schedule(8, dtype=torch.float64)[1:-1]
    logsnr = torch.log((1 - t) / t)
    assert torch.allclose(logsnr, torch.linspace(-6, 2, 9, dtype=torch.float64)[1:-1])
    with pytest.raises(ValueError, match="shift=0 must be positive"):
        S.shifted_schedule(4, shift=0)


def test_sample_argument_errors():
    v = analytic_velocity
    with pytest.raises(ValueError, match=r"unknown solver 'rk45'; choices: \['dopri5', 'dpmpp_2m', 'euler'"):
        S.sample(v, X1, solver="rk45")
    with pytest.raises(ValueError, match="unknown schedule 'cosine'; choices"):
        S.sample(v, X1, schedule="cosine")
    for nfe in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="must be an integer >= 1"):
            S.sample(v, X1, nfe=nfe)
    with pytest.raises(ValueError, match=r"t_start=0.0 is outside \(0, 1\]"):
        S.sample(v, X1, t_start=0.0)
    with pytest.raises(ValueError, match="only apply to the adaptive solver"):
        S.sample(v, X1, solver="euler", rtol=1e-3)


def test_t_start_scales_the_schedule():
    seen = []
    S.sample(lambda x, t: seen.append(float(t[0])) or x * 0, X1, nfe=4, t_start=0.5)
    assert seen == pytest.approx([0.5, 0.375, 0.25, 0.125])


# ------------------------------------------------------------------ guidance and inpainting wrappers


def two_halves(x2: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
    """A batched velocity whose cond half and uncond half differ: (x + 1) and (2 x - t)."""
    B = x2.shape[0] // 2
    tb = t2.reshape(-1, 1, 1)
    return torch.cat((x2[:B] + 1, 2 * x2[B:] - tb[B:]))


def test_cfg_scale_one_is_the_conditional_and_batched_equals_separate_calls():
    x, t = torch.randn(3, 4, 5), torch.rand(3)
    v_cond, v_uncond = x + 1, 2 * x - t.reshape(-1, 1, 1)
    assert torch.allclose(S.cfg(two_halves, 1.0)(x, t), v_cond)
    assert torch.allclose(S.cfg(two_halves, 0.0)(x, t), v_uncond)
    w = 3.5
    assert torch.allclose(S.cfg(two_halves, w)(x, t), v_uncond + w * (v_cond - v_uncond))


def test_cfg_rescale_and_interval():
    x, t = torch.randn(2, 4, 5), torch.tensor([0.1, 0.5])
    v_cond, v_uncond = x + 1, 2 * x - t.reshape(-1, 1, 1)
    v = v_uncond + 4.0 * (v_cond - v_uncond)
    rescaled = v * v_cond.std(dim=1, keepdim=True) / v.std(dim=1, keepdim=True)
    assert torch.allclose(S.cfg(two_halves, 4.0, rescale=1.0)(x, t), rescaled, atol=1e-6)
    assert torch.allclose(S.cfg(two_halves, 4.0, rescale=0.3)(x, t), 0.3 * rescaled + 0.7 * v, atol=1e-6)
    out = S.cfg(two_halves, 4.0, interval=(0.2, 0.8))(x, t)
    assert torch.allclose(out[0], v_cond[0]) and torch.allclose(out[1], v[1])  # t=0.1 outside, t=0.5 inside
    with pytest.raises(ValueError, match="cfg scale=-1 must be >= 0"):
        S.cfg(two_halves, -1)
    with pytest.raises(ValueError, match=r"cfg rescale=2 is outside \[0, 1\]"):
        S.cfg(two_halves, 1, rescale=2)


def test_autoguidance_is_bad_plus_scaled_difference():
    good, bad = (lambda x, t: 3 * x), (lambda x, t: x + 1)
    x, t = torch.randn(2, 3, 4), torch.rand(2)
    assert torch.allclose(S.autoguidance(good, bad, 2.0)(x, t), (x + 1) + 2.0 * (3 * x - (x + 1)))
    assert torch.allclose(S.autoguidance(good, bad, 1.0)(x, t), good(x, t))


@pytest.mark.parametrize("solver", ["euler", "heun", "rk4", "dpmpp_2m"])
def test_inpainting_keeps_the_region_exactly(solver):
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 10, generator=g), torch.randn(2, 4, 10, generator=g)
    keep = torch.zeros(1, 1, 10, dtype=torch.bool)
    keep[..., :4] = True
    velocity = S.inpaint(lambda x, t: torch.sin(3 * x) - x, x0, noise, keep)
    out = S.sample(velocity, noise, solver=solver, nfe=12).x
    assert torch.allclose(out[..., :4], x0[..., :4], atol=1e-6)
    assert not torch.allclose(out[..., 4:], x0[..., 4:], atol=1e-2)
