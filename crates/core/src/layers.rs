//! The adapted layers: `LoraLinear`, `LoraEmbedding`, and `LayerNorm` (a plain layer whose
//! parameters can train under `bias = "all"` or `modules_to_save`).
//!
//! Each layer owns shallow handles on its tensors; the [`crate::LoraModel`] registry holds
//! handles on the same tensors, so merging or an optimizer's in-place update is seen by both.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::quant::QuantizedWeight;
use tch::{Kind, Tensor};

/// How a linear base weight is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[out, in]`, as `torch.nn.Linear`.
    OutIn,
    /// `[in, out]`, as GPT-2's `Conv1D` (PEFT's `fan_in_fan_out = true`).
    InOut,
}

/// The last dimension of `x` (0 for a scalar).
fn shape_last(x: &Tensor) -> i64 {
    x.size().last().copied().unwrap_or(0)
}

/// The low-rank update of one linear layer.
#[derive(Debug)]
pub struct LinearAdapter {
    /// `[r, in]`
    pub a: Tensor,
    /// `[out, r]`
    pub b: Tensor,
    /// Rank.
    pub r: usize,
    /// `lora_alpha`.
    pub alpha: f64,
    /// What B A x is multiplied by: alpha / r (or / sqrt(r) with rsLoRA).
    pub scale: f64,
    /// Dropout probability on the adapter's input in training.
    pub dropout: f64,
    pub(crate) merged: Arc<AtomicBool>,
}

/// A linear layer with an optional LoRA adapter:
/// `y = base(x) + (dropout(x) @ A^T @ B^T) * scale`.
#[derive(Debug)]
pub struct LoraLinear {
    /// Full module name, as in the HuggingFace model (`bert.encoder.layer.0.attention.self.query`).
    pub name: String,
    /// The frozen base weight, in `layout`. With a quantized base ([`Self::quant`]), a
    /// storage-less `[out, in]` stand-in until [`crate::LoraModel::dequantize_base`].
    pub weight: Tensor,
    /// The base bias, if any.
    pub bias: Option<Tensor>,
    /// How `weight` is stored: `[out, in]` or `[in, out]` (Conv1D).
    pub layout: WeightLayout,
    /// The LoRA adapter, when `target_modules` selected this layer.
    pub adapter: Option<LinearAdapter>,
    /// The base weight, quantized (always `[out, in]`), when the builder quantizes the base.
    pub quant: Option<QuantizedWeight>,
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
            quant: None,
        }
    }

    /// The quantized base weight the layer runs on, if any.
    pub fn active_quant(&self) -> Option<&QuantizedWeight> {
        self.quant.as_ref().filter(|q| q.is_active())
    }

    /// Input width.
    pub fn in_features(&self) -> i64 {
        match self.layout {
            WeightLayout::OutIn => self.weight.size()[1],
            WeightLayout::InOut => self.weight.size()[0],
        }
    }

    /// Output width.
    pub fn out_features(&self) -> i64 {
        match self.layout {
            WeightLayout::OutIn => self.weight.size()[0],
            WeightLayout::InOut => self.weight.size()[1],
        }
    }

    /// The base layer alone.
    pub fn base_forward(&self, x: &Tensor) -> Tensor {
        if let Some(q) = self.active_quant() {
            let y = q.forward(x);
            return match &self.bias {
                Some(b) => y + b,
                None => y,
            };
        }
        match self.layout {
            WeightLayout::OutIn => x.linear(&self.weight, self.bias.as_ref()),
            // As transformers' Conv1D: one `addmm` over the flattened leading dimensions (in
            // bf16/f16 a matmul then an add rounds twice).
            WeightLayout::InOut => match &self.bias {
                Some(b) if x.dim() >= 1 => {
                    let mut shape = x.size();
                    let n = shape.len();
                    shape[n - 1] = self.weight.size()[1];
                    b.addmm(&x.reshape([-1, shape_last(x)]), &self.weight)
                        .view(shape.as_slice())
                }
                Some(b) => x.matmul(&self.weight) + b,
                None => x.matmul(&self.weight),
            },
        }
    }

    /// The adapter, when there is one and it is not merged into the weight.
    pub fn active_adapter(&self) -> Option<&LinearAdapter> {
        self.adapter
            .as_ref()
            .filter(|a| !a.merged.load(Ordering::Relaxed))
    }

    /// Forward over any number of leading dimensions; dropout only when `train`.
    ///
    /// # Panics
    /// When libtorch refuses `x`: a last dimension other than [`Self::in_features`], or another
    /// dtype than the weight's. [`Self::try_forward_t`] checks both and returns an error.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let y = self.base_forward(x);
        match self.active_adapter() {
            None => y,
            Some(ad) => add_adapters(y, x, &[(self.out_features(), Some(ad))], train),
        }
    }

    /// The forward pass in eval mode (no dropout). Panics as [`Self::forward_t`] does.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_t(x, false)
    }

    /// [`Self::forward_t`] for an input the caller does not control: a last dimension other
    /// than [`Self::in_features`] is [`Error::ShapeMismatch`], another dtype than the layer
    /// computes in is [`Error::UnsupportedDtype`], instead of a panic.
    pub fn try_forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let shape = x.size();
        let in_features = self.in_features();
        if shape.last() != Some(&in_features) {
            let mut expected = shape.clone();
            match expected.last_mut() {
                Some(last) => *last = in_features,
                None => expected.push(in_features),
            }
            return Err(Error::ShapeMismatch {
                what: format!("the input of {}", self.name),
                found: shape,
                expected,
                hint: format!(" (any leading dimensions, then in_features={in_features})"),
            });
        }
        // A quantized layer's stand-in weight has the dtype it computes in too.
        let kind = self.weight.kind();
        if x.kind() != kind {
            return Err(Error::UnsupportedDtype(format!(
                "the input of {} is {:?}, the layer computes in {kind:?}",
                self.name,
                x.kind()
            )));
        }
        Ok(self.forward_t(x, train))
    }

    /// Is the adapter merged into the base weight?
    pub fn is_merged(&self) -> bool {
        self.adapter
            .as_ref()
            .is_some_and(|a| a.merged.load(Ordering::Relaxed))
    }
}

