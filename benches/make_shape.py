"""Write a randomly initialised sequence-classification checkpoint of a standard shape, for the
step benchmarks (`benches/gpu_bench.sh`): `config.json` + `model.safetensors`, drawn by
transformers' own initialisation, so that loraplus and transformers + PEFT load the same
weights. Shapes (hidden / layers / heads / intermediate):

  roberta-base   768 / 12 / 12 / 3072  (RobertaForSequenceClassification)
  gpt2-small     768 / 12 / 12 / 3072  (GPT2ForSequenceClassification, pad = eos 50256)
  llama-7b       4096 / --layers (default 2) / 32 / 11008, vocab 32000 (LlamaForSequenceClassification)
  minilm         384 / 6 / 12 / 1536   (BertForSequenceClassification, MiniLM-L6's shape)
  tiny-*         the same families at hidden 64, 2 layers: for a quick check on the CPU

usage: python benches/make_shape.py SHAPE OUT_DIR [--layers N] [--dtype f32|bf16]
"""
import argparse

import torch
from transformers import (BertConfig, BertForSequenceClassification, GPT2Config,
                          GPT2ForSequenceClassification, LlamaConfig, LlamaForSequenceClassification,
                          RobertaConfig, RobertaForSequenceClassification)


def build(shape, layers):
    tiny = shape.startswith("tiny-")
    family = shape.removeprefix("tiny-")
    h, heads, inter, n = (64, 4, 256, 2) if tiny else (None, None, None, None)
    if family == "roberta-base":
        c = RobertaConfig(hidden_size=h or 768, num_hidden_layers=n or 12, num_attention_heads=heads or 12,
                          intermediate_size=inter or 3072, max_position_embeddings=514, type_vocab_size=1,
                          num_labels=2)
        return RobertaForSequenceClassification(c)
    if family == "gpt2-small":
        c = GPT2Config(n_embd=h or 768, n_layer=n or 12, n_head=heads or 12, pad_token_id=50256, num_labels=2)
        return GPT2ForSequenceClassification(c)
    if family == "llama-7b":
        c = LlamaConfig(hidden_size=h or 4096, num_hidden_layers=n or layers, num_attention_heads=heads or 32,
                        num_key_value_heads=heads or 32, intermediate_size=inter or 11008, vocab_size=32000,
                        pad_token_id=0, num_labels=2)
        return LlamaForSequenceClassification(c)
    if family == "minilm":
        c = BertConfig(hidden_size=h or 384, num_hidden_layers=n or 6, num_attention_heads=heads or 12,
                       intermediate_size=inter or 1536, num_labels=2)
        return BertForSequenceClassification(c)
    raise SystemExit(f"unknown shape {shape!r}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("shape")
    p.add_argument("out")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    a = p.parse_args()
    torch.manual_seed(0)
    model = build(a.shape, a.layers)
    if a.dtype == "bf16":
        model = model.to(torch.bfloat16)
    model.save_pretrained(a.out, safe_serialization=True)
    n = sum(t.numel() for t in model.parameters())
    print(f"{a.shape}: {n / 1e6:.1f}M parameters -> {a.out}")


if __name__ == "__main__":
    main()
