//! loraplus-train: the training library and the `loraplus` command.
//!
//! [`Trainer`] ties a model (loraplus-models), its LoRA adapter (loraplus-core), the LoRA+
//! optimizer (loraplus-optim) and a task's data (loraplus-data) into a training loop with
//! evaluation, checkpoints, exact resume and plots.
//!
//! - `task/`: the task kinds (GLUE, classification/regression on your files, causal LM): data,
//!   head, evaluation, merged-model class;
//! - `trainer.rs`: the loop; `checkpoint.rs`: checkpoints and resume;
//! - `model.rs`: model loading, optimizer, one micro-step, merged export;
//! - `cli/`: the `loraplus` subcommands (`glue.rs`: the LoRA-vs-LoRA+ experiment driver).
//!
//! Features: `cli` (default: the binary's subcommands, with `plots` and `progress`), `plots`
//! (PNG/SVG plots with plotters), `progress` (the terminal progress bar). A library user who
//! only runs [`Trainer`] can build with `default-features = false`.

pub mod checkpoint;
#[cfg(feature = "cli")]
pub mod cli;
pub mod config;
pub mod loss_scale;
pub mod metrics_log;
pub mod model;
pub mod parallel;
#[cfg(feature = "plots")]
pub mod plots;
pub mod progress;
pub mod task;
pub mod toy;
pub mod trainer;
pub mod tune;

pub use config::TrainConfig;
pub use task::TrainTask;
pub use trainer::{apply_process_settings, Callback, Control, Diverged, RunSummary, Trainer};
