"""Reference values for crates/models/tests/causal_lm.rs, made by transformers and PEFT.

usage: python causal_lm.py OUT_DIR

For each case (llama: grouped-query attention, untied lm_head; gpt2: tied, Conv1D; qwen2: q/k/v
biases, tied; qwen3: query and key norms, head_dim of its own, attention biases; smollm3: layer 1 of 2 without RoPE; olmo2: post-norms only, whole-projection query and key norms; olmo3: olmo2's layers, layer 0 of 2
sliding (window 4) on its own RoPE base; mistral: a sliding window of 4 positions, shorter than the sequences; gemma: scaled
embeddings, (1 + w) norms, GeGLU, head_dim of its own; gemma2: soft-capped attention scores and
logits, four norms per layer, layer 0 of 2 with a sliding window of 4 positions, shorter than the
sequences; gemma3: gemma2's layers with query and key norms, the sliding layer on a RoPE base of its
own, the full one with linear scaling; phi3: fused qkv_proj and gate_up_proj,
half of each head rotated, LongRoPE with original_max_position_embeddings 8, so that the 9-token
rows use the long factors, the packed rows the short ones, and generation crosses from short
to long) writes under
OUT_DIR/<case>/:
  model/                  a tiny random checkpoint (save_pretrained, safetensors)
  adapter/                a PEFT LoRA adapter with init_lora_weights=False (B != 0)
  sft_<variant>.safetensors  for variant in right, left, left_pos, packed: the inputs
                          (input_ids, attention_mask, labels, position_ids when passed), and the
                          PEFT model's logits, loss and grad.<name> of every trainable tensor
                          (names as loraplus names them). Prompts are masked with -100; the
                          packed rows pass position_ids restarting per document and no
                          attention mask (as transformers takes packed rows).
  expected.json           prompts, eos, max_new_tokens and the new tokens of greedy
                          generate(do_sample=False) with the adapter unmerged and merged (and
                          of the second prompt alone, unpadded; and of a prompt longer than
                          max_position_embeddings, rotary models only); and
                          continuation log-probability items with their reference sums.
No download: configs are built here, weights drawn from torch.manual_seed.
"""
import json
import os
import sys

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import (GemmaConfig, GemmaForCausalLM, Gemma2Config, Gemma2ForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Phi3Config, Phi3ForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                          Qwen3Config, Qwen3ForCausalLM, Gemma3TextConfig, Gemma3ForCausalLM, SmolLM3Config,
                          SmolLM3ForCausalLM, Olmo2Config, Olmo2ForCausalLM, Olmo3Config, Olmo3ForCausalLM)

VOCAB = 61
PAD = 0
MAX_NEW = 8


