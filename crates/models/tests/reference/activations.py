"""Reference values for crates/models/tests/activations.rs: transformers' ACT2FN.

usage: python activations.py OUT_DIR

Writes OUT_DIR/activations.safetensors with `x.<dtype>` (values from -12 to 12, so that
gelu_10's clipping and relu6's ceiling act) and `<name>.<dtype>` = ACT2FN[name](x) for every
name loraplus accepts, in float32, bfloat16 and float16.
"""
import os
import sys

import torch
from safetensors.torch import save_file
from transformers.activations import ACT2FN

NAMES = ["gelu", "gelu_10", "gelu_accurate", "gelu_fast", "gelu_new", "gelu_python", "gelu_pytorch_tanh",
         "hardswish", "leaky_relu", "linear", "mish", "quick_gelu", "relu", "relu2", "relu6", "sigmoid",
         "silu", "swish", "tanh"]


def main(out):
    torch.manual_seed(0)
    base = torch.cat([torch.linspace(-12, 12, 241), torch.randn(256) * 3])
    tensors = {}
    for dtype, key in ((torch.float32, "f32"), (torch.bfloat16, "bf16"), (torch.float16, "f16")):
        x = base.to(dtype)
        tensors[f"x.{key}"] = x
        for name in NAMES:
            with torch.no_grad():
                tensors[f"{name}.{key}"] = ACT2FN[name](x).clone()
    os.makedirs(out, exist_ok=True)
    save_file(tensors, os.path.join(out, "activations.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1])
