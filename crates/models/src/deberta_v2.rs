//! DeBERTa-v2 / DeBERTa-v3 (`model_type: "deberta-v2"`): its `config.json`, the embeddings
//! (optional absolute positions and `embed_proj`), the post-norm encoder layer with
//! disentangled attention (content-to-position `c2p` and position-to-content `p2c` scores from
//! the shared relative-position table, log-bucketed positions, `share_att_key`,
//! `norm_rel_ebd`), and `DebertaV2ForSequenceClassification`'s `ContextPooler` + classifier.
//!
//! A layer computes every position of its input (relative positions need the dense
//! `[B, T]` layout), then returns the rows the layer context asks for.

use std::any::Any;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;
use tch::{Kind, Tensor};

use loraplus_core::dropout::dropout;
use loraplus_core::{LayerNorm, LoraEmbedding, LoraLinear, WeightLayout};

use crate::arch::{default_initializer_range, Activation, Architecture, CommonConfig};
use crate::attention::{padding_mask, LayerCtx};
use crate::backbone::{Backbone, Block, FreshLinear, Loader};
use crate::heads::{FirstTokenHead, Head, TaskHead};

// Defaults below are those of transformers' `DebertaV2Config` (configuration_deberta_v2.py).
fn d_vocab_size() -> i64 {
    128100
}
fn d_hidden_size() -> i64 {
    1536
}
fn d_num_layers() -> i64 {
    24
}
fn d_num_heads() -> i64 {
    24
}
fn d_intermediate_size() -> i64 {
    6144
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
fn d_layer_norm_eps() -> f64 {
    1e-7
}
fn d_minus_one() -> i64 {
    -1
}
fn d_true() -> bool {
    true
}
fn d_pad() -> Option<i64> {
    Some(0)
}
fn d_none() -> String {
    "none".into()
}

/// `pos_att_type`: a list, or a `|`-separated string (older configs).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PosAttType {
    List(Vec<String>),
    Joined(String),
}

impl PosAttType {
    fn names(&self) -> Vec<String> {
        match self {
            PosAttType::List(v) => v.iter().map(|s| s.trim().to_lowercase()).collect(),
            PosAttType::Joined(s) => s.split('|').map(|s| s.trim().to_lowercase()).collect(),
        }
    }
}

/// DeBERTa-v2's `config.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DebertaV2Config {
    #[serde(default = "d_vocab_size")]
    pub vocab_size: i64,
    #[serde(default = "d_hidden_size")]
    pub hidden_size: i64,
    #[serde(default = "d_num_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "d_num_heads")]
    pub num_attention_heads: i64,
    #[serde(default = "d_intermediate_size")]
    pub intermediate_size: i64,
    #[serde(default = "d_gelu")]
    pub hidden_act: String,
    #[serde(default = "d_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "d_dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "d_max_positions")]
    pub max_position_embeddings: i64,
    #[serde(default)]
    pub type_vocab_size: i64,
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "d_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub relative_attention: bool,
    /// `< 1`: `max_position_embeddings` (transformers).
    #[serde(default = "d_minus_one")]
    pub max_relative_positions: i64,
    /// `> 0`: relative positions are log-bucketed into this many buckets each side.
    #[serde(default = "d_minus_one")]
    pub position_buckets: i64,
    #[serde(default = "d_pad")]
    pub pad_token_id: Option<i64>,
    /// Absolute position embeddings added to the input (DeBERTa-v3: false).
    #[serde(default = "d_true")]
    pub position_biased_input: bool,
    #[serde(default)]
    pub pos_att_type: Option<PosAttType>,
    /// The relative-position projections are the content ones (`query_proj`, `key_proj`).
    #[serde(default)]
    pub share_att_key: bool,
    /// `"layer_norm"`: the relative table is normalised by `encoder.LayerNorm`.
    #[serde(default = "d_none")]
    pub norm_rel_ebd: String,
    /// Width of the embedding tables (`embed_proj` maps it to `hidden_size`); default hidden.
    #[serde(default)]
    pub embedding_size: Option<i64>,
    #[serde(default)]
    pub attention_head_size: Option<i64>,
    #[serde(default)]
    pub conv_kernel_size: i64,
    #[serde(default)]
    pub pooler_dropout: f64,
    #[serde(default = "d_gelu")]
    pub pooler_hidden_act: String,
    /// Default `hidden_size`.
    #[serde(default)]
    pub pooler_hidden_size: Option<i64>,
    /// Dropout before the classifier; `None` means `hidden_dropout_prob` (transformers).
    #[serde(default)]
    pub cls_dropout: Option<f64>,
    #[serde(flatten)]
    pub common: CommonConfig,
}

