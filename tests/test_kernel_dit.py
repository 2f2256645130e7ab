"""The whole DiT with the Triton ops against the same DiT with the torch ops: velocity and gradients.
On the CPU (interpreter) at the tiny preset; with the `gpu` marker at the etta preset's shapes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import dit_inputs, err_budget_ok, kernel_device, randomize_, rel_err

import etta_engine as E

pytest.importorskip("triton")


def twin_dits(cfg: E.DiTConfig, device: torch.device, std: float) -> tuple[E.DiT, E.DiT]:
    """Two DiTs with the same random weights, one on the torch ops and one on the Triton ops."""
    with device:
        reference = randomize_(E.DiT(dataclasses.replace(cfg, ops="torch")), std=std)
        triton = E.DiT(dataclasses.replace(cfg, ops="triton"))
    triton.load_state_dict(reference.state_dict())
    return reference.eval(), triton.eval()


def check_velocity(cfg: E.DiTConfig, B: int, T: int, L: int, std: float) -> None:
    dev = kernel_device()
    reference, triton = twin_dits(cfg, dev, std)
    inputs = [x.to(dev) for x in dit_inputs(cfg, B=B, T=T, L=L)]
    with torch.no_grad():
        ref = reference(*inputs)
        assert rel_err(triton(*inputs), ref) < 1e-5  # fp32
        low = [x.to(torch.bfloat16) if x.is_floating_point() else x for x in inputs]
        kernel_bf16 = triton.to(torch.bfloat16)(*low)
        torch_bf16 = reference.to(torch.bfloat16)(*low)
    assert kernel_bf16.dtype == torch.bfloat16
    assert err_budget_ok(kernel_bf16, torch_bf16, ref, tiny=1e-3)


def test_tiny_dit_velocity_matches_with_triton_ops():
    check_velocity(E.PRESETS["tiny"].dit, B=3, T=11, L=7, std=0.2)


def test_tiny_dit_gradients_match_with_triton_ops():
    cfg = dataclasses.replace(E.PRESETS["tiny"].dit, dropout=0.0)
    dev = kernel_device()
    reference, triton = twin_dits(cfg, dev, 0.2)
    inputs = [x.to(dev) for x in dit_inputs(cfg, B=2, T=9, L=5)]
    target = torch.randn(2, cfg.io_channels, 9, device=dev)
    grads = []
    for model in (reference, triton):
        model.train()
        loss = (model(*inputs) - target).square().mean()
        grads.append(torch.autograd.grad(loss, list(model.parameters())))
    for name, g_ref, g_tri in zip([n for n, _ in reference.named_parameters()], *grads, strict=True):
        assert rel_err(g_tri, g_ref) < 1e-4, name


@pytest.mark.gpu
def test_etta_dit_velocity_matches_with_triton_ops():
    check_velocity(E.PRESETS["etta"].dit, B=4, T=215, L=514, std=0.02)
