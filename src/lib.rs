//! loraplus: LoRA and LoRA+ fine-tuning on libtorch. This crate re-exports the workspace crates.
pub use loraplus_core as core;
pub use loraplus_data as data;
pub use loraplus_models as models;
pub use loraplus_optim as optim;
pub use loraplus_train as train;
pub use tch;

/// The README's code blocks, compiled and run as doctests (`cargo test --doc -p loraplus`), so
/// the library example there stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
