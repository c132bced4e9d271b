//! `LoraPlusAdamW`: AdamW over the LoRA+ groups, its state in flat buffers on the parameters'
//! device.

use std::collections::HashSet;

use crate::error::Error;
use anyhow::{anyhow, bail, Context, Result};
use loraplus_core::{ParamRole, TrainableParam};
use tch::{Device, Kind, Tensor};

use crate::config::LoraPlusConfig;
use crate::flat::{self, compute_kind, kind_name, Arena, Bucket, Input, Slot};
use crate::groups::{GroupSummary, OptimizerSummary, ParamGroup, TensorSummary};
use crate::kernel::{self, StepScalars, UpdateBuffers, UpdateKernel};
use crate::schedule::Schedule;

/// A function run on each flat gradient buffer in [`LoraPlusAdamW::sync_grads`], in place,
/// before the micro-batch average: the place for a data-parallel all-reduce (sum, then divide
/// by the number of ranks). Runs once per step, on buffers every rank lays out identically.
pub type GradHook = Box<dyn FnMut(&Tensor) -> Result<()> + Send>;

/// Scratch buffers of the tensor-op update, per compute dtype.
#[derive(Debug)]
struct Scratch {
    kind: Kind,
    tmp: Tensor,
    denom: Tensor,
    /// Gradients converted to the compute dtype, for f16/bf16 buckets.
    grad: Option<Tensor>,
}

/// AdamW with the LoRA+ learning rates: `lr` for the A matrices, `lr * ratio` for the B
/// matrices, as PEFT's `create_loraplus_optimizer` groups them (see [`ParamGroup`]).
///
/// One step of training:
///
/// ```no_run
/// # use loraplus_core::LoraModel;
/// # use loraplus_optim::{LoraPlusAdamW, LoraPlusConfig, Schedule};
/// # use tch::Tensor;
/// # fn train(lora: &LoraModel, batches: &[Vec<Tensor>], k: usize,
/// #          loss: impl Fn(&[Tensor]) -> Tensor) -> anyhow::Result<()> {
/// # let (cfg, schedule) = (LoraPlusConfig::default(), Schedule::Constant);
/// let mut opt = LoraPlusAdamW::new(lora.trainable_params(), &cfg, schedule)?;
/// for batch in batches {
///     for micro in batch.chunks(k) {
///         opt.backward(&loss(micro))?;       // or loss.backward(): no averaging then
///     }
///     let norm = opt.clip_grad_norm(1.0)?;   // a tensor: no device sync
///     opt.step()?;
///     opt.zero_grad()?;
/// }
/// # Ok(()) }
/// ```
///
/// Gradients are touched in one place only, [`Self::sync_grads`], which `clip_grad_norm`,
/// `grad_norm` and `step` call first (once per step).
pub struct LoraPlusAdamW {
    pub(crate) config: LoraPlusConfig,
    pub(crate) schedule: Schedule,
    kernel: UpdateKernel,
    pub(crate) device: Device,
    pub(crate) slots: Vec<Slot>,
    arenas: Vec<Arena>,
    pub(crate) buckets: Vec<Bucket>,
    scratch: Vec<Scratch>,
    /// Completed optimizer steps (PyTorch's `state["step"]`, kept on the host).
    pub(crate) step: u64,
    /// Micro-batches counted by [`Self::backward`] since the last step or `zero_grad`.
    micro_batches: u64,
    /// `sync_grads` ran since the last step or `zero_grad`.
    grads_synced: bool,
    grad_hook: Option<GradHook>,
    warned_missing: bool,
}

impl std::fmt::Debug for LoraPlusAdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraPlusAdamW")
            .field("config", &self.config)
            .field("schedule", &self.schedule)
            .field("kernel", &self.kernel)
            .field("device", &self.device)
            .field("step", &self.step)
            .field("tensors", &self.slots.len())
            .field("buckets", &self.buckets.len())
            .finish_non_exhaustive()
    }
}

