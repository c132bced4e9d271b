//! Phi-3 / Phi-3.5 / Phi-4-mini: the Llama decoder with the attention's query, key and value
//! in one linear layer (`self_attn.qkv_proj`, split in that order) and the MLP's gate and up
//! projections in one (`mlp.gate_up_proj`, gate first), as the checkpoints store them and as
//! PEFT targets them: a LoRA on `qkv_proj` is one adapter on the fused layer. Rotary
//! embeddings may cover only the first `partial_rotary_factor` of each head, with LongRoPE
//! scaling (`rope_type` `longrope`, or the older `su` and `yarn` that transformers reads as
//! longrope); `sliding_window` is honoured in every layer, as transformers' Phi-3 does;
//! `resid_pdrop` drops the attention and MLP outputs in training. `embd_pdrop` is accepted and
//! unused, as in transformers' Phi-3.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{Map, Value};
use tch::Tensor;

use loraplus_core::{LoraLinear, WeightLayout};

use crate::arch::{default_initializer_range, Activation, Architecture, CommonConfig};
use crate::attention::{sdpa, KvCache, LayerCtx};
use crate::backbone::{Backbone, Block, Loader, RmsNorm, RmsStyle};
use crate::heads::{decoder_head, Head, TaskHead};
use crate::llama::{
    d_silu, llama_family_architecture, rotary_heads, DecoderSpec, KeyNorm, LlamaBackbone,
};
use crate::rope::{RopeConfig, RopeScaling};

// Defaults of transformers' `Phi3Config` (configuration_phi3.py).
fn phi3_vocab_size() -> i64 {
    32064
}
fn phi3_hidden_size() -> i64 {
    3072
}
fn phi3_intermediate_size() -> i64 {
    8192
}
fn phi3_layers() -> i64 {
    32
}
fn phi3_heads() -> i64 {
    32
}
fn phi3_positions() -> i64 {
    4096
}
fn phi3_rms_eps() -> f64 {
    1e-5
}
fn phi3_pad() -> Option<i64> {
    Some(32000)
}

/// The `rope_type`s Phi-3 accepts (transformers' `Phi3Config.validate_rope`).
const PHI3_ROPE_TYPES: &[&str] = &["default", "longrope"];

/// Phi-3's `config.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Phi3Config {
    #[serde(default = "phi3_vocab_size")]
    pub vocab_size: i64,
    #[serde(default = "phi3_hidden_size")]
    pub hidden_size: i64,
    #[serde(default = "phi3_intermediate_size")]
    pub intermediate_size: i64,
    #[serde(default = "phi3_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "phi3_heads")]
    pub num_attention_heads: i64,
    /// `None` means `num_attention_heads`.
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    /// `None` means hidden_size / num_attention_heads.
    #[serde(default)]
    pub head_dim: Option<i64>,
    #[serde(default = "d_silu")]
    pub hidden_act: String,
    #[serde(default = "phi3_positions")]
    pub max_position_embeddings: i64,
    /// The length the model was pretrained at: LongRoPE switches to its long factors past it
    /// (transformers gives it priority over the same key in `rope_scaling`).
    #[serde(default = "phi3_positions")]
    pub original_max_position_embeddings: i64,
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "phi3_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "phi3_pad")]
    pub pad_token_id: Option<i64>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_parameters: Option<Value>,
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    /// Older configs keep it at the top level; transformers moves it into the RoPE parameters
    /// (where a value already there wins).
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
    /// Every layer attends within this window when set (Phi-3-mini-4k: 2047).
    #[serde(default)]
    pub sliding_window: Option<i64>,
    #[serde(default)]
    pub attention_dropout: f64,
    /// Dropout on the attention and MLP outputs before each residual sum (training only).
    #[serde(default)]
    pub resid_pdrop: f64,
    /// Unused by transformers' Phi-3 model; accepted for the configs that carry it.
    #[serde(default)]
    pub embd_pdrop: f64,
    #[serde(flatten)]
    pub common: CommonConfig,
}