/// `y + delta`, where `delta` is the adapters' update laid out as `segments` (the width of each
/// output slice of `y` and its adapter, if any): `(dropout(x) A^T) (scale B)^T`, with one product
/// for every A (one per adapter when adapter dropout applies, so that each draws its own mask,
/// as PEFT does) and one for every B (block-diagonal), added to `y` by one `addmm`. As PEFT, the
/// input is cast to the adapters' dtype and the update back to `y`'s. Every adapter must have
/// the same dtype.
fn add_adapters(
    y: Tensor,
    x: &Tensor,
    segments: &[(i64, Option<&LinearAdapter>)],
    train: bool,
) -> Tensor {
    let adapters: Vec<&LinearAdapter> = segments.iter().filter_map(|s| s.1).collect();
    let Some(first) = adapters.first() else {
        return y;
    };
    let kind = first.a.kind();
    let size = y.size();
    let out = size.last().copied().unwrap_or(0);
    let fin = x.size().last().copied().unwrap_or(0);
    let x2 = x.reshape([-1, fin]);
    let x2 = if x2.kind() == kind {
        x2
    } else {
        x2.to_kind(kind)
    };
    let dropout = train && adapters.iter().any(|a| a.dropout > 0.0);
    let xa = if adapters.len() == 1 && !dropout {
        x2.linear::<&Tensor>(&first.a, None)
    } else if !dropout {
        let a: Vec<&Tensor> = adapters.iter().map(|a| &a.a).collect();
        x2.linear::<&Tensor>(&Tensor::cat(&a, 0), None)
    } else {
        let parts: Vec<Tensor> = adapters
            .iter()
            .map(|a| {
                let xd = crate::dropout::dropout(&x2, a.dropout, true);
                xd.linear::<&Tensor>(&a.a, None)
            })
            .collect();
        Tensor::cat(&parts, 1)
    };
    if !adapters.iter().all(|a| power_of_two(a.scale)) {
        // Folding the scale into B would round differently from PEFT's
        // `lora_B(lora_A(x)) * scaling`: keep its order.
        let mut col = 0;
        let parts: Vec<Tensor> = segments
            .iter()
            .map(|(width, ad)| match ad {
                None => Tensor::zeros([xa.size()[0], *width], (kind, xa.device())),
                Some(a) => {
                    let r = a.b.size()[1];
                    let part = xa.narrow(1, col, r).mm(&a.b.tr()) * a.scale;
                    col += r;
                    part
                }
            })
            .collect();
        let delta = if parts.len() == 1 {
            parts.into_iter().next().unwrap_or_default()
        } else {
            Tensor::cat(&parts, 1)
        };
        let out_kind = y.kind();
        return y + delta.to_kind(out_kind).view(size.as_slice());
    }
    let b = if segments.len() == 1 {
        // Exact: a power of two scales without rounding.
        &first.b * first.scale
    } else {
        // Block-diagonal [out, sum of r]: segment i's rows hold its scaled B in its own columns.
        let ranks: Vec<i64> = adapters.iter().map(|a| a.b.size()[1]).collect();
        let total: i64 = ranks.iter().sum();
        let (device, mut col) = (first.b.device(), 0);
        let rows: Vec<Tensor> = segments
            .iter()
            .map(|(width, ad)| match ad {
                None => Tensor::zeros([*width, total], (kind, device)),
                Some(a) => {
                    let r = a.b.size()[1];
                    let mut parts = Vec::with_capacity(3);
                    if col > 0 {
                        parts.push(Tensor::zeros([*width, col], (kind, device)));
                    }
                    parts.push(&a.b * a.scale);
                    if col + r < total {
                        parts.push(Tensor::zeros([*width, total - col - r], (kind, device)));
                    }
                    col += r;
                    Tensor::cat(&parts, 1)
                }
            })
            .collect();
        Tensor::cat(&rows, 0)
    };
    let y2 = y.reshape([-1, out]);
    let z = if y2.kind() == kind {
        y2.addmm(&xa, &b.tr())
    } else {
        y2 + xa.mm(&b.tr()).to_kind(y.kind())
    };
    z.view(size.as_slice())
}

