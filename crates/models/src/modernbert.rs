//! ModernBERT (`model_type: "modernbert"`, `ModernBertForSequenceClassification`): a pre-norm
//! bidirectional encoder without absolute positions. Token embeddings, LayerNorm (no bias
//! unless `norm_bias`), then layers of `attn_norm` (none in layer 0), one fused `attn.Wqkv`,
//! rotary embeddings, `attn.Wo`, `mlp_norm` and a GeGLU-style `mlp.Wi` (input and gate halves)
//! / `mlp.Wo`; a `final_norm`. Every `global_attn_every_n_layers`-th layer (from layer 0, by
//! default every third) attends to the whole sequence with RoPE base 160000; the others see
//! keys at most `local_attention / 2` positions away on either side, with base 10000 (from
//! transformers 5's per-layer-type `rope_parameters`, or the older `global_rope_theta` /
//! `local_rope_theta`). The classifier pools the first token (`classifier_pooling: "cls"`) or
//! the mean of the unpadded tokens (`"mean"`), then `head.dense`, the activation, `head.norm`
//! and `classifier`; a masked-LM checkpoint's `head` (as ModernBERT-base ships) is loaded,
//! `classifier` is new.

use std::any::Any;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;
use tch::{Kind, Tensor};

use loraplus_core::dropout::dropout;
use loraplus_core::{LayerNorm, LoraEmbedding, LoraLinear, WeightLayout};

use crate::arch::{sliding_flags, Activation, Architecture, CommonConfig, FULL, SLIDING};
use crate::attention::{padding_mask, sdpa, LayerCtx};
use crate::backbone::{Backbone, Block, FreshLinear, Loader};
use crate::heads::{FirstTokenHead, Head, TaskHead};
use crate::llama::apply_rope;
use crate::rope::RopeConfig;

// Defaults of transformers' `ModernBertConfig` (configuration_modernbert.py).
fn d_vocab_size() -> i64 {
    50368
}
fn d_hidden_size() -> i64 {
    768
}
fn d_intermediate_size() -> i64 {
    1152
}
fn d_layers() -> i64 {
    22
}
fn d_heads() -> i64 {
    12
}
fn d_gelu() -> String {
    "gelu".into()
}
fn d_positions() -> i64 {
    8192
}
fn d_initializer_range() -> f64 {
    0.02
}
fn d_norm_eps() -> f64 {
    1e-5
}
fn d_pad() -> Option<i64> {
    Some(50283)
}
fn d_every_n() -> i64 {
    3
}
fn d_local_attention() -> i64 {
    128
}
fn d_cls() -> String {
    "cls".into()
}
/// transformers' `ModernBertConfig.default_theta`.
const GLOBAL_THETA: f64 = 160_000.0;
const LOCAL_THETA: f64 = 10_000.0;


/// ModernBERT's `config.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ModernBertConfig {
    #[serde(default = "d_vocab_size")]
    pub vocab_size: i64,
    #[serde(default = "d_hidden_size")]
    pub hidden_size: i64,
    #[serde(default = "d_intermediate_size")]
    pub intermediate_size: i64,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "d_heads")]
    pub num_attention_heads: i64,
    #[serde(default = "d_gelu")]
    pub hidden_activation: String,
    #[serde(default = "d_positions")]
    pub max_position_embeddings: i64,
    #[serde(default = "d_initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "d_norm_eps")]
    pub norm_eps: f64,
    #[serde(default)]
    pub norm_bias: bool,
    #[serde(default = "d_pad")]
    pub pad_token_id: Option<i64>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub attention_dropout: f64,
    /// Per layer, `"full_attention"` or `"sliding_attention"`; `None`: every
    /// `global_attn_every_n_layers`-th layer, from layer 0, is full.
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default = "d_every_n")]
    pub global_attn_every_n_layers: i64,
    /// transformers 5: `{"full_attention": {..}, "sliding_attention": {..}}`.
    #[serde(default)]
    pub rope_parameters: Option<Value>,
    /// Older configs: the full layers' base, the sliding layers' base, and a scaling for both.
    #[serde(default)]
    pub global_rope_theta: Option<f64>,
    #[serde(default)]
    pub local_rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    /// The sliding layers' whole window: each query sees `local_attention / 2` keys on each side.
    #[serde(default = "d_local_attention")]
    pub local_attention: i64,
    /// The half window, when a config gives it: transformers' `sliding_window` setter makes
    /// `local_attention` twice it (it wins over `local_attention`).
    #[serde(default)]
    pub sliding_window: Option<i64>,
    #[serde(default)]
    pub embedding_dropout: f64,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub mlp_dropout: f64,
    /// `"cls"` (the first token) or `"mean"` (of the unpadded tokens).
    #[serde(default = "d_cls")]
    pub classifier_pooling: String,
    #[serde(default)]
    pub classifier_dropout: f64,
    /// Bias of `head.dense`.
    #[serde(default)]
    pub classifier_bias: bool,
    #[serde(default = "d_gelu")]
    pub classifier_activation: String,
    #[serde(flatten)]
    pub common: CommonConfig,
}

