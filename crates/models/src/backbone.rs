//! What the architectures share: the `Backbone` and `Block` traits a task model runs (and
//! checkpoints layer by layer), and the `Loader` that hands each checkpoint tensor to the
//! `LoraBuilder` under its HuggingFace module name.

use std::collections::HashMap;

use anyhow::{Context, Result};
use tch::{Device, Kind, Tensor};

use loraplus_core::{
    FusedLinears, LayerNorm, LoraBuilder, LoraEmbedding, LoraLinear, WeightLayout,
};

use crate::attention::{causal_step_mask, KvCache, LayerCtx};
use crate::weights::Weights;

/// One transformer layer.
pub trait Block {
    fn forward_t(&self, x: &Tensor, ctx: &LayerCtx, train: bool) -> Tensor;

    /// Inference on new positions `x` (`[B, T_new, H]`) whose keys and values are appended to
    /// `cache`; `ctx.mask` is `[B, 1, T_new, T_past + T_new]` and `ctx.rope` the new positions'
    /// tables. Decoders only (generation).
    fn forward_cached(&self, _x: &Tensor, _ctx: &LayerCtx, _cache: &mut KvCache) -> Result<Tensor> {
        anyhow::bail!("this layer has no key-value cache (encoders do not generate)")
    }
}

/// Embeddings, a stack of [`Block`]s and a final norm: what the task heads sit on.
pub trait Backbone {
    /// Masks (and rotary tables) for one batch. `input_ids`, `attention_mask`: `[B, T]`.
    /// `position_ids` (`[B, T]`, decoders only): the rotary tables read them, and the causal mask
    /// keeps each query to its own document ([`crate::attention::decoder_mask`]).
    fn context(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        position_ids: Option<&Tensor>,
    ) -> LayerCtx;
    /// The input of the first layer, `[B, T, hidden]`; learned position embeddings read
    /// `position_ids` when given (`0..T` otherwise).
    fn embed(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        position_ids: Option<&Tensor>,
        train: bool,
    ) -> Tensor;
    /// The mask of the last `queries` positions of a decoding step over every key so far
    /// (`attention_mask`: `[B, T_k]`): [`causal_step_mask`], restricted as the architecture's
    /// attention is (a sliding window).
    fn step_mask(&self, attention_mask: &Tensor, queries: i64) -> Tensor {
        causal_step_mask(attention_mask, queries)
    }
    /// Rotary `(cos, sin)` tables of `position_ids` (`[B, T]`), `[B, 1, T, head_dim]` in the
    /// model dtype; `None` for models without rotary embeddings.
    fn rope(&self, _position_ids: &Tensor) -> Option<(Tensor, Tensor)> {
        None
    }
    /// The same for the sliding-window layers where their RoPE differs (Gemma 3); `None`:
    /// [`Backbone::rope`] serves every layer.
    fn local_rope(&self, _position_ids: &Tensor) -> Option<(Tensor, Tensor)> {
        None
    }
    /// The sequence width (padding included) at which generation drops every layer's key-value
    /// cache and runs the whole sequence again: Phi-3 with LongRoPE, whose rotary factors change
    /// past `original_max_position_embeddings` (transformers' `Phi3ForCausalLM` does the same
    /// when the input first reaches that length + 1). `None`: the cache stays valid.
    fn cache_stale_at(&self) -> Option<i64> {
        None
    }
    fn num_layers(&self) -> usize;
    fn layer(&self, i: usize) -> &dyn Block;
    /// After the last layer (GPT-2 `ln_f`, Llama `norm`; nothing for BERT).
    fn final_norm(&self, h: Tensor) -> Tensor {
        h
    }
}

/// A linear layer absent from the checkpoint, to be initialised as HF's `_init_weights` does.
#[derive(Debug, Clone)]
pub struct FreshLinear {
    pub module: String,
    pub in_features: i64,
    pub out_features: i64,
    pub bias: bool,
}

/// Hands checkpoint tensors to the builder under their module names.
pub struct Loader<'a> {
    pub w: &'a Weights,
    pub b: &'a mut LoraBuilder,
    /// Parameters created (not loaded), by full name.
    fresh: HashMap<String, Tensor>,
    /// See [`crate::LoadOptions::untie_adapted_head`].
    pub untie_adapted_head: bool,
    /// Set by a decoder head that untied itself from the embeddings.
    pub untied_head: bool,
}

