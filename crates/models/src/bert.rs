//! BERT (MiniLM included): its `config.json`, embeddings, the post-norm encoder layer that
//! RoBERTa shares, and the pooler + classifier head of `BertForSequenceClassification`.

use std::any::Any;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;
use tch::{Kind, Tensor};

use loraplus_core::dropout::dropout;
use loraplus_core::{FusedLinears, LayerNorm, LoraEmbedding, LoraLinear, WeightLayout};

use crate::arch::{default_initializer_range, Activation, Architecture, CommonConfig};
use crate::attention::{padding_mask, sdpa, LayerCtx};
use crate::backbone::{Backbone, Block, FreshLinear, Loader};
use crate::heads::{FirstTokenHead, Head, TaskHead};

// Defaults below are those of transformers' `BertConfig` (configuration_bert.py).
fn bert_vocab_size() -> i64 {
    30522
}
fn d_hidden_size() -> i64 {
    768
}
fn d_num_layers() -> i64 {
    12
}
fn d_num_heads() -> i64 {
    12
}
fn bert_intermediate_size() -> i64 {
    3072
}
fn d_gelu() -> String {
    "gelu".into()
}
fn d_dropout() -> f64 {
    0.1
}
fn d_max_positions() -> i64 {
    512
}
fn d_type_vocab_size() -> i64 {
    2
}
fn bert_layer_norm_eps() -> f64 {
    1e-12
}
fn d_absolute() -> String {
    "absolute".into()
}

/// BERT's `config.json` (also RoBERTa's: `RobertaConfig` has the same fields; see
/// [`crate::roberta::RobertaConfig`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BertConfig {
    #[serde(default = "bert_vocab_size")]
    pub vocab_size: i64,
    #[serde(default = "d_hidden_size")]
    pub hidden_size: i64,
    #[serde(default = "d_num_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "d_num_heads")]
    pub num_attention_heads: i64,
    #[serde(default = "bert_intermediate_size")]
    pub intermediate_size: i64,
    #[serde(default = "d_gelu")]
    pub hidden_act: String,
    #[serde(default = "d_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "d_dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "d_max_positions")]
    pub max_position_embeddings: i64,
    #[serde(default = "d_type_vocab_size")]
    pub type_vocab_size: i64,
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "bert_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// BERT: 0; RoBERTa: 1 (also the offset of its position ids).
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    #[serde(default = "d_absolute")]
    pub position_embedding_type: String,
    /// Dropout before the classifier; `None` means `hidden_dropout_prob` (HF).
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
    #[serde(default)]
    pub is_decoder: bool,
    #[serde(default)]
    pub add_cross_attention: bool,
    #[serde(flatten)]
    pub common: CommonConfig,
}

/// BERT's default `pad_token_id` (transformers' `BertConfig`).
const BERT_PAD_TOKEN_ID: i64 = 0;

impl BertConfig {
    /// Parse `config.json` with `pad_token_id` defaulting to `default_pad`, and validate it.
    pub fn parse_with_pad(value: Value, model_type: &str, default_pad: i64) -> Result<Self> {
        let mut c: BertConfig =
            serde_json::from_value(value).with_context(|| format!("{model_type} config"))?;
        c.pad_token_id = Some(c.pad_token_id.unwrap_or(default_pad));
        c.validate(model_type)?;
        Ok(c)
    }

