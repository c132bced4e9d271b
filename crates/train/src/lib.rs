//! loraplus-train: the training library and the `loraplus` command.
//!
//! [`Trainer`] ties a model (loraplus-models), its LoRA adapter (loraplus-core), the LoRA+
//! optimizer (loraplus-optim) and GLUE data (loraplus-data) into a training loop with
//! evaluation, checkpoints, exact resume and plots.

pub mod backend;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod loss_scale;
pub mod metrics_log;
pub mod plots;
pub mod progress;
pub mod trainer;

pub use config::TrainConfig;
pub use trainer::{Callback, Control, RunSummary, Trainer};
