#!/bin/bash
# Experiment 17: after Experiment 16b's script and the CI run, the ScienceWorld preset's RL from 16b's warm start
while pgrep -f "runs/exp16b/run.sh" > /dev/null || pgrep -f "bash .ci/run" > /dev/null; do sleep 20; done
set -x
cd /work/main
# glibc's dynamic mmap threshold keeps freed activation tensors in the brk heap (cloning grew to 15 GB): a fixed one
export MALLOC_MMAP_THRESHOLD_=131072
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 PYTHONUNBUFFERED=1
date
test -d /work/runs/exp16b/sft/export || exit 1
if [ -f /work/runs/exp17/config.yaml ]; then
  .venv/bin/epo train --resume /work/runs/exp17
else
  .venv/bin/epo train --config sciworld_grpo_epo_cpu --run-dir /work/runs/exp17 init_from=/work/runs/exp16b/sft train.save_every=1
fi
date
