#!/usr/bin/env bash
# Data-parallel scaling on this machine (issue #13): MiniLM + LoRA+ training steps on SST-2,
# 1 rank x THREADS threads against RANKS ranks x THREADS threads each (`--nproc-per-node`,
# Gloo on loopback), the same global batch. Reported: samples/s over the logged windows after
# the first (median), the speed-up, and the share of rank 0's training time spent in the
# gradient all-reduce (what `loraplus train` logs at the end of a data-parallel run).
#
#   bash benches/dp.sh                 # 1 rank x 1 thread against 2 ranks x 1 thread
#   STEPS=120 BATCH=32 bash benches/dp.sh
#
# env: RANKS (2), THREADS (1 per rank), STEPS (60), BATCH (32, global), SEQ (64), ROUNDS (2).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
RANKS=${RANKS:-2}
THREADS=${THREADS:-1}
STEPS=${STEPS:-60}
BATCH=${BATCH:-32}
SEQ=${SEQ:-64}
ROUNDS=${ROUNDS:-2}
source "$repo/benches/lib.sh"
cargo build --release -q -p loraplus-train --bin loraplus
BIN=target/release/loraplus
work="$(mktemp -d -t loraplus-dp.XXXXXX)"
trap 'rm -rf "$work"' EXIT
cat > "$work/c.toml" <<TOML
task = "sst2"
max_seq_len = $SEQ
batch_size = $BATCH
max_steps = $STEPS
train_limit = 20000
eval_every = 0
eval_limit = 64
log_every = 10
threads = $THREADS
[lora]
r = 8
lora_alpha = 16
TOML
# samples/s of the windows after the first (warm-up), median.
rate() { python3 -c 'import json,sys,statistics; r=[json.loads(l) for l in open(sys.argv[1]) if "\"train\"" in l][1:]; print(round(statistics.median(x["samples_per_s"] for x in r),2))' "$1/metrics.jsonl"; }
echo "== data parallel: MiniLM SST-2, global batch $BATCH x $SEQ tokens, $STEPS steps; 1 rank x $THREADS thread(s) against $RANKS ranks x $THREADS"
for round in $(seq "$ROUNDS"); do
    LORAPLUS_LOG=warn $BIN train --config "$work/c.toml" --no-progress --output-dir "$work/one-$round" >/dev/null
    LORAPLUS_LOG=info $BIN train --config "$work/c.toml" --no-progress --nproc-per-node "$RANKS" \
        --output-dir "$work/dp-$round" 2>"$work/dp-$round.err" >/dev/null
    one=$(rate "$work/one-$round"); dp=$(rate "$work/dp-$round")
    comm=$(sed -nE 's/.*communication: ([0-9.]+)% .*/\1/p' "$work/dp-$round.err" | head -1)
    echo "round $round: 1 rank $one samples/s, $RANKS ranks $dp samples/s ($(awk -v a="$dp" -v b="$one" 'BEGIN { printf "%.2fx", a / b }')), all-reduce ${comm:-?}% of rank 0's step time"
done
