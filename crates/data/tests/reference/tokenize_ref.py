"""Reference token ids for tests/tokenize_parity.rs, from HuggingFace transformers.

Reads the GLUE TSVs itself, the way the transformers GLUE processors do (tab split, no quoting),
and tokenizes with AutoTokenizer (the fast tokenizer built from the model's tokenizer.json):
    tokenizer(text_a, text_b, truncation="longest_first", max_length=N)
which is what run_glue.py does (truncation=True means longest_first), without padding.

usage: tokenize_ref.py MODEL_DIR GLUE_DIR OUT_JSON
"""
import csv
import json
import sys

from transformers import AutoTokenizer


def read_tsv(path, skip_header):
    with open(path, encoding="utf-8-sig") as f:
        rows = list(csv.reader(f, delimiter="\t", quotechar=None))
    return rows[1:] if skip_header else rows


def encode(tok, pairs, max_length):
    out = []
    for a, b in pairs:
        enc = tok(a, b, truncation="longest_first", max_length=max_length)
        out.append({"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"]})
    return out


def main():
    model_dir, glue_dir, out_path = sys.argv[1:4]
    tok = AutoTokenizer.from_pretrained(model_dir)
    sst2 = [(r[0], None) for r in read_tsv(f"{glue_dir}/SST-2/dev.tsv", True)]
    mrpc = [(r[3], r[4]) for r in read_tsv(f"{glue_dir}/MRPC/dev.tsv", True)]
    qnli = [(r[1], r[2]) for r in read_tsv(f"{glue_dir}/QNLI/dev.tsv", True)][:500]
    cases = {
        "sst2_dev_128": encode(tok, sst2, 128),
        "sst2_dev_16": encode(tok, sst2, 16),
        "mrpc_dev_128": encode(tok, mrpc, 128),
        "mrpc_dev_16": encode(tok, mrpc, 16),
        "qnli_dev500_48": encode(tok, qnli, 48),
        "pad_token_id": tok.pad_token_id,
    }
    with open(out_path, "w") as f:
        json.dump(cases, f)


if __name__ == "__main__":
    main()
