//! Llama: pre-RMSNorm causal decoder with rotary position embeddings, grouped-query attention
//! and a SwiGLU MLP (`model.layers.{i}.self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`).
//! The rotary tables are those of the batch's position ids when given (packed rows,
//! generation), of `0..T` otherwise; a layer can run one decoding step on its key-value cache
//! (keys stored after rotation).
//!
//! The layers are described by a [`DecoderSpec`], so that the Llama family (Qwen2: q/k/v
//! biases; Mistral: sliding-window attention; Gemma) reuses them from its own file; a relative
//! whose layers differ (Phi-3's fused projections, Gemma 2's norms and soft-capping) keeps the
//! embeddings, rotary tables, masks, final norm and heads and brings its own [`Block`]s
//! ([`DecoderSpec::build_with`], [`LlamaBackbone::load_with`]).


use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;
use tch::{Kind, Tensor};

use loraplus_core::{FusedLinears, LoraEmbedding, LoraLinear, WeightLayout};

use crate::arch::{default_initializer_range, Activation, Architecture, CommonConfig};
use crate::attention::{
    causal_step_mask, decoder_mask, extend_cache, sdpa, sliding_window, KvCache, LayerCtx,
};
use crate::backbone::{Backbone, Block, FreshLinear, Loader, RmsNorm, RmsStyle};
use crate::heads::{decoder_head, decoder_head_specs, Head, TaskHead};
use crate::rope::RopeConfig;

// Defaults of transformers' `LlamaConfig` (configuration_llama.py).
fn llama_vocab_size() -> i64 {
    32000
}
fn llama_hidden_size() -> i64 {
    4096
}
fn llama_intermediate_size() -> i64 {
    11008
}
fn llama_layers() -> i64 {
    32
}
fn llama_heads() -> i64 {
    32
}
pub(crate) fn d_silu() -> String {
    "silu".into()
}
fn llama_positions() -> i64 {
    2048
}
pub(crate) fn d_rms_eps() -> f64 {
    1e-6
}
pub use crate::rope::DEFAULT_ROPE_THETA;

/// The RoPE base: `rope_parameters.rope_theta` (or `rope_scaling`'s), else the top-level
/// `rope_theta`, else [`DEFAULT_ROPE_THETA`].
pub fn rope_theta_of(
    top_level: Option<f64>,
    rope_parameters: &Option<Value>,
    rope_scaling: &Option<Value>,
) -> f64 {
    [rope_parameters, rope_scaling]
        .into_iter()
        .flatten()
        .find_map(|p| p.get("rope_theta").and_then(Value::as_f64))
        .or(top_level)
        .unwrap_or(DEFAULT_ROPE_THETA)
}

/// Llama's `config.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LlamaConfig {
    #[serde(default = "llama_vocab_size")]
    pub vocab_size: i64,
    #[serde(default = "llama_hidden_size")]
    pub hidden_size: i64,
    #[serde(default = "llama_intermediate_size")]
    pub intermediate_size: i64,
    #[serde(default = "llama_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "llama_heads")]
    pub num_attention_heads: i64,
    /// Grouped-query attention; `None` means `num_attention_heads`.
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    /// `None` means hidden_size / num_attention_heads.
    #[serde(default)]
    pub head_dim: Option<i64>,
    #[serde(default = "d_silu")]
    pub hidden_act: String,
    #[serde(default = "llama_positions")]
    pub max_position_embeddings: i64,
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "d_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// transformers < 5 keep the base at the top level.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// transformers 5: `{"rope_theta": .., "rope_type": "default"}`.
    #[serde(default)]
    pub rope_parameters: Option<Value>,
    /// transformers < 5: RoPE scaling (`null` for plain RoPE).
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    /// The pretraining context at the top level, as some configs have it: for llama3 and yarn
    /// RoPE it wins over `rope_parameters`' own (transformers' `standardize_rope_params`).
    #[serde(default)]
    pub original_max_position_embeddings: Option<i64>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(flatten)]
    pub common: CommonConfig,
}

