//! RoBERTa: BERT's encoder with position ids offset by `padding_idx` (see
//! [`crate::bert::Positions::FromInputIds`]), no pooler, and `RobertaClassificationHead`
//! (`classifier.dense`, `classifier.out_proj`).

use anyhow::Result;
use tch::Tensor;

use loraplus_core::dropout::dropout;
use loraplus_core::{LoraLinear, WeightLayout};

use crate::backbone::{FreshLinear, Loader};
use crate::bert::{BertBackbone, Positions};
use crate::config::BertConfig;

/// The RoBERTa backbone (`roberta.embeddings`, `roberta.encoder`).
pub fn load_backbone(ld: &mut Loader, cfg: &BertConfig) -> Result<BertBackbone> {
    let padding_idx = cfg.pad_token_id.unwrap_or(1);
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
            dropout: cfg.classifier_dropout.unwrap_or(cfg.hidden_dropout_prob),
        })
    }

    /// `hidden`: `[B, T, H]` -> logits `[B, num_labels]`.
    pub fn forward_t(&self, hidden: &Tensor, train: bool) -> Tensor {
        self.forward_read(&hidden.select(1, 0), train)
    }

    /// From the hidden state of the `<s>` token, `[B, H]`.
    pub fn forward_read(&self, first: &Tensor, train: bool) -> Tensor {
        let x = dropout(first, self.dropout, train);
        let x = self.dense.forward_t(&x, train).tanh();
        let x = dropout(&x, self.dropout, train);
        self.out_proj.forward_t(&x, train)
    }
}