impl LoraPlusAdamW {
    /// An optimizer over a model's trainable parameters (`LoraModel::trainable_params`).
    ///
    /// The parameters are moved into flat per-group buffers (see [`crate::flat`]); build the
    /// optimizer after the model is on its device. Loading weights into the parameters later
    /// (an in-place `copy_`) is fine.
    pub fn new(
        params: &[TrainableParam],
        config: &LoraPlusConfig,
        schedule: Schedule,
    ) -> Result<Self> {
        Self::from_tensors(
            params
                .iter()
                .map(|p| (p.name.clone(), p.tensor.shallow_clone(), p.role)),
            config,
            schedule,
        )
    }

    /// As [`Self::new`], from `(name, tensor, role)` triples.
    pub fn from_tensors(
        params: impl IntoIterator<Item = (String, Tensor, ParamRole)>,
        config: &LoraPlusConfig,
        schedule: Schedule,
    ) -> Result<Self> {
        config.validate()?;
        schedule.validate()?;
        let separate_head = config.head_lr.is_some();
        let mut inputs = Vec::new();
        let mut device = None;
        let mut seen = HashSet::new();
        for (name, tensor, role) in params {
            if !tensor.defined() {
                bail!(Error::BadParams(format!("{name}: the tensor is undefined")));
            }
            let kind = tensor.kind();
            if !matches!(
                kind,
                Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
            ) {
                bail!(Error::BadParams(format!(
                    "{name}: dtype {kind:?} cannot be trained (f32, f64, f16 or bf16 only)"
                )));
            }
            if !tensor.requires_grad() {
                bail!(Error::BadParams(format!("{name} ({role:?}) does not require grad: only trainable tensors can be optimized")));
            }
            let d = tensor.device();
            match device {
                None => device = Some((d, name.clone())),
                Some((first, ref first_name)) if first != d => {
                    bail!(Error::BadParams(format!("{name} is on {d:?} but {first_name} is on {first:?}: all trained tensors must be on one device")))
                }
                _ => {}
            }
            if tensor.numel() > 0 && !seen.insert(tensor.data_ptr() as usize) {
                bail!(Error::BadParams(format!(
                    "{name}: the same tensor is listed twice"
                )));
            }
            let group = ParamGroup::of(role, tensor.dim(), separate_head);
            inputs.push(Input {
                name,
                tensor,
                role,
                group,
            });
        }
        let Some((device, _)) = device else {
            bail!(Error::BadParams("the parameter set is empty: nothing to optimize (does the LoRA config target any module?)".into()));
        };
        let cfg = *config;
        let (arenas, buckets, slots) =
            flat::build(inputs, device, config.amsgrad, |g| g.hyper_params(&cfg))?;
        let opt = LoraPlusAdamW {
            config: *config,
            schedule,
            kernel: UpdateKernel::Auto,
            device,
            slots,
            arenas,
            buckets,
            scratch: Vec::new(),
            step: 0,
            micro_batches: 0,
            grads_synced: false,
            grad_hook: None,
            warned_missing: false,
        };
        tracing::info!("{}", opt.summary());
        Ok(opt)
    }

    /// Choose the update implementation (default [`UpdateKernel::Auto`]).
    pub fn set_kernel(&mut self, kernel: UpdateKernel) {
        self.kernel = kernel;
    }

    /// Install the gradient hook (see [`GradHook`]).
    pub fn set_grad_hook(&mut self, hook: GradHook) {
        self.grad_hook = Some(hook);
    }

    /// The hyper-parameters it was built with.
    pub fn config(&self) -> &LoraPlusConfig {
        &self.config
    }

