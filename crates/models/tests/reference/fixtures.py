"""Reference fixtures for crates/models/tests/parity.rs, made by transformers and PEFT.

usage: python fixtures.py OUT_DIR

For each case (bert, roberta, gpt2, gpt2_lm, llama, llama_lm, qwen2, qwen2_lm, mistral,
mistral_lm, gemma, gemma_lm, gemma2, gemma2_lm, phi3, phi3_lm, deberta_v2, deberta_v2_reg,
deberta_v2_norel, qwen2_lm_saved_table, qwen2_lm_saved_table_tied,
llama_lm_embedding_layers)
writes under OUT_DIR/<case>/:
  model/               a tiny random checkpoint (save_pretrained, safetensors; llama sharded)
  inputs.safetensors   input_ids, attention_mask, labels (and token_type_ids for bert)
  reference.safetensors  logits and hidden (last_hidden_state) of the plain model, eval mode
  adapter/             a PEFT LoRA adapter with init_lora_weights=False (B != 0)
  peft.safetensors     logits, loss and grad.<name> of every trainable tensor of the PEFT model
                       (names as loraplus names them: no base_model.model., no .default)
No download: configs are built here, weights drawn from torch.manual_seed.
"""
import json
import os
import sys

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import (BertConfig, BertForSequenceClassification, GemmaConfig, GemmaForCausalLM,
                          GemmaForSequenceClassification, Gemma2Config, Gemma2ForCausalLM,
                          Gemma2ForSequenceClassification, Gemma3ForCausalLM, Gemma3TextConfig,
                          Gemma3TextForSequenceClassification, GPT2Config,
                          GPT2ForSequenceClassification, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, LlamaForSequenceClassification, MistralConfig,
                          MistralForCausalLM, MistralForSequenceClassification, Phi3Config,
                          Phi3ForCausalLM, Phi3ForSequenceClassification, Qwen2Config,
                          Qwen2ForCausalLM, Qwen2ForSequenceClassification, Qwen3Config,
                          Qwen3ForCausalLM, Qwen3ForSequenceClassification, RobertaConfig,
                          RobertaForSequenceClassification)
from transformers import DebertaV2Config, DebertaV2ForSequenceClassification
from transformers import ModernBertConfig, ModernBertForSequenceClassification
from transformers import SmolLM3Config, SmolLM3ForCausalLM, SmolLM3ForSequenceClassification
from transformers import Olmo2Config, Olmo2ForCausalLM, Olmo2ForSequenceClassification
from transformers import Olmo3Config, Olmo3ForCausalLM, Olmo3ForSequenceClassification

B, T = 3, 7
VOCAB = 99


def ids_and_mask(lengths, pad, low, left=False):
    ids = torch.randint(low, VOCAB, (B, T))
    mask = torch.zeros(B, T, dtype=torch.long)
    for i, n in enumerate(lengths):
        if left:
            mask[i, T - n:] = 1
        else:
            mask[i, :n] = 1
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad))
    return ids, mask


def perturb(model):
    # Move every parameter (LayerNorm and biases included) off its tidy init, so the parity
    # checks see non-trivial values everywhere.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)


