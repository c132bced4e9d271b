"""Summarise `loraplus glue` runs (benches/glue.sh) per task and ratio, from each run's
metrics.jsonl: final and best dev metric (mean ± sample std over seeds), the training loss over
the last 50 steps, and the steps to reach a common target.

The target of a task is the lowest best-dev-metric over all its runs, so every run reaches it and
"steps to target" compares speeds without a hand-picked threshold (evaluations every
`eval_every` steps, so steps are multiples of it). A second column counts the steps to reach
plain LoRA's (ratio 1) mean final dev metric: how much sooner LoRA+ gets where LoRA ends ("-"
for a seed that never does).

usage: python benches/glue_summary.py [RUNS_DIR ...]   (default runs/glue; runs of one task in
       several directories are merged; prints markdown)
"""
import glob
import json
import os
import statistics
import sys


def read(path):
    train, evals = [], []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            (evals if r["kind"] == "eval" else train).append(r)
    return train, evals


def mean_std(v):
    if not v:
        return "-"
    s = statistics.stdev(v) if len(v) > 1 else 0.0
    return f"{statistics.mean(v):.4f} ± {s:.4f}"


def main(roots):
    out = []
    tasks = {}
    for root in roots:
        for task_dir in glob.glob(os.path.join(root, "*", "*")):
            tasks.setdefault(os.path.basename(task_dir), []).append(task_dir)
    for task in sorted(tasks):
        runs = {}
        paths = [p for d in tasks[task] for p in glob.glob(os.path.join(d, "ratio-*", "seed-*", "metrics.jsonl"))]
        for path in paths:
            ratio = float(path.split("ratio-")[1].split(os.sep)[0])
            seed = path.split("seed-")[1].split(os.sep)[0]
            train, evals = read(path)
            if evals:
                runs.setdefault(ratio, []).append((seed, train, evals))
        if not runs:
            continue
        name = next(iter(runs.values()))[0][2][0]["main_name"]
        target = min(max(e["main"] for e in ev) for rs in runs.values() for _, _, ev in rs)
        out.append(f"\n**{task}** ({name}; target for steps-to-target: {target:.4f}, the lowest best "
                   f"dev value of all runs)\n")
        lora_final = [ev[-1]["main"] for _, _, ev in runs.get(1.0, [])]
        lora_mark = statistics.mean(lora_final) if lora_final else None
        out.append("| ratio | seeds | final dev | best dev | train loss, last 50 steps | steps to target (per seed) "
                   "| steps to LoRA's final dev (per seed) |")
        out.append("|---|---|---|---|---|---|---|")
        for ratio in sorted(runs):
            rs = sorted(runs[ratio])
            final = [ev[-1]["main"] for _, _, ev in rs]
            best = [max(e["main"] for e in ev) for _, _, ev in rs]
            last_step = [tr[-1]["step"] if tr else 0 for _, tr, _ in rs]
            loss = [statistics.mean(r["loss"] for r in tr if r["step"] > ls - 50)
                    for (_, tr, _), ls in zip(rs, last_step) if tr]
            reach = [next(e["step"] for e in ev if e["main"] >= target) for _, _, ev in rs]
            if lora_mark is None:
                to_lora = "-"
            else:
                to_lora = ", ".join(str(next((e["step"] for e in ev if e["main"] >= lora_mark), "-"))
                                    for _, _, ev in rs)
            label = "1 (LoRA)" if ratio == 1 else f"{ratio:g}"
            out.append(f"| {label} | {', '.join(s for s, _, _ in rs)} | {mean_std(final)} | {mean_std(best)} | "
                       f"{mean_std(loss)} | {', '.join(map(str, reach))} | {to_lora} |")
    print("\n".join(out).strip())


if __name__ == "__main__":
    main(sys.argv[1:] or ["runs/glue"])