def cases():
    llama = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                        initializer_range=0.2, pad_token_id=PAD, bos_token_id=1, eos_token_id=2,
                        tie_word_embeddings=False)
    yield "llama", LlamaForCausalLM(llama), dict(
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    gpt2 = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=40,
                      initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=PAD,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    yield "gpt2", GPT2LMHeadModel(gpt2), dict(
        target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True)
    decoder = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                   initializer_range=0.2, pad_token_id=PAD, bos_token_id=1, eos_token_id=2)
    all_linears = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    yield "qwen2", Qwen2ForCausalLM(Qwen2Config(tie_word_embeddings=True, **decoder)), dict(
        target_modules=all_linears)
    yield "qwen3", Qwen3ForCausalLM(Qwen3Config(head_dim=16, attention_bias=True, **decoder)), dict(
        target_modules=all_linears)
    yield "smollm3", SmolLM3ForCausalLM(SmolLM3Config(no_rope_layer_interval=2, **decoder)), dict(
        target_modules=all_linears)
    yield "olmo2", Olmo2ForCausalLM(Olmo2Config(**decoder)), dict(target_modules=all_linears)
    olmo3 = Olmo3Config(sliding_window=4, layer_types=["sliding_attention", "full_attention"],
                        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
                                         "sliding_attention": {"rope_type": "default", "rope_theta": 300.0}},
                        **decoder)
    yield "olmo3", Olmo3ForCausalLM(olmo3), dict(target_modules=all_linears)
    yield "mistral", MistralForCausalLM(MistralConfig(sliding_window=4, **decoder)), dict(
        target_modules=all_linears)
    yield "gemma", GemmaForCausalLM(GemmaConfig(head_dim=16, **decoder)), dict(target_modules=all_linears)
    gemma2 = Gemma2Config(head_dim=16, query_pre_attn_scalar=20, sliding_window=4, attn_logit_softcapping=2.0,
                          final_logit_softcapping=3.0, **decoder)
    yield "gemma2", Gemma2ForCausalLM(gemma2), dict(target_modules=all_linears)
    # Gemma 3: query and key norms, layer 0 of 2 sliding (window 4) on its own RoPE base (100),
    # layer 1 full with linear scaling (factor 2, base 10000), soft-capped logits.
    gemma3 = Gemma3TextConfig(head_dim=16, query_pre_attn_scalar=20, sliding_window=4, final_logit_softcapping=3.0,
                              layer_types=["sliding_attention", "full_attention"],
                              rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0,
                                                                  "rope_theta": 10000.0},
                                               "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}},
                              **decoder)
    yield "gemma3", Gemma3ForCausalLM(gemma3), dict(target_modules=all_linears)
    longrope = dict(rope_type="longrope", short_factor=[1.0, 1.5], long_factor=[3.0, 9.0])
    phi3 = Phi3Config(original_max_position_embeddings=8, partial_rotary_factor=0.5, rope_parameters=longrope,
                      **decoder)
    yield "phi3", Phi3ForCausalLM(phi3), dict(target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"])


def loraplus_name(peft_name):
    n = peft_name.removeprefix("base_model.model.")
    n = n.replace(".modules_to_save.default.", ".").replace(".default.", ".").replace(".base_layer.", ".")
    if n.endswith(".default"):
        n = n[: -len(".default")]
    return n


def tokens(n):
    return torch.randint(3, VOCAB, (n,))


def padded(seqs, prompt_lens, left):
    """Rows of (ids, mask, labels) with the prompt and the padding labelled -100."""
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), PAD)
    mask = torch.zeros(len(seqs), t, dtype=torch.long)
    labels = torch.full((len(seqs), t), -100)
    for i, (s, p) in enumerate(zip(seqs, prompt_lens)):
        start = t - len(s) if left else 0
        ids[i, start:start + len(s)] = s
        mask[i, start:start + len(s)] = 1
        labels[i, start + p:start + len(s)] = s[p:]
    return ids, mask, labels


def packed(rows):
    """Rows of documents (seq, prompt_len): position ids restart at 0 per document, the prompt
    and each document's first token are not targets."""
    t = sum(len(s) for s, _ in rows[0])
    ids, pos, labels = [], [], []
    for docs in rows:
        assert sum(len(s) for s, _ in docs) == t
        ids.append(torch.cat([s for s, _ in docs]))
        pos.append(torch.cat([torch.arange(len(s)) for s, _ in docs]))
        labels.append(torch.cat([torch.where(torch.arange(len(s)) < max(p, 1), -100, s) for s, p in docs]))
    return torch.stack(ids), torch.stack(pos), torch.stack(labels)


def sft_variants():
    seqs = [tokens(n) for n in (9, 6, 4)]
    prompt_lens = [4, 2, 1]
    right = padded(seqs, prompt_lens, left=False)
    left = padded(seqs, prompt_lens, left=True)
    ids, mask, labels = left
    # Left padding with transformers' generation-style positions: cumsum(mask) - 1, 0 on padding.
    left_pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    docs = [[(tokens(5), 2), (tokens(4), 1), (tokens(3), 1)], [(tokens(7), 3), (tokens(5), 2)]]
    p_ids, p_pos, p_labels = packed(docs)
    yield "right", dict(input_ids=right[0], attention_mask=right[1]), right[2]
    yield "left", dict(input_ids=ids, attention_mask=mask), labels
    yield "left_pos", dict(input_ids=ids, attention_mask=mask, position_ids=left_pos), labels
    yield "packed", dict(input_ids=p_ids, position_ids=p_pos), p_labels