impl LlamaConfig {
    pub fn num_kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> i64 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The RoPE base, from `rope_parameters` (transformers 5) or `rope_theta` (older).
    pub fn rope_theta(&self) -> f64 {
        rope_theta_of(self.rope_theta, &self.rope_parameters, &self.rope_scaling)
    }

    /// The layers this config describes.
    pub fn spec(&self) -> Result<DecoderSpec> {
        let spec = DecoderSpec {
            model_type: "llama",
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            heads: self.num_attention_heads,
            kv_heads: self.num_kv_heads(),
            head_dim: self.head_dim(),
            act: Activation::parse(&self.hidden_act).context("llama hidden_act")?,
            rms_norm_eps: self.rms_norm_eps,
            qkv_bias: self.attention_bias,
            o_bias: self.attention_bias,
            mlp_bias: self.mlp_bias,
            attention_dropout: self.attention_dropout,
            rope: RopeConfig::parse(
                "llama",
                self.rope_theta,
                &crate::rope::standardized(
                    "llama",
                    &self.rope_parameters,
                    &self.rope_scaling,
                    self.original_max_position_embeddings,
                ),
                self.head_dim(),
                self.max_position_embeddings,
            )?,
            local_rope: None,
            sliding_window: None,
            pad_token_id: self.pad_token_id,
            tie_word_embeddings: self.tie_word_embeddings,
            embed_scale: None,
            norm_style: RmsStyle::Llama,
            qk_norm: false,
            nope_layers: Vec::new(),
            rope_in_f32: false,
        };
        spec.validate()?;
        Ok(spec)
    }
}

/// `model_type: "llama"` (registered in [`crate::registry`]).
pub fn parse(value: Value) -> Result<Box<dyn Architecture>> {
    let c: LlamaConfig = serde_json::from_value(value).context("llama config")?;
    c.spec()?;
    Ok(Box::new(c))
}

/// `impl Architecture` for a Llama-family config (`$ty` with Llama's field names and a
/// `spec()` giving its [`DecoderSpec`]): everything but `model_type` is read from the fields or
/// the spec. By default the recommended LoRA targets are the attention's q/v projections
/// (PEFT's default for these model types) and the model is [`DecoderSpec::build`]; a relative
/// with layers of its own names its `targets` and the method that builds it (`build`, with
/// [`crate::arch::Architecture::build`]'s signature). The score head is saved for
/// classification.
macro_rules! llama_family_architecture {
    ($ty:ty, $model_type:literal) => {
        impl $ty {
            fn build_from_spec(
                &self,
                ld: &mut $crate::backbone::Loader,
                task: $crate::heads::Head,
            ) -> anyhow::Result<(
                Box<dyn $crate::backbone::Backbone + Send>,
                $crate::heads::TaskHead,
            )> {
                self.spec()?.build(ld, task)
            }
        }
        $crate::llama::llama_family_architecture!(
            $ty,
            $model_type,
            targets: ["q_proj", "v_proj"],
            build: build_from_spec
        );
    };
    ($ty:ty, $model_type:literal, targets: [$($target:literal),*], build: $build:ident) => {
        impl $crate::arch::Architecture for $ty {
            fn model_type(&self) -> &'static str {
                $model_type
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
            fn max_positions(&self) -> Option<i64> {
                None
            }
            fn generation_positions(&self) -> Option<i64> {
                Some(self.max_position_embeddings)
            }
            fn common(&self) -> &$crate::arch::CommonConfig {
                &self.common
            }
            fn recommended_lora_modules(&self) -> (Vec<&'static str>, Vec<&'static str>) {
                (vec![$($target),*], vec!["score"])
            }
            fn head_specs(&self, task: $crate::heads::Head) -> Vec<$crate::backbone::FreshLinear> {
                // `parse` checked the spec: it cannot fail here.
                self.spec().map_or_else(|_| Vec::new(), |s| s.head_specs(task))
            }
            fn build(
                &self,
                ld: &mut $crate::backbone::Loader,
                task: $crate::heads::Head,
            ) -> anyhow::Result<(
                Box<dyn $crate::backbone::Backbone + Send>,
                $crate::heads::TaskHead,
            )> {
                self.$build(ld, task)
            }
            fn as_any(&self) -> &dyn std::any::Any {
                self
            }
        }
    };
}
pub(crate) use llama_family_architecture;

