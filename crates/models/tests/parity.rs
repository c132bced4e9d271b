//! Parity with transformers and PEFT on tiny random BERT, RoBERTa, GPT-2, Llama, Qwen2, Qwen3,
//! Mistral, Gemma, Gemma 2, Gemma 3, Phi-3, SmolLM3, OLMo 2, OLMo 3 and ModernBERT models that `tests/reference/fixtures.py`
//! builds (no download; the Llama sequence
//! classifier is saved sharded). Every comparison is on CPU in f32 and must agree within 1e-4.
//! Every registered architecture must have a case here.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{assert_close, masked_positions, read, run_reference};
use loraplus_core::read_adapter_config;
use loraplus_models::{supported_model_types, Head, LoadOptions, ModelConfig, TaskModel};
use tch::{Kind, Tensor};

const TOL: f64 = 1e-4;

fn fixtures() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        run_reference("fixtures.py", &[dir.path()]);
        dir
    })
    .path()
}

fn task(case: &str) -> Head {
    match case {
        "bert" => Head::SequenceClassification { num_labels: 3 },
        "roberta" => Head::SequenceClassification { num_labels: 2 },
        "gpt2" => Head::SequenceClassification { num_labels: 1 },
        "llama" => Head::SequenceClassification { num_labels: 3 },
        "qwen2" => Head::SequenceClassification { num_labels: 3 },
        "qwen3" => Head::SequenceClassification { num_labels: 3 },
        "smollm3" => Head::SequenceClassification { num_labels: 3 },
        "olmo2" => Head::SequenceClassification { num_labels: 3 },
        "olmo3" => Head::SequenceClassification { num_labels: 3 },
        "mistral" => Head::SequenceClassification { num_labels: 2 },
        "gemma" => Head::SequenceClassification { num_labels: 3 },
        "gemma2" => Head::SequenceClassification { num_labels: 3 },
        "gemma3" => Head::SequenceClassification { num_labels: 3 },
        "phi3" => Head::SequenceClassification { num_labels: 3 },
        "gpt2_lm"
        | "llama_lm"
        | "qwen2_lm"
        | "qwen3_lm"
        | "smollm3_lm"
        | "olmo2_lm"
        | "olmo3_lm"
        | "mistral_lm"
        | "gemma_lm"
        | "gemma2_lm"
        | "gemma3_lm"
        | "phi3_lm"
        | "qwen2_lm_saved_table"
        | "qwen2_lm_saved_table_tied"
        | "llama_lm_embedding_layers" => Head::CausalLm,
        "deberta_v2" => Head::SequenceClassification { num_labels: 3 },
        "modernbert" => Head::SequenceClassification { num_labels: 3 },
        "modernbert_mean" => Head::SequenceClassification { num_labels: 1 },
        "deberta_v2_reg" => Head::SequenceClassification { num_labels: 1 },
        "deberta_v2_norel" => Head::SequenceClassification { num_labels: 2 },
        other => panic!("unknown case {other}"),
    }
}

struct Inputs {
    ids: Tensor,
    mask: Tensor,
    token_types: Option<Tensor>,
    labels: Tensor,
}

fn inputs(dir: &Path) -> Inputs {
    let mut t = read(&dir.join("inputs.safetensors"));
    Inputs {
        ids: t.remove("input_ids").unwrap(),
        mask: t.remove("attention_mask").unwrap(),
        token_types: t.remove("token_type_ids"),
        labels: t.remove("labels").unwrap(),
    }
}

fn case_dir(case: &str) -> PathBuf {
    fixtures().join(case)
}

/// Logits compared where they exist: all of a classifier's, the non-padding positions of a LM's.
fn comparable(logits: &Tensor, mask: &Tensor, head: Head) -> Tensor {
    match head {
        Head::CausalLm => masked_positions(logits, mask),
        Head::SequenceClassification { .. } => logits.shallow_clone(),
    }
}

