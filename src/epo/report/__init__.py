"""`epo report RUN_DIR ...`: what a finished (or running) run dir says, as PNG figures and a Markdown summary.

data      read a run dir: metrics.jsonl, warnings.jsonl, faults.jsonl, config.yaml, before_after.json -> RunData
health    env faults and damaged metrics lines, as report sections (and the checked metrics reader)
plots     the line figures and per-turn heatmaps
summary   write_report: figures + summary.md (success tables, before/after, config differences, warnings)
"""
