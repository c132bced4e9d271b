//! Activation checkpointing: a training step that recomputes each layer in the backward pass
//! gives the same loss and the same gradients (dropout included) as the plain step.

mod common;

use std::path::Path;
use std::sync::Mutex;

use loraplus_core::{InitLoraWeights, LoraConfig, LoraModel};
use loraplus_models::{default_model_dir, Head, LoadOptions, TaskModel, IGNORE_INDEX};
use tch::{Device, Kind, Tensor};

/// Loss and every trainable tensor's gradient after one `forward_backward`, grads then reset.
fn step(
    model: &TaskModel,
    lora: &LoraModel,
    x: &[Tensor; 3],
    train: bool,
    seed: i64,
) -> (f64, Vec<(String, Tensor)>, f64) {
    tch::manual_seed(seed);
    let out = model
        .forward_backward(&x[0], &x[1], None, &x[2], train, 0.5)
        .unwrap();
    // Where the generator stands after the step.
    let after = Tensor::rand([1], (Kind::Double, Device::Cpu)).double_value(&[0]);
    let grads = common::take_grads(lora);
    (out.loss.double_value(&[]), grads, after)
}

/// torch's generator is global to the process: tests that reseed it take turns.
static GENERATOR: Mutex<()> = Mutex::new(());

fn take_turn() -> std::sync::MutexGuard<'static, ()> {
    GENERATOR.lock().unwrap_or_else(|e| e.into_inner())
}

fn compare(model: &mut TaskModel, lora: &LoraModel, x: &[Tensor; 3], what: &str) {
    for train in [false, true] {
        model.set_checkpointing(false);
        let (l0, g0, r0) = step(model, lora, x, train, 7);
        model.set_checkpointing(true);
        let (l1, g1, r1) = step(model, lora, x, train, 7);
        println!("{what} train={train}: loss {l0:.6} vs {l1:.6}");
        assert!((l0 - l1).abs() <= 1e-6, "{what}: loss {l0} vs {l1}");
        assert_eq!(r0, r1, "{what}: the generator ends in another state");
        let mut worst = 0f64;
        for ((n0, a), (n1, b)) in g0.iter().zip(&g1) {
            assert_eq!(n0, n1);
            assert!(a.defined() && b.defined(), "{what}: {n0} has no gradient");
            let d = common::max_abs_diff(a, b);
            assert!(
                d <= 1e-5,
                "{what} train={train}: gradient of {n0} differs by {d:e}"
            );
            worst = worst.max(d);
        }
        assert!(
            g0.iter().any(|(_, g)| common::max_abs(g) > 0.0),
            "{what}: all gradients are zero"
        );
        println!(
            "{what} train={train}: {} gradients, max |diff| = {worst:.3e}",
            g0.len()
        );
    }
    // Dropout was on in training: the training loss differs from the eval loss.
    model.set_checkpointing(false);
    let (eval, _, _) = step(model, lora, x, false, 7);
    let (train, _, _) = step(model, lora, x, true, 7);
    assert!((eval - train).abs() > 1e-6, "{what}: dropout had no effect");
}

fn lora(targets: &[&str], modules_to_save: &[&str]) -> LoraConfig {
    let mut cfg = LoraConfig::new(4, 8.0, targets);
    cfg.lora_dropout = 0.1;
    cfg.init_lora_weights = InitLoraWeights::Random;
    cfg.modules_to_save = Some(modules_to_save.iter().map(|s| s.to_string()).collect());
    cfg
}

#[test]
fn minilm_checkpointed_step_gives_same_gradients() {
    let _turn = take_turn();
    let opts = LoadOptions {
        task: Head::SequenceClassification { num_labels: 2 },
        lora: Some(lora(
            &["query", "value", "word_embeddings"],
            &["classifier"],
        )),
        checkpointing: true,
        ..Default::default()
    };
    let (mut model, lora) = TaskModel::load(&default_model_dir(), &opts).unwrap();
    tch::manual_seed(1);
    let ids = Tensor::randint_low(1000, 20000, [4, 24], (Kind::Int64, Device::Cpu));
    let mask = Tensor::ones([4, 24], (Kind::Int64, Device::Cpu));
    let _ = mask.narrow(1, 15, 9).get(1).fill_(0);
    let labels = Tensor::from_slice(&[0i64, 1, 1, 0]);
    compare(&mut model, &lora, &[ids, mask, labels], "MiniLM");
}

#[test]
fn llama_checkpointed_step_gives_same_gradients() {
    let _turn = take_turn();
    let dir = tempfile::tempdir().unwrap();
    let (config, tensors) = common::tiny_llama();
    common::write_random_checkpoint(dir.path(), &config, &tensors);
    let opts = LoadOptions {
        task: Head::CausalLm,
        lora: Some(lora(&["q_proj", "v_proj", "down_proj"], &["lm_head"])),
        ..Default::default()
    };
    let (mut model, lora) = TaskModel::load(Path::new(dir.path()), &opts).unwrap();
    tch::manual_seed(2);
    let ids = Tensor::randint_low(3, 50, [3, 9], (Kind::Int64, Device::Cpu));
    let mask = Tensor::ones([3, 9], (Kind::Int64, Device::Cpu));
    let _ = mask.narrow(1, 0, 4).get(2).fill_(0); // left padding
    let labels = ids.masked_fill(&mask.eq(0), IGNORE_INDEX);
    compare(&mut model, &lora, &[ids, mask, labels], "Llama");
}
