#!/usr/bin/env bash
# A quantized frozen base, side by side (issue #14): the LoRA+ training step of a
# Llama-7B-shaped stack (hidden 4096, intermediate 11008, 32 heads, vocab 32000; LAYERS layers,
# written by benches/make_shape.py) with an f32, bf16, int8 and int4 (group 64) base, on the CPU,
# each in its own process (so each peak RSS is its own). Reported per base: the base's bytes as
# stored and in full precision (all of it, and its linear weights alone), the median step time,
# and the process's resident memory after loading and at its peak (VmHWM).
#
#   bash benches/quantized.sh                     # 2 layers, batch 1 x 64 tokens, 3 steps
#   LAYERS=4 SEQ=128 bash benches/quantized.sh
#
# env: LAYERS (2), BATCH (1), SEQ (64), STEPS (3), THREADS (nproc), BASES ("f32 bf16 int8 int4"),
#      SHAPE_DIR (where the checkpoint is written once; default .cache/llama-7b-<LAYERS>l).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
LAYERS=${LAYERS:-2}
BATCH=${BATCH:-1}
SEQ=${SEQ:-64}
STEPS=${STEPS:-3}
THREADS=${THREADS:-$(nproc)}
BASES=${BASES:-"f32 bf16 int8 int4"}
SHAPE_DIR=${SHAPE_DIR:-.cache/llama-7b-${LAYERS}l}
source "$repo/benches/lib.sh"
if [ ! -f "$SHAPE_DIR/model.safetensors" ]; then
    echo "writing the llama-7b shape ($LAYERS layers) to $SHAPE_DIR"
    .venv/bin/python benches/make_shape.py llama-7b "$SHAPE_DIR" --layers "$LAYERS"
fi
cargo build --release -q -p loraplus-train --example train_step_bench
BIN=target/release/examples/train_step_bench
echo "== quantized base: Llama-7B shape, $LAYERS layers, batch $BATCH x $SEQ tokens, $THREADS threads, CPU; load average $(cut -d' ' -f1-3 /proc/loadavg)"
printf "%-5s %12s %12s %14s %14s %10s %12s %12s\n" base base_MiB vs_f32 linears_MiB linears_vs_f32 step_ms rss_load_MiB peak_rss_MiB
f32_linears=""
for base in $BASES; do
    case $base in
        f32) flags=(--dtype f32) ;;
        bf16) flags=(--dtype bf16) ;;
        int8) flags=(--dtype f32 --quantize int8) ;;
        int4) flags=(--dtype f32 --quantize int4 --quant-group-size 64) ;;
        *) echo "unknown base $base" >&2; exit 2 ;;
    esac
    line=$($BIN --model "$SHAPE_DIR" --batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --warmup 1 \
        --threads "$THREADS" "${flags[@]}")
    stored=$(echo "$line" | field base_mib); full=$(echo "$line" | field base_full_mib)
    lin=$(echo "$line" | field linear_weights_mib); lin_full=$(echo "$line" | field linear_weights_full_mib)
    # Ratios against the f32 base (bf16's "full" is its own dtype, so compare with f32's).
    [ "$base" = f32 ] && { f32_base=$stored; f32_linears=$lin; }
    printf "%-5s %12s %12s %14s %14s %10s %12s %12s\n" "$base" "$stored" \
        "$(awk -v a="$stored" -v b="${f32_base:-$full}" 'BEGIN { printf "%.3fx", a / b }')" "$lin" \
        "$(awk -v a="$lin" -v b="${f32_linears:-$lin_full}" 'BEGIN { printf "%.3fx", a / b }')" \
        "$(echo "$line" | field median_ms)" "$(echo "$line" | field rss_loaded_mib)" \
        "$(echo "$line" | field peak_rss_mib)"
done
