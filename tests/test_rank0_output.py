"""Under torchrun only rank 0 speaks: setup's log lines go through the run's console on rank 0 and nowhere on the
other ranks (a mocked DistInfo stands in for a second process), and no library module calls print()."""

from __future__ import annotations

import ast
import io
from pathlib import Path

import pytest
from rich.console import Console

from epo.config import load_config
from epo.models import load_model_and_tokenizer
from epo.rollout import backend_select
from epo.rollout.backend import HFBackend
from epo.trainer import distributed, setup
from epo.trainer.distributed import DistInfo

SRC = Path(setup.__file__).resolve().parents[1]  # src/epo


@pytest.fixture(scope="module")
def tiny():
    return load_model_and_tokenizer("tiny")


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=40), out  # narrow: a wrapped line would show up as two


def test_backend_line_is_printed_once_on_rank_0(tiny, monkeypatch, capsys):
    monkeypatch.setattr(backend_select, "vllm_distribution", lambda: None)
    console, out = _console()
    backend = setup.make_collector(load_config(None, ["rollout.backend=auto"]), None, *tiny, console).backend
    assert isinstance(backend, HFBackend)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rollout backend: hf (rollout.backend=auto; vllm not used")
    assert "'epo[vllm]'" in lines[0]  # printed as text, not eaten as rich markup
    assert capsys.readouterr().out == ""  # the run's console, not stdout


@pytest.mark.parametrize("given", ["console", "none"])
def test_a_rank_1_process_prints_nothing(tiny, monkeypatch, capsys, given):
    monkeypatch.setattr(distributed, "info", lambda: DistInfo(rank=1, world_size=2, local_rank=1))
    console, out = _console()
    backend = setup.make_backend(
        load_config(None, ["rollout.backend=hf"]), *tiny, console if given == "console" else None
    )
    assert isinstance(backend, HFBackend)
    assert out.getvalue() == "" and capsys.readouterr() == ("", "")
    monkeypatch.setattr(distributed, "info", lambda: DistInfo())  # the same call on rank 0 does speak
    setup.make_backend(load_config(None, ["rollout.backend=hf"]), *tiny, console if given == "console" else None)
    said = out.getvalue() if given == "console" else capsys.readouterr().out
    assert said == "rollout backend: hf (rollout.backend=hf)\n"


def test_no_library_module_calls_print():
    calls = [
        f"{path.relative_to(SRC)}:{node.lineno}"
        for path in sorted(SRC.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
    ]
    assert calls == [], f"print() in library code (every torchrun rank prints; use a rank-0 console): {calls}"
