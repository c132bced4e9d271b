"""Reference for crates/train/tests/merged_exports.rs: logits of merged sequence classifiers as
transformers loads them.

usage: merged_seq_cls_ref.py MERGED_DIR INPUTS.safetensors OUT.safetensors [MERGED_DIR INPUTS OUT ...]
  MERGED_DIR: a folder `loraplus merge` wrote, loaded with AutoModelForSequenceClassification;
  INPUTS: input_ids, attention_mask (and token_type_ids when present);
  OUT: logits (eval mode, f32) and nothing else.
Prints the class transformers instantiated for each folder, one line each, for the test to check.
"""
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification


def main(merged, inputs, out):
    x = load_file(inputs)
    model = AutoModelForSequenceClassification.from_pretrained(merged, torch_dtype=torch.float32).eval()
    kw = dict(input_ids=x["input_ids"], attention_mask=x["attention_mask"])
    if "token_type_ids" in x:
        kw["token_type_ids"] = x["token_type_ids"]
    with torch.no_grad():
        logits = model(**kw).logits
    save_file({"logits": logits.contiguous()}, out)
    print(type(model).__name__)


if __name__ == "__main__":
    args = sys.argv[1:]
    assert args and len(args) % 3 == 0, __doc__
    for i in range(0, len(args), 3):
        main(*args[i:i + 3])
