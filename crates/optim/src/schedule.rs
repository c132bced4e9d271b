//! Learning-rate schedules: the multiplier of every group's initial learning rate, as
//! `transformers.optimization` computes it (through `torch.optim.lr_scheduler.LambdaLR`).
//!
//! The same factor multiplies every group, so the LoRA+ ratio between groups holds at every
//! step. The `n`-th optimizer step (1-based) uses `factor(n - 1)`, as `LambdaLR` does when the
//! scheduler steps after the optimizer.

use crate::error::Error;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Warmup length: a number of steps, or a fraction of the training steps, rounded up as
/// `TrainingArguments.get_warmup_steps` does (`ceil(total * ratio)`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Warmup {
    /// This many steps.
    Steps(u64),
    /// This fraction of the training steps (rounded up).
    Ratio(f64),
}

impl Warmup {
    /// The number of warmup steps for `total` training steps.
    pub fn steps(self, total: u64) -> u64 {
        match self {
            Warmup::Steps(n) => n,
            Warmup::Ratio(r) => (total as f64 * r).ceil() as u64,
        }
    }
}

/// The schedule shape (HF's `lr_scheduler_type`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    /// `get_constant_schedule`: factor 1.
    Constant,
    /// `get_constant_schedule_with_warmup`.
    ConstantWithWarmup {
        /// Steps from 0 to 1.
        warmup: Warmup,
        /// Training steps (for a ratio warmup).
        total_steps: u64,
    },
    /// `get_linear_schedule_with_warmup`: 0 to 1 over the warmup, then down to 0 at
    /// `total_steps`.
    Linear {
        /// Steps from 0 to 1.
        warmup: Warmup,
        /// Training steps: the factor reaches 0 here.
        total_steps: u64,
    },
    /// `get_cosine_schedule_with_warmup` (`num_cycles` 0.5 is a half cosine down to 0).
    Cosine {
        /// Steps from 0 to 1.
        warmup: Warmup,
        /// Training steps after which the cosine has run `num_cycles` cycles.
        total_steps: u64,
        /// Cosine cycles over the steps after warmup.
        num_cycles: f64,
    },
}

/// HF's default `num_cycles` for the cosine schedule.
pub const DEFAULT_NUM_CYCLES: f64 = 0.5;

impl Schedule {
    /// [`Schedule::Linear`].
    pub fn linear(warmup: Warmup, total_steps: u64) -> Self {
        Schedule::Linear {
            warmup,
            total_steps,
        }
    }

    /// [`Schedule::Cosine`] with HF's [`DEFAULT_NUM_CYCLES`].
    pub fn cosine(warmup: Warmup, total_steps: u64) -> Self {
        Schedule::Cosine {
            warmup,
            total_steps,
            num_cycles: DEFAULT_NUM_CYCLES,
        }
    }

    /// Reject schedules that cannot be computed, naming the value.
    pub fn validate(&self) -> Result<()> {
        let (warmup, total) = match *self {
            Schedule::Constant => return Ok(()),
            Schedule::ConstantWithWarmup {
                warmup,
                total_steps,
            }
            | Schedule::Linear {
                warmup,
                total_steps,
            } => (warmup, total_steps),
            Schedule::Cosine {
                warmup,
                total_steps,
                num_cycles,
            } => {
                if !num_cycles.is_finite() {
                    bail!(Error::BadConfig(format!(
                        "cosine schedule: num_cycles = {num_cycles} must be finite"
                    )));
                }
                (warmup, total_steps)
            }
        };
        if total == 0 && !matches!(self, Schedule::ConstantWithWarmup { .. }) {
            bail!(Error::BadConfig(format!(
                "{self:?}: total_steps must be at least 1"
            )));
        }
        if let Warmup::Ratio(r) = warmup {
            if !(0.0..=1.0).contains(&r) {
                bail!(Error::BadConfig(format!(
                    "warmup ratio {r} must be in [0, 1]"
                )));
            }
        }
        Ok(())
    }

    /// The multiplier of the initial learning rates after `step` optimizer steps (the value
    /// HF's lambda returns for `current_step = step`).
    pub fn factor(&self, step: u64) -> f64 {
        // Each branch is transcribed from transformers/optimization.py, in f64 as Python does.
        match *self {
            Schedule::Constant => 1.0,
            Schedule::ConstantWithWarmup {
                warmup,
                total_steps,
            } => {
                let w = warmup.steps(total_steps);
                if step < w {
                    step as f64 / (w as f64).max(1.0)
                } else {
                    1.0
                }
            }
            Schedule::Linear {
                warmup,
                total_steps,
            } => {
                let w = warmup.steps(total_steps);
                if step < w {
                    return step as f64 / w.max(1) as f64;
                }
                let left = total_steps as f64 - step as f64;
                let span = (total_steps as i128 - w as i128).max(1) as f64;
                (left / span).max(0.0)
            }
            Schedule::Cosine {
                warmup,
                total_steps,
                num_cycles,
            } => {
                let w = warmup.steps(total_steps);
                if step < w {
                    return step as f64 / w.max(1) as f64;
                }
                let span = (total_steps as i128 - w as i128).max(1) as f64;
                let progress = (step - w) as f64 / span;
                let f = 0.5 * (1.0 + (std::f64::consts::PI * num_cycles * 2.0 * progress).cos());
                f.max(0.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_ramps_and_decays() {
        let s = Schedule::linear(Warmup::Steps(10), 110);
        assert_eq!(s.factor(0), 0.0);
        assert_eq!(s.factor(5), 0.5);
        assert_eq!(s.factor(10), 1.0);
        assert_eq!(s.factor(60), 0.5);
        assert_eq!(s.factor(110), 0.0);
        assert_eq!(s.factor(500), 0.0);
    }

    #[test]
    fn cosine_ends_at_zero() {
        let s = Schedule::cosine(Warmup::Ratio(0.1), 100);
        assert_eq!(Warmup::Ratio(0.1).steps(100), 10);
        assert_eq!(s.factor(10), 1.0);
        assert!((s.factor(55) - 0.5).abs() < 1e-12);
        assert!(s.factor(100) < 1e-15);
    }

    #[test]
    fn warmup_ratio_rounds_up() {
        assert_eq!(Warmup::Ratio(0.03).steps(1000), 30);
        assert_eq!(Warmup::Ratio(0.03).steps(10), 1);
        assert_eq!(Warmup::Ratio(0.0).steps(10), 0);
    }

    #[test]
    fn bad_schedules_are_named() {
        let e = Schedule::linear(Warmup::Steps(1), 0)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("total_steps"), "{e}");
        let e = Schedule::cosine(Warmup::Ratio(1.5), 10)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("1.5"), "{e}");
        Schedule::Constant.validate().unwrap();
    }
}
