"""References for crates/train/tests/causal_lm.rs, made by transformers and PEFT.

usage:
  causal_lm_ref.py fixture OUT_DIR
      OUT_DIR/{llama,gpt2}/: tiny random checkpoints (save_pretrained, safetensors) with the
      test tokenizer of crates/data/tests/reference/tiny_tokenizer.py (ChatML template).
  causal_lm_ref.py logits MODEL_DIR ADAPTER_DIR|- IDS_JSON OUT.safetensors
      logits of the base model (+ the adapter through PeftModel.from_pretrained) on the id rows
      of IDS_JSON (all the same length, no padding).
  causal_lm_ref.py merged MERGED_DIR IDS_JSON OUT.safetensors
      logits of a merged folder loaded with AutoModelForCausalLM.
  causal_lm_ref.py mc MODEL_DIR ADAPTER_DIR|- MC_JSONL OUT.json
      lm-eval-harness style log-likelihood scores of each choice (no special tokens; context =
      question, continuation = " " + choice, split at the question's tokens).
  causal_lm_ref.py seqcls MODEL_DIR ADAPTER_DIR ROWS_JSONL OUT.json
      logits of AutoModelForSequenceClassification (2 labels) + the adapter on the "text" of
      every row, all rows in one batch padded on the right by the tokenizer (its pad token,
      the config's pad_token_id), as a user of transformers evaluates.
No download: configs are built here, weights drawn from torch.manual_seed.
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "../../../data/tests/reference"))


def fixture(out):
    from transformers import (AutoTokenizer, Gemma2Config, Gemma2ForCausalLM, GPT2Config, GPT2LMHeadModel,
                              LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM)
    import tiny_tokenizer

    for name in ["llama", "gpt2", "phi3", "gemma2"]:
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        tiny_tokenizer.write_tokenizer(d, template="chatml")
        tok = AutoTokenizer.from_pretrained(d)
        vocab = len(tok)
        torch.manual_seed(0)
        if name == "llama":
            cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
            model = LlamaForCausalLM(cfg)
        elif name == "phi3":
            # Fused qkv_proj and gate_up_proj, half of each head rotated, a sliding window.
            cfg = Phi3Config(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                             partial_rotary_factor=0.5, sliding_window=8, bos_token_id=tok.bos_token_id,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
            model = Phi3ForCausalLM(cfg)
        elif name == "gemma2":
            # Soft-capping, layer 0 sliding (window 8), four norms per layer, tied head.
            cfg = Gemma2Config(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                               max_position_embeddings=256, query_pre_attn_scalar=20, sliding_window=8,
                               attn_logit_softcapping=2.0, final_logit_softcapping=3.0,
                               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                               pad_token_id=tok.pad_token_id)
            model = Gemma2ForCausalLM(cfg)
        else:
            cfg = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=256,
                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
            model = GPT2LMHeadModel(cfg)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        model.save_pretrained(d, safe_serialization=True)


def load(model_dir, adapter):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    if adapter != "-":
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    return model


def logits(model, ids_json, out):
    ids = torch.tensor(json.load(open(ids_json)), dtype=torch.long)
    with torch.no_grad():
        lg = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    save_file({"logits": lg.contiguous()}, out)


def mc(model_dir, adapter, path, out, max_length=None):
    """lm-eval-harness' loglikelihood for multiple choice (HFLM: _encode_pair, prefix_token_id,
    left truncation to max_length; acc_norm divides by len(choice) in characters)."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = load(model_dir, adapter)
    if max_length is None:
        max_length = model.config.max_position_embeddings
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    # HFLM forces add_bos_token for the Gemma family: tok_encode then adds special tokens.
    special = "gemma" in getattr(model.config, "model_type", "")
    rows = [json.loads(l) for l in open(path) if l.strip()]
    result = []
    for r in rows:
        scores = []
        for c in r["choices"]:
            context, cont = r["question"], " " + c
            n_spaces = len(context) - len(context.rstrip())
            if n_spaces > 0:
                cont = context[-n_spaces:] + cont
                context = context[:-n_spaces]
            if context == "":
                ctx, cont_ids = [prefix], tok(cont, add_special_tokens=special)["input_ids"]
            else:
                whole = tok(context + cont, add_special_tokens=special)["input_ids"]
                ctx = tok(context, add_special_tokens=special)["input_ids"]
                cont_ids = whole[len(ctx):]
            full = (ctx + cont_ids)[-(max_length + 1):]
            inp = torch.tensor([full[:-1]])
            with torch.no_grad():
                lp = torch.log_softmax(model(input_ids=inp).logits[0].float(), -1)
            start = len(full) - 1 - len(cont_ids)
            s = sum(lp[start + i, t].item() for i, t in enumerate(cont_ids))
            scores.append(s)
        norm = [s / len(c) for s, c in zip(scores, r["choices"])]
        result.append({"logprobs": scores, "pred_norm": max(range(len(norm)), key=lambda i: (norm[i], -i))})
    json.dump(result, open(out, "w"))


def seqcls(model_dir, adapter, path, out):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "right"
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2,
                                                               torch_dtype=torch.float32)
    assert tok.pad_token_id == model.config.pad_token_id
    model = PeftModel.from_pretrained(model, adapter).eval()
    texts = [json.loads(l)["text"] for l in open(path) if l.strip()]
    enc = tok(texts, padding=True, return_tensors="pt")
    assert (enc["attention_mask"] == 0).any(), "rows of one length: nothing padded"
    with torch.no_grad():
        lg = model(**enc).logits
    json.dump(lg.tolist(), open(out, "w"))


def main():
    cmd = sys.argv[1]
    if cmd == "fixture":
        fixture(sys.argv[2])
    elif cmd == "logits":
        logits(load(sys.argv[2], sys.argv[3]), sys.argv[4], sys.argv[5])
    elif cmd == "merged":
        logits(load(sys.argv[2], "-"), sys.argv[3], sys.argv[4])
    elif cmd == "mc":
        mc(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5],
           int(sys.argv[6]) if len(sys.argv) > 6 else None)
    elif cmd == "seqcls":
        seqcls(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
