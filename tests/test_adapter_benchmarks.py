"""The audio-prompt and inversion benchmarks run end to end on a CPU with tiny settings, writing rows and plots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

import etta_engine as E
from etta_engine.checkpoint import save_adapter
from etta_engine.models.adapter import AdapterConfig, AudioAdapter

ROOT = Path(__file__).resolve().parent.parent


def run(script: str, *args: str) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def test_audio_prompt_benchmark_rows_and_plot(tmp_path):
    cfg = E.PRESETS["tiny"]
    adapter = AudioAdapter(AdapterConfig.for_dit(cfg.dit, embed_dim=6 * cfg.vae.latent_dim))
    path = save_adapter(tmp_path / "adapter.safetensors", adapter, stage=1, base="tiny")
    run("audio_prompt.py", "--model", "tiny", "--adapter", str(path), "--n", "1", "--nfe", "2",
        "--scales", "0", "1", "--experiments", "pitch", "--out", str(tmp_path))  # fmt: skip
    (result,) = tmp_path.glob("audio_prompt-*.json")
    data = json.loads(result.read_text())
    assert data["environment"]["adapter_sha256"] and result.with_suffix(".png").is_file()
    rows = {(r["audio_prompt"], r["audio_prompt_scale"]): r for r in data["rows"]}
    assert set(rows) == {("low", 0.0), ("low", 1.0), ("medium", 0.0), ("medium", 1.0)}
    assert all(0.0 <= r["matches"] <= 1.0 and r["n"] == 1 and r["text"] == "a tone" for r in rows.values())


def test_inversion_benchmark_rows_and_plot(tmp_path):
    run("inversion.py", "--model", "tiny", "--n", "1", "--nfe", "2", "8", "--solvers", "euler", "--out", str(tmp_path))
    (result,) = tmp_path.glob("inversion-*.json")
    data = json.loads(result.read_text())
    assert result.with_suffix(".png").is_file()
    rows = {r["nfe"]: r for r in data["rows"]}
    assert set(rows) == {2, 8} and all(r["solver"] == "euler" and r["clips"] == 1 for r in rows.values())
    # the untrained tiny DiT has a zero final layer: its velocity is 0, so the round trip is exact
    assert rows[8]["latent_rel_rmse"] == 0.0 and torch.isfinite(torch.tensor(rows[2]["seconds_per_round_trip"]))
