//! RoBERTa: BERT's encoder with position ids offset by `padding_idx` (see
//! [`crate::bert::Positions::FromInputIds`]), no pooler, and `RobertaClassificationHead`
//! (`classifier.dense`, `classifier.out_proj`).

use std::any::Any;
use std::ops::Deref;

use anyhow::{bail, Result};
use serde_json::Value;
use tch::Tensor;

use loraplus_core::dropout::dropout;
use loraplus_core::{LoraLinear, WeightLayout};

use crate::arch::{Architecture, CommonConfig};
use crate::backbone::{Backbone, FreshLinear, Loader};
use crate::bert::{BertBackbone, BertConfig, Positions};
use crate::heads::{FirstTokenHead, Head, TaskHead};

/// RoBERTa's default `pad_token_id` (transformers' `RobertaConfig`).
pub const ROBERTA_PAD_TOKEN_ID: i64 = 1;

/// RoBERTa's `config.json`: BERT's fields (`RobertaConfig` has the same), `pad_token_id`
/// defaulting to 1.
#[derive(Debug, Clone, PartialEq)]
pub struct RobertaConfig(pub BertConfig);

impl Deref for RobertaConfig {
    type Target = BertConfig;
    fn deref(&self) -> &BertConfig {
        &self.0
    }
}

/// `model_type: "roberta"` (registered in [`crate::registry`]).
pub fn parse(value: Value) -> Result<Box<dyn Architecture>> {
    Ok(Box::new(RobertaConfig(BertConfig::parse_with_pad(
        value,
        "roberta",
        ROBERTA_PAD_TOKEN_ID,
    )?)))
}

impl Architecture for RobertaConfig {
    fn model_type(&self) -> &'static str {
        "roberta"
    }
    fn base_model_prefix(&self) -> &'static str {
        "roberta"
    }
    fn hidden_size(&self) -> i64 {
        self.hidden_size
    }
    fn num_layers(&self) -> i64 {
        self.num_hidden_layers
    }
    fn vocab_size(&self) -> i64 {
        self.vocab_size
    }
    fn pad_token_id(&self) -> Option<i64> {
        self.pad_token_id
    }
    fn initializer_range(&self) -> f64 {
        self.initializer_range
    }
    /// Positions start after `padding_idx`.
    fn type_vocab_size(&self) -> Option<i64> {
        Some(self.type_vocab_size)
    }
    fn max_positions(&self) -> Option<i64> {
        Some(self.max_position_embeddings - self.pad_token_id.unwrap_or(ROBERTA_PAD_TOKEN_ID) - 1)
    }
    fn generation_positions(&self) -> Option<i64> {
        None
    }
    fn common(&self) -> &CommonConfig {
        &self.common
    }
    fn recommended_lora_modules(&self) -> (Vec<&'static str>, Vec<&'static str>) {
        (
            vec!["query", "value"],
            vec!["classifier.dense", "classifier.out_proj"],
        )
    }
    fn head_specs(&self, task: Head) -> Vec<FreshLinear> {
        match task {
            Head::SequenceClassification { num_labels } => roberta_head_specs(self, num_labels),
            Head::CausalLm => Vec::new(),
        }
    }
    fn build(&self, ld: &mut Loader, task: Head) -> Result<(Box<dyn Backbone + Send>, TaskHead)> {
        let Head::SequenceClassification { num_labels } = task else {
            bail!("roberta is an encoder: it has no causal-LM head");
        };
        let bb = load_backbone(ld, self)?;
        let head = RobertaClassificationHead::load(ld, self, num_labels)?;
        Ok((Box::new(bb), TaskHead::FirstToken(Box::new(head))))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The RoBERTa backbone (`roberta.embeddings`, `roberta.encoder`).
pub fn load_backbone(ld: &mut Loader, cfg: &BertConfig) -> Result<BertBackbone> {
    let padding_idx = cfg.pad_token_id.unwrap_or(ROBERTA_PAD_TOKEN_ID);
    BertBackbone::load(ld, "roberta", cfg, Positions::FromInputIds { padding_idx })
}

/// `classifier.dense` and `classifier.out_proj`.
pub fn roberta_head_specs(cfg: &BertConfig, num_labels: i64) -> Vec<FreshLinear> {
    let h = cfg.hidden_size;
    vec![
        FreshLinear {
            module: "classifier.dense".into(),
            in_features: h,
            out_features: h,
            bias: true,
        },
        FreshLinear {
            module: "classifier.out_proj".into(),
            in_features: h,
            out_features: num_labels,
            bias: true,
        },
    ]
}

/// `<s>` token -> dropout -> dense -> tanh -> dropout -> out_proj.
#[derive(Debug)]
pub struct RobertaClassificationHead {
    pub dense: LoraLinear,
    pub out_proj: LoraLinear,
    pub dropout: f64,
}

impl RobertaClassificationHead {
    pub fn load(ld: &mut Loader, cfg: &BertConfig, num_labels: i64) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(RobertaClassificationHead {
            dense: ld.linear("classifier.dense", h, h, true, WeightLayout::OutIn)?,
            out_proj: ld.linear(
                "classifier.out_proj",
                h,
                num_labels,
                true,
                WeightLayout::OutIn,
            )?,
            dropout: cfg.classifier_dropout(),
        })
    }
}

impl FirstTokenHead for RobertaClassificationHead {
    /// From the hidden state of the `<s>` token, `[B, H]`.
    fn forward_read(&self, first: &Tensor, train: bool) -> Tensor {
        let x = dropout(first, self.dropout, train);
        let x = self.dense.forward_t(&x, train).tanh();
        let x = dropout(&x, self.dropout, train);
        self.out_proj.forward_t(&x, train)
    }
}
