//! Causal-LM fine-tuning and inference against transformers + PEFT on tiny random Llama
//! (grouped-query attention), GPT-2, Qwen2 (q/k/v biases, tied head), Qwen3 (query and key
//! norms), SmolLM3 (a layer without RoPE), OLMo 2 (post-norms), OLMo 3 (its sliding layers) and Mistral (sliding
//! window), Gemma, Gemma 2 (soft-capping, alternating sliding window), Gemma 3 (query and key norms, a RoPE per layer type) and Phi-3 (fused projections, partial rotary, LongRoPE switching factors
//! within the test's lengths) checkpoints that `tests/reference/causal_lm.py` builds
//! (one Python run for this binary):
//! - SFT loss, logits and every LoRA gradient with prompts masked (-100), right padding, left
//!   padding (with and without position ids) and packed rows (position ids restarting per
//!   document), with activation checkpointing off and on;
//! - greedy generation with the adapter unmerged and merged, KV cache or not; seeded sampling;
//! - continuation log-probabilities (lm-eval-harness' `loglikelihood`);
//! - bad inputs refused with a message that says what is wrong.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{assert_close, masked_positions, read};
use loraplus_core::{read_adapter_config, LoraModel};
use loraplus_models::{GenerationConfig, Head, LoadOptions, ModelInputs, TaskModel};
use tch::{Device, Kind, Tensor};

/// Agreement asked of the SFT losses, logits, gradients and the log-probabilities (f32, CPU).
const TOL: f64 = 1e-5;

fn fixtures() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        common::run_reference("causal_lm.py", &[dir.path()]);
        dir
    })
    .path()
}

fn case_dir(case: &str) -> PathBuf {
    fixtures().join(case)
}

/// The fixture model of `case` with its PEFT adapter loaded (unmerged).
fn load(case: &str, head: Head) -> (TaskModel, LoraModel) {
    let dir = case_dir(case);
    let opts = LoadOptions {
        task: head,
        lora: Some(read_adapter_config(&dir.join("adapter")).unwrap()),
        ..Default::default()
    };
    let (model, lora) = TaskModel::load(&dir.join("model"), &opts).unwrap();
    lora.load_adapter(&dir.join("adapter")).unwrap();
    (model, lora)
}

