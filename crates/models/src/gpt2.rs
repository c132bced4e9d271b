//! GPT-2: pre-norm causal decoder with Conv1D (`[in, out]`) weights, learned positions, and
//! the `score` / tied `lm_head` heads that sit on it. The position embeddings read the batch's
//! position ids when given (packed rows, generation), `0..T` otherwise; a block can run one
//! decoding step on its key-value cache.

use std::any::Any;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;
use tch::{Kind, Tensor};

use loraplus_core::dropout::dropout;
use loraplus_core::{LayerNorm, LoraEmbedding, LoraLinear, WeightLayout};

use crate::arch::{
    default_initializer_range, default_true, Activation, Architecture, CommonConfig,
};
use crate::attention::{decoder_mask, extend_cache, sdpa, KvCache, LayerCtx};
use crate::backbone::{Backbone, Block, FreshLinear, Loader};
use crate::heads::{decoder_head, decoder_head_specs, Head, TaskHead};

// Defaults of transformers' `GPT2Config` (configuration_gpt2.py).
fn gpt2_vocab_size() -> i64 {
    50257
}
fn gpt2_positions() -> i64 {
    1024
}
fn gpt2_embd() -> i64 {
    768
}
fn gpt2_layers() -> i64 {
    12
}
fn gpt2_heads() -> i64 {
    12
}
fn d_gelu_new() -> String {
    "gelu_new".into()
}
fn d_dropout() -> f64 {
    0.1
}
fn gpt2_layer_norm_eps() -> f64 {
    1e-5
}

/// GPT-2's `config.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Gpt2Config {
    #[serde(default = "gpt2_vocab_size")]
    pub vocab_size: i64,
    #[serde(default = "gpt2_positions")]
    pub n_positions: i64,
    #[serde(default = "gpt2_embd")]
    pub n_embd: i64,
    #[serde(default = "gpt2_layers")]
    pub n_layer: i64,
    #[serde(default = "gpt2_heads")]
    pub n_head: i64,
    /// MLP width; `None` means 4 * n_embd.
    #[serde(default)]
    pub n_inner: Option<i64>,
    #[serde(default = "d_gelu_new")]
    pub activation_function: String,
    #[serde(default = "d_dropout")]
    pub resid_pdrop: f64,
    #[serde(default = "d_dropout")]
    pub embd_pdrop: f64,
    #[serde(default = "d_dropout")]
    pub attn_pdrop: f64,
    #[serde(default = "gpt2_layer_norm_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "default_true")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    /// Only changes HF's eager attention (upcast to f32); sdpa ignores it, as we do.
    #[serde(default)]
    pub reorder_and_upcast_attn: bool,
    #[serde(default)]
    pub add_cross_attention: bool,
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    #[serde(flatten)]
    pub common: CommonConfig,
}

