//! SFT parity along the whole training path: JSONL rows of each format -> loraplus's causal-LM
//! data pipeline (tokenization, chat template, label masks, truncation, packing, collation
//! with right or left padding) -> the trainer's micro-step on a PEFT-written adapter; against
//! TRL's rules in Python (crates/data/tests/reference/lm_ref.py) -> transformers + PEFT. The
//! batch tensors are equal, the loss and every LoRA gradient within 1e-5, on tiny random Llama
//! (GQA) and GPT-2 checkpoints written by transformers.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use loraplus_data::lm::{self, LmOptions, LmTokenizer};
use loraplus_data::{DataLoader, LoaderConfig, PaddingSide, Position};
use loraplus_models::{Head, LoadOptions, TaskModel};
use tch::{Device, Kind, Tensor};

fn reference(out: &Path) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = repo.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} not found: run `make setup`",
        python.display()
    );
    let o = Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/sft_chain_ref.py"))
        .arg(out)
        .env("TOKENIZERS_PARALLELISM", "false")
        .output()
        .expect("running python");
    assert!(
        o.status.success(),
        "sft_chain_ref.py failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

#[test]
fn each_format_layout_and_model_matches_trl_rules_and_peft() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    reference(out);
    let mut checked = 0;
    for model in ["llama", "gpt2"] {
        let mdir = out.join(model).join("model");
        let adir = out.join(model).join("adapter");
        let tok = LmTokenizer::from_model_dir(&mdir).unwrap();
        let opts = LoadOptions {
            task: Head::CausalLm,
            lora: Some(loraplus_core::read_adapter_config(&adir).unwrap()),
            ..LoadOptions::default()
        };
        let (m, lora) = TaskModel::load(&mdir, &opts).unwrap();
        lora.load_adapter(&adir).unwrap();
        for format in ["text", "prompt-completion", "messages"] {
            for layout in ["right", "left", "packed"] {
                let case = format!("{model}-{format}-{layout}");
                let want: HashMap<String, Tensor> =
                    loraplus_core::read_safetensors(&out.join(format!("{case}.safetensors")))
                        .unwrap()
                        .into_iter()
                        .collect();
                let lo = LmOptions {
                    format: Some(format.parse().unwrap()),
                    max_seq_len: 48,
                    packing: layout == "packed",
                    ..LmOptions::default()
                };
                let (ds, _) = lm::load_jsonl(&out.join(format!("{format}.jsonl")), &tok, &lo)
                    .unwrap_or_else(|e| panic!("{case}: {e:#}"));
                let n = ds.len();
                let side = if layout == "left" {
                    PaddingSide::Left
                } else {
                    PaddingSide::Right
                };
                let loader = DataLoader::new(
                    Arc::new(ds),
                    tok.pad_id(),
                    LoaderConfig {
                        padding_side: side,
                        ..LoaderConfig::eval(n)
                    },
                )
                .unwrap();
                let b = loader
                    .iter(Position::default())
                    .unwrap()
                    .next()
                    .unwrap()
                    .unwrap();
                assert!(b.input_ids.equal(&want["input_ids"]), "{case}: input ids");
                let labels = b.labels.as_ref().unwrap();
                assert!(labels.equal(&want["labels"]), "{case}: labels");
                if layout == "packed" {
                    let pos = b
                        .position_ids
                        .as_ref()
                        .expect("packed rows carry position ids");
                    assert!(pos.equal(&want["position_ids"]), "{case}: position ids");
                }
                for p in lora.trainable_params() {
                    let mut g = p.tensor.grad();
                    if g.defined() {
                        let _ = g.zero_();
                    }
                }
                let loss = loraplus_train::model::train_micro_step(&m, &b, Device::Cpu, 1.0)
                    .unwrap_or_else(|e| panic!("{case}: {e:#}"));
                let d = max_diff(&loss, &want["loss"]);
                assert!(d < 1e-5, "{case}: loss differs by {d}");
                let mut grads = 0;
                for p in lora.trainable_params() {
                    let key = format!("grad.{}", p.name);
                    let w = want
                        .get(&key)
                        .unwrap_or_else(|| panic!("{case}: PEFT has no {key}"));
                    let d = max_diff(&p.tensor.grad(), w);
                    assert!(d < 1e-5, "{case}: {key} differs by {d}");
                    grads += 1;
                }
                let peft_grads = want.keys().filter(|k| k.starts_with("grad.")).count();
                assert_eq!(grads, peft_grads, "{case}: the same trainable tensors");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 18);
}
