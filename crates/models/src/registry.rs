//! The architectures this crate loads, by `model_type`. Adding an architecture is writing its
//! file (config struct with HF field names, layers, recommended LoRA targets, an
//! [`crate::arch::Architecture`] impl and a `parse` function) and one line in the
//! `architectures!` list of `lib.rs` (`"model_type" => module,`), which declares the module and
//! registers it; nothing else in the crate or the trainer changes.

use anyhow::Result;
use serde_json::Value;

use crate::arch::Architecture;

/// Parses and validates a `config.json` of one architecture.
pub type Parse = fn(Value) -> Result<Box<dyn Architecture>>;

/// `(model_type, parse)`, in the order errors list them: the `architectures!` list in
/// `lib.rs`, where an architecture is registered with one line (`"qwen2" => qwen2,`).
pub const ARCHITECTURES: &[(&str, Parse)] = crate::ARCHITECTURES;

/// The `model_type`s this crate loads.
pub fn supported_model_types() -> Vec<&'static str> {
    ARCHITECTURES.iter().map(|(name, _)| *name).collect()
}

/// The parser registered for `model_type`.
pub fn lookup(model_type: &str) -> Option<Parse> {
    ARCHITECTURES
        .iter()
        .find(|(name, _)| *name == model_type)
        .map(|(_, parse)| *parse)
}

/// The registered `model_type`s that have the causal-LM head (the decoders), judged on their
/// default config.
pub fn causal_lm_model_types() -> Vec<&'static str> {
    ARCHITECTURES
        .iter()
        .filter(|(name, parse)| {
            parse(serde_json::json!({ "model_type": name })).is_ok_and(|a| a.causal_lm())
        })
        .map(|(name, _)| *name)
        .collect()
}
