#!/bin/bash
# Experiment 17 resumed (a later session): the registered command; from 2026-12-05 16:00 UTC without
# MALLOC_MMAP_THRESHOLD_ (it cost 1.71x per update step, docs/BENCHMARKS.md "Memory"; the math is unchanged), so the
# trainer's defaults apply (train.malloc_trim=true, glibc's dynamic threshold) and perf/peak_rss_gb shows their memory.
cd /work/main
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 PYTHONUNBUFFERED=1
date
.venv/bin/epo train --resume /work/runs/exp17
date