def cases():
    lengths = [7, 4, 2]
    bert_cfg = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=37, max_position_embeddings=64, initializer_range=0.2,
                          num_labels=3, pad_token_id=0)
    ids, mask = ids_and_mask(lengths, pad=0, low=1)
    yield dict(name="bert", model=BertForSequenceClassification(bert_cfg), backbone="bert",
               inputs=dict(input_ids=ids, attention_mask=mask, token_type_ids=torch.randint(0, 2, (B, T))),
               labels=torch.tensor([0, 2, 1]),
               lora=dict(target_modules=["query", "value"], modules_to_save=["classifier", "pooler.dense"]))

    rob_cfg = RobertaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=37, max_position_embeddings=66, initializer_range=0.2,
                            num_labels=2, pad_token_id=1, layer_norm_eps=1e-5)
    ids, mask = ids_and_mask(lengths, pad=1, low=3)
    yield dict(name="roberta", model=RobertaForSequenceClassification(rob_cfg), backbone="roberta",
               inputs=dict(input_ids=ids, attention_mask=mask), labels=torch.tensor([1, 0, 1]),
               lora=dict(target_modules=["query", "value", "word_embeddings"], modules_to_save=["classifier.dense", "classifier.out_proj"]))

    gpt_cfg = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                         initializer_range=0.2, num_labels=1, pad_token_id=0, bos_token_id=1, eos_token_id=1)
    ids, mask = ids_and_mask(lengths, pad=0, low=1)
    yield dict(name="gpt2", model=GPT2ForSequenceClassification(gpt_cfg), backbone="transformer",
               inputs=dict(input_ids=ids, attention_mask=mask), labels=torch.tensor([0.5, -1.0, 2.0]),
               lora=dict(target_modules=["c_attn", "c_proj"], modules_to_save=["score"], fan_in_fan_out=True,
                         bias="lora_only"))

    gpt_lm_cfg = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                            initializer_range=0.2, bos_token_id=1, eos_token_id=1)
    ids, mask = ids_and_mask(lengths, pad=0, low=1)
    yield dict(name="gpt2_lm", model=GPT2LMHeadModel(gpt_lm_cfg), backbone="transformer",
               inputs=dict(input_ids=ids, attention_mask=mask), labels=ids.masked_fill(mask == 0, -100),
               lora=dict(target_modules=["c_attn"], fan_in_fan_out=True))

    llama_cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                            initializer_range=0.2, num_labels=3, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    ids, mask = ids_and_mask(lengths, pad=0, low=3, left=True)
    yield dict(name="llama", model=LlamaForSequenceClassification(llama_cfg), backbone="model", sharded=True,
               inputs=dict(input_ids=ids, attention_mask=mask), labels=torch.tensor([2, 0, 1]),
               lora=dict(target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                         modules_to_save=["score"]))

    llama_lm_cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                               initializer_range=0.2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                               tie_word_embeddings=False)
    ids, mask = ids_and_mask(lengths, pad=0, low=3)
    yield dict(name="llama_lm", model=LlamaForCausalLM(llama_lm_cfg), backbone="model",
               inputs=dict(input_ids=ids, attention_mask=mask), labels=ids.masked_fill(mask == 0, -100),
               lora=dict(target_modules=["q_proj", "v_proj"], use_rslora=True))

    all_linears = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    # Qwen2: q/k/v biases, grouped-query attention; untied head for classification, tied LM head.
    qwen_kw = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                   initializer_range=0.2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    ids, mask = ids_and_mask(lengths, pad=0, low=3, left=True)
    yield dict(name="qwen2", model=Qwen2ForSequenceClassification(Qwen2Config(num_labels=3, **qwen_kw)),
               backbone="model", inputs=dict(input_ids=ids, attention_mask=mask), labels=torch.tensor([1, 2, 0]),
               lora=dict(target_modules=all_linears, modules_to_save=["score"]))
    ids, mask = ids_and_mask(lengths, pad=0, low=3)
    yield dict(name="qwen2_lm", model=Qwen2ForCausalLM(Qwen2Config(tie_word_embeddings=True, **qwen_kw)),
               backbone="model", inputs=dict(input_ids=ids, attention_mask=mask),
               labels=ids.masked_fill(mask == 0, -100), lora=dict(target_modules=all_linears))
    # LoRA on the embedding and lm_head: PEFT saves their base layers too (save_embedding_layers
    # "auto", as for a resized vocabulary) and loads them into the base; they are perturbed after
    # the checkpoint was written, so the values only match when the adapter's base layers load.
    ids, mask = ids_and_mask(lengths, pad=0, low=3)
    yield dict(name="llama_lm_embedding_layers", model=LlamaForCausalLM(llama_lm_cfg), backbone="model",
               inputs=dict(input_ids=ids, attention_mask=mask), labels=ids.masked_fill(mask == 0, -100),
               perturb_base_layers=True, lora=dict(target_modules=["q_proj", "embed_tokens", "lm_head"]))
    # Qwen2 with tied embeddings and the table in modules_to_save: without ensure_weight_tying
    # PEFT gives the embedding its own (trained) copy and lm_head keeps the base table; with it,
    # one table serves both. The saved copies are perturbed so that the two differ.
    for tie_case, ensure in (("qwen2_lm_saved_table", False), ("qwen2_lm_saved_table_tied", True)):
        ids, mask = ids_and_mask(lengths, pad=0, low=3)
        yield dict(name=tie_case, model=Qwen2ForCausalLM(Qwen2Config(tie_word_embeddings=True, **qwen_kw)),
                   backbone="model", inputs=dict(input_ids=ids, attention_mask=mask),
                   labels=ids.masked_fill(mask == 0, -100), perturb_saved=True,
                   lora=dict(target_modules=["q_proj", "v_proj"], modules_to_save=["embed_tokens"],
                             ensure_weight_tying=ensure))
    # Qwen3: RMSNorm on each head's queries and keys before RoPE, head_dim 16 (not 32 / 4);
    # attention biases (q, k, v and o) and an untied head for classification, tied LM head.
    qwen3_kw = dict(qwen_kw, head_dim=16)
    ids, mask = ids_and_mask(lengths, pad=0, low=3, left=True)
    yield dict(name="qwen3", model=Qwen3ForSequenceClassification(Qwen3Config(num_labels=3, attention_bias=True,
                                                                                **qwen3_kw)),
               backbone="model", inputs=dict(input_ids=ids, attention_mask=mask), labels=torch.tensor([2, 0, 1]),
               lora=dict(target_modules=all_linears, modules_to_save=["score"]))
    ids, mask = ids_and_mask(lengths, pad=0, low=3)
    yield dict(name="qwen3_lm", model=Qwen3ForCausalLM(Qwen3Config(tie_word_embeddings=True, **qwen3_kw)),
               backbone="model", inputs=dict(input_ids=ids, attention_mask=mask),
               labels=ids.masked_fill(mask == 0, -100), lora=dict(target_modules=all_linears))
    # SmolLM3: Llama with layer 1 of 2 applying no RoPE (no_rope_layer_interval 2), tied LM head.
    smol_kw = dict(qwen_kw, no_rope_layer_interval=2, rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    ids, mask = ids_and_mask(lengths, pad=0, low=3, left=True)
    yield dict(name="smollm3", model=SmolLM3ForSequenceClassification(SmolLM3Config(num_labels=3, **smol_kw)),
               backbone="model", inputs=dict(input_ids=ids, attention_mask=mask), labels=torch.tensor([0, 2, 1]),
               lora=dict(target_modules=all_linears, modules_to_save=["score"]))
    ids, mask = ids_and_mask(lengths, pad=0, low=3)
    yield dict(name="smollm3_lm", model=SmolLM3ForCausalLM(SmolLM3Config(**smol_kw)),
               backbone="model", inputs=dict(input_ids=ids, attention_mask=mask),
               labels=ids.masked_fill(mask == 0, -100), lora=dict(target_modules=all_linears))
    # OLMo 2: norms after the attention and the MLP (none before), query and key norms over the
    # whole projections, attention biases for classification; untied LM head.
    olmo_kw = dict(qwen_kw, tie_word_embeddings=False)
    ids, mask = ids_and_mask(lengths, pad=0, low=3, left=True)
    yield dict(name="olmo2", model=Olmo2ForSequenceClassification(Olmo2Config(num_labels=3, attention_bias=True,
                                                                                **olmo_kw)),
               backbone="model", inputs=dict(input_ids=ids, attention_mask=mask), labels=torch.tensor([1, 0, 2]),
               lora=dict(target_modules=all_linears, modules_to_save=["score"]))
    ids, mask = ids_and_mask(lengths, pad=0, low=3)
    yield dict(name="olmo2_lm", model=Olmo2ForCausalLM(Olmo2Config(**olmo_kw)),
               backbone="model", inputs=dict(input_ids=ids, attention_mask=mask),
               labels=ids.masked_fill(mask == 0, -100), lora=dict(target_modules=all_linears))
    # OLMo 3: OLMo 2's layers, layers 0-1 of 3 sliding (window 3, shorter than the sequences, on
    # the sliding layers' RoPE), layer 2 full with linear scaling 2 on base 5000 (flat keys).
    olmo3_kw = dict(olmo_kw, num_hidden_layers=3, sliding_window=3, rope_theta=5000.0,
                    layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                    rope_scaling={"rope_type": "linear", "factor": 2.0})
    ids, mask = ids_and_mask(lengths, pad=0, low=3, left=True)
    yield dict(name="olmo3", model=Olmo3ForSequenceClassification(Olmo3Config(num_labels=3, **olmo3_kw)),
               backbone="model", inputs=dict(input_ids=ids, attention_mask=mask), labels=torch.tensor([2, 1, 0]),
               lora=dict(target_modules=all_linears, modules_to_save=["score"]))
    ids, mask = ids_and_mask(lengths, pad=0, low=3)
    yield dict(name="olmo3_lm", model=Olmo3ForCausalLM(Olmo3Config(**olmo3_kw)),
               backbone="model", inputs=dict(input_ids=ids, attention_mask=mask),
               labels=ids.masked_fill(mask == 0, -100), lora=dict(target_modules=all_linears))
    # Mistral: a sliding window of 3 positions, shorter than the sequences (7).
    mistral_kw = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      initializer_range=0.2, pad_token_id=0, bos_token_id=1, eos_token_id=2, sliding_window=3)
    ids, mask = ids_and_mask(lengths, pad=0, low=3, left=True)
    yield dict(name="mistral", model=MistralForSequenceClassification(MistralConfig(num_labels=2, **mistral_kw)),
               backbone="model", inputs=dict(input_ids=ids, attention_mask=mask), labels=torch.tensor([1, 0, 1]),
               lora=dict(target_modules=all_linears, modules_to_save=["score"]))
    ids, mask = ids_and_mask(lengths, pad=0, low=3)
    yield dict(name="mistral_lm", model=MistralForCausalLM(MistralConfig(**mistral_kw)),
               backbone="model", inputs=dict(input_ids=ids, attention_mask=mask),
               labels=ids.masked_fill(mask == 0, -100), lora=dict(target_modules=all_linears))
    # Gemma: scaled embeddings, (1 + w) RMSNorm, GeGLU (tanh), head_dim 16 (not 32 / 4), tied head.
    gemma_kw = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
                    initializer_range=0.2, pad_token_id=0, bos_token_id=2, eos_token_id=1)
    ids, mask = ids_and_mask(lengths, pad=0, low=3, left=True)
    yield dict(name="gemma", model=GemmaForSequenceClassification(GemmaConfig(num_labels=3, **gemma_kw)),
               backbone="model", inputs=dict(input_ids=ids, attention_mask=mask), labels=torch.tensor([0, 2, 1]),
               lora=dict(target_modules=all_linears, modules_to_save=["score"]))
    ids, mask = ids_and_mask(lengths, pad=0, low=3)
    yield dict(name="gemma_lm", model=GemmaForCausalLM(GemmaConfig(**gemma_kw)),
               backbone="model", inputs=dict(input_ids=ids, attention_mask=mask),
               labels=ids.masked_fill(mask == 0, -100), lora=dict(target_modules=all_linears))
    # Gemma 3: Gemma 2's layers with query and key norms; by default every sixth layer is full:
    # here layers 0-1 slide (window 3, on RoPE base 50) and layer 2 is full (base 10000,
    # linear scaling 4), from the older flat keys (rope_local_base_freq, rope_scaling).
    gemma3_kw = dict(gemma_kw, num_hidden_layers=3, query_pre_attn_scalar=24, sliding_window=3,
                     sliding_window_pattern=3, rope_theta=10000.0, rope_local_base_freq=50.0,
                     rope_scaling={"rope_type": "linear", "factor": 4.0})
    ids, mask = ids_and_mask(lengths, pad=0, low=3, left=True)
    yield dict(name="gemma3", model=Gemma3TextForSequenceClassification(Gemma3TextConfig(num_labels=3, **gemma3_kw)),
               backbone="model", inputs=dict(input_ids=ids, attention_mask=mask), labels=torch.tensor([1, 2, 0]),
               lora=dict(target_modules=all_linears, modules_to_save=["score"]))
    ids, mask = ids_and_mask(lengths, pad=0, low=3)
    yield dict(name="gemma3_lm", model=Gemma3ForCausalLM(Gemma3TextConfig(**gemma3_kw)),
               backbone="model", inputs=dict(input_ids=ids, attention_mask=mask),
               labels=ids.masked_fill(mask == 0, -100), lora=dict(target_modules=all_linears))
    # ModernBERT: pre-norm, fused Wqkv, GeGLU-style Wi, no biases or absolute positions; layer 0
    # of 3 full (RoPE base 160000), layers 1-2 sliding (2 keys each side of 7, base 10000),
    # cls pooling through head.dense / head.norm (older flat keys).
    mb_kw = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=24, num_hidden_layers=3,
                 num_attention_heads=4, max_position_embeddings=64, initializer_range=0.2, pad_token_id=0,
                 bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
    ids, mask = ids_and_mask(lengths, pad=0, low=3)
    yield dict(name="modernbert", backbone="model", half=True,
               model=ModernBertForSequenceClassification(ModernBertConfig(
                   num_labels=3, local_attention=4, global_attn_every_n_layers=3, **mb_kw)),
               inputs=dict(input_ids=ids, attention_mask=mask), labels=torch.tensor([2, 1, 0]),
               lora=dict(target_modules=["Wqkv", "Wo", "Wi"], modules_to_save=["head", "classifier"]))
    # ModernBERT regression with mean pooling, biases everywhere (norms, attention, MLP, head),
    # per-type rope_parameters (full layers scaled linearly by 2), a window of 1 key each side.
    ids, mask = ids_and_mask(lengths, pad=0, low=3)
    yield dict(name="modernbert_mean", backbone="model",
               model=ModernBertForSequenceClassification(ModernBertConfig(
                   num_labels=1, local_attention=2, classifier_pooling="mean", norm_bias=True,
                   attention_bias=True, mlp_bias=True, classifier_bias=True,
                   layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                   rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5000.0},
                                    "sliding_attention": {"rope_type": "default", "rope_theta": 300.0}},
                   **mb_kw)),
               inputs=dict(input_ids=ids, attention_mask=mask), labels=torch.tensor([0.5, -1.0, 2.0]),
               lora=dict(target_modules=["Wqkv", "Wo"], modules_to_save=["head", "classifier"]))
    # DeBERTa-v3: relative attention only (c2p + p2c), log buckets (4 each side, up to 8), shared
    # content/position projections (LoRA on them reaches the relative table), normed table.
    deberta_kw = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=37, max_position_embeddings=64, initializer_range=0.2,
                      pad_token_id=0, relative_attention=True, pos_att_type=["p2c", "c2p"])
    ids, mask = ids_and_mask(lengths, pad=0, low=1)
    yield dict(name="deberta_v2", backbone="deberta",
               model=DebertaV2ForSequenceClassification(DebertaV2Config(
                   num_labels=3, position_biased_input=False, position_buckets=4, max_relative_positions=8,
                   share_att_key=True, norm_rel_ebd="layer_norm", **deberta_kw)),
               inputs=dict(input_ids=ids, attention_mask=mask), labels=torch.tensor([2, 0, 1]),
               lora=dict(target_modules=["query_proj", "key_proj", "value_proj"],
                         modules_to_save=["pooler.dense", "classifier"]))
    # DeBERTa-v2 style regression: absolute positions too, token types, embed_proj (24 -> 32),
    # separate pos_key_proj / pos_query_proj, relative span 5 (< T: clamped), no buckets.
    ids, mask = ids_and_mask(lengths, pad=0, low=1)
    yield dict(name="deberta_v2_reg", backbone="deberta",
               model=DebertaV2ForSequenceClassification(DebertaV2Config(
                   num_labels=1, type_vocab_size=2, embedding_size=24, max_relative_positions=5,
                   pooler_hidden_act="tanh", **{**deberta_kw, "pos_att_type": "c2p|p2c"})),
               inputs=dict(input_ids=ids, attention_mask=mask, token_type_ids=torch.randint(0, 2, (B, T))),
               labels=torch.tensor([0.5, -1.0, 2.0]),
               lora=dict(target_modules=["query_proj", "value_proj", "pos_key_proj", "dense"],
                         modules_to_save=["classifier"]))
    # DeBERTa with relative attention off but pos_att_type set: no position scores, yet the
    # content scores are still divided by sqrt(3 * head_dim), as transformers counts the types.
    ids, mask = ids_and_mask(lengths, pad=0, low=1)
    yield dict(name="deberta_v2_norel", backbone="deberta",
               model=DebertaV2ForSequenceClassification(DebertaV2Config(
                   num_labels=2, **{**deberta_kw, "relative_attention": False})),
               inputs=dict(input_ids=ids, attention_mask=mask), labels=torch.tensor([1, 0, 1]),
               lora=dict(target_modules=["query_proj", "value_proj"], modules_to_save=["classifier"]))


    # Gemma 2: Gemma's layers with four norms each, scores scaled by query_pre_attn_scalar^-0.5
    # (20, not head_dim 16) and soft-capped, the LM logits soft-capped, a sliding window of 3,
    # shorter than the 7 positions: on layer 0 of 2 by default (the LM); on the last layer for
    # the classifier, right-padded, so that the one row per sequence its last layer computes
    # sits at several positions. Caps small enough to bind on these random weights.
    gemma2_kw = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
                     initializer_range=0.2, pad_token_id=0, bos_token_id=2, eos_token_id=1,
                     query_pre_attn_scalar=20, sliding_window=3, attn_logit_softcapping=2.0,
                     final_logit_softcapping=3.0)
    ids, mask = ids_and_mask(lengths, pad=0, low=3)
    yield dict(name="gemma2", model=Gemma2ForSequenceClassification(Gemma2Config(
                   num_labels=3, layer_types=["full_attention", "sliding_attention"], **gemma2_kw)),
               backbone="model", inputs=dict(input_ids=ids, attention_mask=mask), labels=torch.tensor([1, 0, 2]),
               lora=dict(target_modules=all_linears, modules_to_save=["score"]))
    ids, mask = ids_and_mask(lengths, pad=0, low=3)
    yield dict(name="gemma2_lm", model=Gemma2ForCausalLM(Gemma2Config(**gemma2_kw)),
               backbone="model", inputs=dict(input_ids=ids, attention_mask=mask),
               labels=ids.masked_fill(mask == 0, -100), lora=dict(target_modules=all_linears))
    # Phi-3: fused qkv_proj and gate_up_proj (PEFT adapts each as one layer), grouped-query
    # attention, half of each head rotated. The classifier: a sliding window of 3 positions,
    # left padding. The LM: LongRoPE with original_max_position_embeddings 4, below the 7
    # positions of the batch (the long factors), 3/4 of each head rotated; the top-level
    # original_max_position_embeddings, as Phi-3 checkpoints carry it.
    phi3_kw = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                   initializer_range=0.2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    phi3_targets = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    ids, mask = ids_and_mask(lengths, pad=0, low=3, left=True)
    yield dict(name="phi3", model=Phi3ForSequenceClassification(Phi3Config(
                   num_labels=3, sliding_window=3, partial_rotary_factor=0.5, **phi3_kw)),
               backbone="model", inputs=dict(input_ids=ids, attention_mask=mask), labels=torch.tensor([2, 1, 0]),
               lora=dict(target_modules=phi3_targets, modules_to_save=["score"]))
    ids, mask = ids_and_mask(lengths, pad=0, low=3)
    longrope = dict(rope_type="longrope", short_factor=[1.0, 1.5, 2.0], long_factor=[2.0, 5.0, 11.0])
    yield dict(name="phi3_lm", model=Phi3ForCausalLM(Phi3Config(
                   original_max_position_embeddings=4, partial_rotary_factor=0.75, rope_scaling=longrope,
                   **phi3_kw)),
               backbone="model", inputs=dict(input_ids=ids, attention_mask=mask),
               labels=ids.masked_fill(mask == 0, -100), lora=dict(target_modules=phi3_targets))


