//! Dropout whose mask is drawn by a fast generator on the CPU.
//!
//! libtorch's CPU dropout draws one Mersenne-Twister number per element in a serial loop; on a
//! small training step that loop is a few percent of the time, and the other intra-op threads
//! wait through it. Here the mask is drawn by xoshiro256++ (two elements per 64-bit draw), its
//! seed taken from torch's global generator, so `tch::manual_seed` still fixes every mask and
//! re-running a layer after reseeding (activation checkpointing) draws the same one. The kept
//! elements are scaled by `1 / (1 - p)`, as torch does; the result is `x * mask`, so autograd
//! sees an ordinary product. Off the CPU or for other dtypes, torch's own dropout runs.

use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use tch::{Device, Kind, Tensor};

/// `x` with each element zeroed with probability `p` and the rest scaled by `1 / (1 - p)` when
/// `train`; `x` itself otherwise or at `p = 0`.
pub fn dropout(x: &Tensor, p: f64, train: bool) -> Tensor {
    if !train || p <= 0.0 {
        return x.shallow_clone();
    }
    if p >= 1.0 {
        return x * 0.0;
    }
    if x.device() != Device::Cpu || x.kind() != Kind::Float || x.numel() == 0 {
        return x.dropout(p, true);
    }
    x * dropout_mask(&x.size(), p)
}

/// A float mask of `shape`: 0 with probability `p`, `1 / (1 - p)` otherwise.
pub fn dropout_mask(shape: &[i64], p: f64) -> Tensor {
    let seed = Tensor::randint(i64::MAX, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0]);
    let mask = Tensor::empty(shape, (Kind::Float, Device::Cpu));
    let n = mask.numel();
    // Keep when a uniform 32-bit draw is >= p * 2^32.
    let threshold = (p * 4_294_967_296.0).round().min(u32::MAX as f64) as u32;
    let keep = (1.0 / (1.0 - p)) as f32;
    // SAFETY: `mask` was just allocated: a contiguous f32 CPU tensor of `n` elements that
    // nothing else references.
    let out = unsafe { std::slice::from_raw_parts_mut(mask.data_ptr() as *mut f32, n) };
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed as u64);
    let mut pairs = out.chunks_exact_mut(2);
    for pair in &mut pairs {
        let r = rng.next_u64();
        pair[0] = if (r as u32) >= threshold { keep } else { 0.0 };
        pair[1] = if ((r >> 32) as u32) >= threshold {
            keep
        } else {
            0.0
        };
    }
    if let [last] = pairs.into_remainder() {
        *last = if rng.next_u32() >= threshold {
            keep
        } else {
            0.0
        };
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_right_fraction_scaled() {
        tch::manual_seed(5);
        let x = Tensor::ones([1000, 257], (Kind::Float, Device::Cpu));
        for p in [0.1, 0.5, 0.9] {
            let y = dropout(&x, p, true);
            let kept = y
                .ne(0.0)
                .to_kind(Kind::Float)
                .mean(Kind::Float)
                .double_value(&[]);
            assert!((kept - (1.0 - p)).abs() < 0.005, "p {p}: kept {kept}");
            let values = y.masked_select(&y.ne(0.0));
            let want = 1.0 / (1.0 - p);
            let err = (values - want).abs().max().double_value(&[]);
            assert!(err < 1e-6, "p {p}: kept values off by {err}");
            // The mean is preserved in expectation.
            let mean = y.mean(Kind::Float).double_value(&[]);
            assert!((mean - 1.0).abs() < 0.05 * want, "p {p}: mean {mean}");
        }
    }

    #[test]
    fn seeded_by_torch_and_independent_between_calls() {
        let x = Tensor::ones([333], (Kind::Float, Device::Cpu));
        tch::manual_seed(9);
        let a = dropout(&x, 0.3, true);
        let b = dropout(&x, 0.3, true);
        tch::manual_seed(9);
        let a2 = dropout(&x, 0.3, true);
        assert!(a.equal(&a2), "the same seed gives another mask");
        assert!(!a.equal(&b), "two calls gave the same mask");
    }

    #[test]
    fn identity_outside_training_and_gradient_is_the_mask() {
        let x = Tensor::randn([4, 5], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        assert!(dropout(&x, 0.5, false).equal(&x));
        assert!(dropout(&x, 0.0, true).equal(&x));
        assert_eq!(
            dropout(&x, 1.0, true)
                .abs()
                .sum(Kind::Float)
                .double_value(&[]),
            0.0
        );
        let y = dropout(&x, 0.5, true);
        y.sum(Kind::Float).backward();
        let mask = &y / &x;
        let d = (x.grad() - mask).abs().max().double_value(&[]);
        assert!(d < 1e-5, "gradient is not the mask: {d}");
    }
}
