"""Reference for crates/train/tests/quantized.rs: logits of transformers (+ PEFT) on SST-2 dev
rows, to compare row by row with `loraplus eval --predictions`.

usage: quantized_peft_ref.py MODEL_DIR ADAPTER_DIR|- GLUE_DIR N
MODEL_DIR: a full-precision model (the base, or a model `loraplus merge` wrote). With an
ADAPTER_DIR, the adapter (trained by loraplus on a quantized base) is loaded with PEFT's
PeftModel.from_pretrained onto the full-precision base. Prints {"predictions", "logits"} as JSON
for the first N dev sentences (max_length 128).
"""
import csv
import json
import os
import sys

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

model_dir, adapter_dir, glue_dir, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(1)
model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
if adapter_dir != "-":
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, adapter_dir)
model.eval()
rows = list(csv.reader(open(os.path.join(glue_dir, "SST-2", "dev.tsv")), delimiter="\t", quoting=csv.QUOTE_NONE))[1 : n + 1]
tok = AutoTokenizer.from_pretrained(model_dir)
enc = tok([r[0] for r in rows], truncation=True, max_length=128, padding=True, return_tensors="pt")
with torch.no_grad():
    out = model(**enc).logits
print(json.dumps({"predictions": out.argmax(-1).tolist(), "logits": out.tolist()}))