/// A positive power of two, by which scaling is exact (the usual `alpha / r`: 2, 1, 0.5).
fn power_of_two(s: f64) -> bool {
    s.is_normal() && s > 0.0 && s.to_bits() & ((1u64 << 52) - 1) == 0
}

/// A member's weight and bias, views into a [`FusedLinears`]'s tensors.
pub type MemberParams = (Tensor, Option<Tensor>);

/// Linear layers that read the same input (`query`, `key`, `value`; `gate_proj`, `up_proj`),
/// run as one matrix product: the members' `[out, in]` weights (and biases) are views into
/// one `[sum of out, in]` tensor made at load, so merging into a member's weight is seen here.
/// A member keeps its own adapter; the adapters are added by `add_adapters`. When a member's
/// base weight or bias trains (`modules_to_save`, `bias = "all"`), or a member's weight no
/// longer lives in the shared tensor, the members run one by one instead.
#[derive(Debug)]
pub struct FusedLinears {
    /// `[sum of out, in]`
    pub weight: Tensor,
    /// The concatenated biases, when every member has one.
    pub bias: Option<Tensor>,
    /// Each member's `out`.
    pub widths: Vec<i64>,
}

impl FusedLinears {
    /// Concatenate `[out_i, in]` weights (and, for all or none, their biases) into one tensor,
    /// and return it with the views that stand for each member.
    pub fn fuse(
        weights: &[Tensor],
        biases: &[Option<Tensor>],
    ) -> Result<(Self, Vec<MemberParams>)> {
        if weights.is_empty() || weights.len() != biases.len() {
            return Err(Error::InvalidArgument(format!(
                "fusing {} weights with {} biases",
                weights.len(),
                biases.len()
            )));
        }
        let fin = weights[0].size().get(1).copied().unwrap_or(-1);
        if weights
            .iter()
            .any(|w| w.dim() != 2 || w.size()[1] != fin || w.kind() != weights[0].kind())
        {
            let shapes: Vec<_> = weights.iter().map(|w| (w.size(), w.kind())).collect();
            return Err(Error::InvalidArgument(format!(
                "fused linear layers need [out, in] weights of one in and dtype, found {shapes:?}"
            )));
        }
        let all_bias = biases.iter().all(Option::is_some);
        if !all_bias && biases.iter().any(Option::is_some) {
            return Err(Error::InvalidArgument(
                "fused linear layers need a bias on all members or on none".into(),
            ));
        }
        let widths: Vec<i64> = weights.iter().map(|w| w.size()[0]).collect();
        let weight = Tensor::cat(weights, 0);
        let bias = all_bias.then(|| {
            let b: Vec<&Tensor> = biases.iter().flatten().collect();
            Tensor::cat(&b, 0)
        });
        let mut views = Vec::with_capacity(widths.len());
        let mut off = 0;
        for w in &widths {
            let b = bias.as_ref().map(|b| b.narrow(0, off, *w));
            views.push((weight.narrow(0, off, *w), b));
            off += w;
        }
        Ok((
            FusedLinears {
                weight,
                bias,
                widths,
            },
            views,
        ))
    }