impl ModernBertConfig {
    /// The keys on each side a sliding layer's query sees: `sliding_window`, else
    /// `local_attention / 2`.
    pub fn half_window(&self) -> i64 {
        self.sliding_window.unwrap_or(self.local_attention / 2)
    }

    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Whether each layer uses the sliding window, checked against `num_hidden_layers`.
    pub fn sliding_layers(&self) -> Result<Vec<bool>> {
        let n = self.num_hidden_layers.max(0) as usize;
        let Some(types) = &self.layer_types else {
            if self.global_attn_every_n_layers < 1 {
                bail!(
                    "modernbert: global_attn_every_n_layers must be at least 1, found {}",
                    self.global_attn_every_n_layers
                );
            }
            // transformers: "sliding_attention" if i % n else "full_attention".
            let every = self.global_attn_every_n_layers as usize;
            return Ok((0..n).map(|i| i % every != 0).collect());
        };
        sliding_flags("modernbert", types, self.num_hidden_layers)
    }

    /// The full layers' and the sliding layers' RoPE, as transformers'
    /// `convert_rope_params_to_dict` reads them: per layer type from `rope_parameters`, each
    /// base defaulting to `global_rope_theta` / `local_rope_theta`, else 160000 / 10000; the
    /// flat `rope_scaling` updates both types' parameters, its keys winning.
    pub fn ropes(&self) -> Result<(RopeConfig, RopeConfig)> {
        let per_type = crate::rope::per_layer_type("modernbert", &self.rope_parameters)?;
        let parse = |ty: &str, theta: f64| {
            RopeConfig::parse(
                &format!("modernbert {ty}"),
                Some(theta),
                &Some(crate::rope::updated_by(per_type.get(ty), &self.rope_scaling)?),
                self.head_dim(),
                self.max_position_embeddings,
            )
        };
        Ok((
            parse(FULL, self.global_rope_theta.unwrap_or(GLOBAL_THETA))?,
            parse(SLIDING, self.local_rope_theta.unwrap_or(LOCAL_THETA))?,
        ))
    }

