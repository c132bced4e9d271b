#!/usr/bin/env bash
# The training-step benchmark on CUDA in bf16, side by side with transformers + PEFT on the
# same libtorch (issue #8): GPT-2-small- and RoBERTa-base-shaped classifiers and a stack of
# Llama-7B-shaped decoder layers, randomly initialised by benches/make_shape.py (transformers'
# own init, saved once, loaded by both sides). Per shape: a bf16 matmul peak, then ROUNDS
# alternating runs of crates/train/examples/train_step_bench.rs and benches/step_ref.py, each
# in its own process, with the device memory in use sampled by nvidia-smi while it runs.
# Reported: samples/s (median over rounds), the ratio, peak device memory over the idle
# baseline, and MFU (the matmul FLOPs each side executes / step time / the measured peak).
#
#   BIN=target/release/examples/train_step_bench bash benches/gpu_bench.sh
#   SHAPES="gpt2-small" ROUNDS=5 bash benches/gpu_bench.sh
#
# env: BIN (the Rust bench; default target/release/examples/train_step_bench), PY (python3),
#      SHAPES ("gpt2-small roberta-base llama-7b"), ROUNDS (3), LLAMA_LAYERS (4), DEVICE (cuda),
#      DTYPE (bf16), WORK (/tmp/loraplus-shapes), PEAK_SIZE (8192, the matmul side). With DEVICE=cpu DTYPE=f32 SHAPES="tiny-gpt2-small"
#      it runs on a CPU, for a check of the script itself.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
BIN=${BIN:-$here/../target/release/examples/train_step_bench}
PY=${PY:-python3}
SHAPES=${SHAPES:-"gpt2-small roberta-base llama-7b"}
ROUNDS=${ROUNDS:-3}
LLAMA_LAYERS=${LLAMA_LAYERS:-4}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bf16}
WORK=${WORK:-/tmp/loraplus-shapes}
PEAK_SIZE=${PEAK_SIZE:-8192}
export PYTHONWARNINGS=ignore TRANSFORMERS_VERBOSITY=error
mkdir -p "$WORK"
log="$WORK/gpu_bench.log"
: >"$log"
source "$here/lib.sh"
gpu_mem() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1; }

# Run "$@", print its output line plus the peak device memory (MiB) seen while it ran.
run_sampled() {
    local out="$WORK/run.out" peak=0 m
    "$@" >"$out" 2>"$WORK/run.err" &
    local pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        m=$(gpu_mem); [ -n "$m" ] && [ "$m" -gt "$peak" ] && peak=$m
        sleep 0.05
    done
    wait "$pid"; local rc=$?
    if [ $rc -ne 0 ]; then echo "FAILED (exit $rc): $*" >&2; tail -5 "$WORK/run.err" >&2; fi
    echo "$(tail -1 "$out") device_mem_mib=$peak"
}

case_for() {
    case "$1" in
        *llama-7b) echo "8 256" ;;
        tiny-*) echo "4 16" ;;
        *) echo "32 128" ;;
    esac
}

echo "device: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "$DEVICE")"
idle=$(gpu_mem); idle=${idle:-0}
echo "device memory in use before the runs: $idle MiB"
"$BIN" --peak --device "$DEVICE" --dtype "$DTYPE" --peak-size "$PEAK_SIZE" | tee -a "$log"
$PY "$here/step_ref.py" --peak --device "$DEVICE" --dtype "$DTYPE" --peak-size "$PEAK_SIZE" | tee -a "$log"
for shape in $SHAPES; do
    dir="$WORK/$shape"
    [ -f "$dir/config.json" ] || $PY "$here/make_shape.py" "$shape" "$dir" --dtype "$DTYPE" --layers "$LLAMA_LAYERS" 2>/dev/null || { echo "make_shape $shape failed"; continue; }
    read -r b s <<<"$(case_for "$shape")"
    echo "== $shape, batch $b x $s tokens, $DTYPE on $DEVICE"
    for r in $(seq "$ROUNDS"); do
        if [ $((r % 2)) -eq 1 ]; then order="rust py"; else order="py rust"; fi
        for side in $order; do
            if [ "$side" = rust ]; then
                line=$(run_sampled "$BIN" --model "$dir" --device "$DEVICE" --dtype "$DTYPE" --batch "$b" --seq "$s" --steps 10 --warmup 3)
            else
                line=$(run_sampled $PY "$here/step_ref.py" --model "$dir" --device "$DEVICE" --dtype "$DTYPE" --batch "$b" --seq "$s" --steps 10 --warmup 3)
            fi
            echo "round $r: $line"
            echo "shape=$shape $line" >>"$log"
        done
    done
