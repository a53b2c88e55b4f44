"""Experiment 15 per-step table (docs/RESULTS.md): both ALFWorld arms side by side, from their run dirs on the
machine that ran them (paths below). Output: per_step_both_arms.md. Not part of the package; kept with the data."""
"""Per-step table for Experiment 15: both arms (lr 2e-6 fourth start, lr 1e-5) side by side."""
import json, sys
ARMS = {"2e-6": "/work/runs/paper_envs/alfworld_cpu_b", "1e-5": "/work/runs/paper_envs/alfworld_cpu_lr1e5"}
KEYS = [("rollout/success_rate", "{:.3f}"), ("epo/entropy_mean", "{:.3f}"), ("epo/P", "{:.3f}"),
        ("rollout/invalid_rate", "{:.3f}"), ("actor/adv_shaping_share", "{:.2f}")]
def rows(run):
    out = {}
    for line in open(f"{run}/metrics.jsonl"):
        r = json.loads(line)
        if "rollout/success_rate" in r:
            out[r["step"]] = r
    return out
data = {arm: rows(run) for arm, run in ARMS.items()}
steps = sorted(set(data["1e-5"]))
print("| step | " + " | ".join(f"{k.split('/')[-1]} 2e-6 / 1e-5" for k, _ in KEYS) + " |")
print("|---" * (len(KEYS) + 1) + "|")
for s in steps:
    cells = []
    for k, f in KEYS:
        a, b = data["2e-6"].get(s, {}).get(k), data["1e-5"].get(s, {}).get(k)
        cells.append(f"{'-' if a is None else f.format(a)} / {'-' if b is None else f.format(b)}")
    print(f"| {s} | " + " | ".join(cells) + " |")
for arm in data:
    ss = [s for s in steps if s in data[arm]]
    wins = sum(data[arm][s]["rollout/success_rate"] for s in ss) * 8
    print(arm, "steps", ss[0], "-", ss[-1], "training wins", round(wins), "/", 8 * len(ss))
