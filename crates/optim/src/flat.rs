//! Flat buffers: every trained tensor of one dtype lives in one contiguous arena, and the
//! model's parameters and their `.grad`s are views into it.
//!
//! Layout: one arena per parameter dtype (usually one), holding a parameter buffer and a
//! gradient buffer. An arena is cut into buckets, one per (group, dtype), each a contiguous
//! range, so an update runs once per bucket and a gradient-wide operation (zeroing, the norm,
//! clipping, a future all-reduce) runs once per arena, whatever the number of tensors.
//!
//! Parameters: at construction each parameter's values are copied into its slice and the
//! parameter is pointed at the slice with `set_data`. Every shallow handle on the parameter
//! (the layers, the `LoraModel` registry) shares its `TensorImpl`, so the model computes with
//! the slice and sees each update.
//!
//! Gradients: autograd adds a new gradient *in place* into an existing `.grad`
//! (`AccumulateGrad`, case 2.3 in `torch/csrc/autograd/functions/accumulate_grad.h`), but when
//! `.grad` is undefined it installs a tensor of its own. So the first time a gradient shows up
//! (the first backward) it is *adopted*: copied into its slice, and the `.grad` tensor pointed
//! at the slice with `set_data`. From then on every backward accumulates straight into the
//! arena, and zeroing is one `zero_` per arena, with no reallocation. Adoption checks one
//! pointer per tensor on the host (no device work) and repeats whenever a gradient or a
//! parameter was replaced behind the optimizer's back (e.g. a backward with `create_graph`).

use crate::error::Error;
use anyhow::{bail, Context, Result};
use loraplus_core::ParamRole;
use tch::{Device, Kind, Tensor};

use crate::groups::ParamGroup;

/// One trained tensor.
#[derive(Debug)]
pub(crate) struct Slot {
    pub name: String,
    pub role: ParamRole,
    pub shape: Vec<i64>,
    pub numel: i64,
    /// Shallow handle on the model's parameter.
    pub param: Tensor,
    /// Its slice of the arena's parameter buffer, shaped as the parameter.
    pub param_view: Tensor,
    /// Its slice of the arena's gradient buffer, shaped as the parameter.
    pub grad_view: Tensor,
    pub bucket: usize,
    /// Offset inside the bucket.
    pub offset: i64,
    /// The parameter's autograd version counter when the optimizer last knew its values: a
    /// change means someone wrote into it (a weight load), which the f32 master copy of a
    /// low-precision bucket must take in.
    pub version: i64,
}

/// The flat parameter and gradient buffers of one dtype.
#[derive(Debug)]
pub(crate) struct Arena {
    pub kind: Kind,
    pub params: Tensor,
    pub grads: Tensor,
}

/// One (group, dtype) range of an arena, with its optimizer state.
#[derive(Debug)]
pub(crate) struct Bucket {
    pub group: ParamGroup,
    pub kind: Kind,
    pub numel: i64,
    /// Views of the arena's buffers.
    pub params: Tensor,
    pub grads: Tensor,
    /// Moments in the compute dtype (f32; f64 for f64 parameters).
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
    pub max_exp_avg_sq: Option<Tensor>,
    /// f32 master copy of f16/bf16 parameters: the update runs on it, and the parameters are
    /// its rounding.
    pub master: Option<Tensor>,
    pub base_lr: f64,
    pub weight_decay: f64,
}

/// The dtype the update computes in for parameters of dtype `kind`.
pub(crate) fn compute_kind(kind: Kind) -> Kind {
    if kind == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

/// Short dtype names for files and messages.
pub(crate) fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "f32",
        Kind::Double => "f64",
        Kind::Half => "f16",
        Kind::BFloat16 => "bf16",
        _ => "other",
    }
}

pub(crate) fn kind_from_name(name: &str) -> Option<Kind> {
    [Kind::Float, Kind::Double, Kind::Half, Kind::BFloat16]
        .into_iter()
        .find(|k| kind_name(*k) == name)
}

/// A parameter handed to the optimizer, checked.
pub(crate) struct Input {
    pub name: String,
    pub tensor: Tensor,
    pub role: ParamRole,
    pub group: ParamGroup,
}