    /// Replace the hyper-parameters and the schedule, keeping the state (moments, step count):
    /// what a resumed run with changed settings does (a lower lr after a divergence, a longer
    /// schedule for more steps). The groups stay as they were built: `head_lr` cannot be set
    /// or unset (the head is its own group only with it), nor `amsgrad` changed.
    pub fn set_hyper_params(&mut self, config: &LoraPlusConfig, schedule: Schedule) -> Result<()> {
        config.validate()?;
        schedule.validate()?;
        if config.head_lr.is_some() != self.config.head_lr.is_some() {
            bail!(Error::BadConfig(format!(
                "head_lr {:?} where the optimizer was built with {:?}: a separate head lr changes the groups; set it in both or in neither",
                config.head_lr,
                self.config.head_lr
            )));
        }
        if config.amsgrad != self.config.amsgrad {
            bail!(Error::BadConfig(format!(
                "amsgrad {} where the optimizer was built with {}: it changes the state kept",
                config.amsgrad, self.config.amsgrad
            )));
        }
        self.config = *config;
        self.schedule = schedule;
        for b in &mut self.buckets {
            let (lr, wd) = b.group.hyper_params(config);
            b.base_lr = lr;
            b.weight_decay = wd;
        }
        Ok(())
    }

    /// The learning-rate schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The device of the parameters and of the optimizer state.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Completed optimizer steps.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The learning rate the next step gives `group` (schedule applied); `None` when no
    /// trained tensor is in that group.
    pub fn lr_of(&self, group: ParamGroup) -> Option<f64> {
        let factor = self.schedule.factor(self.step);
        self.buckets
            .iter()
            .find(|b| b.group == group)
            .map(|b| b.base_lr * factor)
    }

    /// The learning rate of every non-empty group for the next step, in update order.
    pub fn lrs(&self) -> Vec<(ParamGroup, f64)> {
        self.summary()
            .groups
            .iter()
            .map(|g| (g.group, g.lr))
            .collect()
    }

    /// Each group's tensors, element count, learning rates and weight decay.
    pub fn summary(&self) -> OptimizerSummary {
        let factor = self.schedule.factor(self.step);
        let mut groups: Vec<GroupSummary> = Vec::new();
        for (bi, b) in self.buckets.iter().enumerate() {
            let tensors = self
                .slots
                .iter()
                .filter(|s| s.bucket == bi)
                .map(|s| TensorSummary {
                    name: s.name.clone(),
                    role: s.role,
                    shape: s.shape.clone(),
                });
            match groups.iter_mut().find(|g| g.group == b.group) {
                Some(g) => {
                    g.tensors.extend(tensors);
                    g.numel += b.numel;
                }
                None => groups.push(GroupSummary {
                    group: b.group,
                    tensors: tensors.collect(),
                    numel: b.numel,
                    base_lr: b.base_lr,
                    lr: b.base_lr * factor,
                    weight_decay: b.weight_decay,
                }),
            }
        }
        OptimizerSummary {
            groups,
            step: self.step,
        }
    }

    /// The flat gradient buffers, one per parameter dtype (usually one): what a data-parallel
    /// all-reduce would reduce.
    pub fn grad_buffers(&self) -> Vec<&Tensor> {
        self.arenas.iter().map(|a| &a.grads).collect()
    }

    /// The flat parameter buffers, one per parameter dtype (the parameters are views of them).
    pub fn param_buffers(&self) -> Vec<&Tensor> {
        self.arenas.iter().map(|a| &a.params).collect()
    }

    /// Backward of one micro-batch's loss, counted: with `k` micro-batches before a step the
    /// gradients are averaged (divided by `k`) in [`Self::sync_grads`]. Call `loss.backward()`
    /// directly instead to keep the plain sum.
    pub fn backward(&mut self, loss: &Tensor) -> Result<()> {
        loss.f_backward().context("backward of the loss")?;
        self.micro_batches += 1;
        self.grads_synced = false;
        Ok(())
    }