done

# A quantized base (issue #14), on the Llama-7B shape: loraplus with a bf16 base against its
# int4 (group 64) and int8 bases, and PEFT on a bitsandbytes NF4 base (QLoRA), when
# bitsandbytes imports. QUANT=0 skips this part.
if [ "${QUANT:-1}" = 1 ] && [[ " $SHAPES " == *" llama-7b "* ]]; then
    dir="$WORK/llama-7b"
    read -r b s <<<"$(case_for llama-7b)"
    echo "== quantized base: llama-7b, batch $b x $s tokens, $DTYPE on $DEVICE"
    for q in int4 int8; do
        line=$(run_sampled "$BIN" --model "$dir" --device "$DEVICE" --dtype "$DTYPE" --batch "$b" --seq "$s" --steps 10 --warmup 3 --quantize "$q")
        echo "$line"; echo "shape=quant-$q $line" >>"$log"
    done
    if $PY -c 'import bitsandbytes' 2>/dev/null; then
        line=$(run_sampled $PY "$here/step_ref.py" --model "$dir" --device "$DEVICE" --dtype "$DTYPE" --batch "$b" --seq "$s" --steps 10 --warmup 3 --quantize nf4)
        echo "$line"; echo "shape=quant-nf4 $line" >>"$log"
    else
        echo "bitsandbytes does not import here: no PEFT + NF4 reference"
    fi
    printf '%-12s %12s %10s\n' base samples_s mem_MiB
    for k in "llama-7b impl=loraplus" "quant-int4 impl=loraplus" "quant-int8 impl=loraplus" "llama-7b impl=torch" "quant-nf4 impl=torch"; do
        set -- $k
        sps=$(grep "^shape=$1 $2" "$log" | field samples_per_s | median)
        mem=$(grep "^shape=$1 $2" "$log" | field device_mem_mib | median)
        printf '%-12s %12s %10s\n' "$1/${2#impl=}" "$sps" "$(awk -v m="$mem" -v i="$idle" 'BEGIN { if (m == "nan" || m == "") print "-"; else print m - i }')"
    done
fi

peak=$(grep '^impl=loraplus matmul' "$log" | field peak_gflops | sort -g | tail -1)
echo
echo "== summary: median over $ROUNDS rounds; memory = peak device memory in use minus the $idle MiB before; MFU = executed matmul FLOPs / step time / measured $DTYPE matmul peak ($peak GFLOP/s)"
printf '%-14s %12s %12s %8s %10s %10s %8s %8s\n' shape loraplus_sps peft_sps ratio mem_rust mem_peft mfu_rust mfu_peft
for shape in $SHAPES; do
    read -r b s <<<"$(case_for "$shape")"
    rs=$(grep "^shape=$shape impl=loraplus" "$log" | field samples_per_s | median)
    ps=$(grep "^shape=$shape impl=torch" "$log" | field samples_per_s | median)
    rm=$(grep "^shape=$shape impl=loraplus" "$log" | field device_mem_mib | median)
    pm=$(grep "^shape=$shape impl=torch" "$log" | field device_mem_mib | median)
    gf=$(grep "^shape=$shape impl=loraplus" "$log" | field step_gflop | head -1)
    ex=$(grep "^shape=$shape impl=loraplus" "$log" | field executed_gflop | head -1)
    awk -v c="$shape" -v b="$b" -v rs="$rs" -v ps="$ps" -v rm="$rm" -v pm="$pm" -v idle="$idle" -v gf="$gf" -v ex="$ex" -v pk="$peak" 'BEGIN {
        printf "%-14s %12.2f %12.2f %7.2fx %10.0f %10.0f %7.1f%% %7.1f%%\n", c, rs, ps, (ps > 0 ? rs / ps : 0),
            rm - idle, pm - idle, 100 * ex * rs / b / pk, 100 * gf * ps / b / pk }'
done