llama_family_architecture!(LlamaConfig, "llama");

/// The shape and options of a Llama-family decoder, from its config.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderSpec {
    /// For messages.
    pub model_type: &'static str,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_layers: i64,
    pub heads: i64,
    pub kv_heads: i64,
    pub head_dim: i64,
    pub act: Activation,
    pub rms_norm_eps: f64,
    /// Biases of `q_proj`, `k_proj`, `v_proj` (Llama `attention_bias`; always for Qwen2).
    pub qkv_bias: bool,
    /// Bias of `o_proj` (Llama `attention_bias`; never for Qwen2).
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub attention_dropout: f64,
    /// RoPE base and scaling.
    pub rope: RopeConfig,
    /// The RoPE of the layers that take the local tables ([`crate::attention::LayerCtx::with_local_rope`]:
    /// Gemma 3's sliding-window layers, on their own base); `None`: `rope` for every layer.
    pub local_rope: Option<RopeConfig>,
    /// Each query sees the keys of the last `sliding_window` positions, itself included
    /// (Mistral); `None`: every earlier key.
    pub sliding_window: Option<i64>,
    pub pad_token_id: Option<i64>,
    pub tie_word_embeddings: bool,
    /// The embeddings are multiplied by it (Gemma: `sqrt(hidden_size)`, in the model dtype).
    pub embed_scale: Option<f64>,
    /// How the RMSNorm weights apply (Gemma: `1 + weight`).
    pub norm_style: RmsStyle,
    /// RMSNorm over each head's queries and keys before the rotary embedding
    /// (`self_attn.q_norm`, `self_attn.k_norm`, of width `head_dim`: Qwen3).
    pub qk_norm: bool,
    /// The layers that apply no rotary embedding (SmolLM3's `no_rope_layers` zeros, "NoPE").
    pub nope_layers: Vec<i64>,
    /// The rotary tables stay f32, so queries and keys are rotated in f32 and cast back (OLMo
    /// 2's); otherwise they are in the model dtype, as Llama's.
    pub rope_in_f32: bool,
}

impl DecoderSpec {
    pub fn validate(&self) -> Result<()> {
        let m = self.model_type;
        if self.heads <= 0 || self.kv_heads <= 0 {
            bail!("{m}: num_attention_heads and num_key_value_heads must be positive");
        }
        if self.heads % self.kv_heads != 0 {
            bail!(
                "{m}: num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.heads,
                self.kv_heads
            );
        }
        if let Some(w) = self.sliding_window {
            if w < 1 {
                bail!("{m}: sliding_window must be at least 1, found {w}");
            }
        }
        Ok(())
    }

    /// Head layers of `task` the checkpoint may lack.
    pub fn head_specs(&self, task: Head) -> Vec<FreshLinear> {
        decoder_head_specs(
            task,
            self.hidden_size,
            self.vocab_size,
            self.tie_word_embeddings,
        )
    }

    /// The backbone (`model.*`) and the head of `task`.
    pub fn build(&self, ld: &mut Loader, task: Head) -> Result<(Box<dyn Backbone + Send>, TaskHead)> {
        self.build_with(ld, task, |ld, prefix, i| {
            let mut layer = LlamaLayer::load(ld, prefix, self)?;
            layer.rope = !self.nope_layers.contains(&i);
            Ok(layer)
        })
    }

