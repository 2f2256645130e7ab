"""Schedules and fixed-step solvers of :mod:`etta_engine.sampling` in NumPy, for the runtime without PyTorch.

The same formulas, names and NFE rules as the torch module, in fp32 like it (the grid is built the way
``torch.linspace`` builds it, so both give the same ``ts``); tests run both on the same velocity fields.
The adaptive ``dopri5`` reference solver is not here: it is a measuring tool, not a production sampler.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

VelocityFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
StepCallback = Callable[[int, np.ndarray], None]


# ------------------------------------------------------------------ schedules


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps={steps!r} must be an integer >= 1")


def _linspace_f32(start: float, end: float, n: int) -> np.ndarray:
    """``torch.linspace(start, end, n)`` in fp32, bit for bit: an fp32 step, the first half counted up from
    ``start`` and the second down from ``end``, each value one fused multiply-add (exact in fp64, rounded once)."""
    step = np.float64(np.float32((end - start) / (n - 1))) if n > 1 else 0.0
    i = np.arange(n, dtype=np.float64)
    lower = (np.float64(start) + step * i).astype(np.float32)
    upper = (np.float64(end) - step * (n - 1 - i)).astype(np.float32)
    return np.where(np.arange(n) < n // 2, lower, upper)


def uniform_schedule(steps: int) -> np.ndarray:
    """ETTA's grid ``t = linspace(1, 0, steps + 1)``."""
    _check_steps(steps)
    return _linspace_f32(1.0, 0.0, steps + 1)


def shifted_schedule(steps: int, shift: float = 3.0) -> np.ndarray:
    """The uniform grid time-shifted by ``t' = shift t / (1 + (shift - 1) t)``."""
    if not shift > 0:
        raise ValueError(f"shift={shift} must be positive")
    t = uniform_schedule(steps)
    shift = np.float32(shift)
    return (shift * t / (1 + (shift - 1) * t)).astype(np.float32)


def logsnr_schedule(steps: int, logsnr_min: float = -6.0, logsnr_max: float = 2.0) -> np.ndarray:
    """Linear in ``log((1 - t) / t)`` from ``logsnr_min`` to ``logsnr_max``, end points pinned to 1 and 0."""
    if not logsnr_min < logsnr_max:
        raise ValueError(f"logsnr_min={logsnr_min} must be < logsnr_max={logsnr_max}")
    _check_steps(steps)
    logsnr = np.linspace(logsnr_min, logsnr_max, steps + 1, dtype=np.float64)
    t = 1.0 / (1.0 + np.exp(logsnr))  # sigmoid(-logsnr)
    t[0], t[-1] = 1.0, 0.0
    return t.astype(np.float32)


SCHEDULES: dict[str, Callable[..., np.ndarray]] = {
    "uniform": uniform_schedule,
    "shifted": shifted_schedule,
    "logsnr": logsnr_schedule,
}


# ------------------------------------------------------------------ fixed-step solvers


def _t(ts: np.ndarray, i: int, x: np.ndarray) -> np.ndarray:
    return np.full(x.shape[0], ts[i], dtype=ts.dtype)  # (B,)


def euler(velocity_fn: VelocityFn, x: np.ndarray, ts: np.ndarray, callback: StepCallback | None = None):
    """Euler's method (order 1): ``x <- x + (t' - t) v(x, t)``. One call per step."""
    for i in range(len(ts) - 1):
        x = x + (ts[i + 1] - ts[i]) * velocity_fn(x, _t(ts, i, x))
        if callback is not None:
            callback(i, x)
    return x


def heun(velocity_fn: VelocityFn, x: np.ndarray, ts: np.ndarray, callback: StepCallback | None = None):
    """Heun's method (order 2); the step that ends at t = 0 is a plain Euler step (2n - 1 calls)."""
    n = len(ts) - 1
    last_is_euler = float(ts[-1]) == 0.0
    for i in range(n):
        dt = ts[i + 1] - ts[i]
        v = velocity_fn(x, _t(ts, i, x))
        x_euler = x + dt * v
        if i == n - 1 and last_is_euler:
            x = x_euler
        else:
            x = x + dt * np.float32(0.5) * (v + velocity_fn(x_euler, _t(ts, i + 1, x)))
        if callback is not None:
            callback(i, x)
    return x


def midpoint(velocity_fn: VelocityFn, x: np.ndarray, ts: np.ndarray, callback: StepCallback | None = None):
    """The explicit midpoint method (order 2): two calls per step."""
    half = np.float32(0.5)
    for i in range(len(ts) - 1):
        dt = ts[i + 1] - ts[i]
        x_mid = x + half * dt * velocity_fn(x, _t(ts, i, x))
        x = x + dt * velocity_fn(x_mid, np.full(x.shape[0], ts[i] + half * dt, dtype=ts.dtype))
        if callback is not None:
            callback(i, x)
    return x


def rk4(velocity_fn: VelocityFn, x: np.ndarray, ts: np.ndarray, callback: StepCallback | None = None):
    """The classical Runge-Kutta method (order 4): four calls per step."""
    half = np.float32(0.5)
    for i in range(len(ts) - 1):
        dt = ts[i + 1] - ts[i]
        t_mid = np.full(x.shape[0], ts[i] + half * dt, dtype=ts.dtype)
        k1 = velocity_fn(x, _t(ts, i, x))
        k2 = velocity_fn(x + half * dt * k1, t_mid)
        k3 = velocity_fn(x + half * dt * k2, t_mid)
        k4 = velocity_fn(x + dt * k3, _t(ts, i + 1, x))
        x = x + dt / np.float32(6) * (k1 + 2 * k2 + 2 * k3 + k4)
        if callback is not None:
            callback(i, x)
    return x


