#!/usr/bin/env bash
# LoRA+ AdamW step time, Rust (loraplus-optim) against torch.optim.AdamW (foreach and fused),
# on identical tensor shapes and thread counts, CPU. The implementations run alternately,
# ROUNDS times each, so drift in machine load hits all of them alike; the median of each
# implementation's per-round medians is reported, with the ratio Rust / fused.
#
#   crates/optim/benches/side_by_side.sh            # both sets, 2 threads, 3 rounds
#   THREADS=4 ROUNDS=5 SETS=llama7b crates/optim/benches/side_by_side.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
SETS=${SETS:-"minilm llama7b"}
PY=.venv/bin/python
cargo build --release -q -p loraplus-optim --example step_bench
BIN=target/release/examples/step_bench

# Steps timed per run (after a few warmup steps): torch's foreach path is slow on the CPU
# (about a second a step on the 40M set), so it gets fewer.
steps_for() {
  case "$1:$2" in
    minilm:*) echo 500 ;;
    llama7b:foreach) echo 5 ;;
    *) echo 20 ;;
  esac
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

printf "%-8s %12s %14s %12s %14s %14s\n" set rust_ms torch_foreach torch_fused rust/fused rust/foreach
for set in $SETS; do
  rust=(); foreach=(); fused=()
  for _ in $(seq "$ROUNDS"); do
    rust+=("$($BIN --set "$set" --steps "$(steps_for "$set" rust)" --warmup 3 --threads "$THREADS" | awk '{print $4}')")
    foreach+=("$($PY crates/optim/benches/torch_step.py --set "$set" --impl foreach --steps "$(steps_for "$set" foreach)" --warmup 2 --threads "$THREADS" | awk '{print $4}')")
    fused+=("$($PY crates/optim/benches/torch_step.py --set "$set" --impl fused --steps "$(steps_for "$set" fused)" --warmup 3 --threads "$THREADS" | awk '{print $4}')")
  done
  r=$(printf "%s\n" "${rust[@]}" | median)
  fe=$(printf "%s\n" "${foreach[@]}" | median)
  fu=$(printf "%s\n" "${fused[@]}" | median)
  awk -v s="$set" -v r="$r" -v fe="$fe" -v fu="$fu" \
    'BEGIN { printf "%-8s %12.4f %14.4f %12.4f %13.3fx %13.3fx\n", s, r, fe, fu, r / fu, r / fe }'
done
