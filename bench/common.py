"""Shared by the benchmark scripts: the machine line and the writer of their docs/BENCHMARKS.md sections."""

from __future__ import annotations

import os
import platform
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_info(extra: str = "") -> str:
    """One line: CPU, cores, versions, load at start (the machines are shared: compare ratios within one run)."""
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    extra = f", {extra}" if extra else ""
    return (
        f"Machine: {cpu_name()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}{extra}; "
        f"load average at start {load} (shared machine: compare ratios within one run, not absolute times)"
    )


def write_section(section: str, body: str, path: Path = DOC) -> None:
    """Replace our section (from its '## ' header to the next one) of the benchmarks page, or append it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{section}\n\n{body.strip()}\n"
    start = text.find(section + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + block
    else:
        end = text.find("\n## ", start + len(section))
        text = text[:start] + block + (text[end:] if end >= 0 else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")


def publish(text: str, write: bool, path: Path = DOC) -> None:
    """Print a result (its first line is the section's '## ' header) and, with write, make it that section."""
    print(text, flush=True)
    if write:
        section, _, body = text.partition("\n")
        write_section(section, body, path)
        print(f"wrote the {section!r} section of {path}")