    /// Members that run one by one (a quantized base is never concatenated): no shared
    /// tensor, only the widths.
    pub fn separate(widths: Vec<i64>, in_features: i64, kind: Kind, device: tch::Device) -> Self {
        FusedLinears {
            weight: Tensor::zeros([0, in_features], (kind, device)),
            bias: None,
            widths,
        }
    }

    /// The members `start..start + members.len()` on `x`: `[.., sum of their out]`.
    pub fn forward_t(
        &self,
        members: &[&LoraLinear],
        start: usize,
        x: &Tensor,
        train: bool,
    ) -> Tensor {
        let off: i64 = self.widths[..start].iter().sum();
        let width: i64 = self.widths[start..start + members.len()].iter().sum();
        if !self.is_fused(members, start) {
            let ys: Vec<Tensor> = members.iter().map(|m| m.forward_t(x, train)).collect();
            return Tensor::cat(&ys, -1);
        }
        let w = self.weight.narrow(0, off, width);
        let b = self.bias.as_ref().map(|b| b.narrow(0, off, width));
        let y = x.linear(&w, b.as_ref());
        let segments: Vec<(i64, Option<&LinearAdapter>)> = members
            .iter()
            .map(|m| (m.out_features(), m.active_adapter()))
            .collect();
        add_adapters(y, x, &segments, train)
    }

    /// Whether [`Self::forward_t`] runs these members as one product: every member's base is
    /// frozen and still a view of the shared tensor, and their adapters share one dtype.
    pub fn is_fused(&self, members: &[&LoraLinear], start: usize) -> bool {
        let elem = self.weight.kind().elt_size_in_bytes() as i64;
        let row = self.weight.size()[1] * elem;
        let mut off: i64 = self.widths[..start].iter().sum();
        let mut kind = None;
        for (m, w) in members.iter().zip(&self.widths[start..]) {
            let at = self.weight.data_ptr() as i64 + off * row;
            if m.layout != WeightLayout::OutIn
                || m.active_quant().is_some()
                || self.weight.size()[0] == 0
                || m.weight.requires_grad()
                || m.weight.data_ptr() as i64 != at
                || m.bias.as_ref().is_some_and(Tensor::requires_grad)
                || m.out_features() != *w
            {
                return false;
            }
            if let Some(ad) = m.active_adapter() {
                if kind.is_some_and(|k| k != ad.a.kind()) {
                    return false;
                }
                kind = Some(ad.a.kind());
            }
            off += w;
        }
        true
    }
}

/// The low-rank update of an embedding table (PEFT's `lora_embedding_A` / `_B`).
#[derive(Debug)]
pub struct EmbeddingAdapter {
    /// `[r, num_embeddings]`
    pub a: Tensor,
    /// `[dim, r]`
    pub b: Tensor,
    /// Rank.
    pub r: usize,
    /// `lora_alpha`.
    pub alpha: f64,
    /// What the update is multiplied by: alpha / r (or / sqrt(r) with rsLoRA).
    pub scale: f64,
    pub(crate) merged: Arc<AtomicBool>,
}

/// An embedding table with an optional LoRA adapter: `E[ids] + (A^T[ids] @ B^T) * scale`.
#[derive(Debug)]
pub struct LoraEmbedding {
    /// Full module name, as in the HuggingFace model.
    pub name: String,
    /// `[num_embeddings, dim]`
    pub weight: Tensor,
    /// The padding token id, if any (as `nn.Embedding`'s `padding_idx`).
    pub padding_idx: Option<i64>,
    /// The LoRA adapter, when `target_modules` selected this table.
    pub adapter: Option<EmbeddingAdapter>,
}

