#!/usr/bin/env bash
# Data-parallel scaling on this machine (issue #13): MiniLM + LoRA+ training steps on SST-2,
# 1 rank x THREADS threads against RANKS ranks x THREADS threads each (`--nproc-per-node`,
# Gloo on loopback), the same global batch. Reported: samples/s over the logged windows after
# the first (median), the speed-up, and the share of rank 0's training time spent in the
# gradient all-reduce (what `loraplus train` logs at the end of a data-parallel run).
#
#   bash benches/dp.sh                 # 1 rank x 1 thread against 2 ranks x 1 thread
#   STEPS=120 BATCH=32 bash benches/dp.sh
#   DEVICE=cuda DTYPE=bf16 bash benches/dp.sh   # on one GPU (part of `make gpu-check`)
#
# With DEVICE=cuda, on the one GPU: 1 rank without a group, against NCCL in a group of one
# (`--dist-backend nccl` under the launcher variables: the all-reduce's own cost, NCCL refusing
# two ranks on one GPU) and Gloo reducing CUDA tensors with RANKS ranks sharing the GPU.
#
# env: RANKS (2), THREADS (1 per rank), STEPS (60), BATCH (32, global), SEQ (64), ROUNDS (2),
#      DEVICE (cpu), DTYPE (f32), BIN (a prebuilt `loraplus`; default: cargo builds it).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
RANKS=${RANKS:-2}
THREADS=${THREADS:-1}
STEPS=${STEPS:-60}
BATCH=${BATCH:-32}
SEQ=${SEQ:-64}
ROUNDS=${ROUNDS:-2}
DEVICE=${DEVICE:-cpu}
DTYPE=${DTYPE:-f32}
source "$repo/benches/lib.sh"
if [ -z "${BIN:-}" ]; then
    cargo build --release -q -p loraplus-train --bin loraplus
    BIN=target/release/loraplus
fi
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
device = "$DEVICE"
dtype = "$DTYPE"
[lora]
r = 8
lora_alpha = 16
TOML
# samples/s of the windows after the first (warm-up), median.
rate() { python3 -c 'import json,sys,statistics; r=[json.loads(l) for l in open(sys.argv[1]) if "\"train\"" in l][1:]; print(round(statistics.median(x["samples_per_s"] for x in r),2))' "$1/metrics.jsonl"; }
comm_of() { sed -nE 's/.*communication: ([0-9.]+)% .*/\1/p' "$1" | head -1; }
speedup() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
if [ "$DEVICE" = cpu ]; then
    echo "== data parallel: MiniLM SST-2, global batch $BATCH x $SEQ tokens, $STEPS steps; 1 rank x $THREADS thread(s) against $RANKS ranks x $THREADS"
else
    echo "== data parallel on one GPU ($DEVICE, $DTYPE): MiniLM SST-2, global batch $BATCH x $SEQ tokens, $STEPS steps; 1 rank without a group, NCCL in a group of one, Gloo with $RANKS ranks sharing the GPU"
fi
for round in $(seq "$ROUNDS"); do
    LORAPLUS_LOG=warn $BIN train --config "$work/c.toml" --no-progress --output-dir "$work/one-$round" >/dev/null
    one=$(rate "$work/one-$round")
    if [ "$DEVICE" != cpu ]; then
        RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 LOCAL_WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=$((29600 + round)) \
            LORAPLUS_LOG=info $BIN train --config "$work/c.toml" --no-progress --dist-backend nccl \
            --output-dir "$work/nccl-$round" 2>"$work/nccl-$round.err" >/dev/null \
            || { echo "round $round: NCCL run failed:"; tail -n 5 "$work/nccl-$round.err"; }
        nccl=$(rate "$work/nccl-$round" 2>/dev/null || echo nan)
        echo "round $round: 1 rank $one samples/s; NCCL group of one $nccl samples/s ($(speedup "$nccl" "$one")), all-reduce $(comm_of "$work/nccl-$round.err")% of the step time"
    fi
    LORAPLUS_LOG=info $BIN train --config "$work/c.toml" --no-progress --nproc-per-node "$RANKS" \
        --dist-backend gloo --output-dir "$work/dp-$round" 2>"$work/dp-$round.err" >/dev/null \
        || { echo "round $round: $RANKS-rank Gloo run failed:"; tail -n 5 "$work/dp-$round.err"; }
    dp=$(rate "$work/dp-$round" 2>/dev/null || echo nan)
    echo "round $round: 1 rank $one samples/s, $RANKS ranks (Gloo) $dp samples/s ($(speedup "$dp" "$one")), all-reduce $(comm_of "$work/dp-$round.err")% of rank 0's step time"
done
