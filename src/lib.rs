//! loraplus: LoRA and LoRA+ fine-tuning on libtorch. This crate re-exports the workspace crates.
pub use loraplus_core as core;
pub use loraplus_data as data;
pub use loraplus_models as models;
pub use loraplus_optim as optim;
pub use loraplus_train as train;
pub use tch;
