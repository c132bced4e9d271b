#!/usr/bin/env bash
# `make gpu-check`: build here what the GPU machine runs (it has no Rust toolchain) into
# gpu-check/ (git-ignored, well under the 64 MiB a device call carries), with gpu-check/run.sh.
# On the GPU machine, from the repository root:  bash gpu-check/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=gpu-check
BNB_VERSION=${BNB_VERSION:-0.50.2}
rm -rf "$out" && mkdir -p "$out/bin"

cargo build --release -p loraplus-train --bin loraplus --example train_step_bench --example sft_step_bench
cp target/release/loraplus target/release/examples/train_step_bench target/release/examples/sft_step_bench "$out/bin/"
# The test executables that hold CUDA tests (they skip, saying so, where no GPU is present).
cargo test --release --no-run --message-format=json -p loraplus-core -p loraplus-optim -p loraplus-dist 2>/dev/null \
  | python3 -c '
import json, sys
wanted = {"adapters", "optimizer", "quantized_base", "collectives"}
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in wanted:
        print(m["target"]["name"], m["executable"])' \
  | while read -r name exe; do cp "$exe" "$out/bin/test-$name"; done
strip "$out"/bin/* 2>/dev/null || true
# The default model's config and tokenizer (its 90 MB of weights would not fit the transfer:
# run.sh draws MiniLM-shaped random weights there with transformers), and a slice of SST-2.
mkdir -p "$out/minilm" "$out/glue/SST-2"
cp -L .venv/minilm/{config.json,tokenizer.json} "$out/minilm/"
head -n 2001 "${GLUE_DIR:-../shared/glue}/SST-2/train.tsv" > "$out/glue/SST-2/train.tsv"
cp "${GLUE_DIR:-../shared/glue}/SST-2/dev.tsv" "$out/glue/SST-2/dev.tsv"
# PEFT (and accelerate, which it imports) as wheels, pure Python, in case the GPU machine's
# python3 has torch and transformers but not these: run.sh installs them into a folder of its own.
mkdir -p "$out/wheels"
.venv/bin/pip download -q --no-deps -d "$out/wheels" \
  "$(grep -i '^peft==' requirements.txt)" "accelerate==$(.venv/bin/python -c 'import accelerate; print(accelerate.__version__)')"
# bitsandbytes for quant's PEFT + NF4 reference (QLoRA): the GPU machine cannot reach PyPI, so
# it travels installed, with only its CPU and CUDA 13 kernels (the torch there is CUDA 13): the
# wheel's other CUDA / ROCm / XPU builds are 115 MB and would not fit the transfer.
.venv/bin/pip install -q --no-deps --target "$out/pylib" "bitsandbytes==$BNB_VERSION"
find "$out/pylib/bitsandbytes" -name 'libbitsandbytes_*.so' ! -name '*_cpu.so' ! -name '*_cuda13*.so' -delete

cat > "$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root:  bash gpu-check/run.sh
# Parts, in this order (PARTS picks and orders them; default: the open issues' GPU parts, then sft):
#   tests  every CUDA test, LORAPLUS_REQUIRE_CUDA=1 (a missing GPU fails them)    (#13, #14)
#   dp     data parallel on the GPU: NCCL group of one, Gloo 2 ranks on one GPU (#13)
#   quant  Llama-7B-shaped layers: bf16 vs int8 vs int4 base, PEFT bf16 and NF4 (#14)
#   sft    bf16 SFT step, Llama-7B-shaped layers, padded and packed, vs PEFT    (#12)
#   train  a short bf16 CUDA training run (MiniLM shape, random weights)
#   bench  benches/gpu_bench.sh on GPT-2-small, RoBERTa-base and Llama-7B shapes
# DEADLINE (seconds, default 540) bounds the whole run, under one device call's 600 s: each part
# runs under min(its own cap, the time left), and a part with under 30 s left is skipped, saying
# so. Every part's log is written to $OUT (the device tool's return folder) or gpu-check/out.
set -uo pipefail
cd "$(dirname "$0")"
t0=$(date +%s)
DEADLINE=${DEADLINE:-540}
PARTS=${PARTS:-"tests dp quant sft"}
logs=${OUT:-$PWD/out}
mkdir -p "$logs"
export LD_LIBRARY_PATH="$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LORAPLUS_MODEL_DIR="$PWD/minilm" GLUE_DIR="$PWD/glue" LORAPLUS_CACHE_DIR="/tmp/loraplus-cache"
export LORAPLUS_REQUIRE_CUDA=1
status=0

# part NAME CAP CMD...: run CMD with a timeout of min(CAP, time left), its output to the
# terminal and to $logs/NAME.log; a failure or a timeout marks the whole run failed.
part() {
    local name=$1 cap=$2; shift 2
    local left=$((DEADLINE - ($(date +%s) - t0)))
    [ "$cap" -gt "$left" ] && cap=$left
    if [ "$cap" -lt 30 ]; then
        echo "== $name: SKIPPED, ${left}s left of DEADLINE=${DEADLINE}s"; status=1; return
    fi
    echo "== $name (at most ${cap}s; $(( $(date +%s) - t0 ))s elapsed)"
    timeout "$cap" "$@" 2>&1 | tee "$logs/$name.log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 124 ] && echo "== $name: TIMED OUT after ${cap}s"
    [ "$rc" -ne 0 ] && { echo "== $name: exit $rc"; status=1; }
    return 0
}

python3 -c '
import sys, torch
from transformers import BertConfig, BertModel
torch.manual_seed(0)
BertModel(BertConfig.from_pretrained(sys.argv[1])).save_pretrained(sys.argv[1], safe_serialization=True)
' "$PWD/minilm"
bin/loraplus info | tee "$logs/info.log"
if ! python3 -c 'import peft' 2>/dev/null; then
  python3 -m pip install -q --no-deps --target /tmp/loraplus-pylib wheels/*.whl
fi
export PYTHONPATH="/tmp/loraplus-pylib${PYTHONPATH:+:$PYTHONPATH}"
# bitsandbytes (quant's PEFT + NF4 reference): the machine's own if it has one, else the copy
# carried in pylib/ (CPU and CUDA 13 kernels only).
if ! python3 -c 'import bitsandbytes' 2>/dev/null; then
  export PYTHONPATH="$PYTHONPATH:$PWD/pylib"
fi
python3 -c 'import bitsandbytes as b, torch; print("bitsandbytes", b.__version__, "torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1 | tail -1

cuda_tests() {
    local rc=0 t
    for t in bin/test-*; do
        echo "-- $t"
        "$t" --test-threads=1 --nocapture cuda || rc=1
        "$t" --test-threads=1 --nocapture every_device || rc=1
    done
    return $rc
}
export -f cuda_tests

for p in $PARTS; do
    case $p in
        tests) part tests 120 bash -c cuda_tests ;;
        sft) part sft 200 env BIN="$PWD/bin/sft_step_bench" PY=python3 DEVICE=cuda DTYPE=bf16 \
                 SHAPE=llama-7b LAYERS=2 DOCS=64 SEQ=2048 BATCH=8 ROUNDS=2 bash ../benches/sft.sh ;;
        dp) part dp 150 env BIN="$PWD/bin/loraplus" DEVICE=cuda DTYPE=bf16 STEPS=40 ROUNDS=1 bash ../benches/dp.sh ;;
        quant) part quant 240 env BIN="$PWD/bin/train_step_bench" SHAPES=llama-7b ROUNDS=1 LLAMA_LAYERS=2 \
                   bash ../benches/gpu_bench.sh ;;
        train) part train 90 bin/loraplus train --task sst2 --device cuda --dtype bf16 --max-steps 60 \
                   --batch-size 32 --eval-every 30 --output-dir /tmp/loraplus-gpu-run --overwrite-output-dir --no-progress ;;
        bench) part bench 300 env BIN="$PWD/bin/train_step_bench" ROUNDS=2 LLAMA_LAYERS=2 QUANT=0 \
                   bash ../benches/gpu_bench.sh ;;
        *) echo "unknown part '$p' (known: tests dp quant sft train bench)"; status=1 ;;
    esac
done
echo "== done in $(( $(date +%s) - t0 ))s, status $status; logs in $logs"
exit $status
RUN
chmod +x "$out/run.sh"
du -sh "$out"
echo "prepared $out/: run it on the GPU machine with: bash gpu-check/run.sh"
