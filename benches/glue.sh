#!/usr/bin/env bash
# GLUE on the CPU with MiniLM: LoRA (ratio 1) against LoRA+ (other ratios), same budget, for
# docs/RESULTS.md. One `loraplus glue` per task (each task has its own steps-to-target
# threshold), from the config below (pinned here, so that results do not move when the
# `make train` preset does) plus the task's `target_metric`; then the
# tables are merged into runs/glue/glue_results.md, benches/glue_summary.py writes
# runs/glue/glue_summary.md (steps to a common target, loss), and the overlaid plots are copied
# to docs/img/.
#
#   bash benches/glue.sh                                       # sst2, mrpc; ratios 1,16; seeds 1,2
#   TASKS="cola stsb" RATIOS=1,4,16,32 SEEDS=1,2,3 MAX_STEPS=250 bash benches/glue.sh
#
# env: TASKS, RATIOS, SEEDS, MAX_STEPS (default 250, the preset's budget), LR (lr_A, 2e-4),
#      HEAD_LR (the classifier head's lr; default lr_A), REUSE (1: reuse finished runs, so only
#      the tables and plots are made again), OUT (runs/glue), IMG (docs/img), GLUE_DIR.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
TASKS=${TASKS:-"sst2 mrpc"}
RATIOS=${RATIOS:-1,16}
SEEDS=${SEEDS:-1,2}
MAX_STEPS=${MAX_STEPS:-250}
LR=${LR:-2e-4}
HEAD_LR=${HEAD_LR:-}
REUSE=${REUSE:-}
OUT=${OUT:-runs/glue}
IMG=${IMG:-docs/img}
export GLUE_DIR=${GLUE_DIR:-$(cd "$repo/.." && pwd)/shared/glue}

# Main dev metric a run must reach to count as "reached the target" (steps to target).
target_for() {
    case "$1" in
        sst2) echo 0.85 ;;   # accuracy
        mrpc) echo 0.80 ;;   # (accuracy + F1) / 2
        cola) echo 0.30 ;;   # Matthews correlation
        stsb) echo 0.80 ;;   # (Pearson + Spearman) / 2
        *) echo 0.5 ;;
    esac
}

cargo build --release -q -p loraplus-train --bin loraplus
BIN=target/release/loraplus
mkdir -p "$OUT/configs" "$IMG"
for task in $TASKS; do
    cfg="$OUT/configs/$task.toml"
    # LoRA as in the LoRA+ paper's GLUE runs (r 8, alpha 16, query and value), lr_A $LR, linear
    # schedule with 6% warmup, 8,000 training examples (a seeded subset where the task has
    # more), sequences cut at 64 tokens, dev evaluated every 50 steps; MAX_STEPS sets the budget.
    cat >"$cfg" <<TOML
task = "$task"
target_metric = $(target_for "$task")
seed = 42
device = "cpu"
dtype = "f32"
max_seq_len = 64
batch_size = 32
eval_batch_size = 128
epochs = 1.0
train_limit = 8000
eval_every = 50
log_every = 10
keep_last = 2

[lora]
r = 8
lora_alpha = 16
lora_dropout = 0.1
target_modules = ["query", "value"]
bias = "none"

[optim]
lr = $LR
$([ -n "$HEAD_LR" ] && echo "head_lr = $HEAD_LR")
loraplus_ratio = 16.0
lr_embedding = 1e-6
weight_decay = 0.0
max_grad_norm = 1.0
schedule = "linear"
warmup_ratio = 0.06
TOML
    echo "== $task: ratios $RATIOS, seeds $SEEDS, $MAX_STEPS steps, lr_A $LR, head lr ${HEAD_LR:-lr_A} (load $(cut -d' ' -f1-3 /proc/loadavg))"
    "$BIN" glue --config "$cfg" --tasks "$task" --ratios "$RATIOS" --seeds "$SEEDS" \
        --max-steps "$MAX_STEPS" --output-dir "$OUT/$task" ${REUSE:+--reuse}
    for plot in loss dev_metric; do
        cp "$OUT/$task/$task/$plot.png" "$IMG/glue_${task}_$plot.png"
    done
done

# One table for all tasks run so far.
{
    first=1
    for task in sst2 mrpc cola stsb qnli rte wnli; do
        f="$OUT/$task/glue_results.md"
        [ -f "$f" ] || continue
        if [ $first = 1 ]; then cat "$f"; first=0; else tail -n +3 "$f"; fi
    done
} >"$OUT/glue_results.md"
echo
echo "== all tasks ($OUT/glue_results.md)"
cat "$OUT/glue_results.md"
echo
echo "== per task and ratio, with a common target (benches/glue_summary.py)"
.venv/bin/python benches/glue_summary.py "$OUT" | tee "$OUT/glue_summary.md"