    pub fn validate(&self, model_type: &str) -> Result<()> {
        Activation::parse(&self.hidden_act).with_context(|| format!("{model_type} hidden_act"))?;
        if self.position_embedding_type != "absolute" {
            bail!(
                "{model_type}: position_embedding_type {:?} is not supported; supported: \"absolute\"",
                self.position_embedding_type
            );
        }
        if self.is_decoder || self.add_cross_attention {
            bail!("{model_type}: is_decoder / add_cross_attention are not supported; only the encoder is implemented");
        }
        if self.num_attention_heads <= 0 || self.hidden_size % self.num_attention_heads != 0 {
            bail!(
                "{model_type}: hidden_size ({}) is not a multiple of num_attention_heads ({})",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        Ok(())
    }

    /// Dropout before the classifier (HF: `classifier_dropout`, else `hidden_dropout_prob`).
    pub fn classifier_dropout(&self) -> f64 {
        self.classifier_dropout.unwrap_or(self.hidden_dropout_prob)
    }
}

/// `model_type: "bert"` (registered in [`crate::registry`]).
pub fn parse(value: Value) -> Result<Box<dyn Architecture>> {
    Ok(Box::new(BertConfig::parse_with_pad(
        value,
        "bert",
        BERT_PAD_TOKEN_ID,
    )?))
}

impl Architecture for BertConfig {
    fn model_type(&self) -> &'static str {
        "bert"
    }
    fn base_model_prefix(&self) -> &'static str {
        "bert"
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
    fn type_vocab_size(&self) -> Option<i64> {
        Some(self.type_vocab_size)
    }
    fn max_positions(&self) -> Option<i64> {
        Some(self.max_position_embeddings)
    }
    fn generation_positions(&self) -> Option<i64> {
        None
    }
    fn common(&self) -> &CommonConfig {
        &self.common
    }
    fn recommended_lora_modules(&self) -> (Vec<&'static str>, Vec<&'static str>) {
        (vec!["query", "value"], vec!["classifier", "pooler.dense"])
    }
    fn head_specs(&self, task: Head) -> Vec<FreshLinear> {
        match task {
            Head::SequenceClassification { num_labels } => bert_head_specs(self, num_labels),
            Head::CausalLm => Vec::new(),
        }
    }
    fn build(&self, ld: &mut Loader, task: Head) -> Result<(Box<dyn Backbone + Send>, TaskHead)> {
        let Head::SequenceClassification { num_labels } = task else {
            bail!("bert is an encoder: it has no causal-LM head");
        };
        let bb = BertBackbone::load(ld, "bert", self, Positions::Absolute)?;
        let head = BertClassifierHead::load(ld, self, num_labels)?;
        Ok((Box::new(bb), TaskHead::FirstToken(Box::new(head))))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// How position ids are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positions {
    /// `0..T` (BERT).
    Absolute,
    /// Counted over non-padding tokens from `padding_idx + 1`; padding keeps `padding_idx`
    /// (RoBERTa, after fairseq).
    FromInputIds { padding_idx: i64 },
}

/// Word + position + token-type embeddings, LayerNorm, dropout.
#[derive(Debug)]
pub struct BertEmbeddings {
    pub word: LoraEmbedding,
    pub position: LoraEmbedding,
    pub token_type: LoraEmbedding,
    pub layer_norm: LayerNorm,
    pub dropout: f64,
    pub positions: Positions,
}

impl BertEmbeddings {
    pub fn load(
        ld: &mut Loader,
        prefix: &str,
        cfg: &BertConfig,
        positions: Positions,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let p = format!("{prefix}.embeddings");
        let pos_padding = match positions {
            Positions::Absolute => None,
            Positions::FromInputIds { padding_idx } => Some(padding_idx),
        };
        Ok(BertEmbeddings {
            word: ld.embedding(
                &format!("{p}.word_embeddings"),
                cfg.vocab_size,
                h,
                cfg.pad_token_id,
            )?,
            position: ld.embedding(
                &format!("{p}.position_embeddings"),
                cfg.max_position_embeddings,
                h,
                pos_padding,
            )?,
            token_type: ld.embedding(
                &format!("{p}.token_type_embeddings"),
                cfg.type_vocab_size,
                h,
                None,
            )?,
            layer_norm: ld.layer_norm(&format!("{p}.LayerNorm"), h, cfg.layer_norm_eps)?,
            dropout: cfg.hidden_dropout_prob,
            positions,
        })
    }

    pub fn position_ids(&self, input_ids: &Tensor) -> Tensor {
        let t = input_ids.size()[1];
        match self.positions {
            Positions::Absolute => {
                Tensor::arange(t, (Kind::Int64, input_ids.device())).unsqueeze(0)
            }
            Positions::FromInputIds { padding_idx } => {
                let mask = input_ids.ne(padding_idx).to_kind(Kind::Int64);
                mask.cumsum(1, Kind::Int64) * &mask + padding_idx
            }
        }
    }

    pub fn forward_t(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let words = self.word.forward(input_ids);
        let types = match token_type_ids {
            Some(tt) => self.token_type.forward(tt),
            None => self.token_type.forward(&input_ids.zeros_like()),
        };
        let pos = self.position.forward(&self.position_ids(input_ids));
        let e = self.layer_norm.forward(&(words + types + pos));
        dropout(&e, self.dropout, train)
    }
}

/// One post-norm encoder layer (`encoder.layer.{i}`).
#[derive(Debug)]
pub struct BertLayer {
    /// `query`, `key` and `value` as one product.
    pub qkv: FusedLinears,
    pub query: LoraLinear,
    pub key: LoraLinear,
    pub value: LoraLinear,
    pub attn_out: LoraLinear,
    pub attn_norm: LayerNorm,
    pub intermediate: LoraLinear,
    pub output: LoraLinear,
    pub out_norm: LayerNorm,
    pub heads: i64,
    pub act: Activation,
    pub attn_dropout: f64,
    pub hidden_dropout: f64,
}

impl BertLayer {
    pub fn load(ld: &mut Loader, p: &str, cfg: &BertConfig) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let lin = |ld: &mut Loader, name: &str, fin, fout| {
            ld.linear(&format!("{p}.{name}"), fin, fout, true, WeightLayout::OutIn)
        };
        let names = ["query", "key", "value"].map(|n| format!("{p}.attention.self.{n}"));
        let (qkv, members) = ld.fused_linears(
            &[(&names[0], h, h), (&names[1], h, h), (&names[2], h, h)],
            true,
        )?;
        let [query, key, value]: [LoraLinear; 3] = members
            .try_into()
            .map_err(|_| anyhow::anyhow!("{p}: expected 3 attention projections"))?;
        Ok(BertLayer {
            qkv,
            query,
            key,
            value,
            attn_out: lin(ld, "attention.output.dense", h, h)?,
            attn_norm: ld.layer_norm(
                &format!("{p}.attention.output.LayerNorm"),
                h,
                cfg.layer_norm_eps,
            )?,
            intermediate: lin(ld, "intermediate.dense", h, i)?,
            output: lin(ld, "output.dense", i, h)?,
            out_norm: ld.layer_norm(&format!("{p}.output.LayerNorm"), h, cfg.layer_norm_eps)?,
            heads: cfg.num_attention_heads,
            act: Activation::parse(&cfg.hidden_act)?,
            attn_dropout: cfg.attention_probs_dropout_prob,
            hidden_dropout: cfg.hidden_dropout_prob,
        })
    }
}

impl Block for BertLayer {
    fn forward_t(&self, x: &Tensor, ctx: &LayerCtx, train: bool) -> Tensor {
        let h = self.query.out_features();
        let d = h / self.heads;
        let xq = ctx.query_rows(x);
        let (q, kv) = if ctx.queries.is_some() {
            // Query for the returned rows only; key and value for every row.
            let kv = self.qkv.forward_t(&[&self.key, &self.value], 1, x, train);
            let q = self.query.forward_t(&xq, train);
            (
                ctx.query_heads(&q, self.heads, d),
                ctx.unpack(&kv).split(h, -1),
            )
        } else {
            let qkv = self
                .qkv
                .forward_t(&[&self.query, &self.key, &self.value], 0, x, train);
            let mut qkv = ctx.unpack(&qkv).split(h, -1);
            let q = qkv.remove(0);
            (ctx.heads(&q, self.heads, d), qkv)
        };
        let k = ctx.heads(&kv[0], self.heads, d);
        let v = ctx.heads(&kv[1], self.heads, d);
        let a = sdpa(&q, &k, &v, ctx.query_mask(), self.attn_dropout, train, None);
        let a = ctx.merge_heads(&a);
        let a = dropout(
            &self.attn_out.forward_t(&a, train),
            self.hidden_dropout,
            train,
        );
        let a = self.attn_norm.forward(&(a + xq));
        let m = self.act.apply(&self.intermediate.forward_t(&a, train));
        let m = dropout(
            &self.output.forward_t(&m, train),
            self.hidden_dropout,
            train,
        );
        self.out_norm.forward(&(m + a))
    }
}

/// Embeddings and encoder: BERT's, or RoBERTa's (other positions, same layers).
#[derive(Debug)]
pub struct BertBackbone {
    pub embeddings: BertEmbeddings,
    pub layers: Vec<BertLayer>,
}

impl BertBackbone {
    pub fn load(
        ld: &mut Loader,
        prefix: &str,
        cfg: &BertConfig,
        positions: Positions,
    ) -> Result<Self> {
        let embeddings = BertEmbeddings::load(ld, prefix, cfg, positions)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| BertLayer::load(ld, &format!("{prefix}.encoder.layer.{i}"), cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(BertBackbone { embeddings, layers })
    }
}

impl Backbone for BertBackbone {
    /// Bidirectional padding mask; `position_ids` are not taken (refused by the task model).
    fn context(
        &self,
        _input_ids: &Tensor,
        attention_mask: &Tensor,
        _position_ids: Option<&Tensor>,
    ) -> LayerCtx {
        let size = attention_mask.size();
        LayerCtx::dense(padding_mask(attention_mask), None, size[0], size[1])
    }

