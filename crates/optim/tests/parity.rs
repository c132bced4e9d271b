//! Parity with the Python reference (`reference/loraplus_ref.py`): PEFT's
//! `create_loraplus_optimizer` over `torch.optim.AdamW`, transformers' schedules and
//! `torch.nn.utils.clip_grad_norm_`, on the same toy model, initial weights and batches.
//! After 100 steps every trained tensor must equal the reference within 1e-6.
//!
//! Every case's inputs are written once into one temporary directory and the reference runs
//! once over all of them (Python and torch take seconds to start).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;
use loraplus_core::LoraModel;
use loraplus_optim::{LoraPlusAdamW, LoraPlusConfig, ParamGroup, Schedule, UpdateKernel, Warmup};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

const STEPS: usize = 100;
const TOL: f64 = 1e-6;

struct TrainCase {
    name: &'static str,
    spec: ModelSpec,
    optim: LoraPlusConfig,
    schedule: Schedule,
    max_norm: Option<f64>,
}

fn schedule_json(s: &Schedule) -> Value {
    let w = |w: &Warmup| match w {
        Warmup::Steps(n) => json!({"steps": n}),
        Warmup::Ratio(r) => json!({"ratio": r}),
    };
    match s {
        Schedule::Constant => json!({"kind": "constant"}),
        Schedule::ConstantWithWarmup {
            warmup,
            total_steps,
        } => {
            json!({"kind": "constant_with_warmup", "warmup": w(warmup), "total_steps": total_steps})
        }
        Schedule::Linear {
            warmup,
            total_steps,
        } => {
            json!({"kind": "linear", "warmup": w(warmup), "total_steps": total_steps})
        }
        Schedule::Cosine {
            warmup,
            total_steps,
            num_cycles,
        } => {
            json!({"kind": "cosine", "warmup": w(warmup), "total_steps": total_steps, "num_cycles": num_cycles})
        }
    }
}

fn train_cases() -> Vec<TrainCase> {
    let lora_plus = LoraPlusConfig {
        lr: 1e-3,
        ratio: 16.0,
        weight_decay: 0.01,
        ..Default::default()
    };
    let linear = Schedule::linear(Warmup::Steps(10), STEPS as u64);
    let qv = ModelSpec {
        targets: vec!["l1", "l2"],
        bias_all: false,
        head: false,
    };
    vec![
        TrainCase {
            name: "ratio16",
            spec: qv.clone(),
            optim: lora_plus,
            schedule: linear,
            max_norm: None,
        },
        TrainCase {
            name: "ratio1",
            spec: qv.clone(),
            optim: lora_plus.plain_lora(),
            schedule: linear,
            max_norm: None,
        },
        TrainCase {
            name: "every_group",
            spec: ModelSpec {
                targets: vec!["emb", "l1", "l2"],
                bias_all: true,
                head: true,
            },
            optim: LoraPlusConfig {
                lr_embedding: 5e-4,
                ..lora_plus
            },
            schedule: linear,
            max_norm: None,
        },
        TrainCase {
            name: "amsgrad_cosine_clip",
            spec: ModelSpec {
                targets: vec!["l1", "l2"],
                bias_all: true,
                head: false,
            },
            // beta1 = 0.4 takes lerp's other branch (weight 1 - beta1 >= 0.5).
            optim: LoraPlusConfig {
                amsgrad: true,
                betas: (0.4, 0.99),
                ..lora_plus
            },
            schedule: Schedule::cosine(Warmup::Ratio(0.1), STEPS as u64),
            max_norm: Some(0.5),
        },
    ]
}

fn schedules_under_test() -> Vec<Schedule> {
    vec![
        Schedule::Constant,
        Schedule::ConstantWithWarmup {
            warmup: Warmup::Steps(7),
            total_steps: 30,
        },
        Schedule::linear(Warmup::Steps(10), 100),
        Schedule::linear(Warmup::Steps(0), 50),
        Schedule::linear(Warmup::Ratio(0.03), 77),
        Schedule::cosine(Warmup::Ratio(0.1), 100),
        Schedule::Cosine {
            warmup: Warmup::Steps(5),
            total_steps: 37,
            num_cycles: 1.5,
        },
    ]
}

const SCHEDULE_BASE_LR: f64 = 3e-4;
const SCHEDULE_STEPS: usize = 110;
const CLIP_SHAPES: [(&str, &[i64]); 3] = [("a", &[4, 16]), ("b", &[16, 4]), ("c", &[7])];

