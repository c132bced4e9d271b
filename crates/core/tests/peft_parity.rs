//! Parity with HuggingFace PEFT: the same toy model, the same config and the same A/B give the
//! same outputs and gradients; PEFT-written adapters load here and loraplus-written ones load in
//! PEFT. The reference is `reference/peft_ref.py`, run with the Python of `.venv`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use loraplus_core::{
    read_adapter_config, read_safetensors, LayerNorm, LoraBuilder, LoraConfig, LoraEmbedding,
    LoraLinear, LoraModel, WeightLayout,
};
use tch::Tensor;

const TOL: f64 = 1e-5;

fn python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(p.exists(), "{} not found: run `make setup`", p.display());
    p
}

fn reference(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/peft_ref.py");
    let out = Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .expect("running python");
    assert!(
        out.status.success(),
        "peft_ref.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn load_map(path: &Path) -> HashMap<String, Tensor> {
    read_safetensors(path).unwrap().into_iter().collect()
}

struct Toy {
    emb: LoraEmbedding,
    l1: LoraLinear,
    ln: LayerNorm,
    l2: LoraLinear,
    head: LoraLinear,
}

impl Toy {
    /// `conv1d`: l1 is GPT-2's Conv1D ([in, out] weight), as PEFT's fan_in_fan_out expects.
    fn build(dir: &Path, cfg: LoraConfig, conv1d: bool) -> (Toy, LoraModel) {
        let mut base = load_map(&dir.join("base.safetensors"));
        let mut take = |k: &str| base.remove(k).unwrap_or_else(|| panic!("{k} missing"));
        let layout = if conv1d {
            WeightLayout::InOut
        } else {
            WeightLayout::OutIn
        };
        let mut b = LoraBuilder::new(cfg).unwrap();
        let toy = Toy {
            emb: b.embedding("emb", take("emb.weight"), Some(0)).unwrap(),
            l1: b
                .linear("l1", take("l1.weight"), Some(take("l1.bias")), layout)
                .unwrap(),
            ln: b.layer_norm("ln", take("ln.weight"), Some(take("ln.bias")), 1e-5),
            l2: b
                .linear(
                    "l2",
                    take("l2.weight"),
                    Some(take("l2.bias")),
                    WeightLayout::OutIn,
                )
                .unwrap(),
            head: b
                .linear(
                    "head",
                    take("head.weight"),
                    Some(take("head.bias")),
                    WeightLayout::OutIn,
                )
                .unwrap(),
        };
        (toy, b.finish().unwrap())
    }

    fn forward(&self, ids: &Tensor) -> Tensor {
        let h = self.l1.forward(&self.emb.forward(ids));
        let h = self.l2.forward(&self.ln.forward(&h)).tanh();
        self.head.forward(&h)
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

/// Build in PEFT and here with the same config and weights; compare logits and every gradient;
/// then change the adapter, save it here, load it in PEFT and compare logits again.
fn check_case(cfg_json: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    reference(&["make", d.to_str().unwrap(), cfg_json]);
    let adapter = d.join("adapter");
    let cfg = read_adapter_config(&adapter).unwrap();
    let conv1d = cfg_json.contains(r#""fan_in_fan_out": true"#);
    let (toy, lora) = Toy::build(d, cfg, conv1d);
    lora.load_adapter(&adapter).unwrap();

    let inputs = load_map(&d.join("inputs.safetensors"));
    let expected = load_map(&d.join("expected.safetensors"));
    let logits = toy.forward(&inputs["ids"]);
    let diff = max_diff(&logits, &expected["logits"]);
    assert!(diff < TOL, "{cfg_json}: logits differ from PEFT by {diff}");

    (&logits * &inputs["loss_weights"])
        .sum(tch::Kind::Float)
        .backward();
    let mut seen = 0;
    for p in lora.trainable_params() {
        let key = format!("grad.{}", lora.peft_key(p));
        let want = expected
            .get(&key)
            .unwrap_or_else(|| panic!("{cfg_json}: PEFT does not train {key}"));
        let diff = max_diff(&p.tensor.grad(), want);
        assert!(
            diff < TOL,
            "{cfg_json}: gradient {key} differs from PEFT by {diff}"
        );
        seen += 1;
    }
    let peft_trainable = expected.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(seen, peft_trainable, "{cfg_json}: trainable sets differ");

    // Move every trainable tensor, save here, load in PEFT.
    tch::no_grad(|| {
        for p in lora.trainable_params() {
            let g = p.tensor.grad();
            let _ = p.tensor.shallow_clone().f_sub_(&(g * 0.05)).unwrap();
        }
    });
    let ours = d.join("ours");
    lora.save_pretrained(&ours).unwrap();
    reference(&["load", d.to_str().unwrap(), ours.to_str().unwrap()]);
    let loaded = load_map(&d.join("loaded.safetensors"));
    let logits = tch::no_grad(|| toy.forward(&inputs["ids"]));
    let diff = max_diff(&logits, &loaded["logits"]);
    assert!(
        diff < TOL,
        "{cfg_json}: PEFT loading our adapter gives logits off by {diff}"
    );
    let before = expected["logits"].shallow_clone();
    assert!(
        max_diff(&logits, &before) > 1e-3,
        "the adapter update had no effect"
    );
}

#[test]
fn alpha_differs_from_r_with_head_and_embedding() {
    check_case(
        r#"{"r": 4, "lora_alpha": 8, "target_modules": ["emb", "l1", "l2"], "init_lora_weights": false, "modules_to_save": ["head"]}"#,
    );
}

#[test]
fn rslora_with_rank_and_alpha_patterns() {
    check_case(
        r#"{"r": 4, "lora_alpha": 16, "use_rslora": true, "target_modules": ["l1", "l2"], "rank_pattern": {"l2": 2}, "alpha_pattern": {"l1": 3}, "init_lora_weights": false}"#,
    );
}

#[test]
fn fan_in_fan_out_conv1d_with_lora_only_bias() {
    check_case(
        r#"{"r": 2, "lora_alpha": 5, "fan_in_fan_out": true, "target_modules": ["l1", "l2"], "bias": "lora_only", "init_lora_weights": false}"#,
    );
}

#[test]
fn bias_all_with_regex_targets() {
    check_case(
        r#"{"r": 3, "lora_alpha": 6, "target_modules": "l[12]", "bias": "all", "modules_to_save": ["head"], "init_lora_weights": false}"#,
    );
}
