//! The AdamW update of one flat buffer: as in-place tensor ops (any device, any dtype), or as
//! one fused pass over host memory (f32 on the CPU), the two computing the same formula.
//!
//! The formula, per element, is PyTorch's single-tensor AdamW (`torch/optim/adam.py`,
//! `_single_tensor_adam` with `decoupled_weight_decay=True`), in its order:
//!
//! ```text
//! p  *= 1 - lr * wd                      (skipped when wd == 0)
//! m   = lerp(m, g, 1 - beta1)
//! v   = v * beta2 + (1 - beta2) * g * g
//! vm  = max(vm, v)                       (amsgrad; v below stands for vm then)
//! p  += (-lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
//! ```
//!
//! with `bc1 = 1 - beta1^t`, `bc2 = 1 - beta2^t`. The scalars are computed on the host in f64
//! from the step count the optimizer keeps on the host, then rounded to f32, as ATen rounds a
//! Python float scalar for an f32 tensor. Nothing here reads device memory back to the host.

use anyhow::{Context, Result};
use tch::{Device, Kind, Tensor};

/// Which implementation runs the update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpdateKernel {
    /// The fused host pass for f32 buffers on the CPU, tensor ops everywhere else.
    #[default]
    Auto,
    /// In-place tensor ops on every device (eleven per buffer).
    TensorOps,
}

/// The host-side scalars of one step of one group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct StepScalars {
    /// `1 - lr * wd`; `None` when `wd == 0` (PyTorch skips the multiply).
    pub decay: Option<f64>,
    /// `1 - beta1`, the lerp weight.
    pub one_minus_beta1: f64,
    pub beta2: f64,
    pub one_minus_beta2: f64,
    /// `sqrt(1 - beta2^t)`, computed as Python does: `(1 - beta2**t) ** 0.5`.
    pub bias_correction2_sqrt: f64,
    pub eps: f64,
    /// `-lr / (1 - beta1^t)`.
    pub neg_step_size: f64,
    pub amsgrad: bool,
}

impl StepScalars {
    /// The scalars of step `t` (1-based) for a group with learning rate `lr`.
    pub fn new(
        lr: f64,
        weight_decay: f64,
        betas: (f64, f64),
        eps: f64,
        amsgrad: bool,
        t: u64,
    ) -> Self {
        let (beta1, beta2) = betas;
        let step = t as f64;
        let bias_correction1 = 1.0 - beta1.powf(step);
        let bias_correction2 = 1.0 - beta2.powf(step);
        let step_size = lr / bias_correction1;
        StepScalars {
            decay: (weight_decay != 0.0).then_some(1.0 - lr * weight_decay),
            one_minus_beta1: 1.0 - beta1,
            beta2,
            one_minus_beta2: 1.0 - beta2,
            bias_correction2_sqrt: bias_correction2.powf(0.5),
            eps,
            neg_step_size: -step_size,
            amsgrad,
        }
    }
}

/// The buffers of one update: all flat, contiguous, the same length, on one device.
pub(crate) struct UpdateBuffers<'a> {
    /// The parameters in f32: the parameters themselves, or their f32 master copy.
    pub params: &'a Tensor,
    /// The gradient in f32 (converted into scratch for other dtypes).
    pub grads: &'a Tensor,
    pub exp_avg: &'a Tensor,
    pub exp_avg_sq: &'a Tensor,
    pub max_exp_avg_sq: Option<&'a Tensor>,
    /// Two f32 scratch buffers of the same length (tensor-op path only).
    pub tmp: &'a Tensor,
    pub denom: &'a Tensor,
}

/// Can the fused host pass run on these buffers?
pub(crate) fn host_pass_applies(b: &UpdateBuffers<'_>) -> bool {
    let ok = |t: &Tensor| t.device() == Device::Cpu && t.kind() == Kind::Float && t.is_contiguous();
    ok(b.params)
        && ok(b.grads)
        && ok(b.exp_avg)
        && ok(b.exp_avg_sq)
        && b.max_exp_avg_sq.is_none_or(ok)
}

/// One AdamW step on the buffers, in place.
pub(crate) fn update(kernel: UpdateKernel, b: &UpdateBuffers<'_>, s: &StepScalars) -> Result<()> {
    if kernel == UpdateKernel::Auto && host_pass_applies(b) {
        host::update(b, s);
        Ok(())
    } else {
        update_with_ops(b, s)
    }
}