/// The relative-attention score kinds transformers implements.
pub const SUPPORTED_POS_ATT_TYPES: &[&str] = &["c2p", "p2c"];

impl DebertaV2Config {
    pub fn validate(&self) -> Result<()> {
        Activation::parse(&self.hidden_act).context("deberta-v2 hidden_act")?;
        Activation::parse(&self.pooler_hidden_act).context("deberta-v2 pooler_hidden_act")?;
        if self.num_attention_heads <= 0 || self.hidden_size % self.num_attention_heads != 0 {
            bail!(
                "deberta-v2: hidden_size ({}) is not a multiple of num_attention_heads ({})",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if let Some(d) = self.attention_head_size {
            if d != self.hidden_size / self.num_attention_heads {
                bail!(
                    "deberta-v2: attention_head_size {d} != hidden_size / num_attention_heads ({}) is not supported",
                    self.hidden_size / self.num_attention_heads
                );
            }
        }
        if self.conv_kernel_size > 0 {
            bail!(
                "deberta-v2: conv_kernel_size {} (the ConvLayer of DeBERTa-v2 xlarge/xxlarge) is not supported",
                self.conv_kernel_size
            );
        }
        for t in self.pos_att_types() {
            if !SUPPORTED_POS_ATT_TYPES.contains(&t.as_str()) {
                bail!(
                    "deberta-v2: pos_att_type {t:?} is not supported; supported: {}",
                    SUPPORTED_POS_ATT_TYPES.join(", ")
                );
            }
        }
        for n in self.norm_rel_ebd.split('|').map(|s| s.trim().to_lowercase()) {
            if n != "none" && n != "layer_norm" {
                bail!("deberta-v2: norm_rel_ebd {n:?} is not supported; supported: none, layer_norm");
            }
        }
        if self.relative_attention && self.pos_ebd_size() <= 0 {
            bail!("deberta-v2: relative_attention needs position_buckets or max_relative_positions > 0");
        }
        Ok(())
    }

    fn pos_att_types(&self) -> Vec<String> {
        self.pos_att_type
            .as_ref()
            .map(PosAttType::names)
            .unwrap_or_default()
    }

    /// transformers' `max_relative_positions` after its default.
    fn max_relative_positions(&self) -> i64 {
        if self.max_relative_positions < 1 {
            self.max_position_embeddings
        } else {
            self.max_relative_positions
        }
    }

    /// The attention span `att_span` (half the relative table).
    fn pos_ebd_size(&self) -> i64 {
        if self.position_buckets > 0 {
            self.position_buckets
        } else {
            self.max_relative_positions()
        }
    }

    fn embedding_size(&self) -> i64 {
        self.embedding_size.unwrap_or(self.hidden_size)
    }

    fn pooler_hidden_size(&self) -> i64 {
        self.pooler_hidden_size.unwrap_or(self.hidden_size)
    }

    fn norm_rel(&self) -> bool {
        self.norm_rel_ebd
            .split('|')
            .any(|s| s.trim().eq_ignore_ascii_case("layer_norm"))
    }
}

/// `model_type: "deberta-v2"` (registered in [`crate::registry`]).
pub fn parse(value: Value) -> Result<Box<dyn Architecture>> {
    let c: DebertaV2Config = serde_json::from_value(value).context("deberta-v2 config")?;
    c.validate()?;
    Ok(Box::new(c))
}

impl Architecture for DebertaV2Config {
    fn model_type(&self) -> &'static str {
        "deberta-v2"
    }
    fn base_model_prefix(&self) -> &'static str {
        "deberta"
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
    /// The absolute table when the input adds it; relative positions alone have no limit.
    fn type_vocab_size(&self) -> Option<i64> {
        (self.type_vocab_size > 0).then_some(self.type_vocab_size)
    }
    fn max_positions(&self) -> Option<i64> {
        self.position_biased_input
            .then_some(self.max_position_embeddings)
    }
    fn generation_positions(&self) -> Option<i64> {
        None
    }
    fn common(&self) -> &CommonConfig {
        &self.common
    }
    fn recommended_lora_modules(&self) -> (Vec<&'static str>, Vec<&'static str>) {
        (
            vec!["query_proj", "key_proj", "value_proj"],
            vec!["pooler.dense", "classifier"],
        )
    }
    fn head_specs(&self, task: Head) -> Vec<FreshLinear> {
        match task {
            Head::SequenceClassification { num_labels } => {
                let p = self.pooler_hidden_size();
                vec![
                    FreshLinear {
                        module: "pooler.dense".into(),
                        in_features: p,
                        out_features: p,
                        bias: true,
                    },
                    FreshLinear {
                        module: "classifier".into(),
                        in_features: p,
                        out_features: num_labels,
                        bias: true,
                    },
                ]
            }
            Head::CausalLm => Vec::new(),
        }
    }
    fn build(&self, ld: &mut Loader, task: Head) -> Result<(Box<dyn Backbone + Send>, TaskHead)> {
        let Head::SequenceClassification { num_labels } = task else {
            bail!("deberta-v2 is an encoder: it has no causal-LM head");
        };
        let bb = DebertaV2Backbone::load(ld, self)?;
        let p = self.pooler_hidden_size();
        let head = ContextPoolerHead {
            dense: ld.linear("pooler.dense", p, p, true, WeightLayout::OutIn)?,
            classifier: ld.linear("classifier", p, num_labels, true, WeightLayout::OutIn)?,
            act: Activation::parse(&self.pooler_hidden_act)?,
            pooler_dropout: self.pooler_dropout,
            dropout: self.cls_dropout.unwrap_or(self.hidden_dropout_prob),
        };
        Ok((Box::new(bb), TaskHead::FirstToken(Box::new(head))))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Word (+ absolute position) (+ token type) embeddings, `embed_proj`, LayerNorm, dropout.
/// transformers also zeroes padding rows here; they are never read by a real token (masked as
/// keys), so they are left as they are.
#[derive(Debug)]
pub struct DebertaV2Embeddings {
    pub word: LoraEmbedding,
    pub position: Option<LoraEmbedding>,
    pub token_type: Option<LoraEmbedding>,
    pub embed_proj: Option<LoraLinear>,
    pub layer_norm: LayerNorm,
    pub dropout: f64,
}

/// Relative positions `q - k` of a `[T, T]` grid, log-bucketed as transformers'
/// `make_log_bucket_position` when `bucket_size` and `max_position` are positive.
pub fn relative_positions(
    t: i64,
    bucket_size: i64,
    max_position: i64,
    device: tch::Device,
) -> Tensor {
    let ids = Tensor::arange(t, (Kind::Int64, device));
    let rel = ids.unsqueeze(1) - ids.unsqueeze(0);
    if bucket_size <= 0 || max_position <= 0 {
        return rel;
    }
    let mid = bucket_size / 2;
    let sign = rel.sign();
    let inside = rel.lt(mid).logical_and(&rel.gt(-mid));
    let abs_pos = rel.abs().where_self(
        &inside.logical_not(),
        &Tensor::from(mid - 1).to_device(device),
    );
    let abs_f = abs_pos.to_kind(Kind::Float);
    // Both logarithms in libtorch, the denominator as a 0-d f32 tensor, as transformers does: at
    // abs_pos = max_position - 1 the quotient must be exactly 1 (a libm `ln` for the
    // denominator differs from libtorch's vectorized log in the last bit on some CPUs, and the
    // ceil then moves that position to the next bucket).
    let denom = Tensor::from(((max_position - 1) as f64 / mid as f64) as f32)
        .to_device(device)
        .log();
    let log_pos = ((abs_f / mid as f64).log() / denom * (mid - 1) as f64).ceil() + mid as f64;
    let bucket = rel
        .to_kind(Kind::Float)
        .where_self(&abs_pos.le(mid), &(log_pos * sign.to_kind(Kind::Float)));
    bucket.to_kind(Kind::Int64)
}

/// One post-norm encoder layer with disentangled self-attention (`encoder.layer.{i}`).
#[derive(Debug)]
pub struct DebertaV2Layer {
    pub query: LoraLinear,
    pub key: LoraLinear,
    pub value: LoraLinear,
    pub pos_key: Option<LoraLinear>,
    pub pos_query: Option<LoraLinear>,
    pub attn_out: LoraLinear,
    pub attn_norm: LayerNorm,
    pub intermediate: LoraLinear,
    pub output: LoraLinear,
    pub out_norm: LayerNorm,
    pub heads: i64,
    pub act: Activation,
    pub attn_dropout: f64,
    pub hidden_dropout: f64,
    /// The encoder's relative table (`rel_embeddings.weight`), shared by every layer.
    pub rel: Option<Tensor>,
    /// `encoder.LayerNorm` applied to the table (`norm_rel_ebd = "layer_norm"`).
    pub rel_norm: Option<(Tensor, Tensor, f64)>,
    pub c2p: bool,
    pub p2c: bool,
    /// The scores are divided by `sqrt(head_dim * scale_factor)`, `scale_factor` being 1 plus
    /// one for each of `c2p` and `p2c` in `pos_att_type`, whether `relative_attention` is on or
    /// not (as transformers counts them).
    pub scale_factor: i64,
    pub share_att_key: bool,
    pub att_span: i64,
    pub position_buckets: i64,
    pub max_relative_positions: i64,
}

impl DebertaV2Layer {
    fn heads_of(&self, y: &Tensor) -> Tensor {
        let s = y.size();
        let d = s[s.len() - 1] / self.heads;
        y.view([s[0], s[1], self.heads, d]).transpose(1, 2)
    }

    /// Every position: `x` `[B, T, H]`, `mask` `[B, 1, 1, T]` (keys that may be attended).
    fn forward_dense(&self, x: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        let q = self.heads_of(&self.query.forward_t(x, train));
        let k = self.heads_of(&self.key.forward_t(x, train));
        let v = self.heads_of(&self.value.forward_t(x, train));
        let d = q.size()[3];
        let scale = ((d * self.scale_factor) as f32).sqrt() as f64;
        let mut scores = q.matmul(&(k.transpose(-1, -2) / scale));
        if let Some(rel) = &self.rel {
            let t = x.size()[1];
            let rel = match &self.rel_norm {
                Some((w, b, eps)) => {
                    rel.layer_norm([rel.size()[1]], Some(w), Some(b), *eps, false)
                }
                None => rel.shallow_clone(),
            };
            let rel = dropout(&rel, self.hidden_dropout, train)
                .narrow(0, 0, 2 * self.att_span)
                .unsqueeze(0);
            let rel_pos = relative_positions(
                t,
                self.position_buckets,
                self.max_relative_positions,
                x.device(),
            );
            let (b, h) = (q.size()[0], self.heads);
            let span = self.att_span;
            if self.c2p {
                let proj = if self.share_att_key {
                    &self.key
                } else {
                    self.pos_key.as_ref().expect("pos_key_proj loaded with c2p")
                };
                let pos_k = self.heads_of(&proj.forward_t(&rel, train));
                let c2p = q.matmul(&pos_k.transpose(-1, -2));
                let index = (&rel_pos + span)
                    .clamp(0, 2 * span - 1)
                    .expand([b, h, t, t], false);
                scores += c2p.gather(-1, &index, false) / scale;
            }
            if self.p2c {
                let proj = if self.share_att_key {
                    &self.query
                } else {
                    self.pos_query
                        .as_ref()
                        .expect("pos_query_proj loaded with p2c")
                };
                let pos_q = self.heads_of(&proj.forward_t(&rel, train));
                let p2c = k.matmul(&pos_q.transpose(-1, -2));
                let index = (-&rel_pos + span)
                    .clamp(0, 2 * span - 1)
                    .expand([b, h, t, t], false);
                scores += p2c.gather(-1, &index, false).transpose(-1, -2) / scale;
            }
        }
        // transformers fills with the dtype's lowest finite value.
        let lowest = match scores.kind() {
            Kind::Half => -65504.0,
            Kind::BFloat16 => -3.389_531_389_251_535_5e38,
            _ => f64::from(f32::MIN),
        };
        let scores = scores.masked_fill(&mask.logical_not(), lowest);
        let probs = dropout(
            &scores.softmax(-1, scores.kind()),
            self.attn_dropout,
            train,
        );
        let s = x.size();
        let a = probs.matmul(&v).transpose(1, 2).reshape([s[0], s[1], -1]);
        let a = dropout(
            &self.attn_out.forward_t(&a, train),
            self.hidden_dropout,
            train,
        );
        let a = self.attn_norm.forward(&(a + x));
        let m = self.act.apply(&self.intermediate.forward_t(&a, train));
        let m = dropout(
            &self.output.forward_t(&m, train),
            self.hidden_dropout,
            train,
        );
        self.out_norm.forward(&(m + a))
    }
}

impl Block for DebertaV2Layer {
    fn forward_t(&self, x: &Tensor, ctx: &LayerCtx, train: bool) -> Tensor {
        let dense = ctx.unpack(x);
        let out = self.forward_dense(&dense, &ctx.mask, train);
        ctx.query_rows(&ctx.pack(out))
    }
}

/// Embeddings and encoder (`deberta.embeddings`, `deberta.encoder`).
#[derive(Debug)]
pub struct DebertaV2Backbone {
    pub embeddings: DebertaV2Embeddings,
    pub layers: Vec<DebertaV2Layer>,
    /// Kept so the table and its norm are registered once (the layers hold shallow copies).
    pub rel_embeddings: Option<LoraEmbedding>,
    pub rel_norm: Option<LayerNorm>,
}

impl DebertaV2Backbone {
    pub fn load(ld: &mut Loader, cfg: &DebertaV2Config) -> Result<Self> {
        let (h, e) = (cfg.hidden_size, cfg.embedding_size());
        let p = "deberta.embeddings";
        let embeddings = DebertaV2Embeddings {
            word: ld.embedding(
                &format!("{p}.word_embeddings"),
                cfg.vocab_size,
                e,
                cfg.pad_token_id,
            )?,
            position: if cfg.position_biased_input {
                Some(ld.embedding(
                    &format!("{p}.position_embeddings"),
                    cfg.max_position_embeddings,
                    e,
                    None,
                )?)
            } else {
                None
            },
            token_type: if cfg.type_vocab_size > 0 {
                Some(ld.embedding(
                    &format!("{p}.token_type_embeddings"),
                    cfg.type_vocab_size,
                    e,
                    None,
                )?)
            } else {
                None
            },
            embed_proj: if e != h {
                Some(ld.linear(
                    &format!("{p}.embed_proj"),
                    e,
                    h,
                    false,
                    WeightLayout::OutIn,
                )?)
            } else {
                None
            },
            layer_norm: ld.layer_norm(&format!("{p}.LayerNorm"), h, cfg.layer_norm_eps)?,
            dropout: cfg.hidden_dropout_prob,
        };
        let span = cfg.pos_ebd_size();
        let (rel_embeddings, rel_norm) = if cfg.relative_attention {
            let table =
                ld.embedding("deberta.encoder.rel_embeddings", 2 * span, h, None)?;
            let norm = if cfg.norm_rel() {
                Some(ld.layer_norm("deberta.encoder.LayerNorm", h, cfg.layer_norm_eps)?)
            } else {
                None
            };
            (Some(table), norm)
        } else {
            (None, None)
        };
        let types = cfg.pos_att_types();
        let (c2p, p2c) = (
            types.iter().any(|t| t == "c2p"),
            types.iter().any(|t| t == "p2c"),
        );
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers as usize);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("deberta.encoder.layer.{i}");
            let lin = |ld: &mut Loader, name: &str, fin, fout| {
                ld.linear(&format!("{p}.{name}"), fin, fout, true, WeightLayout::OutIn)
            };
            let i_size = cfg.intermediate_size;
            let rel = cfg.relative_attention;
            layers.push(DebertaV2Layer {
                query: lin(ld, "attention.self.query_proj", h, h)?,
                key: lin(ld, "attention.self.key_proj", h, h)?,
                value: lin(ld, "attention.self.value_proj", h, h)?,
                pos_key: if rel && c2p && !cfg.share_att_key {
                    Some(lin(ld, "attention.self.pos_key_proj", h, h)?)
                } else {
                    None
                },
                pos_query: if rel && p2c && !cfg.share_att_key {
                    Some(lin(ld, "attention.self.pos_query_proj", h, h)?)
                } else {
                    None
                },
                attn_out: lin(ld, "attention.output.dense", h, h)?,
                attn_norm: ld.layer_norm(
                    &format!("{p}.attention.output.LayerNorm"),
                    h,
                    cfg.layer_norm_eps,
                )?,
                intermediate: lin(ld, "intermediate.dense", h, i_size)?,
                output: lin(ld, "output.dense", i_size, h)?,
                out_norm: ld.layer_norm(&format!("{p}.output.LayerNorm"), h, cfg.layer_norm_eps)?,
                heads: cfg.num_attention_heads,
                act: Activation::parse(&cfg.hidden_act)?,
                attn_dropout: cfg.attention_probs_dropout_prob,
                hidden_dropout: cfg.hidden_dropout_prob,
                rel: rel_embeddings.as_ref().map(|t| t.weight.shallow_clone()),
                rel_norm: rel_norm.as_ref().and_then(|n| {
                    n.bias
                        .as_ref()
                        .map(|b| (n.weight.shallow_clone(), b.shallow_clone(), n.eps))
                }),
                c2p: rel && c2p,
                p2c: rel && p2c,
                scale_factor: 1 + c2p as i64 + p2c as i64,
                share_att_key: cfg.share_att_key,
                att_span: span,
                position_buckets: cfg.position_buckets,
                max_relative_positions: cfg.max_relative_positions(),
            });
        }
        Ok(DebertaV2Backbone {
            embeddings,
            layers,
            rel_embeddings,
            rel_norm,
        })
    }
}

impl Backbone for DebertaV2Backbone {
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
        let e = &self.embeddings;
        let mut x = e.word.forward(input_ids);
        if let Some(pos) = &e.position {
            let t = input_ids.size()[1];
            let ids = Tensor::arange(t, (Kind::Int64, input_ids.device())).unsqueeze(0);
            x += pos.forward(&ids);
        }
        if let Some(tt) = &e.token_type {
            let types = match token_type_ids {
                Some(t) => tt.forward(t),
                None => tt.forward(&input_ids.zeros_like()),
            };
            x += types;
        }
        if let Some(proj) = &e.embed_proj {
            x = proj.forward_t(&x, train);
        }
        dropout(&e.layer_norm.forward(&x), e.dropout, train)
    }