fn expected(case: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(case_dir(case).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn rows(v: &serde_json::Value) -> Vec<Vec<i64>> {
    serde_json::from_value(v.clone()).unwrap()
}

/// Loss, logits (where the reference has a token) and every LoRA gradient of each SFT variant,
/// checkpointing off and on.
fn sft_parity(case: &str) {
    let (mut model, lora) = load(case, Head::CausalLm);
    for variant in ["right", "left", "left_pos", "packed"] {
        let r = read(&case_dir(case).join(format!("sft_{variant}.safetensors")));
        let ids = &r["input_ids"];
        // Packed rows: transformers takes no attention mask; all ones here.
        let mask = r
            .get("attention_mask")
            .map(Tensor::shallow_clone)
            .unwrap_or_else(|| ids.ones_like());
        let x = ModelInputs::new(ids, &mask).with_position_ids(r.get("position_ids"));
        for checkpointing in [false, true] {
            let what = format!("{case} {variant} checkpointing={checkpointing}");
            model.set_checkpointing(checkpointing);
            let out = model
                .forward_backward_inputs(&x, &r["labels"], true, 1.0)
                .unwrap();
            assert_close(
                &format!("{what}: loss"),
                &out.loss.view([1]),
                &r["loss"],
                TOL,
            );
            assert_close(
                &format!("{what}: logits"),
                &masked_positions(&out.logits, &mask),
                &masked_positions(&r["logits"], &mask),
                TOL,
            );
            let grads = common::take_grads(&lora);
            let mut worst = 0f64;
            for (name, grad) in &grads {
                let reference = r
                    .get(&format!("grad.{name}"))
                    .unwrap_or_else(|| panic!("{what}: PEFT has no gradient for {name}"));
                let d = common::max_abs_diff(grad, reference);
                assert!(d <= TOL, "{what}: gradient of {name} differs by {d:e}");
                assert!(common::max_abs(reference) > 0.0, "{what}: {name} is zero");
                worst = worst.max(d);
            }
            let peft_grads = r.keys().filter(|k| k.starts_with("grad.")).count();
            assert_eq!(grads.len(), peft_grads, "{what}: trainable tensors differ");
            println!(
                "{what}: {} gradients, max |diff| = {worst:.3e}",
                grads.len()
            );
        }
    }
}

#[test]
fn llama_sft_matches_peft() {
    sft_parity("llama");
}

/// Qwen3: query and key norms before the rotary embedding, head_dim of its own, biases.
#[test]
fn qwen3_sft_qk_norm_matches_peft() {
    sft_parity("qwen3");
}

/// SmolLM3: a layer without RoPE.
#[test]
fn smollm3_sft_nope_matches_peft() {
    sft_parity("smollm3");
}

#[test]
fn smollm3_greedy_generation_matches_transformers() {
    generation_parity("smollm3");
}

/// OLMo 2: post-norms only, whole-projection query and key norms.
#[test]
fn olmo2_sft_matches_peft() {
    sft_parity("olmo2");
}

#[test]
fn olmo2_greedy_generation_matches_transformers() {
    generation_parity("olmo2");
}

#[test]
fn olmo2_half_precision_logits_equal_transformers() {
    half_precision_parity("olmo2");
}

/// OLMo 3: a sliding layer on its own RoPE base, a full one scaled.
#[test]
fn olmo3_sft_matches_peft() {
    sft_parity("olmo3");
}

#[test]
fn olmo3_greedy_generation_matches_transformers() {
    generation_parity("olmo3");
}

#[test]
fn qwen2_sft_matches_peft() {
    sft_parity("qwen2");
}

/// Sliding window of 4 positions, shorter than the rows and than the packed documents' span.
#[test]
fn mistral_sft_sliding_window_matches_peft() {
    sft_parity("mistral");
}

#[test]
fn gemma_sft_matches_peft() {
    sft_parity("gemma");
}

/// Layer 0 with a window of 4, shorter than the rows and the packed documents' span; attention
/// scores and logits soft-capped.
#[test]
fn gemma2_sft_sliding_softcap_matches_peft() {
    sft_parity("gemma2");
}

/// Rows of 9 tokens past original_max_position_embeddings (8): the long factors; the packed
/// rows' positions stay below: the short ones.
/// Gemma 3: query and key norms, a sliding layer on its own RoPE base, a full one scaled.
#[test]
fn gemma3_sft_local_rope_matches_peft() {
    sft_parity("gemma3");
}

#[test]
fn phi3_sft_longrope_matches_peft() {
    sft_parity("phi3");
}

#[test]
fn gpt2_sft_matches_peft() {
    sft_parity("gpt2");
}

/// Packed rows equal the documents run one by one: the mask keeps each to its document.
#[test]
fn packed_row_equals_separate_documents() {
    let (model, _lora) = load("llama", Head::CausalLm);
    let _guard = tch::no_grad_guard();
    let docs: [&[i64]; 3] = [&[5, 9, 11, 4], &[7, 8], &[3, 30, 31]];
    let flat: Vec<i64> = docs.concat();
    let pos: Vec<i64> = docs
        .iter()
        .flat_map(|d| 0..d.len() as i64)
        .collect::<Vec<_>>();
    let n = flat.len() as i64;
    let ids = Tensor::from_slice(&flat).view([1, n]);
    let pos = Tensor::from_slice(&pos).view([1, n]);
    let mask = ids.ones_like();
    let x = ModelInputs::new(&ids, &mask).with_position_ids(Some(&pos));
    let packed = model.forward_inputs(&x, false).unwrap();
    let mut at = 0;
    for d in docs {
        let len = d.len() as i64;
        let ids = Tensor::from_slice(d).view([1, len]);
        let alone = model
            .forward_t(&ids, &ids.ones_like(), None, false)
            .unwrap();
        assert_close(
            &format!("document at {at}"),
            &packed.narrow(1, at, len),
            &alone,
            TOL,
        );
        at += len;
    }
}

fn generation_parity(case: &str) {
    let e = expected(case);
    let prompts = rows(&e["prompts"]);
    let eos: Vec<i64> = serde_json::from_value(e["eos"].clone()).unwrap();
    let max_new = e["max_new_tokens"].as_u64().unwrap() as usize;
    let (model, lora) = load(case, Head::CausalLm);
    let mut cfg = GenerationConfig::greedy(max_new, &eos);
    cfg.pad_token_id = Some(0);
    for (adapter, key) in [("unmerged", "unmerged"), ("merged", "merged")] {
        if adapter == "merged" {
            lora.merge(true).unwrap();
        }
        let want = rows(&e[key]);
        assert!(
            want.iter().any(|r| r.len() < max_new) && want.iter().any(|r| r.len() == max_new),
            "{case}: the fixture should have one row stopping at EOS and one running to the end"
        );
        for use_cache in [true, false] {
            cfg.use_cache = use_cache;
            let got = model.generate(&prompts, &cfg).unwrap();
            assert_eq!(
                got, want,
                "{case} {adapter} use_cache={use_cache}: tokens differ from transformers"
            );
        }
        println!("{case} {adapter}: {want:?} as transformers");
    }
    lora.unmerge().unwrap();
    // Without EOS every row runs max_new_tokens.
    let free = model
        .generate(&prompts, &GenerationConfig::greedy(max_new, &[]))
        .unwrap();
    assert_eq!(free, rows(&e["unmerged_no_eos"]), "{case}: without EOS");
    // One prompt alone (no padding) as transformers, and as in the batch, except under
    // LongRoPE (Phi-3), whose factors switch with the batch's length.
    // The repetition penalty, each prompt as transformers gives it alone, in one batch here.
    let penalized = GenerationConfig {
        repetition_penalty: e["repetition_penalty"].as_f64().unwrap(),
        ..GenerationConfig::greedy(max_new, &[])
    };
    let want = rows(&e["unmerged_repetition_penalty"]);
    assert_ne!(
        want,
        rows(&e["unmerged_no_eos"]),
        "{case}: the penalty changes nothing"
    );
    for use_cache in [true, false] {
        let cfg = GenerationConfig {
            use_cache,
            ..penalized.clone()
        };
        // LongRoPE (Phi-3) switches its factors with the batch's length: one prompt at a time.
        let got: Vec<Vec<i64>> = if case == "phi3" {
            prompts
                .iter()
                .map(|p| {
                    model
                        .generate(std::slice::from_ref(p), &cfg)
                        .unwrap()
                        .remove(0)
                })
                .collect()
        } else {
            model.generate(&prompts, &cfg).unwrap()
        };
        assert_eq!(
            got, want,
            "{case}: repetition penalty, use_cache={use_cache}"
        );
    }
    // Past max_position_embeddings (rotary models): transformers generates on, and so does this.
    if let Some(past) = e.get("past_positions") {
        let prompt: Vec<i64> = serde_json::from_value(past["prompt"].clone()).unwrap();
        for use_cache in [true, false] {
            let cfg = GenerationConfig {
                use_cache,
                ..GenerationConfig::greedy(max_new, &[])
            };
            let got = model.generate(std::slice::from_ref(&prompt), &cfg).unwrap();
            assert_eq!(
                got[0],
                rows(&serde_json::json!([past["tokens"]]))[0],
                "{case}: a prompt past max_position_embeddings, use_cache={use_cache}"
            );
        }
    } else {
        assert_eq!(case, "gpt2", "{case}: no long-prompt reference");
    }
    let alone = model.generate(&prompts[1..2], &cfg).unwrap();
    assert_eq!(alone, rows(&e["unmerged_alone"]), "{case}: prompt alone");
    if case != "phi3" {
        assert_eq!(alone[0], rows(&e["unmerged"])[1], "{case}: prompt alone");
    }
}

#[test]
fn llama_greedy_generation_matches_transformers() {
    generation_parity("llama");
}

#[test]
fn qwen3_greedy_generation_matches_transformers() {
    generation_parity("qwen3");
}

#[test]
fn qwen2_greedy_generation_matches_transformers() {
    generation_parity("qwen2");
}

/// Prompts and generated tokens reach past the window of 4: the cache keeps every key, the
/// step mask keeps each query to the window.
#[test]
fn mistral_greedy_generation_sliding_window_matches_transformers() {
    generation_parity("mistral");
}

#[test]
fn gemma_greedy_generation_matches_transformers() {
    generation_parity("gemma");
}

/// Prompts and generated tokens reach past layer 0's window of 4 (the step mask of that layer
/// only keeps each query to the window).
#[test]
fn gemma2_greedy_generation_matches_transformers() {
    generation_parity("gemma2");
}

/// Prompts of 7 positions, 8 new tokens: the sequence crosses original_max_position_embeddings
/// (8) while decoding, where the cached keys are dropped and the sequence run again with the
/// long factors, as transformers' Phi-3 does.
#[test]
fn gemma3_greedy_generation_matches_transformers() {
    generation_parity("gemma3");
}

#[test]
fn gemma3_half_precision_logits_equal_transformers() {
    half_precision_parity("gemma3");
}

#[test]
fn phi3_greedy_generation_longrope_crossing_matches_transformers() {
    generation_parity("phi3");
}

#[test]
fn gpt2_greedy_generation_matches_transformers() {
    generation_parity("gpt2");
}

#[test]
fn seeded_sampling_is_reproducible() {
    let (model, _lora) = load("llama", Head::CausalLm);
    let prompts = rows(&expected("llama")["prompts"]);
    let greedy = model
        .generate(&prompts, &GenerationConfig::greedy(6, &[]))
        .unwrap();
    let sample = |seed, use_cache, top_k, top_p| {
        let cfg = GenerationConfig {
            max_new_tokens: 6,
            do_sample: true,
            temperature: 1.5,
            top_k,
            top_p,
            seed: Some(seed),
            use_cache,
            ..Default::default()
        };
        model.generate(&prompts, &cfg).unwrap()
    };
    let a = sample(11, true, 0, 1.0);
    assert_eq!(a, sample(11, true, 0, 1.0), "same seed, other tokens");
    assert_eq!(
        a,
        sample(11, false, 0, 1.0),
        "the KV cache changed the sample"
    );
    assert_ne!(a, sample(12, true, 0, 1.0), "another seed, the same tokens");
    assert_ne!(
        a, greedy,
        "sampling at temperature 1.5 gave the greedy tokens"
    );
    // top_k = 1, or a top_p below every probability, leaves only the highest logit.
    assert_eq!(sample(5, true, 1, 1.0), greedy, "top_k = 1 is greedy");
    assert_eq!(sample(5, true, 0, 1e-6), greedy, "top_p ~ 0 is greedy");
    // Top-k and top-p restrict the tokens drawn: each sampled token is among the k best.
    let b = sample(3, true, 3, 0.9);
    assert_eq!(b, sample(3, false, 3, 0.9));
    // Each prompt alone, told its row, draws what it drew in the batch; rows differ otherwise.
    let cfg = GenerationConfig {
        max_new_tokens: 6,
        do_sample: true,
        temperature: 1.5,
        top_k: 0,
        seed: Some(11),
        ..Default::default()
    };
    for (i, p) in prompts.iter().enumerate() {
        let alone = model
            .generate(std::slice::from_ref(p), &cfg.starting_at_row(i))
            .unwrap();
        assert_eq!(alone[0], a[i], "prompt {i} alone");
    }
    let first_alone = model.generate(&prompts[1..2], &cfg).unwrap();
    assert_ne!(first_alone[0], a[1], "row 0's draws gave row 1's tokens");
    println!("sampled {a:?}, top-k/top-p {b:?}, greedy {greedy:?}");
}

fn logprob_parity(case: &str) {
    let e = expected(case);
    let items: Vec<(Vec<i64>, Vec<i64>)> = serde_json::from_value(e["items"].clone()).unwrap();
    let want: Vec<f64> = serde_json::from_value(e["logprobs"].clone()).unwrap();
    let (model, _lora) = load(case, Head::CausalLm);
    for batch_size in [2, 8] {
        let got = model.continuation_logprobs(&items, batch_size).unwrap();
        for (i, ((lp, n), w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(*n, items[i].1.len());
            assert!(
                (lp - w).abs() <= TOL,
                "{case} item {i} batch {batch_size}: {lp} vs transformers {w}"
            );
        }
        println!("{case} batch {batch_size}: {got:?}");
    }
}

#[test]
fn llama_continuation_logprobs_match_transformers() {
    logprob_parity("llama");
}

#[test]
fn gpt2_continuation_logprobs_match_transformers() {
    logprob_parity("gpt2");
}

fn err<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.expect_err("should be refused"))
}

fn assert_mentions(message: &str, words: &[&str]) {
    for w in words {
        assert!(message.contains(w), "{message:?} does not say {w:?}");
    }
}

#[test]
fn bad_inputs_are_refused() {
    let (model, _lora) = load("gpt2", Head::CausalLm);
    let ok = vec![vec![5i64, 6, 7]];
    let with = |f: &dyn Fn(&mut GenerationConfig)| {
        let mut c = GenerationConfig::greedy(4, &[2]);
        f(&mut c);
        c
    };
    // (config, prompts, what the message must say)
    type Case = (GenerationConfig, Vec<Vec<i64>>, &'static [&'static str]);
    let cases: Vec<Case> = vec![
        (
            with(&|c| {
                c.do_sample = true;
                c.temperature = 0.0;
            }),
            ok.clone(),
            &["temperature", "> 0", "found 0"],
        ),
        // top_p is checked when sampling (greedy decoding ignores it, as transformers).
        (
            with(&|c| {
                c.do_sample = true;
                c.top_p = 0.0
            }),
            ok.clone(),
            &["top_p", "(0, 1]"],
        ),
        (
            with(&|c| {
                c.do_sample = true;
                c.top_p = 1.5
            }),
            ok.clone(),
            &["top_p", "1.5"],
        ),
        (
            with(&|c| c.max_new_tokens = 0),
            ok.clone(),
            &["max_new_tokens"],
        ),
        (
            with(&|c| c.eos_token_ids = vec![61]),
            ok.clone(),
            &["eos_token_ids", "61", "vocabulary"],
        ),
        (with(&|_| {}), vec![vec![5], vec![]], &["prompt 1 is empty"]),
        (
            with(&|_| {}),
            vec![vec![5, 99]],
            &["prompt 0", "99", "vocabulary"],
        ),
        (
            with(&|_| {}),
            vec![vec![5; 41]],
            &["41 tokens", "40 positions"],
        ),
        (
            with(&|_| {}),
            vec![vec![5; 38]],
            &["max_new_tokens", "at most 2"],
        ),
    ];
    for (cfg, prompts, words) in cases {
        let m = err(model.generate(&prompts, &cfg));
        println!("refused: {m}");
        assert_mentions(&m, words);
    }
    assert!(model
        .generate(&[], &GenerationConfig::default())
        .unwrap()
        .is_empty());

    for (items, batch, words) in [
        (vec![(vec![], vec![4i64])], 1, &["empty context"][..]),
        (vec![(vec![4i64], vec![])], 1, &["empty continuation"]),
        (vec![(vec![4i64], vec![4])], 0, &["batch_size"]),
        (
            vec![(vec![4i64; 30], vec![4; 12])],
            1,
            &["41 positions", "40"],
        ),
    ] {
        let m = err(model.continuation_logprobs(&items, batch));
        println!("refused: {m}");
        assert_mentions(&m, words);
    }

    // Position ids: int64 of the batch's shape, within the positions, causal LM only.
    let ids = Tensor::from_slice(&[5i64, 6, 7]).view([1, 3]);
    let mask = ids.ones_like();
    let too_far = Tensor::from_slice(&[0i64, 1, 40]).view([1, 3]);
    let negative = Tensor::from_slice(&[0i64, -1, 0]).view([1, 3]);
    let short = Tensor::from_slice(&[0i64, 1]).view([1, 2]);
    let float = Tensor::from_slice(&[0f32, 1., 2.]).view([1, 3]);
    for (pos, words) in [
        (&too_far, &["position_ids", "40", "40 positions"][..]),
        (&negative, &["position_ids", ">= 0", "-1"]),
        (&short, &["position_ids", "[1, 2]", "[1, 3]"]),
        (&float, &["position_ids", "int64"]),
    ] {
        let x = ModelInputs::new(&ids, &mask).with_position_ids(Some(pos));
        let m = err(model.forward_inputs(&x, false));
        println!("refused: {m}");
        assert_mentions(&m, words);
    }

    let (classifier, _lora) = load("gpt2", Head::SequenceClassification { num_labels: 2 });
    let m = err(classifier.generate(&ok, &GenerationConfig::default()));
    assert_mentions(&m, &["generate", "causal-LM head"]);
    let m = err(classifier.continuation_logprobs(&[(vec![4], vec![5])], 1));
    assert_mentions(&m, &["continuation_logprobs", "causal-LM head"]);
    let pos = Tensor::arange(3, (Kind::Int64, Device::Cpu)).view([1, 3]);
    let x = ModelInputs::new(&ids, &mask).with_position_ids(Some(&pos));
    let m = err(classifier.forward_inputs(&x, false));
    assert_mentions(&m, &["position_ids", "causal-LM head"]);
}

