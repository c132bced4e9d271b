"""HuggingFace reference for the SST-2 throughput comparison (see side_by_side.sh).

Tokenizes all 67,349 SST-2 training sentences with the same tokenizer.json and max length 128,
and pads them into batches of 32 as torch int64 tensors (input_ids, attention_mask,
token_type_ids, labels), like the Rust side. Three ways, each after a warm-up pass (loading the tokenizer and reading the file are not
timed, on either side):
  hf_batch_fast  tokenizers: one encode_batch_fast over the whole set (parallel in Rust, no
                 offsets), then per-batch padding with numpy -> torch: the fastest Python path
  hf_batch_pad   tokenizers: encode_batch per batch of 32 with padding enabled
  hf_transformers transformers: tokenizer(batch, padding=True, truncation=True,
                 max_length=128, return_tensors="pt") per batch, as a DataCollator would
Prints one line per way: `<name> sentences=N seconds=S sentences_per_s=R`.

usage: tokenize_sst2_ref.py MODEL_DIR GLUE_DIR [BATCH_SIZE] [WAYS...]
"""
import csv
import sys
import time

import numpy as np
import torch
from tokenizers import Tokenizer

MAX_LEN = 128


def read_sst2(glue_dir):
    with open(f"{glue_dir}/SST-2/train.tsv", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quotechar=None))[1:]
    return [r[0] for r in rows], [int(r[1]) for r in rows]


def pad_batch(encs, labels, pad_id):
    width = max(len(e.ids) for e in encs)
    ids = np.full((len(encs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(encs), width), dtype=np.int64)
    types = np.zeros((len(encs), width), dtype=np.int64)
    for r, e in enumerate(encs):
        n = len(e.ids)
        ids[r, :n] = e.ids
        mask[r, :n] = 1
        types[r, :n] = e.type_ids
    return (torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types),
            torch.tensor(labels, dtype=torch.int64))


def setup_fast(model_dir):
    tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    tok.no_padding()
    tok.enable_truncation(MAX_LEN)
    return tok


def hf_batch_fast(tok, texts, labels, bs):
    encs = tok.encode_batch_fast(texts)
    out = 0
    for s in range(0, len(encs), bs):
        batch = pad_batch(encs[s:s + bs], labels[s:s + bs], 0)
        out += batch[0].shape[0]
    return out


def setup_pad(model_dir):
    tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    tok.enable_truncation(MAX_LEN)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    return tok


def hf_batch_pad(tok, texts, labels, bs):
    out = 0
    for s in range(0, len(texts), bs):
        encs = tok.encode_batch(texts[s:s + bs])
        ids = torch.tensor([e.ids for e in encs], dtype=torch.int64)
        mask = torch.tensor([e.attention_mask for e in encs], dtype=torch.int64)
        types = torch.tensor([e.type_ids for e in encs], dtype=torch.int64)
        lab = torch.tensor(labels[s:s + bs], dtype=torch.int64)
        out += ids.shape[0] + 0 * (mask.shape[0] + types.shape[0] + lab.shape[0])
    return out


def setup_transformers(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def hf_transformers(tok, texts, labels, bs):
    out = 0
    for s in range(0, len(texts), bs):
        enc = tok(texts[s:s + bs], padding=True, truncation=True, max_length=MAX_LEN,
                  return_tensors="pt")
        lab = torch.tensor(labels[s:s + bs], dtype=torch.int64)
        out += enc["input_ids"].shape[0] + 0 * lab.shape[0]
    return out


WAYS = {"hf_batch_fast": (setup_fast, hf_batch_fast),
        "hf_batch_pad": (setup_pad, hf_batch_pad),
        "hf_transformers": (setup_transformers, hf_transformers)}


def main():
    model_dir, glue_dir = sys.argv[1:3]
    bs = int(sys.argv[3]) if len(sys.argv) > 3 else 32
    ways = sys.argv[4:] or list(WAYS)
    texts, labels = read_sst2(glue_dir)
    for name in ways:
        setup, fn = WAYS[name]
        tok = setup(model_dir)  # loading the tokenizer is not timed (nor on the Rust side)
        fn(tok, texts, labels, bs)  # warm-up
        t0 = time.perf_counter()
        n = fn(tok, texts, labels, bs)
        dt = time.perf_counter() - t0
        print(f"{name} sentences={n} seconds={dt:.4f} sentences_per_s={n / dt:.0f}", flush=True)


if __name__ == "__main__":
    main()