impl Phi3Config {
    pub fn num_kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> i64 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The RoPE parameters as transformers' `Phi3Config` standardizes them: a non-empty
    /// `rope_scaling` whole, else `rope_parameters` ([`crate::rope::standardized`]),
    /// `partial_rotary_factor` from the top level unless given there,
    /// `su` and `yarn` read as `longrope`, whose `original_max_position_embeddings` is the
    /// top-level field; only `default` and `longrope` accepted.
    fn rope(&self) -> Result<RopeConfig> {
        let mut p = match crate::rope::standardized(
            "phi3",
            &self.rope_parameters,
            &self.rope_scaling,
            None,
        ) {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m,
            Some(other) => bail!(
                "phi3 rope_parameters / rope_scaling: expected an object or null, found {other}"
            ),
        };
        if let Some(f) = self.partial_rotary_factor {
            p.entry("partial_rotary_factor").or_insert(f.into());
        }
        let ty = p
            .get("rope_type")
            .or_else(|| p.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        let ty = match ty.as_str() {
            "su" | "yarn" => "longrope".to_string(),
            _ => ty,
        };
        if !PHI3_ROPE_TYPES.contains(&ty.as_str()) {
            bail!(
                "phi3: rope_type {ty:?} is not supported; supported: {}",
                PHI3_ROPE_TYPES.join(", ")
            );
        }
        p.remove("type");
        if ty == "longrope" {
            p.insert(
                "original_max_position_embeddings".into(),
                self.original_max_position_embeddings.into(),
            );
        }
        p.insert("rope_type".into(), ty.into());
        RopeConfig::parse_partial_rotary(
            "phi3",
            self.rope_theta,
            &Some(Value::Object(p)),
            self.head_dim(),
            self.max_position_embeddings,
        )
    }

    /// The embeddings, rotary tables, masks, final norm and heads (Llama's); the layers are
    /// [`Phi3Layer`]s.
    pub fn spec(&self) -> Result<DecoderSpec> {
        for (name, p) in [
            ("attention_dropout", self.attention_dropout),
            ("resid_pdrop", self.resid_pdrop),
        ] {
            if !(0.0..1.0).contains(&p) {
                bail!("phi3: {name} must be in [0, 1), found {p}");
            }
        }
        let spec = DecoderSpec {
            model_type: "phi3",
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            heads: self.num_attention_heads,
            kv_heads: self.num_kv_heads(),
            head_dim: self.head_dim(),
            act: Activation::parse(&self.hidden_act).context("phi3 hidden_act")?,
            rms_norm_eps: self.rms_norm_eps,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            attention_dropout: self.attention_dropout,
            rope: self.rope()?,
            local_rope: None,
            sliding_window: self.sliding_window,
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

    fn build_phi3(&self, ld: &mut Loader, task: Head) -> Result<(Box<dyn Backbone + Send>, TaskHead)> {
        let spec = self.spec()?;
        let mut bb = LlamaBackbone::load_with(ld, &spec, |ld, prefix, _| {
            Phi3Layer::load(ld, prefix, &spec, self.resid_pdrop)
        })?;
        // transformers' `Phi3ForCausalLM.prepare_inputs_for_generation`: the cache is dropped
        // when the input first reaches original_max_position_embeddings + 1, where LongRoPE
        // switches to its long factors.
        if matches!(spec.rope.scaling, RopeScaling::LongRope { .. }) {
            bb.cache_stale_at = Some(self.original_max_position_embeddings + 1);
        }
        let head = decoder_head(
            ld,
            task,
            spec.hidden_size,
            spec.pad_token_id,
            spec.tie_word_embeddings,
            &bb.embed_tokens,
        )?;
        Ok((Box::new(bb), head))
    }
}

/// `model_type: "phi3"` (registered in [`crate::registry`]).
pub fn parse(value: Value) -> Result<Box<dyn Architecture>> {
    let c: Phi3Config = serde_json::from_value(value).context("phi3 config")?;
    c.spec()?;
    Ok(Box::new(c))
}

// PEFT's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING has no `phi3` entry (PEFT asks for
// target_modules); the fused `qkv_proj` is the layer that holds the query and value
// projections the other decoders' default (q_proj, v_proj) adapts.
llama_family_architecture!(Phi3Config, "phi3", targets: ["qkv_proj"], build: build_phi3);

/// One Phi-3 decoder layer.
#[derive(Debug)]
pub struct Phi3Layer {
    pub input_layernorm: RmsNorm,
    /// `[(heads + 2 * kv_heads) * head_dim, hidden]`: query, key, value in that order.
    pub qkv_proj: LoraLinear,
    pub o_proj: LoraLinear,
    pub post_attention_layernorm: RmsNorm,
    /// `[2 * intermediate, hidden]`: gate, then up.
    pub gate_up_proj: LoraLinear,
    pub down_proj: LoraLinear,
    pub heads: i64,
    pub kv_heads: i64,
    pub head_dim: i64,
    pub intermediate_size: i64,
    pub act: Activation,
    pub attention_dropout: f64,
    pub resid_pdrop: f64,
}

impl Phi3Layer {
    pub fn load(ld: &mut Loader, p: &str, cfg: &DecoderSpec, resid_pdrop: f64) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let (nh, nkv, d) = (cfg.heads, cfg.kv_heads, cfg.head_dim);
        let norm = |ld: &mut Loader, name: &str| {
            ld.rms_norm(&format!("{p}.{name}"), h, cfg.rms_norm_eps)
        };
        let lin = |ld: &mut Loader, name: &str, fin, fout| {
            ld.linear(&format!("{p}.{name}"), fin, fout, false, WeightLayout::OutIn)
        };
        Ok(Phi3Layer {
            input_layernorm: norm(ld, "input_layernorm")?,
            qkv_proj: lin(ld, "self_attn.qkv_proj", h, (nh + 2 * nkv) * d)?,
            o_proj: lin(ld, "self_attn.o_proj", nh * d, h)?,
            post_attention_layernorm: norm(ld, "post_attention_layernorm")?,
            gate_up_proj: lin(ld, "mlp.gate_up_proj", h, 2 * i)?,
            down_proj: lin(ld, "mlp.down_proj", i, h)?,
            heads: nh,
            kv_heads: nkv,
            head_dim: d,
            intermediate_size: i,
            act: cfg.act,
            attention_dropout: cfg.attention_dropout,
            resid_pdrop,
        })
    }

    /// The layer; with `cache`, keys (after rotary) and values of earlier positions are
    /// prepended from it and this call's appended to it.
    fn forward_inner(
        &self,
        x: &Tensor,
        ctx: &LayerCtx,
        train: bool,
        cache: Option<&mut KvCache>,
    ) -> Tensor {
        let d = self.head_dim;
        let (q_width, kv_width) = (self.heads * d, self.kv_heads * d);
        let h = self.input_layernorm.forward(x);
        let qkv = self.qkv_proj.forward_t(&h, train);
        let (q, kv) = if ctx.queries.is_some() {
            // Query for the returned rows only; key and value for every row.
            let q = ctx.query_rows(&qkv).narrow(-1, 0, q_width);
            let kv = ctx.unpack(&qkv).narrow(-1, q_width, 2 * kv_width);
            (ctx.query_heads(&q, self.heads, d), kv)
        } else {
            let qkv = ctx.unpack(&qkv);
            let q = ctx.heads(&qkv.narrow(-1, 0, q_width), self.heads, d);
            (q, qkv.narrow(-1, q_width, 2 * kv_width))
        };
        let (q, k, v) = rotary_heads(ctx, q, &kv, (self.kv_heads, d), KeyNorm::Off, true, cache);
        let a = sdpa(
            &q,
            &k,
            &v,
            ctx.query_mask(),
            self.attention_dropout,
            train,
            None,
        );
        let a = self.o_proj.forward_t(&ctx.merge_heads(&a), train);
        let x = ctx.query_rows(x) + loraplus_core::dropout::dropout(&a, self.resid_pdrop, train);
        let h = self.post_attention_layernorm.forward(&x);
        let gate_up = self.gate_up_proj.forward_t(&h, train);
        let i = self.intermediate_size;
        let up = gate_up.narrow(-1, i, i) * self.act.apply(&gate_up.narrow(-1, 0, i));
        let m = self.down_proj.forward_t(&up, train);
        x + loraplus_core::dropout::dropout(&m, self.resid_pdrop, train)
    }
}

impl Block for Phi3Layer {
    fn forward_t(&self, x: &Tensor, ctx: &LayerCtx, train: bool) -> Tensor {
        self.forward_inner(x, ctx, train, None)
    }

    fn forward_cached(&self, x: &Tensor, ctx: &LayerCtx, cache: &mut KvCache) -> Result<Tensor> {
        Ok(self.forward_inner(x, ctx, false, Some(cache)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(json: serde_json::Value) -> String {
        format!("{:#}", parse(json).expect_err("should be refused"))
    }

    /// transformers' defaults (Phi-3-mini); the fused attention projection is the target.
    #[test]
    fn defaults_follow_transformers() {
        let a = parse(serde_json::json!({"model_type": "phi3"})).unwrap();
        let c = a.as_any().downcast_ref::<Phi3Config>().unwrap();
        assert_eq!((c.head_dim(), c.num_kv_heads()), (96, 32));
        assert_eq!((a.pad_token_id(), c.rms_norm_eps), (Some(32000), 1e-5));
        assert_eq!(c.rope().unwrap().dim, 96);
        assert_eq!(a.recommended_lora_modules().0, ["qkv_proj"]);
    }

    #[test]
    fn rope_types_are_standardized_as_transformers_does() {
        let c: Phi3Config = serde_json::from_value(serde_json::json!({
            "model_type": "phi3", "hidden_size": 32, "num_attention_heads": 4,
            "max_position_embeddings": 64, "original_max_position_embeddings": 8,
            "partial_rotary_factor": 0.5,
            "rope_scaling": {"type": "su", "short_factor": [1.0, 1.0], "long_factor": [2.0, 4.0],
                             "original_max_position_embeddings": 99}
        }))
        .unwrap();
        let rope = c.rope().unwrap();
        assert_eq!(rope.dim, 4, "half of head_dim 8 rotated");
        match rope.scaling {
            crate::rope::RopeScaling::LongRope {
                original_max_position_embeddings,
                ..
            } => assert_eq!(original_max_position_embeddings, 8.0, "top level wins"),
            other => panic!("expected longrope, found {other:?}"),
        }
        let e = parse_err(serde_json::json!({"model_type": "phi3",
            "rope_scaling": {"rope_type": "linear", "factor": 2.0}}));
        assert!(e.contains("\"linear\"") && e.contains("default, longrope"), "{e}");
        let e = parse_err(serde_json::json!({"model_type": "phi3", "partial_rotary_factor": 1.5}));
        assert!(e.contains("partial_rotary_factor"), "{e}");
        let e = parse_err(serde_json::json!({"model_type": "phi3", "sliding_window": 0}));
        assert!(e.contains("sliding_window"), "{e}");
        let e = parse_err(serde_json::json!({"model_type": "phi3", "resid_pdrop": 1.0}));
        assert!(e.contains("resid_pdrop"), "{e}");
    }
}
