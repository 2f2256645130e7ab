"""Nothing waits for the device between a prompt and its audio: the pipeline and the engine run on the "meta"
device, a stand-in for a GPU without data, under :class:`host_transfers.HostTransfers`, which records every host
sync and every host-device copy. On a GPU each of them would stall the host until the queued kernels finish, and
inside a CUDA graph capture a sync is an error: these tests hold that property without a GPU."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from host_transfers import DEVICE, HostSync, HostTransfers, waits

import etta_engine as E
from etta_engine.engine import DiTEngine, evaluation_times, sample_graphed
from etta_engine.models.adapter import AdapterConfig, AudioAdapter
from etta_engine.models.conditioning import DiTConditioning
from etta_engine.pipeline import Pipeline
from etta_engine.sampling import cfg

SOLVERS = ["euler", "heun", "midpoint", "rk4", "dpmpp_2m"]


def test_the_audit_sees_syncs_and_copies():
    """The checker itself: each kind of transfer is recorded (a mutation of the audited code shows up)."""
    x = torch.ones(3, device=DEVICE)
    with HostTransfers() as log:
        with pytest.raises(HostSync):
            x.sum().item()
        with pytest.raises(HostSync):
            bool((x > 0).any())
        torch.tensor([1.0, 2.0], device=DEVICE)
        torch.ones(2).to(DEVICE)
        torch.ones(2).to(DEVICE, non_blocking=True)
        y = x.cpu()
        _ = x * torch.tensor(2.0)  # a host scalar operand: a kernel argument, not a copy
        _ = torch.ones(2) + 1  # host-only work
    assert [(t.kind, t.blocking) for t in log] == [
        ("sync", True),
        ("sync", True),
        ("upload", True),
        ("upload", True),
        ("upload", False),
        ("download", True),
    ]
    assert y.shape == (3,) and y.device.type == "cpu"
    assert [t.kind for t in waits(log)] == ["sync", "sync", "upload", "upload", "download"]


# ------------------------------------------------------------------ the pipeline


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    model = E.ETTAModel.from_preset("tiny").eval()
    bad = E.ETTAModel.from_preset("tiny").eval()
    return Pipeline(model, device=DEVICE, bad_model=bad)


GENERATIONS = {
    "euler-cfg": dict(),
    "heun-negative-prompt": dict(solver="heun", negative_prompt="noise"),
    "dpmpp-longest-rescale": dict(solver="dpmpp_2m", padding="longest", cfg_rescale=0.7),
    "midpoint-no-cfg": dict(solver="midpoint", cfg_scale=1.0),
    "rk4-cfg-interval": dict(solver="rk4", nfe=8, cfg_interval=(0.2, 0.8)),
    "inpainting": dict(init_audio=torch.randn(2, 44100), keep=[(0.0, 0.4)], strength=0.8),
    "autoguidance": dict(autoguidance_scale=2.0),
}


@pytest.mark.parametrize("cuda_graphs", ["eager", False])
@pytest.mark.parametrize("options", GENERATIONS.values(), ids=GENERATIONS.keys())
def test_generate_waits_for_the_device_once(pipe, cuda_graphs, options):
    """Prompts to audio: the only wait is the download of the waveform. Uploads (tokens, seconds, noise, the
    call times) do not wait; nothing is read back on the way ("eager": the static buffers and whole-solve path
    that CUDA graphs capture; False: the plain engine)."""
    pipe.cuda_graphs = cuda_graphs
    options = {"nfe": 4, "seconds": 1.0, **options}
    with HostTransfers() as log:
        audio = pipe.generate(["a dog barks", "rain"], progress=False, **options)
    assert [t.kind for t in waits(log)] == ["download"], [str(t) for t in waits(log)]
    assert "pipeline.py" in waits(log)[0].where
    assert audio.waveform.shape == (2, 2, 44100)
    assert any(t.kind == "upload" for t in log)  # the audit saw the inputs go up


def test_edit_waits_for_the_device_once(pipe):
    pipe.cuda_graphs = "eager"
    with HostTransfers() as log:
        pipe.edit(torch.randn(2, 44100), "rain", nfe=4, strength=0.6, progress=False)
    assert [t.kind for t in waits(log)] == ["download"], [str(t) for t in waits(log)]


# ------------------------------------------------------------------ the engine


def _meta_dit(tiny_cfg, dtype) -> E.DiT:
    return E.DiT(dataclasses.replace(tiny_cfg.dit, dropout=0.0)).eval().to(DEVICE, dtype)


def _meta_cond(dit, B: int = 2, L: int = 6) -> DiTConditioning:
    c = dit.cfg
    context = torch.empty(2 * B, L, c.cond_dim, dtype=dit.dtype, device=DEVICE)
    mask = torch.ones(2 * B, L, dtype=torch.bool, device=DEVICE)
    return DiTConditioning(context, mask, torch.empty(2 * B, c.global_cond_dim, dtype=dit.dtype, device=DEVICE))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cuda_graph", ["eager", False])
@pytest.mark.parametrize("solver", SOLVERS)
def test_prepare_and_solve_never_wait(tiny_cfg, solver, cuda_graph, dtype):
    """``prepare`` told the zero rows, then a whole CFG solve (the static whole-solve path, or ``sample`` over
    the plain step): no sync and no copy that waits, in fp32, bf16 and guarded fp16."""
    dit = _meta_dit(tiny_cfg, dtype)
    engine = DiTEngine(dit, cuda_graph=cuda_graph)
    noise = torch.empty(2, dit.cfg.io_channels, 9, dtype=dtype, device=DEVICE)
    times = evaluation_times(solver, 8)
    with HostTransfers() as log:
        velocity = engine.prepare(_meta_cond(dit), times, zero_rows=range(2, 4))
        result = sample_graphed(cfg(velocity, 3.5, rescale=0.5), noise, solver=solver, nfe=8)
    assert waits(log) == [], [str(t) for t in waits(log)]
    assert velocity.skipped_rows == 2 and velocity.calls == len(times)
    assert result.x.shape == noise.shape and result.x.device == DEVICE


def test_prepare_finds_the_zero_rows_with_one_sync_when_not_told(tiny_cfg):
    dit = _meta_dit(tiny_cfg, torch.float32)
    with HostTransfers() as log:
        DiTEngine(dit).prepare(_meta_cond(dit), [1.0, 0.5])
    assert [(t.kind, "engine.py" in t.where) for t in waits(log)] == [("download", True)]


@pytest.mark.parametrize("cuda_graph", ["eager", False])
def test_audio_prompts_and_per_step_buffers_never_wait(tiny_cfg, cuda_graph):
    """An audio prompt's K/V, and steps called one by one (CFG with an interval: per-step static buffers)."""
    dit = _meta_dit(tiny_cfg, torch.float32)
    adapter = AudioAdapter(AdapterConfig.for_dit(dit.cfg, embed_dim=24)).eval().to(DEVICE)
    tokens = adapter.tokens(None, 4)
    noise = torch.empty(2, dit.cfg.io_channels, 9, device=DEVICE)
    times = evaluation_times("heun", 6)
    with HostTransfers() as log:
        prompt = adapter.prompt(tokens, 0.7)
        velocity = DiTEngine(dit, cuda_graph=cuda_graph).prepare(_meta_cond(dit), times, prompt, zero_rows=[2, 3])
        sample_graphed(cfg(velocity, 3.5, interval=(0.2, 0.8)), noise, solver="heun", nfe=6)
    assert waits(log) == [], [str(t) for t in waits(log)]
    assert velocity.calls == len(times)
