"""Where do measured rows stand against the engine's goals? Reads sweep and engine_step results (other files are
passed over) and prints one line per goal: its target, the best measured value, which backend or variant gave
it, the file, and whether the goal is met; and, where the newest file with rows for the goal (by the date of its
environment) is another, a second line with that file's value, so that a regression is not hidden by an old best.

The goals (one GPU, the ``etta`` preset, batch 1, 10 s, CFG 3.5, Euler):
- end to end at NFE 100 <= 120 ms, and at NFE 8 <= 15 ms (sweep rows);
- the engine's DiT step at least 3x the eager reference and 1.5x its ``torch.compile`` build (engine_step rows
  of one run, so that both sides saw the same machine);
- on a CPU, the engine's step at the etta size in fp32 at least 1.10x the eager reference.

    python benchmarks/goals.py benchmarks/results/sweep-nvidia-h200-*.json benchmarks/results/engine_step-*.json
    python benchmarks/goals.py            # every result file in benchmarks/results

Goals with no matching rows are listed as unmeasured; the exit status is 0 either way (this is a report).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
E2E_GOALS = {100: 120.0, 8: 15.0}  # NFE -> end-to-end milliseconds
STEP_VS_EAGER, STEP_VS_COMPILE, CPU_STEP_VS_EAGER = 3.0, 1.5, 1.10


@dataclass
class Result:
    goal: str
    target: str
    value: float | None = None  # the best measured (ms, or a speed-up)
    unit: str = ""
    source: str = ""  # backend or variant, dtype, device
    file: str = ""
    met: bool | None = None  # None: unmeasured
    date: str = ""  # of the file's environment
    latest: Result | None = None  # the newest file's value, where that file is not the best one's

    def line(self) -> str:
        if self.value is None:
            return f"{self.goal:<34} {self.target:<10} {'unmeasured':<12}"
        verdict = "met" if self.met else "NOT met"
        value = f"{self.value:.1f} ms" if self.unit == "ms" else f"{self.value:.2f}x"
        line = f"{self.goal:<34} {self.target:<10} {value:<12} {verdict:<8} {self.source}  ({self.file})"
        if self.latest is not None:
            line += "\n" + self.latest.line().replace(f"{self.goal:<34} {self.target:<10}", f"{'':<34} {'latest':<10}")
        return line

    def better(self, other: Result) -> bool:
        """Whether ``other`` (the same goal, measured) beats this one: lower milliseconds, higher speed-up."""
        if self.value is None:
            return True
        return other.value < self.value if self.unit == "ms" else other.value > self.value


def pick(goal: Result, candidates: list[Result]) -> Result:
    """The best of ``candidates`` (one per file), with the newest file's where that is another; ``goal`` if none."""
    best = goal
    for c in candidates:
        if best.better(c):
            best = c
    if candidates:
        newest = max(candidates, key=lambda c: c.date)
        if newest.date > best.date:  # a later file than the best's (files without dates never are)
            best.latest = newest
    return best


def load(paths: list[Path]) -> list[tuple[Path, dict]]:
    """(path, data) of every JSON file among ``paths`` that holds benchmark rows; unreadable files are named."""
    out = []
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:  # unreadable, not UTF-8 (a plot), not JSON
            print(f"passing over {path}: {e}", file=sys.stderr)
            continue
        if isinstance(data, dict) and "rows" in data and "environment" in data:
            out.append((path, data))
    return out


def _is_gpu(env: dict) -> bool:
    return not str(env.get("device", "cpu")).startswith("cpu")


def e2e_goals(files: list[tuple[Path, dict]]) -> list[Result]:
    results = []
    for nfe, target in E2E_GOALS.items():
        goal = Result(f"end to end, Euler NFE {nfe}", f"<= {target:g} ms")
        candidates = []
        for path, data in files:
            env = data["environment"]
            if data.get("benchmark") != "sweep" or not _is_gpu(env):
                continue
            rows = [r for r in data["rows"] if "e2e_ms" in r]
            rows = [r for r in rows if (r.get("model"), r.get("solver"), r.get("nfe"), r.get("cfg_scale"),
                                        r.get("seconds")) == ("etta", "euler", nfe, 3.5, 10.0)]  # fmt: skip
            if not rows:
                continue
            r = min(rows, key=lambda r: r["e2e_ms"])
            parts = f"VAE {r.get('vae_dtype') or 'fp32'}, T5 {r.get('text_dtype') or 'fp32'}"
            source = f"{r['backend']} {r['dtype']} ({parts}) on {env['device']}"
            found = dict(value=r["e2e_ms"], unit="ms", source=source, met=r["e2e_ms"] <= target)
            candidates.append(dataclasses.replace(goal, **found, file=path.name, date=str(env.get("date", ""))))
        results.append(pick(goal, candidates))
    return results


def step_goals(files: list[tuple[Path, dict]]) -> list[Result]:
    vs_eager = Result("DiT step vs eager (GPU)", f">= {STEP_VS_EAGER:g}x")
    vs_compile = Result("DiT step vs torch.compile (GPU)", f">= {STEP_VS_COMPILE:g}x")
    cpu = Result("DiT step vs eager (CPU, etta fp32)", f">= {CPU_STEP_VS_EAGER:g}x")
    candidates: dict[str, list[Result]] = {vs_eager.goal: [], vs_compile.goal: [], cpu.goal: []}
    for path, data in files:
        env = data["environment"]
        if data.get("benchmark") != "engine_step":
            continue
        rows = [r for r in data["rows"] if r.get("preset") == "etta"]
        ms = {r["variant"]: r["ms"] for r in rows}
        engines = {v: t for v, t in ms.items() if v.startswith("engine") and "unfused" not in v}
        if "reference" not in ms or not engines:
            continue
        name, fastest = min(engines.items(), key=lambda kv: kv[1])
        dtype = rows[0]["dtype"]
        checks = [(vs_eager, "reference", STEP_VS_EAGER)] if _is_gpu(env) else []
        if _is_gpu(env) and "compile" in ms:
            checks.append((vs_compile, "compile", STEP_VS_COMPILE))
        if not _is_gpu(env) and dtype == "fp32":
            checks.append((cpu, "reference", CPU_STEP_VS_EAGER))
        for goal, baseline, target in checks:
            speedup = ms[baseline] / fastest
            source = f"{name} {dtype} {fastest:.2f} ms vs {baseline} {ms[baseline]:.2f} ms on {env['device']}"
            found = dict(value=speedup, unit="x", source=source, met=speedup >= target)
            candidates[goal.goal].append(
                dataclasses.replace(goal, **found, file=path.name, date=str(env.get("date", "")))
            )
    return [pick(goal, candidates[goal.goal]) for goal in (vs_eager, vs_compile, cpu)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="result files (default: all of benchmarks/results)")
    args = parser.parse_args(argv)
    paths = args.files or sorted(RESULTS.glob("*.json"))
    files = load(paths)
    print(f"{'goal':<34} {'target':<10} {'best':<12}")
    for result in e2e_goals(files) + step_goals(files):
        print(result.line())


if __name__ == "__main__":
    main()