/// Write every case, run the reference once, return the directory.
fn reference_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        tch::set_num_threads(1);
        tch::manual_seed(17);
        let root = tempfile::tempdir().unwrap();
        let mut dirs: Vec<PathBuf> = Vec::new();
        for c in train_cases() {
            let d = root.path().join(c.name);
            std::fs::create_dir_all(&d).unwrap();
            let base = Toy::random_base();
            let (_toy, lora) = Toy::build(
                &base.iter().map(|(k, v)| (k.clone(), v.copy())).collect(),
                &c.spec,
            );
            save_map(&d.join("base.safetensors"), base);
            save_map(&d.join("init.safetensors"), trainable_values(&lora));
            save_map(&d.join("batches.safetensors"), random_batches(STEPS));
            let o = &c.optim;
            let case = json!({
                "kind": "train",
                "model": c.spec.json(),
                "optim": {
                    "lr": o.lr, "ratio": o.ratio, "lr_embedding": o.lr_embedding,
                    "weight_decay": o.weight_decay, "betas": [o.betas.0, o.betas.1],
                    "eps": o.eps, "amsgrad": o.amsgrad,
                },
                "schedule": schedule_json(&c.schedule),
                "max_norm": c.max_norm,
                "steps": STEPS,
            });
            std::fs::write(d.join("case.json"), case.to_string()).unwrap();
            dirs.push(d);
        }
        let d = root.path().join("schedules");
        std::fs::create_dir_all(&d).unwrap();
        let case = json!({
            "kind": "schedules",
            "base_lr": SCHEDULE_BASE_LR,
            "steps": SCHEDULE_STEPS,
            "schedules": schedules_under_test().iter().map(schedule_json).collect::<Vec<_>>(),
        });
        std::fs::write(d.join("case.json"), case.to_string()).unwrap();
        dirs.push(d);
        for (name, scale, max_norm) in [("clip_active", 1.0, 1.0), ("clip_inactive", 0.01, 1.0)] {
            let d = root.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            let grads = CLIP_SHAPES
                .iter()
                .map(|(n, s)| {
                    (
                        n.to_string(),
                        Tensor::randn(*s, (Kind::Float, Device::Cpu)) * scale,
                    )
                })
                .collect();
            save_map(&d.join("grads.safetensors"), grads);
            std::fs::write(
                d.join("case.json"),
                json!({"kind": "clip", "max_norm": max_norm}).to_string(),
            )
            .unwrap();
            dirs.push(d);
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/loraplus_ref.py");
        let out = Command::new(python())
            .arg(script)
            .args(&dirs)
            .output()
            .expect("running python");
        assert!(
            out.status.success(),
            "loraplus_ref.py failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        root
    })
    .path()
}

fn run_case(
    name: &str,
    kernel: UpdateKernel,
) -> (LoraModel, LoraPlusAdamW, Vec<Vec<f64>>, Vec<f64>) {
    let root = reference_dir();
    let c = train_cases().into_iter().find(|c| c.name == name).unwrap();
    let d = root.join(name);
    let (toy, lora) = Toy::from_dir(&d, &c.spec, "init.safetensors");
    let mut opt = LoraPlusAdamW::new(lora.trainable_params(), &c.optim, c.schedule).unwrap();
    opt.set_kernel(kernel);
    let batches = load_map(&d.join("batches.safetensors"));
    let mut lrs = Vec::new();
    let mut norms = Vec::new();
    for step in 0..STEPS {
        let loss = toy.loss(
            &batches[&format!("ids.{step}")],
            &batches[&format!("y.{step}")],
        );
        loss.backward();
        if let Some(max_norm) = c.max_norm {
            norms.push(opt.clip_grad_norm(max_norm).unwrap().double_value(&[]));
        }
        lrs.push(opt.lrs().iter().map(|(_, lr)| *lr).collect());
        opt.step().unwrap();
        opt.zero_grad().unwrap();
    }
    (lora, opt, lrs, norms)
}

