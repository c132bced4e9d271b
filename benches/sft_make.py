"""Inputs of the SFT step benchmark (benches/sft.sh): a small random Llama-shaped causal LM and
the same instruction-tuning documents batched two ways, written once so that loraplus
(crates/train/examples/sft_step_bench.rs) and transformers + PEFT (benches/sft_step_ref.py) run
exactly the same batches.

usage: python benches/sft_make.py OUT_DIR [--docs 256] [--seq 512] [--batch 8] [--hidden 256]
                                  [--layers 4] [--vocab 4000] [--seed 0] [--shape llama-7b]
(--shape llama-7b: Llama-7B's layer shapes, hidden 4096, 32 heads, SwiGLU 11008, vocab 32000,
with --layers of them, for the CUDA bf16 run of the GPU check)

OUT_DIR/model/            LlamaForCausalLM (hidden H, GQA 8 heads / 4 kv heads, SwiGLU 2.6875 H)
OUT_DIR/padded.safetensors  input_ids.K, attention_mask.K, labels.K: BATCH documents per batch
                            in file order, right padded to the batch's longest (TRL's default)
OUT_DIR/packed.safetensors  input_ids.K, position_ids.K, labels.K: the documents packed
                            best-fit-decreasing into rows of SEQ tokens (TRL's `bfd`), position
                            ids restarting per document, the first token of each document not
                            a target; BATCH * mean(doc len) / SEQ rows per batch, so both sets
                            hold about the same tokens per step
Document lengths: log-normal (median ~96 tokens, clipped to 16..SEQ), the first 30% of each
document (the prompt) labelled -100.
"""
import argparse
import math
import os

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--docs", type=int, default=256)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shape", choices=["small", "llama-7b"], default="small")
    a = ap.parse_args()
    heads, kv, inter = 8, 4, int(a.hidden * 2.6875)
    if a.shape == "llama-7b":
        a.hidden, heads, kv, inter, a.vocab = 4096, 32, 32, 11008, 32000
    g = torch.Generator().manual_seed(a.seed)
    torch.manual_seed(a.seed)
    cfg = LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=inter,
                      num_hidden_layers=a.layers, num_attention_heads=heads, num_key_value_heads=kv,
                      max_position_embeddings=max(2048, a.seq), pad_token_id=0, bos_token_id=1,
                      eos_token_id=2, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(os.path.join(a.out, "model"), safe_serialization=True)

    lengths = torch.exp(torch.randn(a.docs, generator=g) * 0.8 + math.log(96)).round().long()
    lengths = lengths.clamp(16, a.seq).tolist()
    docs = []
    for n in lengths:
        ids = torch.randint(3, a.vocab, (n,), generator=g)
        labels = ids.clone()
        labels[: int(0.3 * n)] = -100
        docs.append((ids, labels))

    padded = {}
    for k in range(0, len(docs), a.batch):
        chunk = docs[k:k + a.batch]
        t = max(len(d[0]) for d in chunk)
        ids = torch.zeros(len(chunk), t, dtype=torch.long)
        mask = torch.zeros(len(chunk), t, dtype=torch.long)
        labels = torch.full((len(chunk), t), -100, dtype=torch.long)
        for i, (x, y) in enumerate(chunk):
            ids[i, :len(x)] = x
            mask[i, :len(x)] = 1
            labels[i, :len(y)] = y
        j = k // a.batch
        padded[f"input_ids.{j}"], padded[f"attention_mask.{j}"], padded[f"labels.{j}"] = ids, mask, labels
    save_file(padded, os.path.join(a.out, "padded.safetensors"))

    # Best-fit decreasing: longest first (stable), each into the fullest row it fits.
    order = sorted(range(len(docs)), key=lambda i: -len(docs[i][0]))
    rows = []  # [free, [doc indices]]
    for i in order:
        n = len(docs[i][0])
        best = None
        for r in rows:
            if r[0] >= n and (best is None or r[0] < best[0]):
                best = r
        if best is None:
            best = [a.seq, []]
            rows.append(best)
        best[0] -= n
        best[1].append(i)
    packed_rows = []
    for free, members in rows:
        ids = torch.cat([docs[i][0] for i in members])
        labels = torch.cat([torch.cat([torch.tensor([-100]), docs[i][1][1:]]) for i in members])
        pos = torch.cat([torch.arange(len(docs[i][0])) for i in members])
        packed_rows.append((ids, labels, pos))
    per_batch = max(1, round(a.batch * sum(lengths) / len(lengths) / a.seq))
    packed = {}
    for k in range(0, len(packed_rows), per_batch):
        chunk = packed_rows[k:k + per_batch]
        t = max(len(r[0]) for r in chunk)
        ids = torch.zeros(len(chunk), t, dtype=torch.long)
        labels = torch.full((len(chunk), t), -100, dtype=torch.long)
        pos = torch.zeros(len(chunk), t, dtype=torch.long)
        for i, (x, y, p) in enumerate(chunk):
            ids[i, :len(x)], labels[i, :len(y)], pos[i, :len(p)] = x, y, p
            # Padding restarts the positions: a document of its own that only sees itself;
            # its labels are -100.
            if len(p) < t:
                pos[i, len(p):] = torch.arange(t - len(p))
        j = k // per_batch
        packed[f"input_ids.{j}"], packed[f"labels.{j}"], packed[f"position_ids.{j}"] = ids, labels, pos
    save_file(packed, os.path.join(a.out, "packed.safetensors"))
    print(f"docs={len(docs)} tokens={sum(lengths)} padded_batches={len(padded) // 3} "
          f"packed_rows={len(packed_rows)} packed_batches={len(packed) // 3} rows_per_packed_batch={per_batch}")


if __name__ == "__main__":
    main()