/// The plain model (no LoRA) against transformers: logits and last hidden states.
fn plain_parity(case: &str) {
    let dir = case_dir(case);
    let x = inputs(&dir);
    let head = task(case);
    let opts = LoadOptions {
        task: head,
        ..Default::default()
    };
    let (model, _lora) = TaskModel::load(&dir.join("model"), &opts).unwrap();
    assert!(
        model.initialised_modules().is_empty(),
        "{:?}",
        model.initialised_modules()
    );
    assert!(
        model.unused_weights().is_empty(),
        "{:?}",
        model.unused_weights()
    );
    let reference = read(&dir.join("reference.safetensors"));
    let _guard = tch::no_grad_guard();
    let logits = model
        .forward_t(&x.ids, &x.mask, x.token_types.as_ref(), false)
        .unwrap();
    let hidden = model
        .encode(&x.ids, &x.mask, x.token_types.as_ref(), false)
        .unwrap();
    assert!(
        common::max_abs(&reference["logits"]) > 0.1,
        "reference logits are too small to tell anything"
    );
    assert_close(
        &format!("{case} logits"),
        &comparable(&logits, &x.mask, head),
        &comparable(&reference["logits"], &x.mask, head),
        TOL,
    );
    assert_close(
        &format!("{case} hidden states (non-padding positions)"),
        &masked_positions(&hidden, &x.mask),
        &masked_positions(&reference["hidden"], &x.mask),
        TOL,
    );
}

/// LoRA from PEFT's adapter files: logits, loss and the gradient of every trainable tensor.
fn lora_parity(case: &str) {
    let dir = case_dir(case);
    let x = inputs(&dir);
    let head = task(case);
    let cfg = read_adapter_config(&dir.join("adapter")).unwrap();
    let opts = LoadOptions {
        task: head,
        lora: Some(cfg),
        ..Default::default()
    };
    let (model, lora) = TaskModel::load(&dir.join("model"), &opts).unwrap();
    lora.load_adapter(&dir.join("adapter")).unwrap();
    let peft = read(&dir.join("peft.safetensors"));

    let names: BTreeSet<String> = lora
        .trainable_params()
        .iter()
        .map(|p| p.name.clone())
        .collect();
    let expected: BTreeSet<String> = peft
        .keys()
        .filter_map(|k| k.strip_prefix("grad.").map(String::from))
        .collect();
    assert_eq!(
        names, expected,
        "{case}: trainable tensors differ from PEFT's"
    );

    let logits = model
        .forward_t(&x.ids, &x.mask, x.token_types.as_ref(), false)
        .unwrap();
    let loss = model.loss(&logits, &x.labels).unwrap();
    loss.backward();
    assert_close(
        &format!("{case} LoRA logits"),
        &comparable(&logits.detach(), &x.mask, head),
        &comparable(&peft["logits"], &x.mask, head),
        TOL,
    );
    assert_close(
        &format!("{case} LoRA loss"),
        &loss.detach().view([1]),
        &peft["loss"],
        TOL,
    );
    let mut worst = 0f64;
    for p in lora.trainable_params() {
        let grad = p.tensor.grad();
        assert!(grad.defined(), "{case}: {} has no gradient", p.name);
        let reference = &peft[&format!("grad.{}", p.name)];
        let d = common::max_abs_diff(&grad, reference);
        assert!(d <= TOL, "{case}: gradient of {} differs by {d:e}", p.name);
        worst = worst.max(d);
    }
    println!(
        "{case} LoRA gradients ({} tensors): max |diff| = {worst:.3e}",
        names.len()
    );
}

#[test]
fn bert_matches_transformers() {
    plain_parity("bert");
}

#[test]
fn roberta_matches_transformers() {
    plain_parity("roberta");
}

#[test]
fn gpt2_regression_matches_transformers() {
    plain_parity("gpt2");
}

#[test]
fn gpt2_lm_matches_transformers() {
    plain_parity("gpt2_lm");
}