/// The update as eleven in-place tensor ops (twelve with amsgrad). tch has no `value` argument
/// on `addcmul_`/`addcdiv_`, so the scaled operand goes through `tmp` first; `1 * x` is exact,
/// so the arithmetic is the same as PyTorch's `addcmul_(g, g, value=c)` and
/// `addcdiv_(m, denom, value=-step_size)`.
fn update_with_ops(b: &UpdateBuffers<'_>, s: &StepScalars) -> Result<()> {
    let _guard = tch::no_grad_guard();
    let ctx = "AdamW update";
    let mut p = b.params.shallow_clone();
    let mut m = b.exp_avg.shallow_clone();
    let mut v = b.exp_avg_sq.shallow_clone();
    let mut d = b.denom.shallow_clone();
    if let Some(decay) = s.decay {
        let _ = p.f_mul_scalar_(decay).context(ctx)?;
    }
    let _ = m.f_lerp_(b.grads, s.one_minus_beta1).context(ctx)?;
    let _ = b
        .grads
        .f_mul_scalar_out(b.tmp, s.one_minus_beta2)
        .context(ctx)?;
    let _ = v.f_mul_scalar_(s.beta2).context(ctx)?;
    let _ = v.f_addcmul_(b.tmp, b.grads).context(ctx)?;
    let second = match b.max_exp_avg_sq {
        Some(vmax) => {
            let _ = vmax.f_maximum_out(vmax, &v).context(ctx)?;
            vmax
        }
        None => &v,
    };
    let _ = second.f_sqrt_out(&d).context(ctx)?;
    let _ = d.f_div_scalar_(s.bias_correction2_sqrt).context(ctx)?;
    let _ = d.f_add_scalar_(s.eps).context(ctx)?;
    let _ = m.f_mul_scalar_out(b.tmp, s.neg_step_size).context(ctx)?;
    let _ = p.f_addcdiv_(b.tmp, &d).context(ctx)?;
    Ok(())
}

/// The fused pass over host memory: one read of p, g, m, v and one write of p, m, v per
/// element, split over the libtorch intra-op thread count.
mod host {
    use super::{StepScalars, UpdateBuffers};

    /// Elements per extra thread: below this, starting a thread (tens of microseconds) costs
    /// more than it saves, and one thread does the whole buffer.
    const PER_THREAD: usize = 1 << 18;

    /// f32 scalars, rounded from f64 as ATen rounds a Python float for an f32 tensor.
    #[derive(Clone, Copy)]
    struct Scalars {
        decay: f32,
        /// lerp as ATen's vectorised `lerp_vec`: `fma(coeff, end - start, base)` with
        /// `coeff = w, base = start` when `|w| < 0.5`, else `coeff = w - 1, base = end`.
        lerp_coeff: f32,
        lerp_small: bool,
        beta2: f32,
        one_minus_beta2: f32,
        bc2_sqrt: f32,
        eps: f32,
        neg_step: f32,
    }

    pub(super) fn update(b: &UpdateBuffers<'_>, s: &StepScalars) {
        update_with(b, s, tch::get_num_threads().max(1) as usize, PER_THREAD)
    }

