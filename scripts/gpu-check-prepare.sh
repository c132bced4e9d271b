#!/usr/bin/env bash
# `make gpu-check`: build here what the GPU machine runs (it has no Rust toolchain) into
# gpu-check/ (git-ignored, well under the 64 MiB a device call carries), with gpu-check/run.sh.
# On the GPU machine, from the repository root:  bash gpu-check/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=gpu-check
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

cat > "$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs on the GPU machine: CUDA tests, a bf16 CUDA training run with its figures, then the
# bf16 step benchmark against transformers + PEFT (GPT-2-small, RoBERTa-base, Llama-7B layers).
set -uo pipefail
cd "$(dirname "$0")"
export LD_LIBRARY_PATH="$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LORAPLUS_MODEL_DIR="$PWD/minilm" GLUE_DIR="$PWD/glue" LORAPLUS_CACHE_DIR="/tmp/loraplus-cache"
# A CUDA test that finds no GPU fails here instead of skipping.
export LORAPLUS_REQUIRE_CUDA=1
python3 -c '
import sys, torch
from transformers import BertConfig, BertModel
torch.manual_seed(0)
BertModel(BertConfig.from_pretrained(sys.argv[1])).save_pretrained(sys.argv[1], safe_serialization=True)
' "$PWD/minilm"
bin/loraplus info
status=0
for t in bin/test-*; do
  echo "== $t (CUDA tests)"
  "$t" --test-threads=1 --nocapture cuda || status=1
  "$t" --test-threads=1 --nocapture every_device || status=1
done
echo "== CUDA training: MiniLM-shaped BERT (random weights) + LoRA+ on 2,000 SST-2 rows, bf16"
bin/loraplus train --task sst2 --device cuda --dtype bf16 --max-steps 60 --batch-size 32 \
  --eval-every 30 --output-dir /tmp/loraplus-gpu-run --no-progress || status=1
echo "== CUDA bf16 step benchmark against transformers + PEFT (benches/gpu_bench.sh)"
if ! python3 -c 'import peft' 2>/dev/null; then
  python3 -m pip install -q --no-deps --target /tmp/loraplus-pylib wheels/*.whl \
    && export PYTHONPATH="/tmp/loraplus-pylib${PYTHONPATH:+:$PYTHONPATH}"
fi
# The quantized-base part of gpu_bench.sh compares with PEFT on a bitsandbytes NF4 base when
# bitsandbytes imports (its wheel is too large to carry: installed only where pip reaches it).
python3 -c 'import bitsandbytes' 2>/dev/null \
  || timeout 60 python3 -m pip install -q --target /tmp/loraplus-pylib bitsandbytes 2>/dev/null \
  || echo "bitsandbytes not installable here"
export PYTHONPATH="/tmp/loraplus-pylib${PYTHONPATH:+:$PYTHONPATH}"
BIN="$PWD/bin/train_step_bench" ROUNDS=${ROUNDS:-2} LLAMA_LAYERS=${LLAMA_LAYERS:-2} \
  timeout 480 bash ../benches/gpu_bench.sh || status=1
echo "== Data parallel on the GPU, bf16 (benches/dp.sh): NCCL in a group of one, Gloo with 2 ranks sharing the GPU"
BIN="$PWD/bin/loraplus" DEVICE=cuda DTYPE=bf16 STEPS=40 ROUNDS=1 timeout 150 bash ../benches/dp.sh || status=1
echo "== CUDA bf16 SFT step (Llama-7B-shaped layers, padded and packed) against transformers + PEFT (benches/sft.sh)"
BIN="$PWD/bin/sft_step_bench" PY=python3 DEVICE=cuda DTYPE=bf16 SHAPE=llama-7b LAYERS=2 DOCS=64 \
  SEQ=2048 BATCH=8 ROUNDS=1 timeout 300 bash ../benches/sft.sh || status=1
exit $status
RUN
chmod +x "$out/run.sh"
du -sh "$out"
echo "prepared $out/: run it on the GPU machine with: bash gpu-check/run.sh"