def loraplus_name(peft_name):
    n = peft_name.removeprefix("base_model.model.")
    n = n.replace(".modules_to_save.default.", ".").replace(".default.", ".").replace(".base_layer.", ".")
    if n.endswith(".default"):
        n = n[: -len(".default")]
    return n


def main(out):
    torch.manual_seed(0)
    for case in cases():
        d = os.path.join(out, case["name"])
        os.makedirs(d, exist_ok=True)
        model = case["model"]
        perturb(model)
        model.eval()
        kw = {"max_shard_size": "20KB"} if case.get("sharded") else {}
        model.save_pretrained(os.path.join(d, "model"), safe_serialization=True, **kw)
        inputs = case["inputs"]
        save_file({**{k: v.contiguous() for k, v in inputs.items()}, "labels": case["labels"]},
                  os.path.join(d, "inputs.safetensors"))
        with torch.no_grad():
            out_plain = model(**inputs)
            hidden = getattr(model, case["backbone"])(**inputs).last_hidden_state
        save_file({"logits": out_plain.logits.contiguous(), "hidden": hidden.contiguous()},
                  os.path.join(d, "reference.safetensors"))
        if case.get("half"):
            # The checkpoint loaded in bf16 and f16 by transformers, same inputs.
            half = {}
            for dtype, key in ((torch.bfloat16, "bf16"), (torch.float16, "f16")):
                m = type(model).from_pretrained(os.path.join(d, "model"), dtype=dtype).eval()
                with torch.no_grad():
                    half[key] = m(**inputs).logits.float().contiguous()
            save_file(half, os.path.join(d, "half_logits.safetensors"))

        lora = dict(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False)
        lora.update(case["lora"])
        peft_model = get_peft_model(model, LoraConfig(**lora))
        if case.get("perturb_base_layers"):
            with torch.no_grad():
                for name, p in peft_model.named_parameters():
                    if "base_layer" in name and ("embed_tokens" in name or "lm_head" in name):
                        p.add_(torch.randn_like(p) * 0.3)
        if case.get("perturb_saved"):
            with torch.no_grad():
                for name, p in peft_model.named_parameters():
                    if "modules_to_save" in name:
                        p.add_(torch.randn_like(p) * 0.3)
        peft_model.eval()
        peft_model.save_pretrained(os.path.join(d, "adapter"))
        result = peft_model(**inputs, labels=case["labels"])
        result.loss.backward()
        logits = result.logits.detach()
        if logits.dim() == 1:  # DebertaV2ForSequenceClassification flattens regression logits
            logits = logits.unsqueeze(-1)
        tensors = {"logits": logits.contiguous(), "loss": result.loss.detach().reshape(1)}
        for name, p in peft_model.named_parameters():
            if p.requires_grad:
                tensors["grad." + loraplus_name(name)] = p.grad.contiguous()
        save_file(tensors, os.path.join(d, "peft.safetensors"))
        with open(os.path.join(d, "trainable.json"), "w") as f:
            json.dump(sorted(k[5:] for k in tensors if k.startswith("grad.")), f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
