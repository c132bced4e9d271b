"""Reference values for crates/models/tests/rope_scaling.rs, made by transformers.

usage: python rope.py OUT_DIR

For each RoPE type (linear, dynamic, llama3, yarn, longrope) writes under OUT_DIR/<type>/ a tiny random
LlamaForCausalLM (grouped-query attention) whose config carries that `rope_parameters`, with
lengths chosen so the scaling acts on these short sequences (dynamic: max_position_embeddings 6,
below the 9 positions; llama3 and yarn: original_max_position_embeddings 64 / 16 against
wavelengths of 6 to 6000; llama3 with max_position_embeddings 128; longrope: original_max_position_embeddings 6, so the
9-position batch and the later generation steps use the long factors, the prompts the short
ones, and the default attention factor from max_position_embeddings 64), and:
  inputs.safetensors    input_ids, attention_mask (right padding)
  reference.safetensors logits of the model, eval mode
  expected.json         prompts and the new tokens of greedy generate (KV cache)
Cases whose config.json is edited after saving, read as transformers reads it (the
reference comes from the model reloaded from the edited folder):
  llama3_top_level, yarn_top_level: a top-level original_max_position_embeddings (16), which
    transformers' standardize_rope_params puts over rope_parameters' own (32) or in its place;
  scaling_over_parameters: rope_parameters (default, base 100) and the older rope_scaling (yarn,
    factor 4) both, and a top-level original_max_position_embeddings (16): transformers takes
    rope_scaling whole (`rope_scaling or rope_parameters`: base 10000, not 100), then the
    top-level field;
  gemma_legacy_gelu: a Gemma with the official releases' hidden_act "gelu", which GemmaConfig
    reads as the tanh approximation (weights scaled up so the two GELUs differ past 1e-4);
  tied_stray_lm_head: tie_word_embeddings true, but the file holds an lm_head.weight of its
    own, which transformers 5 uses, untied.
No download: configs are built here, weights drawn from torch.manual_seed.
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, GemmaConfig, GemmaForCausalLM, LlamaConfig, LlamaForCausalLM

VOCAB = 61
PAD = 0
MAX_NEW = 6

CASES = {
    "linear": dict(rope_type="linear", factor=2.0),
    "dynamic": dict(rope_type="dynamic", factor=2.0),
    "llama3": dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=64),
    "yarn": dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=16),
    "longrope": dict(rope_type="longrope", short_factor=[1.0, 1.25, 1.5, 2.0],
                     long_factor=[1.5, 3.0, 7.0, 16.0], original_max_position_embeddings=6),
    "llama3_top_level": dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                             original_max_position_embeddings=32),
    "yarn_top_level": dict(rope_type="yarn", factor=4.0),
    "scaling_over_parameters": dict(rope_type="default"),
    "gemma_legacy_gelu": dict(rope_type="default"),
    "tied_stray_lm_head": dict(rope_type="default"),
}


def edit_config(name, path):
    """The config.json edits of the cases read as transformers reads them."""
    with open(path) as f:
        c = json.load(f)
    if name.endswith("_top_level"):
        c["original_max_position_embeddings"] = 16
        c["rope_parameters"].pop("original_max_position_embeddings", None)
        if name == "llama3_top_level":
            c["rope_parameters"]["original_max_position_embeddings"] = 32
    elif name == "scaling_over_parameters":
        c["rope_parameters"]["rope_theta"] = 100.0
        c["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
        c["original_max_position_embeddings"] = 16
    elif name == "gemma_legacy_gelu":
        c["hidden_act"] = "gelu"
    elif name == "tied_stray_lm_head":
        weights = os.path.join(os.path.dirname(path), "model.safetensors")
        tensors = load_file(weights)
        table = tensors["model.embed_tokens.weight"]
        tensors["lm_head.weight"] = table + torch.randn_like(table) * 0.2
        save_file(tensors, weights, metadata={"format": "pt"})
    else:
        return False
    with open(path, "w") as f:
        json.dump(c, f, indent=1)
    return True


def main(out):
    torch.manual_seed(0)
    for name, params in CASES.items():
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        max_pos = {"dynamic": 6, "llama3": 128}.get(name, 64)
        sizes = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_pos,
                     initializer_range=0.2, pad_token_id=PAD, bos_token_id=1, eos_token_id=2,
                     tie_word_embeddings=name == "tied_stray_lm_head",
                     rope_parameters=dict(rope_theta=10000.0, **params))
        if name == "gemma_legacy_gelu":
            model = GemmaForCausalLM(GemmaConfig(head_dim=8, hidden_act="gelu_pytorch_tanh", **sizes))
        else:
            model = LlamaForCausalLM(LlamaConfig(**sizes))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * (0.6 if name == "gemma_legacy_gelu" else 0.1))
        model.eval()
        model.save_pretrained(os.path.join(d, "model"), safe_serialization=True)
        if edit_config(name, os.path.join(d, "model", "config.json")):
            model = AutoModelForCausalLM.from_pretrained(os.path.join(d, "model")).eval()
        lengths = [9, 5, 3]
        ids = torch.randint(3, VOCAB, (len(lengths), max(lengths)))
        mask = torch.zeros_like(ids)
        for i, n in enumerate(lengths):
            mask[i, :n] = 1
        ids = ids.masked_fill(mask == 0, PAD)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
        save_file({"input_ids": ids, "attention_mask": mask}, os.path.join(d, "inputs.safetensors"))
        save_file({"logits": logits.contiguous()}, os.path.join(d, "reference.safetensors"))
        prompts = [torch.randint(3, VOCAB, (n,)).tolist() for n in (4, 2, 3)]
        width = max(len(p) for p in prompts)
        p_ids = torch.full((len(prompts), width), PAD)
        p_mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for i, p in enumerate(prompts):
            p_ids[i, width - len(p):] = torch.tensor(p)
            p_mask[i, width - len(p):] = 1
        # A fresh model: dynamic RoPE keeps state across calls in transformers.
        fresh = AutoModelForCausalLM.from_pretrained(os.path.join(d, "model")).eval()
        with torch.no_grad():
            out_ids = fresh.generate(input_ids=p_ids, attention_mask=p_mask, do_sample=False,
                                     max_new_tokens=MAX_NEW, eos_token_id=None, pad_token_id=PAD)
        new = out_ids[:, width:].tolist()
        with open(os.path.join(d, "expected.json"), "w") as f:
            json.dump(dict(prompts=prompts, max_new_tokens=MAX_NEW, generated=new), f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
