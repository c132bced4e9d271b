//! The toy setting of the LoRA+ paper's analysis (Hayou, Ghosh, Yu 2024, section 3): a linear
//! model `f(x) = (W* + B A) x` of width n whose LoRA (A, B) is trained with the LoRA+ AdamW on a
//! fixed training set, full batch, constant learning rate. Used by the `toy_lora_plus` example
//! (the paper's heatmaps) and by the tests of the (lr, ratio) finder: a problem where the
//! learning rates matter and a trial takes milliseconds.
//!
//! Setting: inputs with Θ(1) coordinates (ReLU random features of a low-dimensional Gaussian, or
//! Gaussian), a frozen `W*` (d_out x n, N(0, 1/n)), a teacher `y = (W* + B* A*) x` with a random
//! rank-`rank` update that moves y by Θ(1); the student's A is PEFT's kaiming-uniform init
//! (U(-1/sqrt(n), 1/sqrt(n))), B = 0, scale 1. Loss: mean over samples of |f(x) - y|^2 / 2.

use anyhow::Result;
use tch::{Device, Kind, Tensor};

use loraplus_core::ParamRole;
use loraplus_optim::{LoraPlusAdamW, LoraPlusConfig, Schedule};

/// The shape of a toy problem.
#[derive(Debug, Clone, PartialEq)]
pub struct ToyConfig {
    /// Training points (full batch).
    pub samples: i64,
    /// Rank of the teacher's update and of the student's LoRA.
    pub rank: i64,
    /// Output width.
    pub d_out: i64,
    /// `true`: x = ReLU(W_in z) for z ~ N(0, I_input_dim); `false`: x ~ N(0, I_n).
    pub relu_features: bool,
    pub input_dim: i64,
}

impl Default for ToyConfig {
    fn default() -> Self {
        // The example's defaults: 128 points, rank 1, one output, ReLU features of a 5-d input.
        ToyConfig {
            samples: 128,
            rank: 1,
            d_out: 1,
            relu_features: true,
            input_dim: 5,
        }
    }
}

/// One width's problem: the training set and the targets (the teacher's part beyond `W* x`).
pub struct ToyProblem {
    x: Tensor,
    y: Tensor,
    n: i64,
    cfg: ToyConfig,
}

impl ToyProblem {
    /// The problem of width `n`, drawn from `seed`.
    pub fn new(n: i64, cfg: &ToyConfig, seed: u64) -> ToyProblem {
        tch::manual_seed(seed as i64 * 1_000_003 + n);
        let o = (Kind::Float, Device::Cpu);
        let inv_sqrt_n = 1.0 / (n as f64).sqrt();
        let x = if cfg.relu_features {
            let z = Tensor::randn([cfg.samples, cfg.input_dim], o);
            let w_in = Tensor::randn([n, cfg.input_dim], o);
            z.matmul(&w_in.tr()).relu()
        } else {
            Tensor::randn([cfg.samples, n], o)
        };
        let w_star = Tensor::randn([cfg.d_out, n], o) * inv_sqrt_n;
        let a_star = Tensor::randn([cfg.rank, n], o) * inv_sqrt_n;
        let b_star = Tensor::randn([cfg.d_out, cfg.rank], o);
        let y = x.matmul(&(w_star.shallow_clone() + b_star.matmul(&a_star)).tr());
        // The student's frozen part, W* x, is part of its output.
        let y = y - x.matmul(&w_star.tr());
        ToyProblem {
            x,
            y,
            n,
            cfg: cfg.clone(),
        }
    }

    /// Train one (lr_A, lr_B) cell for `steps` full-batch steps from the init drawn from `seed`;
    /// returns the mean loss of the last 10% of the steps (+inf when it diverged).
    pub fn train(&self, lr_a: f64, lr_b: f64, steps: usize, seed: u64) -> Result<f64> {
        tch::manual_seed(seed as i64 * 7919 + self.n);
        let o = (Kind::Float, Device::Cpu);
        let bound = 1.0 / (self.n as f64).sqrt();
        let lora_a = ((Tensor::rand([self.cfg.rank, self.n], o) * 2.0 - 1.0) * bound)
            .set_requires_grad(true);
        let lora_b = Tensor::zeros([self.cfg.d_out, self.cfg.rank], o).set_requires_grad(true);
        let cfg = LoraPlusConfig {
            lr: lr_a,
            ratio: lr_b / lr_a,
            weight_decay: 0.0,
            ..Default::default()
        };
        let mut opt = LoraPlusAdamW::from_tensors(
            [
                (
                    "lora_A".to_string(),
                    lora_a.shallow_clone(),
                    ParamRole::LoraA,
                ),
                (
                    "lora_B".to_string(),
                    lora_b.shallow_clone(),
                    ParamRole::LoraB,
                ),
            ],
            &cfg,
            Schedule::Constant,
        )?;
        let steps = steps.max(1);
        let tail = (steps / 10).max(1);
        let mut losses = Vec::with_capacity(tail);
        for step in 0..steps {
            let pred = self.x.matmul(&lora_a.tr()).matmul(&lora_b.tr());
            let loss = (pred - &self.y)
                .square()
                .sum_dim_intlist(1, false, Kind::Float)
                .mean(Kind::Float)
                * 0.5;
            loss.backward();
            opt.step()?;
            opt.zero_grad()?;
            if step >= steps - tail {
                let v = loss.double_value(&[]);
                if !v.is_finite() {
                    return Ok(f64::INFINITY);
                }
                losses.push(v);
            }
        }
        Ok(losses.iter().sum::<f64>() / losses.len() as f64)
    }
}
