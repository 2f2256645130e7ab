"""Launch-configuration helpers shared by the kernels."""

from __future__ import annotations

import torch
import triton


def rows_per_program(B: int, T: int, device: torch.device, programs_per_row: int = 1) -> int:
    """Rows t per program for kernels that reduce over t: enough programs to fill the device (about 4 per SM),
    few enough that the (B, chunks, D) partial sums stay small."""
    target = 4 * torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8
    chunks = max(1, min(T, target // max(B * programs_per_row, 1)))
    return triton.cdiv(T, chunks)
