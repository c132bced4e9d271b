//! The adapted layers: `LoraLinear`, `LoraEmbedding`, and `LayerNorm` (a plain layer whose
//! parameters can train under `bias = "all"` or `modules_to_save`).
//!
//! Each layer owns shallow handles on its tensors; the [`crate::LoraModel`] registry holds
//! handles on the same tensors, so merging or an optimizer's in-place update is seen by both.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

/// How a linear base weight is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[out, in]`, as `torch.nn.Linear`.
    OutIn,
    /// `[in, out]`, as GPT-2's `Conv1D` (PEFT's `fan_in_fan_out = true`).
    InOut,
}

/// The low-rank update of one linear layer.
#[derive(Debug)]
pub struct LinearAdapter {
    /// `[r, in]`
    pub a: Tensor,
    /// `[out, r]`
    pub b: Tensor,
    pub r: usize,
    pub alpha: f64,
    pub scale: f64,
    pub dropout: f64,
    pub(crate) merged: Arc<AtomicBool>,
}

/// A linear layer with an optional LoRA adapter:
/// `y = base(x) + (dropout(x) @ A^T @ B^T) * scale`.
#[derive(Debug)]
pub struct LoraLinear {
    /// Full module name, as in the HuggingFace model (`bert.encoder.layer.0.attention.self.query`).
    pub name: String,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub layout: WeightLayout,
    pub adapter: Option<LinearAdapter>,
}

impl LoraLinear {
    /// A layer without adapter.
    pub fn plain(name: &str, weight: Tensor, bias: Option<Tensor>, layout: WeightLayout) -> Self {
        LoraLinear {
            name: name.to_string(),
            weight,
            bias,
            layout,
            adapter: None,
        }
    }

    pub fn in_features(&self) -> i64 {
        match self.layout {
            WeightLayout::OutIn => self.weight.size()[1],
            WeightLayout::InOut => self.weight.size()[0],
        }
    }

    pub fn out_features(&self) -> i64 {
        match self.layout {
            WeightLayout::OutIn => self.weight.size()[0],
            WeightLayout::InOut => self.weight.size()[1],
        }
    }

    /// The base layer alone.
    pub fn base_forward(&self, x: &Tensor) -> Tensor {
        match self.layout {
            WeightLayout::OutIn => x.linear(&self.weight, self.bias.as_ref()),
            WeightLayout::InOut => {
                let y = x.matmul(&self.weight);
                match &self.bias {
                    Some(b) => y + b,
                    None => y,
                }
            }
        }
    }

    /// Forward over any number of leading dimensions; dropout only when `train`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let y = self.base_forward(x);
        let Some(ad) = &self.adapter else { return y };
        if ad.merged.load(Ordering::Relaxed) {
            return y;
        }
        // As PEFT: the input is cast to the adapter's dtype, the result back to the base's.
        let xa = if x.kind() == ad.a.kind() {
            x.shallow_clone()
        } else {
            x.to_kind(ad.a.kind())
        };
        let xa = if train && ad.dropout > 0.0 {
            xa.dropout(ad.dropout, true)
        } else {
            xa
        };
        let delta = xa
            .linear::<&Tensor>(&ad.a, None)
            .linear::<&Tensor>(&ad.b, None)
            * ad.scale;
        if delta.kind() == y.kind() {
            y + delta
        } else {
            let k = y.kind();
            y + delta.to_kind(k)
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_t(x, false)
    }

    pub fn is_merged(&self) -> bool {
        self.adapter
            .as_ref()
            .is_some_and(|a| a.merged.load(Ordering::Relaxed))
    }
}

/// The low-rank update of an embedding table (PEFT's `lora_embedding_A` / `_B`).
#[derive(Debug)]
pub struct EmbeddingAdapter {
    /// `[r, num_embeddings]`
    pub a: Tensor,
    /// `[dim, r]`
    pub b: Tensor,
    pub r: usize,
    pub alpha: f64,
    pub scale: f64,
    pub(crate) merged: Arc<AtomicBool>,
}