    fn embed(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        _position_ids: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        self.embeddings.forward_t(input_ids, token_type_ids, train)
    }

    fn num_layers(&self) -> usize {
        self.layers.len()
    }

    fn layer(&self, i: usize) -> &dyn Block {
        &self.layers[i]
    }
}

/// `bert.pooler.dense` and `classifier` of `BertForSequenceClassification`.
pub fn bert_head_specs(cfg: &BertConfig, num_labels: i64) -> Vec<FreshLinear> {
    let h = cfg.hidden_size;
    vec![
        FreshLinear {
            module: "bert.pooler.dense".into(),
            in_features: h,
            out_features: h,
            bias: true,
        },
        FreshLinear {
            module: "classifier".into(),
            in_features: h,
            out_features: num_labels,
            bias: true,
        },
    ]
}

/// Pooler (tanh of a dense layer on the first token), dropout, classifier.
#[derive(Debug)]
pub struct BertClassifierHead {
    pub pooler: LoraLinear,
    pub classifier: LoraLinear,
    pub dropout: f64,
}

impl BertClassifierHead {
    pub fn load(ld: &mut Loader, cfg: &BertConfig, num_labels: i64) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(BertClassifierHead {
            pooler: ld.linear("bert.pooler.dense", h, h, true, WeightLayout::OutIn)?,
            classifier: ld.linear("classifier", h, num_labels, true, WeightLayout::OutIn)?,
            dropout: cfg.classifier_dropout(),
        })
    }
}

impl FirstTokenHead for BertClassifierHead {
    /// From the hidden state of the first token, `[B, H]`.
    fn forward_read(&self, first: &Tensor, train: bool) -> Tensor {
        let pooled = self.pooler.forward_t(first, train).tanh();
        let pooled = dropout(&pooled, self.dropout, train);
        self.classifier.forward_t(&pooled, train)
    }
}