    /// [`Self::build`] with layer `i` loaded by `layer(ld, "model.layers.{i}", i)` (a relative's
    /// own layers on Llama's embeddings, rotary tables, masks, final norm and heads).
    pub fn build_with<L: Block + Send + 'static>(
        &self,
        ld: &mut Loader,
        task: Head,
        layer: impl FnMut(&mut Loader, &str, i64) -> Result<L>,
    ) -> Result<(Box<dyn Backbone + Send>, TaskHead)> {
        let bb = LlamaBackbone::load_with(ld, self, layer)?;
        let head = decoder_head(
            ld,
            task,
            self.hidden_size,
            self.pad_token_id,
            self.tie_word_embeddings,
            &bb.embed_tokens,
        )?;
        Ok((Box::new(bb), head))
    }
}

/// One decoder layer.
#[derive(Debug)]
pub struct LlamaLayer {
    /// `None` for a layer without one (OLMo 2's).
    pub input_layernorm: Option<RmsNorm>,
    /// `q_proj`, `k_proj`, `v_proj` as one product.
    pub qkv: FusedLinears,
    pub q_proj: LoraLinear,
    pub k_proj: LoraLinear,
    pub v_proj: LoraLinear,
    pub o_proj: LoraLinear,
    /// See [`DecoderSpec::qk_norm`].
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    pub post_attention_layernorm: RmsNorm,
    /// `gate_proj`, `up_proj` as one product.
    pub gate_up: FusedLinears,
    pub gate_proj: LoraLinear,
    pub up_proj: LoraLinear,
    pub down_proj: LoraLinear,
    pub heads: i64,
    pub kv_heads: i64,
    pub head_dim: i64,
    pub act: Activation,
    pub attention_dropout: f64,
    /// Whether the rotary embedding applies (see [`DecoderSpec::nope_layers`]).
    pub rope: bool,
}

impl LlamaLayer {
    pub fn load(ld: &mut Loader, p: &str, cfg: &DecoderSpec) -> Result<Self> {
        Self::load_parts(ld, p, cfg, true)
    }

    /// [`Self::load`], with `input_layernorm` only when `input_norm` (OLMo 2's layers have
    /// none).
    pub fn load_parts(ld: &mut Loader, p: &str, cfg: &DecoderSpec, input_norm: bool) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let (nh, nkv, d) = (cfg.heads, cfg.kv_heads, cfg.head_dim);
        let lin = |ld: &mut Loader, name: &str, fin, fout, bias| {
            ld.linear(&format!("{p}.{name}"), fin, fout, bias, WeightLayout::OutIn)
        };
        let ab = cfg.qkv_bias;
        let mb = cfg.mlp_bias;
        let name = |n: &str| format!("{p}.{n}");
        let input_layernorm = if input_norm {
            Some(ld.rms_norm_with(
                &name("input_layernorm"),
                h,
                cfg.rms_norm_eps,
                cfg.norm_style,
            )?)
        } else {
            None
        };
        let attn = ["q_proj", "k_proj", "v_proj"].map(|n| name(&format!("self_attn.{n}")));
        let (qkv, members) = ld.fused_linears(
            &[
                (&attn[0], h, nh * d),
                (&attn[1], h, nkv * d),
                (&attn[2], h, nkv * d),
            ],
            ab,
        )?;
        let [q_proj, k_proj, v_proj]: [LoraLinear; 3] = members
            .try_into()
            .map_err(|_| anyhow::anyhow!("{p}: expected 3 attention projections"))?;
        let o_proj = lin(ld, "self_attn.o_proj", nh * d, h, cfg.o_bias)?;
        let (q_norm, k_norm) = if cfg.qk_norm {
            let mut norm = |n: &str| {
                ld.rms_norm_with(
                    &name(&format!("self_attn.{n}")),
                    d,
                    cfg.rms_norm_eps,
                    cfg.norm_style,
                )
            };
            (Some(norm("q_norm")?), Some(norm("k_norm")?))
        } else {
            (None, None)
        };
        let post_attention_layernorm =
            ld.rms_norm_with(
            &name("post_attention_layernorm"),
            h,
            cfg.rms_norm_eps,
            cfg.norm_style,
        )?;
        let mlp = ["gate_proj", "up_proj"].map(|n| name(&format!("mlp.{n}")));
        let (gate_up, members) = ld.fused_linears(&[(&mlp[0], h, i), (&mlp[1], h, i)], mb)?;
        let [gate_proj, up_proj]: [LoraLinear; 2] = members
            .try_into()
            .map_err(|_| anyhow::anyhow!("{p}: expected gate and up projections"))?;
        Ok(LlamaLayer {
            input_layernorm,
            qkv,
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            q_norm,
            k_norm,
            post_attention_layernorm,
            gate_up,
            gate_proj,
            up_proj,
            down_proj: lin(ld, "mlp.down_proj", i, h, mb)?,
            heads: nh,
            kv_heads: nkv,
            head_dim: d,
            act: cfg.act,
            attention_dropout: cfg.attention_dropout,
            rope: true,
        })
    }
}

