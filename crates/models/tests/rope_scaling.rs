//! RoPE scaling (`linear`, `dynamic`, `llama3`, `yarn`, `longrope`) against transformers on tiny random
//! Llama checkpoints that `tests/reference/rope.py` builds: logits under right padding (f32,
//! CPU, 1e-4) and greedy generation with the KV cache, token for token (dynamic RoPE's
//! frequencies change as the sequence grows past `max_position_embeddings`, LongRoPE's past
//! `original_max_position_embeddings`). The same harness checks configs read as transformers reads
//! them: a top-level `original_max_position_embeddings`, `rope_scaling` beside
//! `rope_parameters`, Gemma's legacy `hidden_act: "gelu"`,
//! and a tied config whose checkpoint holds an `lm_head.weight` of its own.

mod common;

use std::path::Path;
use std::sync::OnceLock;

use common::{assert_close, masked_positions, read};
use loraplus_models::{GenerationConfig, Head, LoadOptions, TaskModel};

const TOL: f64 = 1e-4;

fn fixtures() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        common::run_reference("rope.py", &[dir.path()]);
        dir
    })
    .path()
}

fn parity(case: &str) {
    let dir = fixtures().join(case);
    let opts = LoadOptions {
        task: Head::CausalLm,
        ..Default::default()
    };
    let (model, _lora) = TaskModel::load(&dir.join("model"), &opts).unwrap();
    let x = read(&dir.join("inputs.safetensors"));
    let reference = read(&dir.join("reference.safetensors"));
    let (ids, mask) = (&x["input_ids"], &x["attention_mask"]);
    let logits = tch::no_grad(|| model.forward_t(ids, mask, None, false).unwrap());
    assert_close(
        &format!("{case} logits"),
        &masked_positions(&logits, mask),
        &masked_positions(&reference["logits"], mask),
        TOL,
    );
    let text = std::fs::read_to_string(dir.join("expected.json")).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
    let prompts: Vec<Vec<i64>> = serde_json::from_value(expected["prompts"].clone()).unwrap();
    let want: Vec<Vec<i64>> = serde_json::from_value(expected["generated"].clone()).unwrap();
    let cfg = GenerationConfig {
        max_new_tokens: expected["max_new_tokens"].as_u64().unwrap() as usize,
        pad_token_id: Some(0),
        ..Default::default()
    };
    assert_eq!(model.generate(&prompts, &cfg).unwrap(), want, "{case}");
}

#[test]
fn linear_rope_matches_transformers() {
    parity("linear");
}

#[test]
fn dynamic_rope_past_max_positions_matches_transformers() {
    parity("dynamic");
}

#[test]
fn llama3_rope_matches_transformers() {
    parity("llama3");
}

#[test]
fn yarn_rope_matches_transformers() {
    parity("yarn");
}

#[test]
fn longrope_short_and_long_factors_match_transformers() {
    parity("longrope");
}

/// A top-level `original_max_position_embeddings` wins over `rope_parameters`' own, as
/// transformers' `standardize_rope_params` has it (the value read decides which frequencies
/// llama3 scales).
#[test]
fn llama3_top_level_original_max_positions_win() {
    parity("llama3_top_level");
}

/// ... and stands in for a missing one (yarn's factor and ramp depend on it).
#[test]
fn yarn_top_level_original_max_positions_are_read() {
    parity("yarn_top_level");
}

/// A Gemma config with the official releases' `hidden_act: "gelu"` computes the tanh GELU, as
/// transformers reads it.
/// A config with rope_parameters and the older rope_scaling both: transformers takes
/// rope_scaling whole (base and all), then the top-level original_max_position_embeddings.
#[test]
fn rope_scaling_replaces_rope_parameters_as_in_transformers() {
    parity("scaling_over_parameters");
}

#[test]
fn gemma_legacy_gelu_is_the_tanh_approximation() {
    parity("gemma_legacy_gelu");
}

/// A config that ties `lm_head` to the embeddings, and a checkpoint whose `lm_head.weight` has
/// other values: the stored head is used, as transformers 5 does.
#[test]
fn a_stored_lm_head_unlike_the_tied_table_is_used() {
    parity("tied_stray_lm_head");
}
