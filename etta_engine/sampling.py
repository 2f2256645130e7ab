"""Sampling the flow ODE ``dx/dt = v(x, t)`` from noise (t=1) to data (t=0).

- Schedules build the time grid ``ts`` (decreasing from ``t_start`` to 0) once; solvers never rebuild it.
  :func:`sample` keeps it on the host, whatever the device of x.
- Solvers are pure functions ``(velocity_fn, x, ts, callback) -> x``; ``velocity_fn(x, t)`` takes t of
  shape (B,). The fixed-step solvers make no host-device sync (tested on the meta device).
- Guidance and inpainting are wrappers that turn a velocity function into another one.
- :func:`sample` runs a solver within a budget of ``nfe`` velocity calls and reports the calls made.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, torch.Tensor], None]


# ------------------------------------------------------------------ schedules


def _check_steps(steps: int) -> None:
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")


def _grid(steps: int, device, dtype) -> torch.Tensor:
    _check_steps(steps)
    return torch.linspace(1.0, 0.0, steps + 1, device=device, dtype=dtype)


def uniform_schedule(steps: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """ETTA's grid ``t = linspace(1, 0, steps + 1)``."""
    return _grid(steps, device, dtype)


def shifted_schedule(steps: int, device=None, dtype=torch.float32, shift: float = 3.0) -> torch.Tensor:
    """The uniform grid time-shifted by ``t' = shift t / (1 + (shift - 1) t)``: shift > 1 spends more
    steps at high noise, shift < 1 at low noise."""
    if not shift > 0:
        raise ValueError(f"shift={shift} must be positive")
    t = _grid(steps, device, dtype)
    return shift * t / (1 + (shift - 1) * t)


def logsnr_schedule(
    steps: int, device=None, dtype=torch.float32, logsnr_min: float = -6.0, logsnr_max: float = 2.0
) -> torch.Tensor:
    """Linear in ``log((1 - t) / t)`` from ``logsnr_min`` to ``logsnr_max`` (stable-audio-tools' rectified-flow
    grid), i.e. ``t = sigmoid(-logsnr)``, with the end points pinned to t = 1 and t = 0."""
    if not logsnr_min < logsnr_max:
        raise ValueError(f"logsnr_min={logsnr_min} must be < logsnr_max={logsnr_max}")
    _check_steps(steps)
    t = torch.sigmoid(-torch.linspace(logsnr_min, logsnr_max, steps + 1, dtype=torch.float64))
    t[0], t[-1] = 1.0, 0.0
    return t.to(device=device, dtype=dtype)


SCHEDULES: dict[str, Callable[..., torch.Tensor]] = {
    "uniform": uniform_schedule,
    "shifted": shifted_schedule,
    "logsnr": logsnr_schedule,
}


# ------------------------------------------------------------------ fixed-step solvers


def _t(ts: torch.Tensor, i: int, x: torch.Tensor) -> torch.Tensor:
    return ts[i].expand(x.shape[0])  # (B,)


@torch.no_grad()
def euler(velocity_fn: VelocityFn, x: torch.Tensor, ts: torch.Tensor, callback: StepCallback | None = None):
    """Euler's method (order 1): ``x <- x + (t' - t) v(x, t)``. One call per step."""
    for i in range(len(ts) - 1):
        x = x + (ts[i + 1] - ts[i]) * velocity_fn(x, _t(ts, i, x))
        if callback is not None:
            callback(i, x)
    return x


@torch.no_grad()
def heun(velocity_fn: VelocityFn, x: torch.Tensor, ts: torch.Tensor, callback: StepCallback | None = None):
    """Heun's method (order 2, trapezoidal predictor-corrector). As in the official sampler, the step
    that ends at t = 0 is a plain Euler step: n steps to 0 cost 2n - 1 calls."""
    n = len(ts) - 1
    last_is_euler = float(ts[-1]) == 0.0  # decided once, before the loop
    for i in range(n):
        dt = ts[i + 1] - ts[i]
        v = velocity_fn(x, _t(ts, i, x))
        x_euler = x + dt * v
        if i == n - 1 and last_is_euler:
            x = x_euler
        else:
            x = x + dt * 0.5 * (v + velocity_fn(x_euler, _t(ts, i + 1, x)))
        if callback is not None:
            callback(i, x)
    return x


