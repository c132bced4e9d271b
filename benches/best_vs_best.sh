#!/usr/bin/env bash
# Issue #17: LoRA+ at its best (lr_A, ratio) against plain LoRA at its best lr_A, on GLUE with
# MiniLM on the CPU, and how good `loraplus tune`'s pick is. Per task, in this order (each task
# finishes before the next starts, so an interrupted study keeps whole tasks; rerunning the
# script reuses every finished trial and run):
#
#   1. the full grid: every (lr_A, ratio) cell, one seed, 250 steps
#      (`loraplus tune --min-steps 250`, a single rung);
#   1b. when plain LoRA's best cell is the grid's largest lr_A (an edge, not an optimum), plain
#      LoRA alone (ratio 1) at EDGE_LRS, one seed, 250 steps, so that its best is bracketed;
#      LoRA's pick for step 3 is the best ratio-1 cell of the grid and this extension; and
#      likewise when LoRA+'s best cell is the grid's smallest lr_A, LoRA+ alone (ratios > 1) at
#      EDGE_LRS_PLUS, so that LoRA+ is bracketed too;
#   2. `loraplus tune` by successive halving on the same grid (rungs 28, 84, 250 steps, eta 3),
#      its store seeded with the grid's trials: a 250-step trial is the same run in both (same
#      config, seed and steps; the CPU runs are deterministic), so tune's pick and its cost are
#      what a fresh search gives, and only its short rungs train; twice, its short rungs ranked
#      by the eval loss (folder tune) and by the metric (the default, folder tune-metric);
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
#   STAGES="edge" TASKS="sst2" bash benches/best_vs_best.sh   # one stage (grid edge tune finals)
#
# env: TASKS (sst2 cola stsb mrpc: cheapest first), LRS (3e-4,1e-3,3e-3), RATIOS (1,4,8,16,32),
#      HEAD_LR (2e-3), EDGE_LRS (1e-2,3e-2), EDGE_LRS_PLUS (1e-4), STAGES (grid edge tune finals),
#      RANKS (the tune stage's rankings of the short rungs: loss metric), OUT
#      (runs/best-vs-best), GLUE_DIR. The finals' folders are named by their setting
#      (final-250/lora-lr0.003-r1), so a changed pick never reuses runs of another setting.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
TASKS=${TASKS:-"sst2 cola stsb mrpc"}
LRS=${LRS:-3e-4,1e-3,3e-3}
RATIOS=${RATIOS:-1,4,8,16,32}
HEAD_LR=${HEAD_LR:-2e-3}
EDGE_LRS=${EDGE_LRS:-1e-2,3e-2}
EDGE_LRS_PLUS=${EDGE_LRS_PLUS:-1e-4}
STAGES=${STAGES:-"grid edge tune finals"}
RANKS=${RANKS:-"loss metric"}
OUT=${OUT:-runs/best-vs-best}
SEEDS=1,2,3
export GLUE_DIR=${GLUE_DIR:-$(cd "$repo/.." && pwd)/shared/glue}
PY=.venv/bin/python

stage() { [[ " $STAGES " == *" $1 "* ]]; }

cargo build --release -q -p loraplus-train --bin loraplus
BIN=target/release/loraplus
mkdir -p "$OUT"

# cells TASK_DIR FOLDER LRS RATIOS: every (lr_A, ratio) cell, one seed, 250 steps (a single
# rung of `loraplus tune`), into TASK_DIR/FOLDER; finished cells are reused.
cells() {
    "$BIN" tune --config "$1/config.toml" --lrs "$3" --ratios "$4" --seeds 1 \
        --max-steps 250 --min-steps 250 --head-lr "$HEAD_LR" --output-dir "$1/$2" >"$1/$2.log" 2>&1
    tail -n 3 "$1/$2.log"
}

