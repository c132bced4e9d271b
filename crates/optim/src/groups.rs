//! LoRA+ parameter groups: which group a trainable tensor joins (from its role and its number
//! of dimensions, never its name), and the per-group summary.

use std::fmt;

use loraplus_core::ParamRole;
use serde::{Deserialize, Serialize};

use crate::config::LoraPlusConfig;

/// A LoRA+ parameter group. The first four are PEFT's `create_loraplus_optimizer` groups
/// (`peft/optimizers/loraplus.py`), in its order; the two head groups exist only when
/// [`LoraPlusConfig::head_lr`] is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ParamGroup {
    /// LoRA A matrices and any other trainable matrix: `lr`, with weight decay.
    A,
    /// LoRA embedding A and B: `lr_embedding`, with weight decay.
    Embedding,
    /// LoRA B matrices (and other trainable vectors): `lr * ratio`, with weight decay.
    B,
    /// Biases and norm weights: `lr * ratio`, no weight decay.
    BNoDecay,
    /// `modules_to_save` matrices when `head_lr` is set: `head_lr`, with weight decay.
    Head,
    /// `modules_to_save` vectors when `head_lr` is set: `head_lr`, no weight decay.
    HeadNoDecay,
}

impl ParamGroup {
    /// Every group, in the order the optimizer updates them.
    pub const ALL: [ParamGroup; 6] = [
        ParamGroup::A,
        ParamGroup::Embedding,
        ParamGroup::B,
        ParamGroup::BNoDecay,
        ParamGroup::Head,
        ParamGroup::HeadNoDecay,
    ];

    /// The group's name: PEFT's key for the first four.
    pub fn name(self) -> &'static str {
        match self {
            ParamGroup::A => "groupA",
            ParamGroup::Embedding => "embedding",
            ParamGroup::B => "groupB",
            ParamGroup::BNoDecay => "groupB_no_decay",
            ParamGroup::Head => "head",
            ParamGroup::HeadNoDecay => "head_no_decay",
        }
    }

    /// The group named `name` (as [`Self::name`] writes it).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.name() == name)
    }

    /// The group a trainable tensor of role `role` and `ndim` dimensions joins.
    ///
    /// As the reference: LoRA embedding adapters form their own group; `lora_B` and every
    /// vector go to B, with decay unless they are a bias or a norm weight; everything else goes
    /// to A. So a head's matrix trains with A and its bias with B without decay. With
    /// `separate_head`, `modules_to_save` tensors form the two head groups instead.
    ///
    /// One difference, forced by roles carrying no module type: a `modules_to_save` vector is
    /// always taken as a bias or norm weight (no decay), whereas PEFT decays a vector of a
    /// module that is not a `LayerNorm` (e.g. an RMSNorm weight listed in `modules_to_save`).
    pub fn of(role: ParamRole, ndim: usize, separate_head: bool) -> ParamGroup {
        let vector = ndim <= 1;
        match role {
            ParamRole::EmbeddingA | ParamRole::EmbeddingB => ParamGroup::Embedding,
            ParamRole::LoraB => ParamGroup::B,
            ParamRole::LoraA => ParamGroup::A,
            ParamRole::Bias | ParamRole::Norm => ParamGroup::BNoDecay,
            ParamRole::Head if separate_head => {
                if vector {
                    ParamGroup::HeadNoDecay
                } else {
                    ParamGroup::Head
                }
            }
            ParamRole::Head if vector => ParamGroup::BNoDecay,
            ParamRole::Head => ParamGroup::A,
            ParamRole::Other if vector => ParamGroup::B,
            ParamRole::Other => ParamGroup::A,
        }
    }

    /// The group's initial learning rate (before any schedule) and weight decay.
    pub fn hyper_params(self, cfg: &LoraPlusConfig) -> (f64, f64) {
        let wd = cfg.weight_decay;
        let head = cfg.head_lr.unwrap_or(cfg.lr);
        match self {
            ParamGroup::A => (cfg.lr, wd),
            ParamGroup::Embedding => (cfg.lr_embedding, wd),
            ParamGroup::B => (cfg.lr * cfg.ratio, wd),
            ParamGroup::BNoDecay => (cfg.lr * cfg.ratio, 0.0),
            ParamGroup::Head => (head, wd),
            ParamGroup::HeadNoDecay => (head, 0.0),
        }
    }
}