#[test]
fn llama_sharded_left_padded_matches_transformers() {
    assert!(case_dir("llama")
        .join("model/model.safetensors.index.json")
        .is_file());
    plain_parity("llama");
}

#[test]
fn llama_lm_matches_transformers() {
    plain_parity("llama_lm");
}

#[test]
fn bert_lora_matches_peft() {
    lora_parity("bert");
}

#[test]
fn roberta_lora_with_embedding_adapter_matches_peft() {
    lora_parity("roberta");
}

#[test]
fn gpt2_lora_fan_in_fan_out_bias_matches_peft() {
    lora_parity("gpt2");
}

#[test]
fn gpt2_lm_lora_matches_peft() {
    lora_parity("gpt2_lm");
}

#[test]
fn llama_lora_all_projections_matches_peft() {
    lora_parity("llama");
}

#[test]
fn llama_lm_lora_rslora_matches_peft() {
    lora_parity("llama_lm");
}

#[test]
fn qwen2_qkv_bias_left_padded_matches_transformers() {
    plain_parity("qwen2");
}

#[test]
fn qwen2_lm_tied_matches_transformers() {
    plain_parity("qwen2_lm");
}

#[test]
fn qwen3_qk_norm_biases_left_padded_matches_transformers() {
    plain_parity("qwen3");
}

#[test]
fn qwen3_lm_tied_matches_transformers() {
    plain_parity("qwen3_lm");
}

#[test]
fn qwen3_lora_all_linears_matches_peft() {
    lora_parity("qwen3");
}

#[test]
fn qwen3_lm_lora_matches_peft() {
    lora_parity("qwen3_lm");
}

/// SmolLM3: a layer without RoPE (NoPE), left padded; tied LM head.
#[test]
fn smollm3_nope_layer_matches_transformers_and_peft() {
    for case in ["smollm3", "smollm3_lm"] {
        plain_parity(case);
        lora_parity(case);
    }
}

/// OLMo 2: post-norms only, query and key norms over the whole projections (with biases for
/// classification, left padded); untied LM head.
#[test]
fn olmo2_post_norms_match_transformers_and_peft() {
    for case in ["olmo2", "olmo2_lm"] {
        plain_parity(case);
        lora_parity(case);
    }
}

/// OLMo 3: OLMo 2's layers, two sliding (window 3) on their own RoPE, one full and scaled
/// (flat keys), left padded for classification.
#[test]
fn olmo3_sliding_layers_match_transformers_and_peft() {
    for case in ["olmo3", "olmo3_lm"] {
        plain_parity(case);
        lora_parity(case);
    }
}

#[test]
fn mistral_sliding_window_left_padded_matches_transformers() {
    plain_parity("mistral");
}

#[test]
fn mistral_lm_sliding_window_matches_transformers() {
    plain_parity("mistral_lm");
}

#[test]
fn qwen2_lora_all_linears_matches_peft() {
    lora_parity("qwen2");
}

#[test]
fn qwen2_lm_lora_matches_peft() {
    lora_parity("qwen2_lm");
}

#[test]
fn mistral_lora_all_linears_matches_peft() {
    lora_parity("mistral");
}

#[test]
fn mistral_lm_lora_matches_peft() {
    lora_parity("mistral_lm");
}

/// Gemma 3: query and key norms, two sliding layers on their own RoPE base and a full one
/// with linear scaling (the older flat config keys).
#[test]
fn gemma3_sliding_local_rope_left_padded_matches_transformers() {
    plain_parity("gemma3");
}

#[test]
fn gemma3_lm_matches_transformers() {
    plain_parity("gemma3_lm");
}

#[test]
fn gemma3_lora_all_linears_matches_peft() {
    lora_parity("gemma3");
}

#[test]
fn gemma3_lm_lora_matches_peft() {
    lora_parity("gemma3_lm");
}

#[test]
fn gemma_head_dim_left_padded_matches_transformers() {
    plain_parity("gemma");
}

