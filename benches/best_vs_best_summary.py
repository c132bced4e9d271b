"""Tables of benches/best_vs_best.sh (issue #17), in markdown on stdout.

    python benches/best_vs_best_summary.py runs/best-vs-best
    python benches/best_vs_best_summary.py --pick TASK_DIR          # for the script
    python benches/best_vs_best_summary.py --at-edge lora|loraplus TASK_DIR  # for the script

Per task: the full grid (dev metric after 250 steps, seed 1, every lr_A x ratio; plain LoRA
alone past the grid's largest lr_A, LoRA+ alone below its smallest, when those extensions ran), what
`loraplus tune` picked and at what cost, and each method at its grid-best setting over three
seeds at 250 steps and at the longer budget: final and best dev (mean +- sample std), training
loss of the last 50 steps, and the steps each run needs to reach plain LoRA's mean final dev.
Then one line per task and way of ranking tune's short rungs (eval loss, metric) on its pick:
within one seed-std of the grid's best or not.
"""
import json
import math
import os
import sys

TASKS = ["mrpc", "stsb", "sst2", "cola"]
METRIC = {
    "mrpc": "(accuracy + F1) / 2",
    "stsb": "(Pearson + Spearman) / 2",
    "sst2": "accuracy",
    "cola": "Matthews correlation",
}


def grid_scores(path):
    """(lr, ratio) -> metric of the grid's cells at its last rung (None for a failed trial)."""
    res = json.load(open(path))
    last = max(s["rung"] for s in res["scores"])
    return {(s["lr"], s["ratio"]): s["mean"] for s in res["scores"] if s["rung"] == last}


def edge_scores(task_dir, name="edge"):
    """(lr, ratio) -> metric past the grid's edge: `edge` for plain LoRA above the largest lr_A,
    `edge-plus` for LoRA+ below the smallest ({} when that stage did not run)."""
    path = os.path.join(task_dir, name, "tune_results.json")
    return grid_scores(path) if os.path.exists(path) else {}


def picks(task_dir):
    """Each method's setting for the finals: plain LoRA's best ratio-1 cell of the grid and its
    edge extension, LoRA+'s best cell of ratios > 1 of the grid and its edge extension; and the
    grid's cells."""
    cells = grid_scores(os.path.join(task_dir, "grid", "tune_results.json"))
    lora = best({**cells, **edge_scores(task_dir)}, lambda r: r == 1.0)
    plus = best({**cells, **edge_scores(task_dir, "edge-plus")}, lambda r: r != 1.0)
    return lora, plus, cells


def setting_dir(lr, ratio):
    """The finals' folder name of one setting (the script builds the same from --pick)."""
    return f"lr{lr:g}-r{ratio:g}"


def best(cells, keep):
    ok = [(m, k) for k, m in cells.items() if keep(k[1]) and m is not None]
    if not ok:
        raise SystemExit("no finished cell for this method in the grid")
    return max(ok)[1]


def mean_std(v):
    n = len(v)
    m = sum(v) / n
    s = math.sqrt(sum((x - m) ** 2 for x in v) / (n - 1)) if n > 1 else 0.0
    return m, s


def fmt(v):
    m, s = mean_std(v)
    return f"{m:.4f} ± {s:.4f}"


def runs(dir_, task):
    """Every seed's (evals [(step, main)], train [(step, loss)]) under a `loraplus glue` folder."""
    out = {}
    root = os.path.join(dir_, task)
    if not os.path.isdir(root):
        return out
    for ratio_dir in sorted(os.listdir(root)):
        rpath = os.path.join(root, ratio_dir)
        if not (ratio_dir.startswith("ratio-") and os.path.isdir(rpath)):
            continue
        for seed_dir in sorted(os.listdir(rpath)):
            m = os.path.join(rpath, seed_dir, "metrics.jsonl")
            if not os.path.exists(m):
                continue
            evals, train = [], []
            for line in open(m):
                r = json.loads(line)
                if r["kind"] == "eval":
                    evals.append((r["step"], r["main"]))
                elif r["kind"] == "train":
                    train.append((r["step"], r["loss"]))
            out[seed_dir] = (evals, train)
    return out


def num(v):
    return "failed" if v is None else f"{v:.4f}"


def first_reach(evals, target):
    for step, v in evals:
        if v >= target:
            return str(step)
    return "-"


