"""What a run emits while it runs: per-step metrics, live warnings, env faults and the progress display.

metrics   metrics.jsonl / warnings.jsonl (+ TensorBoard, W&B) and their readers; resume truncation
monitor   CascadeMonitor: live warnings when the entropy dynamics look like a cascade failure
faults    env-worker crashes and hangs -> console lines, faults.jsonl, per-step counts; whole-batch retries
progress  the rich progress bars (RL steps, current phase)
"""
