"""Reference for crates/train/tests/cli.rs: a PEFT-written adapter on MiniLM for SST-2, and the
predictions and logits PEFT gets with it, row by row.

usage: peft_eval_ref.py MODEL_DIR GLUE_DIR OUT_DIR N
Builds BertForSequenceClassification from MODEL_DIR (classifier/pooler seeded), wraps it with
PEFT LoRA (query, value; random A and B so the adapter matters; modules_to_save classifier and
pooler.dense), saves the adapter to OUT_DIR/adapter, and writes OUT_DIR/expected.json with the
predictions, logits and accuracy on the first N SST-2 dev sentences (max_length 128).
"""
import csv
import json
import os
import sys

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoTokenizer, BertForSequenceClassification

model_dir, glue_dir, out_dir, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.manual_seed(0)
torch.set_num_threads(2)
model = BertForSequenceClassification.from_pretrained(model_dir, num_labels=2)
cfg = LoraConfig(
    r=4,
    lora_alpha=8,
    target_modules=["query", "value"],
    modules_to_save=["classifier", "pooler.dense"],
    init_lora_weights=False,
)
peft_model = get_peft_model(model, cfg)
with torch.no_grad():
    for name, p in peft_model.named_parameters():
        if "classifier.modules_to_save" in name:
            p.normal_(0.0, 0.5)
peft_model.save_pretrained(os.path.join(out_dir, "adapter"))
peft_model.eval()

rows = list(csv.reader(open(os.path.join(glue_dir, "SST-2", "dev.tsv")), delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
rows = rows[:n]
tok = AutoTokenizer.from_pretrained(model_dir)
preds, logits = [], []
with torch.no_grad():
    for i in range(0, len(rows), 64):
        chunk = rows[i : i + 64]
        enc = tok([r[0] for r in chunk], truncation=True, max_length=128, padding=True, return_tensors="pt")
        out = peft_model(**enc).logits
        preds += out.argmax(-1).tolist()
        logits += out.tolist()
labels = [int(r[1]) for r in rows]
acc = sum(int(p == l) for p, l in zip(preds, labels)) / len(rows)
json.dump({"predictions": preds, "logits": logits, "accuracy": acc}, open(os.path.join(out_dir, "expected.json"), "w"))
