"""The prepared GPU check (bench/gpu_check.sh) runs where no GPU is: its random-weight models load through epo's
loader in the paper's shapes, and the shell script parses. Its GPU sections themselves need a GPU machine."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_gpu_check_script_parses():
    subprocess.run(["bash", "-n", str(BENCH / "gpu_check.sh")], check=True)


def test_random_models_have_the_shapes_and_load_through_epo(tmp_path, monkeypatch):
    from epo.models.loading import load_model_and_tokenizer

    monkeypatch.setattr(sys, "argv", ["gpu_models.py", str(tmp_path), "--device", "cpu", "--tiny"])
    runpy.run_path(str(BENCH / "gpu_models.py"), run_name="__main__")
    qwen = json.loads((tmp_path / "qwen25_3b" / "config.json").read_text())
    assert (qwen["model_type"], qwen["vocab_size"], qwen["tie_word_embeddings"]) == ("qwen2", 151936, True)
    assert qwen["dtype"] == "bfloat16" and qwen["num_hidden_layers"] == 2  # --tiny: 2 blocks, the rest as Qwen
    model, tokenizer = load_model_and_tokenizer(str(tmp_path / "smollm2_135m"))
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tokenizer) == 49152
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)  # chat template kept


def test_gpu_resume_reports_run_to_run_and_resume_agreement_exact_on_cpu(tmp_path, monkeypatch, capsys):
    from epo.testing import tiny_run
    from epo.trainer.setup import use_deterministic_kernels

    monkeypatch.setattr(sys, "argv", ["gpu_resume.py", str(tmp_path), *tiny_run(), "train.deterministic=true"])
    try:
        runpy.run_path(str(BENCH / "gpu_resume.py"), run_name="__main__")
    finally:
        use_deterministic_kernels(False)  # the flag is process-wide: later tests start without it
    run_to_run, resume = capsys.readouterr().out.strip().splitlines()[-2:]
    same, total = run_to_run.split(": ")[1].split(" ")[0].split("/")
    assert run_to_run.startswith("run to run on cpu, steps 1-3") and same == total != "0"
    tensors = resume.split("parameters identical in ")[1].split(" ")[0].split("/")
    assert resume.startswith("resume on cpu: steps [1, 2, 3, 4] vs [1, 2, 3, 4]") and tensors[0] == tensors[1]
