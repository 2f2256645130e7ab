"""Sampling the flow ODE ``dx/dt = v(x, t)`` from noise (t=1) to data (t=0).

Solvers are pure functions ``(velocity_fn, x, ts) -> x`` over a schedule ``ts`` (a decreasing
1-D tensor from 1 to 0) built once by a schedule function. ``velocity_fn(x, t)`` takes t of
shape (B,). No host-device syncs happen inside a step loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, torch.Tensor], None]


def uniform_schedule(steps: int, device: torch.device | str | None = None) -> torch.Tensor:
    """ETTA's grid ``t = linspace(1, 0, steps + 1)``."""
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    return torch.linspace(1.0, 0.0, steps + 1, device=device)


@torch.no_grad()
def euler(velocity_fn: VelocityFn, x: torch.Tensor, ts: torch.Tensor, callback: StepCallback | None = None):
    """Euler's method (order 1): ``x <- x + (t_next - t) v(x, t)``. One velocity call per step."""
    for i in range(len(ts) - 1):
        x = x + (ts[i + 1] - ts[i]) * velocity_fn(x, ts[i].expand(x.shape[0]))
        if callback is not None:
            callback(i, x)
    return x


@torch.no_grad()
def heun(velocity_fn: VelocityFn, x: torch.Tensor, ts: torch.Tensor, callback: StepCallback | None = None):
    """Heun's method (order 2, the trapezoid predictor-corrector). As in the official sampler, a step
    that ends at t=0 is a plain Euler step, so n steps cost 2n - 1 velocity calls."""
    ends_at_zero = float(ts[-1]) == 0.0  # decided once, before the loop
    n = len(ts) - 1
    for i in range(n):
        t, dt = ts[i], ts[i + 1] - ts[i]
        v = velocity_fn(x, t.expand(x.shape[0]))
        x_euler = x + dt * v
        if i == n - 1 and ends_at_zero:
            x = x_euler
        else:
            x = x + dt * 0.5 * (v + velocity_fn(x_euler, ts[i + 1].expand(x.shape[0])))
        if callback is not None:
            callback(i, x)
    return x


@dataclass(frozen=True)
class Solver:
    fn: Callable
    steps_for_nfe: Callable[[int], int]  # most steps whose velocity calls fit in an NFE budget
    nfe_for_steps: Callable[[int], int]


SOLVERS: dict[str, Solver] = {
    "euler": Solver(euler, lambda nfe: nfe, lambda steps: steps),
    "heun": Solver(heun, lambda nfe: (nfe + 1) // 2, lambda steps: 2 * steps - 1),
}
SCHEDULES: dict[str, Callable[..., torch.Tensor]] = {"uniform": uniform_schedule}


@dataclass(frozen=True)
class SampleResult:
    x: torch.Tensor
    nfe: int  # velocity calls actually made
    steps: int


def sample(
    velocity_fn: VelocityFn,
    noise: torch.Tensor,
    *,
    solver: str = "euler",
    nfe: int = 100,
    schedule: str = "uniform",
    callback: StepCallback | None = None,
) -> SampleResult:
    """Integrate from ``noise`` at t=1 to t=0 with at most ``nfe`` velocity calls."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choices: {sorted(SOLVERS)}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choices: {sorted(SCHEDULES)}")
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe={nfe!r} must be an integer >= 1")
    s = SOLVERS[solver]
    steps = s.steps_for_nfe(nfe)
    ts = SCHEDULES[schedule](steps, device=noise.device)
    x = s.fn(velocity_fn, noise, ts, callback)
    return SampleResult(x=x, nfe=s.nfe_for_steps(steps), steps=steps)


def cfg(batched_fn: VelocityFn, scale: float) -> VelocityFn:
    """Classifier-free guidance ``v = v_u + scale (v_c - v_u)``, cond and uncond in one forward.

    ``batched_fn(x2, t2)`` evaluates a batch of 2B whose first half is conditional and second half
    unconditional (the official null conditioning: a zero memory with the same mask).
    """
    if scale < 0:
        raise ValueError(f"cfg scale={scale} must be >= 0")

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v_cond, v_uncond = batched_fn(torch.cat((x, x)), torch.cat((t, t))).chunk(2)
        return v_uncond + scale * (v_cond - v_uncond)

    return guided