fn check_case(name: &str) {
    let d = reference_dir().join(name);
    let log: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("log.json")).unwrap()).unwrap();
    let groups: HashMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(d.join("groups.json")).unwrap()).unwrap();
    let want = load_map(&d.join("out.safetensors"));
    for kernel in [UpdateKernel::Auto, UpdateKernel::TensorOps] {
        let (lora, opt, lrs, norms) = run_case(name, kernel);
        // Same groups as PEFT's create_loraplus_optimizer.
        let summary = opt.summary();
        for g in &summary.groups {
            for t in &g.tensors {
                assert_eq!(
                    groups[&t.name],
                    g.group.name(),
                    "{name}: {} is in {} here, in {} in PEFT",
                    t.name,
                    g.group,
                    groups[&t.name]
                );
            }
        }
        assert_eq!(
            summary
                .groups
                .iter()
                .map(|g| g.tensors.len())
                .sum::<usize>(),
            groups.len()
        );
        // Same learning rate for every group at every step (PEFT keeps empty groups).
        let ref_lrs = log["lrs"].as_array().unwrap();
        for (step, ours) in lrs.iter().enumerate() {
            let theirs: Vec<f64> = ref_lrs[step]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            for (g, lr) in summary.groups.iter().zip(ours) {
                let idx = ParamGroup::ALL.iter().position(|x| *x == g.group).unwrap();
                assert_eq!(*lr, theirs[idx], "{name}: step {step}, {} lr", g.group);
            }
        }
        for (step, n) in norms.iter().enumerate() {
            let theirs = log["grad_norms"][step].as_f64().unwrap();
            assert!(
                (n - theirs).abs() <= 1e-5 * theirs.max(1.0),
                "{name}: step {step}: grad norm {n} vs {theirs}"
            );
        }
        let mut worst = (0.0, String::new());
        for p in lora.trainable_params() {
            let diff = max_abs_diff(&p.tensor.detach(), &want[&p.name]);
            if diff > worst.0 {
                worst = (diff, p.name.clone());
            }
        }
        eprintln!(
            "{name} ({kernel:?}): largest difference {:e} ({})",
            worst.0, worst.1
        );
        assert!(
            worst.0 <= TOL,
            "{name} ({kernel:?}): after {STEPS} steps {} differs from the reference by {:e}",
            worst.1,
            worst.0
        );
        // The parameters did move.
        let init = load_map(&d.join("init.safetensors"));
        for p in lora.trainable_params() {
            let moved = max_abs_diff(&p.tensor.detach(), &init[&p.name]);
            assert!(
                moved > 1e-4,
                "{name}: {} did not train (moved {moved:e})",
                p.name
            );
        }
    }
}

#[test]
fn lora_plus_ratio16_linear_warmup_matches_peft() {
    check_case("ratio16");
}

#[test]
fn plain_lora_ratio1_matches_peft() {
    check_case("ratio1");
}

#[test]
fn every_group_embedding_biases_head_matches_peft() {
    check_case("every_group");
}

#[test]
fn amsgrad_cosine_clipping_small_beta1_matches_peft() {
    check_case("amsgrad_cosine_clip");
}

#[test]
fn schedules_match_transformers() {
    let d = reference_dir().join("schedules");
    let want: Vec<Vec<f64>> =
        serde_json::from_str(&std::fs::read_to_string(d.join("schedules.json")).unwrap()).unwrap();
    for (s, theirs) in schedules_under_test().iter().zip(&want) {
        for (step, lr) in theirs.iter().enumerate() {
            let ours = SCHEDULE_BASE_LR * s.factor(step as u64);
            assert_eq!(ours, *lr, "{s:?}: step {step}: {ours} vs transformers {lr}");
        }
    }
}

#[test]
fn clipping_matches_clip_grad_norm() {
    for name in ["clip_active", "clip_inactive"] {
        let d = reference_dir().join(name);
        let grads = load_map(&d.join("grads.safetensors"));
        let want = load_map(&d.join("clipped.safetensors"));
        let theirs: Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("clip.json")).unwrap()).unwrap();
        let theirs = theirs["norm"].as_f64().unwrap();
        let params: Vec<(String, Tensor, loraplus_core::ParamRole)> = CLIP_SHAPES
            .iter()
            .map(|(n, s)| {
                let t = Tensor::zeros(*s, (Kind::Float, Device::Cpu)).set_requires_grad(true);
                (n.to_string(), t, loraplus_core::ParamRole::Other)
            })
            .collect();
        // grad of sum(p * g) is g exactly.
        let loss = params
            .iter()
            .map(|(n, t, _)| (t * &grads[n]).sum(Kind::Float))
            .fold(Tensor::zeros([], (Kind::Float, Device::Cpu)), |a, b| a + b);
        loss.backward();
        let handles: Vec<Tensor> = params.iter().map(|(_, t, _)| t.shallow_clone()).collect();
        let mut opt =
            LoraPlusAdamW::from_tensors(params, &LoraPlusConfig::default(), Schedule::Constant)
                .unwrap();
        let norm = opt.clip_grad_norm(1.0).unwrap();
        assert_eq!(norm.size(), Vec::<i64>::new());
        let norm = norm.double_value(&[]);
        assert!(
            (norm - theirs).abs() <= 1e-6 * theirs,
            "{name}: norm {norm} vs torch {theirs}"
        );
        for ((n, _), t) in CLIP_SHAPES.iter().zip(&handles) {
            let diff = max_abs_diff(&t.grad(), &want[*n]);
            assert!(
                diff <= 1e-7,
                "{name}: clipped grad {n} differs from torch by {diff:e}"
            );
        }
    }
}