/// The arenas, buckets and slots for `inputs` (already checked: one device, float dtypes,
/// requiring grad). `hyper(group)` gives each group's (base lr, weight decay).
pub(crate) fn build(
    inputs: Vec<Input>,
    device: Device,
    amsgrad: bool,
    hyper: impl Fn(ParamGroup) -> (f64, f64),
) -> Result<(Vec<Arena>, Vec<Bucket>, Vec<Slot>)> {
    let _guard = tch::no_grad_guard();
    // Bucket order: group order, then the order in which dtypes first appear.
    let mut kinds: Vec<Kind> = Vec::new();
    for i in &inputs {
        let k = i.tensor.kind();
        if !kinds.contains(&k) {
            kinds.push(k);
        }
    }
    let mut bucket_keys: Vec<(ParamGroup, Kind)> = Vec::new();
    for g in ParamGroup::ALL {
        for &k in &kinds {
            if inputs.iter().any(|i| i.group == g && i.tensor.kind() == k) {
                bucket_keys.push((g, k));
            }
        }
    }
    let mut arenas = Vec::new();
    let mut buckets = Vec::new();
    let mut slots = Vec::new();
    for &kind in &kinds {
        let keys: Vec<(ParamGroup, Kind)> = bucket_keys
            .iter()
            .copied()
            .filter(|(_, k)| *k == kind)
            .collect();
        let total: i64 = inputs
            .iter()
            .filter(|i| i.tensor.kind() == kind)
            .map(|i| i.tensor.numel() as i64)
            .sum();
        let params = Tensor::f_empty([total], (kind, device)).with_context(|| {
            format!(
                "allocating the flat parameter buffer ({total} {} elements on {device:?})",
                kind_name(kind)
            )
        })?;
        let grads = Tensor::f_zeros([total], (kind, device)).with_context(|| {
            format!(
                "allocating the flat gradient buffer ({total} {} elements on {device:?})",
                kind_name(kind)
            )
        })?;
        let mut start = 0i64;
        for (group, _) in keys {
            let bucket_idx = buckets.len();
            let mut offset = 0i64;
            for input in inputs
                .iter()
                .filter(|i| i.group == group && i.tensor.kind() == kind)
            {
                let shape = input.tensor.size();
                let numel = input.tensor.numel() as i64;
                let at = start + offset;
                let param_view = params.f_narrow(0, at, numel)?.f_view(shape.as_slice())?;
                let grad_view = grads.f_narrow(0, at, numel)?.f_view(shape.as_slice())?;
                param_view
                    .shallow_clone()
                    .f_copy_(&input.tensor)
                    .with_context(|| format!("copying {} into the flat buffer", input.name))?;
                let mut handle = input.tensor.shallow_clone();
                handle
                    .f_set_data(&param_view)
                    .with_context(|| format!("pointing {} at the flat buffer", input.name))?;
                slots.push(Slot {
                    name: input.name.clone(),
                    role: input.role,
                    shape,
                    numel,
                    version: input.tensor.f_internal_version()?,
                    param: input.tensor.shallow_clone(),
                    param_view,
                    grad_view,
                    bucket: bucket_idx,
                    offset,
                });
                offset += numel;
            }
            let numel = offset;
            let ck = compute_kind(kind);
            let zeros = || Tensor::f_zeros([numel], (ck, device));
            let bucket_params = params.f_narrow(0, start, numel)?;
            let master = if ck != kind {
                Some(bucket_params.f_to_kind(ck)?)
            } else {
                None
            };
            let (base_lr, weight_decay) = hyper(group);
            buckets.push(Bucket {
                group,
                kind,
                numel,
                params: bucket_params,
                grads: grads.f_narrow(0, start, numel)?,
                exp_avg: zeros().context("allocating exp_avg")?,
                exp_avg_sq: zeros().context("allocating exp_avg_sq")?,
                max_exp_avg_sq: if amsgrad {
                    Some(zeros().context("allocating max_exp_avg_sq")?)
                } else {
                    None
                },
                master,
                base_lr,
                weight_decay,
            });
            start += numel;
        }
        arenas.push(Arena {
            kind,
            params,
            grads,
        });
    }
    Ok((arenas, buckets, slots))
}

