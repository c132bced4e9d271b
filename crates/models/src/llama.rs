//! Llama: pre-RMSNorm causal decoder with rotary position embeddings, grouped-query attention
//! and a SwiGLU MLP (`model.layers.{i}.self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`).

use anyhow::Result;
use tch::{Kind, Tensor};

use loraplus_core::{LoraEmbedding, LoraLinear, WeightLayout};

use crate::attention::{causal_padding_mask, sdpa, LayerCtx};
use crate::backbone::{Backbone, Block, Loader, RmsNorm};
use crate::config::{Activation, LlamaConfig};

/// One decoder layer.
#[derive(Debug)]
pub struct LlamaLayer {
    pub input_layernorm: RmsNorm,
    pub q_proj: LoraLinear,
    pub k_proj: LoraLinear,
    pub v_proj: LoraLinear,
    pub o_proj: LoraLinear,
    pub post_attention_layernorm: RmsNorm,
    pub gate_proj: LoraLinear,
    pub up_proj: LoraLinear,
    pub down_proj: LoraLinear,
    pub heads: i64,
    pub kv_heads: i64,
    pub head_dim: i64,
    pub act: Activation,
    pub attention_dropout: f64,
}

impl LlamaLayer {
    pub fn load(ld: &mut Loader, p: &str, cfg: &LlamaConfig) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let (nh, nkv, d) = (cfg.num_attention_heads, cfg.num_kv_heads(), cfg.head_dim());
        let lin = |ld: &mut Loader, name: &str, fin, fout, bias| {
            ld.linear(&format!("{p}.{name}"), fin, fout, bias, WeightLayout::OutIn)
        };
        let ab = cfg.attention_bias;
        let mb = cfg.mlp_bias;
        Ok(LlamaLayer {
            input_layernorm: ld.rms_norm(&format!("{p}.input_layernorm"), h, cfg.rms_norm_eps)?,
            q_proj: lin(ld, "self_attn.q_proj", h, nh * d, ab)?,
            k_proj: lin(ld, "self_attn.k_proj", h, nkv * d, ab)?,
            v_proj: lin(ld, "self_attn.v_proj", h, nkv * d, ab)?,
            o_proj: lin(ld, "self_attn.o_proj", nh * d, h, ab)?,
            post_attention_layernorm: ld.rms_norm(
                &format!("{p}.post_attention_layernorm"),
                h,
                cfg.rms_norm_eps,
            )?,
            gate_proj: lin(ld, "mlp.gate_proj", h, i, mb)?,
            up_proj: lin(ld, "mlp.up_proj", h, i, mb)?,
            down_proj: lin(ld, "mlp.down_proj", i, h, mb)?,
            heads: nh,
            kv_heads: nkv,
            head_dim: d,
            act: Activation::parse(&cfg.hidden_act)?,
            attention_dropout: cfg.attention_dropout,
        })
    }
}

/// `cat(-x2, x1)` over the last dimension.
fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size().last().copied().unwrap_or(0) / 2;
    let parts = x.split(half, -1);
    Tensor::cat(&[parts[1].neg(), parts[0].shallow_clone()], -1)
}

fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    x * cos + rotate_half(x) * sin
}

impl Block for LlamaLayer {
    fn forward_t(&self, x: &Tensor, ctx: &LayerCtx, train: bool) -> Tensor {
        let size = x.size();
        let (b, t) = (size[0], size[1]);
        let d = self.head_dim;
        let h = self.input_layernorm.forward(x);
        let q = self
            .q_proj
            .forward_t(&h, train)
            .view([b, t, self.heads, d])
            .transpose(1, 2);
        let k = self
            .k_proj
            .forward_t(&h, train)
            .view([b, t, self.kv_heads, d])
            .transpose(1, 2);
        let v = self
            .v_proj
            .forward_t(&h, train)
            .view([b, t, self.kv_heads, d])
            .transpose(1, 2);
        let (q, k) = match &ctx.rope {
            Some((cos, sin)) => (apply_rope(&q, cos, sin), apply_rope(&k, cos, sin)),
            None => (q, k),
        };
        let a = sdpa(&q, &k, &v, &ctx.mask, self.attention_dropout, train, None);
        let a = a.transpose(1, 2).reshape([b, t, self.heads * d]);
        let x = x + self.o_proj.forward_t(&a, train);
        let h = self.post_attention_layernorm.forward(&x);
        let gate = self.act.apply(&self.gate_proj.forward_t(&h, train));
        let m = self
            .down_proj
            .forward_t(&(gate * self.up_proj.forward_t(&h, train)), train);
        x + m
    }
}

/// `model.{embed_tokens, layers, norm}` and the rotary frequencies.
#[derive(Debug)]
pub struct LlamaBackbone {
    pub embed_tokens: LoraEmbedding,
    pub layers: Vec<LlamaLayer>,
    pub norm: RmsNorm,
    /// `1 / theta^(2i / head_dim)`, f32, `[head_dim / 2]`, on the model device.
    pub inv_freq: Tensor,
}

impl LlamaBackbone {
    pub fn load(ld: &mut Loader, cfg: &LlamaConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let embed_tokens =
            ld.embedding("model.embed_tokens", cfg.vocab_size, h, cfg.pad_token_id)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| LlamaLayer::load(ld, &format!("model.layers.{i}"), cfg))
            .collect::<Result<Vec<_>>>()?;
        let norm = ld.rms_norm("model.norm", h, cfg.rms_norm_eps)?;
        let d = cfg.head_dim();
        let exponents = Tensor::arange_start_step(0, d, 2, (Kind::Int64, ld.device()))
            .to_kind(Kind::Float)
            / d as f64;
        let inv_freq = Tensor::from(cfg.rope_theta() as f32)
            .to_device(ld.device())
            .pow(&exponents)
            .reciprocal();
        Ok(LlamaBackbone {
            embed_tokens,
            layers,
            norm,
            inv_freq,
        })
    }
}

impl Backbone for LlamaBackbone {
    /// Causal + padding mask; rotary tables for positions `0..T` (HF's default position ids,
    /// also under left padding).
    fn context(&self, input_ids: &Tensor, attention_mask: &Tensor) -> LayerCtx {
        let t = input_ids.size()[1];
        let pos = Tensor::arange(t, (Kind::Float, input_ids.device()));
        let freqs = pos.unsqueeze(1) * self.inv_freq.unsqueeze(0);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        let kind = self.embed_tokens.weight.kind();
        let cos = emb.cos().to_kind(kind).view([1, 1, t, -1]);
        let sin = emb.sin().to_kind(kind).view([1, 1, t, -1]);
        LayerCtx {
            mask: causal_padding_mask(attention_mask),
            rope: Some((cos, sin)),
        }
    }

    fn embed(&self, input_ids: &Tensor, _token_type_ids: Option<&Tensor>, _train: bool) -> Tensor {
        self.embed_tokens.forward(input_ids)
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
