#!/usr/bin/env bash
# Issue #17: LoRA+ at its best (lr_A, ratio) against plain LoRA at its best lr_A, on GLUE with
# MiniLM on the CPU, and how good `loraplus tune`'s pick is. Per task, in this order (each task
# finishes before the next starts, so an interrupted study keeps whole tasks; rerunning the
# script reuses every finished trial and run):
#
#   1. the full grid: every (lr_A, ratio) cell, one seed, 250 steps
#      (`loraplus tune --min-steps 250`, a single rung);
#   2. `loraplus tune` by successive halving on the same grid (rungs 28, 84, 250 steps, eta 3),
#      its store seeded with the grid's trials: a 250-step trial is the same run in both (same
#      config, seed and steps; the CPU runs are deterministic), so tune's pick and its cost are
#      what a fresh search gives, and only its short rungs train;
#   3. each method at its grid-best setting (LoRA: ratio 1; LoRA+: ratios 2^2..2^5), seeds
#      1, 2, 3, at 250 steps and at a longer budget (3 epochs of the training subset: SST-2 and
#      CoLA 750 steps, MRPC 344, STS-B 539; all under the issue's 2,000), dev every 50 / 75 steps.
#
# The recipe is benches/glue.sh's (r 8, alpha 16, dropout 0.1, query and value, linear schedule,
# 6% warmup, batch 32, 64 tokens, 8,000 training examples at most), except that the head's lr
# is fixed (HEAD_LR, the same for both methods and every cell), so only the adapters' rates
# move. benches/best_vs_best_summary.py writes $OUT/summary.md (the tables in docs/RESULTS.md).
#
#   bash benches/best_vs_best.sh                       # all four tasks, about 3 h on 2 cores
#   TASKS="mrpc" bash benches/best_vs_best.sh          # one task
#
# env: TASKS (sst2 cola stsb mrpc: cheapest first), LRS (3e-4,1e-3,3e-3), RATIOS (1,4,8,16,32),
#      HEAD_LR (2e-3), OUT (runs/best-vs-best), GLUE_DIR.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
TASKS=${TASKS:-"sst2 cola stsb mrpc"}
LRS=${LRS:-3e-4,1e-3,3e-3}
RATIOS=${RATIOS:-1,4,8,16,32}
HEAD_LR=${HEAD_LR:-2e-3}
OUT=${OUT:-runs/best-vs-best}
SEEDS=1,2,3
export GLUE_DIR=${GLUE_DIR:-$(cd "$repo/.." && pwd)/shared/glue}
PY=.venv/bin/python

cargo build --release -q -p loraplus-train --bin loraplus
BIN=target/release/loraplus
mkdir -p "$OUT"

# Steps of 3 epochs of min(train size, 8000) sentences at batch 32.
long_steps() {
    case "$1" in
        mrpc) echo 344 ;;    # 3,668 pairs
        stsb) echo 539 ;;    # 5,749 pairs
        *) echo 750 ;;       # sst2 (67,349), cola (8,551): the 8,000 subset
    esac
}

for task in $TASKS; do
    dir="$OUT/$task"
    mkdir -p "$dir"
    cfg="$dir/config.toml"
    cat >"$cfg" <<TOML
task = "$task"
seed = 1
device = "cpu"
dtype = "f32"
max_seq_len = 64
batch_size = 32
eval_batch_size = 128
epochs = 1.0
train_limit = 8000
eval_every = 50
log_every = 10
keep_last = 1

[lora]
r = 8
lora_alpha = 16
lora_dropout = 0.1
target_modules = ["query", "value"]
bias = "none"

[optim]
lr = 2e-4
head_lr = $HEAD_LR
loraplus_ratio = 1.0
lr_embedding = 1e-6
weight_decay = 0.0
max_grad_norm = 1.0
schedule = "linear"
warmup_ratio = 0.06
TOML
    echo "== $task: full grid lr_A $LRS x ratio $RATIOS, 250 steps, seed 1 ($(date +%T), load $(cut -d' ' -f1 /proc/loadavg))"
    "$BIN" tune --config "$cfg" --lrs "$LRS" --ratios "$RATIOS" --seeds 1 \
        --max-steps 250 --min-steps 250 --head-lr "$HEAD_LR" --output-dir "$dir/grid" >"$dir/grid.log" 2>&1
    tail -n 3 "$dir/grid.log"

    echo "== $task: loraplus tune (successive halving, rungs 28/84/250, eta 3) ($(date +%T))"
    mkdir -p "$dir/tune"
    # Seed tune's store with the grid's 250-step trials (no duplicates when rerun).
    $PY - "$dir/grid/trials.jsonl" "$dir/tune/trials.jsonl" <<'PY'
import json, os, sys
src, dst = sys.argv[1:]
have = set()
if os.path.exists(dst):
    for line in open(dst):
        if line.strip():
            r = json.loads(line)
            have.add((r["lr"], r["ratio"], r["seed"], r["steps"]))
with open(dst, "a") as f:
    for line in open(src):
        if line.strip():
            r = json.loads(line)
            if (r["lr"], r["ratio"], r["seed"], r["steps"]) not in have:
                f.write(line if line.endswith("\n") else line + "\n")
PY
    "$BIN" tune --config "$cfg" --lrs "$LRS" --ratios "$RATIOS" --seeds 1 \
        --max-steps 250 --min-steps 28 --eta 3 --head-lr "$HEAD_LR" --output-dir "$dir/tune" >"$dir/tune.log" 2>&1
    tail -n 2 "$dir/tune.log"

    # Each method's best cell of the grid.
    read -r lora_lr plus_lr plus_ratio < <($PY benches/best_vs_best_summary.py --pick "$dir/grid/tune_results.json" "$task")
    echo "== $task: LoRA best lr_A $lora_lr; LoRA+ best lr_A $plus_lr ratio $plus_ratio; seeds $SEEDS ($(date +%T))"
    for budget in 250 long; do
        if [ $budget = long ]; then steps=$(long_steps "$task"); every=75; else steps=250; every=50; fi
        for method in lora loraplus; do
            if [ $method = lora ]; then lr=$lora_lr; ratio=1; else lr=$plus_lr; ratio=$plus_ratio; fi
            "$BIN" glue --config "$cfg" --tasks "$task" --ratios "$ratio" --seeds "$SEEDS" --lr "$lr" \
                --max-steps "$steps" --eval-every "$every" --output-dir "$dir/final-$budget/$method" --reuse \
                >"$dir/final-$budget-$method.log" 2>&1
            echo "   $budget ($steps steps) $method: $(grep -c '' "$dir/final-$budget/$method/glue_results.md") table lines ($(date +%T))"
        done
    done
done

$PY benches/best_vs_best_summary.py "$OUT" | tee "$OUT/summary.md"