def summarize(out):
    lines = []
    tune_lines = []
    for task in TASKS:
        d = os.path.join(out, task)
        gpath = os.path.join(d, "grid", "tune_results.json")
        if not os.path.exists(gpath):
            continue
        lora, plus, cells = picks(d)
        edge = edge_scores(d)
        edge_plus = edge_scores(d, "edge-plus")
        lrs = sorted({k[0] for k in cells})
        ratios = sorted({k[1] for k in cells})
        top = max((m, k) for k, m in cells.items() if m is not None)[1]
        lines.append(f"### {task} ({METRIC[task]})\n")
        lines.append("Full grid, dev after 250 steps, seed 1 (**bold**: each method's best):\n")
        lines.append("| lr_A \\ ratio | " + " | ".join(f"{r:g}" for r in ratios) + " |")
        lines.append("|---|" + "---|" * len(ratios))
        below = sorted({k[0] for k in edge_plus} - set(lrs))
        above = sorted({k[0] for k in edge} - set(lrs))
        for lr in below + lrs + above:
            row = []
            for r in ratios:
                known = cells if lr in lrs else edge if lr in above else edge_plus
                if (lr, r) not in known:
                    row.append("-")
                    continue
                m = known[(lr, r)]
                s = "failed" if m is None else f"{m:.4f}"
                row.append(f"**{s}**" if (lr, r) in (lora, plus) else s)
            mark = " (LoRA only)" if lr in above else " (LoRA+ only)" if lr in below else ""
            lines.append(f"| {lr:g}{mark} | " + " | ".join(row) + " |")
        lines.append("")

        finals = {}
        for budget in ["250", "long"]:
            for method, (lr, ratio) in [("lora", lora), ("loraplus", plus)]:
                rs = runs(os.path.join(d, f"final-{budget}", f"{method}-{setting_dir(lr, ratio)}"), task)
                if rs:
                    finals[(budget, method)] = (lr, ratio, rs)
        if finals:
            lines.append("Each method at its grid-best setting, seeds 1, 2, 3:\n")
            lines.append(
                "| budget | method | lr_A | ratio | final dev | best dev | train loss, last 50 steps "
                "| steps to LoRA's mean final dev |"
            )
            lines.append("|---|---|---|---|---|---|---|---|")
            for budget in ["250", "long"]:
                if (budget, "lora") not in finals:
                    continue
                lora_final = mean_std(
                    [ev[-1][1] for ev, _ in finals[(budget, "lora")][2].values()]
                )[0]
                for method in ["lora", "loraplus"]:
                    if (budget, method) not in finals:
                        continue
                    lr, ratio, rs = finals[(budget, method)]
                    steps = max(ev[-1][0] for ev, _ in rs.values())
                    final = [ev[-1][1] for ev, _ in rs.values()]
                    bestv = [max(v for _, v in ev) for ev, _ in rs.values()]
                    loss = []
                    for _, tr in rs.values():
                        tail = [l for s, l in tr if s > steps - 50]
                        loss.append(sum(tail) / len(tail))
                    reach = ", ".join(first_reach(ev, lora_final) for ev, _ in rs.values())
                    name = "LoRA" if method == "lora" else "LoRA+"
                    lines.append(
                        f"| {steps} | {name} | {lr:g} | {ratio:g} | {fmt(final)} | {fmt(bestv)} "
                        f"| {fmt(loss)} | {reach} (target {lora_final:.4f}) |"
                    )
            lines.append("")

        # The tune ranked its short rungs by the eval loss (folder tune) and by the metric
        # (tune-metric, the default).
        for folder, ranked in [("tune", "loss"), ("tune-metric", "metric")]:
            tpath = os.path.join(d, folder, "tune_results.json")
            if not os.path.exists(tpath):
                continue
            t = json.load(open(tpath))
            pick = (t["best_lr"], t["best_ratio"])
            pick_grid = cells.get(pick)
            best_grid = cells[top]
            # The seed spread of the grid's best cell: its three 250-step seeds (when the finals
            # ran that setting: tune searched the grid, not the edge extension).
            method = "lora" if top[1] == 1.0 else "loraplus"
            std = None
            if ("250", method) in finals and finals[("250", method)][:2] == top:
                std = mean_std([ev[-1][1] for ev, _ in finals[("250", method)][2].values()])[1]
            gap = None if pick_grid is None else best_grid - pick_grid
            within = "?" if (std is None or gap is None) else ("yes" if gap <= std + 1e-12 else "no")
            tune_lines.append(
                f"| {task} | {ranked} | lr {pick[0]:g}, ratio {pick[1]:g} ({num(pick_grid)}) "
                f"| lr {top[0]:g}, ratio {top[1]:g} ({best_grid:.4f}) | {num(gap)} "
                f"| {'-' if std is None else f'{std:.4f}'} | {within} "
                f"| {100 * t['cost_fraction']:.0f}% ({len(t['trials'])} trials) |"
            )
    if tune_lines:
        lines.append("### `loraplus tune` against the full grid (250 steps)\n")
        lines.append(
            "| task | short rungs ranked by | tune's pick (its grid value) | grid's best | gap "
            "| seed std of the best cell | within one std | cost (steps, of the full grid) |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
        lines.extend(tune_lines)
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1] == "--pick":
        lora, plus, _ = picks(sys.argv[2])
        print(f"{lora[0]:g} {plus[0]:g} {plus[1]:g}")
    elif sys.argv[1] == "--at-edge":
        # Plain LoRA's best cell on the grid's largest lr_A, or LoRA+'s on its smallest.
        method, task_dir = sys.argv[2:4]
        cells = grid_scores(os.path.join(task_dir, "grid", "tune_results.json"))
        if method == "lora":
            at, edge = best(cells, lambda r: r == 1.0)[0], max(k[0] for k in cells)
        else:
            at, edge = best(cells, lambda r: r != 1.0)[0], min(k[0] for k in cells)
        print("yes" if at == edge else "no")
    else:
        print(summarize(sys.argv[1]))
