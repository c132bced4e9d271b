#!/usr/bin/env bash
# The SFT (causal-LM) training step side by side with transformers + PEFT on the same libtorch,
# on the same batches, padded and packed: tokens/s (document tokens, padding not counted), the
# padding fraction, peak RSS. Part of `make bench` (PARTS=sft in benches/run.sh runs it alone).
#
#   bash benches/sft.sh                     # a small Llama-shaped model (hidden 256, 4 layers)
#   HIDDEN=512 LAYERS=8 DOCS=256 bash benches/sft.sh
#
# env: THREADS (default nproc), ROUNDS (2), DOCS (128), SEQ (512), BATCH (8), HIDDEN (256),
#      LAYERS (4), STEPS (timed steps per run, default every batch once), DEVICE (cpu),
#      DTYPE (f32), SHAPE (small | llama-7b), BIN (a prebuilt sft_step_bench: no cargo), PY.
# The GPU check runs it as DEVICE=cuda DTYPE=bf16 SHAPE=llama-7b LAYERS=2.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
THREADS=${THREADS:-$(nproc)}
ROUNDS=${ROUNDS:-2}
DOCS=${DOCS:-128}
SEQ=${SEQ:-512}
BATCH=${BATCH:-8}
HIDDEN=${HIDDEN:-256}
LAYERS=${LAYERS:-4}
STEPS=${STEPS:-0}
DEVICE=${DEVICE:-cpu}
DTYPE=${DTYPE:-f32}
SHAPE=${SHAPE:-small}
PY=${PY:-.venv/bin/python}
export PYTHONWARNINGS=ignore TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
source "$repo/benches/lib.sh"

work="$(mktemp -d -t loraplus-sft.XXXXXX)"
log="$work/log"
trap 'rm -rf "$work"' EXIT

echo "== SFT step: Llama-shaped hidden $HIDDEN x $LAYERS layers, $DOCS documents, rows of $SEQ, batch $BATCH docs, $THREADS threads, $ROUNDS rounds"
$PY benches/sft_make.py "$work" --docs "$DOCS" --seq "$SEQ" --batch "$BATCH" --hidden "$HIDDEN" --layers "$LAYERS" --shape "$SHAPE"
if [ -z "${BIN:-}" ]; then
    cargo build --release -q -p loraplus-train --example sft_step_bench
    BIN=target/release/examples/sft_step_bench
fi
dev=(--threads "$THREADS" --device "$DEVICE" --dtype "$DTYPE")
for round in $(seq "$ROUNDS"); do
    for layout in padded packed; do
        "$BIN" "$work" "$layout" --steps "$STEPS" "${dev[@]}" | tee -a "$log"
        $PY benches/sft_step_ref.py "$work" "$layout" --steps "$STEPS" "${dev[@]}" 2>/dev/null | tee -a "$log"
    done
done
echo
echo "| layout | padding | loraplus tokens/s | PEFT tokens/s | ratio | loraplus peak RSS MiB | PEFT peak RSS MiB |"
echo "|---|---|---|---|---|---|---|"
for layout in padded packed; do
    ours=$(grep "impl=loraplus layout=$layout " "$log" | field tokens_per_s | median)
    theirs=$(grep "impl=peft layout=$layout " "$log" | field tokens_per_s | median)
    pad=$(grep "layout=$layout " "$log" | field padding | head -1)
    rss_o=$(grep "impl=loraplus layout=$layout " "$log" | field peak_rss_mib | median)
    rss_t=$(grep "impl=peft layout=$layout " "$log" | field peak_rss_mib | median)
    ratio=$(awk -v a="$ours" -v b="$theirs" 'BEGIN { printf "%.2fx", a / b }')
    echo "| $layout | $pad | $ours | $theirs | $ratio | $rss_o | $rss_t |"
done
