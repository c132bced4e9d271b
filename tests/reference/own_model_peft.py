"""Reference for tests/own_model_peft.rs: the MLP of examples/own_model.rs rebuilt in torch,
its base weights loaded from the Rust side's base.safetensors, the adapter that loraplus saved
loaded with `PeftModel.from_pretrained`, and the outputs on the Rust side's inputs.

usage: python own_model_peft.py DIR

Reads DIR/base.safetensors, DIR/adapter/ and DIR/inputs.safetensors (x); writes
DIR/peft.safetensors (y: the PEFT model's outputs in eval mode).
"""
import os
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file


class Mlp(torch.nn.Module):
    def __init__(self, din=8, hidden=16, dout=1):
        super().__init__()
        self.fc1 = torch.nn.Linear(din, hidden)
        self.fc2 = torch.nn.Linear(hidden, hidden)
        self.out = torch.nn.Linear(hidden, dout)

    def forward(self, x):
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def main(d):
    model = Mlp()
    model.load_state_dict(load_file(os.path.join(d, "base.safetensors")), strict=True)
    peft_model = PeftModel.from_pretrained(model, os.path.join(d, "adapter"))
    peft_model.eval()
    x = load_file(os.path.join(d, "inputs.safetensors"))["x"]
    with torch.no_grad():
        y = peft_model(x)
    save_file({"y": y.contiguous()}, os.path.join(d, "peft.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1])
