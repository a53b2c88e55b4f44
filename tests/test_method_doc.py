"""docs/METHOD.md is the method's definition in this repository: every EPO/advantage option is described there,
and no code or doc cites a spec file that the repository does not contain."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from epo.config import AlgoConfig, EPOConfig

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "docs" / "METHOD.md"


def test_method_doc_names_every_epo_and_advantage_option():
    text = METHOD.read_text()
    keys = [f"epo.{f.name}" for f in fields(EPOConfig)]
    keys += [f"algo.{k}" for k in ("grpo_stats", "grpo_norm_std", "gae_level", "whiten_advantages", "loss_agg")]
    missing = [k for k in keys if f"`{k}" not in text]
    assert not missing, f"docs/METHOD.md does not describe: {missing}"
    for name in ("kl_type", "dual_clip", "clip_low", "clip_high"):
        assert name in text and name in {f.name for f in fields(AlgoConfig)}


def test_no_citation_of_a_spec_outside_the_repository():
    files = [*ROOT.glob("src/**/*.py"), *ROOT.glob("docs/*.md"), *ROOT.glob("configs/*.yaml"), ROOT / "README.md"]
    citing = [str(p.relative_to(ROOT)) for p in files if "EPO_SPEC" in p.read_text()]
    assert not citing, f"cite docs/METHOD.md instead of EPO_SPEC in: {citing}"