    /// The one place where gradients are handled between backward and step. In order:
    ///
    /// 1. adopt the gradients autograd created this step into the flat buffers (only after the
    ///    first backward, or if a gradient was replaced);
    /// 2. run the [`GradHook`] on each flat gradient buffer: a data-parallel all-reduce slots
    ///    in here, one collective per buffer;
    /// 3. average over the micro-batches counted by [`Self::backward`].
    ///
    /// Runs once per step; `clip_grad_norm`, `grad_norm` and `step` call it. No device sync.
    pub fn sync_grads(&mut self) -> Result<()> {
        if self.grads_synced {
            return Ok(());
        }
        let adopted = flat::adopt(&mut self.slots, &mut self.buckets, true)?;
        if !adopted.missing.is_empty() && !self.warned_missing {
            self.warned_missing = true;
            let names: Vec<&str> = adopted
                .missing
                .iter()
                .map(|&i| self.slots[i].name.as_str())
                .collect();
            tracing::warn!(
                "{} trained tensor(s) received no gradient ({}); they are updated with a zero gradient (PyTorch would skip them)",
                names.len(),
                names.join(", ")
            );
        }
        if let Some(hook) = self.grad_hook.as_mut() {
            for a in &self.arenas {
                hook(&a.grads).context("gradient hook")?;
            }
        }
        if self.micro_batches > 1 {
            let _guard = tch::no_grad_guard();
            for a in &self.arenas {
                let _ = a
                    .grads
                    .shallow_clone()
                    .f_div_scalar_(self.micro_batches as f64)
                    .context("averaging the accumulated gradients")?;
            }
        }
        self.grads_synced = true;
        Ok(())
    }

    /// The global L2 norm of all gradients, as a 0-dim f32 tensor on the device (no sync).
    pub fn grad_norm(&mut self) -> Result<Tensor> {
        self.sync_grads()?;
        self.total_norm()
    }