/// What adoption found.
#[derive(Debug, Default)]
pub(crate) struct Adopted {
    /// Parameters without a gradient (not reached by the backward pass).
    pub missing: Vec<usize>,
}

/// Point every parameter and every defined `.grad` back at its slice where they no longer are.
/// With `copy_grads`, a foreign gradient's values are copied in first (they are the gradient
/// of this step); without, they are dropped (the caller zeroes the arena next).
pub(crate) fn adopt(
    slots: &mut [Slot],
    buckets: &mut [Bucket],
    copy_grads: bool,
) -> Result<Adopted> {
    let _guard = tch::no_grad_guard();
    let mut out = Adopted::default();
    for (i, slot) in slots.iter_mut().enumerate() {
        if slot.param.data_ptr() != slot.param_view.data_ptr() || slot.param.size() != slot.shape {
            readopt_param(slot, &mut buckets[slot.bucket])?;
        } else if let Some(master) = &buckets[slot.bucket].master {
            let version = slot.param.f_internal_version()?;
            if version != slot.version {
                take_written_values(slot, master)?;
                slot.version = version;
            }
        }
        let grad = slot.param.f_grad()?;
        if !grad.defined() {
            out.missing.push(i);
            continue;
        }
        if grad.data_ptr() == slot.grad_view.data_ptr() && grad.size() == slot.shape {
            continue;
        }
        if grad.size() != slot.shape {
            bail!(Error::ShapeChanged(format!(
                "{}: gradient has shape {:?}, the parameter {:?}",
                slot.name,
                grad.size(),
                slot.shape
            )));
        }
        if copy_grads {
            slot.grad_view
                .shallow_clone()
                .f_copy_(&grad)
                .with_context(|| {
                    format!("copying the gradient of {} into the flat buffer", slot.name)
                })?;
        }
        let mut handle = grad;
        handle.f_set_data(&slot.grad_view).with_context(|| {
            format!("pointing the gradient of {} at the flat buffer", slot.name)
        })?;
    }
    Ok(out)
}

/// A low-precision parameter was written into from outside (e.g. a weight load): its master
/// copy takes the new values, except where the parameter still equals the master's rounding,
/// so writing back the same weights (resume) keeps the master's extra precision. Device ops
/// only, no sync.
fn take_written_values(slot: &Slot, master: &Tensor) -> Result<()> {
    tracing::debug!(
        "{}: written from outside the optimizer; updating its f32 master copy",
        slot.name
    );
    let mut m = master.f_narrow(0, slot.offset, slot.numel)?;
    let p = slot.param_view.f_reshape([-1])?;
    let unchanged = m.f_to_kind(p.kind())?.f_eq_tensor(&p)?;
    let merged = m.f_where_self(&unchanged, &p.f_to_kind(m.kind())?)?;
    m.f_copy_(&merged)
        .with_context(|| format!("updating the master copy of {}", slot.name))?;
    Ok(())
}

/// A parameter was re-pointed elsewhere (`set_data`, a reload that replaced the tensor): take
/// its current values back into the arena (and the master copy) and point it at its slice.
fn readopt_param(slot: &mut Slot, bucket: &mut Bucket) -> Result<()> {
    if slot.param.size() != slot.shape {
        bail!(Error::ShapeChanged(format!(
            "{}: the parameter now has shape {:?}, it had {:?} when the optimizer was built",
            slot.name,
            slot.param.size(),
            slot.shape
        )));
    }
    tracing::debug!(
        "{}: parameter storage was replaced; copying it back into the flat buffer",
        slot.name
    );
    slot.param_view
        .shallow_clone()
        .f_copy_(&slot.param)
        .with_context(|| format!("copying {} into the flat buffer", slot.name))?;
    if let Some(master) = &bucket.master {
        master
            .f_narrow(0, slot.offset, slot.numel)?
            .f_copy_(&slot.param_view.f_reshape([-1])?)?;
    }
    let mut handle = slot.param.shallow_clone();
    handle
        .f_set_data(&slot.param_view)
        .with_context(|| format!("pointing {} at the flat buffer", slot.name))?;
    slot.version = slot.param.f_internal_version()?;
    Ok(())
}
