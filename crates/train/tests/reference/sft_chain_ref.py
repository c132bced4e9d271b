"""Reference for crates/train/tests/sft_parity.rs: one SFT training batch of each data format,
built from JSONL by TRL's rules (crates/data/tests/reference/lm_ref.py, transformers' tokenizer
and chat template), and the loss and every LoRA gradient transformers + PEFT compute on it.

usage: python sft_chain_ref.py OUT_DIR

OUT_DIR/<model>/model/    tiny random checkpoint (llama with GQA, gpt2), test tokenizer + ChatML
OUT_DIR/<model>/adapter/  PEFT LoRA adapter (init_lora_weights=False, dropout 0) on every
                          projection the models crate adapts by default plus the MLP
OUT_DIR/{text,prompt-completion,messages}.jsonl
OUT_DIR/<model>-<format>-<layout>.safetensors   (layout: right, left, packed)
    input_ids, labels, position_ids (packed), loss, grad.<loraplus name> for each LoRA tensor
The batch holds every example of the file: padded (right or left, pad id, labels -100) or
packed best-fit-decreasing into rows of MAX_LEN (position ids restarting per example, each
example's first token not a target; rows padded at the tail with position ids 0, as loraplus's
collator does). As loraplus's collator, the first token of every row is not a target (under
left padding the shifted loss would otherwise predict it from the padding before it). Packed rows run with position_ids and no attention mask (transformers keeps
attention inside each example), padded rows with their attention mask.
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "../../../data/tests/reference"))
import lm_ref  # noqa: E402
from tiny_tokenizer import write_tokenizer  # noqa: E402

MAX_LEN = 48
ROWS = {
    "text": [{"text": t} for t in lm_ref.TEXTS[:5]],
    "prompt-completion": [{"prompt": p, "completion": c} for p, c in lm_ref.PROMPT_COMPLETIONS[:4]],
    "messages": [{"messages": m} for m in lm_ref.CONVERSATIONS[:4]],
}


def fixture(out, name):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
    d = os.path.join(out, name, "model")
    os.makedirs(d, exist_ok=True)
    write_tokenizer(d, template="chatml")
    tok = AutoTokenizer.from_pretrained(d)
    torch.manual_seed(0)
    if name == "llama":
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                          pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
        model, targets = LlamaForCausalLM(cfg), ["q_proj", "v_proj", "down_proj"]
    else:
        # Dropout off (GPT-2's defaults are 0.1): both sides train, and their masks differ.
        cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=128,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id)
        model, targets = GPT2LMHeadModel(cfg), ["c_attn", "c_proj"]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.config.use_cache = False
    model.save_pretrained(d, safe_serialization=True)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets,
                                            init_lora_weights=False, task_type="CAUSAL_LM",
                                            fan_in_fan_out=(name == "gpt2")))
    peft.save_pretrained(os.path.join(out, name, "adapter"))
    return tok, peft


def loraplus_name(n):
    return n.replace("base_model.model.", "").replace(".default", "")


def batch(tok, rows, layout):
    built = lm_ref.build(tok, list(enumerate(rows, 1)), MAX_LEN, layout == "packed", True)["rows"]
    t = max(len(r["input_ids"]) for r in built)
    pad = tok.pad_token_id
    ids = torch.full((len(built), t), pad, dtype=torch.long)
    mask = torch.zeros(len(built), t, dtype=torch.long)
    labels = torch.full((len(built), t), -100, dtype=torch.long)
    pos = torch.zeros(len(built), t, dtype=torch.long)
    for i, r in enumerate(built):
        n = len(r["input_ids"])
        at = t - n if layout == "left" else 0
        ids[i, at:at + n] = torch.tensor(r["input_ids"])
        mask[i, at:at + n] = 1
        labels[i, at:at + n] = torch.tensor(r["labels"])
        # loraplus's collator: a row's first token is never a target (under left padding the
        # shifted loss would predict it from padding).
        labels[i, at] = -100
        if r["position_ids"] is not None:
            pos[i, :n] = torch.tensor(r["position_ids"])
    return ids, mask, labels, pos


def main(out):
    os.makedirs(out, exist_ok=True)
    for fmt, rows in ROWS.items():
        lm_ref.write_jsonl(os.path.join(out, f"{fmt}.jsonl"), rows)
    for name in ["llama", "gpt2"]:
        tok, peft = fixture(out, name)
        peft.train()
        for fmt, rows in ROWS.items():
            for layout in ["right", "left", "packed"]:
                ids, mask, labels, pos = batch(tok, rows, layout)
                peft.zero_grad()
                if layout == "packed":
                    outp = peft(input_ids=ids, position_ids=pos, labels=labels, use_cache=False)
                else:
                    outp = peft(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False)
                outp.loss.backward()
                res = {"input_ids": ids, "labels": labels, "loss": outp.loss.detach().reshape([])}
                if layout == "packed":
                    res["position_ids"] = pos
                for n, p in peft.named_parameters():
                    if p.requires_grad:
                        res["grad." + loraplus_name(n)] = p.grad.detach().clone()
                save_file({k: v.contiguous() for k, v in res.items()},
                          os.path.join(out, f"{name}-{fmt}-{layout}.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1])
