//! `LoadOptions::sparse_compute`: a classification forward that skips padding positions and
//! runs its last layer only for the position the head reads gives the logits, loss and
//! gradients of the full pass, for every architecture, under right, left and no padding, with
//! an all-padding row, with fused and unfused projections, and under activation checkpointing.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use loraplus_core::{BiasMode, InitLoraWeights, LoraConfig, LoraModel};
use loraplus_models::{Head, LoadOptions, TaskModel};
use tch::{Device, Kind, Tensor};

const T: i64 = 12;

/// Token ids (padding = `pad`) and masks for five rows: right padding (5 tokens), no padding,
/// left padding (7 tokens), all padding, right padding (1 token).
fn batch(pad: i64) -> (Tensor, Tensor) {
    let lengths: [(i64, i64); 5] = [(0, 5), (0, T), (T - 7, T), (0, 0), (0, 1)];
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for (row, (start, end)) in lengths.iter().enumerate() {
        for t in 0..T {
            let real = t >= *start && t < *end;
            ids.push(if real {
                1 + (row as i64 * 7 + t * 3) % 45
            } else {
                pad
            });
            mask.push(i64::from(real));
        }
    }
    let shape = [lengths.len() as i64, T];
    (
        Tensor::from_slice(&ids).view(shape),
        Tensor::from_slice(&mask).view(shape),
    )
}

/// Loss, logits and every trainable gradient of one `forward_backward` (eval mode: no dropout).
fn run(
    model: &TaskModel,
    lora: &LoraModel,
    ids: &Tensor,
    mask: &Tensor,
    labels: &Tensor,
) -> (Tensor, Vec<(String, Tensor)>) {
    let out = model
        .forward_backward(ids, mask, None, labels, false, 1.0)
        .unwrap();
    let grads = common::take_grads(lora);
    (
        Tensor::cat(&[out.loss.view([1]), out.logits.view([-1])], 0),
        grads,
    )
}

fn check(what: &str, dir: &Path, lora_cfg: LoraConfig, pad: i64, labels: usize) {
    let opts = LoadOptions {
        task: Head::SequenceClassification {
            num_labels: labels as i64,
        },
        lora: Some(lora_cfg),
        ..Default::default()
    };
    assert!(opts.sparse_compute, "sparse compute is the default");
    let (mut model, lora) = TaskModel::load(dir, &opts).unwrap();
    let (ids, mask) = batch(pad);
    let b = ids.size()[0];
    let labels = if labels == 1 {
        Tensor::arange(b, (Kind::Float, Device::Cpu)) * 0.3
    } else {
        Tensor::arange(b, (Kind::Int64, Device::Cpu)).remainder(labels as i64)
    };

    // What is computed: the 25 real tokens and the positions the heads read.
    let (layers, last) = model.positions_computed(&ids, &mask).unwrap();
    assert!(
        layers < b * T && last == b,
        "{what}: {layers} / {last} positions computed"
    );
    model.set_sparse_compute(false);
    assert_eq!(
        model.positions_computed(&ids, &mask).unwrap(),
        (b * T, b * T)
    );

    let (dense, dense_grads) = run(&model, &lora, &ids, &mask, &labels);
    assert!(
        bool::try_from(dense.isfinite().all()).unwrap(),
        "{what}: dense outputs not finite: {dense}"
    );
    for checkpointing in [false, true] {
        model.set_sparse_compute(true);
        model.set_checkpointing(checkpointing);
        let (sparse, grads) = run(&model, &lora, &ids, &mask, &labels);
        let scale = common::max_abs(&dense).max(1.0);
        let d = common::max_abs_diff(&sparse, &dense);
        assert!(
            d <= 1e-5 * scale,
            "{what} (checkpointing {checkpointing}): loss/logits differ by {d:e}\n{sparse}\n{dense}"
        );
        let mut worst = 0f64;
        let mut nonzero = 0;
        for ((name, a), (_, b)) in grads.iter().zip(&dense_grads) {
            assert!(a.defined() && b.defined(), "{what}: {name} has no gradient");
            let scale = common::max_abs(b).max(1.0);
            let d = common::max_abs_diff(a, b);
            assert!(
                d <= 1e-5 * scale,
                "{what} (checkpointing {checkpointing}): gradient of {name} differs by {d:e}"
            );
            worst = worst.max(d);
            nonzero += usize::from(common::max_abs(b) > 0.0);
        }
        assert!(
            nonzero * 2 > grads.len(),
            "{what}: only {nonzero} of {} gradients are non-zero",
            grads.len()
        );
        println!(
            "{what} (checkpointing {checkpointing}): {} positions of {}, {} gradients, max |diff| {worst:.2e}",
            layers,
            b * T,
            grads.len()
        );
    }
}