impl<'a> Loader<'a> {
    pub fn new(w: &'a Weights, b: &'a mut LoraBuilder) -> Self {
        Loader {
            w,
            b,
            fresh: HashMap::new(),
            untie_adapted_head: false,
            untied_head: false,
        }
    }

    pub fn kind(&self) -> Kind {
        self.w.kind()
    }

    pub fn device(&self) -> Device {
        self.w.device()
    }

    /// Create the layers of `specs` that the checkpoint lacks: weight normal(0, `std`), bias
    /// zero (HF `_init_weights` for `nn.Linear`), drawn on the CPU in f32 from torch's global
    /// generator in the order given, then converted. Returns the modules created.
    pub fn init_missing(&mut self, specs: &[FreshLinear], std: f64) -> Result<Vec<String>> {
        let mut created = Vec::new();
        let _guard = tch::no_grad_guard();
        for s in specs {
            let wname = format!("{}.weight", s.module);
            if self.w.contains(&wname) {
                continue;
            }
            let (kind, device) = (self.kind(), self.device());
            let weight =
                Tensor::f_empty([s.out_features, s.in_features], (Kind::Float, Device::Cpu))
                    .with_context(|| {
                        format!(
                            "creating {} ({} x {})",
                            s.module, s.out_features, s.in_features
                        )
                    })?
                    .f_normal_(0.0, std)?
                    .f_to_device_(device, kind, false, false)?;
            self.fresh.insert(wname, weight);
            if s.bias {
                let bias = Tensor::f_zeros([s.out_features], (kind, device))?;
                self.fresh.insert(format!("{}.bias", s.module), bias);
            }
            created.push(s.module.clone());
        }
        Ok(created)
    }

    /// A parameter: created by [`Self::init_missing`] or loaded from the checkpoint.
    pub fn tensor(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        match self.fresh.remove(name) {
            Some(t) => Ok(t),
            None => self.w.get(name, shape),
        }
    }

    /// `module.weight` (`[out, in]`, or `[in, out]` for `InOut`) and, with `bias`, `module.bias`.
    pub fn linear(
        &mut self,
        module: &str,
        in_f: i64,
        out_f: i64,
        bias: bool,
        layout: WeightLayout,
    ) -> Result<LoraLinear> {
        let shape = match layout {
            WeightLayout::OutIn => [out_f, in_f],
            WeightLayout::InOut => [in_f, out_f],
        };
        let weight = self.tensor(&format!("{module}.weight"), &shape)?;
        let bias = if bias {
            Some(self.tensor(&format!("{module}.bias"), &[out_f])?)
        } else {
            None
        };
        Ok(self.b.linear(module, weight, bias, layout)?)
    }

    /// `[out, in]` linear layers that read the same input, `(module, in, out)` each, loaded as
    /// one [`FusedLinears`] whose views are the members' weights (each handed to the builder
    /// under its own name, so adapters, merging and saving see the usual modules). Members the
    /// builder quantizes are loaded one by one instead ([`FusedLinears::separate`]).
    pub fn fused_linears(
        &mut self,
        modules: &[(&str, i64, i64)],
        bias: bool,
    ) -> Result<(FusedLinears, Vec<LoraLinear>)> {
        if modules.iter().any(|(m, _, _)| self.b.quantizes(m)) {
            // A quantized base is never concatenated: each member keeps its own quantized
            // weight and runs alone.
            let members = modules
                .iter()
                .map(|(m, in_f, out_f)| self.linear(m, *in_f, *out_f, bias, WeightLayout::OutIn))
                .collect::<Result<Vec<_>>>()?;
            let widths = modules.iter().map(|(_, _, out_f)| *out_f).collect();
            let in_f = modules.first().map_or(0, |(_, in_f, _)| *in_f);
            let fused = FusedLinears::separate(widths, in_f, self.kind(), self.device());
            return Ok((fused, members));
        }
        let mut weights = Vec::with_capacity(modules.len());
        let mut biases = Vec::with_capacity(modules.len());
        for (module, in_f, out_f) in modules {
            weights.push(self.tensor(&format!("{module}.weight"), &[*out_f, *in_f])?);
            biases.push(if bias {
                Some(self.tensor(&format!("{module}.bias"), &[*out_f])?)
            } else {
                None
            });
        }
        let (fused, views) = FusedLinears::fuse(&weights, &biases)?;
        drop((weights, biases));
        let members = modules
            .iter()
            .zip(views)
            .map(|((module, _, _), (w, b))| self.b.linear(module, w, b, WeightLayout::OutIn))
            .collect::<Result<Vec<_>, loraplus_core::Error>>()?;
        Ok((fused, members))
    }