/// `cat(-x2, x1)` over the last dimension.
pub(crate) fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size().last().copied().unwrap_or(0) / 2;
    let parts = x.split(half, -1);
    Tensor::cat(&[parts[1].neg(), parts[0].shallow_clone()], -1)
}

/// `x * cos + rotate_half(x) * sin` on the first `cos.size(-1)` dimensions of `x` (all of
/// them, or a prefix under partial rotary embeddings as Phi-3's); the rest pass unchanged.
/// The decoders' step from projections to attention inputs: `kv` (`[.., 2 * kv_heads * d]`,
/// keys then values) into heads, `k_norm` on each key head when given (Qwen3), the rotary
/// tables on the queries `q` (already in heads, and normed) and the keys unless `rope` is false
/// (a NoPE layer), and the keys and values appended to `cache` when one is given (generation).
pub(crate) fn rotary_heads(
    ctx: &LayerCtx,
    q: Tensor,
    kv: &Tensor,
    (kv_heads, d): (i64, i64),
    k_norm: KeyNorm,
    rope: bool,
    cache: Option<&mut KvCache>,
) -> (Tensor, Tensor, Tensor) {
    let kv = kv.split(kv_heads * d, -1);
    let k = match k_norm {
        KeyNorm::Whole(norm) => ctx.heads(&norm.forward(&kv[0]), kv_heads, d),
        KeyNorm::PerHead(norm) => norm.forward(&ctx.heads(&kv[0], kv_heads, d)),
        KeyNorm::Off => ctx.heads(&kv[0], kv_heads, d),
    };
    let v = ctx.heads(&kv[1], kv_heads, d);
    let q = match ctx.query_rope().filter(|_| rope) {
        Some((cos, sin)) => apply_rope(&q, cos, sin),
        None => q,
    };
    let k = match ctx.rope.as_ref().filter(|_| rope) {
        Some((cos, sin)) => apply_rope(&k, cos, sin),
        None => k,
    };
    let (k, v) = match cache {
        Some(cache) => extend_cache(cache, k, v),
        None => (k, v),
    };
    (q, k, v)
}

/// Where the keys are normed before they are rotated ([`rotary_heads`]).
#[derive(Debug, Clone, Copy)]
pub(crate) enum KeyNorm<'a> {
    Off,
    /// Over each head (Qwen3, Gemma 3).
    PerHead(&'a RmsNorm),
    /// Over the whole key projection, before the heads (OLMo 2).
    Whole(&'a RmsNorm),
}

/// In the dtype of `cos` and `sin` (f32 tables rotate a bf16 `x` in f32), cast back to `x`'s.
pub(crate) fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let (d, rot) = (
        x.size().last().copied().unwrap_or(0),
        cos.size().last().copied().unwrap_or(0),
    );
    if rot >= d {
        return (x * cos + rotate_half(x) * sin).to_kind(x.kind());
    }
    let head = x.narrow(-1, 0, rot);
    let rotated = (&head * cos + rotate_half(&head) * sin).to_kind(x.kind());
    Tensor::cat(&[rotated, x.narrow(-1, rot, d - rot)], -1)
}

