//! `LoraPlusConfig`: the optimizer's hyper-parameters, with their defaults and their checks.

use crate::error::Error;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

// Defaults: `torch.optim.AdamW` for lr, betas, eps and amsgrad; PEFT's
// `create_loraplus_optimizer` for `loraplus_weight_decay` (0.0) and `loraplus_lr_embedding`
// (1e-6); the LoRA+ paper (Hayou et al. 2024, arXiv:2402.12354, section 4) for the ratio 2^4.
const DEFAULT_LR: f64 = 1e-3;
const DEFAULT_RATIO: f64 = 16.0;
const DEFAULT_LR_EMBEDDING: f64 = 1e-6;
const DEFAULT_WEIGHT_DECAY: f64 = 0.0;
const DEFAULT_BETAS: (f64, f64) = (0.9, 0.999);
const DEFAULT_EPS: f64 = 1e-8;

/// Hyper-parameters of [`crate::LoraPlusAdamW`]. The group learning rates follow from them:
/// `lr` for group A, `lr * ratio` for group B, `lr_embedding` for LoRA embeddings and
/// `head_lr.unwrap_or(lr)` for `modules_to_save` (see [`crate::ParamGroup`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoraPlusConfig {
    /// Learning rate of group A (LoRA A matrices), the paper's eta_A.
    pub lr: f64,
    /// eta_B / eta_A, PEFT's `loraplus_lr_ratio`. `1.0` is plain LoRA.
    pub ratio: f64,
    /// Learning rate of LoRA embedding adapters, PEFT's `loraplus_lr_embedding`.
    pub lr_embedding: f64,
    /// Decoupled weight decay of every group except biases and norm weights (PEFT's
    /// `loraplus_weight_decay`).
    pub weight_decay: f64,
    /// AdamW's (beta1, beta2), each in [0, 1).
    pub betas: (f64, f64),
    /// Added to the denominator.
    pub eps: f64,
    /// Normalise by the running maximum of the second moment (Reddi et al. 2018).
    pub amsgrad: bool,
    /// Learning rate of the `modules_to_save` parameters. `None` is the reference's choice:
    /// their matrices train with group A, their vectors with group B without decay.
    pub head_lr: Option<f64>,
}

impl Default for LoraPlusConfig {
    fn default() -> Self {
        LoraPlusConfig {
            lr: DEFAULT_LR,
            ratio: DEFAULT_RATIO,
            lr_embedding: DEFAULT_LR_EMBEDDING,
            weight_decay: DEFAULT_WEIGHT_DECAY,
            betas: DEFAULT_BETAS,
            eps: DEFAULT_EPS,
            amsgrad: false,
            head_lr: None,
        }
    }
}

fn check_lr(name: &str, v: f64) -> Result<()> {
    if !v.is_finite() || v < 0.0 {
        bail!(Error::BadConfig(format!(
            "{name} = {v}: a learning rate must be a finite number >= 0"
        )));
    }
    Ok(())
}

impl LoraPlusConfig {
    /// Plain LoRA: the same config with `ratio = 1`.
    pub fn plain_lora(self) -> Self {
        LoraPlusConfig { ratio: 1.0, ..self }
    }

    /// Reject values no optimizer step can use, naming the value.
    pub fn validate(&self) -> Result<()> {
        check_lr("lr", self.lr)?;
        check_lr("lr_embedding", self.lr_embedding)?;
        if let Some(h) = self.head_lr {
            check_lr("head_lr", h)?;
        }
        if !(self.ratio.is_finite() && self.ratio > 0.0) {
            bail!(Error::BadConfig(format!(
                "ratio = {}: the LoRA+ ratio lr_B / lr_A must be a finite number > 0 (1 is plain LoRA, the paper uses 16)",
                self.ratio
            )));
        }
        check_lr("lr * ratio", self.lr * self.ratio)?;
        let (b1, b2) = self.betas;
        for (name, b) in [("betas.0 (beta1)", b1), ("betas.1 (beta2)", b2)] {
            if !(0.0..1.0).contains(&b) {
                bail!(Error::BadConfig(format!("{name} = {b}: must be in [0, 1)")));
            }
        }
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            bail!(Error::BadConfig(format!(
                "eps = {}: must be a finite number >= 0",
                self.eps
            )));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            bail!(Error::BadConfig(format!(
                "weight_decay = {}: must be a finite number >= 0",
                self.weight_decay
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(cfg: LoraPlusConfig) -> String {
        format!("{:#}", cfg.validate().unwrap_err())
    }

    #[test]
    fn default_is_valid() {
        LoraPlusConfig::default().validate().unwrap();
        LoraPlusConfig::default().plain_lora().validate().unwrap();
    }

    #[test]
    fn bad_values_are_named() {
        let d = LoraPlusConfig::default();
        assert!(err(LoraPlusConfig { lr: -0.1, ..d }).contains("lr = -0.1"));
        assert!(err(LoraPlusConfig { lr: f64::NAN, ..d }).contains("lr = NaN"));
        assert!(err(LoraPlusConfig {
            lr_embedding: f64::INFINITY,
            ..d
        })
        .contains("lr_embedding = inf"));
        assert!(err(LoraPlusConfig {
            head_lr: Some(-1.0),
            ..d
        })
        .contains("head_lr = -1"));
        assert!(err(LoraPlusConfig { ratio: 0.0, ..d }).contains("ratio = 0"));
        assert!(err(LoraPlusConfig { ratio: -16.0, ..d }).contains("ratio = -16"));
        assert!(err(LoraPlusConfig {
            ratio: f64::NAN,
            ..d
        })
        .contains("ratio = NaN"));
        assert!(err(LoraPlusConfig {
            betas: (1.0, 0.999),
            ..d
        })
        .contains("beta1) = 1"));
        assert!(err(LoraPlusConfig {
            betas: (0.9, -0.1),
            ..d
        })
        .contains("beta2) = -0.1"));
        assert!(err(LoraPlusConfig {
            betas: (f64::NAN, 0.9),
            ..d
        })
        .contains("beta1) = NaN"));
        assert!(err(LoraPlusConfig { eps: -1e-8, ..d }).contains("eps = -0.00000001"));
        assert!(err(LoraPlusConfig {
            weight_decay: -0.01,
            ..d
        })
        .contains("weight_decay = -0.01"));
        assert!(err(LoraPlusConfig {
            lr: 1e300,
            ratio: 1e300,
            ..d
        })
        .contains("lr * ratio = inf"));
    }
}
