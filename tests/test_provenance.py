"""RUN_DIR/provenance.jsonl: the code, libraries and machine of each start and resume, and how reports show them."""

import json
import subprocess

import torch

from epo.models.precision import resolve_precision
from epo.report.data import load_run
from epo.report.summary import machines_section
from epo.telemetry.provenance import (
    append_provenance,
    git_commit,
    machine_label,
    machine_record,
    read_provenance,
    source_digest,
)


def test_the_record_names_versions_device_and_the_resolved_precision():
    record = machine_record(torch.device("cpu"), resolve_precision("fp32", "cpu"), from_step=5, world_size=2)
    assert record["from_step"] == 5 and record["phase"] == "rl" and record["world_size"] == 2
    assert record["torch"] == torch.__version__ and record["precision"] == "fp32"
    assert record["precision_reason"] == "train.precision=fp32" and record["device"] == "cpu"
    assert record["device_name"] and record["threads"] == torch.get_num_threads()
    assert machine_label(record).endswith(f"· fp32 · torch {torch.__version__}")
    assert record["source"] == source_digest() and len(record["source"]) == 12


def test_the_source_digest_names_the_code_without_git(tmp_path):
    """A copied tree (no .git) still says which code ran: the digest changes with any .py file's content or name."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "notes.txt").write_text("not code")
    first = source_digest.__wrapped__(tmp_path)
    assert source_digest.__wrapped__(tmp_path) == first
    (tmp_path / "notes.txt").write_text("changed, still not code")
    assert source_digest.__wrapped__(tmp_path) == first
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    second = source_digest.__wrapped__(tmp_path)
    assert second != first
    (tmp_path / "pkg" / "a.py").rename(tmp_path / "pkg" / "b.py")
    assert source_digest.__wrapped__(tmp_path) not in (first, second)


def test_git_commit_is_the_checkouts_head_marked_dirty_by_uncommitted_changes(tmp_path):
    assert git_commit(tmp_path) is None  # not a checkout (an installed wheel)
    git = ["git", "-C", str(tmp_path), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    head = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert git_commit(tmp_path) == head
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == head + "+dirty"


def test_records_append_and_a_torn_line_is_skipped(tmp_path):
    first = {"phase": "rl", "from_step": 0, "device_name": "CPU A", "device": "cpu", "precision": "fp32"}
    append_provenance(tmp_path, first)
    with open(tmp_path / "provenance.jsonl", "a") as f:
        f.write('{"phase": "rl", "from_st')  # a crash mid-write
    assert read_provenance(tmp_path) == [first] and read_provenance(tmp_path / "absent") == []


def test_the_run_report_lists_each_stretch_and_flags_a_machine_change(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": 1, "rollout/success_rate": 0.5, "perf/peak_rss_gb": 4.25}, {"step": 2, "perf/peak_rss_gb": 6.5}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    a = {"phase": "rl", "from_step": 0, "device": "cpu", "device_name": "CPU A", "precision": "fp32", "torch": "2",
         "git": "abc123", "source": "d1", "allocator": "memory: glibc's dynamic mmap threshold"}  # fmt: skip
    b = {**a, "from_step": 3, "device_name": "CPU B", "cpu_bf16_unit": "avx512_bf16", "git": None, "source": "d2"}
    for record in (a, b):
        append_provenance(run, record)
    text = "\n".join(machines_section([load_run(run)]))
    assert "rl from step 0" in text and "CPU A · fp32" in text and "CPU B (avx512_bf16) · fp32" in text
    assert "(abc123)" in text and "(source d2)" in text  # a copied tree without git is still named
    assert "Computed on 2 different machines" in text
    assert "| glibc's dynamic mmap threshold |" in text and "(perf/peak_rss_gb): run 6.5 GB." in text
    (run / "provenance.jsonl").unlink()
    assert "No provenance.jsonl" in "\n".join(machines_section([load_run(run)]))
