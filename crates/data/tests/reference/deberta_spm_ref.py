"""DeBERTa-v3-style tokenizer folders (spm.model, no tokenizer.json) and what transformers
makes of them, for crates/data/tests/spm_tokenizer.rs.

    python deberta_spm_ref.py OUT_DIR

Trains a small SentencePiece Unigram model on the corpus below with DeBERTa-v3's layout
([PAD] 0, [CLS] 1, [SEP] 2, [UNK] 3 as control/unknown pieces) and writes two folders the way
microsoft/deberta-v3-* ship them (spm.model, tokenizer_config.json, special_tokens_map.json,
added_tokens.json with [MASK] after the vocabulary, a config.json naming deberta-v2):
  OUT_DIR/cased/    do_lower_case false, split_by_punct false (deberta-v3-base's settings)
  OUT_DIR/lower/    do_lower_case true, split_by_punct true
and OUT_DIR/expected.json: for each folder, the ids and token type ids that
`transformers.AutoTokenizer.from_pretrained(folder)` gives for every text and pair of TEXTS,
truncated to MAX_LEN tokens.
"""
import json
import os
import sys

import sentencepiece as spm
from transformers import AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_tokenizer import CORPUS  # noqa: E402

MAX_LEN = 24
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France?  Paris, of course!",
    "  leading spaces and trailing ones   ",
    "Tabs\tand\nnew lines\r\nmixed in",
    "UPPER case Words and MiXeD CaSe",
    "Café naïve résumé: accents (composed) and cafe\u0301 (decomposed)",
    "numbers 12345 and 3.14, e-mail: a@b.c; [brackets] {braces}",
    "an unseen word: xylophone zyzzyva qwertyuiop",
    "emoji \U0001F600 and CJK \u4e2d\u6587 text",
    "a very long sentence that goes on and on and on with many words so that it must be "
    "truncated to the maximum length of the test",
    "[MASK] is a special token, and so is [SEP] here",
    "",
]


def main(out):
    os.makedirs(out, exist_ok=True)
    corpus = os.path.join(out, "corpus.txt")
    with open(corpus, "w") as f:
        f.write(CORPUS)
    prefix = os.path.join(out, "spm")
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=prefix, vocab_size=250, model_type="unigram",
        pad_id=0, pad_piece="[PAD]", bos_id=1, bos_piece="[CLS]", eos_id=2, eos_piece="[SEP]",
        unk_id=3, unk_piece="[UNK]", character_coverage=1.0, num_threads=1, seed_sentencepiece_size=5000,
        minloglevel=2)
    n = spm.SentencePieceProcessor(model_file=prefix + ".model").get_piece_size()
    expected = {}
    for name, lower, punct in [("cased", False, False), ("lower", True, True)]:
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        with open(prefix + ".model", "rb") as src, open(os.path.join(d, "spm.model"), "wb") as dst:
            dst.write(src.read())
        cfg = {"do_lower_case": lower, "vocab_type": "spm"}
        if punct:
            cfg["split_by_punct"] = True
        json.dump(cfg, open(os.path.join(d, "tokenizer_config.json"), "w"))
        json.dump({"bos_token": "[CLS]", "eos_token": "[SEP]", "unk_token": "[UNK]", "sep_token": "[SEP]",
                   "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"},
                  open(os.path.join(d, "special_tokens_map.json"), "w"))
        json.dump({"[MASK]": n}, open(os.path.join(d, "added_tokens.json"), "w"))
        # What AutoTokenizer reads the tokenizer class from, as in the checkpoints.
        json.dump({"model_type": "deberta-v2", "vocab_size": n + 1}, open(os.path.join(d, "config.json"), "w"))
        tok = AutoTokenizer.from_pretrained(d)
        assert type(tok).__name__ == "DebertaV2Tokenizer", type(tok).__name__
        rows = []
        for a in TEXTS:
            e = tok(a, truncation=True, max_length=MAX_LEN)
            rows.append({"a": a, "b": None, "ids": e["input_ids"], "types": e["token_type_ids"]})
        # An empty second text is no pair to transformers (`text_pair=""` is falsy), a GLUE-wide
        # convention of its call, not of the tokenizer: left out.
        for a, b in [(a, b) for a, b in zip(TEXTS, TEXTS[1:] + TEXTS[:1]) if b]:
            e = tok(a, b, truncation=True, max_length=MAX_LEN)
            rows.append({"a": a, "b": b, "ids": e["input_ids"], "types": e["token_type_ids"]})
        expected[name] = {"pad_id": tok.pad_token_id, "mask_id": tok.mask_token_id, "rows": rows}
    json.dump({"max_len": MAX_LEN, "cases": expected}, open(os.path.join(out, "expected.json"), "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
