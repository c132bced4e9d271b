//! What an architecture file provides: [`Architecture`], implemented by its `config.json`
//! struct, and the pieces every config shares ([`CommonConfig`], [`Activation`]).
//!
//! An architecture lives in one file (`bert.rs`, `llama.rs`, `qwen2.rs`, ...): its config
//! struct with HuggingFace's field names and defaults, its layers, its recommended LoRA
//! targets, and a `parse` function registered by `model_type` in [`crate::registry`]. The
//! task model, generation and the trainer see it only through this trait.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt::Debug;

use anyhow::{bail, Result};
use serde::Deserialize;
use serde_json::Value;

use crate::backbone::{Backbone, FreshLinear, Loader};
use crate::heads::{Head, TaskHead};

/// A parsed, validated `config.json` of one architecture.
pub trait Architecture: Debug + Send + Sync + 'static {
    /// HF's `model_type` (the key it is registered under).
    fn model_type(&self) -> &'static str;
    /// The name HuggingFace's task models give the backbone (`base_model_prefix`).
    fn base_model_prefix(&self) -> &'static str;
    fn hidden_size(&self) -> i64;
    fn num_layers(&self) -> i64;
    fn vocab_size(&self) -> i64;
    fn pad_token_id(&self) -> Option<i64>;
    fn initializer_range(&self) -> f64;
    /// The longest sequence a learned position table allows (`None`: rotary, no table).
    fn max_positions(&self) -> Option<i64>;
    /// The longest prompt generation accepts (`n_positions`, `max_position_embeddings`);
    /// `None` for an encoder, which does not generate.
    fn generation_positions(&self) -> Option<i64>;
    fn common(&self) -> &CommonConfig;
    /// `(LoRA targets, classification head modules)`: the attention projections the LoRA
    /// papers adapt, and the head layers (new for a pretrained backbone) trained in full.
    fn recommended_lora_modules(&self) -> (Vec<&'static str>, Vec<&'static str>);
    /// The token types whose embeddings the model adds (`type_vocab_size`), when it reads
    /// `token_type_ids`; `None` when it ignores them.
    fn type_vocab_size(&self) -> Option<i64> {
        None
    }
    /// Whether the weights are stored `[in, out]` (GPT-2's Conv1D): PEFT's `fan_in_fan_out`.
    fn fan_in_fan_out(&self) -> bool {
        false
    }
    /// Whether the causal-LM head exists for this architecture (decoders).
    fn causal_lm(&self) -> bool {
        self.generation_positions().is_some()
    }
    /// Head layers of `task` the checkpoint may lack, for [`Loader::init_missing`].
    fn head_specs(&self, task: Head) -> Vec<FreshLinear>;
    /// The backbone and the head of `task`, every layer handed to the loader's builder under
    /// its HuggingFace module name.
    fn build(&self, ld: &mut Loader, task: Head) -> Result<(Box<dyn Backbone + Send>, TaskHead)>;
    /// For typed access ([`crate::ModelConfig::get`]).
    fn as_any(&self) -> &dyn Any;
}

/// Fields every HuggingFace config has (`PretrainedConfig`).
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
pub struct CommonConfig {
    pub model_type: Option<String>,
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    /// Labels of a classification checkpoint; their count is HF's `num_labels`.
    #[serde(default)]
    pub id2label: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub problem_type: Option<String>,
    #[serde(default)]
    pub eos_token_id: Option<Value>,
    #[serde(default)]
    pub bos_token_id: Option<Value>,
}

/// Activation functions by their HuggingFace names (`transformers.activations.ACT2FN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `"gelu"`: exact, with erf (BERT, RoBERTa).
    Gelu,
    /// `"gelu_python"`: the same, computed op by op as transformers' Python version.
    GeluPython,
    /// `"gelu_10"`: `"gelu"` clipped to [-10, 10].
    Gelu10,
    /// `"gelu_pytorch_tanh"`: the tanh approximation, libtorch's fused kernel.
    GeluTanh,
    /// `"gelu_new"` (GPT-2): the same approximation as transformers computes it, one operation
    /// at a time, so that bf16 and f16 round as there.
    GeluNew,
    /// `"gelu_fast"`: the tanh approximation in transformers' other order of operations.
    GeluFast,
    /// `"gelu_accurate"`.
    GeluAccurate,
    /// `"quick_gelu"`: `x * sigmoid(1.702 x)` (CLIP).
    QuickGelu,
    Relu,
    /// `"relu2"`: `relu(x)^2`.
    Relu2,
    Relu6,
    /// `"leaky_relu"`: slope 0.01 below zero (`nn.LeakyReLU()`).
    LeakyRelu,
    /// `"silu"` / `"swish"` (Llama).
    Silu,
    Mish,
    Hardswish,
    Sigmoid,
    Tanh,
    /// `"linear"`: the identity.
    Linear,
}

