#!/bin/bash
# Experiment 17 resumed (a later session): the registered command; from step 4 (2026-12-05 17:17 UTC) with glibc's
# dynamic mmap threshold (train.malloc_mmap_threshold=0: the run's saved config held the fixed 131072, which cost
# 1.71x per update step, docs/BENCHMARKS.md "Memory"; the math is unchanged) and train.malloc_trim=true (default).
cd /work/main
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 PYTHONUNBUFFERED=1
unset MALLOC_MMAP_THRESHOLD_
date
.venv/bin/epo train --resume /work/runs/exp17 train.malloc_mmap_threshold=0
date
