"""The inference engine: the prepared DiT equals the plain model path (fp32 and bf16, CFG batches with and without
a negative prompt, ragged masks), at every call of every fixed-step solver, and whole sampling runs agree."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import randomize_

from etta_engine.engine import DiTEngine, evaluation_times
from etta_engine.models.conditioning import DiTConditioning
from etta_engine.models.dit import DiT
from etta_engine.sampling import cfg, sample

SOLVERS = ["euler", "heun", "midpoint", "rk4", "dpmpp_2m"]


def _dit(tiny_cfg, dtype=torch.float32, ops="torch") -> DiT:
    dit = DiT(dataclasses.replace(tiny_cfg.dit, dropout=0.0, ops=ops))
    return randomize_(dit, std=0.2).eval().to(dtype)


def _cond(dit: DiT, B: int, L: int = 6, negative: bool = False, seed: int = 0) -> DiTConditioning:
    """A CFG batch: B conditional rows, then B uncond rows with the official zero memory (or a negative prompt)."""
    g = torch.Generator().manual_seed(seed)
    c = dit.cfg
    context = torch.randn(B, L, c.cond_dim, generator=g)
    mask = torch.arange(L)[None, :] < torch.randint(1, L + 1, (B,), generator=g)[:, None]  # ragged prompts
    uncond = torch.randn(B, L, c.cond_dim, generator=g) if negative else torch.zeros_like(context)
    global_cond = torch.randn(B, c.global_cond_dim, generator=g)
    cat = lambda a, b: torch.cat((a, b))
    return DiTConditioning(
        cat(context, uncond).to(dit.dtype), cat(mask, mask), cat(global_cond, global_cond).to(dit.dtype)
    )


@pytest.mark.parametrize("solver", SOLVERS)
def test_evaluation_times_are_the_times_the_solver_calls(solver):
    seen = []
    sample(lambda x, t: seen.append(t.clone()) or -x, torch.randn(2, 3, 4), solver=solver, nfe=8, schedule="shifted")
    times = evaluation_times(solver, 8, "shifted")
    assert len(times) == len(seen) <= 8
    assert all(
        torch.all(t == float(torch.tensor(want, dtype=torch.float32))) for t, want in zip(seen, times, strict=True)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("negative", [False, True])
def test_prepared_velocity_equals_the_model_at_every_call(tiny_cfg, dtype, negative):
    dit = _dit(tiny_cfg, dtype)
    cond = _cond(dit, B=2, negative=negative)
    times = evaluation_times("heun", 6)
    velocity = DiTEngine(dit).prepare(cond, times)
    assert velocity.skipped_rows == (0 if negative else 2)
    x = torch.randn(4, dit.cfg.io_channels, 13, generator=torch.Generator().manual_seed(1)).to(dtype)
    tol = 2e-5 if dtype == torch.float32 else 3e-2
    with torch.no_grad():
        for t in times:
            ref = dit(x, torch.full((4,), t), *cond).float()
            got = velocity(x, None).float()
            assert (got - ref).abs().max() <= tol * ref.abs().max(), t
    with pytest.raises(RuntimeError, match=r"called 6 times but prepared for 5 calls"):
        velocity(x, None)
    velocity.reset()
    with pytest.raises(ValueError, match=r"x must have shape \(4, C, T\) as prepared"):
        velocity(x[:2], None)


@pytest.mark.parametrize("solver", SOLVERS)
def test_engine_sampling_matches_the_plain_path(tiny_cfg, solver):
    dit = _dit(tiny_cfg)
    cond = _cond(dit, B=2)
    noise = torch.randn(2, dit.cfg.io_channels, 17, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = sample(cfg(lambda x, t: dit(x, t, *cond), 3.5), noise, solver=solver, nfe=8).x
    velocity = DiTEngine(dit).prepare(cond, evaluation_times(solver, 8))
    got = sample(cfg(velocity, 3.5), noise, solver=solver, nfe=8).x
    assert velocity.calls == len(velocity.times)
    assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_engine_with_csrc_ops_and_non_prefix_rows(tiny_cfg):
    """The step with the csrc/ kernels; attending rows that are not a prefix of the batch (uncond first)."""
    dit = _dit(tiny_cfg)
    cond = _cond(dit, B=2)
    flipped = DiTConditioning(*(torch.cat((t[2:], t[:2])) for t in cond))  # zero-memory rows first
    x = torch.randn(4, dit.cfg.io_channels, 9)
    for c in (cond, flipped):
        velocity = DiTEngine(dit, ops="cuda").prepare(c, [0.7])
        assert velocity.rows == ([0, 1] if c is cond else [2, 3])
        with torch.no_grad():
            ref = dit(x, torch.full((4,), 0.7), *c)
        assert (velocity(x) - ref).abs().max() <= 2e-5 * ref.abs().max()


def test_bad_inputs(tiny_cfg):
    dit = _dit(tiny_cfg)
    cond = _cond(dit, B=1)
    with pytest.raises(ValueError, match="solver='dopri5' is adaptive"):
        evaluation_times("dopri5", 8)
    with pytest.raises(ValueError, match="times is empty"):
        DiTEngine(dit).prepare(cond, [])
    with pytest.raises(ValueError, match=r"times must lie in \[0, 1\]"):
        DiTEngine(dit).prepare(cond, [1.5])
    with pytest.raises(ValueError, match="context must have shape"):
        DiTEngine(dit).prepare(DiTConditioning(cond.context[:, :, :3], cond.context_mask, cond.global_cond), [0.5])
    with pytest.raises(TypeError, match="dit must be a DiT"):
        DiTEngine(torch.nn.Linear(2, 2))