/// In bf16 (adapters f32) the decoding, scoring and packed paths run and stay finite, and
/// greedy decoding mostly agrees with f32 (no dtype is lost on the way).
/// In bf16 and f16 the base model's logits equal transformers' in the same dtype, bit for bit
/// (the same operations in the same order: GPT-2's Conv1D as one addmm, its gelu_new op by op).
fn half_precision_parity(case: &str) {
    let dir = case_dir(case);
    let want = common::read(&dir.join("half_logits.safetensors"));
    for (kind, key) in [(Kind::BFloat16, "bf16"), (Kind::Half, "f16")] {
        let opts = LoadOptions {
            task: Head::CausalLm,
            dtype: kind,
            ..Default::default()
        };
        let (model, _) = TaskModel::load(&dir.join("model"), &opts).unwrap();
        let ids = &want["input_ids"];
        let logits = tch::no_grad(|| model.forward_t(ids, &ids.ones_like(), None, false).unwrap());
        let got = logits.get(0).to_kind(Kind::Float);
        let d = common::max_abs_diff(&got, &want[key]);
        assert_eq!(
            d, 0.0,
            "{case} {key}: logits differ from transformers' by {d:e}"
        );
    }
}

#[test]
fn gpt2_half_precision_logits_equal_transformers() {
    half_precision_parity("gpt2");
}