@torch.no_grad()
def midpoint(velocity_fn: VelocityFn, x: torch.Tensor, ts: torch.Tensor, callback: StepCallback | None = None):
    """The explicit midpoint method (order 2): two calls per step."""
    for i in range(len(ts) - 1):
        dt = ts[i + 1] - ts[i]
        x_mid = x + 0.5 * dt * velocity_fn(x, _t(ts, i, x))
        x = x + dt * velocity_fn(x_mid, (ts[i] + 0.5 * dt).expand(x.shape[0]))
        if callback is not None:
            callback(i, x)
    return x


@torch.no_grad()
def rk4(velocity_fn: VelocityFn, x: torch.Tensor, ts: torch.Tensor, callback: StepCallback | None = None):
    """The classical Runge-Kutta method (order 4): four calls per step."""
    for i in range(len(ts) - 1):
        dt = ts[i + 1] - ts[i]
        t_mid = (ts[i] + 0.5 * dt).expand(x.shape[0])
        k1 = velocity_fn(x, _t(ts, i, x))
        k2 = velocity_fn(x + 0.5 * dt * k1, t_mid)
        k3 = velocity_fn(x + 0.5 * dt * k2, t_mid)
        k4 = velocity_fn(x + dt * k3, _t(ts, i + 1, x))
        x = x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        if callback is not None:
            callback(i, x)
    return x


def _dpmpp_2m_coefficients(ts: list[float]) -> list[tuple[float, float, float]]:
    """Per step (a, b, r): ``x' = a x + b D`` with ``D = (1 + 1/(2r)) x0 - 1/(2r) x0_prev`` (r = 0: ``D = x0``).

    With alpha = 1 - t, sigma = t and lambda = log(alpha / sigma), a step of h = lambda' - lambda is
    ``x' = (sigma'/sigma) x + alpha' (1 - e^{-h}) D`` and r = h_prev / h (DPM-Solver++(2M)).
    Steps from t = 1 (lambda = -inf) or to t = 0 (lambda = +inf) are first order.
    """
    lam = [math.log((1 - t) / t) if 0 < t < 1 else (math.inf if t <= 0 else -math.inf) for t in ts]
    coefficients = []
    for i in range(len(ts) - 1):
        t, t_next = ts[i], ts[i + 1]
        h = lam[i + 1] - lam[i]
        exp_neg_h = 0.0 if math.isinf(h) else math.exp(-h)
        a = t_next / t
        b = (1 - t_next) * (1 - exp_neg_h)
        h_prev = lam[i] - lam[i - 1] if i > 0 else math.inf
        r = h_prev / h if math.isfinite(h_prev) and math.isfinite(h) else 0.0
        coefficients.append((a, b, r))
    return coefficients


@torch.no_grad()
def dpmpp_2m(velocity_fn: VelocityFn, x: torch.Tensor, ts: torch.Tensor, callback: StepCallback | None = None):
    """DPM-Solver++(2M) written for flow matching: a multistep, second-order solver in the data
    prediction ``x0 = x - t v`` over lambda = log((1 - t) / t). One call per step."""
    coefficients = _dpmpp_2m_coefficients(ts.double().tolist())  # host-side, once, before the loop
    x0_prev = None
    for i, (a, b, r) in enumerate(coefficients):
        x0 = x - ts[i] * velocity_fn(x, _t(ts, i, x))
        d = x0 if r == 0.0 or x0_prev is None else (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        x = a * x + b * d
        x0_prev = x0
        if callback is not None:
            callback(i, x)
    return x


# ------------------------------------------------------------------ the adaptive reference solver

# Dormand-Prince 5(4) tableau.
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_DP_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DP_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)