    pub fn embedding(
        &mut self,
        module: &str,
        num: i64,
        dim: i64,
        padding_idx: Option<i64>,
    ) -> Result<LoraEmbedding> {
        let table = self.tensor(&format!("{module}.weight"), &[num, dim])?;
        Ok(self.b.embedding(module, table, padding_idx)?)
    }

    pub fn layer_norm(&mut self, module: &str, dim: i64, eps: f64) -> Result<LayerNorm> {
        self.layer_norm_with(module, dim, eps, true)
    }

    /// A LayerNorm whose bias exists only with `bias` (ModernBERT's `norm_bias: false`).
    pub fn layer_norm_with(
        &mut self,
        module: &str,
        dim: i64,
        eps: f64,
        bias: bool,
    ) -> Result<LayerNorm> {
        let weight = self.tensor(&format!("{module}.weight"), &[dim])?;
        let bias = if bias {
            Some(self.tensor(&format!("{module}.bias"), &[dim])?)
        } else {
            None
        };
        Ok(self.b.layer_norm(module, weight, bias, eps))
    }

    /// [`Self::layer_norm_with`], created as transformers initialises one (weight 1, bias 0)
    /// when the checkpoint lacks it (a head norm new to a base checkpoint).
    pub fn layer_norm_or_fresh(
        &mut self,
        module: &str,
        dim: i64,
        eps: f64,
        bias: bool,
    ) -> Result<LayerNorm> {
        let wname = format!("{module}.weight");
        if !self.w.contains(&wname) && !self.fresh.contains_key(&wname) {
            let (kind, device) = (self.kind(), self.device());
            self.fresh
                .insert(wname, Tensor::f_ones([dim], (kind, device))?);
            if bias {
                self.fresh.insert(
                    format!("{module}.bias"),
                    Tensor::f_zeros([dim], (kind, device))?,
                );
            }
        }
        self.layer_norm_with(module, dim, eps, bias)
    }

    /// An RMSNorm weight `[dim]`.
    pub fn rms_norm(&mut self, module: &str, dim: i64, eps: f64) -> Result<RmsNorm> {
        self.rms_norm_with(module, dim, eps, RmsStyle::Llama)
    }

    /// An RMSNorm weight `[dim]`, applied in `style`.
    pub fn rms_norm_with(
        &mut self,
        module: &str,
        dim: i64,
        eps: f64,
        style: RmsStyle,
    ) -> Result<RmsNorm> {
        let weight = self.tensor(&format!("{module}.weight"), &[dim])?;
        let weight = self.b.norm_weight(module, "weight", weight);
        Ok(RmsNorm { weight, eps, style })
    }
}

/// Where an RMSNorm's weight applies, as each architecture's HF code computes it (the
/// normalisation itself is in f32 for all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RmsStyle {
    /// Llama's: cast back to the input dtype, then scaled by the weight.
    Llama,
    /// Gemma's: scaled by `1 + weight` in f32, then cast back.
    UnitOffset,
    /// OLMo 2's: scaled by the weight in f32, then cast back.
    ScaledInF32,
}

/// RMSNorm, computed as HF does ([`RmsStyle`]).
#[derive(Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
    pub style: RmsStyle,
}

impl RmsNorm {
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let h = x.to_kind(Kind::Float);
        let var = h.square().mean_dim(-1, true, Kind::Float);
        let h = h * (var + self.eps).rsqrt();
        match self.style {
            RmsStyle::Llama => &self.weight * h.to_kind(kind),
            RmsStyle::UnitOffset => (h * (self.weight.to_kind(Kind::Float) + 1.0)).to_kind(kind),
            RmsStyle::ScaledInF32 => (h * self.weight.to_kind(Kind::Float)).to_kind(kind),
        }
    }
}
