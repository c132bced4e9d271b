//! loraplus-optim: the LoRA+ optimizer. AdamW over PEFT's LoRA+ parameter groups (`lr` for the
//! A matrices, `lr * ratio` for the B matrices), with its state in flat per-group buffers on
//! the parameters' device, HF-compatible schedules, global-norm clipping, gradient
//! accumulation, and exact resume.
//!
//! - [`LoraPlusAdamW`]: the optimizer; [`LoraPlusConfig`]: its hyper-parameters.
//! - [`ParamGroup`]: the groups, assigned from [`loraplus_core::ParamRole`], never from names.
//! - [`Schedule`]: constant, linear and cosine with warmup, as `transformers` computes them.
//! - [`OptimizerState`]: `optimizer.safetensors` + `optimizer.json` for resuming.
//! - [`flat`]: how parameters and gradients become views of flat buffers.
//! - [`Error`]: the refusals, as variants to match (the root of the `anyhow::Error`s returned).
#![warn(missing_docs)]

pub mod adamw;
pub mod config;
pub mod error;
pub mod flat;
pub mod groups;
pub mod kernel;
pub mod schedule;
pub mod shapes;
pub mod state;

pub use adamw::{GradHook, LoraPlusAdamW};
pub use config::LoraPlusConfig;
pub use error::Error;
pub use groups::{GroupSummary, OptimizerSummary, ParamGroup, TensorSummary};
pub use kernel::UpdateKernel;
pub use schedule::{Schedule, Warmup, DEFAULT_NUM_CYCLES};
pub use state::{OptimizerState, StateMeta, STATE_META_FILE, STATE_TENSORS_FILE};