impl Block for LlamaLayer {
    fn forward_t(&self, x: &Tensor, ctx: &LayerCtx, train: bool) -> Tensor {
        self.forward_inner(x, ctx, train, None)
    }

    fn forward_cached(&self, x: &Tensor, ctx: &LayerCtx, cache: &mut KvCache) -> Result<Tensor> {
        Ok(self.forward_inner(x, ctx, false, Some(cache)))
    }
}

impl LlamaLayer {
    /// The layer; with `cache`, keys (after rotary) and values of earlier positions are
    /// prepended from it and this call's appended to it.
    fn forward_inner(
        &self,
        x: &Tensor,
        ctx: &LayerCtx,
        train: bool,
        cache: Option<&mut KvCache>,
    ) -> Tensor {
        let h = self.input_norm(x);
        let (q, k, v) = self.attention_inputs(&h, ctx, train, None, cache);
        let a = sdpa(
            &q,
            &k,
            &v,
            ctx.query_mask(),
            self.attention_dropout,
            train,
            None,
        );
        let a = ctx.merge_heads(&a);
        let x = ctx.query_rows(x) + self.o_proj.forward_t(&a, train);
        let m = self.mlp(&self.post_attention_layernorm.forward(&x), train);
        x + m
    }

    /// `input_layernorm` on `x`, or `x` for a layer without one.
    pub(crate) fn input_norm(&self, x: &Tensor) -> Tensor {
        match &self.input_layernorm {
            Some(norm) => norm.forward(x),
            None => x.shallow_clone(),
        }
    }

    /// The attention's inputs from `h` (the layer input, normed as the architecture does):
    /// queries of the rows the layer returns and keys and values of every row, in heads
    /// (`[B, heads, T, d]`); the query and key norms applied (over the whole projections when
    /// `whole` gives them, OLMo 2's; else this layer's per-head `q_norm` / `k_norm`, Qwen3's),
    /// rotated unless a NoPE layer, and the keys and values appended to `cache` when given.
    pub(crate) fn attention_inputs(
        &self,
        h: &Tensor,
        ctx: &LayerCtx,
        train: bool,
        whole: Option<(&RmsNorm, &RmsNorm)>,
        cache: Option<&mut KvCache>,
    ) -> (Tensor, Tensor, Tensor) {
        let d = self.head_dim;
        let (q_width, kv_width) = (self.heads * d, self.kv_heads * d);
        let q_whole = |q: Tensor| match whole {
            Some((norm, _)) => norm.forward(&q),
            None => q,
        };
        let (q, kv) = if ctx.queries.is_some() {
            // Query for the returned rows only; key and value for every row.
            let q = q_whole(self.q_proj.forward_t(&ctx.query_rows(h), train));
            let kv = self
                .qkv
                .forward_t(&[&self.k_proj, &self.v_proj], 1, h, train);
            (ctx.query_heads(&q, self.heads, d), ctx.unpack(&kv))
        } else {
            let qkv = self
                .qkv
                .forward_t(&[&self.q_proj, &self.k_proj, &self.v_proj], 0, h, train);
            let qkv = ctx.unpack(&qkv);
            let q = q_whole(qkv.narrow(-1, 0, q_width));
            (ctx.heads(&q, self.heads, d), qkv.narrow(-1, q_width, 2 * kv_width))
        };
        let q = match &self.q_norm {
            Some(norm) => norm.forward(&q),
            None => q,
        };
        let k_norm = match (whole, &self.k_norm) {
            (Some((_, norm)), _) => KeyNorm::Whole(norm),
            (None, Some(norm)) => KeyNorm::PerHead(norm),
            (None, None) => KeyNorm::Off,
        };
        rotary_heads(ctx, q, &kv, (self.kv_heads, d), k_norm, self.rope, cache)
    }