    fn mean_pooling(&self) -> Result<bool> {
        match self.classifier_pooling.as_str() {
            "cls" => Ok(false),
            "mean" => Ok(true),
            other => bail!(
                "modernbert classifier_pooling {other:?} is not supported; supported: \"cls\", \"mean\""
            ),
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.num_attention_heads < 1 || self.hidden_size % self.num_attention_heads != 0 {
            bail!(
                "modernbert: hidden_size ({}) must be a multiple of num_attention_heads ({})",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if self.half_window() < 0 {
            bail!(
                "modernbert: local_attention (or sliding_window) must not be negative, found {}",
                self.sliding_window.unwrap_or(self.local_attention)
            );
        }
        Activation::parse(&self.hidden_activation).context("modernbert hidden_activation")?;
        Activation::parse(&self.classifier_activation)
            .context("modernbert classifier_activation")?;
        self.sliding_layers()?;
        self.ropes()?;
        self.mean_pooling()?;
        Ok(())
    }
}

/// `model_type: "modernbert"` (registered in [`crate::registry`]).
pub fn parse(value: Value) -> Result<Box<dyn Architecture>> {
    let c: ModernBertConfig = serde_json::from_value(value).context("modernbert config")?;
    c.validate()?;
    Ok(Box::new(c))
}

impl Architecture for ModernBertConfig {
    fn model_type(&self) -> &'static str {
        "modernbert"
    }
    fn base_model_prefix(&self) -> &'static str {
        "model"
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
    /// Rotary positions: no table.
    fn max_positions(&self) -> Option<i64> {
        None
    }
    fn generation_positions(&self) -> Option<i64> {
        None
    }
    fn common(&self) -> &CommonConfig {
        &self.common
    }
    /// PEFT names none for ModernBERT: the attention's fused projection, as for Phi-3; the
    /// pooling head (pretrained in a masked-LM checkpoint) and the new classifier train in full.
    fn recommended_lora_modules(&self) -> (Vec<&'static str>, Vec<&'static str>) {
        (vec!["Wqkv"], vec!["head", "classifier"])
    }
    fn head_specs(&self, task: Head) -> Vec<FreshLinear> {
        match task {
            Head::SequenceClassification { num_labels } => vec![
                FreshLinear {
                    module: "head.dense".into(),
                    in_features: self.hidden_size,
                    out_features: self.hidden_size,
                    bias: self.classifier_bias,
                },
                FreshLinear {
                    module: "classifier".into(),
                    in_features: self.hidden_size,
                    out_features: num_labels,
                    bias: true,
                },
            ],
            Head::CausalLm => Vec::new(),
        }
    }
    fn build(&self, ld: &mut Loader, task: Head) -> Result<(Box<dyn Backbone + Send>, TaskHead)> {
        let Head::SequenceClassification { num_labels } = task else {
            bail!("modernbert is an encoder: it has no causal-LM head");
        };
        let bb = ModernBertBackbone::load(ld, self)?;
        let h = self.hidden_size;
        let head = ModernBertHead {
            dense: ld.linear("head.dense", h, h, self.classifier_bias, WeightLayout::OutIn)?,
            act: Activation::parse(&self.classifier_activation)?,
            norm: ld.layer_norm_or_fresh("head.norm", h, self.norm_eps, self.norm_bias)?,
            dropout: self.classifier_dropout,
            classifier: ld.linear("classifier", h, num_labels, true, WeightLayout::OutIn)?,
        };
        let head = if self.mean_pooling()? {
            TaskHead::MeanPooled(Box::new(head))
        } else {
            TaskHead::FirstToken(Box::new(head))
        };
        Ok((Box::new(bb), head))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// One pre-norm encoder layer (`model.layers.{i}`).
#[derive(Debug)]
pub struct ModernBertLayer {
    /// `attn_norm`; layer 0 has none (the embeddings' norm precedes it).
    pub attn_norm: Option<LayerNorm>,
    pub wqkv: LoraLinear,
    pub attn_wo: LoraLinear,
    pub mlp_norm: LayerNorm,
    /// `[input | gate]`, `2 * intermediate_size` wide.
    pub wi: LoraLinear,
    pub mlp_wo: LoraLinear,
    pub heads: i64,
    pub act: Activation,
    /// `Some(local_attention / 2)` on a sliding layer: the keys on each side a query sees.
    pub half_window: Option<i64>,
    pub attention_dropout: f64,
    pub mlp_dropout: f64,
}

impl ModernBertLayer {
    fn load(ld: &mut Loader, p: &str, i: i64, sliding: bool, cfg: &ModernBertConfig) -> Result<Self> {
        let (h, m) = (cfg.hidden_size, cfg.intermediate_size);
        let norm = |ld: &mut Loader, name: &str| {
            ld.layer_norm_with(&format!("{p}.{name}"), h, cfg.norm_eps, cfg.norm_bias)
        };
        let lin = |ld: &mut Loader, name: &str, fin, fout, bias| {
            ld.linear(&format!("{p}.{name}"), fin, fout, bias, WeightLayout::OutIn)
        };
        Ok(ModernBertLayer {
            attn_norm: if i == 0 {
                None
            } else {
                Some(norm(ld, "attn_norm")?)
            },
            wqkv: lin(ld, "attn.Wqkv", h, 3 * h, cfg.attention_bias)?,
            attn_wo: lin(ld, "attn.Wo", h, h, cfg.attention_bias)?,
            mlp_norm: norm(ld, "mlp_norm")?,
            wi: lin(ld, "mlp.Wi", h, 2 * m, cfg.mlp_bias)?,
            mlp_wo: lin(ld, "mlp.Wo", m, h, cfg.mlp_bias)?,
            heads: cfg.num_attention_heads,
            act: Activation::parse(&cfg.hidden_activation)?,
            half_window: sliding.then_some(cfg.half_window()),
            attention_dropout: cfg.attention_dropout,
            mlp_dropout: cfg.mlp_dropout,
        })
    }
}

impl Block for ModernBertLayer {
    fn forward_t(&self, x: &Tensor, ctx: &LayerCtx, train: bool) -> Tensor {
        let local;
        let ctx = if self.half_window.is_some() {
            local = ctx.with_local_rope();
            &local
        } else {
            ctx
        };
        let h = match &self.attn_norm {
            Some(norm) => norm.forward(x),
            None => x.shallow_clone(),
        };
        let width = self.attn_wo.out_features();
        let d = width / self.heads;
        // Every row's keys and values; the queries of the returned rows only.
        let rows = self.wqkv.forward_t(&h, train);
        let q = ctx.query_heads(&ctx.query_rows(&rows).narrow(-1, 0, width), self.heads, d);
        let qkv = ctx.unpack(&rows);
        let k = ctx.heads(&qkv.narrow(-1, width, width), self.heads, d);
        let v = ctx.heads(&qkv.narrow(-1, 2 * width, width), self.heads, d);
        // transformers rotates in f32 (tables in the model dtype), then casts back.
        let rotate = |x: &Tensor, cos: &Tensor, sin: &Tensor| {
            apply_rope(&x.to_kind(Kind::Float), cos, sin).to_kind(x.kind())
        };
        let (q, k) = match (ctx.query_rope(), &ctx.rope) {
            (Some((qc, qs)), Some((kc, ks))) => (rotate(&q, qc, qs), rotate(&k, kc, ks)),
            _ => (q, k),
        };
        let windowed;
        let mask = match self.half_window {
            Some(w) => {
                windowed = ctx.bidirectional_window_query_mask(w);
                &windowed
            }
            None => ctx.query_mask(),
        };
        let a = sdpa(&q, &k, &v, mask, self.attention_dropout, train, None);
        let a = self.attn_wo.forward_t(&ctx.merge_heads(&a), train);
        let x = ctx.query_rows(x) + dropout(&a, self.attention_dropout, train);
        let gate = self
            .wi
            .forward_t(&self.mlp_norm.forward(&x), train)
            .chunk(2, -1);
        let m = dropout(
            &(self.act.apply(&gate[0]) * &gate[1]),
            self.mlp_dropout,
            train,
        );
        x + self.mlp_wo.forward_t(&m, train)
    }
}

/// `model.embeddings` (`tok_embeddings`, `norm`), the layers, `model.final_norm` and the two
/// RoPEs.
#[derive(Debug)]
pub struct ModernBertBackbone {
    pub tok_embeddings: LoraEmbedding,
    pub embeddings_norm: LayerNorm,
    pub embedding_dropout: f64,
    pub layers: Vec<ModernBertLayer>,
    pub final_norm: LayerNorm,
    /// The full layers' RoPE and its inverse frequencies (`None` when they depend on the
    /// length); the sliding layers' the same.
    pub rope: (RopeConfig, Option<(Tensor, f64)>),
    pub local_rope: (RopeConfig, Option<(Tensor, f64)>),
}

impl ModernBertBackbone {
    pub fn load(ld: &mut Loader, cfg: &ModernBertConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let tok_embeddings = ld.embedding(
            "model.embeddings.tok_embeddings",
            cfg.vocab_size,
            h,
            cfg.pad_token_id,
        )?;
        let embeddings_norm =
            ld.layer_norm_with("model.embeddings.norm", h, cfg.norm_eps, cfg.norm_bias)?;
        let sliding = cfg.sliding_layers()?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                ModernBertLayer::load(ld, &format!("model.layers.{i}"), i, sliding[i as usize], cfg)
            })
            .collect::<Result<Vec<_>>>()?;
        let final_norm = ld.layer_norm_with("model.final_norm", h, cfg.norm_eps, cfg.norm_bias)?;
        let (global, local) = cfg.ropes()?;
        let fixed = |rope: &RopeConfig| {
            (!rope.depends_on_length()).then(|| rope.inv_freq(0, ld.device()))
        };
        let (inv_global, inv_local) = (fixed(&global), fixed(&local));
        Ok(ModernBertBackbone {
            tok_embeddings,
            embeddings_norm,
            embedding_dropout: cfg.embedding_dropout,
            layers,
            final_norm,
            rope: (global, inv_global),
            local_rope: (local, inv_local),
        })
    }

    fn tables(&self, which: &(RopeConfig, Option<(Tensor, f64)>), t: i64) -> (Tensor, Tensor) {
        let pos = Tensor::arange(t, (Kind::Float, self.tok_embeddings.weight.device()));
        let (cos, sin) = which
            .0
            .tables(&which.1, &pos, self.tok_embeddings.weight.kind());
        (cos.view([1, 1, t, -1]), sin.view([1, 1, t, -1]))
    }
}

impl Backbone for ModernBertBackbone {
    /// Bidirectional padding mask (the sliding layers narrow it themselves); both layer types'
    /// rotary tables for positions `0..T`. `position_ids` are not taken (refused by the task
    /// model).
    fn context(
        &self,
        _input_ids: &Tensor,
        attention_mask: &Tensor,
        _position_ids: Option<&Tensor>,
    ) -> LayerCtx {
        let size = attention_mask.size();
        let mut ctx = LayerCtx::dense(
            padding_mask(attention_mask),
            Some(self.tables(&self.rope, size[1])),
            size[0],
            size[1],
        );
        ctx.local_rope = Some(self.tables(&self.local_rope, size[1]));
        ctx
    }

    fn embed(
        &self,
        input_ids: &Tensor,
        _token_type_ids: Option<&Tensor>,
        _position_ids: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let x = self
            .embeddings_norm
            .forward(&self.tok_embeddings.forward(input_ids));
        dropout(&x, self.embedding_dropout, train)
    }

    fn num_layers(&self) -> usize {
        self.layers.len()
    }

    fn layer(&self, i: usize) -> &dyn Block {
        &self.layers[i]
    }

    fn final_norm(&self, h: Tensor) -> Tensor {
        self.final_norm.forward(&h)
    }
}

/// `ModernBertPredictionHead` (`head.dense`, activation, `head.norm`), dropout, `classifier`,
/// on the pooled hidden state.
#[derive(Debug)]
pub struct ModernBertHead {
    pub dense: LoraLinear,
    pub act: Activation,
    pub norm: LayerNorm,
    pub dropout: f64,
    pub classifier: LoraLinear,
}

impl FirstTokenHead for ModernBertHead {
    fn forward_read(&self, pooled: &Tensor, train: bool) -> Tensor {
        let x = self
            .norm
            .forward(&self.act.apply(&self.dense.forward_t(pooled, train)));
        self.classifier
            .forward_t(&dropout(&x, self.dropout, train), train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: Value) -> ModernBertConfig {
        serde_json::from_value(json).unwrap()
    }

    fn parse_err(json: Value) -> String {
        format!("{:#}", parse(json).expect_err("should be refused"))
    }

    /// transformers' defaults (ModernBERT-base): every third layer full from layer 0, bases
    /// 160000 and 10000, a window of 64 each side, cls pooling.
    #[test]
    fn defaults_follow_transformers() {
        let a = parse(serde_json::json!({"model_type": "modernbert"})).unwrap();
        let c = a.as_any().downcast_ref::<ModernBertConfig>().unwrap();
        let sliding = c.sliding_layers().unwrap();
        let full: Vec<usize> = (0..22).filter(|&i| !sliding[i]).collect();
        assert_eq!(full, [0, 3, 6, 9, 12, 15, 18, 21]);
        let (global, local) = c.ropes().unwrap();
        assert_eq!((global.theta, local.theta), (GLOBAL_THETA, LOCAL_THETA));
        assert_eq!((c.half_window(), c.head_dim()), (64, 64));
        let c = config(serde_json::json!({"local_attention": 8, "sliding_window": 1}));
        assert_eq!(c.half_window(), 1);
        assert!(!c.mean_pooling().unwrap());
        assert_eq!(a.recommended_lora_modules(), (vec!["Wqkv"], vec!["head", "classifier"]));
    }

    #[test]
    fn old_and_new_rope_keys_agree() {
        let old = config(serde_json::json!({"global_rope_theta": 8e4, "local_rope_theta": 5e3}));
        let new = config(serde_json::json!({"rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": 8e4},
            "sliding_attention": {"rope_type": "default", "rope_theta": 5e3}}}));
        assert_eq!(old.ropes().unwrap(), new.ropes().unwrap());
    }

    #[test]
    fn bad_configs_are_refused() {
        let e = parse_err(serde_json::json!({"model_type": "modernbert", "classifier_pooling": "max"}));
        assert!(e.contains("classifier_pooling \"max\""), "{e}");
        let e = parse_err(serde_json::json!({"model_type": "modernbert", "num_attention_heads": 5}));
        assert!(e.contains("multiple of num_attention_heads"), "{e}");
        let e = parse_err(serde_json::json!({"model_type": "modernbert", "global_attn_every_n_layers": 0}));
        assert!(e.contains("global_attn_every_n_layers"), "{e}");
        let e = parse_err(serde_json::json!({"model_type": "modernbert",
            "rope_parameters": {"rope_theta": 1e4}}));
        assert!(e.contains("one object per layer type"), "{e}");
        let e = parse_err(serde_json::json!({"model_type": "modernbert", "hidden_activation": "laplace"}));
        assert!(e.contains("hidden_activation"), "{e}");
    }
}
