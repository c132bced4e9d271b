//! Exact resume: N steps, save (adapter weights + optimizer state), load into a fresh model and
//! a fresh optimizer in a *separate process*, M more steps, gives bitwise the parameters of
//! N + M straight steps. Also in-process for both update kernels and for bf16 parameters,
//! and refusal of a state saved from a different model.
//!
//! The separate process is this test binary itself, started on the `resume_child` test with
//! `LORAPLUS_RESUME_DIR` set; without the variable that test does nothing.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use common::*;
use loraplus_core::LoraModel;
use loraplus_optim::{
    LoraPlusAdamW, LoraPlusConfig, OptimizerState, Schedule, UpdateKernel, Warmup, STATE_META_FILE,
    STATE_TENSORS_FILE,
};
use tch::Tensor;

const N: usize = 6;
const M: usize = 5;
const CHILD_ENV: &str = "LORAPLUS_RESUME_DIR";

fn spec() -> ModelSpec {
    ModelSpec {
        targets: vec!["emb", "l1", "l2"],
        bias_all: true,
        head: true,
    }
}

fn config() -> LoraPlusConfig {
    LoraPlusConfig {
        lr: 3e-3,
        ratio: 16.0,
        lr_embedding: 1e-3,
        weight_decay: 0.01,
        amsgrad: true,
        ..Default::default()
    }
}

fn schedule() -> Schedule {
    Schedule::linear(Warmup::Steps(3), (N + M) as u64)
}

/// Train steps `from..to` on the batches, with clipping.
fn train(
    toy: &Toy,
    opt: &mut LoraPlusAdamW,
    batches: &HashMap<String, Tensor>,
    from: usize,
    to: usize,
) {
    for step in from..to {
        let loss = toy.loss(
            &batches[&format!("ids.{step}")],
            &batches[&format!("y.{step}")],
        );
        loss.backward();
        let _norm = opt.clip_grad_norm(1.0).unwrap();
        opt.step().unwrap();
        opt.zero_grad().unwrap();
    }
}

/// Base weights, initial trainable weights and batches in `dir`.
fn write_inputs(dir: &Path) {
    tch::manual_seed(31);
    let base = Toy::random_base();
    let (_toy, lora) = Toy::build(
        &base.iter().map(|(k, v)| (k.clone(), v.copy())).collect(),
        &spec(),
    );
    save_map(&dir.join("base.safetensors"), base);
    save_map(&dir.join("init.safetensors"), trainable_values(&lora));
    save_map(&dir.join("batches.safetensors"), random_batches(N + M));
}

fn straight(dir: &Path, kernel: UpdateKernel) -> LoraModel {
    let (toy, lora) = Toy::from_dir(dir, &spec(), "init.safetensors");
    let mut opt = LoraPlusAdamW::new(lora.trainable_params(), &config(), schedule()).unwrap();
    opt.set_kernel(kernel);
    train(
        &toy,
        &mut opt,
        &load_map(&dir.join("batches.safetensors")),
        0,
        N + M,
    );
    lora
}

/// N steps, then save the adapter values to `after_n.safetensors` and the optimizer to
/// `dir/optimizer`.
fn first_half(dir: &Path, kernel: UpdateKernel) {
    let (toy, lora) = Toy::from_dir(dir, &spec(), "init.safetensors");
    let mut opt = LoraPlusAdamW::new(lora.trainable_params(), &config(), schedule()).unwrap();
    opt.set_kernel(kernel);
    train(
        &toy,
        &mut opt,
        &load_map(&dir.join("batches.safetensors")),
        0,
        N,
    );
    save_map(&dir.join("after_n.safetensors"), trainable_values(&lora));
    opt.save(&dir.join("optimizer")).unwrap();
}

/// A fresh model from `after_n`, a fresh optimizer built with *other* hyper-parameters (the
/// saved ones must win), the state loaded, M steps.
fn second_half(dir: &Path, kernel: UpdateKernel) -> LoraModel {
    let (toy, lora) = Toy::from_dir(dir, &spec(), "after_n.safetensors");
    let other = LoraPlusConfig {
        lr: 1.0,
        ratio: 2.0,
        amsgrad: false,
        ..Default::default()
    };
    let mut opt = LoraPlusAdamW::new(lora.trainable_params(), &other, Schedule::Constant).unwrap();
    opt.set_kernel(kernel);
    opt.load(&dir.join("optimizer")).unwrap();
    assert_eq!(opt.step_count(), N as u64);
    assert_eq!(*opt.config(), config());
    assert_eq!(*opt.schedule(), schedule());
    train(
        &toy,
        &mut opt,
        &load_map(&dir.join("batches.safetensors")),
        N,
        N + M,
    );
    lora
}

fn assert_bitwise(a: &LoraModel, b: &HashMap<String, Tensor>, what: &str) {
    for p in a.trainable_params() {
        let t = p.tensor.detach();
        assert!(
            t.equal(&b[&p.name]),
            "{what}: {} differs (max {:e})",
            p.name,
            max_abs_diff(&t, &b[&p.name])
        );
    }
}

