#!/bin/bash
set -x
cd /work/main
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1
date
.venv/bin/epo sft --config sciworld_grpo_epo_cpu --out /work/runs/exp16b/sft sft.eval_episodes=0 sft.save_every=5 || exit $?
date
mkdir -p docs/results/exp16b
.venv/bin/epo eval --config sciworld_grpo_epo_cpu --model /work/runs/exp16b/sft -n 16 --out docs/results/exp16b/warm_start.json
date