class BudgetExceeded(RuntimeError):
    """The adaptive solver needed more velocity calls than its budget."""


@torch.no_grad()
def dopri5(
    velocity_fn: VelocityFn,
    x: torch.Tensor,
    ts: torch.Tensor,
    callback: StepCallback | None = None,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_nfe: int = 10_000,
):
    """Adaptive Dormand-Prince 5(4) with error control from ``ts[0]`` to ``ts[-1]`` (only the end
    points of ``ts`` are used). The high-accuracy reference that other solvers' errors are measured
    against; it synchronises with the host to accept or reject steps, so it is not a fast path.
    Raises :class:`BudgetExceeded` rather than make more than ``max_nfe`` calls."""
    t, t_end = float(ts[0]), float(ts[-1])
    span = t_end - t
    h = span / 8
    nfe, step = 1, 0
    k1 = velocity_fn(x, torch.full((x.shape[0],), t, device=x.device))
    while (t_end - t) * math.copysign(1, span) > 1e-12:
        if abs(h) > abs(t_end - t):
            h = t_end - t
        if nfe + 6 > max_nfe:
            raise BudgetExceeded(f"dopri5 needed more than max_nfe={max_nfe} calls (reached t={t:.4g})")
        k = [k1]
        for c, a in zip(_DP_C[1:], _DP_A[1:], strict=True):
            xi = x + h * sum(aj * kj for aj, kj in zip(a, k, strict=False) if aj != 0.0)
            k.append(velocity_fn(xi, torch.full((x.shape[0],), t + c * h, device=x.device)))
        nfe += 6
        x5 = x + h * sum(b * kj for b, kj in zip(_DP_B5, k, strict=True) if b != 0.0)
        err = h * sum((b5 - b4) * kj for b5, b4, kj in zip(_DP_B5, _DP_B4, k, strict=True))
        scale = atol + rtol * torch.maximum(x.abs(), x5.abs())
        ratio = float((err / scale).double().pow(2).mean().sqrt())
        if ratio <= 1.0:
            t, x, k1 = t + h, x5, k[6]  # first-same-as-last: k7 is the next step's k1
            if callback is not None:
                callback(step, x)
            step += 1
        h *= min(5.0, max(0.2, 0.9 * (1.0 / max(ratio, 1e-10)) ** 0.2))
    return x


# ------------------------------------------------------------------ the solver registry and entry point


@dataclass(frozen=True)
class Solver:
    """A solver and how many of its steps fit a budget of velocity calls (None: adaptive)."""

    fn: Callable
    steps_for_nfe: Callable[[int], int] | None
    order: int