    fn num_layers(&self) -> usize {
        self.layers.len()
    }

    fn layer(&self, i: usize) -> &dyn Block {
        &self.layers[i]
    }
}

/// `ContextPooler` (dropout, `pooler.dense`, activation on the first token), dropout,
/// `classifier`.
#[derive(Debug)]
pub struct ContextPoolerHead {
    pub dense: LoraLinear,
    pub classifier: LoraLinear,
    pub act: Activation,
    pub pooler_dropout: f64,
    pub dropout: f64,
}

impl FirstTokenHead for ContextPoolerHead {
    fn forward_read(&self, first: &Tensor, train: bool) -> Tensor {
        let x = dropout(first, self.pooler_dropout, train);
        let x = self.act.apply(&self.dense.forward_t(&x, train));
        let x = dropout(&x, self.dropout, train);
        self.classifier.forward_t(&x, train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(extra: Value) -> String {
        let mut v = serde_json::json!({"model_type": "deberta-v2", "hidden_size": 32,
            "num_attention_heads": 4, "relative_attention": true, "pos_att_type": ["c2p", "p2c"]});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        format!("{:#}", parse(v).expect_err("expected a refusal"))
    }

    #[test]
    fn options_not_implemented_are_refused_by_name() {
        let msg = refused(serde_json::json!({"conv_kernel_size": 3}));
        assert!(msg.contains("conv_kernel_size 3"), "{msg}");
        let msg = refused(serde_json::json!({"pos_att_type": "p2c|p2p"}));
        assert!(msg.contains("pos_att_type \"p2p\" is not supported"), "{msg}");
        let msg = refused(serde_json::json!({"norm_rel_ebd": "layer_norm|rms"}));
        assert!(msg.contains("norm_rel_ebd \"rms\""), "{msg}");
        let msg = refused(serde_json::json!({"attention_head_size": 4}));
        assert!(msg.contains("attention_head_size 4"), "{msg}");
        let msg = refused(serde_json::json!({"hidden_act": "laplace"}));
        assert!(msg.contains("hidden_act"), "{msg}");
    }

    #[test]
    fn log_buckets_follow_transformers() {
        // make_log_bucket_position(rel, bucket_size=4, max_position=8) for rel = 0 - k, k < 9,
        // computed with transformers 5.24.
        let rel = relative_positions(9, 4, 8, tch::Device::Cpu);
        let row: Vec<i64> = Vec::try_from(rel.get(0)).unwrap();
        assert_eq!(row, vec![0, -1, -2, -3, -3, -3, -3, -3, -4]);
        let col: Vec<i64> = Vec::try_from(rel.select(1, 0)).unwrap();
        assert_eq!(col, vec![0, 1, 2, 3, 3, 3, 3, 3, 4]);
        // DeBERTa-v3's buckets (256, 512); position 511 is where the log quotient is exactly 1.
        let rel = relative_positions(520, 256, 512, tch::Device::Cpu);
        let row: Vec<i64> = Vec::try_from(rel.get(0)).unwrap();
        let at: Vec<i64> = [0, 127, 128, 129, 200, 300, 511, 512, 519]
            .iter()
            .map(|&k| row[k])
            .collect();
        assert_eq!(at, vec![0, -127, -128, -129, -169, -207, -255, -256, -257]);
        let plain = relative_positions(3, -1, 8, tch::Device::Cpu);
        let flat: Vec<i64> = Vec::try_from(plain.reshape([-1])).unwrap();
        assert_eq!(flat, vec![0, -1, -2, 1, 0, -1, 2, 1, 0]);
    }
}
