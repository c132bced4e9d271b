//! The toy model the optimizer tests train (the same as `reference/loraplus_ref.py`'s `Toy`),
//! its data, and file helpers.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use loraplus_core::{
    read_safetensors, write_safetensors, BiasMode, InitLoraWeights, LayerNorm, LoraBuilder,
    LoraConfig, LoraEmbedding, LoraLinear, LoraModel, WeightLayout,
};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

pub const VOCAB: i64 = 20;
pub const DIM: i64 = 8;
pub const HIDDEN: i64 = 16;
pub const CLASSES: i64 = 3;
pub const BATCH: i64 = 8;
pub const TOKENS: i64 = 5;
pub const R: usize = 4;
pub const ALPHA: f64 = 8.0;

pub fn python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(p.exists(), "{} not found: run `make setup`", p.display());
    p
}

pub fn load_map(path: &Path) -> HashMap<String, Tensor> {
    read_safetensors(path).unwrap().into_iter().collect()
}

pub fn save_map(path: &Path, tensors: Vec<(String, Tensor)>) {
    write_safetensors(path, &tensors, &BTreeMap::new()).unwrap();
}

/// Which modules adapt, which biases train, whether the head trains.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub targets: Vec<&'static str>,
    pub bias_all: bool,
    pub head: bool,
}

impl ModelSpec {
    pub fn lora_config(&self) -> LoraConfig {
        let mut cfg = LoraConfig::new(R, ALPHA, &self.targets);
        cfg.init_lora_weights = InitLoraWeights::Random;
        if self.bias_all {
            cfg.bias = BiasMode::All;
        }
        if self.head {
            cfg.modules_to_save = Some(vec!["head".into()]);
        }
        cfg
    }

    pub fn json(&self) -> Value {
        json!({
            "vocab": VOCAB, "dim": DIM, "hidden": HIDDEN, "classes": CLASSES,
            "r": R, "alpha": ALPHA,
            "targets": self.targets,
            "bias": if self.bias_all { "all" } else { "none" },
            "modules_to_save": if self.head { json!(["head"]) } else { Value::Null },
        })
    }
}

pub struct Toy {
    pub emb: LoraEmbedding,
    pub l1: LoraLinear,
    pub l2: LoraLinear,
    pub ln: LayerNorm,
    pub head: LoraLinear,
}

impl Toy {
    /// Random base weights, named as the PyTorch module names them.
    pub fn random_base() -> Vec<(String, Tensor)> {
        let f = (Kind::Float, Device::Cpu);
        let u = |shape: &[i64], fan_in: i64| {
            let b = 1.0 / (fan_in as f64).sqrt();
            Tensor::empty(shape, f).uniform_(-b, b)
        };
        vec![
            ("emb.weight".into(), Tensor::randn([VOCAB, DIM], f)),
            ("l1.weight".into(), u(&[HIDDEN, DIM], DIM)),
            ("l1.bias".into(), u(&[HIDDEN], DIM)),
            ("l2.weight".into(), u(&[DIM, HIDDEN], HIDDEN)),
            ("l2.bias".into(), u(&[DIM], HIDDEN)),
            (
                "ln.weight".into(),
                Tensor::ones([DIM], f) + Tensor::randn([DIM], f) * 0.1,
            ),
            ("ln.bias".into(), Tensor::randn([DIM], f) * 0.1),
            ("head.weight".into(), u(&[CLASSES, DIM], DIM)),
            ("head.bias".into(), u(&[CLASSES], DIM)),
        ]
    }

    /// The model from base weights, with freshly (randomly) initialised adapters.
    pub fn build(base: &HashMap<String, Tensor>, spec: &ModelSpec) -> (Toy, LoraModel) {
        Toy::build_on(base, spec, Device::Cpu)
    }

    /// As [`Toy::build`], on `device` (the adapters follow the base weights' device).
    pub fn build_on(
        base: &HashMap<String, Tensor>,
        spec: &ModelSpec,
        device: Device,
    ) -> (Toy, LoraModel) {
        let take = |k: &str| {
            base.get(k)
                .unwrap_or_else(|| panic!("{k} missing"))
                .to_device(device)
                .copy()
        };
        let mut b = LoraBuilder::new(spec.lora_config()).unwrap();
        let toy = Toy {
            emb: b.embedding("emb", take("emb.weight"), Some(0)).unwrap(),
            l1: b
                .linear(
                    "l1",
                    take("l1.weight"),
                    Some(take("l1.bias")),
                    WeightLayout::OutIn,
                )
                .unwrap(),
            l2: b
                .linear(
                    "l2",
                    take("l2.weight"),
                    Some(take("l2.bias")),
                    WeightLayout::OutIn,
                )
                .unwrap(),
            ln: b.layer_norm("ln", take("ln.weight"), Some(take("ln.bias")), 1e-5),
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

    /// The model from `dir/base.safetensors`, its trainable tensors set to `dir/<weights>`.
    pub fn from_dir(dir: &Path, spec: &ModelSpec, weights: &str) -> (Toy, LoraModel) {
        let base = load_map(&dir.join("base.safetensors"));
        let (toy, lora) = Toy::build(&base, spec);
        set_trainable(&lora, &load_map(&dir.join(weights)));
        (toy, lora)
    }

    pub fn forward(&self, ids: &Tensor) -> Tensor {
        let h = self.emb.forward(ids);
        let h = self.l1.forward(&h).tanh();
        let h = self.ln.forward(&self.l2.forward(&h));
        self.head.forward(&h.mean_dim(1, false, None::<Kind>))
    }

    pub fn loss(&self, ids: &Tensor, y: &Tensor) -> Tensor {
        self.forward(ids).mse_loss(y, tch::Reduction::Mean)
    }
}

/// Copy values into the model's trainable tensors (in place), by loraplus name.
pub fn set_trainable(lora: &LoraModel, values: &HashMap<String, Tensor>) {
    assert_eq!(
        values.len(),
        lora.trainable_params().len(),
        "trainable sets differ"
    );
    tch::no_grad(|| {
        for p in lora.trainable_params() {
            let v = values
                .get(&p.name)
                .unwrap_or_else(|| panic!("{} missing", p.name));
            p.tensor.shallow_clone().copy_(v);
        }
    });
}

/// Detached copies of the trainable tensors, by loraplus name.
pub fn trainable_values(lora: &LoraModel) -> Vec<(String, Tensor)> {
    lora.trainable_params()
        .iter()
        .map(|p| (p.name.clone(), p.tensor.detach().copy()))
        .collect()
}

/// `steps` random batches: `ids.<i>` [BATCH, TOKENS] and `y.<i>` [BATCH, CLASSES].
pub fn random_batches(steps: usize) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    for i in 0..steps {
        out.push((
            format!("ids.{i}"),
            Tensor::randint(VOCAB, [BATCH, TOKENS], (Kind::Int64, Device::Cpu)),
        ));
        out.push((
            format!("y.{i}"),
            Tensor::randn([BATCH, CLASSES], (Kind::Float, Device::Cpu)),
        ));
    }
    out
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}