/// Names accepted by [`Activation::parse`] (transformers' `ACT2FN` names).
pub const SUPPORTED_ACTIVATIONS: &[&str] = &[
    "gelu",
    "gelu_10",
    "gelu_accurate",
    "gelu_fast",
    "gelu_new",
    "gelu_python",
    "gelu_pytorch_tanh",
    "hardswish",
    "leaky_relu",
    "linear",
    "mish",
    "quick_gelu",
    "relu",
    "relu2",
    "relu6",
    "sigmoid",
    "silu",
    "swish",
    "tanh",
];

impl Activation {
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu" => Activation::Gelu,
            "gelu_python" => Activation::GeluPython,
            "gelu_10" => Activation::Gelu10,
            "gelu_pytorch_tanh" => Activation::GeluTanh,
            "gelu_new" => Activation::GeluNew,
            "gelu_fast" => Activation::GeluFast,
            "gelu_accurate" => Activation::GeluAccurate,
            "quick_gelu" => Activation::QuickGelu,
            "relu" => Activation::Relu,
            "relu2" => Activation::Relu2,
            "relu6" => Activation::Relu6,
            "leaky_relu" => Activation::LeakyRelu,
            "silu" | "swish" => Activation::Silu,
            "mish" => Activation::Mish,
            "hardswish" => Activation::Hardswish,
            "sigmoid" => Activation::Sigmoid,
            "tanh" => Activation::Tanh,
            "linear" => Activation::Linear,
            other => bail!(
                "activation {other:?} is not supported; supported: {}",
                SUPPORTED_ACTIVATIONS.join(", ")
            ),
        })
    }

    /// The function, with transformers' order of operations where it computes one op at a
    /// time (so that bf16 and f16 round as there).
    pub fn apply(self, x: &tch::Tensor) -> tch::Tensor {
        let sqrt_2_over_pi = (2.0f64 / std::f64::consts::PI).sqrt();
        match self {
            Activation::Gelu => x.gelu("none"),
            // input * 0.5 * (1.0 + erf(input / sqrt(2.0)))
            Activation::GeluPython => (x * 0.5) * ((x / 2f64.sqrt()).erf() + 1.0),
            Activation::Gelu10 => x.gelu("none").clamp(-10.0, 10.0),
            Activation::GeluTanh => x.gelu("tanh"),
            Activation::GeluNew => {
                // 0.5 * x * (1.0 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3))), in that order.
                let cube = x.pow_tensor_scalar(3.0) * 0.044715;
                let inner = (x + cube) * sqrt_2_over_pi;
                (x * 0.5) * (inner.tanh() + 1.0)
            }
            Activation::GeluFast => {
                // 0.5 * x * (1.0 + tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))
                let inner = (x * 0.7978845608) * (((x * 0.044715) * x) + 1.0);
                (x * 0.5) * (inner.tanh() + 1.0)
            }
            Activation::GeluAccurate => {
                // 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))
                let inner = (x + x.pow_tensor_scalar(3.0) * 0.044715) * sqrt_2_over_pi;
                (x * 0.5) * (inner.tanh() + 1.0)
            }
            Activation::QuickGelu => x * (x * 1.702).sigmoid(),
            Activation::Relu => x.relu(),
            Activation::Relu2 => x.relu().square(),
            Activation::Relu6 => x.relu6(),
            Activation::LeakyRelu => x.leaky_relu(),
            Activation::Silu => x.silu(),
            Activation::Mish => x.mish(),
            Activation::Hardswish => x.hardswish(),
            Activation::Sigmoid => x.sigmoid(),
            Activation::Tanh => x.tanh(),
            Activation::Linear => x.shallow_clone(),
        }
    }
}

/// `layer_types` entries: a layer attending within a window, or to every key.
pub const SLIDING: &str = "sliding_attention";
pub const FULL: &str = "full_attention";

/// A config's `layer_types` as one flag per layer (`true`: sliding), checked against
/// `num_layers` and the two types; `model_type` names the config in errors.
pub fn sliding_flags(model_type: &str, types: &[String], num_layers: i64) -> Result<Vec<bool>> {
    let n = num_layers.max(0) as usize;
    if types.len() != n {
        bail!(
            "{model_type} layer_types: expected {n} entries (num_hidden_layers), found {}",
            types.len()
        );
    }
    types
        .iter()
        .enumerate()
        .map(|(i, t)| match t.as_str() {
            SLIDING => Ok(true),
            FULL => Ok(false),
            other => bail!(
                "{model_type} layer_types[{i}]: {other:?} is not supported; supported: \
                 {SLIDING:?}, {FULL:?}"
            ),
        })
        .collect()
}

/// `initializer_range` default of every transformers config used here.
pub(crate) fn default_initializer_range() -> f64 {
    0.02
}

pub(crate) fn default_true() -> bool {
    true
}