impl LoraEmbedding {
    /// A table without adapter.
    pub fn plain(name: &str, weight: Tensor, padding_idx: Option<i64>) -> Self {
        LoraEmbedding {
            name: name.to_string(),
            weight,
            padding_idx,
            adapter: None,
        }
    }

    /// Look up `ids` (with the adapter's update unless merged).
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

    /// Is the adapter merged into the table?
    pub fn is_merged(&self) -> bool {
        self.adapter
            .as_ref()
            .is_some_and(|a| a.merged.load(Ordering::Relaxed))
    }
}

/// Layer normalisation over the last dimension.
#[derive(Debug)]
pub struct LayerNorm {
    /// Full module name, as in the HuggingFace model.
    pub name: String,
    /// The scale (gamma).
    pub weight: Tensor,
    /// The shift (beta), if any.
    pub bias: Option<Tensor>,
    /// Added to the variance, as `layer_norm_eps`.
    pub eps: f64,
}

impl LayerNorm {
    /// Normalise `x` over its last dimension.
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
                return Err(Error::NonFinite(format!(
                    "{}: merging the adapter gives non-finite weights (NaN or Inf in lora_A/lora_B or the base); refusing to merge",
                    self.name
                )));
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
        other => Err(Error::UnsupportedDtype(format!(
            "adapter dtype {other:?} is not a floating-point type"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InitLoraWeights, LoraBuilder, LoraConfig};
    use tch::Device;

    /// Three `[out, 6]` members, adapters (ranks 2 and 3, random B) on the first and the last.
    /// With `v_alpha`, v's alpha.
    fn members(
        alpha: f64,
        v_alpha: Option<f64>,
    ) -> (FusedLinears, Vec<LoraLinear>, crate::LoraModel) {
        tch::manual_seed(11);
        let mut cfg = LoraConfig::new(2, alpha, &["q", "v"]);
        cfg.rank_pattern.insert("v".into(), 3);
        if let Some(a) = v_alpha {
            cfg.alpha_pattern.insert("v".into(), a);
        }
        cfg.init_lora_weights = InitLoraWeights::Random;
        let mut builder = LoraBuilder::new(cfg).unwrap();
        let opts = (Kind::Float, Device::Cpu);
        let weights: Vec<Tensor> = [4, 5, 3]
            .iter()
            .map(|o| Tensor::randn([*o, 6], opts))
            .collect();
        let biases: Vec<Option<Tensor>> = [4, 5, 3]
            .iter()
            .map(|o| Some(Tensor::randn([*o], opts)))
            .collect();
        let (fused, views) = FusedLinears::fuse(&weights, &biases).unwrap();
        let layers = ["q", "k", "v"]
            .iter()
            .zip(views)
            .map(|(n, (w, b))| builder.linear(n, w, b, WeightLayout::OutIn).unwrap())
            .collect();
        (fused, layers, builder.finish().unwrap())
    }

    /// The fused product against the members one by one: outputs and every gradient.
    fn compare(fused: &FusedLinears, layers: &[LoraLinear], lora: &crate::LoraModel) -> f64 {
        let refs: Vec<&LoraLinear> = layers.iter().collect();
        let x = Tensor::randn([2, 7, 6], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let w = Tensor::randn([2, 7, 12], (Kind::Float, Device::Cpu));
        let mut outs = Vec::new();
        for fuse in [true, false] {
            let y = if fuse {
                fused.forward_t(&refs, 0, &x, true)
            } else {
                Tensor::cat(
                    &layers
                        .iter()
                        .map(|l| l.forward_t(&x, true))
                        .collect::<Vec<_>>(),
                    -1,
                )
            };
            (&y * &w).sum(Kind::Float).backward();
            let mut grads = vec![y.detach(), x.grad().copy()];
            let mut xg = x.grad();
            let _ = xg.zero_();
            for p in lora.trainable_params() {
                let mut t = p.tensor.shallow_clone();
                grads.push(t.grad().copy());
                t.zero_grad();
            }
            outs.push(grads);
        }
        outs[0]
            .iter()
            .zip(&outs[1])
            .map(|(a, b)| (a - b).abs().max().double_value(&[]))
            .fold(0.0, f64::max)
    }

    #[test]
    fn fused_product_equals_members() {
        // Scales 2 and 2 (folded into one block-diagonal B), 2 and 4/3, 1.5 and 1 (PEFT's order).
        for (alpha, v_alpha) in [(4.0, Some(6.0)), (4.0, None), (3.0, None)] {
            let (fused, layers, lora) = members(alpha, v_alpha);
            let refs: Vec<&LoraLinear> = layers.iter().collect();
            assert!(fused.is_fused(&refs, 0) && fused.is_fused(&refs[1..], 1));
            let d = compare(&fused, &layers, &lora);
            assert!(
                d < 1e-5,
                "alpha {alpha} {v_alpha:?}: fused differs by {d:e}"
            );
        }
    }

    #[test]
    fn fused_weight_follows_members_and_falls_back() {
        let (fused, layers, lora) = members(4.0, Some(6.0));
        let refs: Vec<&LoraLinear> = layers.iter().collect();
        // An in-place change of a member's weight (as merging does) is the fused weight's.
        let _ = layers[1]
            .weight
            .shallow_clone()
            .f_add_(&Tensor::from(0.5f32))
            .unwrap();
        let x = Tensor::randn([3, 6], (Kind::Float, Device::Cpu));
        let y = fused.forward_t(&refs, 0, &x, false);
        let want = layers[1].forward_t(&x, false);
        assert!(f64::try_from((y.narrow(1, 4, 5) - want).abs().max()).unwrap() < 1e-5);
        // A member whose base trains: one product per member, still equal.
        let _ = layers[0]
            .bias
            .as_ref()
            .unwrap()
            .shallow_clone()
            .set_requires_grad(true);
        assert!(!fused.is_fused(&refs, 0));
        assert!(compare(&fused, &layers, &lora) < 1e-5);
        // A member whose weight was replaced is no longer read from the shared tensor.
        let _ = layers[0]
            .bias
            .as_ref()
            .unwrap()
            .shallow_clone()
            .set_requires_grad(false);
        let mut moved = layers[2].weight.shallow_clone();
        moved.set_data(&layers[2].weight.copy());
        assert!(!fused.is_fused(&refs, 0) && fused.is_fused(&refs[..2], 0));
    }
    /// An input of the wrong width or dtype is a typed error, naming the layer; a right one
    /// gives `forward_t`'s values (Conv1D layout too).
    #[test]
    fn try_forward_checks_width_and_dtype() {
        let (_, layers, _) = members(4.0, None);
        let x = Tensor::randn([2, 3, 6], (Kind::Float, Device::Cpu));
        let y = layers[0].try_forward_t(&x, false).unwrap();
        assert_eq!(
            f64::try_from((y - layers[0].forward_t(&x, false)).abs().max()).unwrap(),
            0.0
        );
        let wide = Tensor::randn([2, 7], (Kind::Float, Device::Cpu));
        match layers[0].try_forward_t(&wide, false) {
            Err(Error::ShapeMismatch {
                what,
                found,
                expected,
                ..
            }) => {
                assert_eq!(what, "the input of q");
                assert_eq!((found, expected), (vec![2, 7], vec![2, 6]));
            }
            other => panic!("expected ShapeMismatch, got {other:?}"),
        }
        let scalar = Tensor::from(1.0f32);
        assert!(matches!(
            layers[0].try_forward_t(&scalar, false),
            Err(Error::ShapeMismatch { .. })
        ));
        let double = x.to_kind(Kind::Double);
        let err = layers[0].try_forward_t(&double, false).unwrap_err();
        assert!(matches!(err, Error::UnsupportedDtype(_)), "{err}");
        assert!(
            err.to_string().contains("the input of q is Double"),
            "{err}"
        );
        let conv = LoraLinear::plain(
            "c_attn",
            Tensor::randn([6, 4], (Kind::Float, Device::Cpu)),
            None,
            WeightLayout::InOut,
        );
        assert_eq!(conv.try_forward_t(&x, false).unwrap().size(), [2, 3, 4]);
        assert!(conv.try_forward_t(&wide, false).is_err());
    }
}
