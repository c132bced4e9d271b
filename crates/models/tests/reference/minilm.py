"""Reference for crates/models/tests/minilm.rs: MiniLM (BertModel weights, no classifier) as
BertForSequenceClassification in transformers, on real SST-2 dev sentences.

usage: python minilm.py MODEL_DIR SST2_DEV_TSV N OUT_DIR

Writes OUT_DIR/inputs.safetensors (input_ids, attention_mask, token_type_ids from the model's
own tokenizer, padded to the longest of the first N sentences) and OUT_DIR/reference.safetensors
(hidden = last_hidden_state, logits, and classifier.weight / classifier.bias: the head
transformers initialised, which the Rust test copies into its model before comparing).
"""
import csv
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, BertForSequenceClassification
from transformers.utils import logging


def main(model_dir, tsv, n, out):
    logging.set_verbosity_error()
    with open(tsv, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    sentences = [r["sentence"] for r in rows[: int(n)]]
    tok = AutoTokenizer.from_pretrained(model_dir)
    enc = tok(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    model.eval()
    with torch.no_grad():
        hidden = model.bert(**enc).last_hidden_state
        logits = model(**enc).logits
    os.makedirs(out, exist_ok=True)
    save_file({k: v.contiguous() for k, v in enc.items()}, os.path.join(out, "inputs.safetensors"))
    save_file({
        "hidden": hidden.contiguous(),
        "logits": logits.contiguous(),
        "classifier.weight": model.classifier.weight.detach().contiguous(),
        "classifier.bias": model.classifier.bias.detach().contiguous(),
    }, os.path.join(out, "reference.safetensors"))


if __name__ == "__main__":
    main(*sys.argv[1:])
