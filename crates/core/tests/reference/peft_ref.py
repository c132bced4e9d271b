"""Reference outputs from HuggingFace PEFT for crates/core/tests/peft_parity.rs.

usage: peft_ref.py make  OUT_DIR CONFIG_JSON   build the toy model + a PEFT adapter (random A/B),
                                               write base.safetensors, inputs.safetensors,
                                               adapter/ (PEFT save_pretrained) and
                                               expected.safetensors (logits + grads)
       peft_ref.py load  OUT_DIR ADAPTER_DIR   load ADAPTER_DIR (written by loraplus) with
                                               PeftModel.from_pretrained on base.safetensors,
                                               write loaded.safetensors (logits)
The toy model: Embedding(20, 8, padding_idx=0) -> l1 (Linear 8->16, or GPT-2 Conv1D when
fan_in_fan_out) -> LayerNorm(16) -> l2 (Linear 16->12) -> tanh -> head (Linear 12->4).
"""
import json
import os
import sys

import torch
import torch.nn as nn
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers.pytorch_utils import Conv1D


class Toy(nn.Module):
    def __init__(self, conv1d: bool):
        super().__init__()
        self.emb = nn.Embedding(20, 8, padding_idx=0)
        self.l1 = Conv1D(16, 8) if conv1d else nn.Linear(8, 16)
        self.ln = nn.LayerNorm(16)
        self.l2 = nn.Linear(16, 12)
        self.head = nn.Linear(12, 4)

    def forward(self, ids):
        return self.head(torch.tanh(self.l2(self.ln(self.l1(self.emb(ids))))))


def base_model(out_dir, conv1d):
    model = Toy(conv1d)
    path = os.path.join(out_dir, "base.safetensors")
    if os.path.exists(path):
        model.load_state_dict(load_file(path))
    else:
        torch.manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.5)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return model


def inputs(out_dir):
    path = os.path.join(out_dir, "inputs.safetensors")
    if not os.path.exists(path):
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, 20, (3, 5), generator=g)
        ids[0, 0] = 0  # the padding index takes part too
        weights = torch.randn(3, 5, 4, generator=g)
        save_file({"ids": ids, "loss_weights": weights}, path)
    return load_file(path)


def peft_key(name):
    """Trainable parameter name -> the key PEFT writes in adapter_model.safetensors."""
    return name.replace("modules_to_save.default.", "").replace(".default", "")


def make(out_dir, cfg):
    conv1d = cfg.get("fan_in_fan_out", False)
    # PEFT rewrites fan_in_fan_out to false in the saved config once it meets an nn.Linear, so
    # the model's layout is remembered here for `load`.
    with open(os.path.join(out_dir, "conv1d.json"), "w") as f:
        json.dump(conv1d, f)
    model = base_model(out_dir, conv1d)
    data = inputs(out_dir)
    torch.manual_seed(2)
    peft_model = get_peft_model(model, LoraConfig(**cfg))
    peft_model.eval()
    logits = peft_model(data["ids"])
    loss = (logits * data["loss_weights"]).sum()
    loss.backward()
    expected = {"logits": logits.detach()}
    for name, p in peft_model.named_parameters():
        if p.requires_grad:
            expected["grad." + peft_key(name)] = p.grad.detach().clone()
    save_file(expected, os.path.join(out_dir, "expected.safetensors"))
    peft_model.save_pretrained(os.path.join(out_dir, "adapter"))


def load(out_dir, adapter_dir):
    conv1d = json.load(open(os.path.join(out_dir, "conv1d.json")))
    model = base_model(out_dir, conv1d)
    data = inputs(out_dir)
    peft_model = PeftModel.from_pretrained(model, adapter_dir)
    peft_model.eval()
    with torch.no_grad():
        logits = peft_model(data["ids"])
    save_file({"logits": logits}, os.path.join(out_dir, "loaded.safetensors"))


if __name__ == "__main__":
    torch.set_num_threads(1)
    mode, out_dir, arg = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "make":
        make(out_dir, json.loads(arg))
    elif mode == "load":
        load(out_dir, arg)
    else:
        sys.exit(f"unknown mode {mode}")