#[test]
fn resume_in_a_fresh_process_is_bitwise() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_inputs(d);
    first_half(d, UpdateKernel::Auto);
    assert!(d.join("optimizer").join(STATE_TENSORS_FILE).exists());
    assert!(d.join("optimizer").join(STATE_META_FILE).exists());
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "resume_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, d)
        .output()
        .unwrap();
    assert!(
        out.status.success() && d.join("resumed.safetensors").exists(),
        "the child process failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let want = straight(d, UpdateKernel::Auto);
    let resumed = load_map(&d.join("resumed.safetensors"));
    let want_map: HashMap<String, Tensor> = trainable_values(&want).into_iter().collect();
    let init = load_map(&d.join("init.safetensors"));
    for (name, t) in &want_map {
        assert!(max_abs_diff(t, &init[name]) > 0.0, "{name} did not train");
    }
    assert_bitwise(&want, &resumed, "resumed in a fresh process vs straight");
}

/// The child half of [`resume_in_a_fresh_process_is_bitwise`]; does nothing when run alone.
#[test]
fn resume_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    tch::set_num_threads(1);
    let d = Path::new(&dir);
    let lora = second_half(d, UpdateKernel::Auto);
    save_map(&d.join("resumed.safetensors"), trainable_values(&lora));
}

#[test]
fn resume_in_process_is_bitwise_for_both_kernels() {
    for kernel in [UpdateKernel::Auto, UpdateKernel::TensorOps] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_inputs(d);
        first_half(d, kernel);
        let resumed = second_half(d, kernel);
        let want = straight(d, kernel);
        let want: HashMap<String, Tensor> = trainable_values(&want).into_iter().collect();
        assert_bitwise(&resumed, &want, &format!("{kernel:?}: resumed vs straight"));
    }
}

#[test]
fn state_round_trips_through_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_inputs(d);
    first_half(d, UpdateKernel::Auto);
    let state = OptimizerState::load(&d.join("optimizer")).unwrap();
    assert_eq!(state.meta.step, N as u64);
    assert_eq!(state.meta.config, config());
    assert_eq!(state.meta.schedule, schedule());
    let groups: Vec<&str> = state
        .meta
        .buckets
        .iter()
        .map(|b| b.group.as_str())
        .collect();
    assert_eq!(groups, ["groupA", "embedding", "groupB", "groupB_no_decay"]);
    // Three f32 moments per bucket (amsgrad), no master copy for f32 parameters.
    assert_eq!(state.tensors.len(), 3 * groups.len());
    assert!(state
        .tensors
        .iter()
        .all(|(_, t)| t.kind() == tch::Kind::Float));
    let names: Vec<&str> = state.tensors.iter().map(|(k, _)| k.as_str()).collect();
    assert!(names.contains(&"groupB.f32.exp_avg_sq"), "{names:?}");
}

#[test]
fn state_from_another_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_inputs(d);
    first_half(d, UpdateKernel::Auto);
    let state_dir = d.join("optimizer");

    // Fewer adapters.
    let small = ModelSpec {
        targets: vec!["l1"],
        bias_all: false,
        head: false,
    };
    let base = load_map(&d.join("base.safetensors"));
    let (_t, lora) = Toy::build(&base, &small);
    let mut opt = LoraPlusAdamW::new(lora.trainable_params(), &config(), schedule()).unwrap();
    let e = refusal(opt.load(&state_dir));
    assert!(
        e.contains("does not match this model") && e.contains("l2.lora_A.weight"),
        "{e}"
    );

    // Same modules, a different rank: the shape is named.
    let (_t, lora) = Toy::build(&base, &spec());
    let params: Vec<_> = lora
        .trainable_params()
        .iter()
        .map(|p| {
            let t = if p.name == "l2.lora_B.weight" {
                Tensor::zeros([DIM, 2 * R as i64], (tch::Kind::Float, tch::Device::Cpu))
                    .set_requires_grad(true)
            } else {
                p.tensor.shallow_clone()
            };
            (p.name.clone(), t, p.role)
        })
        .collect();
    let mut opt = LoraPlusAdamW::from_tensors(params, &config(), schedule()).unwrap();
    let e = refusal(opt.load(&state_dir));
    assert!(
        e.contains("l2.lora_B.weight [8, 4]") && e.contains("[8, 8]"),
        "{e}"
    );
    assert_eq!(opt.step_count(), 0, "a refused load changed the optimizer");

    // A head_lr difference regroups the head: said so.
    let (_t, lora) = Toy::build(&base, &spec());
    let cfg = LoraPlusConfig {
        head_lr: Some(1e-4),
        ..config()
    };
    let mut opt = LoraPlusAdamW::new(lora.trainable_params(), &cfg, schedule()).unwrap();
    let e = refusal(opt.load(&state_dir));
    assert!(e.contains("head_lr"), "{e}");

    // The JSON and the tensors of different saves.
    let (toy, lora) = Toy::from_dir(d, &spec(), "after_n.safetensors");
    let mut opt = LoraPlusAdamW::new(lora.trainable_params(), &config(), schedule()).unwrap();
    opt.load(&state_dir).unwrap();
    train(
        &toy,
        &mut opt,
        &load_map(&d.join("batches.safetensors")),
        N,
        N + 1,
    );
    let later = d.join("later");
    opt.save(&later).unwrap();
    std::fs::copy(state_dir.join(STATE_META_FILE), later.join(STATE_META_FILE)).unwrap();
    let e = refusal(OptimizerState::load(&later));
    assert!(e.contains("different saves"), "{e}");
}

/// A refused load: its message, checked to be a typed [`loraplus_optim::Error::BadState`].
fn refusal<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    let e = r.unwrap_err();
    assert!(
        matches!(
            e.downcast_ref::<loraplus_optim::Error>(),
            Some(loraplus_optim::Error::BadState(_))
        ),
        "not a BadState refusal: {e:#}"
    );
    format!("{e:#}")
}