/// An embedding table with an optional LoRA adapter: `E[ids] + (A^T[ids] @ B^T) * scale`.
#[derive(Debug)]
pub struct LoraEmbedding {
    pub name: String,
    /// `[num_embeddings, dim]`
    pub weight: Tensor,
    pub padding_idx: Option<i64>,
    pub adapter: Option<EmbeddingAdapter>,
}

impl LoraEmbedding {
    pub fn plain(name: &str, weight: Tensor, padding_idx: Option<i64>) -> Self {
        LoraEmbedding {
            name: name.to_string(),
            weight,
            padding_idx,
            adapter: None,
        }
    }

    pub fn forward(&self, ids: &Tensor) -> Tensor {
        let pad = self.padding_idx.unwrap_or(-1);
        let y = Tensor::embedding(&self.weight, ids, pad, false, false);
        let Some(ad) = &self.adapter else { return y };
        if ad.merged.load(Ordering::Relaxed) {
            return y;
        }
        let after_a = Tensor::embedding(&ad.a.tr(), ids, pad, false, false);
        let delta = after_a.matmul(&ad.b.tr()) * ad.scale;
        if delta.kind() == y.kind() {
            y + delta
        } else {
            let k = y.kind();
            y + delta.to_kind(k)
        }
    }

    pub fn is_merged(&self) -> bool {
        self.adapter
            .as_ref()
            .is_some_and(|a| a.merged.load(Ordering::Relaxed))
    }
}

/// Layer normalisation over the last dimension.
#[derive(Debug)]
pub struct LayerNorm {
    pub name: String,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub eps: f64,
}

impl LayerNorm {
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let dim = *self.weight.size().last().unwrap_or(&0);
        x.layer_norm(
            [dim],
            Some(&self.weight),
            self.bias.as_ref(),
            self.eps,
            false,
        )
    }
}

/// What a merge touches: the base weight and the delta that goes into it.
#[derive(Debug)]
pub(crate) struct MergeHandle {
    pub name: String,
    pub weight: Tensor,
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    pub kind: MergeKind,
    pub merged: Arc<AtomicBool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MergeKind {
    Linear(WeightLayout),
    Embedding,
}

impl MergeHandle {
    /// The update in the base weight's layout and dtype.
    pub fn delta_weight(&self) -> Tensor {
        let _guard = tch::no_grad_guard();
        let ba = self.b.matmul(&self.a) * self.scale; // [out, r] @ [r, in] = [out, in]
        let d = match self.kind {
            MergeKind::Linear(WeightLayout::OutIn) => ba,
            // Conv1D stores [in, out]; embeddings [num, dim] = (B A)^T.
            MergeKind::Linear(WeightLayout::InOut) | MergeKind::Embedding => ba.tr(),
        };
        d.to_kind(self.weight.kind())
    }

    pub fn merge(&self, safe: bool) -> Result<()> {
        if self.merged.load(Ordering::Relaxed) {
            return Ok(());
        }
        let _guard = tch::no_grad_guard();
        let delta = self.delta_weight();
        if safe {
            let merged = &self.weight + &delta;
            let finite = merged.isfinite().all().int64_value(&[]) != 0;
            if !finite {
                bail!(
                    "{}: merging the adapter gives non-finite weights (NaN or Inf in lora_A/lora_B or the base); refusing to merge",
                    self.name
                );
            }
            self.weight.shallow_clone().copy_(&merged);
        } else {
            let _ = self.weight.shallow_clone().f_add_(&delta)?;
        }
        self.merged.store(true, Ordering::Relaxed);
        Ok(())
    }

    pub fn unmerge(&self) -> Result<()> {
        if !self.merged.load(Ordering::Relaxed) {
            return Ok(());
        }
        let _guard = tch::no_grad_guard();
        let delta = self.delta_weight();
        let _ = self.weight.shallow_clone().f_sub_(&delta)?;
        self.merged.store(false, Ordering::Relaxed);
        Ok(())
    }
}

/// Element types accepted for adapter tensors.
pub fn check_adapter_kind(kind: Kind) -> Result<()> {
    match kind {
        Kind::Float | Kind::Double | Kind::BFloat16 | Kind::Half => Ok(()),
        other => bail!("adapter dtype {other:?} is not a floating-point type"),
    }
}
