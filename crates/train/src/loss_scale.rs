//! Dynamic loss scaling for f16 training, as `torch.amp.GradScaler`: the loss is multiplied by
//! `scale` before backward; before the optimizer step the gradients are unscaled and checked
//! for Inf/NaN (libtorch's `_amp_non_finite_check_and_unscale_`, one call per flat gradient
//! buffer); a step with non-finite gradients is skipped and the scale halved, and after
//! `growth_interval` good steps in a row the scale doubles.

use anyhow::Result;
use tch::{Device, Kind, Tensor};

// torch.amp.GradScaler defaults.
const INIT_SCALE: f64 = 65536.0;
const GROWTH_FACTOR: f64 = 2.0;
const BACKOFF_FACTOR: f64 = 0.5;
const GROWTH_INTERVAL: usize = 2000;

#[derive(Debug)]
pub struct LossScaler {
    scale: f64,
    good_steps: usize,
    growth_interval: usize,
    found_inf: Tensor,
    skipped: usize,
}

impl LossScaler {
    pub fn new(device: Device) -> LossScaler {
        LossScaler {
            scale: INIT_SCALE,
            good_steps: 0,
            growth_interval: GROWTH_INTERVAL,
            found_inf: Tensor::zeros([1], (Kind::Float, device)),
            skipped: 0,
        }
    }

    /// The factor to multiply the loss by.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Steps skipped so far because of non-finite gradients.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// Unscale the gradient buffers in place; true when every value is finite. This reads one
    /// value on the host (as GradScaler does before deciding to step).
    pub fn unscale_and_check(&mut self, grads: &[&Tensor]) -> Result<bool> {
        let _ = self.found_inf.zero_();
        let inv =
            Tensor::from_slice(&[(1.0 / self.scale) as f32]).to_device(self.found_inf.device());
        for g in grads {
            g.shallow_clone()
                .f_internal_amp_non_finite_check_and_unscale(&mut self.found_inf, &inv)?;
        }
        Ok(self.found_inf.double_value(&[0]) == 0.0)
    }

    /// Update the scale after a step (`finite`: the step was taken).
    pub fn update(&mut self, finite: bool) {
        if finite {
            self.good_steps += 1;
            if self.good_steps >= self.growth_interval {
                self.scale *= GROWTH_FACTOR;
                self.good_steps = 0;
            }
        } else {
            self.scale *= BACKOFF_FACTOR;
            self.good_steps = 0;
            self.skipped += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unscales_detects_non_finite_and_adapts() {
        let mut s = LossScaler::new(Device::Cpu);
        s.growth_interval = 2;
        let g = Tensor::from_slice(&[65536.0f32, -131072.0]);
        assert!(s.unscale_and_check(&[&g]).unwrap());
        assert_eq!(Vec::<f32>::try_from(&g).unwrap(), vec![1.0, -2.0]);
        s.update(true);
        s.update(true);
        assert_eq!(s.scale(), 131072.0);
        let bad = Tensor::from_slice(&[1.0f32, f32::INFINITY]);
        assert!(!s.unscale_and_check(&[&g, &bad]).unwrap());
        s.update(false);
        assert_eq!(s.scale(), 65536.0);
        assert_eq!(s.skipped(), 1);
    }
}