impl Gpt2Config {
    pub fn inner_dim(&self) -> i64 {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    pub fn validate(&self) -> Result<()> {
        Activation::parse(&self.activation_function).context("gpt2 activation_function")?;
        if self.add_cross_attention {
            bail!("gpt2: add_cross_attention is not supported; only the decoder-only model is implemented");
        }
        if self.n_head <= 0 || self.n_embd % self.n_head != 0 {
            bail!(
                "gpt2: n_embd ({}) is not a multiple of n_head ({})",
                self.n_embd,
                self.n_head
            );
        }
        Ok(())
    }
}

/// `model_type: "gpt2"` (registered in [`crate::registry`]).
pub fn parse(value: Value) -> Result<Box<dyn Architecture>> {
    let c: Gpt2Config = serde_json::from_value(value).context("gpt2 config")?;
    c.validate()?;
    Ok(Box::new(c))
}

impl Architecture for Gpt2Config {
    fn model_type(&self) -> &'static str {
        "gpt2"
    }
    fn base_model_prefix(&self) -> &'static str {
        "transformer"
    }
    fn hidden_size(&self) -> i64 {
        self.n_embd
    }
    fn num_layers(&self) -> i64 {
        self.n_layer
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
        Some(self.n_positions)
    }
    fn generation_positions(&self) -> Option<i64> {
        Some(self.n_positions)
    }
    fn common(&self) -> &CommonConfig {
        &self.common
    }
    fn recommended_lora_modules(&self) -> (Vec<&'static str>, Vec<&'static str>) {
        (vec!["c_attn"], vec!["score"])
    }
    fn fan_in_fan_out(&self) -> bool {
        true
    }
    fn head_specs(&self, task: Head) -> Vec<FreshLinear> {
        decoder_head_specs(task, self.n_embd, self.vocab_size, self.tie_word_embeddings)
    }
    fn build(&self, ld: &mut Loader, task: Head) -> Result<(Box<dyn Backbone + Send>, TaskHead)> {
        let bb = Gpt2Backbone::load(ld, self)?;
        let head = decoder_head(
            ld,
            task,
            self.n_embd,
            self.pad_token_id,
            self.tie_word_embeddings,
            &bb.wte,
        )?;
        Ok((Box::new(bb), head))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// One block (`transformer.h.{i}`).
#[derive(Debug)]
pub struct Gpt2Block {
    pub ln_1: LayerNorm,
    pub c_attn: LoraLinear,
    pub attn_proj: LoraLinear,
    pub ln_2: LayerNorm,
    pub c_fc: LoraLinear,
    pub mlp_proj: LoraLinear,
    pub heads: i64,
    pub scale: f64,
    pub act: Activation,
    pub attn_pdrop: f64,
    pub resid_pdrop: f64,
}

impl Gpt2Block {
    pub fn load(ld: &mut Loader, p: &str, layer_idx: i64, cfg: &Gpt2Config) -> Result<Self> {
        let (e, inner) = (cfg.n_embd, cfg.inner_dim());
        let conv = |ld: &mut Loader, name: &str, fin, fout| {
            ld.linear(&format!("{p}.{name}"), fin, fout, true, WeightLayout::InOut)
        };
        let head_dim = e / cfg.n_head;
        let mut scale = if cfg.scale_attn_weights {
            (head_dim as f64).powf(-0.5)
        } else {
            1.0
        };
        if cfg.scale_attn_by_inverse_layer_idx {
            scale /= (layer_idx + 1) as f64;
        }
        Ok(Gpt2Block {
            ln_1: ld.layer_norm(&format!("{p}.ln_1"), e, cfg.layer_norm_epsilon)?,
            c_attn: conv(ld, "attn.c_attn", e, 3 * e)?,
            attn_proj: conv(ld, "attn.c_proj", e, e)?,
            ln_2: ld.layer_norm(&format!("{p}.ln_2"), e, cfg.layer_norm_epsilon)?,
            c_fc: conv(ld, "mlp.c_fc", e, inner)?,
            mlp_proj: conv(ld, "mlp.c_proj", inner, e)?,
            heads: cfg.n_head,
            scale,
            act: Activation::parse(&cfg.activation_function)?,
            attn_pdrop: cfg.attn_pdrop,
            resid_pdrop: cfg.resid_pdrop,
        })
    }
}

impl Block for Gpt2Block {
    fn forward_t(&self, x: &Tensor, ctx: &LayerCtx, train: bool) -> Tensor {
        self.forward_inner(x, ctx, train, None)
    }

    fn forward_cached(&self, x: &Tensor, ctx: &LayerCtx, cache: &mut KvCache) -> Result<Tensor> {
        Ok(self.forward_inner(x, ctx, false, Some(cache)))
    }
}

impl Gpt2Block {
    /// The block; with `cache`, keys and values of earlier positions are prepended from it
    /// and this call's appended to it.
    fn forward_inner(
        &self,
        x: &Tensor,
        ctx: &LayerCtx,
        train: bool,
        cache: Option<&mut KvCache>,
    ) -> Tensor {
        let e = self.attn_proj.out_features();
        let d = e / self.heads;
        let h = self.ln_1.forward(x);
        let qkv = self.c_attn.forward_t(&h, train);
        let (q, kv) = if ctx.queries.is_some() {
            let q = ctx.query_rows(&qkv.narrow(-1, 0, e));
            let kv = ctx.unpack(&qkv.narrow(-1, e, 2 * e)).split(e, -1);
            (ctx.query_heads(&q, self.heads, d), kv)
        } else {
            let mut qkv = ctx.unpack(&qkv).split(e, -1);
            let q = qkv.remove(0);
            (ctx.heads(&q, self.heads, d), qkv)
        };
        let k = ctx.heads(&kv[0], self.heads, d);
        let v = ctx.heads(&kv[1], self.heads, d);
        let (k, v) = match cache {
            Some(cache) => extend_cache(cache, k, v),
            None => (k, v),
        };
        let a = sdpa(
            &q,
            &k,
            &v,
            ctx.query_mask(),
            self.attn_pdrop,
            train,
            Some(self.scale),
        );
        let a = ctx.merge_heads(&a);
        let a = dropout(
            &self.attn_proj.forward_t(&a, train),
            self.resid_pdrop,
            train,
        );
        let x = a + ctx.query_rows(x);
        let m = self
            .act
            .apply(&self.c_fc.forward_t(&self.ln_2.forward(&x), train));
        let m = dropout(&self.mlp_proj.forward_t(&m, train), self.resid_pdrop, train);
        x + m
    }
}

/// `transformer.{wte, wpe, h, ln_f}`.
#[derive(Debug)]
pub struct Gpt2Backbone {
    pub wte: LoraEmbedding,
    pub wpe: LoraEmbedding,
    pub blocks: Vec<Gpt2Block>,
    pub ln_f: LayerNorm,
    pub embd_pdrop: f64,
}

impl Gpt2Backbone {
    pub fn load(ld: &mut Loader, cfg: &Gpt2Config) -> Result<Self> {
        let e = cfg.n_embd;
        let wte = ld.embedding("transformer.wte", cfg.vocab_size, e, None)?;
        let wpe = ld.embedding("transformer.wpe", cfg.n_positions, e, None)?;
        let blocks = (0..cfg.n_layer)
            .map(|i| Gpt2Block::load(ld, &format!("transformer.h.{i}"), i, cfg))
            .collect::<Result<Vec<_>>>()?;
        let ln_f = ld.layer_norm("transformer.ln_f", e, cfg.layer_norm_epsilon)?;
        Ok(Gpt2Backbone {
            wte,
            wpe,
            blocks,
            ln_f,
            embd_pdrop: cfg.embd_pdrop,
        })
    }
}

impl Backbone for Gpt2Backbone {
    /// Causal + padding mask, within each document when `position_ids` are given.
    fn context(
        &self,
        _input_ids: &Tensor,
        attention_mask: &Tensor,
        position_ids: Option<&Tensor>,
    ) -> LayerCtx {
        let size = attention_mask.size();
        LayerCtx::dense(
            decoder_mask(attention_mask, position_ids),
            None,
            size[0],
            size[1],
        )
    }

    /// `wte(ids) + wpe(position_ids)` (positions `0..T` when not given, as HF's forward does,
    /// also under left padding), plus `wte(token_type_ids)` when given (as HF does: pass `None`
    /// unless the tokenizer produced them for GPT-2).
    fn embed(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        position_ids: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let pos = match position_ids {
            Some(p) => p.shallow_clone(),
            None => {
                let t = input_ids.size()[1];
                Tensor::arange(t, (Kind::Int64, input_ids.device())).unsqueeze(0)
            }
        };
        let h = self.wte.forward(input_ids) + self.wpe.forward(&pos);
        let h = match token_type_ids {
            Some(tt) => h + self.wte.forward(tt),
            None => h,
        };
        dropout(&h, self.embd_pdrop, train)
    }

    fn num_layers(&self) -> usize {
        self.blocks.len()
    }

    fn layer(&self, i: usize) -> &dyn Block {
        &self.blocks[i]
    }

    fn final_norm(&self, h: Tensor) -> Tensor {
        self.ln_f.forward(&h)
    }
}
