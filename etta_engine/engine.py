"""The fast inference path of the DiT: everything that does not depend on the latents, hoisted out of the loop.

A fixed-step solver calls the velocity at times known before the loop starts (:func:`evaluation_times`). For one
generation, :meth:`DiTEngine.prepare` therefore computes once:

- the timestep embeddings of every call and the conditioning ``c = time_embed(t) + global_embed(g)``;
- every block's adaLN output for the whole schedule: one ``(calls * B, D) @ (D, 9 D)`` matmul per block
  instead of one small matmul per block per call (the adaLN weights are 21.2 M of each block's 53.1 M);
- the cross-attention K/V of the prompt (memory embedding, LayerNorm and K/V projection per block);
- which rows have a zero memory (the official null conditioning of the uncond half of a CFG batch): their
  cross-attention output is exactly zero, so it is skipped, not computed.

The prepared velocity function then runs only what depends on x: self-attention, the cross-attention queries
of the rows that attend to a prompt, and the FFN. It keeps no host syncs in the step (the call index is a
Python counter), so a step can be captured in a CUDA graph.

    engine = DiTEngine(model.dit)
    times = evaluation_times("heun", nfe=8, schedule="uniform")
    velocity = engine.prepare(cond, times)           # cond: DiTConditioning of the (CFG-)batched rows
    result = sample(cfg(velocity, 3.5), noise, solver="heun", nfe=8)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from etta_engine import ops
from etta_engine.models.conditioning import DiTConditioning
from etta_engine.models.dit import DiT
from etta_engine.sampling import sample

ADAPTIVE_SOLVERS = ("dopri5",)


def evaluation_times(solver: str, nfe: int, schedule: str = "uniform", t_start: float = 1.0, **options) -> list[float]:
    """The times at which :func:`~etta_engine.sampling.sample` calls the velocity function, in call order.

    Found by running the solver on a one-element problem with a recording velocity: the fixed-step solvers
    never branch on values, so the real run calls at the same times in the same order.
    """
    if solver in ADAPTIVE_SOLVERS:
        raise ValueError(f"solver={solver!r} is adaptive: its evaluation times depend on the model's outputs")
    times: list[float] = []

    def record(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        times.append(float(t[0]))
        return torch.zeros_like(x)

    sample(record, torch.zeros(1, 1, 1), solver=solver, nfe=nfe, schedule=schedule, t_start=t_start, **options)
    return times


class DiTEngine:
    """Inference of a :class:`~etta_engine.models.dit.DiT` with the per-generation work hoisted (module doc).

    ``ops``: the implementation of etta_engine.ops used in the step (default: the DiT's ``cfg.ops``).
    """

    def __init__(self, dit: DiT, *, ops: str | None = None) -> None:
        if not isinstance(dit, DiT):
            raise TypeError(f"dit must be a DiT, got {type(dit).__name__}")
        self.dit = dit
        self.ops = dit.cfg.ops if ops is None else ops

    @torch.no_grad()
    def prepare(self, cond: DiTConditioning, times: Sequence[float]) -> PreparedDiT:
        """The velocity function of one generation whose calls happen at ``times`` (see :func:`evaluation_times`).

        ``cond``: the conditioning of every row of the batch the solver evaluates (cond and uncond halves
        concatenated for CFG). One host sync happens here (finding the zero-memory rows), none in the steps.
        """
        dit, cfg = self.dit, self.dit.cfg
        context, mask, global_cond = cond
        B, L = context.shape[:2]
        probe = torch.empty(B, cfg.io_channels, 1, dtype=dit.dtype, device=context.device)
        dit.check_inputs(probe, torch.zeros(B, device=context.device), context, mask, global_cond)
        times = [float(t) for t in times]
        if not times:
            raise ValueError("times is empty: the solver makes at least one call")
        if any(not 0.0 <= t <= 1.0 for t in times):
            raise ValueError(f"times must lie in [0, 1], got {times}")
        t = torch.tensor(times, device=context.device)
        N = len(times)

        c = dit.time_embed(t)[:, None, :] + dit.global_embed(global_cond)[None, :, :]  # (N, B, D)
        c_act = F.silu(c).reshape(N * B, cfg.width)
        modulation = [block.adaln(c_act).view(N, B, 9 * cfg.width) for block in dit.blocks]  # depth x (N, B, 9D)
        final = dit.final.adaln(c_act).view(N, B, 2 * cfg.width)

        memory = dit.cond_embed(context)  # (B, L, Dc)
        # Rows with an all-zero memory get exactly zero cross-attention (no biases anywhere on that path).
        active = (memory != 0).flatten(1).any(dim=1).tolist()  # the one host sync
        rows = [i for i, a in enumerate(active) if a]
        index = torch.tensor(rows, device=context.device, dtype=torch.long)
        kv = []
        for block in dit.blocks:
            m = block.memory_norm(memory[index])
            kv.append(block.cross_attn.kv(m).view(len(rows), L, 2, cfg.cross_heads, cfg.cross_head_dim))
        return PreparedDiT(self, times, modulation, final, kv, mask[index], rows, B)


class PreparedDiT:
    """The velocity function of one prepared generation: call ``k`` evaluates at ``times[k]``.

    The ``t`` argument is accepted for the solver interface and ignored: the times were fixed by ``prepare``
    (checking them against ``t`` would cost a host sync per call). ``reset()`` rewinds the counter for
    another run with the same conditioning and schedule (e.g. another seed).
    """

    def __init__(self, engine, times, modulation, final, kv, kv_mask, rows, batch) -> None:
        self.engine, self.times = engine, times
        self.modulation, self.final, self.kv, self.kv_mask = modulation, final, kv, kv_mask
        self.rows, self.batch = rows, batch
        # The attending rows as a prefix (the CFG layout: cond first, zero-memory uncond after) take slices.
        self.prefix = rows == list(range(len(rows)))
        self.index = kv_mask.new_tensor(rows, dtype=torch.long) if rows else None
        self.calls = 0

    @property
    def skipped_rows(self) -> int:
        """Rows whose cross-attention is skipped (zero memory)."""
        return self.batch - len(self.rows)

    def reset(self) -> None:
        self.calls = 0

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        k = self.calls
        if k >= len(self.times):
            raise RuntimeError(
                f"the prepared DiT was called {k + 1} times but prepared for {len(self.times)} calls; "
                "prepare it with the solver's evaluation_times (or reset() it for a new run)"
            )
        if x.ndim != 3 or x.shape[0] != self.batch:
            raise ValueError(f"x must have shape ({self.batch}, C, T) as prepared, got {tuple(x.shape)}")
        self.calls += 1
        return self.velocity(x, k)

    def velocity(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """The DiT's velocity at call ``k`` (times[k]), x (B, C, T) -> (B, C, T)."""
        dit, impl = self.engine.dit, self.engine.ops
        h = x.transpose(1, 2)  # (B, T, C)
        h = dit.project_in(dit.preprocess(h) + h)  # (B, T, D)
        for block, modulation, kv in zip(dit.blocks, self.modulation, self.kv, strict=True):
            shift_sa, scale_sa, gate_sa, shift_ca, scale_ca, gate_ca, shift_ff, scale_ff, gate_ff = modulation[k].chunk(
                9, dim=1
            )
            a = ops.adaln_modulate(h, shift_sa, scale_sa, None, 1e-6, impl=impl)
            h = ops.gated_residual(h, gate_sa, block.self_attn(a), impl=impl)
            if self.rows:
                h = self._cross_attention(block, h, kv, shift_ca, scale_ca, gate_ca, impl)
            a = ops.adaln_modulate(h, shift_ff, scale_ff, block.ff_norm.weight, block.ff_norm.eps, impl=impl)
            h = ops.gated_residual(h, gate_ff, block.ff(a), impl=impl)
        shift, scale = self.final[k].chunk(2, dim=1)
        out = dit.final.linear(ops.adaln_modulate(h, shift, scale, None, 1e-6, impl=impl))  # (B, T, C)
        return (dit.postprocess(out) + out).transpose(1, 2)  # (B, C, T)

    def _cross_attention(self, block, h, kv, shift, scale, gate, impl) -> torch.Tensor:
        """The gated cross-attention residual of the attending rows; the other rows pass through unchanged."""
        n = len(self.rows)
        pick = (lambda t: t[:n]) if self.prefix else (lambda t: t.index_select(0, self.index))
        hr = pick(h)  # (Br, T, D)
        a = ops.adaln_modulate(hr, pick(shift), pick(scale), None, 1e-6, impl=impl)
        attn = block.cross_attn
        q = attn.q(a).view(n, a.shape[1], attn.heads, attn.head_dim)  # (Br, T, Hc, Dc)
        o = ops.attention(q, kv[:, :, 0], kv[:, :, 1], self.kv_mask, impl=impl)
        hr = ops.gated_residual(hr, pick(gate), attn.out(o.reshape(n, a.shape[1], -1)), impl=impl)
        if n == self.batch:
            return hr
        if self.prefix:
            return torch.cat((hr, h[n:]))
        return h.index_copy(0, self.index, hr)
