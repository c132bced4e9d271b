"""Reference for crates/models/tests/peft_seq_cls.rs: adapters written by PEFT with its defaults
for a sequence classifier, `get_peft_model(model, LoraConfig(task_type="SEQ_CLS",
target_modules=...))`, which puts both `classifier` and `score` in `modules_to_save` whatever
the architecture has; their logits on real SST-2 dev sentences.

usage: python peft_seq_cls.py MINILM_DIR SST2_DEV_TSV N OUT_DIR

Writes OUT_DIR/inputs.safetensors (input_ids, attention_mask, token_type_ids: the first N dev
sentences through MiniLM's tokenizer, right-padded with id 0) and, for each case (bert: the real
MiniLM; bert_pooler: the same with `modules_to_save=["pooler"]` given too, a parent module of
`bert.pooler.dense`; roberta, gpt2, llama: tiny random models with MiniLM's vocabulary size and
pad_token_id 0), OUT_DIR/<case>/model/ (not for the bert cases: the test loads MINILM_DIR),
OUT_DIR/<case>/adapter/ (PEFT's save_pretrained) and OUT_DIR/<case>/peft.safetensors (logits of
the PEFT model in eval mode). The adapter's tensors, lora_B included, are moved off their
initial values first, as training would, so every one of them shows in the logits.
No download: MiniLM is local, the other configs are built here.
"""
import csv
import os
import sys

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import (AutoTokenizer, BertForSequenceClassification, GPT2Config,
                          GPT2ForSequenceClassification, LlamaConfig,
                          LlamaForSequenceClassification, RobertaConfig,
                          RobertaForSequenceClassification)
from transformers.utils import logging

LABELS = 2
# Tiny shapes: hidden 32, two layers; positions beyond the tokenizer's max_length below.
HIDDEN, LAYERS, HEADS, FFN, POSITIONS, MAX_LEN = 32, 2, 4, 37, 140, 128


def cases(minilm, vocab):
    yield "bert", BertForSequenceClassification.from_pretrained(minilm, num_labels=LABELS), ["query", "value"], None
    # A parent module as entry: PEFT wraps `bert.pooler`, saving `bert.pooler.dense.*`.
    yield ("bert_pooler", BertForSequenceClassification.from_pretrained(minilm, num_labels=LABELS),
           ["query", "value"], ["pooler"])
    rob = RobertaConfig(vocab_size=vocab, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                        num_attention_heads=HEADS, intermediate_size=FFN,
                        max_position_embeddings=POSITIONS, num_labels=LABELS, pad_token_id=0,
                        layer_norm_eps=1e-5)
    yield "roberta", RobertaForSequenceClassification(rob), ["query", "value"], None
    gpt = GPT2Config(vocab_size=vocab, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
                     n_positions=POSITIONS, num_labels=LABELS, pad_token_id=0)
    yield "gpt2", GPT2ForSequenceClassification(gpt), ["c_attn"], None
    llama = LlamaConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=FFN,
                        num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=2,
                        max_position_embeddings=POSITIONS, num_labels=LABELS, pad_token_id=0)
    yield "llama", LlamaForSequenceClassification(llama), ["q_proj", "v_proj"], None


def main(minilm, tsv, n, out):
    logging.set_verbosity_error()
    with open(tsv, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    sentences = [r["sentence"] for r in rows[: int(n)]]
    tok = AutoTokenizer.from_pretrained(minilm)
    assert tok.pad_token_id == 0
    enc = tok(sentences, padding=True, truncation=True, max_length=MAX_LEN, return_tensors="pt")
    os.makedirs(out, exist_ok=True)
    save_file({k: v.contiguous() for k, v in enc.items()}, os.path.join(out, "inputs.safetensors"))
    torch.manual_seed(0)
    for name, model, targets, to_save in cases(minilm, tok.vocab_size):
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        if not name.startswith("bert"):
            model.save_pretrained(os.path.join(d, "model"), safe_serialization=True)
        extra = {} if to_save is None else dict(modules_to_save=to_save)
        peft_model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", target_modules=targets, **extra))
        with torch.no_grad():
            for p in peft_model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.1)
        peft_model.eval()
        peft_model.save_pretrained(os.path.join(d, "adapter"))
        inputs = dict(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        if name.startswith("bert"):
            inputs["token_type_ids"] = enc["token_type_ids"]
        with torch.no_grad():
            logits = peft_model(**inputs).logits
        save_file({"logits": logits.contiguous()}, os.path.join(d, "peft.safetensors"))


if __name__ == "__main__":
    main(*sys.argv[1:])