SOLVERS: dict[str, Solver] = {
    "euler": Solver(euler, lambda nfe: nfe, 1),
    "heun": Solver(heun, lambda nfe: (nfe + 1) // 2, 2),
    "midpoint": Solver(midpoint, lambda nfe: nfe // 2, 2),
    "rk4": Solver(rk4, lambda nfe: nfe // 4, 4),
    "dpmpp_2m": Solver(dpmpp_2m, lambda nfe: nfe, 2),
    "dopri5": Solver(dopri5, None, 5),
}


def steps_for(solver: str, nfe: int) -> int | None:
    """Steps of ``solver`` within ``nfe`` calls (None for the adaptive solver), with clear errors."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choices: {sorted(SOLVERS)}")
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe={nfe!r} must be an integer >= 1")
    rule = SOLVERS[solver].steps_for_nfe
    if rule is None:
        return None
    steps = rule(nfe)
    if steps < 1:
        smallest = next(n for n in range(1, 10) if rule(n) >= 1)
        raise ValueError(f"solver {solver!r} needs nfe >= {smallest} for one step, got nfe={nfe}")
    return steps


@dataclass(frozen=True)
class SampleResult:
    x: torch.Tensor
    nfe: int  # velocity calls actually made
    steps: int  # solver steps taken


def sample(
    velocity_fn: VelocityFn,
    noise: torch.Tensor,
    *,
    solver: str = "euler",
    nfe: int = 100,
    schedule: str = "uniform",
    t_start: float = 1.0,
    callback: StepCallback | None = None,
    **options,
) -> SampleResult:
    """Integrate ``dx/dt = velocity_fn(x, t)`` from ``noise`` at ``t_start`` to t = 0 with at most ``nfe`` calls.

    ``schedule`` names a grid in SCHEDULES (scaled by ``t_start`` when it is below 1, for variations);
    ``options`` go to the schedule (e.g. ``shift``) or, for ``dopri5``, to the solver (``rtol``, ``atol``).
    """
    return _integrate(velocity_fn, noise, solver, nfe, schedule, t_start, callback, options, reverse=False)


# Solvers that integrate in either direction of time (DPM-Solver++ is written for t decreasing to 0).
INVERTIBLE_SOLVERS = ("euler", "heun", "midpoint", "rk4", "dopri5")


def invert(
    velocity_fn: VelocityFn,
    x0: torch.Tensor,
    *,
    solver: str = "euler",
    nfe: int = 100,
    schedule: str = "uniform",
    t_end: float = 1.0,
    callback: StepCallback | None = None,
    **options,
) -> SampleResult:
    """ODE inversion: integrate ``dx/dt = velocity_fn(x, t)`` from data ``x0`` at t = 0 up to ``t_end``, on the
    grid of :func:`sample` with ``t_start=t_end`` run backwards, so that sampling from the result with the same
    velocity retraces the path (up to the solvers' discretisation error, which shrinks as ``nfe`` grows).
    """
    if solver in SOLVERS and solver not in INVERTIBLE_SOLVERS:
        raise ValueError(f"solver {solver!r} only integrates towards t = 0; for inversion use {INVERTIBLE_SOLVERS}")
    return _integrate(velocity_fn, x0, solver, nfe, schedule, t_end, callback, options, reverse=True)


def solver_grid(
    solver: str,
    nfe: int,
    schedule: str = "uniform",
    t_far: float = 1.0,
    *,
    reverse: bool = False,
    device=None,
    dtype=torch.float32,
    **options,
) -> tuple[int | None, torch.Tensor]:
    """(steps, ts): the steps of ``solver`` within ``nfe`` calls (None: adaptive) and the grid :func:`sample`
    runs it on, the schedule's scaled to [0, ``t_far``] (``reverse``: from 0 up, as :func:`invert`).
    ``options`` go to the schedule."""
    steps = steps_for(solver, nfe)
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choices: {sorted(SCHEDULES)}")
    if not 0.0 < t_far <= 1.0:
        raise ValueError(f"{'t_end' if reverse else 't_start'}={t_far} is outside (0, 1]")
    ts = SCHEDULES[schedule](steps or 1, device=device, dtype=dtype, **options) * t_far
    return steps, ts.flip(0) if reverse else ts


def grid_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of the time grid for latents ``x``: float64 for float64 latents, else float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _integrate(velocity_fn, x, solver, nfe, schedule, t_far, callback, options, *, reverse) -> SampleResult:
    """Run ``solver`` within ``nfe`` calls on the schedule's grid scaled to [0, t_far] (reversed: from 0 up)."""
    solver_options = {k: options.pop(k) for k in ("rtol", "atol") if k in options}
    # The grid stays on the host: step sizes are kernel arguments and the solvers' set-up reads it without a
    # device sync; each call's t (B,) goes to the device without one.
    steps, ts = solver_grid(solver, nfe, schedule, t_far, reverse=reverse, dtype=grid_dtype(x), **options)

    calls = 0

    def counted(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return velocity_fn(x, t.to(x.device, non_blocking=True))

    if steps is None:
        x = dopri5(counted, x, ts, callback, max_nfe=nfe, **solver_options)
        steps_taken = -1
    else:
        if solver_options:
            raise ValueError(f"options {sorted(solver_options)} only apply to the adaptive solver 'dopri5'")
        x = SOLVERS[solver].fn(counted, x, ts, callback)
        steps_taken = steps
    if calls > nfe:  # a solver bug, never a user error
        raise AssertionError(f"{solver} made {calls} velocity calls over its budget of {nfe}")
    return SampleResult(x=x, nfe=calls, steps=steps_taken)


# ------------------------------------------------------------------ velocity-function wrappers


@dataclass(frozen=True)
class Guided:
    """The velocity function :func:`cfg` returns; its fields say how it guides ``batched_fn`` (the engine reads
    them to run a whole guided solve in one CUDA graph)."""

    batched_fn: VelocityFn
    scale: float
    rescale: float = 0.0
    interval: tuple[float, float] | None = None

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v_cond, v_uncond = self.batched_fn(torch.cat((x, x)), torch.cat((t, t))).chunk(2)
        v = v_uncond + self.scale * (v_cond - v_uncond)
        if self.rescale > 0:
            ratio = v_cond.std(dim=1, keepdim=True) / v.std(dim=1, keepdim=True)
            v = self.rescale * (v * ratio) + (1 - self.rescale) * v
        if self.interval is not None:
            inside = (t >= self.interval[0]) & (t <= self.interval[1])
            v = torch.where(inside.reshape(-1, *([1] * (x.ndim - 1))), v, v_cond)
        return v


def cfg(
    batched_fn: VelocityFn,
    scale: float,
    *,
    rescale: float = 0.0,
    interval: tuple[float, float] | None = None,
) -> Guided:
    """Classifier-free guidance with cond and uncond in one forward of 2B.

    ``batched_fn(x2, t2)`` evaluates a batch whose first half is conditional and second half
    unconditional (officially: a zero memory with the same mask, timestep and seconds kept).
    ``v = v_u + scale (v_c - v_u)``; ``rescale`` (phi) blends in ``v * std(v_c) / std(v)`` (std over
    channels, as in the official code); within ``interval = (t_lo, t_hi)`` only, guidance applies and
    elsewhere the conditional velocity is used (selected on the device, no host sync).
    """
    if not scale >= 0:
        raise ValueError(f"cfg scale={scale} must be >= 0")
    if not 0.0 <= rescale <= 1.0:
        raise ValueError(f"cfg rescale={rescale} is outside [0, 1]")
    if interval is not None and not 0.0 <= interval[0] <= interval[1] <= 1.0:
        raise ValueError(f"cfg interval={interval} must satisfy 0 <= t_lo <= t_hi <= 1")
    return Guided(batched_fn, float(scale), float(rescale), None if interval is None else tuple(interval))


def autoguidance(good_fn: VelocityFn, bad_fn: VelocityFn, scale: float) -> VelocityFn:
    """Autoguidance ``v = v_bad + scale (v_good - v_bad)``. As in the official sampler, each of the two
    functions may itself be CFG-guided (each model runs its own CFG)."""
    if not scale >= 0:
        raise ValueError(f"autoguidance scale={scale} must be >= 0")

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v_bad = bad_fn(x, t)
        return v_bad + scale * (good_fn(x, t) - v_bad)

    return guided


def inpaint(velocity_fn: VelocityFn, x0: torch.Tensor, noise: torch.Tensor, keep: torch.Tensor) -> VelocityFn:
    """Keep the region ``keep`` (bool, broadcastable to x) of known data ``x0`` and generate the rest.

    Inside the region the velocity is the straight path's ``noise - x0``, so from a start on that path
    (``x = (1 - t) x0 + t noise``) every solver keeps the region exactly on it, and it ends at x0 at t = 0;
    the model sees the known data noised to the current t (replacement inpainting, sync-free).
    """
    v_known = noise - x0

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.where(keep, v_known, velocity_fn(x, t))

    return velocity