    fn total_norm(&self) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let mut norms = Vec::with_capacity(self.arenas.len());
        for a in &self.arenas {
            let n = a
                .grads
                .f_norm_scalaropt_dtype(2.0, compute_kind(a.kind))
                .context("gradient norm")?;
            norms.push(n.f_to_kind(Kind::Float)?);
        }
        if norms.len() == 1 {
            Ok(norms.pop().expect("one norm"))
        } else {
            Ok(Tensor::f_stack(&norms, 0)?.f_norm_scalaropt_dtype(2.0, Kind::Float)?)
        }
    }

    /// Scale all gradients so their global L2 norm is at most `max_norm`, as
    /// `torch.nn.utils.clip_grad_norm_` does (`coef = min(1, max_norm / (norm + 1e-6))`),
    /// with one reduction per flat buffer and no device sync. Returns the norm before
    /// clipping, as a 0-dim f32 tensor on the device.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Result<Tensor> {
        if !(max_norm.is_finite() && max_norm >= 0.0) {
            bail!(Error::BadConfig(format!(
                "max_norm = {max_norm}: the clipping threshold must be a finite number >= 0"
            )));
        }
        self.sync_grads()?;
        let total = self.total_norm()?;
        let _guard = tch::no_grad_guard();
        // PyTorch: clip_coef = max_norm / (total_norm + 1e-6), i.e. reciprocal() * max_norm
        // (`Tensor.__rtruediv__`), then clamp(max=1).
        let coef = total
            .f_add_scalar(CLIP_EPS)?
            .f_reciprocal()?
            .f_mul_scalar(max_norm)?
            .f_clamp_max(1.0)?;
        for a in &self.arenas {
            let _ = a
                .grads
                .shallow_clone()
                .f_mul_(&coef)
                .context("clipping the gradients")?;
        }
        Ok(total)
    }

    /// One AdamW step over every group, at the learning rates the schedule gives this step.
    /// Runs [`Self::sync_grads`] first if it has not run. No host round trip: the step count and
    /// the learning rates are host values.
    pub fn step(&mut self) -> Result<()> {
        self.sync_grads()?;
        let t = self.step + 1;
        let factor = self.schedule.factor(self.step);
        let (betas, eps, amsgrad) = (self.config.betas, self.config.eps, self.config.amsgrad);
        self.ensure_scratch()?;
        let _guard = tch::no_grad_guard();
        for b in &self.buckets {
            let lr = b.base_lr * factor;
            let s = StepScalars::new(lr, b.weight_decay, betas, eps, amsgrad, t);
            let ck = compute_kind(b.kind);
            let scratch = self.scratch.iter().find(|s| s.kind == ck);
            let narrow = |t: &Tensor| -> Result<Tensor> {
                Ok(if t.defined() {
                    t.f_narrow(0, 0, b.numel)?
                } else {
                    Tensor::new()
                })
            };
            let (tmp, denom) = match scratch {
                Some(s) => (narrow(&s.tmp)?, narrow(&s.denom)?),
                None => (Tensor::new(), Tensor::new()),
            };
            let (params, grads) = match &b.master {
                Some(master) => {
                    let g = scratch.and_then(|s| s.grad.as_ref()).ok_or_else(|| {
                        anyhow!(
                            "internal: no conversion buffer for {} gradients",
                            kind_name(b.kind)
                        )
                    })?;
                    let mut g = narrow(g)?;
                    g.f_copy_(&b.grads)?;
                    (master.shallow_clone(), g)
                }
                None => (b.params.shallow_clone(), b.grads.shallow_clone()),
            };
            let bufs = UpdateBuffers {
                params: &params,
                grads: &grads,
                exp_avg: &b.exp_avg,
                exp_avg_sq: &b.exp_avg_sq,
                max_exp_avg_sq: b.max_exp_avg_sq.as_ref(),
                tmp: &tmp,
                denom: &denom,
            };
            kernel::update(self.kernel, &bufs, &s)
                .with_context(|| format!("step {t}, group {}", b.group))?;
            if b.master.is_some() {
                b.params.shallow_clone().f_copy_(&params)?;
            }
        }
        self.step = t;
        self.micro_batches = 0;
        self.grads_synced = false;
        Ok(())
    }

    /// Allocate the scratch buffers the tensor-op path needs, once, sized for the largest
    /// bucket of each compute dtype. The host pass over f32 CPU buffers needs none.
    fn ensure_scratch(&mut self) -> Result<()> {
        for b in &self.buckets {
            let ck = compute_kind(b.kind);
            let low_precision = b.master.is_some();
            let host_ok = self.kernel == UpdateKernel::Auto
                && self.device == Device::Cpu
                && ck == Kind::Float;
            let needs_ops = !host_ok;
            let idx = match self.scratch.iter().position(|s| s.kind == ck) {
                Some(i) => i,
                None if needs_ops || low_precision => {
                    self.scratch.push(Scratch {
                        kind: ck,
                        tmp: Tensor::new(),
                        denom: Tensor::new(),
                        grad: None,
                    });
                    self.scratch.len() - 1
                }
                None => continue,
            };
            let s = &mut self.scratch[idx];
            let too_small = |t: &Tensor| !t.defined() || (t.numel() as i64) < b.numel;
            let alloc = |n: i64| {
                Tensor::f_zeros([n], (ck, self.device)).context("allocating optimizer scratch")
            };
            if needs_ops && (too_small(&s.tmp) || too_small(&s.denom)) {
                s.tmp = alloc(b.numel)?;
                s.denom = alloc(b.numel)?;
            }
            if low_precision && s.grad.as_ref().is_none_or(too_small) {
                s.grad = Some(alloc(b.numel)?);
            }
        }
        Ok(())
    }

    /// Zero every gradient in place (one `zero_` per flat buffer; nothing is reallocated) and
    /// reset the micro-batch count.
    pub fn zero_grad(&mut self) -> Result<()> {
        flat::adopt(&mut self.slots, &mut self.buckets, false)?;
        let _guard = tch::no_grad_guard();
        for a in &self.arenas {
            let _ = a
                .grads
                .shallow_clone()
                .f_zero_()
                .context("zeroing the gradients")?;
        }
        self.reset_accumulation();
        Ok(())
    }

    /// Forget the micro-batches counted so far.
    pub(crate) fn reset_accumulation(&mut self) {
        self.micro_batches = 0;
        self.grads_synced = false;
    }
}

/// The `1e-6` PyTorch adds to the norm before dividing (`clip_grads_with_norm_`).
const CLIP_EPS: f64 = 1e-6;