# Seed tune's store ($2) with the grid's 250-step trials ($1), no duplicates when rerun.
seed_store() {
    $PY - "$1" "$2" <<'PY'
import json, os, sys
src, dst = sys.argv[1:]
if not os.path.exists(src):
    sys.exit(0)
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
}

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
    if stage grid; then
        echo "== $task: full grid lr_A $LRS x ratio $RATIOS, 250 steps, seed 1 ($(date +%T), load $(cut -d' ' -f1 /proc/loadavg))"
        cells "$dir" grid "$LRS" "$RATIOS"
    fi

    if stage edge; then
        # Bracket each method's best lr_A when the grid puts it on the grid's edge (or when there
        # is no grid: this stage alone): plain LoRA above the largest lr_A, LoRA+ below the
        # smallest (its ratios stay the grid's, > 1).
        plus_ratios=$(echo "$RATIOS" | tr ',' '\n' | awk '$1 > 1' | paste -sd,)
        for method in lora loraplus; do
            if [ $method = lora ]; then
                name="plain LoRA" folder=edge lrs=$EDGE_LRS ratios=1 where="past"
            else
                name="LoRA+" folder=edge-plus lrs=$EDGE_LRS_PLUS ratios=$plus_ratios where="below"
            fi
            at_edge=yes
            if [ -f "$dir/grid/tune_results.json" ]; then
                at_edge=$($PY benches/best_vs_best_summary.py --at-edge $method "$dir")
            fi
            if [ "$at_edge" = yes ]; then
                echo "== $task: $name $where the grid's edge, lr_A $lrs, ratios $ratios, 250 steps, seed 1 ($(date +%T))"
                cells "$dir" $folder "$lrs" "$ratios"
            else
                echo "== $task: $name's best lr_A is inside the grid: no extension"
            fi
        done
    fi

    if stage tune; then
        # Twice: short rungs ranked by the eval loss (folder tune) and by the metric (the
        # default, folder tune-metric). Each store is seeded with the grid's 250-step trials, the
        # second also with the first's trials (same config, seed and steps: the same runs), so
        # the second search trains only the cells the first did not reach.
        for rank in $RANKS; do
            folder=tune
            [ $rank = metric ] && folder=tune-metric
            echo "== $task: loraplus tune (successive halving, rungs 28/84/250, eta 3, short rungs ranked by the $rank) ($(date +%T))"
            mkdir -p "$dir/$folder"
            seed_store "$dir/grid/trials.jsonl" "$dir/$folder/trials.jsonl"
            [ $rank = metric ] && seed_store "$dir/tune/trials.jsonl" "$dir/$folder/trials.jsonl"
            "$BIN" tune --config "$cfg" --lrs "$LRS" --ratios "$RATIOS" --seeds 1 \
                --max-steps 250 --min-steps 28 --eta 3 --early-rank $rank --head-lr "$HEAD_LR" \
                --output-dir "$dir/$folder" >"$dir/$folder.log" 2>&1
            tail -n 2 "$dir/$folder.log"
        done
    fi

    stage finals || continue
    # Each method's best cell of the grid and of its edge extension.
    read -r lora_lr plus_lr plus_ratio < <($PY benches/best_vs_best_summary.py --pick "$dir")
    echo "== $task: LoRA best lr_A $lora_lr; LoRA+ best lr_A $plus_lr ratio $plus_ratio; seeds $SEEDS ($(date +%T))"
    for budget in 250 long; do
        if [ $budget = long ]; then steps=$(long_steps "$task"); every=75; else steps=250; every=50; fi
        for method in lora loraplus; do
            if [ $method = lora ]; then lr=$lora_lr; ratio=1; else lr=$plus_lr; ratio=$plus_ratio; fi
            run="$dir/final-$budget/$method-lr$lr-r$ratio"
            mkdir -p "$dir/final-$budget"
            "$BIN" glue --config "$cfg" --tasks "$task" --ratios "$ratio" --seeds "$SEEDS" --lr "$lr" \
                --max-steps "$steps" --eval-every "$every" --output-dir "$run" --reuse \
                >"$run.log" 2>&1
            echo "   $budget ($steps steps) $method: $(grep -c '' "$run/glue_results.md") table lines ($(date +%T))"
        done
    done
done

$PY benches/best_vs_best_summary.py "$OUT" | tee "$OUT/summary.md"