impl fmt::Display for ParamGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One tensor of a group, as the summary lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSummary {
    /// The parameter's name (as `TrainableParam::name`).
    pub name: String,
    /// Its role, which chose the group.
    pub role: ParamRole,
    /// Its shape.
    pub shape: Vec<i64>,
}

/// One group: its tensors, element count, learning rates and weight decay.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSummary {
    /// The group.
    pub group: ParamGroup,
    /// Its tensors, in update order.
    pub tensors: Vec<TensorSummary>,
    /// Elements over all its tensors.
    pub numel: i64,
    /// The learning rate before the schedule.
    pub base_lr: f64,
    /// The learning rate the next step uses (schedule applied).
    pub lr: f64,
    /// Its decoupled weight decay.
    pub weight_decay: f64,
}

/// Every non-empty group of an optimizer, in update order.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerSummary {
    /// The groups.
    pub groups: Vec<GroupSummary>,
    /// Completed optimizer steps.
    pub step: u64,
}

impl OptimizerSummary {
    /// The summary of group `g`, if it has tensors.
    pub fn group(&self, g: ParamGroup) -> Option<&GroupSummary> {
        self.groups.iter().find(|s| s.group == g)
    }

    /// Total number of trained elements.
    pub fn numel(&self) -> i64 {
        self.groups.iter().map(|g| g.numel).sum()
    }
}

impl fmt::Display for OptimizerSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "LoRA+ AdamW, step {}, {} trained elements",
            self.step,
            self.numel()
        )?;
        for g in &self.groups {
            writeln!(
                f,
                "  {:<16} {:>3} tensors {:>12} elements  lr {:.3e} (base {:.3e})  weight_decay {}",
                g.group.name(),
                g.tensors.len(),
                g.numel,
                g.lr,
                g.base_lr,
                g.weight_decay
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_map_as_the_reference() {
        use ParamGroup as G;
        use ParamRole as R;
        assert_eq!(G::of(R::LoraA, 2, false), G::A);
        assert_eq!(G::of(R::LoraB, 2, false), G::B);
        assert_eq!(G::of(R::EmbeddingA, 2, false), G::Embedding);
        assert_eq!(G::of(R::EmbeddingB, 2, false), G::Embedding);
        assert_eq!(G::of(R::Bias, 1, false), G::BNoDecay);
        assert_eq!(G::of(R::Norm, 1, false), G::BNoDecay);
        assert_eq!(G::of(R::Head, 2, false), G::A);
        assert_eq!(G::of(R::Head, 1, false), G::BNoDecay);
        assert_eq!(G::of(R::Head, 2, true), G::Head);
        assert_eq!(G::of(R::Head, 1, true), G::HeadNoDecay);
        assert_eq!(G::of(R::Other, 2, false), G::A);
        assert_eq!(G::of(R::Other, 1, false), G::B);
        // Embedding adapters stay in their group even with a separate head.
        assert_eq!(G::of(R::EmbeddingB, 2, true), G::Embedding);
    }

    #[test]
    fn learning_rates_follow_the_ratio() {
        let cfg = LoraPlusConfig {
            lr: 2e-4,
            ratio: 16.0,
            lr_embedding: 1e-6,
            weight_decay: 0.01,
            ..Default::default()
        };
        assert_eq!(ParamGroup::A.hyper_params(&cfg), (2e-4, 0.01));
        assert_eq!(ParamGroup::B.hyper_params(&cfg), (2e-4 * 16.0, 0.01));
        assert_eq!(ParamGroup::BNoDecay.hyper_params(&cfg), (2e-4 * 16.0, 0.0));
        assert_eq!(ParamGroup::Embedding.hyper_params(&cfg), (1e-6, 0.01));
        assert_eq!(ParamGroup::Head.hyper_params(&cfg), (2e-4, 0.01));
        let cfg = LoraPlusConfig {
            head_lr: Some(5e-5),
            ..cfg
        };
        assert_eq!(ParamGroup::Head.hyper_params(&cfg), (5e-5, 0.01));
        assert_eq!(ParamGroup::HeadNoDecay.hyper_params(&cfg), (5e-5, 0.0));
        for g in ParamGroup::ALL {
            assert_eq!(ParamGroup::from_name(g.name()), Some(g));
        }
    }
}
