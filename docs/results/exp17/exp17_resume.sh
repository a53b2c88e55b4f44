#!/bin/bash
# Experiment 17 resumed (a later stretch): the registered command; from step 9 (2026-12-05) with glibc's mmap threshold
# fixed at 128 KiB again (train.malloc_mmap_threshold=131072): under the dynamic threshold the RL process's peak RSS
# grew about 1 GB per step (12.0, 12.2, 14.4, 15.4 GB at steps 4-7) beside 8-16 ScienceWorld JVMs on a 24 GB machine.
# The math is unchanged; the update is slower (1.71x on cloning steps, docs/BENCHMARKS.md "Memory").
cd /work/main
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 PYTHONUNBUFFERED=1
unset MALLOC_MMAP_THRESHOLD_
while pgrep -f "bin/epo train --resume /work/runs/exp17" > /dev/null; do sleep 10; done  # a stretch still saving
date
.venv/bin/epo train --resume /work/runs/exp17 train.malloc_mmap_threshold=131072
date