/// Adapters on every projection (so the fused query/key/value and gate/up products each carry
/// several), random B, scale alpha / r = 2.
fn all_linears(targets: &[&str], heads: &[&str]) -> LoraConfig {
    let mut cfg = LoraConfig::new(4, 8.0, targets);
    cfg.init_lora_weights = InitLoraWeights::Random;
    cfg.modules_to_save = Some(heads.iter().map(|s| s.to_string()).collect());
    cfg
}

/// rsLoRA with a rank pattern (scales that are not powers of two) and every bias training (so
/// the fused products fall back to one product per member).
fn odd_scales(targets: &[&str], heads: &[&str]) -> LoraConfig {
    let mut cfg = all_linears(targets, heads);
    cfg.use_rslora = true;
    cfg.rank_pattern = BTreeMap::from([(targets[0].to_string(), 3)]);
    cfg.bias = BiasMode::All;
    cfg
}

fn checkpoint(config: serde_json::Value, tensors: &[(String, Vec<i64>)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    tch::manual_seed(3);
    common::write_random_checkpoint(dir.path(), &config, tensors);
    dir
}

#[test]
fn bert_sparse_equals_dense() {
    let (config, tensors) = common::tiny_bert();
    let dir = checkpoint(config, &tensors);
    let targets = [
        "query",
        "key",
        "value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ];
    let heads = ["classifier", "pooler.dense"];
    check("BERT", dir.path(), all_linears(&targets, &heads), 0, 3);
    check(
        "BERT odd scales",
        dir.path(),
        odd_scales(&targets, &heads),
        0,
        3,
    );
}

#[test]
fn roberta_regression_sparse_equals_dense() {
    let (mut config, tensors) = common::tiny_bert();
    config["model_type"] = "roberta".into();
    let dir = checkpoint(config, &tensors);
    let targets = ["query", "key", "value"];
    let heads = ["classifier.dense", "classifier.out_proj"];
    check("RoBERTa", dir.path(), all_linears(&targets, &heads), 1, 1);
}

#[test]
fn gpt2_sparse_equals_dense() {
    let (config, tensors) = common::tiny_gpt2();
    let dir = checkpoint(config, &tensors);
    let mut cfg = all_linears(&["c_attn", "c_proj", "c_fc"], &["score"]);
    cfg.fan_in_fan_out = true;
    check("GPT-2", dir.path(), cfg, 0, 2);
}

#[test]
fn llama_sparse_equals_dense() {
    let (config, tensors) = common::tiny_llama();
    let dir = checkpoint(config, &tensors);
    let targets = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ];
    check("Llama", dir.path(), all_linears(&targets, &["score"]), 0, 3);
    check(
        "Llama odd scales",
        dir.path(),
        odd_scales(&targets, &["score"]),
        0,
        3,
    );
}

/// ModernBERT: a sliding layer's window (2 keys each side) located for the packed positions
/// and the read rows; the head new to the checkpoint (`head.norm` created as transformers
/// initialises it).
#[test]
fn modernbert_sparse_equals_dense() {
    let (v, h, i, layers) = (50, 16, 12, 3);
    let config = serde_json::json!({
        "model_type": "modernbert", "vocab_size": v, "hidden_size": h, "intermediate_size": i,
        "num_hidden_layers": layers, "num_attention_heads": 4, "local_attention": 4,
        "global_attn_every_n_layers": 2, "pad_token_id": 0
    });
    let mut tensors = vec![
        (
            "model.embeddings.tok_embeddings.weight".to_string(),
            vec![v, h],
        ),
        ("model.embeddings.norm.weight".to_string(), vec![h]),
        ("model.final_norm.weight".to_string(), vec![h]),
    ];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("attn.Wqkv", vec![3 * h, h]),
            ("attn.Wo", vec![h, h]),
            ("mlp.Wi", vec![2 * i, h]),
            ("mlp.Wo", vec![h, i]),
        ] {
            tensors.push((format!("{p}.{name}.weight"), shape));
        }
        tensors.push((format!("{p}.mlp_norm.weight"), vec![h]));
        if l > 0 {
            tensors.push((format!("{p}.attn_norm.weight"), vec![h]));
        }
    }
    let dir = checkpoint(config, &tensors);
    let targets = ["Wqkv", "Wo", "Wi"];
    check(
        "ModernBERT",
        dir.path(),
        all_linears(&targets, &["head", "classifier"]),
        0,
        3,
    );
}
