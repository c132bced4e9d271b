//! `Error`: the refusals of loraplus-optim, as variants a caller can match.
//!
//! The crate's functions return `anyhow::Result`; a refusal's root is one of these, found with
//! `err.downcast_ref::<loraplus_optim::Error>()` (anyhow finds it under any context added on
//! the way). I/O, JSON and libtorch failures keep their own types.

/// A refusal of loraplus-optim. Each message names the value, what was found and what is
/// allowed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A hyper-parameter out of its range (lr, ratio, betas, eps, weight decay, clipping norm,
    /// schedule), or a change that a built optimizer cannot take (`head_lr` set or unset,
    /// `amsgrad` changed).
    #[error("{0}")]
    BadConfig(String),
    /// Parameters that cannot be optimized together: none, undefined, not trainable, of a dtype
    /// that does not train, on two devices, or listed twice.
    #[error("{0}")]
    BadParams(String),
    /// A gradient or parameter whose shape is not the one the optimizer was built with.
    #[error("{0}")]
    ShapeChanged(String),
    /// Saved optimizer state that cannot be loaded into this optimizer: another format or
    /// version, files of two different saves, a missing or mis-shaped tensor, or a state saved
    /// for other trained tensors.
    #[error("{0}")]
    BadState(String),
}