#[test]
fn gemma_lm_tied_matches_transformers() {
    plain_parity("gemma_lm");
}

#[test]
fn gemma_lora_all_linears_matches_peft() {
    lora_parity("gemma");
}

#[test]
fn gemma_lm_lora_matches_peft() {
    lora_parity("gemma_lm");
}

/// Soft-capped attention scores, query_pre_attn_scalar, four norms per layer, the last layer
/// sliding (window 3 < 7 positions) under right padding: the one row per sequence that layer
/// computes (the last token, at positions 6, 3, 1) sees only its window.
#[test]
fn gemma2_sliding_softcap_right_padded_matches_transformers() {
    plain_parity("gemma2");
}

/// The LM logits soft-capped as well.
#[test]
fn gemma2_lm_final_softcap_matches_transformers() {
    plain_parity("gemma2_lm");
}

#[test]
fn gemma2_lora_all_linears_matches_peft() {
    lora_parity("gemma2");
}

#[test]
fn gemma2_lm_lora_matches_peft() {
    lora_parity("gemma2_lm");
}

/// Fused qkv_proj, partial rotary (1/2), a sliding window of 3 under left padding.
#[test]
fn phi3_partial_rotary_sliding_window_left_padded_matches_transformers() {
    plain_parity("phi3");
}

/// LongRoPE past original_max_position_embeddings (4 < 7 positions), 3/4 of each head rotated.
#[test]
fn phi3_lm_longrope_partial_rotary_matches_transformers() {
    plain_parity("phi3_lm");
}

/// One adapter on each fused layer (qkv_proj, gate_up_proj), as PEFT.
#[test]
fn phi3_lora_fused_projections_matches_peft() {
    lora_parity("phi3");
}

#[test]
fn phi3_lm_lora_longrope_matches_peft() {
    lora_parity("phi3_lm");
}

#[test]
fn deberta_v2_buckets_shared_keys_matches_transformers() {
    plain_parity("deberta_v2");
}

#[test]
fn deberta_v2_lora_on_shared_keys_matches_peft() {
    lora_parity("deberta_v2");
}

#[test]
fn deberta_v2_regression_pos_projections_matches_transformers() {
    plain_parity("deberta_v2_reg");
}

#[test]
fn deberta_v2_regression_lora_matches_peft() {
    lora_parity("deberta_v2_reg");
}

/// `relative_attention` off with `pos_att_type` set still scales the scores by
/// `sqrt(3 * head_dim)`, as transformers does.
#[test]
fn deberta_v2_without_relative_attention_matches_transformers() {
    plain_parity("deberta_v2_norel");
}

#[test]
fn deberta_v2_without_relative_attention_lora_matches_peft() {
    lora_parity("deberta_v2_norel");
}

/// A tied table in modules_to_save without PEFT's ensure_weight_tying: the embedding's own
/// copy is trained and lm_head keeps the base table, as PEFT does (both sides used the saved
/// table before).
#[test]
fn qwen2_saved_table_without_tying_matches_peft() {
    plain_parity("qwen2_lm_saved_table");
    lora_parity("qwen2_lm_saved_table");
    // The head's own table is a base parameter (a merged export writes it), and the model says
    // it is untied (the merged config unties it).
    let dir = case_dir("qwen2_lm_saved_table");
    let opts = LoadOptions {
        task: Head::CausalLm,
        lora: Some(read_adapter_config(&dir.join("adapter")).unwrap()),
        ..Default::default()
    };
    let (model, lora) = TaskModel::load(&dir.join("model"), &opts).unwrap();
    assert!(model.untied_head());
    assert!(
        lora.base_params().any(|(name, _)| name == "lm_head.weight"),
        "lm_head.weight is not among the base parameters"
    );
}

/// ... and with it, one table on both sides, trained once.
#[test]
fn qwen2_saved_table_with_tying_matches_peft() {
    plain_parity("qwen2_lm_saved_table_tied");
    lora_parity("qwen2_lm_saved_table_tied");
}