#[test]
fn qwen3_half_precision_logits_equal_transformers() {
    half_precision_parity("qwen3");
}

/// The other decoders, the same check.
#[test]
fn every_other_decoder_half_precision_logits_equal_transformers() {
    for case in [
        "qwen2", "mistral", "gemma", "gemma2", "phi3", "smollm3", "olmo3",
    ] {
        half_precision_parity(case);
    }
}

#[test]
fn llama_half_precision_logits_equal_transformers() {
    half_precision_parity("llama");
}

#[test]
fn bf16_generation_and_scoring_run() {
    let dir = case_dir("llama");
    let opts = LoadOptions {
        task: Head::CausalLm,
        dtype: Kind::BFloat16,
        lora: Some(read_adapter_config(&dir.join("adapter")).unwrap()),
        ..Default::default()
    };
    let (model, lora) = TaskModel::load(&dir.join("model"), &opts).unwrap();
    lora.load_adapter(&dir.join("adapter")).unwrap();
    let e = expected("llama");
    let prompts = rows(&e["prompts"]);
    let cfg = GenerationConfig::greedy(4, &[]);
    let got = model.generate(&prompts, &cfg).unwrap();
    let f32_tokens = rows(&e["unmerged_no_eos"]);
    assert!(got.iter().all(|r| r.len() == 4));
    assert_eq!(
        got[0][0], f32_tokens[0][0],
        "bf16 greedy disagrees with f32 at the first token"
    );
    let items: Vec<(Vec<i64>, Vec<i64>)> = serde_json::from_value(e["items"].clone()).unwrap();
    let scores = model.continuation_logprobs(&items, 3).unwrap();
    assert!(scores.iter().all(|(lp, _)| lp.is_finite() && *lp < 0.0));
    let ids = Tensor::from_slice(&[5i64, 6, 7, 8, 9]).view([1, 5]);
    let pos = Tensor::from_slice(&[0i64, 1, 0, 1, 2]).view([1, 5]);
    let mask = ids.ones_like();
    let x = ModelInputs::new(&ids, &mask).with_position_ids(Some(&pos));
    let out = model.forward_backward_inputs(&x, &ids, true, 1.0).unwrap();
    assert!(out.loss.double_value(&[]).is_finite());
}