def _dpmpp_2m_coefficients(ts: list[float]) -> list[tuple[float, float, float]]:
    """Per step (a, b, r): ``x' = a x + b D``, ``D = (1 + 1/(2r)) x0 - 1/(2r) x0_prev`` (r = 0: ``D = x0``);
    alpha = 1 - t, sigma = t, lambda = log(alpha / sigma), h = lambda' - lambda, r = h_prev / h."""
    lam = [math.log((1 - t) / t) if 0 < t < 1 else (math.inf if t <= 0 else -math.inf) for t in ts]
    coefficients = []
    for i in range(len(ts) - 1):
        t, t_next = ts[i], ts[i + 1]
        h = lam[i + 1] - lam[i]
        exp_neg_h = 0.0 if math.isinf(h) else math.exp(-h)
        h_prev = lam[i] - lam[i - 1] if i > 0 else math.inf
        r = h_prev / h if math.isfinite(h_prev) and math.isfinite(h) else 0.0
        coefficients.append((t_next / t, (1 - t_next) * (1 - exp_neg_h), r))
    return coefficients


def dpmpp_2m(velocity_fn: VelocityFn, x: np.ndarray, ts: np.ndarray, callback: StepCallback | None = None):
    """DPM-Solver++(2M) for flow matching, in the data prediction ``x0 = x - t v``. One call per step."""
    coefficients = _dpmpp_2m_coefficients(ts.astype(np.float64).tolist())
    x0_prev = None
    for i, (a, b, r) in enumerate(coefficients):
        x0 = x - ts[i] * velocity_fn(x, _t(ts, i, x))
        d = x0 if r == 0.0 or x0_prev is None else (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        x = a * x + b * d
        x0_prev = x0
        if callback is not None:
            callback(i, x)
    return x


@dataclass(frozen=True)
class Solver:
    fn: Callable
    steps_for_nfe: Callable[[int], int]
    order: int


SOLVERS: dict[str, Solver] = {
    "euler": Solver(euler, lambda nfe: nfe, 1),
    "heun": Solver(heun, lambda nfe: (nfe + 1) // 2, 2),
    "midpoint": Solver(midpoint, lambda nfe: nfe // 2, 2),
    "rk4": Solver(rk4, lambda nfe: nfe // 4, 4),
    "dpmpp_2m": Solver(dpmpp_2m, lambda nfe: nfe, 2),
}


def steps_for(solver: str, nfe: int) -> int:
    """Steps of ``solver`` within ``nfe`` velocity calls, with clear errors."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choices: {sorted(SOLVERS)}")
    if isinstance(nfe, bool) or not isinstance(nfe, (int, np.integer)) or nfe < 1:
        raise ValueError(f"nfe={nfe!r} must be an integer >= 1")
    rule = SOLVERS[solver].steps_for_nfe
    steps = rule(int(nfe))
    if steps < 1:
        smallest = next(n for n in range(1, 10) if rule(n) >= 1)
        raise ValueError(f"solver {solver!r} needs nfe >= {smallest} for one step, got nfe={nfe}")
    return steps


@dataclass(frozen=True)
class SampleResult:
    x: np.ndarray
    nfe: int  # velocity calls actually made
    steps: int


def sample(
    velocity_fn: VelocityFn,
    noise: np.ndarray,
    *,
    solver: str = "euler",
    nfe: int = 100,
    schedule: str = "uniform",
    t_start: float = 1.0,
    callback: StepCallback | None = None,
    **schedule_options,
) -> SampleResult:
    """Integrate ``dx/dt = velocity_fn(x, t)`` from ``noise`` at ``t_start`` to t = 0 within ``nfe`` calls
    (as :func:`etta_engine.sampling.sample`; ``schedule_options`` go to the schedule, e.g. ``shift``)."""
    steps = steps_for(solver, nfe)
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choices: {sorted(SCHEDULES)}")
    if not 0.0 < t_start <= 1.0:
        raise ValueError(f"t_start={t_start} is outside (0, 1]")
    ts = (SCHEDULES[schedule](steps, **schedule_options) * np.float32(t_start)).astype(np.float32)
    calls = 0

    def counted(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        return velocity_fn(x, t)

    x = SOLVERS[solver].fn(counted, np.asarray(noise, dtype=np.float32), ts, callback)
    if calls > nfe:  # a solver bug, never a user error
        raise AssertionError(f"{solver} made {calls} velocity calls over its budget of {nfe}")
    return SampleResult(x=x.astype(np.float32, copy=False), nfe=calls, steps=steps)


def evaluation_times(solver: str, nfe: int, schedule: str = "uniform", **schedule_options) -> np.ndarray:
    """The times (calls,) fp32 at which :func:`sample` calls the velocity, in call order (as
    :func:`etta_engine.engine.evaluation_times`): the solver run on a one-element problem with a recording
    velocity (the fixed-step solvers never branch on values, so a real run calls at the same times)."""
    times: list[np.float32] = []

    def record(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        times.append(t[0])
        return np.zeros_like(x)

    sample(record, np.zeros((1, 1, 1), np.float32), solver=solver, nfe=nfe, schedule=schedule, **schedule_options)
    return np.asarray(times, dtype=np.float32)