/// LoRA on the embedding and lm_head: the adapter holds their base layers too (PEFT's
/// `save_embedding_layers`), which load into the base as PEFT loads them (they were refused).
#[test]
fn llama_embedding_layers_saved_with_the_adapter_load_as_in_peft() {
    lora_parity("llama_lm_embedding_layers");
}

/// ModernBERT: fused Wqkv, two sliding layers (a window of 2 keys each side) and a full one on
/// their own RoPE bases, cls pooling through the masked-LM-style head.
#[test]
fn modernbert_sliding_cls_matches_transformers_and_peft() {
    plain_parity("modernbert");
    lora_parity("modernbert");
}

/// ModernBERT in bf16 and f16: the logits equal transformers' bit for bit (queries and keys
/// are rotated in f32 there, with tables in the model dtype).
#[test]
fn modernbert_half_precision_logits_equal_transformers() {
    let dir = case_dir("modernbert");
    let x = inputs(&dir);
    let reference = read(&dir.join("half_logits.safetensors"));
    for (kind, key) in [(Kind::BFloat16, "bf16"), (Kind::Half, "f16")] {
        let opts = LoadOptions {
            task: task("modernbert"),
            dtype: kind,
            ..Default::default()
        };
        let (model, _lora) = TaskModel::load(&dir.join("model"), &opts).unwrap();
        let logits = tch::no_grad(|| {
            model
                .forward_t(&x.ids, &x.mask, x.token_types.as_ref(), false)
                .unwrap()
        });
        let d = common::max_abs_diff(&logits.to_kind(Kind::Float), &reference[key]);
        assert_eq!(
            d, 0.0,
            "modernbert {key}: logits differ from transformers' by {d:e}"
        );
    }
}

/// ModernBERT regression: mean pooling over the unpadded tokens, every bias on, per-type
/// rope_parameters with linear scaling on the full layer.
#[test]
fn modernbert_mean_pooling_biases_matches_transformers_and_peft() {
    plain_parity("modernbert_mean");
    lora_parity("modernbert_mean");
}

/// The cases the tests above run, each with plain and LoRA parity.
const CASES: &[&str] = &[
    "bert",
    "roberta",
    "gpt2",
    "gpt2_lm",
    "llama",
    "llama_lm",
    "qwen2",
    "qwen2_lm",
    "qwen3",
    "qwen3_lm",
    "smollm3",
    "smollm3_lm",
    "olmo2",
    "olmo2_lm",
    "olmo3",
    "olmo3_lm",
    "mistral",
    "mistral_lm",
    "gemma",
    "gemma_lm",
    "gemma2",
    "gemma2_lm",
    "gemma3",
    "gemma3_lm",
    "phi3",
    "phi3_lm",
    "deberta_v2",
    "deberta_v2_reg",
    "deberta_v2_norel",
    "modernbert",
    "modernbert_mean",
    "qwen2_lm_saved_table",
    "qwen2_lm_saved_table_tied",
    "llama_lm_embedding_layers",
];

/// Every registered `model_type` has a transformers checkpoint among the cases, for both
/// heads when it is a decoder.
#[test]
fn every_registered_architecture_has_a_parity_case() {
    let mut covered = BTreeSet::new();
    for case in CASES {
        let config = ModelConfig::from_file(case_dir(case).join("model/config.json")).unwrap();
        covered.insert((config.model_type(), task(case) == Head::CausalLm));
    }
    for model_type in supported_model_types() {
        let config = ModelConfig::from_json_str(&format!(r#"{{"model_type": "{model_type}"}}"#))
            .unwrap_or_else(|e| panic!("{model_type} with default config: {e:#}"));
        assert!(
            covered.contains(&(model_type, false)),
            "{model_type}: no sequence-classification parity case"
        );
        if config.arch().causal_lm() {
            assert!(
                covered.contains(&(model_type, true)),
                "{model_type}: no causal-LM parity case"
            );
        }
    }
}
