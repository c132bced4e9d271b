//! LoRA parameter sets of reference shapes, for the benchmarks: the tensors an optimizer sees
//! when MiniLM or a Llama-7B-shaped model is adapted.

use loraplus_core::ParamRole;
use tch::{Device, Kind, Tensor};

/// One LoRA adapter's shapes: A `[r, in]`, B `[out, r]`.
#[derive(Debug, Clone)]
pub struct AdapterShape {
    /// The adapted module's name.
    pub name: String,
    /// Rank.
    pub r: i64,
    /// A's input width.
    pub in_features: i64,
    /// B's output width.
    pub out_features: i64,
}

/// `sentence-transformers/all-MiniLM-L6-v2` adapted on query and value, r = 8: 6 layers x 2
/// modules, hidden 384 (73,728 trained elements).
pub fn minilm_qv(r: i64) -> Vec<AdapterShape> {
    let mut v = Vec::new();
    for layer in 0..6 {
        for m in ["query", "value"] {
            v.push(AdapterShape {
                name: format!("bert.encoder.layer.{layer}.attention.self.{m}"),
                r,
                in_features: 384,
                out_features: 384,
            });
        }
    }
    v
}

/// A Llama-7B-shaped model adapted on all seven linear modules of its 32 layers, r = 16:
/// hidden 4096, MLP 11008 (about 40M trained elements).
pub fn llama7b_all(r: i64) -> Vec<AdapterShape> {
    const HIDDEN: i64 = 4096;
    const MLP: i64 = 11008;
    let mut v = Vec::new();
    for layer in 0..32 {
        for (m, i, o) in [
            ("self_attn.q_proj", HIDDEN, HIDDEN),
            ("self_attn.k_proj", HIDDEN, HIDDEN),
            ("self_attn.v_proj", HIDDEN, HIDDEN),
            ("self_attn.o_proj", HIDDEN, HIDDEN),
            ("mlp.gate_proj", HIDDEN, MLP),
            ("mlp.up_proj", HIDDEN, MLP),
            ("mlp.down_proj", MLP, HIDDEN),
        ] {
            v.push(AdapterShape {
                name: format!("model.layers.{layer}.{m}"),
                r,
                in_features: i,
                out_features: o,
            });
        }
    }
    v
}

/// The set by name: `minilm` or `llama7b`.
pub fn by_name(name: &str) -> Option<Vec<AdapterShape>> {
    match name {
        "minilm" => Some(minilm_qv(8)),
        "llama7b" => Some(llama7b_all(16)),
        _ => None,
    }
}

/// Random trainable tensors of these shapes (A then B per adapter), with random gradients
/// already in `.grad` (made by one backward of `sum(p * g)`, so `.grad == g` exactly).
pub fn random_params(shapes: &[AdapterShape], device: Device) -> Vec<(String, Tensor, ParamRole)> {
    let opts = (Kind::Float, device);
    let mut out = Vec::new();
    for s in shapes {
        let a = (Tensor::randn([s.r, s.in_features], opts) * 0.02).set_requires_grad(true);
        let b = (Tensor::randn([s.out_features, s.r], opts) * 0.02).set_requires_grad(true);
        out.push((format!("{}.lora_A.weight", s.name), a, ParamRole::LoraA));
        out.push((format!("{}.lora_B.weight", s.name), b, ParamRole::LoraB));
    }
    let terms: Vec<Tensor> = out
        .iter()
        .map(|(_, t, _)| (t * (Tensor::randn(t.size(), opts) * 1e-3)).sum(Kind::Float))
        .collect();
    Tensor::stack(&terms, 0).sum(Kind::Float).backward();
    out
}

/// Total number of elements of a set.
pub fn numel(shapes: &[AdapterShape]) -> i64 {
    shapes
        .iter()
        .map(|s| s.r * (s.in_features + s.out_features))
        .sum()
}