def new_tokens(out, prompt_width, eos):
    rows = []
    for row in out[:, prompt_width:].tolist():
        kept = []
        for tok in row:
            kept.append(tok)
            if tok in eos:
                break
        rows.append(kept)
    return rows


# Strong enough to change the greedy tokens of these tiny models.
REPETITION_PENALTY = 3.0


def generate(model, prompts, eos, **kw):
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), PAD)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=MAX_NEW,
                             eos_token_id=eos if eos else None, pad_token_id=PAD, **kw)
    return new_tokens(out, width, eos)


def logprob(model, context, continuation):
    whole = torch.tensor(context + continuation)
    with torch.no_grad():
        logits = model(input_ids=whole[None, :-1]).logits[0]
    lp = torch.log_softmax(logits.float(), dim=-1)
    picked = [lp[len(context) - 1 + j, tok].double() for j, tok in enumerate(continuation)]
    return float(sum(picked))


def main(out):
    torch.manual_seed(0)
    for name, model, lora in cases():
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        model.save_pretrained(os.path.join(d, "model"), safe_serialization=True)
        # The base model's logits in bf16 and f16, one unpadded row (transformers loads the
        # checkpoint in that dtype).
        row = tokens(9)[None, :]
        half = {"input_ids": row.contiguous()}
        for dtype, key in ((torch.bfloat16, "bf16"), (torch.float16, "f16")):
            m = type(model).from_pretrained(os.path.join(d, "model"), dtype=dtype).eval()
            with torch.no_grad():
                half[key] = m(input_ids=row).logits[0].float().contiguous()
        save_file(half, os.path.join(d, "half_logits.safetensors"))
        cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False, **lora)
        peft_model = get_peft_model(model, cfg)
        peft_model.save_pretrained(os.path.join(d, "adapter"))
        peft_model.train()
        for variant, inputs, labels in sft_variants():
            for p in peft_model.parameters():
                p.grad = None
            # use_cache=False, as in training: with a cache transformers does not look for
            # packed rows in position_ids (masking_utils._preprocess_mask_arguments).
            result = peft_model(**inputs, labels=labels, use_cache=False)
            result.loss.backward()
            tensors = {k: v.contiguous() for k, v in inputs.items()}
            tensors.update(labels=labels, logits=result.logits.detach().contiguous(),
                           loss=result.loss.detach().reshape(1))
            for pname, p in peft_model.named_parameters():
                if p.requires_grad:
                    tensors["grad." + loraplus_name(pname)] = p.grad.contiguous()
            save_file(tensors, os.path.join(d, f"sft_{variant}.safetensors"))

        peft_model.eval()
        peft_model.generation_config.eos_token_id = None
        prompts = [tokens(n).tolist() for n in (5, 2, 7)]
        # EOS: a token row 0 produces at its third step, so that one row stops early.
        free = generate(peft_model, prompts, [])
        eos = [free[0][2]]
        items = [(tokens(n).tolist(), tokens(m).tolist()) for n, m in ((3, 2), (6, 1), (1, 4), (4, 3), (2, 2))]
        expected = dict(prompts=prompts, eos=eos, max_new_tokens=MAX_NEW,
                        unmerged=generate(peft_model, prompts, eos),
                        unmerged_no_eos=free,
                        unmerged_alone=generate(peft_model, prompts[1:2], eos),
                        # Each prompt alone (HF's batched generate penalises the padding too).
                        repetition_penalty=REPETITION_PENALTY,
                        unmerged_repetition_penalty=[
                            generate(peft_model, [p], [], repetition_penalty=REPETITION_PENALTY)[0] for p in prompts
                        ],
                        items=items, logprobs=[logprob(peft_model, c, k) for c, k in items])
        if name != "gpt2":
            # A prompt longer than max_position_embeddings (64): rotary positions go on, as in
            # transformers (GPT-2's learned table ends).
            long_prompt = tokens(70).tolist()
            expected["past_positions"] = dict(
                prompt=long_prompt, tokens=generate(peft_model, [long_prompt], [])[0])
        merged = peft_model.merge_and_unload()
        merged.eval()
        expected["merged"] = generate(merged, prompts, eos)
        with open(os.path.join(d, "expected.json"), "w") as f:
            json.dump(expected, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
