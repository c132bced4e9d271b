//! Llama: pre-RMSNorm causal decoder with rotary position embeddings, grouped-query attention
//! and a SwiGLU MLP (`model.layers.{i}.self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`).
//! The rotary tables are those of the batch's position ids when given (packed rows,
//! generation), of `0..T` otherwise; a layer can run one decoding step on its key-value cache
//! (keys stored after rotation).

use anyhow::Result;
use tch::{Kind, Tensor};

use loraplus_core::{FusedLinears, LoraEmbedding, LoraLinear, WeightLayout};

use crate::attention::{decoder_mask, extend_cache, sdpa, KvCache, LayerCtx};
use crate::backbone::{Backbone, Block, Loader, RmsNorm};
use crate::config::{Activation, LlamaConfig};

/// One decoder layer.
#[derive(Debug)]
pub struct LlamaLayer {
    pub input_layernorm: RmsNorm,
    /// `q_proj`, `k_proj`, `v_proj` as one product.
    pub qkv: FusedLinears,
    pub q_proj: LoraLinear,
    pub k_proj: LoraLinear,
    pub v_proj: LoraLinear,
    pub o_proj: LoraLinear,
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
        let name = |n: &str| format!("{p}.{n}");
        let input_layernorm = ld.rms_norm(&name("input_layernorm"), h, cfg.rms_norm_eps)?;
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
        let o_proj = lin(ld, "self_attn.o_proj", nh * d, h, ab)?;
        let post_attention_layernorm =
            ld.rms_norm(&name("post_attention_layernorm"), h, cfg.rms_norm_eps)?;
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
            post_attention_layernorm,
            gate_up,
            gate_proj,
            up_proj,
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
        let d = self.head_dim;
        let h = self.input_layernorm.forward(x);
        let (q_width, kv_width) = (self.heads * d, self.kv_heads * d);
        let (q, kv) = if ctx.queries.is_some() {
            // Query for the returned rows only; key and value for every row.
            let q = self.q_proj.forward_t(&ctx.query_rows(&h), train);
            let kv = self
                .qkv
                .forward_t(&[&self.k_proj, &self.v_proj], 1, &h, train);
            (ctx.query_heads(&q, self.heads, d), ctx.unpack(&kv))
        } else {
            let qkv = self
                .qkv
                .forward_t(&[&self.q_proj, &self.k_proj, &self.v_proj], 0, &h, train);
            let qkv = ctx.unpack(&qkv);
            let q = ctx.heads(&qkv.narrow(-1, 0, q_width), self.heads, d);
            (q, qkv.narrow(-1, q_width, 2 * kv_width))
        };
        let kv = kv.split(kv_width, -1);
        let k = ctx.heads(&kv[0], self.kv_heads, d);
        let v = ctx.heads(&kv[1], self.kv_heads, d);
        let q = match ctx.query_rope() {
            Some((cos, sin)) => apply_rope(&q, cos, sin),
            None => q,
        };
        let k = match &ctx.rope {
            Some((cos, sin)) => apply_rope(&k, cos, sin),
            None => k,
        };
        let (k, v) = match cache {
            Some(cache) => extend_cache(cache, k, v),
            None => (k, v),
        };
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
        let h = self.post_attention_layernorm.forward(&x);
        let gate_up = self
            .gate_up
            .forward_t(&[&self.gate_proj, &self.up_proj], 0, &h, train)
            .split(self.down_proj.in_features(), -1);
        let gate = self.act.apply(&gate_up[0]);
        let m = self.down_proj.forward_t(&(gate * &gate_up[1]), train);
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

impl LlamaBackbone {
    /// `(cos, sin)` of `positions` (float, any shape broadcasting to `[.., T]`), `[.., T, head_dim]`.
    fn rope_tables(&self, positions: &Tensor) -> (Tensor, Tensor) {
        let freqs = positions.unsqueeze(-1) * &self.inv_freq;
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        let kind = self.embed_tokens.weight.kind();
        (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
    }
}

impl Backbone for LlamaBackbone {
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
        let rope = match position_ids {
            Some(pos) => self.rope(pos),
            None => {
                let t = input_ids.size()[1];
                let pos = Tensor::arange(t, (Kind::Float, input_ids.device()));
                let (cos, sin) = self.rope_tables(&pos);
                Some((cos.view([1, 1, t, -1]), sin.view([1, 1, t, -1])))
            }
        };
        LayerCtx::dense(
            decoder_mask(attention_mask, position_ids),
            rope,
            size[0],
            size[1],
        )
    }

    fn rope(&self, position_ids: &Tensor) -> Option<(Tensor, Tensor)> {
        let (cos, sin) = self.rope_tables(&position_ids.to_kind(Kind::Float));
        Some((cos.unsqueeze(1), sin.unsqueeze(1)))
    }

    fn embed(
        &self,
        input_ids: &Tensor,
        _token_type_ids: Option<&Tensor>,
        _position_ids: Option<&Tensor>,
        _train: bool,
    ) -> Tensor {
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
