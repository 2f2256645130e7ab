"""Public ops of etta_engine.

Each op has a plain-torch ``<op>_ref`` that is its specification and a public ``<op>(..., impl=...)``
that validates inputs and dispatches to an implementation: ``"torch"``, ``"triton"`` (kernels/, on CUDA or
under TRITON_INTERPRET=1), ``"cuda"`` (the csrc/ runtime kernels of ``etta_engine._C``: CUDA kernels for CUDA
tensors, their C++ twins for CPU tensors; inference only), or ``"auto"``, which picks the torch ops until the
kernels' GPU tests and benchmarks have run on a GPU (see ops/_dispatch.py).
"""

from etta_engine.ops.adaln import adaln_modulate, adaln_modulate_ref
from etta_engine.ops.attention import attention, attention_ref
from etta_engine.ops.gelu import gelu_tanh, gelu_tanh_ref
from etta_engine.ops.guidance import guided_update, guided_update_ref
from etta_engine.ops.residual import gated_residual, gated_residual_ref
from etta_engine.ops.residual_modulate import residual_modulate, residual_modulate_ref
from etta_engine.ops.rope import apply_rope, apply_rope_qk, apply_rope_ref, rope_angles
from etta_engine.ops.snake import snake_beta, snake_beta_ref

__all__ = [
    "adaln_modulate",
    "adaln_modulate_ref",
    "apply_rope",
    "apply_rope_qk",
    "apply_rope_ref",
    "attention",
    "attention_ref",
    "gated_residual",
    "gated_residual_ref",
    "gelu_tanh",
    "gelu_tanh_ref",
    "guided_update",
    "guided_update_ref",
    "residual_modulate",
    "residual_modulate_ref",
    "rope_angles",
    "snake_beta",
    "snake_beta_ref",
]
