"""Time a LoRA training step (forward + backward) of MiniLM in PyTorch + PEFT, the counterpart
of `examples/step_time.rs`.

usage: python step_time.py MODEL_DIR [batch] [seq_len] [steps] [threads]
"""
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import BertForSequenceClassification
from transformers.utils import logging


def main(model_dir, batch=32, seq=64, steps=20, threads=None):
    batch, seq, steps = int(batch), int(seq), int(steps)
    if threads is not None:
        torch.set_num_threads(int(threads))
    logging.set_verbosity_error()
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(model_dir, num_labels=2, attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"],
                                             modules_to_save=["classifier", "pooler.dense"]))
    model.train()
    ids = torch.randint(1000, 20000, (batch, seq))
    lengths = torch.randint(seq // 2, seq + 1, (batch, 1))
    mask = (torch.arange(seq).unsqueeze(0) < lengths).long()
    ids = ids * mask
    labels = torch.randint(0, 2, (batch,))
    times = []
    for i in range(steps + 3):
        t0 = time.perf_counter()
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        model.zero_grad(set_to_none=False)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    times.sort()
    print(f"PyTorch+PEFT MiniLM LoRA step (batch {batch}, seq {seq}, {torch.get_num_threads()} threads): "
          f"median {times[len(times) // 2] * 1e3:.1f} ms, min {times[0] * 1e3:.1f} ms")


if __name__ == "__main__":
    main(*sys.argv[1:])