    /// The gated MLP (`down_proj(act(gate_proj(h)) * up_proj(h))`) on `h`.
    pub(crate) fn mlp(&self, h: &Tensor, train: bool) -> Tensor {
        let gate_up = self
            .gate_up
            .forward_t(&[&self.gate_proj, &self.up_proj], 0, h, train)
            .split(self.down_proj.in_features(), -1);
        self.down_proj
            .forward_t(&(self.act.apply(&gate_up[0]) * &gate_up[1]), train)
    }
}

/// `model.{embed_tokens, layers, norm}` and the rotary frequencies. The layers are Llama's,
/// or those of a relative that keeps the rest (Phi-3's fused projections, Gemma 2's).
#[derive(Debug)]
pub struct LlamaBackbone<L = LlamaLayer> {
    pub embed_tokens: LoraEmbedding,
    pub layers: Vec<L>,
    pub norm: RmsNorm,
    /// The RoPE configuration (base, scaling).
    pub rope: RopeConfig,
    /// The inverse frequencies (f32, `[head_dim / 2]`, on the model device) and the factor of
    /// the tables, for every batch; `None` when they depend on its length (`dynamic`).
    pub inv_freq: Option<(Tensor, f64)>,
    /// [`DecoderSpec::local_rope`] with its inverse frequencies, as `rope` and `inv_freq`.
    pub local_rope: Option<(RopeConfig, Option<(Tensor, f64)>)>,
    /// See [`DecoderSpec::sliding_window`].
    pub sliding_window: Option<i64>,
    /// See [`DecoderSpec::embed_scale`]: a scalar in the model dtype.
    pub embed_scale: Option<Tensor>,
    /// See [`Backbone::cache_stale_at`] (set by Phi-3 with LongRoPE; `None` for Llama).
    pub cache_stale_at: Option<i64>,
    /// See [`DecoderSpec::rope_in_f32`].
    pub rope_in_f32: bool,
}

impl LlamaBackbone {
    pub fn load(ld: &mut Loader, cfg: &DecoderSpec) -> Result<Self> {
        Self::load_with(ld, cfg, |ld, prefix, _| LlamaLayer::load(ld, prefix, cfg))
    }
}

impl<L> LlamaBackbone<L> {
    /// The backbone with layer `i` loaded by `layer(ld, "model.layers.{i}", i)`.
    pub fn load_with(
        ld: &mut Loader,
        cfg: &DecoderSpec,
        mut layer: impl FnMut(&mut Loader, &str, i64) -> Result<L>,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let embed_tokens =
            ld.embedding("model.embed_tokens", cfg.vocab_size, h, cfg.pad_token_id)?;
        let layers = (0..cfg.num_layers)
            .map(|i| layer(ld, &format!("model.layers.{i}"), i))
            .collect::<Result<Vec<_>>>()?;
        let norm = ld.rms_norm_with("model.norm", h, cfg.rms_norm_eps, cfg.norm_style)?;
        let fixed = |rope: &RopeConfig| {
            (!rope.depends_on_length()).then(|| rope.inv_freq(0, ld.device()))
        };
        let inv_freq = fixed(&cfg.rope);
        let local_rope = cfg.local_rope.as_ref().map(|r| (r.clone(), fixed(r)));
        Ok(LlamaBackbone {
            embed_tokens,
            layers,
            norm,
            rope: cfg.rope.clone(),
            inv_freq,
            local_rope,
            sliding_window: cfg.sliding_window,
            embed_scale: cfg.embed_scale.map(|s| {
                Tensor::from(s as f32)
                    .to_device(ld.device())
                    .to_kind(ld.kind())
            }),
            cache_stale_at: None,
            rope_in_f32: cfg.rope_in_f32,
        })
    }
}

