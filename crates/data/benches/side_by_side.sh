#!/usr/bin/env bash
# SST-2 train (67,349 sentences, max_seq_len 128, batches of 32): the Rust pipeline
# (examples/tokenize_sst2_rate.rs) against HuggingFace in Python (tokenize_sst2_ref.py),
# run alternately ROUNDS times on the same machine; prints every run, then the median rate of
# each and the ratio Rust / Python.
#
# usage: crates/data/benches/side_by_side.sh        (env: ROUNDS=3 BATCH_SIZE=32 GLUE_DIR
#                                                    LORAPLUS_MODEL_DIR)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
rounds="${ROUNDS:-3}"
bs="${BATCH_SIZE:-32}"
export GLUE_DIR="${GLUE_DIR:-$repo/../shared/glue}"
model_dir="${LORAPLUS_MODEL_DIR:-$repo/.venv/minilm}"
py="$repo/.venv/bin/python"

cd "$repo"
cargo build --quiet --release -p loraplus-data --example tokenize_sst2_rate
bin="$repo/target/release/examples/tokenize_sst2_rate"

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
for r in $(seq 1 "$rounds"); do
    echo "round $r/$rounds"
    "$bin" "$bs" | tee -a "$log"
    "$py" "$here/tokenize_sst2_ref.py" "$model_dir" "$GLUE_DIR" "$bs" | tee -a "$log"
done

median() { # name -> median sentences_per_s of that name's lines
    grep "^$1 " "$log" | sed -E 's/.*sentences_per_s=([0-9]+).*/\1/' | sort -n |
        awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else print v[int((NR + 1) / 2)] }'
}
rust="$(median rust)"
echo
echo "median sentences/s over $rounds rounds (tokenize + pad into tensors, batch $bs, $(nproc) cores):"
printf '  %-16s %8s\n' rust "$rust"
for way in hf_batch_fast hf_batch_pad hf_transformers; do
    hf="$(median "$way")"
    ratio="$(awk -v a="$rust" -v b="$hf" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')"
    printf '  %-16s %8s   rust / %s = %s\n' "$way" "$hf" "$way" "$ratio"
done
