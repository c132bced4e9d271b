#!/usr/bin/env bash
# A quantized frozen base end to end (issue #14): the `make train` recipe (MiniLM + LoRA+ on
# SST-2, data/presets/minilm-sst2.toml) with an f32 base, an int8 base and an int4 (group 64)
# base, one after the other on this machine. Reported per run: dev accuracy at the end (full
# dev set, 872 sentences), the base's bytes (what `loraplus train` prints), training time and
# peak RSS; and the accuracy differences to f32 (the issue asks int8 within 1 point, int4
# within 3).
#
#   bash benches/quantized_sst2.sh                  # the three runs, about 30 minutes on 2 cores
#   SCHEMES="int8" bash benches/quantized_sst2.sh   # f32 and int8 only
#
# env: SCHEMES ("int8 int4"), MAX_STEPS (the preset's 800), OUT (a temporary folder).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
SCHEMES=${SCHEMES:-"int8 int4"}
cargo build --release -q -p loraplus-train --bin loraplus
BIN=target/release/loraplus
OUT=${OUT:-$(mktemp -d -t loraplus-quant.XXXXXX)}
mkdir -p "$OUT"
steps=()
[ -n "${MAX_STEPS:-}" ] && steps=(--max-steps "$MAX_STEPS")
run() {  # run NAME [flags...]
    local name=$1; shift
    /usr/bin/time -f "peak_rss_kib=%M" "$BIN" train --config data/presets/minilm-sst2.toml \
        --no-progress --overwrite-output-dir --output-dir "$OUT/$name" "${steps[@]}" "$@" \
        >"$OUT/$name.out" 2>"$OUT/$name.err"
    local acc secs rss base
    acc=$(sed -nE 's/^dev: .*accuracy ([0-9.]+).*/\1/p' "$OUT/$name.out" | tail -1)
    secs=$(sed -nE 's/^steps: .*, ([0-9.]+) s$/\1/p' "$OUT/$name.out")
    rss=$(sed -nE 's/^peak_rss_kib=([0-9]+)/\1/p' "$OUT/$name.err")
    base=$(sed -nE 's/^base quantized [^:]*: (.*)/\1/p' "$OUT/$name.err")
    echo "$name: dev accuracy $acc, train ${secs} s, peak RSS $((rss / 1024)) MiB${base:+, base $base}"
    eval "acc_$name=$acc"
}
echo "== quantized base: make-train recipe (MiniLM SST-2), outputs in $OUT"
run f32
for s in $SCHEMES; do
    case $s in
        int8) run int8 --quantize int8 ;;
        int4) run int4 --quantize int4 --quant-group-size 64 ;;
        *) echo "unknown scheme $s" >&2; exit 2 ;;
    esac
done
for s in $SCHEMES; do
    v="acc_$s"
    awk -v a="${!v}" -v b="$acc_f32" -v s="$s" \
        'BEGIN { printf "%s - f32: %+.2f points\n", s, 100 * (a - b) }'
done
