"""Every bench script runs at a tiny size (`--smoke`) and prints measurements: a benchmark that measures nothing
(or never calls its main) fails here. Run in-process as __main__ (like `python bench/X.py --smoke`), so torch
and transformers are imported once for all of them. Timings are not checked: only that numbers came out."""

from __future__ import annotations

import math
import re
import runpy
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("bench_*.py"))
# each script's smoke output must hold a table row starting with this label and carrying a positive number
EXPECTED_ROW = {
    "bench_envs.py": "| inline |",
    "bench_logprobs.py": "| ours",
    "bench_precision.py": "| ours fp32 |",
    "bench_rollout.py": "| collector (full loop) |",
    "bench_update.py": "| single-pass |",
    "bench_distributed.py": "| 1 process, 1 thread |",
    "bench_sciworld_jvm.py": "| `(JVM defaults)` |",
    "bench_malloc.py": "| fixed |",
    "bench_vllm_rollout.py": "| vllm |",  # runs in .venv-vllm (make test-vllm); skipped, with the reason, elsewhere
    "bench_vllm_lora.py": "| adapter |",  # likewise
}
VLLM_SCRIPTS = ("bench_vllm_rollout.py", "bench_vllm_lora.py")


def table_numbers(line: str) -> list[float]:
    """The numeric cells of one markdown table row ('1,234', '1.75x', '77%' count; '-' and words do not)."""
    cells = [c.strip().replace(",", "").rstrip("x%") for c in line.strip().strip("|").split("|")[1:]]
    return [float(c) for c in cells if re.fullmatch(r"-?\d+(\.\d+)?(e-?\d+)?", c)]


def test_every_bench_script_has_a_smoke_expectation():
    assert SCRIPTS and set(SCRIPTS) == set(EXPECTED_ROW)


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_smoke_run_measures_something(script, monkeypatch, capsys):
    if script in VLLM_SCRIPTS:
        from epo.rollout.backend_select import vllm_distribution

        if vllm_distribution() is None:
            pytest.skip("vLLM is not installed in this venv; make test-vllm runs this smoke test in .venv-vllm")
    doc = BENCH.parent / "docs" / "BENCHMARKS.md"
    before = doc.read_text() if doc.exists() else None
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setattr(sys, "argv", [str(BENCH / script), "--smoke"])
    runpy.run_path(str(BENCH / script), run_name="__main__")
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(EXPECTED_ROW[script])]
    assert rows, f"{script} --smoke printed no '{EXPECTED_ROW[script]}' row:\n{out[-2000:]}"
    numbers = [x for row in rows for x in table_numbers(row)]
    assert numbers and all(math.isfinite(x) for x in numbers) and max(numbers) > 0, rows
    assert (doc.read_text() if doc.exists() else None) == before, f"{script} --smoke rewrote {doc.name}"