    /// [`update`] on at most `threads` threads, each given at least `per_thread` elements.
    pub(super) fn update_with(
        b: &UpdateBuffers<'_>,
        s: &StepScalars,
        threads: usize,
        per_thread: usize,
    ) {
        let n = b.params.numel();
        let w = s.one_minus_beta1 as f32;
        let lerp_small = w.abs() < 0.5;
        let sc = Scalars {
            decay: s.decay.unwrap_or(1.0) as f32,
            lerp_coeff: if lerp_small { w } else { w - 1.0 },
            lerp_small,
            beta2: s.beta2 as f32,
            one_minus_beta2: s.one_minus_beta2 as f32,
            bc2_sqrt: s.bias_correction2_sqrt as f32,
            eps: s.eps as f32,
            neg_step: s.neg_step_size as f32,
        };
        // SAFETY: the caller checked (`host_pass_applies`) that every buffer is a contiguous
        // f32 CPU tensor; all have `n` elements (the optimizer allocates them so); they are
        // distinct allocations (params/grads live in the arenas, moments in their own
        // tensors), so the mutable slices do not alias. libtorch does not touch them while
        // this runs: CPU ops are synchronous and the optimizer holds `&mut self`.
        unsafe {
            let p = std::slice::from_raw_parts_mut(b.params.data_ptr() as *mut f32, n);
            let g = std::slice::from_raw_parts(b.grads.data_ptr() as *const f32, n);
            let m = std::slice::from_raw_parts_mut(b.exp_avg.data_ptr() as *mut f32, n);
            let v = std::slice::from_raw_parts_mut(b.exp_avg_sq.data_ptr() as *mut f32, n);
            let vmax = b
                .max_exp_avg_sq
                .map(|t| std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, n));
            run_parallel(threads, per_thread, p, g, m, v, vmax, sc, s.decay.is_some());
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn run_parallel(
        threads: usize,
        per_thread: usize,
        p: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        vmax: Option<&mut [f32]>,
        sc: Scalars,
        decay: bool,
    ) {
        let n = p.len();
        let threads = threads.min(n / per_thread.max(1)).max(1);
        if threads == 1 {
            return dispatch(p, g, m, v, vmax, sc, decay);
        }
        // Chunks are a multiple of 64 elements so every thread runs full vectors.
        let chunk = n.div_ceil(threads).div_ceil(64) * 64;
        let mut vmax_chunks: Vec<Option<&mut [f32]>> = match vmax {
            Some(x) => x.chunks_mut(chunk).map(Some).collect(),
            None => (0..n.div_ceil(chunk)).map(|_| None).collect(),
        };
        std::thread::scope(|scope| {
            let mut parts = p
                .chunks_mut(chunk)
                .zip(g.chunks(chunk))
                .zip(m.chunks_mut(chunk))
                .zip(v.chunks_mut(chunk))
                .zip(vmax_chunks.drain(..));
            let first = parts.next();
            for ((((p, g), m), v), vm) in parts {
                scope.spawn(move || dispatch(p, g, m, v, vm, sc, decay));
            }
            if let Some(((((p, g), m), v), vm)) = first {
                dispatch(p, g, m, v, vm, sc, decay);
            }
        });
    }

    /// Pick the widest instruction set the CPU has. Every variant computes the same IEEE
    /// operations (fma, sqrt and div are correctly rounded), so the results are bitwise equal
    /// whichever runs.
    fn dispatch(
        p: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        vmax: Option<&mut [f32]>,
        sc: Scalars,
        decay: bool,
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the features were detected at run time.
                return unsafe { run_avx512(p, g, m, v, vmax, sc, decay) };
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the features were detected at run time.
                return unsafe { run_avx2(p, g, m, v, vmax, sc, decay) };
            }
        }
        run(p, g, m, v, vmax, sc, decay)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn run_avx512(
        p: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        vmax: Option<&mut [f32]>,
        sc: Scalars,
        decay: bool,
    ) {
        run(p, g, m, v, vmax, sc, decay)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(
        p: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        vmax: Option<&mut [f32]>,
        sc: Scalars,
        decay: bool,
    ) {
        run(p, g, m, v, vmax, sc, decay)
    }

    #[inline(always)]
    fn run(
        p: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        vmax: Option<&mut [f32]>,
        sc: Scalars,
        decay: bool,
    ) {
        match (vmax, decay, sc.lerp_small) {
            (None, true, true) => kernel::<true, true>(p, g, m, v, sc),
            (None, false, true) => kernel::<false, true>(p, g, m, v, sc),
            (None, true, false) => kernel::<true, false>(p, g, m, v, sc),
            (None, false, false) => kernel::<false, false>(p, g, m, v, sc),
            (Some(vm), decay, small) => kernel_amsgrad(p, g, m, v, vm, sc, decay, small),
        }
    }

    #[inline(always)]
    fn kernel<const DECAY: bool, const SMALL: bool>(
        p: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        sc: Scalars,
    ) {
        let n = p.len();
        let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
        for i in 0..n {
            let gi = g[i];
            let mut pi = p[i];
            if DECAY {
                pi *= sc.decay;
            }
            let mi = m[i];
            let mi = if SMALL {
                sc.lerp_coeff.mul_add(gi - mi, mi)
            } else {
                sc.lerp_coeff.mul_add(gi - mi, gi)
            };
            let vi = (sc.one_minus_beta2 * gi).mul_add(gi, v[i] * sc.beta2);
            m[i] = mi;
            v[i] = vi;
            let denom = vi.sqrt() / sc.bc2_sqrt + sc.eps;
            p[i] = pi + (sc.neg_step * mi) / denom;
        }
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn kernel_amsgrad(
        p: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        vmax: &mut [f32],
        sc: Scalars,
        decay: bool,
        small: bool,
    ) {
        let n = p.len();
        let (g, m, v, vmax) = (&g[..n], &mut m[..n], &mut v[..n], &mut vmax[..n]);
        for i in 0..n {
            let gi = g[i];
            let mut pi = p[i];
            if decay {
                pi *= sc.decay;
            }
            let mi = m[i];
            let mi = sc.lerp_coeff.mul_add(gi - mi, if small { mi } else { gi });
            let vi = (sc.one_minus_beta2 * gi).mul_add(gi, v[i] * sc.beta2);
            m[i] = mi;
            v[i] = vi;
            // torch.maximum propagates NaN.
            let old = vmax[i];
            let vm = if vi.is_nan() || old.is_nan() {
                f32::NAN
            } else if vi > old {
                vi
            } else {
                old
            };
            vmax[i] = vm;
            let denom = vm.sqrt() / sc.bc2_sqrt + sc.eps;
            p[i] = pi + (sc.neg_step * mi) / denom;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffers(n: i64, seed: i64, amsgrad: bool) -> Vec<Tensor> {
        tch::manual_seed(seed);
        let mut v = vec![
            Tensor::randn([n], (Kind::Float, Device::Cpu)),
            Tensor::randn([n], (Kind::Float, Device::Cpu)),
            Tensor::randn([n], (Kind::Float, Device::Cpu)) * 0.1,
            Tensor::rand([n], (Kind::Float, Device::Cpu)) * 0.01,
            Tensor::zeros([n], (Kind::Float, Device::Cpu)),
            Tensor::zeros([n], (Kind::Float, Device::Cpu)),
        ];
        if amsgrad {
            v.push(Tensor::rand([n], (Kind::Float, Device::Cpu)) * 0.01);
        }
        v
    }

    fn run(kernel: UpdateKernel, t: &[Tensor], s: &StepScalars) {
        let b = UpdateBuffers {
            params: &t[0],
            grads: &t[1],
            exp_avg: &t[2],
            exp_avg_sq: &t[3],
            max_exp_avg_sq: t.get(6),
            tmp: &t[4],
            denom: &t[5],
        };
        match kernel {
            // Three threads with small chunks, whatever the machine, so the split is tested.
            UpdateKernel::Auto => host::update_with(&b, s, 3, 1000),
            UpdateKernel::TensorOps => update(kernel, &b, s).unwrap(),
        }
    }

    /// The host pass and the tensor ops agree to rounding (ATen's vectorised sqrt is not
    /// correctly rounded, so not bitwise), for every branch of the host kernel, on a length
    /// that is no multiple of the vector width, split over three threads.
    #[test]
    fn host_pass_matches_tensor_ops() {
        let n = 20_003;
        for (amsgrad, beta1, wd) in [
            (false, 0.9, 0.01),
            (false, 0.9, 0.0),
            (true, 0.9, 0.1),
            (false, 0.3, 0.01),
        ] {
            for t in [1u64, 7] {
                let s = StepScalars::new(1e-2, wd, (beta1, 0.999), 1e-8, amsgrad, t);
                let a = buffers(n, 3, amsgrad);
                let b = buffers(n, 3, amsgrad);
                run(UpdateKernel::Auto, &a, &s);
                run(UpdateKernel::TensorOps, &b, &s);
                for (i, name) in [
                    (0, "param"),
                    (2, "exp_avg"),
                    (3, "exp_avg_sq"),
                    (6, "max_exp_avg_sq"),
                ] {
                    if i >= a.len() {
                        continue;
                    }
                    let diff = (&a[i] - &b[i]).abs().max().double_value(&[]);
                    let scale = b[i].abs().max().double_value(&[]);
                    assert!(
                        diff <= 4.0 * f32::EPSILON as f64 * scale,
                        "{name}: host pass and tensor ops differ by {diff} (amsgrad {amsgrad}, beta1 {beta1}, wd {wd}, t {t})"
                    );
                }
            }
        }
    }

    #[test]
    fn scalars_follow_pytorch() {
        let s = StepScalars::new(1e-3, 0.01, (0.9, 0.999), 1e-8, false, 1);
        assert_eq!(s.decay, Some(1.0 - 1e-3 * 0.01));
        assert_eq!(s.neg_step_size, -(1e-3 / (1.0 - 0.9f64)));
        assert_eq!(s.bias_correction2_sqrt, (1.0 - 0.999f64).powf(0.5));
        assert_eq!(
            StepScalars::new(1e-3, 0.0, (0.9, 0.999), 1e-8, false, 1).decay,
            None
        );
    }
}