impl<L> LlamaBackbone<L> {
    /// `(cos, sin)` of `positions` (float, any shape broadcasting to `[.., T]`), `[.., T, head_dim]`.
    /// With `dynamic` RoPE, the frequencies of the batch's length (its largest position + 1,
    /// one host read), as transformers computes them for a model that has not seen a longer
    /// batch before.
    fn rope_tables(&self, positions: &Tensor) -> (Tensor, Tensor) {
        self.tables_of(&self.rope, &self.inv_freq, positions)
    }

    /// [`Self::rope_tables`] of the local RoPE, when there is one.
    fn local_rope_tables(&self, positions: &Tensor) -> Option<(Tensor, Tensor)> {
        self.local_rope
            .as_ref()
            .map(|(rope, inv)| self.tables_of(rope, inv, positions))
    }

    fn tables_of(
        &self,
        rope: &RopeConfig,
        inv_freq: &Option<(Tensor, f64)>,
        positions: &Tensor,
    ) -> (Tensor, Tensor) {
        let kind = if self.rope_in_f32 {
            Kind::Float
        } else {
            self.embed_tokens.weight.kind()
        };
        rope.tables(inv_freq, positions, kind)
    }
}

impl<L: Block> Backbone for LlamaBackbone<L> {
    /// Causal + padding mask (within each document when `position_ids` are given); rotary
    /// tables for `position_ids`, else for positions `0..T` (HF's forward without position ids,
    /// also under left padding).
    fn context(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        position_ids: Option<&Tensor>,
    ) -> LayerCtx {
        let size = attention_mask.size();
        let (rope, local_rope) = match position_ids {
            Some(pos) => (self.rope(pos), self.local_rope(pos)),
            None => {
                let t = input_ids.size()[1];
                let pos = Tensor::arange(t, (Kind::Float, input_ids.device()));
                let shape = |(cos, sin): (Tensor, Tensor)| {
                    (cos.view([1, 1, t, -1]), sin.view([1, 1, t, -1]))
                };
                (
                    Some(shape(self.rope_tables(&pos))),
                    self.local_rope_tables(&pos).map(shape),
                )
            }
        };
        let mask = decoder_mask(attention_mask, position_ids);
        let mask = match self.sliding_window {
            Some(w) => sliding_window(&mask, w),
            None => mask,
        };
        let mut ctx = LayerCtx::dense(mask, rope, size[0], size[1]);
        ctx.local_rope = local_rope;
        ctx
    }

    fn step_mask(&self, attention_mask: &Tensor, queries: i64) -> Tensor {
        let mask = causal_step_mask(attention_mask, queries);
        match self.sliding_window {
            Some(w) => sliding_window(&mask, w),
            None => mask,
        }
    }

    fn rope(&self, position_ids: &Tensor) -> Option<(Tensor, Tensor)> {
        let (cos, sin) = self.rope_tables(&position_ids.to_kind(Kind::Float));
        Some((cos.unsqueeze(1), sin.unsqueeze(1)))
    }

    fn local_rope(&self, position_ids: &Tensor) -> Option<(Tensor, Tensor)> {
        let (cos, sin) = self.local_rope_tables(&position_ids.to_kind(Kind::Float))?;
        Some((cos.unsqueeze(1), sin.unsqueeze(1)))
    }

    fn embed(
        &self,
        input_ids: &Tensor,
        _token_type_ids: Option<&Tensor>,
        _position_ids: Option<&Tensor>,
        _train: bool,
    ) -> Tensor {
        let h = self.embed_tokens.forward(input_ids);
        match &self.embed_scale {
            Some(scale) => h * scale,
            None => h,
        }
    }

    fn cache_stale_at(&self) -> Option<i64> {
        self.cache_stale_at
    }

    fn num_layers(&self) -> usize {
        self.layers.len()
    }

    fn layer(&self, i: usize) -> &dyn Block {
        &self.layers[i]
    }

    fn final_norm(&self, h: Tensor) -> Tensor {
        self.norm.forward(&h)
    }
}
